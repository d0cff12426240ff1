//! fetch_query: caching, stale-while-revalidate, deduplication, bad input.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{scripted, settle, slow_counter};
use stackquery::{key, FetchStatus, QueryClient, QueryError, QueryOptions, QueryStatus};

const SEC: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn cold_fetch_then_fresh_hit_does_not_fetch() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["user", 1], SEC);
    let opts = opts.stale_time(Duration::from_secs(60));
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 1);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 1);
    assert_eq!(calls.get(), 1);
    let stats = client.stats();
    assert_eq!((stats.hits, stats.misses, stats.fetches), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn stale_data_is_returned_at_once_and_one_background_refetch_runs() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], SEC);
    let opts = opts.stale_time(Duration::from_secs(10));
    client.fetch_query(&opts).await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;

    let start = tokio::time::Instant::now();
    // Many callers on stale data: all get the old value immediately…
    for _ in 0..50 {
        assert_eq!(*client.fetch_query(&opts).await.unwrap(), 1);
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    // …and exactly one refetch is in flight.
    settle().await;
    assert_eq!(calls.get(), 2);
    assert_eq!(client.is_fetching(key!["k"]), 1);
    tokio::time::advance(SEC).await;
    settle().await;
    assert_eq!(*client.get_query_data::<u32>(&key!["k"]).unwrap(), 2);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_time_zero_set_on_query_beats_client_default() {
    let client = QueryClient::builder()
        .stale_time(Duration::from_secs(60))
        .build();
    let (opts, calls) = slow_counter(key!["k"], SEC);
    client.fetch_query(&opts).await.unwrap();
    client.fetch_query(&opts).await.unwrap();
    settle().await;
    assert_eq!(calls.get(), 1, "client default of 60 s keeps it fresh");
    let zero = opts.clone().stale_time(Duration::ZERO);
    client.fetch_query(&zero).await.unwrap();
    settle().await;
    assert_eq!(
        calls.get(),
        2,
        "explicit 0 on the query means stale at once"
    );
}

#[tokio::test(start_paused = true)]
async fn freshness_is_decided_with_the_calling_options() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], SEC);
    let long = opts.clone().stale_time(Duration::from_secs(100));
    let short = opts.stale_time(Duration::from_secs(5));
    client.fetch_query(&long).await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    client.fetch_query(&long).await.unwrap();
    settle().await;
    assert_eq!(calls.get(), 1, "10 s old is fresh for a 100 s stale time");
    client.fetch_query(&short).await.unwrap();
    settle().await;
    assert_eq!(
        calls.get(),
        2,
        "the shorter stale time makes its own decision"
    );
}

/// All 100,000 callers are polled before the paused clock lets the 20 ms fetch finish,
/// so every one of them is concurrent with the fetch.
#[tokio::test(start_paused = true)]
async fn hundred_thousand_concurrent_callers_share_one_fetch() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["cold"], Duration::from_millis(20));
    let results = futures::future::join_all((0..100_000).map(|_| client.fetch_query(&opts))).await;
    assert_eq!(calls.get(), 1);
    assert!(results.iter().all(|r| matches!(r.as_deref(), Ok(&1))));
    let stats = client.stats();
    assert_eq!(stats.fetches, 1);
    assert_eq!(stats.dedup_joins, 99_999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_on_two_threads_share_one_fetch() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["cold"], Duration::from_millis(50));
    let opts = opts.stale_time(Duration::MAX);
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let (c, o) = (client.clone(), opts.clone());
            tokio::spawn(async move { *c.fetch_query(&o).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_on_many_tasks_share_one_fetch_and_one_error() {
    let client = QueryClient::new();
    let (opts, calls) = scripted(key!["bad"], |_| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err::<u32, _>("upstream down".to_string())
    });
    let opts = opts.retry(0);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (c, o) = (client.clone(), opts.clone());
            tokio::spawn(async move { c.fetch_query(&o).await })
        })
        .collect();
    let mut messages = Vec::new();
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(matches!(err, QueryError::Fetch(_)));
        messages.push(err.report().to_string());
    }
    assert_eq!(calls.get(), 1);
    assert!(messages
        .iter()
        .all(|m| m == "the fetch function failed: upstream down"));
}

