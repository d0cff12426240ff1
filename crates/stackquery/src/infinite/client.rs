//! The client's calls for infinite queries.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Direction, InfiniteData, InfiniteQueryObserver, InfiniteQueryOptions};
use crate::client::QueryClient;
use crate::entry::Mode;
use crate::error::QueryError;

/// How many times a page fetch that joined another fetch in flight (a refetch of the
/// whole list) tries again to fetch its own page: once is enough unless refetches keep
/// arriving.
const MORE_ROUNDS: usize = 3;

impl QueryClient {
    /// The infinite query's pages, like [`fetch_query`](Self::fetch_query): fresh from
    /// the cache; stale from the cache while every page is refetched in the background;
    /// no data: its first page is fetched (with the initial page param).
    ///
    /// # Errors
    /// As [`fetch_query`](Self::fetch_query).
    pub async fn fetch_infinite_query<P, Param>(
        &self,
        opts: &InfiniteQueryOptions<P, Param>,
    ) -> Result<Arc<InfiniteData<P, Param>>, QueryError>
    where
        P: Clone + Send + Sync + 'static,
        Param: Clone + PartialEq + Send + Sync + 'static,
    {
        self.fetch_query(&opts.query).await
    }

    /// Fetches the page after the last cached one and appends it (dropping the first
    /// page beyond [`max_pages`](InfiniteQueryOptions::max_pages)); returns the pages.
    /// Without cached data it fetches the first page instead; with no next page
    /// (`get_next_page_param` gives `None`) it fetches nothing and returns the cached
    /// pages.
    ///
    /// # Concurrent calls
    /// * Calls made while a page fetch of the key is in flight join it: a "load more"
    ///   clicked twice fetches one page, and both calls get the same pages.
    /// * A call made while the whole list is being refetched waits for that refetch,
    ///   then fetches the page after the refreshed pages (TanStack Query cancels the
    ///   refetch instead; waiting keeps the refreshed pages and never appends a page to
    ///   pages a refetch is replacing).
    /// * An invalidation that arrives while a page fetch is in flight wins (as for any
    ///   query, its refetch replaces the fetch in flight): the cache keeps the refetched
    ///   pages, and this call still returns the pages with the new one.
    ///
    /// # Errors
    /// As [`fetch_query`](Self::fetch_query); the cached pages are kept on failure.
    pub async fn fetch_next_page<P, Param>(
        &self,
        opts: &InfiniteQueryOptions<P, Param>,
    ) -> Result<Arc<InfiniteData<P, Param>>, QueryError>
    where
        P: Clone + Send + Sync + 'static,
        Param: Clone + PartialEq + Send + Sync + 'static,
    {
        self.fetch_more(opts, Direction::Forward).await
    }

    /// Fetches the page before the first cached one and prepends it (dropping the last
    /// page beyond [`max_pages`](InfiniteQueryOptions::max_pages)); as
    /// [`fetch_next_page`](Self::fetch_next_page) otherwise. Without
    /// [`get_previous_page_param`](InfiniteQueryOptions::get_previous_page_param) there is
    /// never a previous page.
    ///
    /// # Errors
    /// As [`fetch_query`](Self::fetch_query).
    pub async fn fetch_previous_page<P, Param>(
        &self,
        opts: &InfiniteQueryOptions<P, Param>,
    ) -> Result<Arc<InfiniteData<P, Param>>, QueryError>
    where
        P: Clone + Send + Sync + 'static,
        Param: Clone + PartialEq + Send + Sync + 'static,
    {
        self.fetch_more(opts, Direction::Backward).await
    }

    /// Whether the cached pages have a next page (`false` without cached pages).
    pub fn has_next_page<P, Param>(&self, opts: &InfiniteQueryOptions<P, Param>) -> bool
    where
        P: Clone + Send + Sync + 'static,
        Param: Clone + PartialEq + Send + Sync + 'static,
    {
        self.get_query_data(opts.key())
            .is_some_and(|d: Arc<InfiniteData<P, Param>>| opts.has_next_page(&d))
    }

    /// Whether the cached pages have a previous page (`false` without cached pages).
    pub fn has_previous_page<P, Param>(&self, opts: &InfiniteQueryOptions<P, Param>) -> bool
    where
        P: Clone + Send + Sync + 'static,
        Param: Clone + PartialEq + Send + Sync + 'static,
    {
        self.get_query_data(opts.key())
            .is_some_and(|d: Arc<InfiniteData<P, Param>>| opts.has_previous_page(&d))
    }

    /// An observer of the infinite query: its state, plus
    /// [`has_next_page`](InfiniteQueryObserver::has_next_page) and
    /// [`is_fetching_next_page`](InfiniteQueryObserver::is_fetching_next_page). It does
    /// nothing until it has a subscriber.
    pub fn watch_infinite<P, Param>(
        &self,
        opts: &InfiniteQueryOptions<P, Param>,
    ) -> InfiniteQueryObserver<P, Param>
    where
        P: Clone + Send + Sync + 'static,
        Param: Clone + PartialEq + Send + Sync + 'static,
    {
        InfiniteQueryObserver::new(self.clone(), opts.clone())
    }

    pub(crate) async fn fetch_more<P, Param>(
        &self,
        opts: &InfiniteQueryOptions<P, Param>,
        direction: Direction,
    ) -> Result<Arc<InfiniteData<P, Param>>, QueryError>
    where
        P: Clone + Send + Sync + 'static,
        Param: Clone + PartialEq + Send + Sync + 'static,
    {
        // The cached pages (even stale, with no refresh), else the first page only (as in
        // TanStack Query); this also makes the entry remember the query's own options,
        // for its refetches.
        let cached = self
            .get_query_data::<InfiniteData<P, Param>>(opts.key())
            .is_some();
        let mut data = self.shared.run(&opts.query, Mode::Ensure).await?;
        if !cached {
            return Ok(data);
        }
        for _ in 0..MORE_ROUNDS {
            // User code, with no lock held.
            let Some(target) = opts.page_param(&data, direction)? else {
                return Ok(data);
            };
            // A forced fetch joins the fetch in flight, if any, else starts this one.
            let (more_opts, more) = opts.fetch_more(direction);
            let result = self.shared.run(&more_opts, Mode::Force).await?;
            // Its own fetch ran, or the fetch it joined fetched its page (another page
            // fetch): done. Otherwise it joined a refetch of the whole list: the page is
            // still to fetch, after the refreshed pages.
            if more.ran.load(Ordering::Acquire) || result.page_params.contains(&target) {
                return Ok(result);
            }
            data = result;
        }
        Ok(data)
    }
}
