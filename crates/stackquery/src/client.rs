//! [`QueryClient`]: the façade over the cache, the fetch engine and the gc.

use std::fmt;
use std::sync::Arc;

use futures::future::join_all;

use crate::builder::QueryClientBuilder;
use crate::engine::cluster::Cluster;
use crate::engine::tier::Tier;
pub(crate) use crate::engine::Shared;
use crate::engine::{Covered, ErasedEntry};
use crate::entry::{Entry, Mode};
use crate::error::QueryError;
use crate::filter::QueryFilter;
use crate::key::QueryKey;
use crate::mutation::{DurableMutation, DurableMutationOptions, Mutation, MutationOptions};
use crate::observer::QueryObserver;
use crate::options::{Defaults, QueryOptions};
use crate::refetch::RefetchType;
use crate::scope::KeyScope;
use crate::snapshot::DehydratedState;
use crate::state::QueryState;
use crate::stats::CacheStats;

mod typed;

/// What a filter covered, for the second tier and the bus: its whole key scope when it
/// is by key only, else just the entries it matched.
fn covered<'a>(filter: &'a QueryFilter, matched: &'a [ErasedEntry]) -> Covered<'a> {
    Covered {
        scope: filter.is_key_only().then(|| filter.scope()),
        matched,
    }
}

/// The cache and fetch engine. Cloning is cheap (two reference-count bumps: the shared
/// engine and the handle's lifetime token); clones share one cache.
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
    pub(crate) shared: Arc<Shared>,
    /// Present in handles given to users: when the last one drops, the cache is cleared
    /// (observers' streams end). Internal handles (observers, tasks) carry `None`.
    _life: Option<Arc<ClientLife>>,
}

struct ClientLife(Arc<Shared>);

impl Drop for ClientLife {
    fn drop(&mut self) {
        for e in self.0.cache.clear() {
            e.notify_removed(&self.0);
        }
    }
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
        // (With a bus: one atomic load, so fresh data is never trusted while nobody
        // listens to the other instances.)
        self.shared.cluster.ensure_listening(&self.shared);
        let stale_time = self.shared.defaults.stale_time(opts);
        let probe = self.shared.cache.with(&opts.key, |e| {
            match e.as_any().downcast_ref::<Entry<T>>() {
                Some(entry) => match entry.fresh_data(stale_time, || self.shared.runtime.now()) {
                    Some(data) => Ok(Ok(data)),
                    // Not fresh: keep the entry, so the slow path need not look it up again.
                    None => Ok(Err(e.clone())),
                },
                None => Err(crate::engine::mismatch(e, std::any::type_name::<T>())),
            }
        });
        match probe {
            Some(Ok(Ok(data))) => {
                self.shared.counters.hits.incr();
                tracing::trace!(key = %opts.key, "cache hit");
                Ok(data)
            }
            Some(Err(e)) => Err(e),
            // Boxed so the hit path's future stays small.
            Some(Ok(Err(entry))) => {
                Box::pin(
                    self.shared
                        .run_on(crate::engine::downcast(entry).ok(), opts, Mode::Swr),
                )
                .await
            }
            None => Box::pin(self.shared.run_on(None, opts, Mode::Swr)).await,
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
            tracing::debug!(key = %opts.key, error = %crate::error::report(&error), "prefetch failed");
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
        self.shared.run(opts, Mode::Ensure).await
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
        self.shared.run(opts, Mode::Force).await
    }

