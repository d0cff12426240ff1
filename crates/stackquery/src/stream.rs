//! Streamed queries: a query whose fetch function is a [`Stream`] (a WebSocket, server-sent
//! events, a Redis stream, a channel) and whose data grows or changes as items arrive
//! (TanStack Query's `experimental_streamedQuery`). The builder ([`StreamedQuery`]) makes
//! ordinary [`QueryOptions`]: every client call, observer, invalidation and persistence
//! rule works on them. This file is the stream's side (how items become data); the
//! engine's side (how data reaches the entry while the fetch goes on) is
//! `engine/stream.rs`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::error::{BoxError, CancelledAttempt, TimedOut};
use crate::fetcher::{Attempt, FetchFn};
use crate::host::Runtime;
use crate::key::QueryKey;
use crate::options::QueryOptions;

/// What a refetch of a streamed query does with the data it already holds (TanStack
/// Query's `refetchMode`). A first fetch (no data yet) shows every item as it arrives,
/// whatever the mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefetchMode {
    /// Clear the data when the stream restarts: the query is pending again, and the new
    /// stream's items build the data from nothing, shown as they arrive.
    #[default]
    Reset,
    /// Keep the data, and add the new stream's items to it, shown as they arrive (for
    /// [`latest`](StreamedQuery::latest), each item still replaces the data).
    Append,
    /// Keep showing the old data while the new stream runs; its items are gathered in
    /// the background and the result replaces the data once the stream ends.
    Replace,
}

/// The error of a streamed query whose stream ended before its first item when there is
/// no data to show without one ([`latest`](StreamedQuery::latest)): the source of the
/// [`QueryError::Fetch`](crate::QueryError::Fetch) its callers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmptyStream;

impl fmt::Display for EmptyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the stream ended before its first item")
    }
}

impl std::error::Error for EmptyStream {}

