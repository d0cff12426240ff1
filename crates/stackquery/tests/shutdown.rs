//! Graceful shutdown: what a client still owes its second tier is written before it goes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use stackquery::storage::{async_trait, MemoryStorage, Storage, StorageError};
use stackquery::{key, QueryClient};

/// A store that takes 10 ms per write (a remote store under load).
#[derive(Clone, Default)]
struct Sluggish {
    inner: MemoryStorage,
    writes: Arc<Mutex<usize>>,
}

#[async_trait]
impl Storage for Sluggish {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key).await
    }
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        *self.writes.lock() += 1;
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
}

/// The story: writes still queued when the last handle was dropped were lost (586 of 2,000
/// keys in one run) unless the user knew to call `flush_storage`. `shutdown(limit)` now
/// waits, within a bound, until everything owed has landed.
#[tokio::test(start_paused = true)]
async fn shutdown_writes_everything_still_queued() {
    let store = Sluggish::default();
    let client = QueryClient::builder()
        .storage(store.clone())
        .persist_prefix::<u32>(key!["k"])
        .build();
    for i in 0..2_000_u32 {
        client.set_query_data(key!["k", i], i).unwrap();
    }
    assert!(*store.writes.lock() < 2_000, "still queued");
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
    let store = Sluggish::default();
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
