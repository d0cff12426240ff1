//! Infinite queries: pages fetched with `fetch_next_page` / `fetch_previous_page`,
//! `has_next_page`, `max_pages`, the refetch of every page in order, concurrency, the
//! observer, and persistence of the pages (memory, SQLite, Redis).
//!
//! Paused clock for one client; real time (generous bounds) against a SQLite file or a
//! `redis-server` (sockets and blocking file I/O cannot run on the paused clock).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stackquery::{
    key, InfiniteData, InfiniteQueryOptions, QueryClient, QueryError, QueryKey, RefetchType,
};
use tokio::time::Instant;

/// A page of a list served by a fake API: its items and the cursor of the next page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Page {
    items: Vec<u32>,
    next: Option<u32>,
}

/// The fake API: a list of `len` numbers served in pages of `size` from a cursor;
/// records each call (the cursor and when it started) and can be told to fail.
#[derive(Clone)]
struct Api {
    calls: Arc<Mutex<Vec<(u32, Instant)>>>,
    size: Arc<Mutex<u32>>,
    len: u32,
    delay: Duration,
    fail: Arc<Mutex<bool>>,
}

impl Api {
    fn new(len: u32, size: u32, delay: Duration) -> Self {
        Api {
            calls: Arc::default(),
            size: Arc::new(Mutex::new(size)),
            len,
            delay,
            fail: Arc::default(),
        }
    }

    fn cursors(&self) -> Vec<u32> {
        self.calls.lock().unwrap().iter().map(|c| c.0).collect()
    }

    fn starts(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().iter().map(|c| c.1).collect()
    }

    fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }

    fn options(&self, k: QueryKey) -> InfiniteQueryOptions<Page, u32> {
        let api = self.clone();
        InfiniteQueryOptions::new(
            k,
            0_u32,
            move |cursor: u32| {
                let api = api.clone();
                async move {
                    api.calls.lock().unwrap().push((cursor, Instant::now()));
                    tokio::time::sleep(api.delay).await;
                    if *api.fail.lock().unwrap() {
                        return Err("the API is down".to_string());
                    }
                    let size = *api.size.lock().unwrap();
                    let end = (cursor + size).min(api.len);
                    Ok(Page {
                        items: (cursor..end).collect(),
                        next: (end < api.len).then_some(end),
                    })
                }
            },
            |last: &Page, _: &[Page], _: &u32, _: &[u32]| last.next,
        )
        .get_previous_page_param(|_: &Page, _: &[Page], first: &u32, _: &[u32]| {
            // Pages of 10 going back (the fake API's first size).
            first.checked_sub(10)
        })
        .query(|q| q.retry(0))
    }
}

fn params(d: &InfiniteData<Page, u32>) -> Vec<u32> {
    d.page_params.clone()
}

#[tokio::test(start_paused = true)]
async fn next_pages_append_until_there_is_none() {
    let api = Api::new(30, 10, Duration::from_millis(10));
    let client = QueryClient::new();
    let opts = api.options(key!["list"]);

    let d = client.fetch_infinite_query(&opts).await.unwrap();
    assert_eq!(params(&d), vec![0]);
    assert_eq!(d.pages[0].items, (0..10).collect::<Vec<_>>());
    assert!(client.has_next_page(&opts));
    assert!(!client.has_previous_page(&opts), "0 is the first page");

    let d = client.fetch_next_page(&opts).await.unwrap();
    assert_eq!(params(&d), vec![0, 10]);
    let d = client.fetch_next_page(&opts).await.unwrap();
    assert_eq!(params(&d), vec![0, 10, 20]);
    assert_eq!(d.pages[2].items, (20..30).collect::<Vec<_>>());
    assert!(!client.has_next_page(&opts));
    assert_eq!(api.cursors(), vec![0, 10, 20]);

    // No next page: nothing is fetched, the pages are returned as they are.
    let d = client.fetch_next_page(&opts).await.unwrap();
    assert_eq!(params(&d), vec![0, 10, 20]);
    assert_eq!(api.cursors(), vec![0, 10, 20]);
    let cached = client
        .get_query_data::<InfiniteData<Page, u32>>(&key!["list"])
        .unwrap();
    assert!(Arc::ptr_eq(&cached, &d));
}

