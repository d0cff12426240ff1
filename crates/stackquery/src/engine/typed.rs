//! Typed calls on the engine: find or create a key's entry as `Entry<T>`, and run a
//! `fetch_query`-style call on it. Shared by the client façade and observers.

use crate::events::CacheEventKind;
use std::sync::Arc;

use super::{ErasedEntry, Shared};
use crate::entry::{Entry, Mode, Step};
use crate::error::QueryError;
use crate::key::QueryKey;
use crate::options::QueryOptions;

/// The error of a typed call on a key that holds another type.
pub(crate) fn mismatch(entry: &ErasedEntry, requested: &'static str) -> QueryError {
    QueryError::type_mismatch(entry.key().to_string(), entry.type_name(), requested)
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
        // The join path: most callers of a cold key find its flight already in flight, and
        // asking would change nothing: they wait on it with no transition.
        if let (Some(entry), true) = (&found, mode != Mode::Force) {
            let stale_time = self.defaults.stale_time(opts);
            let gc_time = self.defaults.gc_time(opts);
            let fresh = mode == Mode::Fresh;
            if let Some(flight) = entry.joinable(opts, stale_time, gc_time, fresh) {
                self.counters.misses.incr();
                self.counters.dedup_joins.incr();
                tracing::trace!(key = %opts.key, "cache miss: joined the fetch in flight");
                return flight.wait().await;
            }
        }
        // An entry evicted between its creation and its first fetch is created again;
        // the loop is bounded (the last round fetches on the removed entry regardless).
        let mut rounds = 0;
        let mut lead = None;
        let (entry, step) = loop {
            let entry = match found.take() {
                Some(e) => e,
                None => self.typed_entry::<T>(&opts.key)?,
            };
            match self.ask(&entry, opts, mode, rounds >= 3, Some(&mut lead))? {
                Some(step) => break (entry, step),
                None => rounds += 1,
            }
        };
        match step {
            Step::Ready { data, .. } => Ok(data),
            Step::Wait { flight, .. } => {
                // This caller started the fetch: it runs it until it first waits.
                if let Some(start) = lead {
                    self.lead_fetch(&entry, start).await;
                }
                flight.wait().await
            }
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
        let mut created = false;
        let erased = shared.cache.get_or_insert(key, || {
            created = true;
            shared.new_entry::<T>(key) as ErasedEntry
        });
        if created {
            shared.send_removals(); // room made for it
            shared
                .events
                .emit(|| CacheEventKind::QueryAdded { key: key.clone() });
        }
        downcast(erased)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use crate::{key, QueryClient, QueryOptions};

    fn slow(calls: &Arc<AtomicU32>, gc_secs: u64) -> QueryOptions<u32> {
        let calls = calls.clone();
        let fetcher = move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, String>(7)
            }
        };
        QueryOptions::new(key!["k"], fetcher).gc_time(Duration::from_secs(gc_secs))
    }

    /// Joining a flight without a transition must not skip what asking would record: a
    /// joiner with a longer gc time than the flight's starter still extends the entry's
    /// life (the largest gc time asked for wins), so it takes the asking path.
    #[tokio::test(start_paused = true)]
    async fn a_joiner_with_a_longer_gc_time_still_extends_the_entry() {
        let client = QueryClient::new();
        let calls = Arc::new(AtomicU32::new(0));
        let short = slow(&calls, 2);
        let long = short.clone().gc_time(Duration::from_secs(60));
        let (a, b, c) = tokio::join!(
            client.fetch_query(&short),
            client.fetch_query(&short),
            client.fetch_query(&long),
        );
        assert_eq!((*a.unwrap(), *b.unwrap(), *c.unwrap()), (7, 7, 7));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one fetch");
        assert_eq!(client.stats().dedup_joins, 2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            client.get_query_data::<u32>(&key!["k"]).is_some(),
            "collected after the starter's 2 s, not the joiner's 60 s"
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(client.get_query_data::<u32>(&key!["k"]).is_none());
    }
}
