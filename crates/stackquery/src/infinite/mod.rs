//! Infinite queries (TanStack Query's `useInfiniteQuery`): a list fetched page by page.
//!
//! An infinite query is an ordinary cache entry holding an [`InfiniteData`], so the
//! engine's deduplication, retries, stale time, gc, invalidation and persistence all
//! apply to it. Its fetch function is the "refetch every page" behaviour
//! (`behaviour.rs`); one more page is a one-off fetch of the same entry
//! ([`QueryClient::fetch_next_page`](crate::QueryClient::fetch_next_page)).

mod behaviour;
mod client;
mod data;
mod observer;

use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use crate::error::{BoxError, QueryError};
use crate::key::QueryKey;
use crate::options::QueryOptions;
pub(crate) use behaviour::Direction;
use behaviour::{Behaviour, FetchMore, RefetchAll};
pub use data::InfiniteData;
pub use observer::InfiniteQueryObserver;

/// The options of an infinite query's cache entry.
type Query<P, Param> = QueryOptions<InfiniteData<P, Param>>;

/// What to fetch for an infinite query, and how to find the pages around the ones held.
///
/// * `fetch_page(param)` fetches one page;
/// * the first page is fetched with the `initial_page_param`;
/// * `get_next_page_param(last_page, all_pages, last_param, all_params)` gives the param
///   of the page after the last one, `None` when there is none
///   ([`has_next_page`](Self::has_next_page) is `false`);
/// * [`get_previous_page_param`](Self::get_previous_page_param), the same for the page
///   before the first one (unset: there is never a previous page);
/// * [`max_pages`](Self::max_pages) bounds the pages kept: a page added at one end drops
///   one from the other.
///
/// A refetch — the data went stale, [`invalidate_queries`](crate::QueryClient::invalidate_queries),
/// [`refetch_queries`](crate::QueryClient::refetch_queries), an observer's poll — fetches
/// as many pages as are cached, one after the other, in order: the first with its cached
/// param, each next with the param computed from the page just fetched (the list may have
/// moved). The data is replaced once, when the last page is in; a failure keeps the old
/// pages (a retry starts again from the first page).
///
/// Pages and params are cloned when a page is added (`P: Clone`): wrap large pages in an
/// `Arc`. The functions run with no lock held, inside the fetch (their panics become
/// [`QueryError::Panicked`]).
///
/// ```
/// use stackquery::{key, InfiniteQueryOptions, QueryClient};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stackquery::QueryError> {
/// let client = QueryClient::new();
/// // Pages of 10 numbers; the param is the page's first number; 3 pages in all.
/// let opts = InfiniteQueryOptions::new(
///     key!["numbers"],
///     0_u32,
///     |start: u32| async move { Ok::<_, std::io::Error>((start..start + 10).collect::<Vec<_>>()) },
///     |_last: &Vec<u32>, _pages: &[Vec<u32>], last_param: &u32, _params: &[u32]| {
///         (*last_param < 20).then(|| last_param + 10)
///     },
/// )
/// .max_pages(5);
///
/// let data = client.fetch_infinite_query(&opts).await?;
/// assert_eq!(data.page_params, vec![0]);
/// let data = client.fetch_next_page(&opts).await?;
/// assert_eq!(data.page_params, vec![0, 10]);
/// assert_eq!(data.pages[1][0], 10);
/// client.fetch_next_page(&opts).await?;
/// assert!(!client.has_next_page(&opts)); // 20 was the last page
///
/// // A refetch fetches the 3 cached pages again, in order.
/// client.refetch_queries(key!["numbers"]).await;
/// let data = client.get_query_data::<stackquery::InfiniteData<Vec<u32>, u32>>(opts.key());
/// assert_eq!(data.unwrap().page_params, vec![0, 10, 20]);
/// # Ok(()) }
/// ```
pub struct InfiniteQueryOptions<P, Param> {
    behaviour: Arc<Behaviour<P, Param>>,
    query: QueryOptions<InfiniteData<P, Param>>,
}

impl<P, Param: Clone> Clone for InfiniteQueryOptions<P, Param> {
    fn clone(&self) -> Self {
        InfiniteQueryOptions {
            behaviour: self.behaviour.clone(),
            query: self.query.clone(),
        }
    }
}

impl<P, Param: fmt::Debug> fmt::Debug for InfiniteQueryOptions<P, Param> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfiniteQueryOptions")
            .field("query", &self.query)
            .field("initial_page_param", &self.behaviour.initial_param)
            .field("previous_pages", &self.behaviour.previous.is_some())
            .field("max_pages", &self.behaviour.max_pages)
            .finish()
    }
}