#[tokio::test(start_paused = true)]
async fn fetch_next_page_without_data_fetches_the_first_page() {
    let api = Api::new(30, 10, Duration::from_millis(10));
    let client = QueryClient::new();
    let opts = api.options(key!["list"]);
    let d = client.fetch_next_page(&opts).await.unwrap();
    assert_eq!(params(&d), vec![0]);
    assert_eq!(api.cursors(), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn previous_pages_prepend_and_max_pages_drops_from_the_other_end() {
    let api = Api::new(100, 10, Duration::from_millis(10));
    let client = QueryClient::new();
    let api2 = api.clone();
    // Start in the middle of the list.
    let opts = InfiniteQueryOptions::new(
        key!["mid"],
        50_u32,
        move |cursor: u32| {
            let api = api2.clone();
            async move {
                api.calls.lock().unwrap().push((cursor, Instant::now()));
                Ok::<_, String>(Page {
                    items: vec![cursor],
                    next: (cursor + 10 < api.len).then_some(cursor + 10),
                })
            }
        },
        |last: &Page, _: &[Page], _: &u32, _: &[u32]| last.next,
    )
    .get_previous_page_param(|_: &Page, _: &[Page], first: &u32, _: &[u32]| first.checked_sub(10))
    .max_pages(3);

    client.fetch_infinite_query(&opts).await.unwrap();
    let d = client.fetch_previous_page(&opts).await.unwrap();
    assert_eq!(params(&d), vec![40, 50]);
    let d = client.fetch_next_page(&opts).await.unwrap();
    assert_eq!(params(&d), vec![40, 50, 60]);
    // A fourth page at the end drops the first one...
    let d = client.fetch_next_page(&opts).await.unwrap();
    assert_eq!(params(&d), vec![50, 60, 70]);
    assert_eq!(
        d.pages.iter().map(|p| p.items[0]).collect::<Vec<_>>(),
        vec![50, 60, 70]
    );
    // ...and one at the start drops the last one.
    let d = client.fetch_previous_page(&opts).await.unwrap();
    assert_eq!(params(&d), vec![40, 50, 60]);
    assert!(client.has_previous_page(&opts));
}

#[tokio::test(start_paused = true)]
async fn without_a_previous_page_function_there_is_no_previous_page() {
    let client = QueryClient::new();
    let opts = InfiniteQueryOptions::new(
        key!["fwd"],
        5_u32,
        |n: u32| async move { Ok::<_, String>(n) },
        |_: &u32, _: &[u32], last: &u32, _: &[u32]| Some(last + 1),
    );
    client.fetch_infinite_query(&opts).await.unwrap();
    assert!(!client.has_previous_page(&opts));
    let d = client.fetch_previous_page(&opts).await.unwrap();
    assert_eq!(d.pages, vec![5], "nothing fetched");
}

/// TanStack's refetch: every cached page again, one after the other, the first with its
/// cached param, each next with the param computed from the page just fetched; the data
/// is replaced once, at the end.
#[tokio::test(start_paused = true)]
async fn a_refetch_fetches_every_page_in_order_with_fresh_params() {
    let api = Api::new(100, 10, Duration::from_secs(1));
    let client = QueryClient::new();
    let opts = api.options(key!["list"]);
    client.fetch_infinite_query(&opts).await.unwrap();
    client.fetch_next_page(&opts).await.unwrap();
    client.fetch_next_page(&opts).await.unwrap();
    let before = client
        .get_query_data::<InfiniteData<Page, u32>>(&key!["list"])
        .unwrap();
    assert_eq!(params(&before), vec![0, 10, 20]);

    // The list moved: pages are now 5 long.
    *api.size.lock().unwrap() = 5;
    api.clear();
    let start = Instant::now();
    let refetch = tokio::spawn({
        let client = client.clone();
        async move { client.refetch_queries(key!["list"]).await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mid = client
        .get_query_data::<InfiniteData<Page, u32>>(&key!["list"])
        .unwrap();
    assert!(Arc::ptr_eq(&mid, &before), "replaced once, at the end");
    assert_eq!(refetch.await.unwrap(), 1);

    assert_eq!(api.cursors(), vec![0, 5, 10], "params from the fresh pages");
    let starts: Vec<_> = api.starts().iter().map(|s| *s - start).collect();
    assert_eq!(
        starts,
        vec![
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(2)
        ],
        "sequential"
    );
    let d = client
        .get_query_data::<InfiniteData<Page, u32>>(&key!["list"])
        .unwrap();
    assert_eq!(params(&d), vec![0, 5, 10]);
    assert_eq!(d.pages[2].items, (10..15).collect::<Vec<_>>());
}

/// A refetch stops early when the fresh pages have no next page.
#[tokio::test(start_paused = true)]
async fn a_refetch_stops_where_the_list_now_ends() {
    let api = Api::new(30, 10, Duration::from_millis(10));
    let client = QueryClient::new();
    let opts = api.options(key!["list"]);
    client.fetch_infinite_query(&opts).await.unwrap();
    client.fetch_next_page(&opts).await.unwrap();
    client.fetch_next_page(&opts).await.unwrap();
    *api.size.lock().unwrap() = 20;
    api.clear();
    client.refetch_queries(key!["list"]).await;
    assert_eq!(api.cursors(), vec![0, 20], "20..30 was the end");
    let d = client
        .get_query_data::<InfiniteData<Page, u32>>(&key!["list"])
        .unwrap();
    assert_eq!(params(&d), vec![0, 20]);
}

/// The one-off page fetch is not remembered as the entry's fetch function: stale data
/// and an invalidation refetch the whole list, they do not append a page.
#[tokio::test(start_paused = true)]
async fn stale_data_and_invalidations_refetch_all_pages() {
    let api = Api::new(100, 10, Duration::from_millis(10));
    let client = QueryClient::new();
    let opts = api
        .options(key!["list"])
        .stale_time(Duration::from_secs(60));
    client.fetch_infinite_query(&opts).await.unwrap();
    client.fetch_next_page(&opts).await.unwrap();
    api.clear();

    // Fresh: from the cache.
    let d = client.fetch_infinite_query(&opts).await.unwrap();
    assert_eq!(params(&d), vec![0, 10]);
    assert!(api.cursors().is_empty());

    // Stale: served at once, both pages refetched in the background.
    tokio::time::advance(Duration::from_secs(61)).await;
    let d = client.fetch_infinite_query(&opts).await.unwrap();
    assert_eq!(params(&d), vec![0, 10]);
    common::settle().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(api.cursors(), vec![0, 10]);

    // An invalidation of an observed query refetches both pages too.
    let observer = client.watch_infinite(&opts);
    let _sub = observer.subscribe(|_| {});
    api.clear();
    client
        .invalidate_queries_with(key!["list"], RefetchType::Active)
        .await;
    assert_eq!(api.cursors(), vec![0, 10]);
    assert_eq!(params(&observer.state().data.unwrap()), vec![0, 10]);
}

#[tokio::test(start_paused = true)]
async fn concurrent_next_page_calls_fetch_the_page_once() {
    let api = Api::new(100, 10, Duration::from_secs(1));
    let client = QueryClient::new();
    let opts = api.options(key!["list"]);
    client.fetch_infinite_query(&opts).await.unwrap();
    api.clear();
    let (a, b, c) = tokio::join!(
        client.fetch_next_page(&opts),
        client.fetch_next_page(&opts),
        client.fetch_next_page(&opts),
    );
    assert_eq!(api.cursors(), vec![10], "one fetch of page 10");
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(params(&a), vec![0, 10]);
    assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&b, &c));
}

/// A next-page call made while the whole list is refetched waits for the refetch, then
/// fetches the page after the refreshed pages.
#[tokio::test(start_paused = true)]
async fn a_next_page_during_a_refetch_waits_for_it_then_fetches_after_it() {
    let api = Api::new(100, 10, Duration::from_secs(1));
    let client = QueryClient::new();
    let opts = api.options(key!["list"]);
    client.fetch_infinite_query(&opts).await.unwrap();
    client.fetch_next_page(&opts).await.unwrap();
    *api.size.lock().unwrap() = 5;
    api.clear();
    let refetch = tokio::spawn({
        let client = client.clone();
        async move { client.refetch_queries(key!["list"]).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = client.fetch_next_page(&opts).await.unwrap();
    refetch.await.unwrap();
    // The refetch's pages (0, 5), then the page after them.
    assert_eq!(api.cursors(), vec![0, 5, 10]);
    assert_eq!(params(&d), vec![0, 5, 10]);
    let cached = client
        .get_query_data::<InfiniteData<Page, u32>>(&key!["list"])
        .unwrap();
    assert_eq!(params(&cached), vec![0, 5, 10]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_page_keeps_the_pages() {
    let api = Api::new(100, 10, Duration::from_millis(10));
    let client = QueryClient::new();
    let opts = api.options(key!["list"]);
    client.fetch_infinite_query(&opts).await.unwrap();
    *api.fail.lock().unwrap() = true;
    let err = client.fetch_next_page(&opts).await.unwrap_err();
    assert!(matches!(err, QueryError::Fetch(_)), "{err:?}");
    let state = client
        .get_query_state::<InfiniteData<Page, u32>>(&key!["list"])
        .unwrap();
    assert_eq!(params(&state.data.unwrap()), vec![0]);
    assert!(state.error.is_some());
    // The API is back: the next page is fetched.
    *api.fail.lock().unwrap() = false;
    let d = client.fetch_next_page(&opts).await.unwrap();
    assert_eq!(params(&d), vec![0, 10]);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_page_param_function_is_an_error_not_a_panic() {
    let client = QueryClient::new();
    let opts = InfiniteQueryOptions::new(
        key!["p"],
        0_u32,
        |n: u32| async move { Ok::<_, String>(n) },
        |_: &u32, _: &[u32], _: &u32, _: &[u32]| -> Option<u32> { panic!("bad cursor") },
    );
    client.fetch_infinite_query(&opts).await.unwrap();
    assert!(!client.has_next_page(&opts));
    let err = client.fetch_next_page(&opts).await.unwrap_err();
    assert!(matches!(err, QueryError::Panicked(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn the_observer_tells_next_pages_and_their_fetching() {
    let api = Api::new(20, 10, Duration::from_secs(1));
    let client = QueryClient::new();
    let opts = api.options(key!["list"]);
    let feed = client.watch_infinite(&opts);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _sub = feed.subscribe(move |state| {
        if let Some(d) = &state.data {
            s.lock().unwrap().push(d.page_params.clone());
        }
    });
    assert!(!feed.has_next_page(), "no pages yet");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(feed.has_next_page());
    assert!(!feed.is_fetching_next_page());

    let next = tokio::spawn({
        let feed = feed.clone();
        async move { feed.fetch_next_page().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(feed.is_fetching_next_page());
    assert!(feed.state().is_fetching());
    next.await.unwrap().unwrap();
    assert!(!feed.is_fetching_next_page());
    assert!(!feed.has_next_page(), "10..20 was the last page");
    let mut seen = seen.lock().unwrap().clone();
    seen.dedup(); // (every state change is delivered: the fetch status changes too)
    assert_eq!(seen, vec![vec![0], vec![0, 10]]);
}

/// Data in the cache can be written by hand, as for any query: has_next_page reads it.
#[tokio::test(start_paused = true)]
async fn hand_written_pages_are_continued() {
    let api = Api::new(100, 10, Duration::from_millis(10));
    let client = QueryClient::new();
    let opts = api.options(key!["list"]);
    let written = InfiniteData {
        pages: vec![Page {
            items: vec![],
            next: Some(40),
        }],
        page_params: vec![30_u32],
    };
    client.set_query_data(key!["list"], written).unwrap();
    assert!(client.has_next_page(&opts));
    let d = client.fetch_next_page(&opts).await.unwrap();
    assert_eq!(params(&d), vec![30, 40]);
    assert_eq!(api.cursors(), vec![40]);
}

/// Persists three pages through `storage`, then reads them back on a second client.
async fn pages_survive_a_restart(first: QueryClient, second: QueryClient) {
    let api = Api::new(100, 10, Duration::from_millis(5));
    let opts = api
        .options(key!["persisted", "list"])
        .persist()
        .stale_time(Duration::from_secs(600));
    first.fetch_infinite_query(&opts).await.unwrap();
    first.fetch_next_page(&opts).await.unwrap();
    let written = first.fetch_next_page(&opts).await.unwrap();
    assert_eq!(params(&written), vec![0, 10, 20]);
    first.flush_storage().await;
    api.clear();

    let read = second.fetch_infinite_query(&opts).await.unwrap();
    assert_eq!(*read, *written, "every page read back");
    assert!(api.cursors().is_empty(), "nothing fetched");
    // And it goes on from there.
    let d = second.fetch_next_page(&opts).await.unwrap();
    assert_eq!(params(&d), vec![0, 10, 20, 30]);
    assert_eq!(api.cursors(), vec![30]);
}

#[tokio::test(start_paused = true)]
async fn pages_persist_in_memory_storage() {
    let store = stackquery::MemoryStorage::new();
    let on = || QueryClient::builder().storage(store.clone()).build();
    pages_survive_a_restart(on(), on()).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn pages_persist_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pages.db");
    let on = || {
        QueryClient::builder()
            .storage(stackquery::SqliteStorage::open(&path).unwrap())
            .build()
    };
    pages_survive_a_restart(on(), on()).await;
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use common::redis_server::RedisServer;
    use stackquery::storage::RedisStorage;

    async fn instance(server: &RedisServer) -> QueryClient {
        let storage = RedisStorage::builder(server.url())
            .namespace("infinite")
            .connect()
            .await
            .expect("storage");
        QueryClient::builder().storage(storage).build()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_persist_in_redis() {
        let Some(server) = RedisServer::start("pages_persist_in_redis") else {
            return;
        };
        let first = instance(&server).await;
        let second = instance(&server).await;
        pages_survive_a_restart(first, second).await;
    }
}
