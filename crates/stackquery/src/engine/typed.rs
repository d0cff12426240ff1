//! Typed calls on the engine: find or create a key's entry as `Entry<T>`, and run a
//! `fetch_query`-style call on it. Shared by the client façade and observers.

use std::sync::Arc;

use super::{ErasedEntry, Shared};
use crate::entry::{Entry, Mode, Step};
use crate::error::QueryError;
use crate::key::QueryKey;
use crate::options::QueryOptions;

/// The error of a typed call on a key that holds another type.
pub(crate) fn mismatch(entry: &ErasedEntry, requested: &'static str) -> QueryError {
    QueryError::TypeMismatch {
        key: entry.key().to_string(),
        stored: entry.type_name(),
        requested,
    }
}

/// `entry` as `Entry<T>`, or a type-mismatch error naming both types.
pub(crate) fn downcast<T: Send + Sync + 'static>(
    entry: ErasedEntry,
) -> Result<Arc<Entry<T>>, QueryError> {
    // The error (which formats the key) is built only when the types differ.
    if entry.as_any().is::<Entry<T>>() {
        if let Ok(e) = entry.into_any().downcast::<Entry<T>>() {
            return Ok(e);
        }
        unreachable!("checked with `is` above");
    }
    Err(mismatch(&entry, std::any::type_name::<T>()))
}

impl Shared {
    /// A typed call (`fetch_query` and friends): data from the cache, or a flight to wait
    /// on, by `mode`.
    pub(crate) async fn run<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        opts: &QueryOptions<T>,
        mode: Mode,
    ) -> Result<Arc<T>, QueryError> {
        self.run_on(None, opts, mode).await
    }

    /// [`run`](Self::run), starting from an entry the caller already found.
    pub(crate) async fn run_on<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        mut found: Option<Arc<Entry<T>>>,
        opts: &QueryOptions<T>,
        mode: Mode,
    ) -> Result<Arc<T>, QueryError> {
        // An entry evicted between its creation and its first fetch is created again;
        // the loop is bounded (the last round fetches on the removed entry regardless).
        let mut rounds = 0;
        let step = loop {
            let entry = match found.take() {
                Some(e) => e,
                None => self.typed_entry::<T>(&opts.key)?,
            };
            match self.ask(&entry, opts, mode, rounds >= 3)? {
                Some(step) => break step,
                None => rounds += 1,
            }
        };
        match step {
            Step::Ready { data, .. } => Ok(data),
            Step::Wait { flight, .. } => flight.wait().await,
        }
    }

    /// The entry for `key` as `Entry<T>`, created if missing (starting the timer driver
    /// and the bus listener on the current runtime if they are not running).
    pub(crate) fn typed_entry<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        key: &QueryKey,
    ) -> Result<Arc<Entry<T>>, QueryError> {
        let shared = self;
        shared.timers.ensure_driver();
        shared.cluster.start(shared);
        let erased = shared
            .cache
            .get_or_insert(key, || shared.new_entry::<T>(key) as ErasedEntry);
        downcast(erased)
    }
}