#[tokio::test(start_paused = true)]
async fn a_caller_dropping_its_future_does_not_cancel_the_fetch_for_others() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], SEC);
    let c2 = client.clone();
    let o2 = opts.clone();
    let first = tokio::spawn(async move { c2.fetch_query(&o2).await });
    settle().await;
    let waiter = tokio::spawn({
        let (c, o) = (client.clone(), opts.clone());
        async move { c.fetch_query(&o).await }
    });
    settle().await;
    first.abort();
    let value = waiter.await.unwrap().unwrap();
    assert_eq!(*value, 1);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn abandoned_callers_leave_no_waiter_and_never_stall_later_callers() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], Duration::from_secs(10));
    // Callers that give up after 1 s (timeouts around fetch_query).
    for _ in 0..5 {
        let r = tokio::time::timeout(SEC, client.fetch_query(&opts)).await;
        assert!(r.is_err());
    }
    // The fetch started by the first one is still running; a patient caller joins it.
    let v = client.fetch_query(&opts).await.unwrap();
    assert_eq!(*v, 1);
    assert_eq!(calls.get(), 1);
    // And the next fetch after that works normally.
    client.invalidate_queries(key!["k"]).await;
    let v = client.ensure_query_data(&opts).await.unwrap();
    assert_eq!(*v, 1, "ensure returns cached (stale) data without fetching");
}

#[tokio::test(start_paused = true)]
async fn none_is_data_like_any_other() {
    let client = QueryClient::new();
    let (opts, calls) = scripted(key!["maybe"], |_| async { Ok::<Option<u32>, String>(None) });
    let opts = opts.stale_time(Duration::from_secs(60));
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), None);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), None);
    assert_eq!(calls.get(), 1);
    assert!(client
        .get_query_state::<Option<u32>>(&key!["maybe"])
        .unwrap()
        .is_success());
}

#[tokio::test(start_paused = true)]
async fn one_key_with_two_types_is_a_type_mismatch_error() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    client.fetch_query(&opts).await.unwrap();
    let other = QueryOptions::new(key!["k"], || async { Ok::<_, String>("text".to_string()) });
    let err = client.fetch_query(&other).await.unwrap_err();
    match &err {
        QueryError::TypeMismatch(m) => {
            assert_eq!(m.key, r#"["k"]"#);
            assert!(m.stored.contains("u32"));
            assert!(m.requested.contains("String"));
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(matches!(
        client.set_query_data(key!["k"], "x".to_string()),
        Err(QueryError::TypeMismatch(_))
    ));
    assert!(client.get_query_data::<String>(&key!["k"]).is_none());
    assert_eq!(*client.get_query_data::<u32>(&key!["k"]).unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_fetch_is_an_error_and_the_entry_stays_usable() {
    let client = QueryClient::new();
    let (opts, calls) = scripted(key!["p"], |n| async move {
        if n == 1 {
            panic!("fetch exploded");
        }
        Ok::<_, String>(n)
    });
    let err = client.fetch_query(&opts).await.unwrap_err();
    assert!(matches!(&err, QueryError::Panicked(m) if m.contains("fetch exploded")));
    assert_eq!(calls.get(), 1, "a panic is not retried");
    let state = client.get_query_state::<u32>(&key!["p"]).unwrap();
    assert_eq!(state.status, QueryStatus::Error);
    assert_eq!(state.fetch_status, FetchStatus::Idle);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_function_that_panics_before_returning_a_future_is_contained() {
    let client = QueryClient::new();
    let opts: QueryOptions<u32> = QueryOptions::new(
        key!["p"],
        || -> futures::future::Ready<Result<u32, String>> { panic!("sync panic") },
    );
    assert!(matches!(
        client.fetch_query(&opts).await,
        Err(QueryError::Panicked(_))
    ));
}

#[test]
fn fetching_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let r = futures::executor::block_on(client.fetch_query(&opts));
    assert!(matches!(r, Err(QueryError::NoRuntime)));
    // Manual writes need no runtime.
    client.set_query_data(key!["k"], 5_u32).unwrap();
    assert_eq!(*client.get_query_data::<u32>(&key!["k"]).unwrap(), 5);
}

#[tokio::test(start_paused = true)]
async fn ensure_and_prefetch() {
    let client = QueryClient::new();
    let (bad, _) = scripted(key!["bad"], |_| async { Err::<u32, _>("nope".to_string()) });
    client.prefetch_query(&bad.retry(0)).await; // never errors
    let (opts, calls) = slow_counter(key!["k"], SEC);
    client.prefetch_query(&opts).await;
    assert_eq!(calls.get(), 1);
    assert_eq!(*client.ensure_query_data(&opts).await.unwrap(), 1);
    settle().await;
    assert_eq!(calls.get(), 1, "ensure serves stale data without a refresh");
}

#[tokio::test(start_paused = true)]
async fn fetch_queries_keeps_order_and_runs_concurrently() {
    let client = QueryClient::new();
    let opts: Vec<_> = (0..5)
        .map(|i| {
            QueryOptions::new(key!["n", i], move || async move {
                tokio::time::sleep(SEC).await;
                Ok::<_, String>(i * 10)
            })
        })
        .collect();
    let start = tokio::time::Instant::now();
    let out = client.fetch_queries(&opts).await;
    assert_eq!(start.elapsed(), SEC);
    let values: Vec<i32> = out.into_iter().map(|r| *r.unwrap()).collect();
    assert_eq!(values, vec![0, 10, 20, 30, 40]);
}

#[tokio::test(start_paused = true)]
async fn refetch_query_fetches_even_when_fresh() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], SEC);
    let opts = opts.stale_time(Duration::MAX);
    client.fetch_query(&opts).await.unwrap();
    assert_eq!(*client.refetch_query(&opts).await.unwrap(), 2);
    assert_eq!(calls.get(), 2);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 2);
    let data: Arc<u32> = client.get_query_data(&key!["k"]).unwrap();
    assert_eq!(*data, 2);
}

