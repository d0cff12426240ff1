//! [`QueryClientBuilder`]: client-wide defaults, limits, and the optional tiers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::client::QueryClient;
use crate::engine::cluster::Cluster;
use crate::engine::tier::{clamp_jitter, Tier, TierConfig};
use crate::key::QueryKey;
use crate::options::Defaults;
use crate::retry::retry_setters;
use crate::storage::{Codec, Storage, TimeoutStorage, DEFAULT_DELETE_PREFIX_TIMEOUT};

/// [`QueryClientBuilder::server`]'s retry delay (jittered down to half of it).
const SERVER_RETRY_DELAY: Duration = Duration::from_millis(250);
/// [`QueryClientBuilder::server`]'s bound on each fetch attempt.
const SERVER_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// [`QueryClientBuilder::server`]'s bound on the entries in memory.
const SERVER_MAX_QUERIES: usize = 10_000;

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
#[must_use]
pub struct QueryClientBuilder {
    defaults: Defaults,
    max_queries: Option<usize>,
    max_weight: Option<u64>,
    default_weight: u32,
    storage: Option<Arc<dyn Storage>>,
    storage_timeout: Duration,
    storage_delete_prefix_timeout: Duration,
    tier: TierConfig,
    cluster: Cluster,
    persist_rules: crate::persist_rules::PersistRules,
    runtime: crate::host::Runtime,
    event_capacity: usize,
}

impl Default for QueryClientBuilder {
    fn default() -> Self {
        QueryClientBuilder {
            defaults: Defaults::default(),
            max_queries: None,
            max_weight: None,
            default_weight: 1,
            storage: None,
            storage_timeout: Duration::from_secs(1),
            storage_delete_prefix_timeout: DEFAULT_DELETE_PREFIX_TIMEOUT,
            tier: TierConfig {
                codec: Codec::Json,
                ttl: Default::default(),
            },
            cluster: Cluster::default(),
            persist_rules: Default::default(),
            runtime: Default::default(),
            event_capacity: crate::events::DEFAULT_CAPACITY,
        }
    }
}

