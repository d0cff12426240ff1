//! Filters and bulk operations: invalidate, refetch, cancel, remove, reset, is_fetching, clear.

mod common;

use std::time::Duration;

use common::{scripted, settle, slow_counter};
use stackquery::{key, FetchStatus, QueryClient, QueryError, QueryFilter, QueryStatus};

const SEC: Duration = Duration::from_secs(1);

fn seed(client: &QueryClient) {
    for k in [
        key!["user", 1],
        key!["user", 2],
        key!["user", 1, "posts"],
        key!["users"],
        key!["team", 1],
    ] {
        client.set_query_data(k, 0_u32).unwrap();
    }
}

fn invalidated(client: &QueryClient) -> Vec<String> {
    let mut out: Vec<String> = [
        key!["user", 1],
        key!["user", 2],
        key!["user", 1, "posts"],
        key!["users"],
        key!["team", 1],
    ]
    .into_iter()
    .filter(|k| {
        client
            .get_query_state::<u32>(k)
            .is_some_and(|s| s.is_invalidated)
    })
    .map(|k| k.to_string())
    .collect();
    out.sort();
    out
}

#[tokio::test(start_paused = true)]
async fn prefix_invalidation_marks_stale_and_keeps_data() {
    let client = QueryClient::new();
    seed(&client);
    assert_eq!(client.invalidate_queries(key!["user"]).await, 3);
    assert_eq!(
        invalidated(&client),
        vec![r#"["user",1,"posts"]"#, r#"["user",1]"#, r#"["user",2]"#]
    );
    let s = client.get_query_state::<u32>(&key!["user", 1]).unwrap();
    assert!(s.is_stale() && s.has_data());
    assert_eq!(*client.get_query_data::<u32>(&key!["user", 1]).unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn exact_all_and_predicate_filters() {
    let client = QueryClient::new();
    seed(&client);
    assert_eq!(
        client
            .invalidate_queries(QueryFilter::exact(key!["user", 1]))
            .await,
        1
    );
    assert_eq!(invalidated(&client), vec![r#"["user",1]"#]);
    assert_eq!(
        client
            .invalidate_queries(QueryFilter::all().predicate(|k| k.len() == 3))
            .await,
        1
    );
    assert_eq!(client.invalidate_queries(QueryFilter::all()).await, 5);
    assert_eq!(invalidated(&client).len(), 5);
    // A predicate that panics excludes its entries instead of crashing.
    assert_eq!(
        client.remove_queries(QueryFilter::all().predicate(|_| panic!("oops"))),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn stale_and_active_narrowing() {
    let client = QueryClient::new();
    seed(&client);
    let (opts, _) = slow_counter(key!["fresh"], SEC);
    client
        .fetch_query(&opts.stale_time(Duration::from_secs(60)))
        .await
        .unwrap();
    // Manual writes are stale at once under the default stale time of 0.
    assert_eq!(client.remove_queries(QueryFilter::all().stale(false)), 1);
    assert!(client.get_query_data::<u32>(&key!["fresh"]).is_none());
    assert_eq!(client.is_fetching(QueryFilter::all()), 0);
    assert_eq!(
        client.remove_queries(QueryFilter::from(key!["user"]).active(true)),
        0
    );
    assert_eq!(
        client.remove_queries(QueryFilter::from(key!["user"]).active(false)),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn invalidate_during_a_fetch_stores_the_older_result_as_stale() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], Duration::from_secs(10));
    let opts = opts.stale_time(Duration::from_secs(600));
    let c = client.clone();
    let o = opts.clone();
    let t = tokio::spawn(async move { c.fetch_query(&o).await });
    settle().await;
    tokio::time::advance(Duration::from_secs(5)).await;
    client.invalidate_queries(key!["k"]).await;
    assert_eq!(
        *t.await.unwrap().unwrap(),
        1,
        "its callers still get the result"
    );
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert!(s.has_data());
    assert!(
        s.is_invalidated,
        "a fetch begun before the invalidation is not fresh"
    );
    // So the next call serves it and refreshes in the background.
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 1);
    settle().await;
    assert_eq!(calls.get(), 2);
    tokio::time::advance(Duration::from_secs(10)).await;
    settle().await;
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert!(!s.is_invalidated && !s.is_stale());
    assert_eq!(*s.data.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn refetch_queries_runs_known_fetch_functions_and_skips_manual_entries() {
    let client = QueryClient::new();
    let (a, a_calls) = slow_counter(key!["q", "a"], SEC);
    let (b, b_calls) = slow_counter(key!["q", "b"], SEC);
    client.fetch_query(&a).await.unwrap();
    client.fetch_query(&b).await.unwrap();
    client.set_query_data(key!["q", "manual"], 5_u32).unwrap();
    assert_eq!(client.refetch_queries(key!["q"]).await, 2);
    assert_eq!((a_calls.get(), b_calls.get()), (2, 2));
    assert_eq!(*client.get_query_data::<u32>(&key!["q", "a"]).unwrap(), 2);
    assert_eq!(
        *client.get_query_data::<u32>(&key!["q", "manual"]).unwrap(),
        5
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_aborts_the_fetch_and_reverts_the_entry() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], Duration::from_secs(10));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (c, o) = (client.clone(), opts.clone());
            tokio::spawn(async move { c.fetch_query(&o).await })
        })
        .collect();
    settle().await;
    assert_eq!(client.is_fetching(key!["k"]), 1);
    assert_eq!(client.cancel_queries(key!["k"]).await, 1);
    for w in waiters {
        assert!(matches!(w.await.unwrap(), Err(QueryError::Cancelled)));
    }
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert_eq!(
        s.status,
        QueryStatus::Idle,
        "back to the state before the fetch"
    );
    assert_eq!(s.fetch_status, FetchStatus::Idle);
    assert_eq!(client.is_fetching(QueryFilter::all()), 0);
    // The aborted fetch never completes into the entry, and a new fetch works.
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 2);
    assert_eq!(calls.get(), 2);
}

/// Sets its flag when dropped: what a fetch holds (a connection, a lock…).
struct DropFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        // A little late on purpose: the flag must be set before `cancel_queries` returns,
        // not merely before the next yield.
        std::thread::sleep(Duration::from_millis(20));
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `cancel_queries(..).await` returns once the cancelled fetches have stopped: what their
/// fetch functions held has been dropped (here on a multi-threaded runtime, where the
/// aborted task is dropped on another worker thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_waits_until_the_fetch_has_let_go() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let client = QueryClient::new();
    for round in 0..20 {
        let dropped = Arc::new(AtomicBool::new(false));
        let started = Arc::new(tokio::sync::Notify::new());
        let opts = {
            let (dropped, started) = (dropped.clone(), started.clone());
            stackquery::QueryOptions::new(key!["held", round], move || {
                let guard = DropFlag(dropped.clone());
                let started = started.clone();
                async move {
                    let _guard = guard;
                    started.notify_one();
                    std::future::pending::<()>().await;
                    Ok::<u32, String>(1)
                }
            })
        };
        let c = client.clone();
        let waiter = tokio::spawn(async move { c.fetch_query(&opts).await });
        started.notified().await;
        assert!(!dropped.load(Ordering::SeqCst));
        assert_eq!(client.cancel_queries(key!["held", round]).await, 1);
        assert!(
            dropped.load(Ordering::SeqCst),
            "round {round}: the fetch function's future is dropped when cancel returns"
        );
        assert!(waiter.await.unwrap().unwrap_err().is_cancelled());
    }
    // Nothing in flight: nothing to wait for.
    assert_eq!(client.cancel_queries(QueryFilter::all()).await, 0);
}

/// A fetch function that cancels its own query does not wait for itself: its task is
/// dropped at that very `.await`.
#[tokio::test(start_paused = true)]
async fn a_fetch_that_cancels_itself_does_not_hang() {
    let client = QueryClient::new();
    let c = client.clone();
    let opts = stackquery::QueryOptions::new(key!["self"], move || {
        let c = c.clone();
        async move {
            c.cancel_queries(key!["self"]).await;
            Ok::<u32, String>(1)
        }
    });
    let result = tokio::time::timeout(SEC, client.fetch_query(&opts)).await;
    assert!(result.expect("no hang").unwrap_err().is_cancelled());
    assert_eq!(client.is_fetching(QueryFilter::all()), 0);
}

#[tokio::test(start_paused = true)]
async fn cancel_keeps_previous_data() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    client.fetch_query(&opts).await.unwrap();
    let before = client.get_query_state::<u32>(&key!["k"]).unwrap();
    let c = client.clone();
    let o = opts.clone();
    let t = tokio::spawn(async move { c.refetch_query(&o).await });
    settle().await;
    client.cancel_queries(QueryFilter::all()).await;
    assert!(t.await.unwrap().unwrap_err().is_cancelled());
    let after = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert_eq!(after.status, QueryStatus::Success);
    assert_eq!(after.data, before.data);
    assert_eq!(after.data_updated_at, before.data_updated_at);
}

#[tokio::test(start_paused = true)]
async fn remove_and_reset() {
    let client = QueryClient::new();
    seed(&client);
    assert_eq!(client.remove_queries(key!["user", 1]), 2);
    assert!(client.get_query_data::<u32>(&key!["user", 1]).is_none());
    assert!(client.get_query_data::<u32>(&key!["user", 2]).is_some());
    assert_eq!(client.reset_queries(key!["team"]), 1);
    let s = client.get_query_state::<u32>(&key!["team", 1]).unwrap();
    assert_eq!(s.status, QueryStatus::Idle);
    assert!(s.data.is_none() && s.data_updated_at.is_none());
    client.clear();
    assert_eq!(client.stats().entries, 0);
    assert!(client.get_query_data::<u32>(&key!["users"]).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_removed_entry_in_flight_still_answers_its_callers_but_writes_nothing() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let c = client.clone();
    let o = opts.clone();
    let t = tokio::spawn(async move { c.fetch_query(&o).await });
    settle().await;
    assert_eq!(client.remove_queries(key!["k"]), 1);
    assert_eq!(*t.await.unwrap().unwrap(), 1);
    assert!(client.get_query_state::<u32>(&key!["k"]).is_none());
}

#[tokio::test(start_paused = true)]
async fn reset_during_a_fetch_keeps_the_result_out_of_the_cache() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let c = client.clone();
    let o = opts.clone();
    let t = tokio::spawn(async move { c.fetch_query(&o).await });
    settle().await;
    client.reset_queries(key!["k"]);
    assert_eq!(*t.await.unwrap().unwrap(), 1);
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert_eq!(s.status, QueryStatus::Idle);
    assert!(s.data.is_none());
}

#[tokio::test(start_paused = true)]
async fn errors_keep_previous_data() {
    let client = QueryClient::new();
    let (opts, _) = scripted(key!["k"], |n| async move {
        if n == 1 {
            Ok(1_u32)
        } else {
            Err("later failure".to_string())
        }
    });
    let opts = opts.retry(0);
    client.fetch_query(&opts).await.unwrap();
    client.refetch_query(&opts).await.unwrap_err();
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert_eq!(s.status, QueryStatus::Error);
    assert_eq!(s.data.as_deref(), Some(&1));
    assert!(s.error.is_some() && s.error_updated_at.is_some());
}

#[tokio::test(start_paused = true)]
async fn query_keys_lists_the_matches_sorted_and_query_count_counts_entries() {
    let client = QueryClient::new();
    assert_eq!(client.query_count(), 0);
    seed(&client);
    assert_eq!(client.query_count(), 5);
    assert_eq!(
        client.query_keys(key!["user"]),
        vec![key!["user", 1], key!["user", 1, "posts"], key!["user", 2]],
        "whole parts: not [\"users\"]"
    );
    assert_eq!(
        client.query_keys(QueryFilter::exact(key!["user", 1])),
        vec![key!["user", 1]]
    );
    assert_eq!(client.query_keys(QueryFilter::all()).len(), 5);
    assert!(client.query_keys(key!["nobody"]).is_empty());
    client.remove_queries(key!["user"]);
    assert_eq!(client.query_count(), 2);
    assert_eq!(
        client.query_keys(QueryFilter::all()),
        vec![key!["team", 1], key!["users"]]
    );
}
