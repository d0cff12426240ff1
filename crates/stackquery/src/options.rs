//! Per-query options: the key, the fetch function, and settings that override the
//! client-wide defaults.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::context::FetchContext;
use crate::error::BoxError;
use crate::fetcher::{Fetcher, Plain, WithContext};
use crate::key::QueryKey;
use crate::retry::{retry_setters, Retry, RetryConfig, QUERY_RETRIES};
use crate::storage::typed::PersistFns;
use crate::weight::Weigher;

mod initial;
mod storage_ttl;
pub(crate) use initial::{stamp_and_age, InitialData};
mod typed;
pub(crate) use storage_ttl::CompactTtl;

/// The equality of structural sharing (`QueryOptions::structural_sharing`).
pub(crate) type DataEq<T> = dyn Fn(&T, &T) -> bool + Send + Sync;

/// What to fetch (a key and an async function) and how to cache it.
///
/// The function takes no argument ([`new`](Self::new)), or a [`FetchContext`] on each
/// attempt ([`with_context`](Self::with_context)): the key, the attempt number and a
/// cancellation token that fires when nobody will take the attempt's result.
///
/// Every setting left unset falls back to the client's default; a setting that is set,
/// even to the built-in default value, wins over the client's (`stale_time(ZERO)` on a
/// client whose default is 60 s gives 0). Cloning is cheap (reference-count bumps).
///
/// ```
/// use stackquery::{key, QueryOptions};
/// use std::time::Duration;
///
/// let id = 7;
/// let opts = QueryOptions::new(key!["user", id], move || async move {
///     Ok::<_, std::io::Error>(format!("user {id}"))
/// })
/// .stale_time(Duration::from_secs(60))
/// .retry(2);
/// assert_eq!(opts.key(), &key!["user", 7]);
/// ```
pub struct QueryOptions<T> {
    pub(crate) key: QueryKey,
    pub(crate) fetcher: Fetcher<T>,
    pub(crate) stale_time: Option<Duration>,
    pub(crate) gc_time: Option<Duration>,
    pub(crate) retry: RetryConfig,
    pub(crate) refetch_interval: Option<Duration>,
    pub(crate) enabled: bool,
    /// Settings most queries never set (the placeholder, the weigher), behind one
    /// pointer: every entry keeps its last options, and a field here costs it nothing.
    pub(crate) extras: Option<Arc<Extras<T>>>,
    pub(crate) persist: Option<PersistFns<T>>,
    /// Bound on each attempt of the fetch function (unset: the client's default).
    pub(crate) fetch_timeout: FetchTimeout,
    /// This query's second-tier ttl. Three bytes (`options/storage_ttl.rs`): they fit in
    /// the padding that was left after `enabled` and `fetch_timeout`.
    pub(crate) storage_ttl: CompactTtl,
}

/// The rarely set settings of a [`QueryOptions`] (see its `extras`). Shared by clones of
/// the options, copied when a clone changes one.
pub(crate) struct Extras<T> {
    /// Data shown to observers while the first fetch is pending.
    placeholder_data: Option<Arc<T>>,
    /// Weighs the query's data for the client's weight bound (`None`: the default
    /// weight).
    weigher: Option<Arc<Weigher<T>>>,
    /// Data a new entry (or one with no data) starts with: cached, judged by the stale
    /// time from `initial_updated_at`.
    initial: Option<InitialData<T>>,
    /// The wall-clock stamp of the initial data (`None`: the moment it is seeded).
    initial_updated_at: Option<SystemTime>,
    /// An observer switched to this query's key by `set_options` shows the previous key's
    /// data (as placeholder) until the new key has data.
    keep_previous_data: bool,
    /// Structural sharing: a fetch that returns data equal to the data held keeps the
    /// held `Arc`.
    structural_eq: Option<Arc<DataEq<T>>>,
}

impl<T> Default for Extras<T> {
    fn default() -> Self {
        Extras {
            placeholder_data: None,
            weigher: None,
            initial: None,
            initial_updated_at: None,
            keep_previous_data: false,
            structural_eq: None,
        }
    }
}