/// Builds the [`QueryOptions`] of a query fed by a [`Stream`]: `make_stream` opens a new
/// stream on each fetch, and each item the stream yields updates the query's data at once
/// (observers and [`watch`](crate::QueryClient::watch) see every update). Pick how items
/// make the data with [`append`](Self::append) (every item, in order),
/// [`latest`](Self::latest) (the last item) or [`reduce`](Self::reduce) (a fold).
///
/// The stream's items are `Result`s: an `Err` ends the fetch with that error.
///
/// # Semantics
///
/// * **Status.** The query is a success from the first item on; its fetch status stays
///   fetching until the stream ends. Each item replaces the data the entry holds (one
///   notification of the observers per item: they see every value, in order).
/// * **Callers.** [`fetch_query`](crate::QueryClient::fetch_query) resolves when the
///   stream ends, with the whole data (as TanStack Query's `fetchQuery`). N callers share
///   one stream. Once data has arrived, a call serves it like any cached data (the data
///   so far, stale-while-revalidate) and starts no second stream; a caller that wants the
///   live data observes the query.
/// * **Errors and retries.** A stream that fails before its first item (it could not
///   connect) is retried under the query's retry settings, with a new stream. One that
///   fails after an item is not retried: the fetch ends with the error, the query is in
///   error, and the data received so far stays (as in TanStack Query).
/// * **Refetches restart the stream.** An invalidation, a
///   [`refetch_queries`](crate::QueryClient::refetch_queries) or a poll opens a new
///   stream; a refetch that replaces a stream still running stops it (it is dropped) and
///   its callers get the data it gathered. What happens to the data held is the
///   [`RefetchMode`] (default [`Reset`](RefetchMode::Reset)). A stream that is running is
///   joined, not restarted, by a refetch that would join any fetch in flight.
/// * **Stopping.** [`cancel_queries`](crate::QueryClient::cancel_queries) drops the stream
///   at once (the data received so far stays). A removal or a reset drops it too; its
///   callers then get the data gathered so far (or
///   [`QueryError::Cancelled`](crate::QueryError::Cancelled) if there was none). A manual
///   write during a stream wins: the stream is dropped at its next item.
/// * **Timeouts.** [`fetch_timeout`](QueryOptions::fetch_timeout) bounds the wait for
///   each item (the first included), not the whole stream: a stream that never ends runs
///   as long as it keeps sending, and one silent for longer than the timeout ends with
///   [`QueryError::Timeout`](crate::QueryError::Timeout) (retried only if no item came).
/// * **The second tier.** A persisted streamed query writes its data behind once, when
///   the stream ends (the settled result), never per item: the stored copy is always a
///   whole stream's data. A cold key reads the stored copy first like any persisted
///   query (and opens no stream if it is usable).
///
/// Each item builds a new value of the data (observers hold the previous one), so
/// [`append`](Self::append) and [`reduce`](Self::reduce) clone the data gathered so far
/// once per item, as TanStack Query's append copies its array: for long streams of large
/// data, keep the data small (a window, a count) with `reduce`, or use `latest`.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use futures::StreamExt;
/// use stackquery::{key, QueryClient, QueryState, StreamedQuery};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), stackquery::QueryError> {
/// let client = QueryClient::new();
/// // A channel stands in for a WebSocket: each message is an item.
/// let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<String, std::io::Error>>();
/// let rx = Mutex::new(Some(rx));
/// let chat = StreamedQuery::new(key!["chat", 7], move || {
///     let mut rx = rx.lock().unwrap().take().expect("one stream in this example");
///     futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
/// })
/// .append();
///
/// // An observer sees the data grow, item by item, while the fetch goes on.
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let _subscription = client.watch(&chat).subscribe({
///     let seen = seen.clone();
///     move |state: &QueryState<Vec<String>>| {
///         let messages = state.data.as_ref().map_or(0, |d| d.len());
///         seen.lock().unwrap().push((messages, state.is_fetching()));
///     }
/// });
/// tx.send(Ok("hello".into())).unwrap();
/// tx.send(Ok("world".into())).unwrap();
/// drop(tx); // the stream ends
///
/// // `fetch_query` joins the stream and resolves when it ends, with the whole data.
/// assert_eq!(*client.fetch_query(&chat).await?, ["hello", "world"]);
/// let mut seen = seen.lock().unwrap().clone();
/// seen.dedup();
/// assert_eq!(seen, [(0, true), (1, true), (2, true), (2, false)]);
/// # Ok(()) }
/// ```
pub struct StreamedQuery<F> {
    key: QueryKey,
    make_stream: F,
    mode: RefetchMode,
}

impl<F> fmt::Debug for StreamedQuery<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamedQuery")
            .field("key", &self.key)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<F, S, I, E> StreamedQuery<F>
where
    F: Fn() -> S + Send + Sync + 'static,
    S: Stream<Item = Result<I, E>> + Send + 'static,
    I: Send + 'static,
    E: Into<BoxError> + 'static,
{
    /// A streamed query of `key`: `make_stream` opens the stream of each fetch (and of
    /// each retry of a stream that failed before its first item).
    pub fn new(key: impl Into<QueryKey>, make_stream: F) -> Self {
        StreamedQuery {
            key: key.into(),
            make_stream,
            mode: RefetchMode::default(),
        }
    }

    /// What a refetch does with the data held (default [`RefetchMode::Reset`]).
    #[must_use]
    pub fn refetch_mode(mut self, mode: RefetchMode) -> Self {
        self.mode = mode;
        self
    }

    /// The data is every item received, in order (an empty `Vec` for a stream that ends
    /// at once).
    pub fn append(self) -> QueryOptions<Vec<I>>
    where
        I: Clone + Sync,
    {
        self.fold(Fold {
            push: Box::new(|acc: Option<Arc<Vec<I>>>, item| {
                let mut items = acc.map(Arc::unwrap_or_clone).unwrap_or_default();
                items.push(item);
                Arc::new(items)
            }),
            empty: Box::new(|| Some(Vec::new())),
        })
    }

    /// The data is the last item received. A stream that ends before its first item
    /// fails with [`EmptyStream`] (unless the query holds data it keeps:
    /// [`RefetchMode::Append`]).
    pub fn latest(self) -> QueryOptions<I>
    where
        I: Sync,
    {
        self.fold(Fold {
            push: Box::new(|_, item| Arc::new(item)),
            empty: Box::new(|| None),
        })
    }

    /// The data is `initial` with every item folded in by `step`, in order (TanStack
    /// Query's `reducer` and `initialValue`): a count, a window of the last N items, a
    /// map by id.
    ///
    /// ```
    /// use stackquery::{key, StreamedQuery};
    ///
    /// // The running total of a stream of amounts.
    /// let total = StreamedQuery::new(key!["total"], || {
    ///     futures::stream::iter([Ok::<_, std::io::Error>(2_u64), Ok(3)])
    /// })
    /// .reduce(0_u64, |sum, amount| *sum += amount);
    /// # let _ = total;
    /// ```
    pub fn reduce<T>(
        self,
        initial: T,
        step: impl Fn(&mut T, I) + Send + Sync + 'static,
    ) -> QueryOptions<T>
    where
        T: Clone + Send + Sync + 'static,
    {
        let first = initial.clone();
        self.fold(Fold {
            push: Box::new(move |acc: Option<Arc<T>>, item| {
                let mut data = acc.map_or_else(|| initial.clone(), Arc::unwrap_or_clone);
                step(&mut data, item);
                Arc::new(data)
            }),
            empty: Box::new(move || Some(first.clone())),
        })
    }

    fn fold<T: Send + Sync + 'static>(self, fold: Fold<T, I>) -> QueryOptions<T> {
        let make = self.make_stream;
        let streamed = Streamed {
            make: Box::new(move || make().map(|item| item.map_err(Into::into)).boxed()),
            fold: Arc::new(fold),
            mode: self.mode,
        };
        QueryOptions::with_fetcher(self.key, Arc::new(streamed))
    }
}

/// Folds one item into the data so far.
type Push<T, I> = dyn Fn(Option<Arc<T>>, I) -> Arc<T> + Send + Sync;

/// How items make the data: `push` folds one in (taking the data so far, which the
/// entry may share: it copies it then), `empty` is the data of a stream with no item.
struct Fold<T, I> {
    push: Box<Push<T, I>>,
    empty: Box<dyn Fn() -> Option<T> + Send + Sync>,
}

// The engine-facing traits live in `fetcher.rs`, under the options (which name them), so
// the layers import one way.
pub(crate) use crate::fetcher::{StreamFetch, StreamSink};

type MakeStream<I> = Box<dyn Fn() -> BoxStream<'static, Result<I, BoxError>> + Send + Sync>;

/// A streamed query's fetch function.
struct Streamed<T, I> {
    make: MakeStream<I>,
    fold: Arc<Fold<T, I>>,
    mode: RefetchMode,
}

impl<T: Send + Sync + 'static, I: Send + 'static> FetchFn<T> for Streamed<T, I> {
    /// Its flights carry a token: a cancel, a removal or a reset stop the stream through
    /// it, and so does a refetch that replaces it.
    fn takes_context(&self) -> bool {
        true
    }

    /// The stream run to its end with nowhere to show its items (the engine starts a
    /// streamed fetch with [`as_stream`](FetchFn::as_stream) instead).
    fn call(
        &self,
        _: &QueryKey,
        _: u32,
        flight: Option<&CancellationToken>,
        _: Option<&Arc<T>>,
    ) -> Attempt<T> {
        let run = self.start(Arc::new(Nowhere), flight.cloned(), None);
        // Nothing else holds the data (nowhere keeps what it is shown).
        run.map(|r| r.and_then(|data| Arc::try_unwrap(data).map_err(|_| "shared".into())))
            .boxed()
    }

    fn as_stream(&self) -> Option<&dyn StreamFetch<T>> {
        Some(self)
    }
}

impl<T: Send + Sync + 'static, I: Send + 'static> StreamFetch<T> for Streamed<T, I> {
    fn start(
        &self,
        sink: Arc<dyn StreamSink<T>>,
        cancel: Option<CancellationToken>,
        idle: Option<(Duration, Runtime)>,
    ) -> BoxFuture<'static, Result<Arc<T>, BoxError>> {
        // Opened in the attempt (user code, contained with it), before the first poll.
        let stream = (self.make)();
        run(stream, self.fold.clone(), self.mode, sink, cancel, idle).boxed()
    }
}