impl<P, Param> InfiniteQueryOptions<P, Param>
where
    P: Clone + Send + Sync + 'static,
    Param: Clone + PartialEq + Send + Sync + 'static,
{
    /// Options for the infinite query `key`: `fetch_page(param)` fetches a page, the
    /// first with `initial_page_param`, and `get_next_page_param(last_page, all_pages,
    /// last_param, all_params)` names the page after the last (`None`: no more pages).
    pub fn new<F, Fut, E, N>(
        key: impl Into<QueryKey>,
        initial_page_param: Param,
        fetch_page: F,
        get_next_page_param: N,
    ) -> Self
    where
        F: Fn(Param) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<P, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
        N: Fn(&P, &[P], &Param, &[Param]) -> Option<Param> + Send + Sync + 'static,
    {
        let behaviour = Arc::new(Behaviour {
            fetch_page: Arc::new(move |param| {
                fetch_page(param).map(|r| r.map_err(Into::into)).boxed()
            }),
            initial_param: initial_page_param,
            next: Arc::new(get_next_page_param),
            previous: None,
            max_pages: None,
        });
        let query = QueryOptions::with_fetcher(key.into(), Arc::new(RefetchAll(behaviour.clone())));
        InfiniteQueryOptions { behaviour, query }
    }

    /// Names the page before the first one (`None`: there is none), which makes
    /// [`fetch_previous_page`](crate::QueryClient::fetch_previous_page) possible.
    #[must_use]
    pub fn get_previous_page_param(
        self,
        f: impl Fn(&P, &[P], &Param, &[Param]) -> Option<Param> + Send + Sync + 'static,
    ) -> Self {
        self.with_behaviour(|b| b.previous = Some(Arc::new(f)))
    }

    /// Keeps at most `max` pages: fetching a next page beyond it drops the first page, a
    /// previous page drops the last one, and a refetch fetches at most `max`. 0: no bound
    /// (the default).
    #[must_use]
    pub fn max_pages(self, max: usize) -> Self {
        self.with_behaviour(|b| b.max_pages = (max > 0).then_some(max))
    }

    /// Sets any setting of the underlying [`QueryOptions`] (stale time, gc time,
    /// retries, polling, `enabled`, weigher, …), which keep their meaning here.
    ///
    /// ```
    /// # use stackquery::{key, InfiniteQueryOptions};
    /// use std::time::Duration;
    /// let opts = InfiniteQueryOptions::new(
    ///     key!["feed"],
    ///     0_u32,
    ///     |page: u32| async move { Ok::<_, String>(vec![page]) },
    ///     |_: &Vec<u32>, _: &[Vec<u32>], last: &u32, _: &[u32]| Some(last + 1),
    /// )
    /// .query(|q| q.stale_time(Duration::from_secs(30)).retry(1));
    /// # let _ = opts;
    /// ```
    #[must_use]
    pub fn query(
        mut self,
        f: impl FnOnce(QueryOptions<InfiniteData<P, Param>>) -> QueryOptions<InfiniteData<P, Param>>,
    ) -> Self {
        self.query = f(self.query);
        // The fetch function stays this query's, whatever `f` did with the options.
        self.query.fetcher = Arc::new(RefetchAll(self.behaviour.clone()));
        self
    }

    /// The stale time (see [`QueryOptions::stale_time`]).
    #[must_use]
    pub fn stale_time(self, d: Duration) -> Self {
        self.query(|q| q.stale_time(d))
    }

    /// The key.
    pub fn key(&self) -> &QueryKey {
        &self.query.key
    }

    /// The options of the cache entry (an ordinary query of type [`InfiniteData`]): for
    /// [`QueryClient::watch`](crate::QueryClient::watch), `fetch_query`, and the other
    /// calls that take a [`QueryOptions`].
    pub fn query_options(&self) -> &QueryOptions<InfiniteData<P, Param>> {
        &self.query
    }

    /// Whether `data` has a page after its last one (`get_next_page_param` gives a
    /// param). `false` for empty data, and when the function panics (logged).
    pub fn has_next_page(&self, data: &InfiniteData<P, Param>) -> bool {
        self.page_param(data, Direction::Forward)
            .ok()
            .flatten()
            .is_some()
    }

    /// Whether `data` has a page before its first one (`get_previous_page_param` is set
    /// and gives a param).
    pub fn has_previous_page(&self, data: &InfiniteData<P, Param>) -> bool {
        self.page_param(data, Direction::Backward)
            .ok()
            .flatten()
            .is_some()
    }

    /// The param of the page past `data`'s end in `direction`, under the panic policy.
    pub(crate) fn page_param(
        &self,
        data: &InfiniteData<P, Param>,
        direction: Direction,
    ) -> Result<Option<Param>, QueryError> {
        crate::user_code::contain("page param", || self.behaviour.param(data, direction))
    }

    /// Options for one fetch of one more page: a one-off fetch (the entry keeps
    /// refetching with the query's own function), with a flag telling whether it ran.
    pub(crate) fn fetch_more(
        &self,
        direction: Direction,
    ) -> (Query<P, Param>, Arc<FetchMore<P, Param>>) {
        let more = Arc::new(FetchMore {
            behaviour: self.behaviour.clone(),
            direction,
            ran: AtomicBool::new(false),
        });
        let mut opts = self.query.clone();
        opts.fetcher = more.clone();
        (opts, more)
    }

    /// Changes the behaviour, and the fetch function that carries it.
    fn with_behaviour(mut self, f: impl FnOnce(&mut Behaviour<P, Param>)) -> Self {
        f(Arc::make_mut(&mut self.behaviour));
        self.query.fetcher = Arc::new(RefetchAll(self.behaviour.clone()));
        self
    }
}

impl<P, Param> InfiniteQueryOptions<P, Param>
where
    P: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    Param:
        serde::Serialize + serde::de::DeserializeOwned + Clone + PartialEq + Send + Sync + 'static,
{
    /// Persists the pages to the client's second tier (see [`QueryOptions::persist`]):
    /// every page and param is stored, and a client started later reads them all back.
    #[must_use]
    pub fn persist(self) -> Self {
        self.query(QueryOptions::persist)
    }
}