impl<T> Clone for Extras<T> {
    fn clone(&self) -> Self {
        Extras {
            placeholder_data: self.placeholder_data.clone(),
            weigher: self.weigher.clone(),
            initial: self.initial.clone(),
            initial_updated_at: self.initial_updated_at,
            keep_previous_data: self.keep_previous_data,
            structural_eq: self.structural_eq.clone(),
        }
    }
}

impl<T> Clone for QueryOptions<T> {
    fn clone(&self) -> Self {
        QueryOptions {
            key: self.key.clone(),
            fetcher: self.fetcher.clone(),
            stale_time: self.stale_time,
            gc_time: self.gc_time,
            retry: self.retry.clone(),
            refetch_interval: self.refetch_interval,
            enabled: self.enabled,
            extras: self.extras.clone(),
            persist: self.persist,
            fetch_timeout: self.fetch_timeout,
            storage_ttl: self.storage_ttl,
        }
    }
}

impl<T> fmt::Debug for QueryOptions<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryOptions")
            .field("key", &self.key)
            .field("stale_time", &self.stale_time)
            .field("gc_time", &self.gc_time)
            .field("retry", &self.retry)
            .field("refetch_interval", &self.refetch_interval)
            .field("enabled", &self.enabled)
            .field("persist", &self.persist.is_some())
            .field("storage_ttl", &self.storage_ttl)
            .field("weigher", &self.weigher_fn().is_some())
            .field("initial_data", &self.initial().is_some())
            .field("keep_previous_data", &self.keeps_previous_data())
            .field("structural_sharing", &self.structural_eq().is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> QueryOptions<T> {
    /// Options for `key`, fetched by `fetch`.
    ///
    /// The function's error type only needs to convert into a boxed error, so
    /// `std::io::Error`, `anyhow::Error`, `reqwest::Error`, `String` all work.
    pub fn new<F, Fut, E>(key: impl Into<QueryKey>, fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self::with_fetcher(key.into(), Arc::new(Plain(fetch)))
    }

    /// Options for `key`, fetched by `fetch`, which is given a [`FetchContext`] on each
    /// attempt: the key, the attempt number (from 0) and a cancellation token, the
    /// equivalent of TanStack Query's `AbortSignal`. The token fires when nobody will take
    /// the attempt's result: [`cancel_queries`](crate::QueryClient::cancel_queries), the
    /// attempt's [`fetch_timeout`](Self::fetch_timeout), the entry's removal or reset (see
    /// [`FetchContext`] for the details). Listening to it is optional; a function that
    /// does can stop its work (close a connection, abort a request in another task) early.
    ///
    /// Only fetches of such options create a token (one allocation per fetch and one per
    /// attempt); [`new`](Self::new) pays for none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stackquery::{key, FetchContext, QueryClient, QueryError, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let client = QueryClient::new();
    /// let (told, mut heard) = tokio::sync::mpsc::unbounded_channel();
    /// let opts = QueryOptions::with_context(key!["report", 7], move |ctx: FetchContext| {
    ///     let told = told.clone();
    ///     async move {
    ///         assert_eq!(ctx.key(), &key!["report", 7]);
    ///         // The work runs in a task of its own (a download, say); the token stops it.
    ///         let token = ctx.cancellation().clone();
    ///         let work = tokio::spawn(async move {
    ///             tokio::select! {
    ///                 _ = token.cancelled() => {
    ///                     let _ = told.send("stopped");
    ///                     None
    ///                 }
    ///                 _ = tokio::time::sleep(Duration::from_secs(60)) => Some(42_u32),
    ///             }
    ///         });
    ///         work.await.ok().flatten().ok_or("no report")
    ///     }
    /// });
    ///
    /// let fetch = tokio::spawn({
    ///     let (client, opts) = (client.clone(), opts.clone());
    ///     async move { client.fetch_query(&opts).await }
    /// });
    /// tokio::time::sleep(Duration::from_secs(1)).await;
    /// client.cancel_queries(key!["report"]).await;
    /// assert_eq!(heard.recv().await, Some("stopped"));
    /// assert!(matches!(fetch.await.unwrap(), Err(QueryError::Cancelled)));
    /// # }
    /// ```
    pub fn with_context<F, Fut, E>(key: impl Into<QueryKey>, fetch: F) -> Self
    where
        F: Fn(FetchContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self::with_fetcher(key.into(), Arc::new(WithContext(fetch)))
    }

    pub(crate) fn with_fetcher(key: QueryKey, fetcher: Fetcher<T>) -> Self {
        QueryOptions {
            key,
            fetcher,
            stale_time: None,
            gc_time: None,
            retry: RetryConfig::default(),
            refetch_interval: None,
            enabled: true,
            extras: None,
            persist: None,
            fetch_timeout: FetchTimeout::UNSET,
            storage_ttl: CompactTtl::UNSET,
        }
    }

    /// Weighs this query's data for the client's
    /// [`max_weight`](crate::QueryClientBuilder::max_weight) bound: `weigher(&data)` is the
    /// weight of an entry holding `data` (in any unit, as long as the bound uses the same).
    /// Without it the query's data weighs the client's
    /// [`default_weight`](crate::QueryClientBuilder::default_weight).
    ///
    /// The weigher runs each time data of this query is stored — a fetch settles, or data
    /// is read from the second tier — and for manual writes and restored snapshots of a
    /// key whose last query had it. It runs with no lock held (it may call the client),
    /// not at all on a client without a weight bound, and a weigher that panics weighs
    /// the default weight (logged). Keep it cheap: it runs on every fill.
    ///
    /// ```
    /// use stackquery::{key, QueryOptions};
    ///
    /// let opts = QueryOptions::new(key!["thumbnail", 7], || async {
    ///     Ok::<_, std::io::Error>(vec![0_u8; 4096])
    /// })
    /// // Weight in KiB, rounded up.
    /// .weigher(|bytes: &Vec<u8>| u32::try_from(bytes.len().div_ceil(1024)).unwrap_or(u32::MAX));
    /// # let _ = opts;
    /// ```
    #[must_use]
    pub fn weigher(mut self, weigher: impl Fn(&T) -> u32 + Send + Sync + 'static) -> Self {
        self.extras_mut().weigher = Some(Weigher::new(weigher));
        self
    }
}

impl<T: Send + Sync + 'static> QueryOptions<T> {
    /// Data the query's entry starts with (TanStack Query's `initialData`). Unlike
    /// [`placeholder_data`](Self::placeholder_data), it is *cached*: when these options
    /// meet an entry holding no data (a new key, or one whose first fetch has not
    /// returned), the entry takes `data` as its data (`status` `Success`, no fetch
    /// needed), and it counts for freshness like fetched data: fresh for the stale time
    /// from [`initial_data_updated_at`](Self::initial_data_updated_at) (default: the
    /// moment it is seeded). So `fetch_query` returns fresh initial data with no fetch,
    /// and stale initial data at once while it refetches in the background (`fetch_query_fresh`
    /// waits for that fetch). A fetch in flight when it is seeded still replaces it.
    ///
    /// Seeded by the typed calls (`fetch_query` and friends) and by observers, including
    /// disabled ones. Not written to the second tier by itself (every instance has it);
    /// the first fetched data is. For a persisted query whose stored copy has not been
    /// read yet, the stored copy is read first and wins if there is one, unless the
    /// initial data has a stamp newer than the copy's.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stackquery::{key, QueryClient, QueryOptions, QueryStatus};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// let client = QueryClient::new();
    /// let opts = QueryOptions::new(key!["settings"], || async {
    ///     Ok::<_, std::io::Error>("fetched".to_string())
    /// })
    /// .initial_data("built in".to_string())
    /// .stale_time(Duration::from_secs(60));
    ///
    /// // Fresh for a minute: served from the cache, no fetch.
    /// assert_eq!(client.fetch_query(&opts).await?.as_str(), "built in");
    /// let state = client.get_query_state::<String>(&key!["settings"]).unwrap();
    /// assert_eq!(state.status, QueryStatus::Success);
    ///
    /// tokio::time::advance(Duration::from_secs(60)).await;
    /// // Stale: served at once, refetched behind; `fetch_query_fresh` waits for that.
    /// assert_eq!(client.fetch_query_fresh(&opts).await?.as_str(), "fetched");
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn initial_data(mut self, data: T) -> Self {
        self.extras_mut().initial = Some(InitialData::Value(Arc::new(data)));
        self
    }

    /// [`initial_data`](Self::initial_data) built by `make` when an entry is seeded (with
    /// no lock held; it may run more than once when callers race, so keep it cheap). A
    /// panic in it is logged and the entry gets no initial data.
    ///
    /// ```
    /// use stackquery::{key, QueryClient, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// let client = QueryClient::new();
    /// let opts = QueryOptions::new(key!["todos"], || async { Ok::<_, String>(vec![1, 2]) })
    ///     .initial_data_with(Vec::new)
    ///     .stale_time(std::time::Duration::from_secs(5));
    /// assert!(client.fetch_query(&opts).await?.is_empty());
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn initial_data_with(mut self, make: impl Fn() -> T + Send + Sync + 'static) -> Self {
        self.extras_mut().initial = Some(InitialData::Lazy(Arc::new(make)));
        self
    }
}

