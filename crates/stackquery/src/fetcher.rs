//! The fetch function as the engine calls it: one attempt at a time, given the key, the
//! attempt number and the flight's cancellation token, whichever of the two shapes the
//! user wrote (a zero-argument closure, or one that takes a [`FetchContext`]).

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::context::FetchContext;
use crate::error::{BoxError, CancelledAttempt};
use crate::key::QueryKey;

/// A query's fetch function (one pointer pair in the options, whichever its shape).
pub(crate) type Fetcher<T> = Arc<dyn FetchFn<T>>;

/// One attempt's future.
pub(crate) type Attempt<T> = BoxFuture<'static, Result<T, BoxError>>;

pub(crate) trait FetchFn<T>: Send + Sync {
    /// Whether the function takes a [`FetchContext`]: only then does its flight carry a
    /// cancellation token (the zero-argument shape pays for none).
    fn takes_context(&self) -> bool;

    /// Starts attempt `attempt` (0-based) of a fetch of `key`. `flight` is the flight's
    /// cancellation token (present when [`takes_context`](Self::takes_context));
    /// `previous` the entry's data when the flight began (only infinite queries read it:
    /// a refetch re-fetches the pages it holds).
    fn call(
        &self,
        key: &QueryKey,
        attempt: u32,
        flight: Option<&CancellationToken>,
        previous: Option<&Arc<T>>,
    ) -> Attempt<T>;

    /// Whether these options serve one call only (an infinite query's next- or
    /// previous-page fetch): the entry does not remember them for its later refetches,
    /// which keep the query's own fetch function.
    fn one_off(&self) -> bool {
        false
    }

    /// A streamed query's function (`stream.rs`): the engine runs it with a sink that
    /// shows each item on the entry. `None` for every other function.
    fn as_stream(&self) -> Option<&dyn StreamFetch<T>> {
        None
    }
}

/// A zero-argument fetch function (`QueryOptions::new`): called as it always was.
pub(crate) struct Plain<F>(pub(crate) F);

impl<T, F, Fut, E> FetchFn<T> for Plain<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    fn takes_context(&self) -> bool {
        false
    }

    #[inline]
    fn call(
        &self,
        _: &QueryKey,
        _: u32,
        _: Option<&CancellationToken>,
        _: Option<&Arc<T>>,
    ) -> Attempt<T> {
        (self.0)().map(|r| r.map_err(Into::into)).boxed()
    }
}

/// A fetch function that takes a [`FetchContext`] (`QueryOptions::with_context`).
pub(crate) struct WithContext<F>(pub(crate) F);

impl<T, F, Fut, E> FetchFn<T> for WithContext<F>
where
    T: Send + 'static,
    F: Fn(FetchContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    fn takes_context(&self) -> bool {
        true
    }

    fn call(
        &self,
        key: &QueryKey,
        attempt: u32,
        flight: Option<&CancellationToken>,
        _: Option<&Arc<T>>,
    ) -> Attempt<T> {
        // Each attempt has a token of its own, a child of the flight's: dropping one
        // attempt (a timeout) fires its token only, and the flight's firing (cancel,
        // removal, reset) reaches whichever attempt runs.
        let token = flight.map_or_else(CancellationToken::new, CancellationToken::child_token);
        if token.is_cancelled() {
            // Nobody will take this attempt's result: it is not made.
            return futures::future::ready(Err(Box::new(CancelledAttempt) as BoxError)).boxed();
        }
        let ctx = FetchContext::new(key.clone(), attempt, token.clone());
        let fetch = (self.0)(ctx);
        // Made before the future is first polled, so an attempt dropped unpolled fires its
        // token too; disarmed once the function finished by itself.
        let fire_if_dropped = token.drop_guard();
        async move {
            let result = fetch.await;
            let token = fire_if_dropped.disarm();
            match result {
                Ok(value) => Ok(value),
                // Its callers asked to stop: whatever the function reports, the attempt
                // was cancelled (and is not retried).
                Err(_) if token.is_cancelled() => Err(Box::new(CancelledAttempt) as BoxError),
                Err(error) => Err(error.into()),
            }
        }
        .boxed()
    }
}

/// Where a streamed fetch puts its items: the entry, through the engine (`engine/stream.rs`).
pub(crate) trait StreamSink<T>: Send + Sync {
    /// The data the entry holds now.
    fn current(&self) -> Option<Arc<T>>;
    /// Shows `data` (`None`: nothing, the stream restarted) while the fetch goes on.
    /// `false`: the entry no longer takes this fetch's items (the stream stops).
    fn publish(&self, data: Option<Arc<T>>) -> bool;
    /// An item arrived: from now on a failure is not retried.
    fn arrived(&self);
}

/// One attempt of a streamed fetch: opens the stream and runs it to its end.
pub(crate) trait StreamFetch<T>: Send + Sync {
    /// `cancel`: the flight's token (the stream stops when it fires); `idle`: the bound
    /// on the wait for each item, timed on the host's clock.
    fn start(
        &self,
        sink: Arc<dyn StreamSink<T>>,
        cancel: Option<CancellationToken>,
        idle: Option<(std::time::Duration, crate::host::Runtime)>,
    ) -> BoxFuture<'static, Result<Arc<T>, BoxError>>;
}