/// A sink that shows nothing and always takes more.
struct Nowhere;

impl<T> StreamSink<T> for Nowhere {
    fn current(&self) -> Option<Arc<T>> {
        None
    }
    fn publish(&self, _: Option<Arc<T>>) -> bool {
        true
    }
    fn arrived(&self) {}
}

/// What waiting for the next item gave.
enum Next<I> {
    Item(Result<I, BoxError>),
    End,
    /// The flight's token fired: the entry stopped waiting for this stream.
    Stopped,
    /// No item within the idle bound.
    Idle(Duration),
}

/// Runs one stream: each item folded into the data and shown, until the stream ends
/// (the data), fails (its error), is stopped (the data so far) or falls silent.
async fn run<T: Send + Sync + 'static, I: Send + 'static>(
    mut stream: BoxStream<'static, Result<I, BoxError>>,
    fold: Arc<Fold<T, I>>,
    mode: RefetchMode,
    sink: Arc<dyn StreamSink<T>>,
    cancel: Option<CancellationToken>,
    idle: Option<(Duration, Runtime)>,
) -> Result<Arc<T>, BoxError> {
    let held = sink.current();
    // Where the data starts, and whether each item is shown as it arrives.
    let (mut data, live) = match (held, mode) {
        (None, _) => (None, true),
        (Some(_), RefetchMode::Reset) => {
            if !sink.publish(None) {
                return Err(Box::new(CancelledAttempt));
            }
            (None, true)
        }
        (Some(held), RefetchMode::Append) => (Some(held), true),
        (Some(_), RefetchMode::Replace) => (None, false),
    };
    let mut stopped = cancel.map(|token| Box::pin(token.cancelled_owned()));
    loop {
        let mut silent = idle
            .as_ref()
            .map(|(limit, host)| (*limit, host.sleep(*limit)));
        let next = std::future::poll_fn(|cx| {
            if let Some(stopped) = &mut stopped {
                if stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Next::Stopped);
                }
            }
            if let Poll::Ready(item) = stream.poll_next_unpin(cx) {
                return Poll::Ready(item.map_or(Next::End, Next::Item));
            }
            if let Some((limit, sleep)) = &mut silent {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Next::Idle(*limit));
                }
            }
            Poll::Pending
        })
        .await;
        match next {
            Next::Item(Ok(item)) => {
                sink.arrived();
                let grown = (fold.push)(data.take(), item);
                if live && !sink.publish(Some(grown.clone())) {
                    // A manual write or a newer fetch took over: its callers get what it
                    // gathered, and the stream is dropped.
                    return Ok(grown);
                }
                data = Some(grown);
            }
            Next::Item(Err(error)) => return Err(error),
            Next::End => {
                return match data.or_else(|| (fold.empty)().map(Arc::new)) {
                    Some(data) => Ok(data),
                    None => Err(Box::new(EmptyStream)),
                }
            }
            Next::Stopped => {
                return data.ok_or_else(|| Box::new(CancelledAttempt) as BoxError);
            }
            Next::Idle(limit) => return Err(Box::new(TimedOut(limit))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key;

    /// Records what it is shown.
    #[derive(Default)]
    struct Shown(parking_lot::Mutex<Vec<Option<Vec<u32>>>>);

    impl StreamSink<Vec<u32>> for Shown {
        fn current(&self) -> Option<Arc<Vec<u32>>> {
            self.0.lock().last().cloned().flatten().map(Arc::new)
        }
        fn publish(&self, data: Option<Arc<Vec<u32>>>) -> bool {
            self.0.lock().push(data.map(|d| (*d).clone()));
            true
        }
        fn arrived(&self) {}
    }

    fn numbers(mode: RefetchMode) -> QueryOptions<Vec<u32>> {
        StreamedQuery::new(key!["n"], || {
            futures::stream::iter([Ok::<_, std::io::Error>(1), Ok(2)])
        })
        .refetch_mode(mode)
        .append()
    }

    async fn fetch(mode: RefetchMode, shown: &Arc<Shown>) -> Vec<u32> {
        let opts = numbers(mode);
        let stream = opts.fetcher.as_stream().expect("streamed");
        let data = stream.start(shown.clone(), None, None).await.unwrap();
        (*data).clone()
    }

    #[tokio::test]
    async fn each_mode_starts_from_what_it_should() {
        for (mode, end, shown_after) in [
            (
                RefetchMode::Reset,
                vec![1, 2],
                vec![None, Some(vec![1]), Some(vec![1, 2])],
            ),
            (
                RefetchMode::Append,
                vec![9, 1, 2],
                vec![Some(vec![9, 1]), Some(vec![9, 1, 2])],
            ),
            (RefetchMode::Replace, vec![1, 2], vec![]),
        ] {
            let shown = Arc::new(Shown::default());
            shown.0.lock().push(Some(vec![9]));
            assert_eq!(fetch(mode, &shown).await, end, "{mode:?}");
            assert_eq!(shown.0.lock()[1..], shown_after[..], "{mode:?}");
        }
    }

    #[tokio::test]
    async fn without_a_sink_the_stream_is_folded_to_its_end() {
        let opts = numbers(RefetchMode::Reset);
        let data = opts.fetcher.call(opts.key(), 0, None, None).await.unwrap();
        assert_eq!(data, [1, 2]);
    }
}