impl<T> QueryOptions<T> {
    /// When the [`initial_data`](Self::initial_data) was last known to be true (TanStack
    /// Query's `initialDataUpdatedAt`), by the wall clock: the entry's `data_updated_at`,
    /// and its freshness counts from there (its age now, by the wall clock, is carried
    /// onto the client's clock). Unset, the initial data is stamped when it is seeded. A
    /// stamp in the future counts as now. Also decides against a stored copy of a
    /// persisted query: set, the newer of the two wins; unset, a stored copy always wins.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use stackquery::{key, QueryClient, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let client = QueryClient::new();
    /// let an_hour_ago = SystemTime::now() - Duration::from_secs(3_600);
    /// let opts = QueryOptions::new(key!["feed"], || async { Ok::<_, String>(2) })
    ///     .initial_data(1)
    ///     .initial_data_updated_at(an_hour_ago)
    ///     .stale_time(Duration::from_secs(60));
    /// let _ = client.fetch_query(&opts).await; // 1 at once, refetched behind (stale)
    /// let state = client.get_query_state::<i32>(&key!["feed"]).unwrap();
    /// assert!(state.data_updated_at.is_some());
    /// # }
    /// ```
    #[must_use]
    pub fn initial_data_updated_at(mut self, at: SystemTime) -> Self {
        self.extras_mut().initial_updated_at = Some(at);
        self
    }

