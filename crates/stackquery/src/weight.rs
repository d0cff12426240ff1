//! Weighing entries for the cache's weight bound
//! ([`max_weight`](crate::QueryClientBuilder::max_weight)): the per-query weigher, the
//! serialised-size weigher, and the one function that runs them.
//!
//! * A weigher is user code: it runs under the crate's panic policy (`user_code.rs`),
//!   after every lock is released — before the transition that stores the data it
//!   weighs, so the weight travels into the entry with the data, under one lock.
//! * A weigher that panics (or data that does not serialise) weighs the client's
//!   default weight, logged: the data is still stored, nothing is poisoned.
//! * A client without a weight bound weighs nothing (no weigher runs, every weight is 0).

use std::sync::Arc;

use crate::key::QueryKey;

/// A query's weigher: the weight of its data, `None` when it could not be weighed (the
/// default weight applies). Kept behind an `Arc` in the options' rarely set settings
/// (`options::Extras`), so clones share it; the box of a plain function (the serialised
/// weigher) allocates nothing.
pub(crate) struct Weigher<T>(Box<WeighFn<T>>);

/// A weigher's function: `None` when it could not weigh.
type WeighFn<T> = dyn Fn(&T) -> Option<u32> + Send + Sync;

impl<T: 'static> Weigher<T> {
    /// A user's weigher.
    pub(crate) fn new(f: impl Fn(&T) -> u32 + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Weigher(Box::new(move |data| Some(f(data)))))
    }

    /// Weight = the length in bytes of the data's compact JSON (see [`serialized_len`]).
    pub(crate) fn serialized() -> Arc<Self>
    where
        T: serde::Serialize,
    {
        Arc::new(Weigher(Box::new(serialized_weight::<T>)))
    }
}

/// The client's weight bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WeightBound {
    /// The most the entries in memory may weigh together.
    pub(crate) max: u64,
    /// The weight of data whose query has no weigher, or whose weigher failed.
    pub(crate) default: u32,
}

/// The weight of `data` stored under `key` on a client with `bound`: the default without
/// a weigher, else the weigher's answer (the default when it panics or fails). Call with
/// no lock held. (A client without a bound weighs nothing: its callers return 0 before
/// they get here, inline.)
pub(crate) fn weigh<T>(
    bound: &WeightBound,
    weigher: Option<&Weigher<T>>,
    data: &T,
    key: &QueryKey,
) -> u32 {
    let Some(weigher) = weigher else {
        return bound.default;
    };
    match crate::user_code::contain("weigher", || (weigher.0)(data)) {
        Ok(Some(weight)) => weight,
        Ok(None) => {
            tracing::warn!(%key, default = bound.default, "data not weighed: the default weight applies");
            bound.default
        }
        // (`contain` logged the panic.)
        Err(_) => {
            tracing::warn!(%key, default = bound.default, "weigher panicked: the default weight applies");
            bound.default
        }
    }
}

/// The serialised weigher: the compact JSON length, saturated at `u32::MAX`; `None` (and a
/// log line) when the data does not serialise.
fn serialized_weight<T: serde::Serialize>(data: &T) -> Option<u32> {
    match serialized_len(data) {
        Ok(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        Err(error) => {
            tracing::warn!(%error, "data does not serialise: not weighed");
            None
        }
    }
}

/// The length in bytes of `serde_json::to_vec(data)` (compact JSON), counted without
/// building it: the serializer writes into a counter.
///
/// # Errors
/// As `serde_json::to_writer` (e.g. a map whose keys are not strings).
pub(crate) fn serialized_len<T: serde::Serialize + ?Sized>(data: &T) -> serde_json::Result<u64> {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, data)?;
    Ok(counter.0)
}

/// An `io::Write` that keeps only the number of bytes written to it.
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key;

    const BOUND: WeightBound = WeightBound {
        max: 100,
        default: 3,
    };

    /// The counted length is the length of the JSON itself, escapes and all.
    #[test]
    fn the_serialized_length_is_the_compact_json_length() {
        let data = (
            vec!["a\"b".to_string(), "é".to_string()],
            Some(12_u32),
            1.5_f64,
        );
        let json = serde_json::to_vec(&data).unwrap();
        assert_eq!(serialized_len(&data).unwrap(), json.len() as u64);
        let w = Weigher::serialized();
        assert_eq!(
            weigh(&BOUND, Some(&*w), &data, &key!["k"]) as usize,
            json.len()
        );
    }

    /// No weigher: the default; a weigher that panics or data that does not serialise: the
    /// default.
    #[test]
    fn fallbacks() {
        let k = key!["k"];
        let panics = Weigher::<u32>::new(|_| panic!("weigher boom"));
        assert_eq!(weigh(&BOUND, None, &1_u32, &k), 3);
        assert_eq!(weigh(&BOUND, Some(&*panics), &1, &k), 3);
        let doubles = Weigher::<u32>::new(|n| n * 2);
        assert_eq!(weigh(&BOUND, Some(&*doubles), &21, &k), 42);
        // JSON maps need string keys: a map keyed by a tuple does not serialise.
        let map: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let w = Weigher::serialized();
        assert_eq!(weigh(&BOUND, Some(&*w), &map, &k), 3);
    }
}
