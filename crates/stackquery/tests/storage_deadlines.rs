//! Who bounds a second-tier prefix delete (issue 11, "timeouts have one owner").
//!
//! The story: the client bounded every second-tier call by its 1 s `storage_timeout`,
//! `delete_prefix` included, while `RedisStorage` gave a whole prefix delete 5 s of its
//! own. The client's bound silently capped the backend's: a prefix delete that needed
//! 2 s was cut off after 1 s, half done, and the entries it had not reached yet were
//! served to every instance that hydrated them afterwards. Now the whole prefix delete has
//! one bound, owned by the `TimeoutStorage` the client wraps around the store
//! (`storage_delete_prefix_timeout`, 5 s by default); backends bound single round trips
//! only.
//!
//! Paused tokio clock: the durations are exact.

mod common;

use std::time::Duration;

use common::throttled::Throttled;
use stackquery::storage::{Storage, StorageError, TimeoutStorage};
use stackquery::{key, QueryClient};

/// A store whose prefix deletes take `prefix_delay` (many round trips on a big tier).
async fn filled(prefix_delay: Duration) -> Throttled {
    let store = Throttled::default().prefix_delay(prefix_delay);
    for i in 0..10 {
        let k = key!["user", i].to_string();
        store.inner.set(&k, b"v".to_vec(), None).await.unwrap();
    }
    store
}

/// A prefix delete that takes 2 s — longer than the client's 1 s per-call storage timeout,
/// shorter than the 5 s prefix-delete bound — completes: `remove_queries` leaves nothing
/// under the prefix in the tier and counts no storage error.
#[tokio::test(start_paused = true)]
async fn a_prefix_delete_longer_than_the_per_call_timeout_completes_within_its_own_bound() {
    let store = filled(Duration::from_secs(2)).await;
    let client = QueryClient::builder()
        .storage(store.clone())
        .storage_timeout(Duration::from_secs(1))
        .build();
    client.remove_queries(key!["user"]);
    client.flush_storage().await;
    assert_eq!(
        client.stats().l2_errors,
        0,
        "the prefix delete was cut short"
    );
    for i in 0..10 {
        let k = key!["user", i].to_string();
        assert_eq!(
            store.inner.get(&k).await.unwrap(),
            None,
            "{k} was served again"
        );
    }

    // The same through the wrapper alone.
    let store = filled(Duration::from_secs(2)).await;
    let bounded = TimeoutStorage::new(store.clone(), Duration::from_secs(1));
    assert_eq!(bounded.delete_prefix("[\"user\",").await.unwrap(), 10);
}

/// The prefix-delete bound is still a bound, and is configured in one place: past
/// `storage_delete_prefix_timeout` the delete is a timeout error (logged and counted).
#[tokio::test(start_paused = true)]
async fn a_prefix_delete_past_its_own_bound_is_a_counted_timeout() {
    let store = filled(Duration::from_secs(3)).await;
    let client = QueryClient::builder()
        .storage(store.clone())
        .storage_timeout(Duration::from_secs(10))
        .storage_delete_prefix_timeout(Duration::from_secs(2))
        .build();
    client.remove_queries(key!["user"]);
    client.flush_storage().await;
    assert_eq!(client.stats().l2_errors, 1);

    let bounded = TimeoutStorage::new(store, Duration::from_secs(10))
        .with_delete_prefix_timeout(Duration::from_secs(2));
    let err = bounded.delete_prefix("[\"user\",").await.unwrap_err();
    assert!(
        matches!(err, StorageError::Timeout(d) if d == Duration::from_secs(2)),
        "{err:?}"
    );
    // A bound of Duration::MAX is no bound, and does not panic.
    let unbounded = TimeoutStorage::new(filled(Duration::from_secs(3)).await, Duration::MAX)
        .with_delete_prefix_timeout(Duration::MAX);
    assert_eq!(unbounded.delete_prefix("[\"user\",").await.unwrap(), 10);
}