    /// When an observer is switched to these options by
    /// [`QueryObserver::set_options`](crate::QueryObserver::set_options) (a new key, say
    /// the next page), it keeps showing the data of the key it showed before, with
    /// `is_placeholder_data` set, until the new key has data (TanStack Query's
    /// `placeholderData: keepPreviousData`). The previous data wins over a
    /// [`placeholder_data`](Self::placeholder_data); an error on the new key shows the
    /// error, without data. See `set_options` for an example.
    #[must_use]
    pub fn keep_previous_data(mut self, on: bool) -> Self {
        self.extras_mut().keep_previous_data = on;
        self
    }
}

impl<T: PartialEq + Send + Sync + 'static> QueryOptions<T> {
    /// Structural sharing: when a fetch returns data equal (`PartialEq`) to the data the
    /// entry holds, the entry keeps the `Arc` it holds instead of the new one. So callers
    /// get the very same `Arc` (`Arc::ptr_eq`), and observers see no data change: a
    /// `select` does not run again and its listeners are not told of new data. What does
    /// change is told as usual: `data_updated_at` moves to the fetch (the data was
    /// confirmed then, so its freshness starts again), an invalidation is cleared, and
    /// the fetch status goes back to idle — an observer's listeners hear those changes,
    /// with the same data. The stored copy in the second tier is rewritten with the new
    /// stamp.
    ///
    /// The comparison runs once per fetch that returns data, with no lock held (it may
    /// call the client); a comparison that panics counts as "changed" (logged). It
    /// compares whole values: unlike TanStack Query's, it does not reuse equal parts of
    /// unequal data. Manual writes are not compared.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stackquery::{key, QueryClient, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// let client = QueryClient::new();
    /// let opts = QueryOptions::new(key!["tags"], || async {
    ///     Ok::<_, std::io::Error>(vec!["a".to_string(), "b".to_string()])
    /// })
    /// .structural_sharing();
    /// let first = client.fetch_query(&opts).await?;
    /// let again = client.refetch_query(&opts).await?; // fetched again, equal
    /// assert!(Arc::ptr_eq(&first, &again));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn structural_sharing(mut self) -> Self {
        self.extras_mut().structural_eq = Some(Arc::new(|a: &T, b: &T| a == b));
        self
    }
}

