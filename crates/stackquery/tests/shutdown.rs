//! Graceful shutdown: what a client still owes its second tier is written before it goes.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::throttled::Throttled;
use stackquery::storage::Storage;
use stackquery::{key, QueryClient};

/// The story: writes still queued when the last handle was dropped were lost (586 of 2,000
/// keys in one run) unless the user knew to call `flush_storage`. `shutdown(limit)` now
/// waits, within a bound, until everything owed has landed.
#[tokio::test(start_paused = true)]
async fn shutdown_writes_everything_still_queued() {
    // A store that takes 10 ms per write (a remote store under load).
    let store = Throttled::default().write_delay(Duration::from_millis(10));
    let client = QueryClient::builder()
        .storage(store.clone())
        .persist_prefix::<u32>(key!["k"])
        .build();
    for i in 0..2_000_u32 {
        client.set_query_data(key!["k", i], i).unwrap();
    }
    assert!(store.sets.load(Ordering::SeqCst) < 2_000, "still queued");
    assert!(client.shutdown(Duration::from_secs(60)).await);
    drop(client);
    for i in 0..2_000_u32 {
        let stored = store.inner.get(&key!["k", i].to_string()).await.unwrap();
        assert!(stored.is_some(), "key {i} reached the store");
    }
}

/// A limit too short to write everything is reported, not waited past.
#[tokio::test(start_paused = true)]
async fn shutdown_reports_when_its_limit_passes_first() {
    // A store that takes 10 ms per write (a remote store under load).
    let store = Throttled::default().write_delay(Duration::from_millis(10));
    let client = QueryClient::builder()
        .storage(store.clone())
        .persist_prefix::<u32>(key!["k"])
        .build();
    for i in 0..100_u32 {
        client.set_query_data(key!["k", i], i).unwrap();
    }
    let start = tokio::time::Instant::now();
    assert!(!client.shutdown(Duration::from_millis(50)).await);
    assert!(start.elapsed() < Duration::from_millis(200));
}
