//! Races and edge cases with a story. Each test names the interleaving it guards.

mod common;

use std::time::Duration;

use common::{settle, slow_counter};
use stackquery::{key, QueryClient};

/// `set_query_data` lands while a fetch that started earlier is in flight. The manual
/// write is newer than anything that fetch read, so when the fetch's older response
/// arrives it must not overwrite the manual data, and `data_updated_at` must not go back.
/// The fetch's own callers still get what they asked for.
#[tokio::test(start_paused = true)]
async fn set_query_data_during_a_fetch_wins_over_the_older_response() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], Duration::from_secs(10));
    let c = client.clone();
    let o = opts.clone();
    let t = tokio::spawn(async move { c.fetch_query(&o).await });
    settle().await;
    tokio::time::advance(Duration::from_secs(5)).await;
    client.set_query_data(key!["k"], 99_u32).unwrap();
    let manual_at = client
        .get_query_state::<u32>(&key!["k"])
        .unwrap()
        .data_updated_at;
    assert!(client
        .get_query_state::<u32>(&key!["k"])
        .unwrap()
        .is_fetching());
    assert_eq!(*t.await.unwrap().unwrap(), 1);
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert_eq!(s.data.as_deref(), Some(&99));
    assert!(s.data_updated_at >= manual_at);
    assert!(!s.is_fetching());
}

/// Two callers of one key use different stale times. The entry remembers the last
/// caller's settings for filters, but each call decides freshness with its own options.
#[tokio::test(start_paused = true)]
async fn a_later_caller_with_a_longer_stale_time_does_not_change_an_earlier_decision() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], Duration::from_secs(1));
    let short = opts.clone().stale_time(Duration::from_secs(2));
    let long = opts.stale_time(Duration::from_secs(100));
    client.fetch_query(&long).await.unwrap();
    tokio::time::advance(Duration::from_secs(3)).await;
    client.fetch_query(&long).await.unwrap();
    client.fetch_query(&short).await.unwrap();
    settle().await;
    assert_eq!(calls.get(), 2, "stale for the short caller only");
}
