//! Streamed queries (`StreamedQuery`): items reach the entry and its observers as they
//! arrive, refetches restart the stream under each `RefetchMode`, cancels and removals
//! drop it, and failures are retried only before the first item. Every test runs on
//! tokio's paused clock, each stream fed by hand through a channel.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use stackquery::storage::Storage;
use stackquery::{
    key, EmptyStream, FetchStatus, QueryClient, QueryError, QueryOptions, QueryState, QueryStatus,
    RefetchMode, SqliteStorage, StreamedQuery,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

type Item = Result<u32, std::io::Error>;

/// Sets its flag when dropped (with the stream that holds it).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The streams of a query, one per fetch, each a channel the test feeds by hand.
#[derive(Default)]
struct Feeds {
    queue: Mutex<VecDeque<(UnboundedReceiver<Item>, DropFlag)>>,
    opened: AtomicUsize,
}

/// The sending end of one stream, and whether the stream was dropped.
struct Feed {
    tx: Option<UnboundedSender<Item>>,
    dropped: Arc<AtomicBool>,
}

impl Feed {
    fn send(&self, n: u32) {
        self.tx.as_ref().unwrap().send(Ok(n)).unwrap();
    }
    fn fail(&self) {
        let error = std::io::Error::other("connection reset");
        self.tx.as_ref().unwrap().send(Err(error)).unwrap();
    }
    /// Ends the stream.
    fn end(&mut self) {
        self.tx = None;
    }
    fn dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Feeds {
    /// The stream the next fetch opens.
    fn next(&self) -> Feed {
        let (tx, rx) = unbounded_channel();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(dropped.clone());
        self.queue.lock().unwrap().push_back((rx, flag));
        Feed {
            tx: Some(tx),
            dropped,
        }
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    fn make(self: &Arc<Self>) -> impl Fn() -> BoxStream<'static, Item> + Send + Sync + 'static {
        let feeds = self.clone();
        move || {
            feeds.opened.fetch_add(1, Ordering::SeqCst);
            let Some((mut rx, flag)) = feeds.queue.lock().unwrap().pop_front() else {
                let error = std::io::Error::other("no feed prepared for this stream");
                return futures::stream::iter([Err(error)]).boxed();
            };
            futures::stream::poll_fn(move |cx| {
                let _held = &flag;
                rx.poll_recv(cx)
            })
            .boxed()
        }
    }
}

fn numbers(feeds: &Arc<Feeds>, mode: RefetchMode) -> QueryOptions<Vec<u32>> {
    StreamedQuery::new(key!["numbers"], feeds.make())
        .refetch_mode(mode)
        .append()
        .retry(0)
}

/// Lets the fetch task run (the paused clock moves on only when every task waits).
async fn run_tasks() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn state(client: &QueryClient) -> QueryState<Vec<u32>> {
    client.get_query_state(&key!["numbers"]).unwrap()
}

fn data(client: &QueryClient) -> Option<Vec<u32>> {
    let data = client.get_query_data::<Vec<u32>>(&key!["numbers"]);
    data.map(|d| (*d).clone())
}

fn spawn_fetch(
    client: &QueryClient,
    opts: &QueryOptions<Vec<u32>>,
) -> tokio::task::JoinHandle<Result<Arc<Vec<u32>>, QueryError>> {
    let (client, opts) = (client.clone(), opts.clone());
    tokio::spawn(async move { client.fetch_query(&opts).await })
}

/// A first fetch, run to its end with items `items`.
async fn first_fetch(
    client: &QueryClient,
    feeds: &Arc<Feeds>,
    opts: &QueryOptions<Vec<u32>>,
    items: &[u32],
) {
    let mut feed = feeds.next();
    for &n in items {
        feed.send(n);
    }
    feed.end();
    assert_eq!(*client.fetch_query(opts).await.unwrap(), items);
}

#[tokio::test(start_paused = true)]
async fn observers_see_every_item_and_fetch_query_gets_the_whole_stream() {
    let client = QueryClient::new();
    let feeds = Arc::new(Feeds::default());
    let opts = numbers(&feeds, RefetchMode::Reset);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _sub = client.watch(&opts).subscribe({
        let seen = seen.clone();
        move |s: &QueryState<Vec<u32>>| {
            let data = s.data.as_ref().map(|d| (**d).clone());
            seen.lock().unwrap().push((data, s.status, s.fetch_status));
        }
    });
    let mut feed = feeds.next();
    let caller = spawn_fetch(&client, &opts);
    run_tasks().await;
    assert_eq!(state(&client).status, QueryStatus::Pending);

    feed.send(1);
    run_tasks().await;
    let s = state(&client);
    assert_eq!(
        (s.status, s.fetch_status),
        (QueryStatus::Success, FetchStatus::Fetching)
    );
    assert_eq!(data(&client), Some(vec![1]));
    feed.send(2);
    run_tasks().await;
    assert_eq!(data(&client), Some(vec![1, 2]));
    assert!(
        !caller.is_finished(),
        "fetch_query resolves when the stream ends"
    );

    feed.end();
    assert_eq!(*caller.await.unwrap().unwrap(), [1, 2]);
    assert_eq!(state(&client).fetch_status, FetchStatus::Idle);
    assert_eq!(
        feeds.opened(),
        1,
        "the observer and the caller share one stream"
    );

    let mut seen = seen.lock().unwrap().clone();
    seen.dedup();
    use FetchStatus::{Fetching, Idle};
    use QueryStatus::{Pending, Success};
    assert_eq!(
        seen,
        [
            (None, Pending, Fetching),
            (Some(vec![1]), Success, Fetching),
            (Some(vec![1, 2]), Success, Fetching),
            (Some(vec![1, 2]), Success, Idle),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_stream() {
    let client = QueryClient::new();
    let feeds = Arc::new(Feeds::default());
    let opts = numbers(&feeds, RefetchMode::Reset);
    let mut feed = feeds.next();
    let callers: Vec<_> = (0..3).map(|_| spawn_fetch(&client, &opts)).collect();
    run_tasks().await;
    feed.send(7);
    feed.end();
    let mut results = Vec::new();
    for caller in callers {
        results.push(caller.await.unwrap().unwrap());
    }
    assert_eq!(feeds.opened(), 1);
    assert_eq!(*results[0], [7]);
    assert!(results.iter().all(|r| Arc::ptr_eq(r, &results[0])));
}

/// Refetches the key in the background; returns what the data is once the new stream
/// is open, then after its item 3, then at its end.
async fn refetch_with(
    mode: RefetchMode,
) -> (Option<Vec<u32>>, QueryStatus, Option<Vec<u32>>, Vec<u32>) {
    let client = QueryClient::new();
    let feeds = Arc::new(Feeds::default());
    let opts = numbers(&feeds, mode);
    first_fetch(&client, &feeds, &opts, &[1, 2]).await;

    let mut feed = feeds.next();
    let refetch = tokio::spawn({
        let client = client.clone();
        async move { client.refetch_queries(key!["numbers"]).await }
    });
    run_tasks().await;
    assert_eq!(feeds.opened(), 2, "the refetch opened a new stream");
    let (opened, status) = (data(&client), state(&client).status);
    feed.send(3);
    run_tasks().await;
    let after_item = data(&client);
    feed.end();
    refetch.await.unwrap();
    assert_eq!(state(&client).fetch_status, FetchStatus::Idle);
    (opened, status, after_item, data(&client).unwrap())
}

#[tokio::test(start_paused = true)]
async fn refetch_mode_reset_clears_the_data_and_rebuilds_it() {
    let (opened, status, after_item, end) = refetch_with(RefetchMode::Reset).await;
    assert_eq!((opened, status), (None, QueryStatus::Pending));
    assert_eq!(after_item, Some(vec![3]));
    assert_eq!(end, [3]);
}

#[tokio::test(start_paused = true)]
async fn refetch_mode_append_keeps_the_data_and_adds_to_it() {
    let (opened, status, after_item, end) = refetch_with(RefetchMode::Append).await;
    assert_eq!((opened, status), (Some(vec![1, 2]), QueryStatus::Success));
    assert_eq!(after_item, Some(vec![1, 2, 3]));
    assert_eq!(end, [1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn refetch_mode_replace_swaps_the_data_in_at_the_end() {
    let (opened, status, after_item, end) = refetch_with(RefetchMode::Replace).await;
    assert_eq!((opened, status), (Some(vec![1, 2]), QueryStatus::Success));
    assert_eq!(after_item, Some(vec![1, 2]), "built in the background");
    assert_eq!(end, [3]);
}

#[tokio::test(start_paused = true)]
async fn cancel_drops_the_stream_and_keeps_the_data() {
    let client = QueryClient::new();
    let feeds = Arc::new(Feeds::default());
    let opts = numbers(&feeds, RefetchMode::Reset);
    let feed = feeds.next();
    let caller = spawn_fetch(&client, &opts);
    feed.send(1);
    run_tasks().await;
    assert!(!feed.dropped());
    client.cancel_queries(key!["numbers"]).await;
    run_tasks().await;
    assert!(feed.dropped(), "the stream is dropped");
    assert!(matches!(caller.await.unwrap(), Err(QueryError::Cancelled)));
    let s = state(&client);
    assert_eq!(
        (s.status, s.fetch_status),
        (QueryStatus::Success, FetchStatus::Idle)
    );
    assert_eq!(data(&client), Some(vec![1]));
}

#[tokio::test(start_paused = true)]
async fn an_invalidation_restarts_the_stream_and_stops_the_old_one() {
    let client = QueryClient::new();
    let feeds = Arc::new(Feeds::default());
    let opts = numbers(&feeds, RefetchMode::Append);
    let old = feeds.next();
    let _sub = client.watch(&opts).subscribe(|_| {});
    let caller = spawn_fetch(&client, &opts);
    old.send(1);
    run_tasks().await;
    let mut new = feeds.next();
    // (It waits for the refetch: in the background.)
    let invalidation = tokio::spawn({
        let client = client.clone();
        async move { client.invalidate_queries(key!["numbers"]).await }
    });
    run_tasks().await;
    assert_eq!(feeds.opened(), 2);
    assert!(old.dropped(), "the replaced stream is dropped at once");
    // Its caller gets what it gathered.
    assert_eq!(*caller.await.unwrap().unwrap(), [1]);
    new.send(2);
    new.end();
    assert_eq!(invalidation.await.unwrap(), 1);
    assert_eq!(data(&client), Some(vec![1, 2]));
    assert!(!state(&client).is_invalidated);
}

#[tokio::test(start_paused = true)]
async fn removal_drops_the_stream_and_its_callers_get_what_it_gathered() {
    let client = QueryClient::new();
    let feeds = Arc::new(Feeds::default());
    let opts = numbers(&feeds, RefetchMode::Reset);
    let feed = feeds.next();
    let caller = spawn_fetch(&client, &opts);
    feed.send(1);
    run_tasks().await;
    client.remove_queries(key!["numbers"]);
    run_tasks().await;
    assert!(feed.dropped());
    assert_eq!(*caller.await.unwrap().unwrap(), [1]);
}

#[tokio::test(start_paused = true)]
async fn an_error_mid_stream_keeps_the_data_and_is_not_retried() {
    let client = QueryClient::new();
    let feeds = Arc::new(Feeds::default());
    let opts = numbers(&feeds, RefetchMode::Reset).retry(3);
    let feed = feeds.next();
    let caller = spawn_fetch(&client, &opts);
    feed.send(1);
    feed.fail();
    let err = caller.await.unwrap().unwrap_err();
    assert!(err.downcast_ref::<std::io::Error>().is_some(), "{err:?}");
    assert_eq!(feeds.opened(), 1, "not retried after an item");
    let s = state(&client);
    assert_eq!(
        (s.status, s.fetch_status),
        (QueryStatus::Error, FetchStatus::Idle)
    );
    assert_eq!(data(&client), Some(vec![1]));
}

#[tokio::test(start_paused = true)]
async fn an_error_before_the_first_item_is_retried_with_a_new_stream() {
    let client = QueryClient::new();
    let feeds = Arc::new(Feeds::default());
    let opts = numbers(&feeds, RefetchMode::Reset)
        .retry(1)
        .retry_delay(|_| Duration::from_secs(1));
    let first = feeds.next();
    first.fail();
    let mut second = feeds.next();
    second.send(5);
    second.end();
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), [5]);
    assert_eq!(feeds.opened(), 2);
    assert!(first.dropped());
}

#[tokio::test(start_paused = true)]
async fn fetch_timeout_bounds_each_wait_for_an_item() {
    let client = QueryClient::new();
    let feeds = Arc::new(Feeds::default());
    let opts = numbers(&feeds, RefetchMode::Reset).fetch_timeout(Duration::from_secs(10));
    let feed = feeds.next();
    let caller = spawn_fetch(&client, &opts);
    let started = tokio::time::Instant::now();
    feed.send(1);
    tokio::time::sleep(Duration::from_secs(8)).await;
    feed.send(2);
    tokio::time::sleep(Duration::from_secs(8)).await;
    // 16 s into the stream, alive: each wait was shorter than the timeout.
    assert!(!caller.is_finished());
    let err = caller.await.unwrap().unwrap_err();
    assert!(matches!(err, QueryError::Timeout(d) if d == Duration::from_secs(10)));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(18),
        "10 s after the last item"
    );
    assert_eq!(data(&client), Some(vec![1, 2]));
    assert!(feed.dropped());
}

#[tokio::test(start_paused = true)]
async fn a_manual_write_during_a_stream_wins() {
    let client = QueryClient::new();
    let feeds = Arc::new(Feeds::default());
    let opts = numbers(&feeds, RefetchMode::Reset);
    let feed = feeds.next();
    let caller = spawn_fetch(&client, &opts);
    feed.send(1);
    run_tasks().await;
    client
        .set_query_data(key!["numbers"], vec![100_u32])
        .unwrap();
    feed.send(2);
    run_tasks().await;
    assert!(feed.dropped(), "the stream stops at its next item");
    assert_eq!(*caller.await.unwrap().unwrap(), [1, 2]);
    assert_eq!(data(&client), Some(vec![100]));
    assert_eq!(state(&client).fetch_status, FetchStatus::Idle);
}

#[tokio::test(start_paused = true)]
async fn latest_and_reduce() {
    let client = QueryClient::new();
    let items = || futures::stream::iter([Ok::<_, std::io::Error>(2_u64), Ok(3), Ok(4)]);
    let latest = StreamedQuery::new(key!["latest"], items).latest();
    assert_eq!(*client.fetch_query(&latest).await.unwrap(), 4);
    let total = StreamedQuery::new(key!["total"], items).reduce(1_u64, |sum, n| *sum += n);
    assert_eq!(*client.fetch_query(&total).await.unwrap(), 10);

    let empty = StreamedQuery::new(key!["empty"], || {
        futures::stream::iter(Vec::<Result<u8, std::io::Error>>::new())
    });
    let err = client
        .fetch_query(&empty.latest().retry(0))
        .await
        .unwrap_err();
    assert_eq!(err.downcast_ref::<EmptyStream>(), Some(&EmptyStream));
}

/// The second tier gets the whole stream's data once, when the stream ends: never an
/// item's worth. (Real time: SQLite runs on blocking threads, which a paused clock
/// does not wait for.)
#[tokio::test]
async fn a_persisted_stream_is_written_behind_when_it_ends() {
    persisted_stream_is_written_at_its_end(SqliteStorage::open_in_memory().unwrap()).await;
}

/// The same on a Redis tier (its own `redis-server`; real time).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_stream_is_written_behind_when_it_ends_in_redis() {
    let Some(server) = common::redis_server::RedisServer::start("a_persisted_stream_in_redis")
    else {
        return;
    };
    let store = stackquery::storage::RedisStorage::builder(server.url())
        .namespace("streamed")
        .connect()
        .await
        .expect("storage");
    persisted_stream_is_written_at_its_end(store).await;
}

/// The scenario of the two tests above, on `store`.
async fn persisted_stream_is_written_at_its_end<S: Storage + Clone>(store: S) {
    let client = QueryClient::builder().storage(store.clone()).build();
    let feeds = Arc::new(Feeds::default());
    let opts = numbers(&feeds, RefetchMode::Reset).persist();
    let mut feed = feeds.next();
    let caller = spawn_fetch(&client, &opts);
    feed.send(1);
    feed.send(2);
    let shown = async {
        while data(&client) != Some(vec![1, 2]) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), shown)
        .await
        .expect("both items shown");
    client.flush_storage().await;
    let stored = key!["numbers"].to_string();
    assert_eq!(
        store.get(&stored).await.unwrap(),
        None,
        "no item is written"
    );
    feed.end();
    caller.await.unwrap().unwrap();
    client.flush_storage().await;
    let written = store
        .get(&stored)
        .await
        .unwrap()
        .expect("written at the end");
    assert!(String::from_utf8_lossy(&written).contains("[1,2]"));

    // A new client reads it back without opening a stream (fresh: no background
    // refresh behind the stored copy).
    let reader = QueryClient::builder().storage(store).build();
    let fresh = opts.stale_time(Duration::MAX);
    assert_eq!(*reader.fetch_query(&fresh).await.unwrap(), [1, 2]);
    assert_eq!(feeds.opened(), 1);
}
