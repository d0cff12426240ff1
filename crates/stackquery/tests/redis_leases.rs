//! `RedisLeases::hold_while` against a real `redis-server` (see `common/redis_server.rs`;
//! without the binary the tests print `SKIPPED: …` and return). Real time, generous bounds.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use stackquery::bus::RedisLeases;
use stackquery::storage::RedisStorage;
use stackquery::StorageError;

macro_rules! server_or_skip {
    ($name:expr) => {
        match RedisServer::start($name) {
            Some(server) => server,
            None => return,
        }
    };
}

/// Two instances' leases: each its own connection, one namespace.
async fn two_instances(server: &RedisServer) -> (RedisLeases, RedisLeases) {
    let mut leases = Vec::new();
    for _ in 0..2 {
        let store = RedisStorage::builder(server.url())
            .namespace("leases")
            .connect()
            .await
            .expect("connect to the test server");
        leases.push(store.leases());
    }
    let second = leases.pop().unwrap();
    (leases.pop().unwrap(), second)
}

/// Issue 11, lease renewal. The story: the dedup lease was never renewed, so a fetch that
/// took 2.5 s under a 1 s lease lost it after 1 s; another instance took it over and ran
/// the same fetch, and then a third — three fetches on three instances for one key.
///
/// Now the holder runs its fetch inside `hold_while`, which renews the lease every third
/// of its ttl. Here the work takes three times the ttl; another instance tries to take
/// the lease every 20 ms all along and never gets it; once the work is over the renewals
/// stop, and the lease is free after a release, or by itself one ttl later.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_held_while_work_runs_three_times_its_ttl_is_never_taken_over() {
    let server =
        server_or_skip!("a_lease_held_while_work_runs_three_times_its_ttl_is_never_taken_over");
    let (holder, other) = two_instances(&server).await;
    let ttl = Duration::from_millis(400);
    let key = r#"["report",2024]"#;

    for release in [true, false] {
        let token = holder
            .try_acquire(key, ttl)
            .await
            .unwrap()
            .expect("a free lease");
        let working = Arc::new(AtomicBool::new(true));
        let (attempts, stolen) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let contender = {
            let (other, working) = (other.clone(), Arc::clone(&working));
            let (attempts, stolen) = (Arc::clone(&attempts), Arc::clone(&stolen));
            tokio::spawn(async move {
                while working.load(Ordering::SeqCst) {
                    match other.try_acquire(key, ttl).await {
                        Ok(Some(_)) => {
                            stolen.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(None) => {}
                        Err(error) => panic!("the server is up: {error}"),
                    }
                    attempts.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let started = Instant::now();
        let answer = holder
            .hold_while(&token, ttl, async {
                tokio::time::sleep(ttl * 3).await;
                42
            })
            .await;
        let ended = Instant::now();
        working.store(false, Ordering::SeqCst);
        contender.await.unwrap();
        assert_eq!(answer, 42);
        assert!(ended - started >= ttl * 3);
        assert!(
            attempts.load(Ordering::SeqCst) >= 20,
            "the contender kept trying"
        );
        assert_eq!(
            stolen.load(Ordering::SeqCst),
            0,
            "another instance took the lease while its holder was still working"
        );
        assert!(other.is_held(key).await.unwrap());

        if release {
            assert!(
                holder.release(&token).await.unwrap(),
                "still ours at the end"
            );
            let next = other.try_acquire(key, ttl).await.unwrap();
            assert!(next.is_some(), "released: free at once");
            assert!(other.release(&next.unwrap()).await.unwrap());
        } else {
            // Not released (its holder died right after): no renewal any more, so it
            // expires one ttl after the last renewal, at most.
            tokio::time::sleep(ttl + Duration::from_millis(200)).await;
            assert!(
                !other.is_held(key).await.unwrap(),
                "renewals went on after the work"
            );
            let next = other.try_acquire(key, ttl).await.unwrap();
            assert!(next.is_some(), "expired: free");
            assert!(
                !holder.renew(&token, ttl).await.unwrap(),
                "no longer the holder's"
            );
        }
    }
}

/// `hold_while` with a huge ttl neither panics nor overflows (renewals are as good as
/// never due), and returns as soon as the work ends.
#[tokio::test(flavor = "multi_thread")]
async fn hold_while_saturates_huge_ttls() {
    let server = server_or_skip!("hold_while_saturates_huge_ttls");
    let (holder, other) = two_instances(&server).await;
    for ttl in [Duration::MAX, Duration::from_secs(u64::MAX / 4)] {
        let token = holder.try_acquire("k", ttl).await.unwrap().unwrap();
        let started = Instant::now();
        let out = holder
            .hold_while(&token, ttl, async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                "done"
            })
            .await;
        assert_eq!(out, "done");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(other.try_acquire("k", ttl).await.unwrap(), None);
        assert!(holder.release(&token).await.unwrap());
    }
}

/// "Held by someone else" and "Redis unreachable" are told apart: `Ok(None)` against
/// `Err(_)` — a caller that waits on the first must not wait on the second.
#[tokio::test(flavor = "multi_thread")]
async fn try_acquire_tells_held_elsewhere_from_unreachable() {
    let mut server = server_or_skip!("try_acquire_tells_held_elsewhere_from_unreachable");
    let (holder, other) = two_instances(&server).await;
    let token = holder
        .try_acquire("k", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(token.is_some());
    assert_eq!(
        other
            .try_acquire("k", Duration::from_secs(10))
            .await
            .unwrap(),
        None,
        "held elsewhere"
    );
    server.kill_hard();
    let err = other
        .try_acquire("k", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::Backend(_) | StorageError::Timeout(_)),
        "{err:?}"
    );
}