impl<T: serde::Serialize + Send + Sync + 'static> QueryOptions<T> {
    /// Weighs this query's data by its serialised size, for the client's
    /// [`max_weight`](crate::QueryClientBuilder::max_weight) bound: the weight is the
    /// length in bytes of the data as compact JSON (`serde_json::to_vec(&data)?.len()`,
    /// counted without building it; saturated at `u32::MAX`). Data that does not
    /// serialise weighs the client's default weight (logged). The same rules as
    /// [`weigher`](Self::weigher) apply (which this replaces, and which replaces it).
    ///
    /// The serialised length is a proxy for the memory the data holds, not its exact
    /// size; it costs one serialisation per stored value.
    ///
    /// ```
    /// use stackquery::{key, QueryClient, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// let client = QueryClient::builder().max_weight(1 << 20).build(); // 1 MiB of JSON
    /// let opts = QueryOptions::new(key!["tags"], || async {
    ///     Ok::<_, std::io::Error>(vec!["a".to_string(), "bc".to_string()])
    /// })
    /// .weigh_serialized();
    /// client.fetch_query(&opts).await?;
    /// assert_eq!(client.stats().total_weight, r#"["a","bc"]"#.len() as u64);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn weigh_serialized(mut self) -> Self {
        self.extras_mut().weigher = Some(Weigher::serialized());
        self
    }
}

/// The bound of [`QueryOptions::persist`]: a serde type (`Serialize + DeserializeOwned`),
/// implemented for every such type. It exists for its compile error, which names the
/// missing bound: with the bound on an `impl` block instead, calling `.persist()` on any
/// other type reported a private *field* named `persist`.
///
/// ```compile_fail
/// # use stackquery::{key, QueryOptions};
/// struct NotSerde;
/// // error: `.persist()` needs `NotSerde: serde::Serialize + serde::de::DeserializeOwned`
/// let opts = QueryOptions::new(key!["x"], || async { Ok::<_, String>(NotSerde) }).persist();
/// ```
#[diagnostic::on_unimplemented(
    message = "`.persist()` needs `{Self}: serde::Serialize + serde::de::DeserializeOwned`",
    label = "this query's data type is not a serde type",
    note = "derive `Serialize` and `Deserialize` for `{Self}`, or convert it yourself with `.persist_with::<C>()` (a `storage::JsonConverter`)"
)]
pub trait PersistData: serde::Serialize + serde::de::DeserializeOwned {}
impl<T: serde::Serialize + serde::de::DeserializeOwned> PersistData for T {}

impl<T> QueryOptions<T> {
    /// Opts this query into the client's second tier (its [`Storage`](crate::Storage)):
    /// a cold key is read from storage before fetching, and fetched or manually set data
    /// is written behind. Without a storage on the client this does nothing.
    ///
    /// `T` must be a serde type ([`PersistData`]); for any other type, see
    /// [`persist_with`](Self::persist_with).
    #[must_use]
    pub fn persist(mut self) -> Self
    where
        T: PersistData,
    {
        self.persist = Some(PersistFns::new());
        self
    }
}

