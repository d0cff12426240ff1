//! [`QueryClient`]: the façade over the cache, the fetch engine and the gc.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::cache::{Cache, ErasedEntry};
use crate::entry::{Entry, Mode, Step};
use crate::error::{panic_message, QueryError};
use crate::filter::QueryFilter;
use crate::gc::Gc;
use crate::key::QueryKey;
use crate::options::{Defaults, QueryOptions};
use crate::retry::{RetryDelay, RetryPolicy};
use crate::state::QueryState;
use crate::stats::{CacheStats, Counters};

/// Everything the client's handles, fetch tasks and gc task share.
pub(crate) struct Shared {
    pub(crate) defaults: Defaults,
    pub(crate) cache: Cache,
    pub(crate) counters: Counters,
    pub(crate) gc: Gc,
    next_id: AtomicU64,
}

/// The cache and fetch engine. Cloning is cheap (one `Arc`); clones share one cache.
///
/// ```
/// use stackquery::{key, QueryClient, QueryOptions};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stackquery::QueryError> {
/// let client = QueryClient::new();
/// let calls = Arc::new(AtomicU32::new(0));
/// let c = calls.clone();
/// let opts = QueryOptions::new(key!["user", 1], move || {
///     let c = c.clone();
///     async move {
///         c.fetch_add(1, Ordering::SeqCst);
///         Ok::<_, std::io::Error>("Ada".to_string())
///     }
/// })
/// .stale_time(std::time::Duration::from_secs(60));
///
/// // 100 concurrent callers, one fetch.
/// let results = futures::future::join_all((0..100).map(|_| client.fetch_query(&opts))).await;
/// assert!(results.iter().all(|r| matches!(r.as_deref().map(String::as_str), Ok("Ada"))));
/// assert_eq!(calls.load(Ordering::SeqCst), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct QueryClient {
    shared: Arc<Shared>,
}

impl fmt::Debug for QueryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryClient")
            .field("entries", &self.shared.cache.len())
            .field("defaults", &self.shared.defaults)
            .finish()
    }
}

impl Default for QueryClient {
    fn default() -> Self {
        QueryClient::new()
    }
}

fn mismatch(entry: &ErasedEntry, requested: &'static str) -> QueryError {
    QueryError::TypeMismatch {
        key: entry.key().to_string(),
        stored: entry.type_name(),
        requested,
    }
}

fn downcast<T: Send + Sync + 'static>(entry: ErasedEntry) -> Result<Arc<Entry<T>>, QueryError> {
    let err = mismatch(&entry, std::any::type_name::<T>());
    entry.into_any().downcast::<Entry<T>>().map_err(|_| err)
}

impl QueryClient {
    /// A client with the built-in defaults and no size bound.
    pub fn new() -> Self {
        QueryClient::builder().build()
    }

    /// A builder for client-wide defaults and limits.
    pub fn builder() -> QueryClientBuilder {
        QueryClientBuilder::default()
    }