impl fmt::Debug for QueryClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryClientBuilder")
            .field("defaults", &self.defaults)
            .field("max_queries", &self.max_queries)
            .field("max_weight", &self.max_weight)
            .field("default_weight", &self.default_weight)
            .field("storage", &self.storage.is_some())
            .field("storage_timeout", &self.storage_timeout)
            .field(
                "storage_delete_prefix_timeout",
                &self.storage_delete_prefix_timeout,
            )
            .field("tier", &self.tier)
            .field("persist_rules", &self.persist_rules)
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

    /// Defaults for a server: a request handler must answer in bounded time, and a dead
    /// upstream must not cost every request seconds of retries.
    ///
    /// | setting | built-in | `server()` | why |
    /// |---|---|---|---|
    /// | retries | 3, after 1 s, 2 s, 4 s | 1, after 125–250 ms (jittered) | a dead upstream cost ~7 s per request; now ~250 ms |
    /// | retry a timeout | yes | no | a hung upstream would hold the request twice as long |
    /// | [`fetch_timeout`](Self::fetch_timeout) | none | 5 s per attempt | a hung upstream held every waiter of the key, and pinned its entry |
    /// | [`max_queries`](Self::max_queries) | unbounded | 10,000 | keys built from request input must not grow memory without bound |
    ///
    /// Everything else keeps its built-in value (stale time 0, gc time 5 minutes): how
    /// long data may be served stale is the data's business — set
    /// [`stale_time`](Self::stale_time) too. Call `server()` first: setters after it
    /// override its choices, and each query's own settings win over all of them.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stackquery::{key, QueryClient, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let client = QueryClient::builder()
    ///     .server()
    ///     .stale_time(Duration::from_secs(10))
    ///     .build();
    /// let down = QueryOptions::new(key!["upstream"], || async {
    ///     Err::<u32, _>(std::io::Error::other("connection refused"))
    /// });
    /// let started = tokio::time::Instant::now();
    /// assert!(client.fetch_query(&down).await.is_err());
    /// // One retry, at most 250 ms later: not the ~7 s of the built-in three.
    /// assert!(started.elapsed() <= Duration::from_millis(250));
    /// # }
    /// ```
    pub fn server(self) -> Self {
        self.retry_if(|failures, error| failures <= 1 && !error.is_timeout())
            .retry_delay(|_| SERVER_RETRY_DELAY)
            .retry_jitter(true)
            .fetch_timeout(SERVER_FETCH_TIMEOUT)
            .max_queries(SERVER_MAX_QUERIES)
    }

    /// Default bound on each attempt of every query's fetch function (built-in: none); a
    /// query's own [`fetch_timeout`](crate::QueryOptions::fetch_timeout) wins, and
    /// `Duration::ZERO` there turns the bound off for that query.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.fetch_timeout = crate::options::FetchTimeout::from_duration(timeout);
        self
    }

    retry_setters! {
        config: defaults.retry;
        retried: "a failed fetch";
        count: "built-in: 3";
        note: "The client's default, for every query that does not set its own.";
        // `QueryClientBuilder` itself is `#[must_use]`.
        each: ;
    }

    /// Runs the engine on `host` instead of tokio: its clock judges freshness and gc, its
    /// tasks run fetches that outlive their first caller and the timer driver, and its
    /// sleeps time the retries (see [`Host`](crate::Host)). For embedding the engine in
    /// another event loop, such as the Python package's asyncio driver. The second tier
    /// and the bus still need a tokio runtime.
    pub fn host(mut self, host: std::sync::Arc<dyn crate::Host>) -> Self {
        self.runtime = crate::host::Runtime::Custom(host);
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

    /// Bound on the total weight of the entries in memory, like moka's weigher: each
    /// entry weighs what its query's [`weigher`](crate::QueryOptions::weigher) (or
    /// [`weigh_serialized`](crate::QueryOptions::weigh_serialized)) says of its data, and
    /// data of a query without one weighs the [`default_weight`](Self::default_weight)
    /// (1 unless set). An entry without data weighs 0. The total is in
    /// [`CacheStats::total_weight`](crate::CacheStats::total_weight).
    ///
    /// * An entry is weighed each time it stores data (a fetch settles, a read from the
    ///   second tier, `set_query_data`, a restored snapshot) — with no lock held, before
    ///   the data goes in — and re-weighed with every new value. Removal, gc, reset and
    ///   eviction take its weight off the total.
    /// * When the total exceeds the bound, entries are evicted as under
    ///   [`max_queries`](Self::max_queries): least recently used first (CLOCK), never an
    ///   entry that is observed or fetching. The entry that just stored its data gets a
    ///   second chance, so older unused entries go first. If pinned entries alone weigh
    ///   more than the bound, every other entry is evicted and the total stays above the
    ///   bound until they are released (the next fetch or departing observer trims it).
    /// * An entry heavier than the whole bound is not kept (as in moka): its callers get
    ///   the data, and it is evicted as soon as nothing pins it.
    /// * Both bounds can be set: each is kept.
    ///
    /// Without this bound no weigher runs and every weight is 0.
    ///
    /// ```
    /// use stackquery::{key, QueryClient, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// // Keep at most 10 KiB of pages in memory, weighed by their length.
    /// let client = QueryClient::builder().max_weight(10 * 1024).build();
    /// let page = |id: u32, len: usize| {
    ///     QueryOptions::new(key!["page", id], move || async move {
    ///         Ok::<_, std::io::Error>("x".repeat(len))
    ///     })
    ///     .weigher(|html: &String| u32::try_from(html.len()).unwrap_or(u32::MAX))
    /// };
    /// client.fetch_query(&page(1, 4 * 1024)).await?;
    /// client.fetch_query(&page(2, 4 * 1024)).await?;
    /// assert_eq!(client.stats().total_weight, 8 * 1024);
    /// // A third page does not fit: the least recently used page makes room.
    /// client.fetch_query(&page(3, 4 * 1024)).await?;
    /// assert_eq!(client.stats().total_weight, 8 * 1024);
    /// assert!(client.get_query_data::<String>(&key!["page", 1]).is_none());
    /// // Heavier than the whole bound: served, but not kept.
    /// let huge = client.fetch_query(&page(4, 64 * 1024)).await?;
    /// assert_eq!(huge.len(), 64 * 1024);
    /// assert!(client.get_query_data::<String>(&key!["page", 4]).is_none());
    /// # Ok(()) }
    /// ```
    pub fn max_weight(mut self, max: u64) -> Self {
        self.max_weight = Some(max);
        self
    }

    /// The weight of data whose query has no [`weigher`](crate::QueryOptions::weigher)
    /// (data written by hand before any query of its key ran, for one), and of data whose
    /// weigher panicked or could not serialise it (default 1). Used only with
    /// [`max_weight`](Self::max_weight). With a byte-sized bound, 1 makes such entries
    /// almost free, so bound their number with [`max_queries`](Self::max_queries), or set
    /// a typical size here.
    pub fn default_weight(mut self, weight: u32) -> Self {
        self.default_weight = weight;
        self
    }

    /// A second tier for queries marked [`persist`](crate::QueryOptions::persist): read on the
    /// first use of a cold key, written behind after fetches and manual writes. Its
    /// failures never fail a query: they are logged, counted in
    /// [`stats`](QueryClient::stats), and the client goes on from memory.
    ///
    /// A store shared with other code is passed as its `Arc` (`Arc<S>` and
    /// `Arc<dyn Storage>` are storages too).
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Some(Arc::new(storage));
        self
    }

    /// Bound on every second-tier `get`, `set` and `delete` (default 1 s); a call that
    /// takes longer is a timeout error (logged) and the client goes on. Prefix deletes
    /// have their own bound, [`storage_delete_prefix_timeout`](Self::storage_delete_prefix_timeout).
    pub fn storage_timeout(mut self, timeout: Duration) -> Self {
        self.storage_timeout = timeout;
        self
    }

    /// Bound on each whole second-tier prefix delete (default 5 s), as made by
    /// `remove_queries` and the like: it may remove many entries in many round trips, so
    /// it is not held to [`storage_timeout`](Self::storage_timeout). This is the only
    /// bound on a whole prefix delete — the backends bound their single round trips only
    /// (see [`TimeoutStorage`]). One that takes longer is a timeout error (logged, counted
    /// in [`l2_errors`](crate::CacheStats::l2_errors)), and entries it had not removed yet
    /// stay in the tier until their ttl.
    pub fn storage_delete_prefix_timeout(mut self, timeout: Duration) -> Self {
        self.storage_delete_prefix_timeout = timeout;
        self
    }

    /// How entries are encoded in the second tier (default JSON, inspectable).
    pub fn storage_codec(mut self, codec: Codec) -> Self {
        self.tier.codec = codec;
        self
    }

    /// Time to live of second-tier entries (default: each query's gc time). A query's own
    /// [`QueryOptions::storage_ttl`](crate::QueryOptions::storage_ttl) and the
    /// [`storage_ttl_prefix`](Self::storage_ttl_prefix) rules win over it.
    /// `Duration::MAX` never expires. See [`storage_ttl_jitter`](Self::storage_ttl_jitter)
    /// to keep keys written together from expiring together.
    pub fn storage_ttl(mut self, ttl: Duration) -> Self {
        self.tier.ttl.default = Some(ttl);
        self
    }

    /// Time to live of the second-tier entries of every key under `prefix` (the key
    /// itself included): wins over the client's [`storage_ttl`](Self::storage_ttl), while a
    /// query's own [`QueryOptions::storage_ttl`](crate::QueryOptions::storage_ttl) wins over
    /// it. Rules are tried in the order added (the first covering a key applies), like
    /// [`persist_prefix`](Self::persist_prefix) rules, and apply to manual writes of keys
    /// no query has used yet. `Duration::MAX` never expires.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stackquery::{key, MemoryStorage, QueryClient};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let store = MemoryStorage::new();
    /// let client = QueryClient::builder()
    ///     .storage(store.clone())
    ///     .storage_ttl(Duration::from_secs(24 * 3_600))
    ///     .storage_ttl_prefix(key!["session"], Duration::from_secs(15 * 60))
    ///     .persist_prefix::<String>(key!["session"])
    ///     .build();
    /// client.set_query_data(key!["session", "abc"], "Ada".to_string()).unwrap();
    /// client.flush_storage().await;
    /// assert_eq!(store.len(), 1);
    /// tokio::time::advance(Duration::from_secs(15 * 60)).await;
    /// assert_eq!(store.len(), 0); // stored for 15 minutes, not a day
    /// # }
    /// ```
    pub fn storage_ttl_prefix(mut self, prefix: impl Into<QueryKey>, ttl: Duration) -> Self {
        self.tier.ttl.add_rule(prefix.into(), ttl);
        self
    }

    /// Spreads the expiry of second-tier entries: each write's ttl (whichever setting gave
    /// it, the gc time included) is **shortened** by an independent random part of up to
    /// `fraction` of it, uniform in `(ttl · (1 − fraction), ttl]`. Keys written in the same
    /// instant (a batch, a warm-up, a burst after a deploy) then expire spread over that
    /// window instead of all at once, so their refetches do not stampede the upstream
    /// together. Default 0 (no jitter); 0.1 spreads over the last 10 % of each ttl.
    ///
    /// Why shortening only: a ttl bounds how long a stored copy can be read back, so a
    /// configured ttl must stay a maximum age — a jitter that lengthened it would let
    /// others read copies older than asked. Shortening only costs a refetch a little
    /// sooner. A ttl of `Duration::MAX` ("never") is not jittered.
    ///
    /// `fraction` is clamped to `[0, 1]` (with a warning in the log): NaN or negative is 0,
    /// more than 1 is 1 (a ttl anywhere in `(0, ttl]`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stackquery::storage::MemoryStorage;
    /// use stackquery::{key, QueryClient};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let store = MemoryStorage::new();
    /// let client = QueryClient::builder()
    ///     .storage(store.clone())
    ///     .storage_ttl(Duration::from_secs(100))
    ///     .storage_ttl_jitter(0.5) // each copy lives between 50 s and 100 s
    ///     .persist_prefix::<u32>(key!["item"])
    ///     .build();
    /// for i in 0..20_u32 {
    ///     client.set_query_data(key!["item", i], i).unwrap();
    /// }
    /// client.flush_storage().await;
    ///
    /// tokio::time::advance(Duration::from_secs(50)).await;
    /// assert_eq!(store.len(), 20); // none expires before 50 s
    /// tokio::time::advance(Duration::from_secs(50)).await;
    /// assert_eq!(store.len(), 0); // and none outlives its 100 s
    /// # }
    /// ```
    pub fn storage_ttl_jitter(mut self, fraction: f64) -> Self {
        let clamped = clamp_jitter(fraction).unwrap_or_else(|clamped| {
            tracing::warn!(
                fraction,
                clamped,
                "storage_ttl_jitter: the fraction is not in [0, 1], clamped"
            );
            clamped
        });
        self.tier.ttl.set_jitter(clamped);
        self
    }

    /// Shares invalidations with every client on the same bus namespace (feature `redis`):
    /// `invalidate_queries`, `set_query_data` and `remove_queries` here reach the others,
    /// and theirs reach this client. Use it with a shared tier
    /// ([`RedisStorage`](crate::RedisStorage)) so updates made elsewhere are read from it
    /// instead of fetched again.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn bus(mut self, bus: crate::bus::RedisBus) -> Self {
        self.cluster.outbox = Some(crate::bus::outbox::Outbox::new(bus.clone()));
        self.cluster.bus = Some(bus);
        self
    }

    /// Cluster-wide deduplication for persisted queries (feature `redis`): when several
    /// instances want one cold key at once, one of them fetches under a lease (held at most
    /// `lease_ttl` if its holder dies) and the others read its result from the shared tier,
    /// woken by the bus; after `max_wait` a waiter fetches by itself. Needs a storage and
    /// a [`bus`](Self::bus). Both durations saturate: `Duration::MAX` means "never" (a
    /// lease that only its release ends; a waiter that never gives up).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn cluster_dedup(
        mut self,
        leases: crate::bus::RedisLeases,
        lease_ttl: Duration,
        max_wait: Duration,
    ) -> Self {
        self.cluster.dedup = Some(crate::engine::cluster::Dedup {
            leases,
            lease_ttl,
            max_wait,
        });
        self
    }

    /// Persists every key under `prefix` that holds a `T`, whatever its queries say: manual
    /// writes and optimistic updates of such a key reach the second tier even before any
    /// query of it ran here (so a restart never serves the older stored value), and its
    /// reads hydrate from the second tier like a query marked
    /// [`persist`](crate::QueryOptions::persist). Rules are tried in the order added.
    /// Without a storage this does nothing.
    ///
    /// ```
    /// use stackquery::{key, MemoryStorage, QueryClient};
    ///
    /// let client = QueryClient::builder()
    ///     .storage(MemoryStorage::new())
    ///     .persist_prefix::<String>(key!["user"])
    ///     .build();
    /// // Persisted although no query of ["user", 1] has run yet.
    /// client.set_query_data(key!["user", 1], "Ada".to_string()).unwrap();
    /// ```
    pub fn persist_prefix<T>(mut self, prefix: impl Into<QueryKey>) -> Self
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        self.persist_rules.add::<T>(prefix.into());
        self
    }

    /// [`persist_prefix`](Self::persist_prefix) for a data type that is not a serde type:
    /// `C` converts it to and from the stored JSON (see
    /// [`JsonConverter`](crate::storage::JsonConverter)).
    pub fn persist_prefix_with<T, C>(mut self, prefix: impl Into<QueryKey>) -> Self
    where
        T: Send + Sync + 'static,
        C: crate::storage::JsonConverter<T>,
    {
        self.persist_rules.add_with::<T, C>(prefix.into());
        self
    }

    /// Size of the event ring of [`subscribe_events`](QueryClient::subscribe_events)
    /// (default 4,096): a subscriber further behind than this misses the oldest events,
    /// and is told how many. At least 1.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Builds the client. Call inside or outside a tokio runtime; background work (the
    /// gc task) starts on the first use inside one.
    pub fn build(self) -> QueryClient {
        let (timeout, prefix_timeout) = (self.storage_timeout, self.storage_delete_prefix_timeout);
        let tier = self.storage.map(|s| {
            let bounded: Arc<dyn Storage> = Arc::new(
                TimeoutStorage::new(s, timeout).with_delete_prefix_timeout(prefix_timeout),
            );
            Arc::new(Tier::new(bounded, self.tier))
        });
        let bounds = crate::cache::Bounds {
            max_queries: self.max_queries,
            weight: self.max_weight.map(|max| crate::weight::WeightBound {
                max,
                default: self.default_weight,
            }),
        };
        QueryClient::assemble(
            self.defaults,
            bounds,
            tier,
            self.cluster,
            self.persist_rules,
            self.runtime,
            self.event_capacity,
        )
    }
}
