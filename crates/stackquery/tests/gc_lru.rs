//! Bounded memory: CLOCK eviction under `max_queries`, and gc of unused entries.

mod common;

use std::time::Duration;

use common::{settle, slow_counter};
use stackquery::{key, QueryClient};

const SEC: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn the_least_recently_used_entry_is_evicted_first() {
    let client = QueryClient::builder().max_queries(3).build();
    for k in ["a", "b", "c"] {
        client.set_query_data(key![k], 1_u32).unwrap();
    }
    assert!(client.get_query_data::<u32>(&key!["a"]).is_some()); // a is used again
    client.set_query_data(key!["d"], 1_u32).unwrap();
    assert_eq!(client.stats().entries, 3);
    assert!(
        client.get_query_data::<u32>(&key!["b"]).is_none(),
        "b was the least recently used"
    );
    for k in ["a", "c", "d"] {
        assert!(client.get_query_data::<u32>(&key![k]).is_some(), "{k} kept");
    }
    assert_eq!(client.stats().evictions, 1);
}

#[tokio::test(start_paused = true)]
async fn entries_with_a_fetch_in_flight_are_never_evicted() {
    let client = QueryClient::builder().max_queries(2).build();
    let (a, _) = slow_counter(key!["a"], SEC);
    let (b, _) = slow_counter(key!["b"], SEC);
    let ta = tokio::spawn({
        let c = client.clone();
        async move { c.fetch_query(&a).await }
    });
    let tb = tokio::spawn({
        let c = client.clone();
        async move { c.fetch_query(&b).await }
    });
    settle().await;
    client.set_query_data(key!["c"], 1_u32).unwrap();
    // Both pinned: the bound is exceeded rather than losing a fetch.
    assert_eq!(client.is_fetching(stackquery::QueryFilter::all()), 2);
    assert_eq!(client.stats().entries, 3);
    assert_eq!(*ta.await.unwrap().unwrap(), 1);
    assert_eq!(*tb.await.unwrap().unwrap(), 1);
    // Once they settle the cache trims back to its bound.
    assert_eq!(client.stats().entries, 2);
}

#[tokio::test(start_paused = true)]
async fn max_queries_zero_keeps_nothing_but_still_deduplicates() {
    let client = QueryClient::builder().max_queries(0).build();
    let (opts, calls) = slow_counter(key!["k"], SEC);
    let results = futures::future::join_all((0..10).map(|_| client.fetch_query(&opts))).await;
    assert!(results.iter().all(|r| matches!(r.as_deref(), Ok(&1))));
    assert_eq!(calls.get(), 1);
    assert_eq!(client.stats().entries, 0);
    assert!(client.get_query_data::<u32>(&key!["k"]).is_none());
}

#[tokio::test(start_paused = true)]
async fn unused_entries_are_collected_after_gc_time() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    client
        .fetch_query(&opts.gc_time(Duration::from_secs(10)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(client.get_query_data::<u32>(&key!["k"]).is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(client.get_query_data::<u32>(&key!["k"]).is_none());
    assert_eq!(client.stats().gc_collections, 1);
}

#[tokio::test(start_paused = true)]
async fn the_gc_timer_is_cancelled_while_the_entry_is_used_again() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], Duration::from_secs(5));
    let opts = opts.gc_time(Duration::from_secs(10));
    client.fetch_query(&opts).await.unwrap(); // settles at t=5, gc due at t=15
    tokio::time::sleep(Duration::from_secs(8)).await; // t=13: a refetch runs until t=18
    let c = client.clone();
    let o = opts.clone();
    let t = tokio::spawn(async move { c.refetch_query(&o).await });
    tokio::time::sleep(Duration::from_secs(4)).await; // t=17: past the first deadline
    assert!(client
        .get_query_state::<u32>(&key!["k"])
        .is_some_and(|s| s.is_fetching()));
    assert_eq!(*t.await.unwrap().unwrap(), 2); // t=18: re-armed, due at t=28
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(client.get_query_data::<u32>(&key!["k"]).is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(client.get_query_data::<u32>(&key!["k"]).is_none());
}

/// Regression guard: a gc timer armed for an entry that was then removed must never
/// delete the key's newer entry, even though both share a key.
#[tokio::test(start_paused = true)]
async fn a_timer_armed_for_a_removed_entry_never_deletes_the_newer_one() {
    let client = QueryClient::builder()
        .gc_time(Duration::from_secs(10))
        .build();
    client.set_query_data(key!["k"], 1_u32).unwrap(); // old entry: due at t=10
    tokio::time::sleep(Duration::from_secs(5)).await;
    client.remove_queries(key!["k"]);
    client.set_query_data(key!["k"], 2_u32).unwrap(); // new entry: due at t=15
    tokio::time::sleep(Duration::from_secs(7)).await; // t=12: the old timer has fired
    assert_eq!(
        client.get_query_data::<u32>(&key!["k"]).as_deref(),
        Some(&2)
    );
    tokio::time::sleep(Duration::from_secs(4)).await; // t=16
    assert!(client.get_query_data::<u32>(&key!["k"]).is_none());
}

#[tokio::test(start_paused = true)]
async fn many_entries_cost_no_task_or_timer_each() {
    let client = QueryClient::builder()
        .gc_time(Duration::from_secs(60))
        .build();
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    for i in 0..100_000_u64 {
        client.set_query_data(key!["n", i], i).unwrap();
    }
    settle().await;
    let tasks_after = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert!(
        tasks_after - tasks_before <= 1,
        "only the one gc task: {tasks_before} -> {tasks_after}"
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    settle().await;
    assert_eq!(client.stats().entries, 0);
    assert_eq!(client.stats().gc_collections, 100_000);
}

#[tokio::test(start_paused = true)]
async fn gc_time_max_means_never_collected() {
    let client = QueryClient::builder().gc_time(Duration::MAX).build();
    client.set_query_data(key!["k"], 1_u32).unwrap();
    tokio::time::sleep(Duration::from_secs(86_400 * 365)).await;
    assert!(client.get_query_data::<u32>(&key!["k"]).is_some());
}