impl<T: Send + Sync + 'static> QueryOptions<T> {
    /// [`persist`](Self::persist) for a data type that is not a serde type: `C` converts it
    /// to and from the stored JSON (see [`JsonConverter`](crate::storage::JsonConverter)).
    #[must_use]
    pub fn persist_with<C: crate::storage::JsonConverter<T>>(mut self) -> Self {
        self.persist = Some(PersistFns::via::<C>());
        self
    }
}

impl<T> QueryOptions<T> {
    /// Cheap check that `other` is a clone of these options with the same settings.
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.fetcher, &other.fetcher)
            && self.key == other.key
            && self.stale_time == other.stale_time
            && self.gc_time == other.gc_time
            && self.refetch_interval == other.refetch_interval
            && self.enabled == other.enabled
            && self.persist.is_some() == other.persist.is_some()
            && self.fetch_timeout == other.fetch_timeout
            && self.storage_ttl == other.storage_ttl
            && self.retry.same_as(&other.retry)
            && match (&self.extras, &other.extras) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }

    /// Whether the fetch function takes a [`FetchContext`]: only then does a fetch of these
    /// options carry a cancellation token.
    #[inline]
    pub(crate) fn takes_context(&self) -> bool {
        self.fetcher.takes_context()
    }

    /// Whether these options serve one call only (see `FetchFn::one_off`): the entry
    /// does not remember them.
    #[inline]
    pub(crate) fn one_off(&self) -> bool {
        self.fetcher.one_off()
    }

    /// Whether these are a streamed query's options ([`StreamedQuery`](crate::StreamedQuery)).
    #[inline]
    pub(crate) fn is_streamed(&self) -> bool {
        self.fetcher.as_stream().is_some()
    }

    /// The rarely set settings, to change one (copied first if a clone shares them).
    fn extras_mut(&mut self) -> &mut Extras<T> {
        let extras = self
            .extras
            .get_or_insert_with(|| Arc::new(Extras::default()));
        Arc::make_mut(extras)
    }

    /// Data shown to observers while the first fetch is pending.
    pub(crate) fn placeholder(&self) -> Option<&Arc<T>> {
        self.extras.as_ref()?.placeholder_data.as_ref()
    }

    /// The query's initial data and its stamp (`None`: seeded now), if it has any.
    pub(crate) fn initial(&self) -> Option<(&InitialData<T>, Option<SystemTime>)> {
        let extras = self.extras.as_ref()?;
        Some((extras.initial.as_ref()?, extras.initial_updated_at))
    }

    /// Whether an observer switched to this query shows the previous key's data meanwhile.
    pub(crate) fn keeps_previous_data(&self) -> bool {
        self.extras.as_ref().is_some_and(|e| e.keep_previous_data)
    }

    /// The equality of structural sharing, if the query opted in.
    pub(crate) fn structural_eq(&self) -> Option<&Arc<DataEq<T>>> {
        self.extras.as_ref()?.structural_eq.as_ref()
    }

    /// The query's weigher, if it has one.
    pub(crate) fn weigher_fn(&self) -> Option<&Arc<Weigher<T>>> {
        self.extras.as_ref()?.weigher.as_ref()
    }

    /// The query's key.
    pub fn key(&self) -> &QueryKey {
        &self.key
    }

    /// How long fetched data counts as fresh (default 0: stale at once).
    /// `Duration::MAX` means "never stale unless invalidated". Each caller and observer
    /// judges freshness with its own stale time; an observer's listeners are told when the
    /// data turns stale.
    #[must_use]
    pub fn stale_time(mut self, d: Duration) -> Self {
        self.stale_time = Some(d);
        self
    }

    /// Bounds each attempt of the fetch function: one that runs longer is dropped and
    /// counts as a failure, [`QueryError::Timeout`](crate::QueryError::Timeout) (retried
    /// like any failure; each attempt has the whole timeout). Without it a hung upstream
    /// holds every waiter of the key until [`cancel_queries`](crate::QueryClient::cancel_queries),
    /// and keeps its entry pinned past `max_queries`. Timed on the client's clock (tokio's
    /// paused clock in tests). Kept in whole milliseconds (a shorter one is 1 ms; one of
    /// 49 days or more is no timeout); `Duration::ZERO` is "no timeout", even when the
    /// client sets a default ([`QueryClientBuilder::fetch_timeout`](crate::QueryClientBuilder::fetch_timeout)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stackquery::{key, QueryClient, QueryError, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let client = QueryClient::new();
    /// let hung = QueryOptions::new(key!["upstream"], || async {
    ///     std::future::pending::<Result<u32, std::io::Error>>().await
    /// })
    /// .fetch_timeout(Duration::from_secs(2))
    /// .retry(0);
    /// let err = client.fetch_query(&hung).await.unwrap_err();
    /// assert!(matches!(err, QueryError::Timeout(d) if d == Duration::from_secs(2)));
    /// # }
    /// ```
    #[must_use]
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = FetchTimeout::from_duration(timeout);
        self
    }

    /// How long this query's copies live in the second tier: overrides the client's
    /// [`storage_ttl`](crate::QueryClientBuilder::storage_ttl) (and its
    /// [`storage_ttl_prefix`](crate::QueryClientBuilder::storage_ttl_prefix) rules), which
    /// otherwise apply, else the entry's gc time. Each write counts it afresh from the
    /// moment it lands; the client's
    /// [`storage_ttl_jitter`](crate::QueryClientBuilder::storage_ttl_jitter), if any,
    /// shortens it like any other ttl. `Duration::MAX` never expires. Only matters for a
    /// persisted key ([`persist`](Self::persist) or a
    /// [`persist_prefix`](crate::QueryClientBuilder::persist_prefix) rule); when several
    /// queries of one key say different things, the options the entry was last used with
    /// win.
    ///
    /// Kept to 6 significant digits, rounded down (exact to the millisecond up to 17
    /// minutes, to the second up to 12 days): the options every entry keeps do not grow
    /// for it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stackquery::storage::{MemoryStorage, Storage};
    /// use stackquery::{key, QueryClient, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let store = MemoryStorage::new();
    /// let client = QueryClient::builder()
    ///     .storage(store.clone())
    ///     .storage_ttl(Duration::from_secs(3_600)) // the default for persisted queries
    ///     .build();
    /// // Prices change often: a stored copy older than a minute is never read back.
    /// let price = QueryOptions::new(key!["price", 7], || async { Ok::<_, std::io::Error>(12.5) })
    ///     .persist()
    ///     .storage_ttl(Duration::from_secs(60));
    /// client.fetch_query(&price).await.unwrap();
    /// client.flush_storage().await;
    /// let stored = key!["price", 7].to_string();
    ///
    /// tokio::time::advance(Duration::from_secs(59)).await;
    /// assert!(store.get(&stored).await.unwrap().is_some());
    /// tokio::time::advance(Duration::from_secs(1)).await;
    /// assert_eq!(store.get(&stored).await.unwrap(), None); // 60 s, not the client's hour
    /// # }
    /// ```
    #[must_use]
    pub fn storage_ttl(mut self, ttl: Duration) -> Self {
        self.storage_ttl = CompactTtl::new(ttl);
        self
    }

    /// How long an unused entry stays in memory (default 5 minutes). When several callers
    /// or observers of one key ask for different gc times, the largest wins.
    #[must_use]
    pub fn gc_time(mut self, d: Duration) -> Self {
        self.gc_time = Some(d);
        self
    }

    retry_setters! {
        config: retry;
        retried: "a failed fetch";
        count: "default 3";
        note: "Unset, the client's default applies; set, even to the built-in value, it wins.";
        each: #[must_use];
    }

    /// Poll every `d` (from the end of one poll to the start of the next) while an enabled
    /// observer of the query has subscribers. `Duration::MAX` never polls.
    #[must_use]
    pub fn refetch_interval(mut self, d: Duration) -> Self {
        self.refetch_interval = Some(d);
        self
    }

    /// `false`: observers never fetch by themselves — no first fetch, no polling, and
    /// `invalidate_queries`, `refetch_queries` and `reset_queries` do not refetch a query
    /// whose observers are all disabled. An explicit refetch still fetches.
    #[must_use]
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }

    /// Data shown to observers while the first fetch is pending; never cached.
    #[must_use]
    pub fn placeholder_data(mut self, data: T) -> Self {
        self.extras_mut().placeholder_data = Some(Arc::new(data));
        self
    }
}

