//! [`InfiniteQueryObserver`]: a [`QueryObserver`] of an infinite query, with the page
//! calls and flags of TanStack Query's `InfiniteQueryObserver`.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{Direction, InfiniteData, InfiniteQueryOptions};
use crate::client::QueryClient;
use crate::error::QueryError;
use crate::observer::QueryObserver;

/// An observer of an infinite query ([`QueryClient::watch_infinite`]). It dereferences to
/// its [`QueryObserver`] (`state`, `subscribe`, `stream`, `refetch`, …) and adds
/// [`has_next_page`](Self::has_next_page), [`fetch_next_page`](Self::fetch_next_page) and
/// [`is_fetching_next_page`](Self::is_fetching_next_page) (and their "previous" twins).
///
/// ```
/// use stackquery::{key, InfiniteQueryOptions, QueryClient};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stackquery::QueryError> {
/// let client = QueryClient::new();
/// let opts = InfiniteQueryOptions::new(
///     key!["feed"],
///     1_u32,
///     |page: u32| async move { Ok::<_, String>(format!("page {page}")) },
///     |_: &String, _: &[String], last: &u32, _: &[u32]| (*last < 2).then(|| last + 1),
/// );
/// let feed = client.watch_infinite(&opts);
/// feed.refetch().await?; // the first page
/// assert!(feed.has_next_page());
/// feed.fetch_next_page().await?;
/// assert!(!feed.has_next_page());
/// assert_eq!(feed.state().data.unwrap().pages, vec!["page 1", "page 2"]);
/// # Ok(()) }
/// ```
pub struct InfiniteQueryObserver<P, Param> {
    observer: QueryObserver<InfiniteData<P, Param>>,
    client: QueryClient,
    opts: InfiniteQueryOptions<P, Param>,
    /// Page fetches made through this observer (or its clones) in flight, next and
    /// previous.
    fetching: Arc<[AtomicUsize; 2]>,
}

impl<P, Param: Clone> Clone for InfiniteQueryObserver<P, Param> {
    fn clone(&self) -> Self {
        InfiniteQueryObserver {
            observer: self.observer.clone(),
            client: self.client.clone(),
            opts: self.opts.clone(),
            fetching: self.fetching.clone(),
        }
    }
}

impl<P, Param: fmt::Debug> fmt::Debug for InfiniteQueryObserver<P, Param> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfiniteQueryObserver")
            .field("observer", &self.observer)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl<P, Param> Deref for InfiniteQueryObserver<P, Param> {
    type Target = QueryObserver<InfiniteData<P, Param>>;

    fn deref(&self) -> &Self::Target {
        &self.observer
    }
}

/// Counts one page fetch in flight for as long as it lives (even if its future is
/// dropped half-way).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<P, Param> InfiniteQueryObserver<P, Param>
where
    P: Clone + Send + Sync + 'static,
    Param: Clone + PartialEq + Send + Sync + 'static,
{
    pub(crate) fn new(client: QueryClient, opts: InfiniteQueryOptions<P, Param>) -> Self {
        InfiniteQueryObserver {
            observer: client.watch(opts.query_options()),
            client,
            opts,
            fetching: Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]),
        }
    }

    /// Whether the observed pages have a next page (`false` without pages).
    pub fn has_next_page(&self) -> bool {
        self.observer
            .state()
            .data
            .is_some_and(|d| self.opts.has_next_page(&d))
    }

    /// Whether the observed pages have a previous page.
    pub fn has_previous_page(&self) -> bool {
        self.observer
            .state()
            .data
            .is_some_and(|d| self.opts.has_previous_page(&d))
    }

    /// Whether a [`fetch_next_page`](Self::fetch_next_page) of this observer (or a clone)
    /// is in flight. (A next-page fetch made through the client directly is seen in the
    /// state's `fetch_status`, not here.)
    pub fn is_fetching_next_page(&self) -> bool {
        self.fetching[0].load(Ordering::SeqCst) > 0
    }

    /// Whether a [`fetch_previous_page`](Self::fetch_previous_page) of this observer is
    /// in flight.
    pub fn is_fetching_previous_page(&self) -> bool {
        self.fetching[1].load(Ordering::SeqCst) > 0
    }

    /// [`QueryClient::fetch_next_page`] for the observed query.
    ///
    /// # Errors
    /// As [`QueryClient::fetch_next_page`].
    pub async fn fetch_next_page(&self) -> Result<Arc<InfiniteData<P, Param>>, QueryError> {
        let _counted = InFlight::new(&self.fetching[0]);
        self.client.fetch_more(&self.opts, Direction::Forward).await
    }

    /// [`QueryClient::fetch_previous_page`] for the observed query.
    ///
    /// # Errors
    /// As [`QueryClient::fetch_previous_page`].
    pub async fn fetch_previous_page(&self) -> Result<Arc<InfiniteData<P, Param>>, QueryError> {
        let _counted = InFlight::new(&self.fetching[1]);
        self.client
            .fetch_more(&self.opts, Direction::Backward)
            .await
    }
}
