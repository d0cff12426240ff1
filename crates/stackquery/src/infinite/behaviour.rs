//! How an infinite query fetches (TanStack Query's `infiniteQueryBehavior`): the whole
//! list again, page after page ([`RefetchAll`], the query's own fetch function, which
//! every refetch — stale, invalidated, `refetch_queries` — runs), or one more page at an
//! end ([`FetchMore`], a one-off fetch that the entry does not remember).
//!
//! Both run the user's page function and page-param functions inside the fetch's future,
//! which the engine polls with no lock held and under its panic policy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::data::InfiniteData;
use crate::error::BoxError;
use crate::fetcher::{Attempt, FetchFn};
use crate::key::QueryKey;

/// Fetches one page for a param.
pub(crate) type PageFn<P, Param> =
    dyn Fn(Param) -> BoxFuture<'static, Result<P, BoxError>> + Send + Sync;

/// Computes the param of the page after the last (or before the first) page, from that
/// page, all pages, its param and all params; `None`: there is no such page.
pub(crate) type ParamFn<P, Param> =
    dyn Fn(&P, &[P], &Param, &[Param]) -> Option<Param> + Send + Sync;

/// Which end a one-off fetch grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Forward,
    Backward,
}

/// The user's functions and bound of one infinite query.
pub(crate) struct Behaviour<P, Param> {
    pub(crate) fetch_page: Arc<PageFn<P, Param>>,
    pub(crate) initial_param: Param,
    pub(crate) next: Arc<ParamFn<P, Param>>,
    pub(crate) previous: Option<Arc<ParamFn<P, Param>>>,
    /// At most this many pages are kept (`None`: no bound).
    pub(crate) max_pages: Option<usize>,
}

impl<P, Param: Clone> Clone for Behaviour<P, Param> {
    fn clone(&self) -> Self {
        Behaviour {
            fetch_page: self.fetch_page.clone(),
            initial_param: self.initial_param.clone(),
            next: self.next.clone(),
            previous: self.previous.clone(),
            max_pages: self.max_pages,
        }
    }
}

impl<P, Param> Behaviour<P, Param>
where
    P: Clone + Send + Sync + 'static,
    Param: Clone + Send + Sync + 'static,
{
    /// The param of the page past `data`'s end in `direction` (user code: call it with
    /// no lock held).
    pub(crate) fn param(
        &self,
        data: &InfiniteData<P, Param>,
        direction: Direction,
    ) -> Option<Param> {
        let ((last, last_param), (first, first_param)) = data.ends()?;
        match direction {
            Direction::Forward => (self.next)(last, &data.pages, last_param, &data.page_params),
            Direction::Backward => {
                let previous = self.previous.as_ref()?;
                previous(first, &data.pages, first_param, &data.page_params)
            }
        }
    }

    /// Fetches as many pages as `old` holds (at least one), in order, one after the
    /// other: the first with `old`'s first param (or the initial param), each next with
    /// the param computed from the pages fetched so far. Stops early when there is no
    /// next page. The result replaces the data at once, when the last page is in.
    pub(crate) async fn refetch(
        &self,
        old: Option<Arc<InfiniteData<P, Param>>>,
    ) -> Result<InfiniteData<P, Param>, BoxError> {
        let (count, first) = match old.as_deref().and_then(|d| d.ends().map(|e| (d, e))) {
            Some((d, (_, (_, first)))) => (d.len(), first.clone()),
            None => (1, self.initial_param.clone()),
        };
        drop(old);
        let mut data = InfiniteData::default();
        for i in 0..count {
            let param = if i == 0 {
                first.clone()
            } else {
                match self.param(&data, Direction::Forward) {
                    Some(param) => param,
                    None => break,
                }
            };
            let page = (self.fetch_page)(param.clone()).await?;
            data.push_back(page, param, self.max_pages);
        }
        Ok(data)
    }

    /// One more page at `direction`'s end of `old` (the whole list when `old` is empty);
    /// `old` unchanged when there is no such page.
    pub(crate) async fn fetch_more(
        &self,
        old: Option<Arc<InfiniteData<P, Param>>>,
        direction: Direction,
    ) -> Result<InfiniteData<P, Param>, BoxError> {
        let Some(old) = old.filter(|d| d.ends().is_some()) else {
            return self.refetch(None).await;
        };
        let Some(param) = self.param(&old, direction) else {
            return Ok((*old).clone());
        };
        let page = (self.fetch_page)(param.clone()).await?;
        let mut data = (*old).clone();
        match direction {
            Direction::Forward => data.push_back(page, param, self.max_pages),
            Direction::Backward => data.push_front(page, param, self.max_pages),
        }
        Ok(data)
    }
}

/// The query's fetch function: re-fetch every page the entry holds.
pub(crate) struct RefetchAll<P, Param>(pub(crate) Arc<Behaviour<P, Param>>);

impl<P, Param> FetchFn<InfiniteData<P, Param>> for RefetchAll<P, Param>
where
    P: Clone + Send + Sync + 'static,
    Param: Clone + Send + Sync + 'static,
{
    fn takes_context(&self) -> bool {
        false
    }

    fn call(
        &self,
        _: &QueryKey,
        _: u32,
        _: Option<&CancellationToken>,
        previous: Option<&Arc<InfiniteData<P, Param>>>,
    ) -> Attempt<InfiniteData<P, Param>> {
        let (behaviour, previous) = (self.0.clone(), previous.cloned());
        async move { behaviour.refetch(previous).await }.boxed()
    }
}

/// A one-off fetch of one more page, for one `fetch_next_page`/`fetch_previous_page`
/// call: `ran` tells that call whether the flight it waited on was its own.
pub(crate) struct FetchMore<P, Param> {
    pub(crate) behaviour: Arc<Behaviour<P, Param>>,
    pub(crate) direction: Direction,
    pub(crate) ran: AtomicBool,
}

impl<P, Param> FetchFn<InfiniteData<P, Param>> for FetchMore<P, Param>
where
    P: Clone + Send + Sync + 'static,
    Param: Clone + Send + Sync + 'static,
{
    fn takes_context(&self) -> bool {
        false
    }

    fn one_off(&self) -> bool {
        true
    }

    fn call(
        &self,
        _: &QueryKey,
        _: u32,
        _: Option<&CancellationToken>,
        previous: Option<&Arc<InfiniteData<P, Param>>>,
    ) -> Attempt<InfiniteData<P, Param>> {
        self.ran.store(true, Ordering::Release);
        let (behaviour, previous, direction) =
            (self.behaviour.clone(), previous.cloned(), self.direction);
        async move { behaviour.fetch_more(previous, direction).await }.boxed()
    }
}