    /// Returns the key's data: fresh data from the cache; stale data from the cache at once
    /// while one background refetch starts (or joins the one in flight); no data: the
    /// fetch (deduplicated).
    ///
    /// # Concurrent calls
    /// Every concurrent caller of one key shares one fetch, which runs as its own task:
    /// a caller that drops its future does not cancel it for the others. All waiters get
    /// the same value, or clones of the same error.
    ///
    /// # Errors
    /// [`QueryError::Fetch`] after the retries are spent, [`QueryError::Cancelled`] if
    /// [`cancel_queries`](Self::cancel_queries) stopped the fetch, [`QueryError::Panicked`]
    /// if the fetch function panicked, [`QueryError::TypeMismatch`] if the key holds data
    /// of another type, [`QueryError::NoRuntime`] outside a tokio runtime.
    pub async fn fetch_query<T: Send + Sync + 'static>(
        &self,
        opts: &QueryOptions<T>,
    ) -> Result<Arc<T>, QueryError> {
        // Hit path: one shard read lock, one entry lock, one Arc clone.
        let stale_time = self.shared.defaults.stale_time(opts);
        let hit =
            self.shared
                .cache
                .with(&opts.key, |e| match e.as_any().downcast_ref::<Entry<T>>() {
                    Some(entry) => Ok(entry.fresh_data(stale_time)),
                    None => Err(mismatch(e, std::any::type_name::<T>())),
                });
        match hit {
            Some(Ok(Some(data))) => {
                self.shared.counters.hits.incr();
                tracing::trace!(key = %opts.key, "cache hit");
                Ok(data)
            }
            Some(Err(e)) => Err(e),
            _ => self.run(opts, Mode::Swr).await,
        }
    }

    /// Fetches several same-typed queries concurrently; results keep the input order.
    /// (Queries of different types: use `tokio::try_join!` on `fetch_query` calls.)
    pub async fn fetch_queries<T: Send + Sync + 'static>(
        &self,
        opts: &[QueryOptions<T>],
    ) -> Vec<Result<Arc<T>, QueryError>> {
        join_all(opts.iter().map(|o| self.fetch_query(o))).await
    }

    /// Warms the cache like [`fetch_query`](Self::fetch_query) and never returns an
    /// error (failures are logged and stay in the entry's state).
    pub async fn prefetch_query<T: Send + Sync + 'static>(&self, opts: &QueryOptions<T>) {
        if let Err(error) = self.fetch_query(opts).await {
            tracing::debug!(key = %opts.key, %error, "prefetch failed");
        }
    }

    /// Cached data if any (even stale, with no background refresh), else the fetch.
    ///
    /// # Errors
    /// As [`fetch_query`](Self::fetch_query).
    pub async fn ensure_query_data<T: Send + Sync + 'static>(
        &self,
        opts: &QueryOptions<T>,
    ) -> Result<Arc<T>, QueryError> {
        self.run(opts, Mode::Ensure).await
    }

    /// Fetches now even if the data is fresh (joining a fetch already in flight) and
    /// returns the fetched value.
    ///
    /// # Errors
    /// As [`fetch_query`](Self::fetch_query).
    pub async fn refetch_query<T: Send + Sync + 'static>(
        &self,
        opts: &QueryOptions<T>,
    ) -> Result<Arc<T>, QueryError> {
        self.run(opts, Mode::Force).await
    }

    pub(crate) async fn run<T: Send + Sync + 'static>(
        &self,
        opts: &QueryOptions<T>,
        mode: Mode,
    ) -> Result<Arc<T>, QueryError> {
        self.shared.gc.start(&self.shared);
        // An entry evicted between its creation and its first fetch is created again;
        // the loop is bounded (the last round fetches on the removed entry regardless).
        let mut rounds = 0;
        let step = loop {
            let entry = self.typed_entry::<T>(&opts.key)?;
            match entry.step(&self.shared, opts, mode, rounds >= 3)? {
                Some(step) => break step,
                None => rounds += 1,
            }
        };
        match step {
            Step::Ready(data) => Ok(data),
            Step::Wait(flight) => flight.wait().await,
        }
    }

    fn typed_entry<T: Send + Sync + 'static>(
        &self,
        key: &QueryKey,
    ) -> Result<Arc<Entry<T>>, QueryError> {
        let shared = &self.shared;
        let erased = shared.cache.get_or_insert(shared, key, || {
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            Arc::new(Entry::<T>::new(
                id,
                key.clone(),
                shared.defaults.stale_time,
                shared.defaults.gc_time,
            ))
        });
        downcast(erased)
    }

    /// The cached data for `key`, fresh or stale. `None` when there is none, or when the
    /// key holds another type.
    pub fn get_query_data<T: Send + Sync + 'static>(&self, key: &QueryKey) -> Option<Arc<T>> {
        self.shared
            .cache
            .with(key, |e| {
                e.as_any().downcast_ref::<Entry<T>>().and_then(|e| {
                    let data = e.inner.lock().state.data.clone();
                    e.touch();
                    data
                })
            })
            .flatten()
    }

    /// A snapshot of the key's state (`None` when absent or of another type). Staleness is
    /// judged with the stale time of the key's last caller.
    pub fn get_query_state<T: Send + Sync + 'static>(
        &self,
        key: &QueryKey,
    ) -> Option<QueryState<T>> {
        self.shared
            .cache
            .with(key, |e| {
                e.as_any().downcast_ref::<Entry<T>>().map(|e| {
                    let g = e.inner.lock();
                    g.snapshot(g.stale_time)
                })
            })
            .flatten()
    }

    /// Writes `data` under `key`, creating the entry if needed. The write counts as fresh
    /// data, and wins over any fetch of the key that started before it.
    ///
    /// # Errors
    /// [`QueryError::TypeMismatch`] when the key holds another type.
    pub fn set_query_data<T: Send + Sync + 'static>(
        &self,
        key: impl Into<QueryKey>,
        data: T,
    ) -> Result<(), QueryError> {
        self.set_query_data_arc(key, Arc::new(data))
    }

    /// [`set_query_data`](Self::set_query_data) for data already in an `Arc`.
    ///
    /// # Errors
    /// [`QueryError::TypeMismatch`] when the key holds another type.
    pub fn set_query_data_arc<T: Send + Sync + 'static>(
        &self,
        key: impl Into<QueryKey>,
        data: Arc<T>,
    ) -> Result<(), QueryError> {
        let key = key.into();
        self.shared.gc.start(&self.shared);
        let entry = self.typed_entry::<T>(&key)?;
        entry.set_data(&self.shared, data);
        Ok(())
    }

    /// Replaces the key's data with `updater(old)`; `None` from the updater leaves the
    /// entry as it is. Returns the data now stored.
    ///
    /// The updater runs outside every lock (it may call the client). If another write
    /// lands while it runs, it is called again with the newer value, so it should be a
    /// pure function of its input.
    ///
    /// # Errors
    /// [`QueryError::TypeMismatch`] when the key holds another type;
    /// [`QueryError::Panicked`] when the updater panics (nothing is written).
    pub fn update_query_data<T, F>(
        &self,
        key: impl Into<QueryKey>,
        updater: F,
    ) -> Result<Option<Arc<T>>, QueryError>
    where
        T: Send + Sync + 'static,
        F: Fn(Option<&T>) -> Option<T>,
    {
        let key = key.into();
        self.shared.gc.start(&self.shared);
        let entry = self.typed_entry::<T>(&key)?;
        loop {
            let (old, gen) = {
                let g = entry.inner.lock();
                (g.state.data.clone(), g.data_gen)
            };
            let new =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| updater(old.as_deref())))
                    .map_err(|p| QueryError::Panicked(panic_message(&*p)))?;
            let Some(new) = new else { return Ok(old) };
            let new = Arc::new(new);
            let g = entry.inner.lock();
            let unchanged = g.data_gen == gen
                && match (&g.state.data, &old) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
            if unchanged {
                drop(g);
                entry.set_data(&self.shared, new.clone());
                return Ok(Some(new));
            }
        }
    }

    fn matching(&self, filter: &QueryFilter) -> Vec<ErasedEntry> {
        let mut found = self.shared.cache.matching(filter.scope());
        found.retain(|e| filter.accepts(e));
        found
    }

    /// Marks matching entries stale (their data stays) and refetches the observed ones;
    /// waits for those refetches. Returns how many entries were invalidated.
    ///
    /// A fetch already in flight for an invalidated entry still delivers its result to its
    /// callers, but that result is stored as stale.
    pub async fn invalidate_queries(&self, filter: impl Into<QueryFilter>) -> usize {
        let found = self.matching(&filter.into());
        let n = found.len();
        let waits: Vec<_> = found
            .into_iter()
            .filter_map(|e| e.invalidate(&self.shared))
            .collect();
        tracing::debug!(entries = n, refetching = waits.len(), "invalidated");
        join_all(waits).await;
        n
    }

    /// Refetches every matching entry whose fetch function is known (entries only ever
    /// written by hand are skipped) and waits for them to settle. Returns how many ran.
    pub async fn refetch_queries(&self, filter: impl Into<QueryFilter>) -> usize {
        let waits: Vec<_> = self
            .matching(&filter.into())
            .into_iter()
            .filter_map(|e| e.refetch(&self.shared))
            .collect();
        let n = waits.len();
        join_all(waits).await;
        n
    }

    /// Aborts the fetches in flight for matching entries. Their waiters get
    /// [`QueryError::Cancelled`]; each entry goes back to its state before the fetch.
    /// Returns how many fetches were cancelled.
    pub async fn cancel_queries(&self, filter: impl Into<QueryFilter>) -> usize {
        let found = self.matching(&filter.into().fetching(true));
        for e in &found {
            e.cancel(&self.shared);
        }
        found.len()
    }

    /// Removes matching entries from the cache. Fetches in flight still deliver to their
    /// own callers but write nothing back. Returns how many were removed.
    pub fn remove_queries(&self, filter: impl Into<QueryFilter>) -> usize {
        let filter = filter.into();
        let found = self.matching(&filter);
        let removed: Vec<_> = {
            found
                .iter()
                .filter_map(|e| self.shared.cache.remove(e.key(), Some(e.id())))
                .collect()
        };
        removed.len()
    }

    /// Puts matching entries back in their initial state (no data). Observed entries are
    /// refetched. Returns how many were reset.
    pub fn reset_queries(&self, filter: impl Into<QueryFilter>) -> usize {
        let found = self.matching(&filter.into());
        for e in &found {
            e.reset(&self.shared);
            if e.is_active() {
                // Fire and forget: the refetch runs as its own task.
                drop(e.clone().refetch(&self.shared));
            }
        }
        found.len()
    }

    /// How many matching entries have a fetch in flight.
    pub fn is_fetching(&self, filter: impl Into<QueryFilter>) -> usize {
        self.matching(&filter.into().fetching(true)).len()
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.shared.cache.clear();
    }

    /// The client's counters and current size.
    pub fn stats(&self) -> CacheStats {
        self.shared.counters.snapshot(self.shared.cache.len())
    }
}