    /// The key's data if it is fresh, else the result of a fetch: never stale data, and
    /// never data older than an invalidation — read-your-writes after
    /// [`invalidate_queries`](Self::invalidate_queries). (TanStack Query's `fetchQuery`;
    /// [`fetch_query`](Self::fetch_query) serves stale data at once instead.)
    ///
    /// * Fresh (younger than the stale time, not invalidated): from the cache, the same
    ///   hit path as `fetch_query`.
    /// * Stale, invalidated or missing: waits for a fetch. It joins the fetch in flight
    ///   only if that fetch began after the key's latest invalidation and manual write; an
    ///   older one may have read the very data the invalidation says changed, so a new
    ///   fetch replaces it (its own callers still get its result; the cache no longer
    ///   stores it). Concurrent calls share one fetch, and an invalidation's refetch
    ///   ([`invalidate_queries_with`](Self::invalidate_queries_with)) is joined too.
    /// * A persisted key read from the second tier (or a restored snapshot): only a
    ///   stored copy that is neither invalidated nor older than the stale time is taken;
    ///   otherwise the fetch function runs.
    ///
    /// With a zero stale time (the default) data is never fresh, so every call fetches
    /// (deduplicated with the calls in flight). A call made while an invalidation is under
    /// way may return the data from before it; a call made after it has returned never
    /// does.
    ///
    /// # Other instances
    /// "Fresh" is judged with what this client knows: its own invalidations, the other
    /// instances' once their bus messages have arrived (a bus delivers them
    /// asynchronously, after their stored copies are flagged), and the flags on stored
    /// copies it reads. Without a bus, an instance that already holds the key in memory
    /// does not hear of another instance's invalidation and serves its copy until its
    /// stale time passes; with a shared storage it still never takes an invalidated
    /// stored copy.
    ///
    /// # Errors
    /// As [`fetch_query`](Self::fetch_query).
    ///
    /// ```
    /// use stackquery::{key, QueryClient, QueryOptions, RefetchType};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// let client = QueryClient::new();
    /// let version = Arc::new(AtomicU32::new(0));
    /// let v = version.clone();
    /// let opts = QueryOptions::new(key!["profile"], move || {
    ///     let v = v.clone();
    ///     async move { Ok::<_, std::io::Error>(v.fetch_add(1, Ordering::SeqCst) + 1) }
    /// })
    /// .stale_time(Duration::from_secs(60));
    /// assert_eq!(*client.fetch_query_fresh(&opts).await?, 1);
    /// assert_eq!(*client.fetch_query_fresh(&opts).await?, 1); // fresh: from the cache
    ///
    /// // A write upstream, then an invalidation that refetches nothing.
    /// client.invalidate_queries_with(key!["profile"], RefetchType::None).await;
    /// assert_eq!(*client.fetch_query_fresh(&opts).await?, 2); // waited for a fetch
    /// assert_eq!(version.load(Ordering::SeqCst), 2);
    /// # Ok(()) }
    /// ```
    pub async fn fetch_query_fresh<T: Send + Sync + 'static>(
        &self,
        opts: &QueryOptions<T>,
    ) -> Result<Arc<T>, QueryError> {
        // The hit path of `fetch_query`, whose fresh data is this one's (within the stale
        // time, not invalidated): repeated here rather than shared, so that `fetch_query`'s
        // own hit path stays exactly as it is. (Measured: both through one shared
        // `async fn` taking the mode cost the fresh hit 344 -> 361 instructions, callgrind.)
        self.shared.cluster.ensure_listening(&self.shared);
        let stale_time = self.shared.defaults.stale_time(opts);
        let now = || self.shared.runtime.now();
        let probe = self.shared.cache.with(&opts.key, |e| {
            match e.as_any().downcast_ref::<Entry<T>>() {
                // Not fresh: keep the entry, so the slow path need not look it up again.
                Some(entry) => Ok(entry.fresh_data(stale_time, now).ok_or_else(|| e.clone())),
                None => Err(crate::engine::mismatch(e, std::any::type_name::<T>())),
            }
        });
        match probe {
            Some(Ok(Ok(data))) => {
                self.shared.counters.hits.incr();
                tracing::trace!(key = %opts.key, "cache hit");
                Ok(data)
            }
            Some(Err(e)) => Err(e),
            Some(Ok(Err(entry))) => {
                let entry = crate::engine::downcast(entry).ok();
                Box::pin(self.shared.run_on(entry, opts, Mode::Fresh)).await
            }
            None => Box::pin(self.shared.run_on(None, opts, Mode::Fresh)).await,
        }
    }

    /// An observer of `opts`'s key. It does nothing until it has a subscriber.
    pub fn watch<T: Send + Sync + 'static>(&self, opts: &QueryOptions<T>) -> QueryObserver<T> {
        QueryObserver::new(self.shared.clone(), opts)
    }

    /// A [`Mutation`] running `opts` on this client (its scope queue is this client's).
    ///
    /// ```
    /// use stackquery::{MutationOptions, QueryClient};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// let client = QueryClient::new();
    /// let double = client.mutation(MutationOptions::new(|n: u32| async move {
    ///     Ok::<_, std::io::Error>(n * 2)
    /// }));
    /// assert_eq!(*double.mutate(21).await?, 42);
    /// assert!(double.state().is_success());
    /// # Ok(()) }
    /// ```
    pub fn mutation<V, T, C>(&self, opts: MutationOptions<V, T, C>) -> Mutation<V, T>
    where
        V: Clone + Send + 'static,
        T: Send + Sync + 'static,
        C: Send + 'static,
    {
        Mutation::new(self.shared.clone(), opts)
    }

    /// Registers the durable mutation queue `opts` on this client and resumes the calls
    /// its storage still holds: a [`DurableMutation`] whose calls are written to the second
    /// tier (or [`DurableMutationOptions::storage`]) before they run, so they survive a
    /// restart — for offline-first clients and workers.
    ///
    /// * **Order**: one call at a time per queue, in the order of
    ///   [`enqueue`](DurableMutation::enqueue); calls left by a previous process (read
    ///   here with [`Storage::scan_prefix`](crate::Storage::scan_prefix)) run first, in
    ///   their order.
    /// * **Failures**: a call is retried per its retry policy (none by default); once the
    ///   retries are spent it moves to the [dead letters](DurableMutation::dead_letters),
    ///   out of the way of the calls behind it, until
    ///   [`requeue_dead_letters`](DurableMutation::requeue_dead_letters). For an offline
    ///   client, give a generous `retry_if` so that "no network" is waited out.
    /// * **At least once**: a call's record is deleted after it ran, so a process that
    ///   dies in between (or a failed delete) runs that one call again after the restart.
    ///   Make the function idempotent (an idempotency key in the variables).
    /// * **One consumer**: a queue name belongs to one client at a time (a second
    ///   registration on this client is refused while the first handle lives). Two
    ///   processes registering one name on a shared storage would both run its calls.
    ///
    /// The stored format: one JSON record per call, `{"v":1,"vars":…}`, under
    /// `stackquery:mutations:<name>:<seq>` (20-digit sequence number), dead letters under
    /// `stackquery:mutations-dead:<name>:<seq>`.
    ///
    /// ```
    /// use stackquery::storage::MemoryStorage;
    /// use stackquery::{DurableMutationOptions, QueryClient};
    /// use std::sync::{Arc, Mutex};
    ///
    /// #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    /// struct Email { to: String }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::StorageError> {
    /// let disk = Arc::new(MemoryStorage::new()); // SqliteStorage in a real app
    /// let sent = Arc::new(Mutex::new(Vec::new()));
    /// let send = |sent: Arc<Mutex<Vec<String>>>| {
    ///     DurableMutationOptions::new("send_email", move |email: Email| {
    ///         let sent = sent.clone();
    ///         async move {
    ///             sent.lock().unwrap().push(email.to);
    ///             Ok::<_, std::io::Error>(())
    ///         }
    ///     })
    /// };
    ///
    /// // Queued while "offline": a client on a runtime that stops before the calls run.
    /// let disk2 = disk.clone();
    /// std::thread::spawn(move || {
    ///     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    ///     rt.block_on(async {
    ///         let client = QueryClient::builder().storage(disk2).build();
    ///         let offline = DurableMutationOptions::new("send_email", |_: Email| {
    ///             std::future::pending::<Result<(), std::io::Error>>()
    ///         });
    ///         let queue = client.durable_mutation(offline).await.unwrap();
    ///         queue.enqueue(Email { to: "ada@example.com".into() }).await.unwrap();
    ///         queue.enqueue(Email { to: "bob@example.com".into() }).await.unwrap();
    ///     });
    /// })
    /// .join()
    /// .unwrap();
    ///
    /// // The next process registers the queue: the calls resume, in order.
    /// let client = QueryClient::builder().storage(disk.clone()).build();
    /// let queue = client.durable_mutation(send(sent.clone())).await?;
    /// queue.wait_idle().await;
    /// assert_eq!(*sent.lock().unwrap(), ["ada@example.com", "bob@example.com"]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StorageError::Unsupported`](crate::StorageError::Unsupported) when there is no
    /// storage, the storage cannot list keys, the name is empty or contains `:`, or the
    /// name is already registered on this client; whatever the storage reports when
    /// reading the queue.
    pub async fn durable_mutation<V>(
        &self,
        opts: DurableMutationOptions<V>,
    ) -> Result<DurableMutation<V>, crate::StorageError>
    where
        V: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let tier = self.shared.tier.as_ref().map(|tier| tier.storage.clone());
        DurableMutation::open(
            opts,
            tier,
            self.shared.runtime.clone(),
            self.shared.durable_names.clone(),
        )
        .await
    }

    /// The cached data for `key`, fresh or stale. `None` when there is none, or when the
    /// key holds another type.
    pub fn get_query_data<T: Send + Sync + 'static>(&self, key: &QueryKey) -> Option<Arc<T>> {
        self.shared
            .cache
            .with(key, |e| {
                e.as_any().downcast_ref::<Entry<T>>().and_then(|e| e.data())
            })
            .flatten()
    }

    /// The data for `key` from memory, else from the second tier when a
    /// [`persist_prefix`](crate::QueryClientBuilder::persist_prefix) rule covers the key
    /// (its data type is known only through a rule). Reading the tier does not put the
    /// entry in memory, and a stored entry is returned whatever its age. `None` when
    /// neither holds it (a tier error or a corrupt entry counts as a miss).
    pub async fn get_query_data_or_stored<T: Send + Sync + 'static>(
        &self,
        key: &QueryKey,
    ) -> Option<Arc<T>> {
        if let Some(data) = self.get_query_data(key) {
            return Some(data);
        }
        let tier = self.shared.tier.as_ref()?;
        let fns = self.shared.persist_rules.find::<T>(key)?;
        let envelope = tier
            .read(&self.shared.counters, &key.to_string(), fns)
            .await?;
        Some(Arc::new(envelope.data))
    }

    /// A snapshot of the key's state (`None` when absent or of another type). Staleness is
    /// judged as for filters: stale if stale for any of the key's observers (each by its own
    /// stale time), and for a key without observers by the stale time of its last caller.
    pub fn get_query_state<T: Send + Sync + 'static>(
        &self,
        key: &QueryKey,
    ) -> Option<QueryState<T>> {
        self.shared
            .cache
            .with(key, |e| {
                e.as_any()
                    .downcast_ref::<Entry<T>>()
                    .map(|e| e.snapshot(None, self.shared.runtime.now()))
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
        let entry = self.shared.typed_entry::<T>(&key)?;
        self.shared.write(&entry, data, None);
        self.shared
            .cache
            .drop_if_keeping_nothing(&entry.key, entry.id);
        self.shared.send_removals();
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
        let entry = self.shared.typed_entry::<T>(&key)?;
        loop {
            let (old, gen) = entry.data_and_gen();
            let new = crate::user_code::contain("update_query_data", || updater(old.as_deref()))?;
            // Nothing written (or the updater panicked): an entry created just for this
            // call was armed for the gc when it was made, like every new entry.
            let Some(new) = new else {
                return Ok(old);
            };
            let new = Arc::new(new);
            // Check and write under one lock: two updaters can never both win.
            if self
                .shared
                .write(&entry, new.clone(), Some((old.as_ref(), gen)))
            {
                self.shared
                    .cache
                    .drop_if_keeping_nothing(&entry.key, entry.id);
                self.shared.send_removals();
                return Ok(Some(new));
            }
        }
    }

    fn matching(&self, filter: &QueryFilter) -> Vec<ErasedEntry> {
        let mut found = self.shared.cache.matching(filter.scope());
        found.retain(|e| filter.accepts(e));
        found
    }

    /// Marks matching entries stale (their data stays) and refetches the active ones (those
    /// with an enabled observer); waits for those refetches. Returns how many entries were
    /// invalidated. A disabled query is only marked stale.
    ///
    /// A fetch already in flight for an invalidated entry still delivers its result to its
    /// callers, but that result is stored as stale.
    ///
    /// This is [`invalidate_queries_with`](Self::invalidate_queries_with) with
    /// [`RefetchType::Active`]; that method also refetches entries nobody observes (a
    /// server's cache), or none at all.
    pub async fn invalidate_queries(&self, filter: impl Into<QueryFilter>) -> usize {
        self.invalidate_queries_with(filter, RefetchType::Active)
            .await
    }

    /// Marks matching entries stale (their data stays) and refetches those `refetch`
    /// covers (TanStack Query's `refetchType`: [`Active`](RefetchType::Active),
    /// [`Inactive`](RefetchType::Inactive), [`All`](RefetchType::All) or
    /// [`None`](RefetchType::None)); waits for those refetches. Returns how many entries
    /// were invalidated. A disabled query, and an entry only ever written by hand (no
    /// fetch function is known for it), are only marked stale.
    ///
    /// Each refetch replaces the fetch already in flight for its entry, if any (that one
    /// began before the invalidation): the old fetch's callers still get its result, but
    /// the cache does not store it. An entry that is not refetched keeps its fetch in
    /// flight, whose result is stored as stale. After this returns,
    /// [`fetch_query_fresh`](Self::fetch_query_fresh) never serves data from before the
    /// invalidation: it waits for (or joins) a fetch that began after it.
    ///
    /// # Other instances
    /// The invalidated flags go to the second tier (write-behind), and then, with a bus,
    /// the other instances hear of the invalidation: they mark their copies stale and
    /// refetch their *active* ones, whatever `refetch` says here — the refetch type stays
    /// on this instance (it is about what this instance reads next; every instance
    /// refetching every copy it holds would multiply the upstream load by the number of
    /// instances). Their next `fetch_query_fresh` waits for a fetch. Both happen after
    /// this returns: await [`flush_storage`](Self::flush_storage) to have the stored
    /// copies flagged before answering a request.
    ///
    /// ```
    /// use stackquery::{key, QueryClient, QueryOptions, RefetchType};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// // A server: nothing observes its queries.
    /// let client = QueryClient::new();
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let c = calls.clone();
    /// let opts = QueryOptions::new(key!["orders", 7], move || {
    ///     let c = c.clone();
    ///     async move { Ok::<_, std::io::Error>(c.fetch_add(1, Ordering::SeqCst) + 1) }
    /// })
    /// .stale_time(Duration::from_secs(60));
    /// client.fetch_query(&opts).await?;
    ///
    /// // After a mutation: refetch what this server holds now, and wait for it.
    /// let invalidated = client.invalidate_queries_with(key!["orders"], RefetchType::All).await;
    /// assert_eq!(invalidated, 1);
    /// assert_eq!(*client.fetch_query_fresh(&opts).await?, 2); // the refetched data
    /// assert_eq!(calls.load(Ordering::SeqCst), 2, "one fetch for the invalidation");
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_queries_with(
        &self,
        filter: impl Into<QueryFilter>,
        refetch: RefetchType,
    ) -> usize {
        let filter = filter.into();
        let found = self.matching(&filter);
        let n = found.len();
        let waits: Vec<_> = found
            .iter()
            .filter_map(|e| e.clone().invalidate(&self.shared, refetch))
            .collect();
        self.shared.invalidate_in_storage(covered(&filter, &found));
        tracing::debug!(entries = n, refetching = waits.len(), "invalidated");
        join_all(waits).await;
        n
    }

    /// Refetches every matching entry whose fetch function is known (entries only ever
    /// written by hand are skipped) and waits for them to settle. Returns how many ran.
    /// Disabled queries (observed only by disabled observers) are skipped too.
    pub async fn refetch_queries(&self, filter: impl Into<QueryFilter>) -> usize {
        let waits: Vec<_> = self
            .matching(&filter.into())
            .into_iter()
            .filter_map(|e| e.clone().refetch(&self.shared))
            .collect();
        let n = waits.len();
        join_all(waits).await;
        n
    }

    /// Aborts the fetches in flight for matching entries. Their waiters get
    /// [`QueryError::Cancelled`]; each entry goes back to its state before the fetch.
    /// Returns how many fetches were cancelled.
    ///
    /// Everything happens when the call is made; the future then waits until the
    /// cancelled fetch tasks have actually stopped, i.e. until each fetch function's
    /// future has been dropped (with whatever it held: connections, locks, guards). A
    /// fetch stops at its next `.await`; one stuck in blocking code keeps this waiting
    /// until it yields. Dropping the future early cancels the fetches all the same.
    pub async fn cancel_queries(&self, filter: impl Into<QueryFilter>) -> usize {
        let found = self.matching(&filter.into().fetching(true));
        let stopped: Vec<_> = found
            .iter()
            .filter_map(|e| e.clone().cancel(&self.shared))
            .collect();
        self.shared.cache.evict_if_over_capacity(); // pins released (regressions.rs)
        self.shared.send_removals();
        join_all(stopped).await;
        found.len()
    }

    /// Removes matching entries from the cache. Fetches in flight still deliver to their
    /// own callers but write nothing back. Returns how many were removed.
    pub fn remove_queries(&self, filter: impl Into<QueryFilter>) -> usize {
        let filter = filter.into();
        let found = self.matching(&filter);
        self.shared
            .forget_in_storage(covered(&filter, &found), true);
        let removed: Vec<_> = found
            .iter()
            .filter_map(|e| self.shared.cache.remove(e.key(), Some(e.id())))
            .collect();
        // Outside the cache lock: observers hear of the removal.
        for e in &removed {
            e.clone().notify_removed(&self.shared);
        }
        removed.len()
    }

    /// Puts matching entries back in their initial state (no data). Active entries (with an
    /// enabled observer) are refetched. Returns how many were reset.
    pub fn reset_queries(&self, filter: impl Into<QueryFilter>) -> usize {
        let filter = filter.into();
        let found = self.matching(&filter);
        self.shared
            .forget_in_storage(covered(&filter, &found), false);
        for e in &found {
            e.clone().reset(&self.shared);
            if e.is_active() {
                // Fire and forget: the refetch runs as its own task.
                drop(e.clone().refetch(&self.shared));
            }
        }
        found.len()
    }

    /// A serializable snapshot of every persisted query in memory that has data.
    pub fn dehydrate(&self) -> DehydratedState {
        let queries = self
            .shared
            .cache
            .matching(&KeyScope::All)
            .iter()
            .filter_map(|e| e.dehydrate(&self.shared))
            .collect();
        DehydratedState::new(queries)
    }

    /// Restores a snapshot made by [`dehydrate`](Self::dehydrate) (here or in another
    /// process). Newer data wins: an item older than what memory holds is ignored. Items for
    /// keys not in memory are kept until a persisted query of the key first runs, which
    /// then uses them instead of fetching (stale ones are served and refreshed); an item
    /// no query claims within the client's default gc time is dropped, and at most
    /// `max_queries` items wait. Returns how many items were applied or kept.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`](crate::StorageError::Corrupt) when the snapshot's format
    /// `version` is not the one this build writes; nothing is restored from it.
    pub fn hydrate(&self, snapshot: DehydratedState) -> Result<usize, crate::StorageError> {
        if snapshot.version != crate::storage::ENVELOPE_VERSION {
            return Err(crate::StorageError::Corrupt(format!(
                "snapshot format version {} (this build reads version {})",
                snapshot.version,
                crate::storage::ENVELOPE_VERSION
            )));
        }
        let shared = &self.shared;
        let mut used = 0;
        for q in snapshot.queries {
            let Ok(key) = q.key.parse::<QueryKey>() else {
                tracing::warn!(key = %q.key, "snapshot key does not parse: ignored");
                continue;
            };
            let leftover = match shared.cache.get(&key) {
                Some(e) => e.restore(shared, q).err(),
                None => Some(q),
            };
            used += match leftover {
                None => 1,
                Some(q) => {
                    let kept =
                        shared
                            .restored
                            .offer(q, shared.defaults.gc_time, shared.cache.max());
                    usize::from(kept)
                }
            };
        }
        // Restored data weighs (under a weight bound): trim to it.
        shared.cache.evict_if_over_capacity();
        shared.send_removals();
        Ok(used)
    }

    /// Waits until every queued second-tier write has been attempted (for shutdown and
    /// tests). Returns at once without a storage.
    pub async fn flush_storage(&self) {
        if let Some(tier) = &self.shared.tier {
            tier.flush(&self.shared.counters).await;
        }
    }

    /// Graceful shutdown: waits, at most `limit`, until everything this client owes the
    /// shared tier has landed (write-behind, invalidation flags and deletes, retried
    /// through an outage) and every bus message it still has to send has gone out. Returns
    /// `true` when all of it did.
    ///
    /// # What a plain drop loses
    /// Dropping the last handle without this call abandons what is still queued: recent
    /// writes never reach the second tier (the store keeps the previous value, or none),
    /// and announcements queued for the other instances are never sent, so they keep
    /// serving what this client changed until their own stale time passes. Call
    /// `shutdown` (or at least [`flush_storage`](Self::flush_storage)) before exiting.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let client = stackquery::QueryClient::new();
    /// // … serve requests …
    /// assert!(client.shutdown(std::time::Duration::from_secs(5)).await);
    /// # }
    /// ```
    pub async fn shutdown(&self, limit: std::time::Duration) -> bool {
        let start = tokio::time::Instant::now();
        let stored = match &self.shared.tier {
            Some(tier) => tier.settle(&self.shared.counters, limit).await,
            None => true,
        };
        // Announcements wait for their writes: drain the outbox in what time is left.
        let left = limit.saturating_sub(start.elapsed());
        let sent = self.shared.cluster.drain(left).await;
        stored && sent
    }

    /// How many matching entries have a fetch in flight.
    pub fn is_fetching(&self, filter: impl Into<QueryFilter>) -> usize {
        self.matching(&filter.into().fetching(true)).len()
    }

    /// Removes every entry.
    pub fn clear(&self) {
        for e in self.shared.cache.clear() {
            e.notify_removed(&self.shared);
        }
    }

    /// The client's counters and current size. O(1): every counter is kept up to date
    /// as it happens (striped over a fixed number of cache-padded slots, so concurrent
    /// hits do not contend), never summed over the entries.
    pub fn stats(&self) -> CacheStats {
        let mut stats = self.shared.counters.snapshot(self.shared.cache.len());
        (stats.evictions, stats.gc_collections) = self.shared.cache.removals();
        stats.total_weight = self.shared.cache.weight();
        self.shared.publish_metrics();
        stats
    }

    /// Publishes what the `metrics` recorder receives in batches — the fresh hits counted
    /// since the last publication and the `stackquery_entries` gauge — now (see
    /// [`telemetry`](crate::telemetry)). The client also does it whenever it starts a
    /// fetch, fires a timer or answers [`stats`](Self::stats); call it before rendering an
    /// export for exact figures. O(1); does nothing without the `metrics` feature.
    pub fn flush_metrics(&self) {
        self.shared.publish_metrics();
    }

    /// The keys of the entries a filter matches, sorted. A key filter is answered by the
    /// cache's prefix index (the cost grows with the matches, not with the cache); other
    /// conditions (staleness, activity, a predicate) then narrow the matches.
    pub fn query_keys(&self, filter: impl Into<QueryFilter>) -> Vec<QueryKey> {
        self.matching(&filter.into())
            .iter()
            .map(|e| e.key().clone())
            .collect()
    }

    /// A stream of everything that happens in the cache from now on: entries added,
    /// updated, invalidated, removed, evicted and collected; observers; mutations;
    /// fetches with their durations; second-tier reads and writes; bus traffic (see
    /// [`CacheEventKind`](crate::CacheEventKind)).
    ///
    /// Free while nobody subscribes (each emitting site reads one atomic first; the hit
    /// path emits nothing). A subscriber that falls behind the ring
    /// ([`event_capacity`](crate::QueryClientBuilder::event_capacity)) is told how many
    /// events it missed ([`EventStreamItem::Lagged`](crate::EventStreamItem::Lagged)); the
    /// cache never waits for it. The stream ends when the client is dropped.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use stackquery::{key, CacheEventKind, EventStreamItem, QueryClient};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let client = QueryClient::new();
    /// let mut events = client.subscribe_events();
    /// client.set_query_data(key!["todos"], vec!["write docs"]).unwrap();
    /// match events.next().await {
    ///     Some(EventStreamItem::Event(e)) => {
    ///         assert!(matches!(e.kind, CacheEventKind::QueryAdded { .. }))
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// # }
    /// ```
    pub fn subscribe_events(&self) -> crate::EventStream {
        self.shared.events.subscribe()
    }

    /// What every entry a filter matches holds and how it is doing, whatever its data
    /// type, sorted by key: status, fetch status, observers, last update, staleness,
    /// failures, and the data's type name and size. For tools that do not know the data
    /// types (the devtools panel, admin endpoints). Each entry is read under its own lock
    /// once; no user code runs, so the data is described but not encoded (see
    /// [`query_info`](Self::query_info) for its JSON).
    ///
    /// ```
    /// use stackquery::{key, QueryClient, QueryStatus};
    ///
    /// let client = QueryClient::new();
    /// client.set_query_data(key!["todos", 1], "write docs".to_string()).unwrap();
    /// let infos = client.inspect_queries(key!["todos"]);
    /// assert_eq!(infos.len(), 1);
    /// assert_eq!(infos[0].status, QueryStatus::Success);
    /// assert_eq!(infos[0].data.as_ref().unwrap().type_name, "alloc::string::String");
    /// ```
    pub fn inspect_queries(&self, filter: impl Into<QueryFilter>) -> Vec<crate::QueryInfo> {
        self.matching(&filter.into())
            .iter()
            .map(|e| e.describe(&self.shared, false))
            .collect()
    }

    /// One entry as [`inspect_queries`](Self::inspect_queries) describes it, plus its data
    /// as JSON when the query is persisted (its options or a
    /// [`persist_prefix`](crate::QueryClientBuilder::persist_prefix) rule give the
    /// encoding). The `Serialize` impl runs with no lock held. `None` when the key has no
    /// entry. Reading it does not count as a use of the entry.
    ///
    /// ```
    /// use stackquery::{key, QueryClient, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// let client = QueryClient::new();
    /// let opts = QueryOptions::new(key!["user", 1], || async {
    ///     Ok::<_, std::io::Error>(vec![1_u32, 2])
    /// })
    /// .persist(); // the encoding is known: the data is shown as JSON
    /// client.fetch_query(&opts).await?;
    /// let info = client.query_info(&key!["user", 1]).unwrap();
    /// let json = info.data.unwrap().json.unwrap().unwrap();
    /// assert_eq!(json, serde_json::json!([1, 2]));
    /// # Ok(()) }
    /// ```
    pub fn query_info(&self, key: &QueryKey) -> Option<crate::QueryInfo> {
        self.shared
            .cache
            .get(key)
            .map(|e| e.describe(&self.shared, true))
    }

    /// How many entries the cache holds now (one atomic read).
    pub fn query_count(&self) -> usize {
        self.shared.cache.len()
    }

    /// Puts a client together (called by [`QueryClientBuilder::build`]).
    pub(crate) fn assemble(
        defaults: Defaults,
        bounds: crate::cache::Bounds,
        tier: Option<Arc<Tier>>,
        cluster: Cluster,
        persist_rules: crate::persist_rules::PersistRules,
        runtime: crate::host::Runtime,
        event_capacity: usize,
    ) -> QueryClient {
        let shared = Shared::new(
            defaults,
            bounds,
            tier,
            cluster,
            persist_rules,
            runtime,
            event_capacity,
        );
        QueryClient {
            _life: Some(Arc::new(ClientLife(shared.clone()))),
            shared,
        }
    }
}
