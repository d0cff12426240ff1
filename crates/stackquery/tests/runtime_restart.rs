//! Background work outlives the runtime it started on: a client in a `static` shared by
//! several `#[tokio::test]`s, or a sync wrapper that builds a runtime per call, keeps its
//! gc and its write-behind working on whichever runtime is current.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::throttled::Throttled;
use common::{on_a_fresh_runtime, settle};
use stackquery::storage::Storage;
use stackquery::{key, QueryClient, QueryOptions};

const SEC: Duration = Duration::from_secs(1);

/// The story: the gc task was spawned once, on the first runtime that used the client,
/// and died with it; every later gc timer went into a channel nobody read, so nothing was
/// ever collected again. Now the timers live in the client and the driver restarts on the
/// current runtime, firing what the dead one left armed too.
#[test]
fn gc_keeps_collecting_after_the_runtime_it_started_on_shut_down() {
    let client = QueryClient::builder().gc_time(SEC).build();
    on_a_fresh_runtime(async {
        client.set_query_data(key!["first"], 1_u32).unwrap();
        tokio::time::sleep(2 * SEC).await;
        settle().await;
        assert_eq!(client.get_query_data::<u32>(&key!["first"]), None);
        // Armed now, but this runtime dies before the timer fires.
        client.set_query_data(key!["orphaned"], 2_u32).unwrap();
    });
    on_a_fresh_runtime(async {
        client.set_query_data(key!["second"], 3_u32).unwrap();
        assert_eq!(
            client.get_query_data::<u32>(&key!["second"]),
            Some(Arc::new(3))
        );
        tokio::time::sleep(5 * SEC).await;
        settle().await;
        assert_eq!(client.get_query_data::<u32>(&key!["second"]), None);
        assert_eq!(
            client.get_query_data::<u32>(&key!["orphaned"]),
            None,
            "the timer armed on the dead runtime still fires"
        );
        assert_eq!(client.stats().entries, 0);
    });
}

/// The client in a `static`, used by one runtime after another (as `#[tokio::test]`s
/// sharing it do): each runtime's entries are collected while it runs.
#[test]
fn a_static_client_collects_garbage_under_every_runtime_that_uses_it() {
    static CLIENT: std::sync::OnceLock<QueryClient> = std::sync::OnceLock::new();
    let client = || CLIENT.get_or_init(|| QueryClient::builder().gc_time(SEC).build());
    for round in 0..3_u32 {
        on_a_fresh_runtime(async {
            let opts = QueryOptions::new(key!["round", round], move || async move {
                Ok::<_, String>(round)
            });
            assert_eq!(*client().fetch_query(&opts).await.unwrap(), round);
            tokio::time::sleep(3 * SEC).await;
            settle().await;
            assert_eq!(
                client().get_query_data::<u32>(&key!["round", round]),
                None,
                "round {round}: collected"
            );
        });
    }
}

/// The story: the write-behind task was started once and marked "started" for good. When
/// its runtime shut down, later writes were queued for a task that no longer existed
/// (`flush_storage` waited forever), and the write it was in the middle of was lost. Now
/// the worker restarts on the current runtime and picks up what the dead one held.
#[test]
fn write_behind_resumes_on_a_new_runtime_with_the_write_the_dead_one_held() {
    let storage = Throttled::default();
    let client = QueryClient::builder().storage(storage.clone()).build();
    let query = |k: &'static str, v: u32| {
        QueryOptions::new(key!["wb", k], move || async move { Ok::<_, String>(v) }).persist()
    };
    on_a_fresh_runtime(async {
        storage.stall.store(true, Ordering::SeqCst);
        client.fetch_query(&query("held", 1)).await.unwrap();
        settle().await;
        assert_eq!(
            storage.sets.load(Ordering::SeqCst),
            1,
            "the write is under way"
        );
    });
    storage.stall.store(false, Ordering::SeqCst);
    on_a_fresh_runtime(async {
        client.fetch_query(&query("later", 2)).await.unwrap();
        tokio::time::timeout(10 * SEC, client.flush_storage())
            .await
            .expect("flush_storage returns: a worker runs on this runtime");
        for k in ["held", "later"] {
            let stored = storage.inner.get(&key!["wb", k].to_string()).await.unwrap();
            assert!(stored.is_some(), "{k} reached the store");
        }
    });
}