/// A fetch timeout setting in whole milliseconds: 4 bytes rather than an
/// `Option<Duration>`'s 16, so it fits in the padding after `QueryOptions::enabled` and the
/// options every entry keeps (and every fetch task carries) do not grow. Three states: unset
/// (the client's default applies), no bound, or a bound of 1 ms up to about 49 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FetchTimeout(u32);

impl FetchTimeout {
    /// Not set: the client's default applies.
    pub(crate) const UNSET: Self = FetchTimeout(0);
    /// Set to "no bound" (`Duration::ZERO`, or a bound past `u32::MAX` ms).
    const NONE: Self = FetchTimeout(u32::MAX);

    /// The setting for `timeout`: zero means no bound; a bound under 1 ms is 1 ms.
    pub(crate) fn from_duration(timeout: Duration) -> Self {
        if timeout.is_zero() {
            return Self::NONE;
        }
        match u32::try_from(timeout.as_millis()) {
            Ok(ms) if ms < u32::MAX => FetchTimeout(ms.max(1)),
            _ => Self::NONE,
        }
    }

    /// This setting, else `default` if unset.
    pub(crate) fn or(self, default: Self) -> Self {
        if self == Self::UNSET {
            default
        } else {
            self
        }
    }

    /// The bound, if any.
    pub(crate) fn limit(self) -> Option<Duration> {
        match self.0 {
            0 | u32::MAX => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }
}

/// Client-wide defaults, used where a query leaves a setting unset.
#[derive(Clone, Debug)]
pub(crate) struct Defaults {
    pub(crate) stale_time: Duration,
    pub(crate) gc_time: Duration,
    pub(crate) retry: RetryConfig,
    pub(crate) fetch_timeout: FetchTimeout,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            stale_time: Duration::ZERO,
            gc_time: Duration::from_secs(300),
            retry: RetryConfig::default(),
            fetch_timeout: FetchTimeout::UNSET,
        }
    }
}