/// Where each call of a fetch function ran: the task before its first wait, and after.
type Seen = Arc<std::sync::Mutex<Vec<(Option<tokio::task::Id>, Option<tokio::task::Id>)>>>;

/// A fetch function that records its task before and after waiting `wait` (no wait when
/// zero), and returns how many times it was called.
fn task_recorder(key: stackquery::QueryKey, wait: Duration) -> (QueryOptions<u32>, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let opts = QueryOptions::new(key, move || {
        let s = s.clone();
        async move {
            let before = tokio::task::try_id();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let mut seen = s.lock().unwrap();
            seen.push((before, tokio::task::try_id()));
            Ok::<_, String>(seen.len() as u32)
        }
    });
    (opts, seen)
}

/// Issue 13 (fill as fast as a hand-written map): a fetch that is ready at once runs in
/// the caller's own task, with no task spawned for it, and the caller gets its value.
#[tokio::test(start_paused = true)]
async fn a_ready_fetch_runs_in_its_callers_own_task() {
    let client = QueryClient::new();
    let (opts, seen) = task_recorder(key!["ready"], Duration::ZERO);
    let caller = tokio::spawn({
        let client = client.clone();
        async move {
            let value = client.fetch_query(&opts).await.unwrap();
            (*value, tokio::task::id())
        }
    });
    let (value, caller_id) = caller.await.unwrap();
    assert_eq!(value, 1);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(Some(caller_id), Some(caller_id))]);
    assert_eq!(client.stats().fetches, 1);
}

/// The other half of the same design: a fetch that has to wait leaves its caller's task
/// at its first wait and finishes in a task of its own, so the caller that started it
/// can go away (here it is aborted while the fetch sleeps) and a caller that joined
/// still gets the value, from the one fetch.
#[tokio::test(start_paused = true)]
async fn a_slow_fetch_leaves_its_callers_task_at_its_first_wait() {
    let client = QueryClient::new();
    let (opts, seen) = task_recorder(key!["slow"], SEC);
    let starter = tokio::spawn({
        let (client, opts) = (client.clone(), opts.clone());
        async move { client.fetch_query(&opts).await }
    });
    settle().await;
    let starter_id = starter.id();
    let joiner = tokio::spawn({
        let (client, opts) = (client.clone(), opts.clone());
        async move { client.fetch_query(&opts).await }
    });
    settle().await;
    starter.abort();
    assert_eq!(*joiner.await.unwrap().unwrap(), 1);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one fetch");
    let (before, after) = seen[0];
    assert_eq!(before, Some(starter_id), "started in the caller's task");
    assert!(
        after.is_some() && after != before,
        "finished in a task of its own"
    );
}

/// A caller served stale data does not wait for the refresh behind it, so the refresh
/// never runs in the caller's task, even when it is ready at once.
#[tokio::test(start_paused = true)]
async fn a_background_refresh_never_runs_in_the_callers_task() {
    let client = QueryClient::new();
    let (opts, seen) = task_recorder(key!["swr"], Duration::ZERO);
    let opts = opts.stale_time(SEC);
    let caller = tokio::spawn({
        let client = client.clone();
        async move {
            client.fetch_query(&opts).await.unwrap();
            tokio::time::sleep(2 * SEC).await;
            let stale = client.fetch_query(&opts).await.unwrap();
            (*stale, tokio::task::id())
        }
    });
    let (stale, caller_id) = caller.await.unwrap();
    assert_eq!(stale, 1, "the stale value, at once");
    settle().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one refresh ran");
    assert_eq!(seen[0].0, Some(caller_id));
    assert!(seen[1].0.is_some() && seen[1].0 != Some(caller_id));
    assert_eq!(*client.get_query_data::<u32>(&key!["swr"]).unwrap(), 2);
}