/// Builds a [`QueryClient`] with client-wide defaults (each query may override them).
///
/// ```
/// use stackquery::QueryClient;
/// use std::time::Duration;
/// let client = QueryClient::builder()
///     .stale_time(Duration::from_secs(30))
///     .gc_time(Duration::from_secs(300))
///     .retry(3)
///     .max_queries(10_000)
///     .build();
/// # drop(client);
/// ```
#[derive(Default)]
#[must_use]
pub struct QueryClientBuilder {
    defaults: Defaults,
    max_queries: Option<usize>,
}

impl fmt::Debug for QueryClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryClientBuilder")
            .field("defaults", &self.defaults)
            .field("max_queries", &self.max_queries)
            .finish()
    }
}

impl QueryClientBuilder {
    /// Default stale time (built-in: 0, stale at once).
    pub fn stale_time(mut self, d: Duration) -> Self {
        self.defaults.stale_time = d;
        self
    }

    /// Default gc time for unused entries (built-in: 5 minutes).
    pub fn gc_time(mut self, d: Duration) -> Self {
        self.defaults.gc_time = d;
        self
    }

    /// Default retry count (built-in: 3).
    pub fn retry(mut self, n: u32) -> Self {
        self.defaults.retry = RetryPolicy::Count(n);
        self
    }

