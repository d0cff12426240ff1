//! The backends that need no file: MemoryStorage, TimeoutStorage, the trait's defaults.

use std::sync::Arc;
use std::time::Duration;

use super::super::*;

#[tokio::test]
async fn memory_storage_conformance() {
    testing::run_all(&MemoryStorage::new()).await;
}

#[tokio::test]
async fn conformance_through_arc_dyn_and_timeout() {
    let shared: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    testing::run_all(&TimeoutStorage::new(shared, Duration::from_secs(5))).await;
}

// ---------------------------------------------------------------------------------------
// MemoryStorage: ttl on tokio's clock, counters, shared clones.
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn memory_ttl_is_kept_to_the_millisecond() {
    let store = MemoryStorage::new();
    store
        .set("k", b"v".to_vec(), Some(Duration::from_millis(500)))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(499)).await;
    assert_eq!(store.get("k").await.unwrap(), Some(b"v".to_vec()));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(store.get("k").await.unwrap(), None);
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn memory_zero_ttl_is_already_expired() {
    let store = MemoryStorage::new();
    store
        .set("k", b"v".to_vec(), Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(store.get("k").await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn memory_delete_prefix_counts_only_live_entries() {
    let store = MemoryStorage::new();
    store
        .set("p1", b"v".to_vec(), Some(Duration::from_millis(10)))
        .await
        .unwrap();
    store.set("p2", b"v".to_vec(), None).await.unwrap();
    store
        .set("p3", b"v".to_vec(), Some(Duration::from_secs(10)))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(20)).await;
    assert_eq!(store.keys(), ["p2", "p3"]);
    assert_eq!(store.delete_prefix("p").await.unwrap(), 2);
    assert_eq!(store.purge_expired(), 0, "the expired entry went too");
}

#[tokio::test(start_paused = true)]
async fn memory_purge_expired_drops_only_expired() {
    let store = MemoryStorage::new();
    store
        .set("old", b"v".to_vec(), Some(Duration::from_millis(5)))
        .await
        .unwrap();
    store.set("new", b"v".to_vec(), None).await.unwrap();
    tokio::time::advance(Duration::from_millis(5)).await;
    assert_eq!(store.purge_expired(), 1);
    assert_eq!(store.keys(), ["new"]);
}

#[tokio::test]
async fn memory_stats_count_calls_and_clones_share_state() {
    let store = MemoryStorage::new();
    let view = store.clone();
    store.set("a", b"1".to_vec(), None).await.unwrap();
    store.set("b", b"2".to_vec(), None).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get("zz").await.unwrap(), None);
    store.delete("a").await.unwrap();
    store.delete_prefix("b").await.unwrap();
    // Inspection does not count.
    assert_eq!(view.peek("b"), None);
    assert_eq!(view.len(), 0);
    assert_eq!(
        view.stats(),
        MemoryStorageStats {
            gets: 2,
            hits: 1,
            sets: 2,
            deletes: 1,
            prefix_deletes: 1,
        }
    );
}

// ---------------------------------------------------------------------------------------
// TimeoutStorage and the trait's defaults.
// ---------------------------------------------------------------------------------------

/// Never answers (a store whose server is gone).
struct HangingStorage;

#[async_trait]
impl Storage for HangingStorage {
    async fn get(&self, _key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        std::future::pending().await
    }
    async fn set(&self, _: &str, _: Vec<u8>, _: Option<Duration>) -> Result<(), StorageError> {
        std::future::pending().await
    }
    async fn delete(&self, _key: &str) -> Result<(), StorageError> {
        std::future::pending().await
    }
}

/// Fails every call.
struct FailingStorage;

#[async_trait]
impl Storage for FailingStorage {
    async fn get(&self, _key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Err(StorageError::backend("down"))
    }
    async fn set(&self, _: &str, _: Vec<u8>, _: Option<Duration>) -> Result<(), StorageError> {
        Err(StorageError::backend("down"))
    }
    async fn delete(&self, _key: &str) -> Result<(), StorageError> {
        Err(StorageError::backend("down"))
    }
}

#[tokio::test(start_paused = true)]
async fn timeout_turns_a_hanging_call_into_timeout_after_exactly_the_deadline() {
    let store = TimeoutStorage::new(HangingStorage, Duration::from_millis(250));
    let start = tokio::time::Instant::now();
    let err = store.get("k").await.unwrap_err();
    assert!(matches!(err, StorageError::Timeout(d) if d == Duration::from_millis(250)));
    assert!(err.is_timeout());
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert!(store.set("k", vec![], None).await.unwrap_err().is_timeout());
    assert!(store.delete("k").await.unwrap_err().is_timeout());
    // The default delete_prefix answers at once, so it is not a timeout.
    assert!(matches!(
        store.delete_prefix("k").await,
        Err(StorageError::Unsupported("delete_prefix"))
    ));
    assert_eq!(start.elapsed(), Duration::from_millis(750));
}

#[tokio::test(start_paused = true)]
async fn timeout_passes_errors_and_values_through() {
    let store = TimeoutStorage::new(FailingStorage, Duration::from_secs(1));
    let err = store.get("k").await.unwrap_err();
    assert!(matches!(&err, StorageError::Backend(e) if e.to_string() == "down"));
    // The backend's text is the source's, not repeated in the error's own message.
    assert_eq!(err.to_string(), "the storage backend failed");
    assert_eq!(
        crate::error::report(&err).to_string(),
        "the storage backend failed: down"
    );
    let start = tokio::time::Instant::now();
    let store = TimeoutStorage::new(MemoryStorage::new(), Duration::from_secs(1));
    store.set("k", b"v".to_vec(), None).await.unwrap();
    assert_eq!(store.inner().peek("k"), Some(b"v".to_vec()));
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[test]
fn storage_error_is_cloneable_and_keeps_its_source() {
    let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no access");
    let err = StorageError::backend(io);
    let copy = err.clone();
    let source = std::error::Error::source(&copy).unwrap();
    assert_eq!(source.to_string(), "no access");
    // The source is the backend's error itself, so it downcasts.
    assert!(source.downcast_ref::<std::io::Error>().is_some());
    match err {
        StorageError::Backend(inner) => {
            assert!(inner.downcast_ref::<std::io::Error>().is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(StorageError::Corrupt("x".into()).is_corrupt());
}