impl Defaults {
    pub(crate) fn stale_time<T>(&self, o: &QueryOptions<T>) -> Duration {
        o.stale_time.unwrap_or(self.stale_time)
    }

    pub(crate) fn gc_time<T>(&self, o: &QueryOptions<T>) -> Duration {
        o.gc_time.unwrap_or(self.gc_time)
    }

    /// The bound on each attempt of a fetch of `o`: the query's, else the client's.
    pub(crate) fn fetch_timeout<T>(&self, o: &QueryOptions<T>) -> Option<Duration> {
        o.fetch_timeout.or(self.fetch_timeout).limit()
    }

    /// The retry settings of a fetch of `o`: the query's, else the client's, else the
    /// built-in ones.
    pub(crate) fn retry<'a, T>(&'a self, o: &'a QueryOptions<T>) -> Retry<'a> {
        o.retry.resolve(Some(&self.retry), QUERY_RETRIES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key;

    fn opts() -> QueryOptions<u32> {
        QueryOptions::new(key!["k"], || async { Ok::<_, std::io::Error>(1) })
    }

    #[test]
    fn unset_falls_back_but_explicit_default_value_wins() {
        let d = Defaults {
            stale_time: Duration::from_secs(60),
            ..Defaults::default()
        };
        assert_eq!(d.stale_time(&opts()), Duration::from_secs(60));
        assert_eq!(
            d.stale_time(&opts().stale_time(Duration::ZERO)),
            Duration::ZERO
        );
        assert_eq!(d.gc_time(&opts()), Duration::from_secs(300));
    }

    #[test]
    fn retry_delay_resolution() {
        let d = Defaults::default();
        assert_eq!(d.retry(&opts()).delay(2), Duration::from_secs(4));
        let o = opts().retry_delay(|a| Duration::from_millis(10 * u64::from(a + 1)));
        assert_eq!(d.retry(&o).delay(2), Duration::from_millis(30));
    }
}