    /// Default retry predicate: retry while `f(failure_count, &error)` is true.
    pub fn retry_if(
        mut self,
        f: impl Fn(u32, &QueryError) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.defaults.retry = RetryPolicy::Predicate(Arc::new(f));
        self
    }

    /// Default retry delay (built-in: `min(1s·2^attempt, 30s)`).
    pub fn retry_delay(mut self, f: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Self {
        self.defaults.retry_delay = Some(RetryDelay::new(f));
        self
    }

    /// Randomise retry delays between 50% and 100% of their value.
    pub fn retry_jitter(mut self, on: bool) -> Self {
        self.defaults.retry_jitter = on;
        self
    }

    /// Bound on the number of entries in memory. When full, the least recently used
    /// entry with no observers and no fetch in flight is evicted (CLOCK approximation).
    /// Pinned entries (observed or fetching) are never evicted, so the bound can be
    /// exceeded while every entry is pinned. `0` keeps nothing: entries live only while
    /// observed or fetching, so concurrent callers still share one fetch.
    pub fn max_queries(mut self, n: usize) -> Self {
        self.max_queries = Some(n);
        self
    }

    /// Builds the client. Call inside or outside a tokio runtime; background work (the
    /// gc task) starts on the first use inside one.
    pub fn build(self) -> QueryClient {
        QueryClient {
            shared: Arc::new(Shared {
                defaults: self.defaults,
                cache: Cache::new(self.max_queries),
                counters: Counters::default(),
                gc: Gc::new(),
                next_id: AtomicU64::new(0),
            }),
        }
    }
}
