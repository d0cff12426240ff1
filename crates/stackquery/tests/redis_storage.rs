//! `RedisStorage`, `RedisBus` and `RedisLeases` against a real `redis-server` that each
//! test starts on its own loopback port (see `common/redis_server.rs`; without the binary
//! the tests print `SKIPPED: …` and return).
//!
//! Real time, generous bounds. The figures (bus delay, recovery after SIGKILL + restart)
//! are printed; run with `--nocapture` to see them.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use stackquery::bus::{BusEvent, BusMessageKind, BusSubscription, RedisBus, RedisLeases};
use stackquery::storage::{
    children_prefix, testing, RedisStorage, Storage, StorageError, TimeoutStorage,
};
use stackquery::{key, KeyScope};

/// Starts this test's server, or returns from the test after a loud `SKIPPED` line.
macro_rules! server_or_skip {
    ($name:expr) => {
        match RedisServer::start($name) {
            Some(server) => server,
            None => return,
        }
    };
}

async fn store(server: &RedisServer, namespace: &str) -> RedisStorage {
    RedisStorage::builder(server.url())
        .namespace(namespace)
        .connect()
        .await
        .expect("connect to the test server")
}

async fn bus(server: &RedisServer, namespace: &str) -> RedisBus {
    RedisBus::builder(server.url())
        .namespace(namespace)
        .connect()
        .await
        .expect("connect the bus to the test server")
}

/// The next event, failing the test after `within`.
async fn next_event(sub: &mut BusSubscription, within: Duration) -> BusEvent {
    tokio::time::timeout(within, sub.recv())
        .await
        .expect("a bus event in time")
        .expect("the bus is alive")
}

/// What every backend must do (the shared suite `storage::testing`), then what only Redis
/// shows: a set without ttl removes the old expiry, and nothing is left behind (not even
/// the index).
#[tokio::test(flavor = "multi_thread")]
async fn conformance() {
    let server = server_or_skip!("conformance");
    let store = store(&server, "conf").await;
    testing::run_all(&store).await;

    store
        .set("ttl", b"x".to_vec(), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    store.set("ttl", b"y".to_vec(), None).await.unwrap();
    assert_eq!(
        server.raw_command("PTTL conf:cache:ttl").unwrap().trim(),
        ":-1",
        "a set without ttl removes the old expiry"
    );
    store.delete("ttl").await.unwrap();
    assert_eq!(server.raw_command("DBSIZE").unwrap().trim(), ":0");
}

/// The suite through the wrappers the client puts around a store: `Arc<dyn Storage>` and
/// a `TimeoutStorage`.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_through_arc_dyn_and_timeout() {
    let server = server_or_skip!("conformance_through_arc_dyn_and_timeout");
    let shared: Arc<dyn Storage> = Arc::new(store(&server, "conf-wrapped").await);
    testing::run_all(&TimeoutStorage::new(shared, Duration::from_secs(5))).await;
    assert_eq!(server.raw_command("DBSIZE").unwrap().trim(), ":0");
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_is_a_px_expiry_in_milliseconds() {
    let server = server_or_skip!("ttl_is_a_px_expiry_in_milliseconds");
    let store = store(&server, "ttl").await;
    store
        .set("k", b"v".to_vec(), Some(Duration::from_millis(500)))
        .await
        .unwrap();
    let set_at = Instant::now();
    let pttl: i64 = server
        .raw_command("PTTL ttl:cache:k")
        .unwrap()
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!((1..=500).contains(&pttl), "PTTL {pttl}");
    assert!(pttl > 300, "PTTL {pttl}: the expiry is in milliseconds");
    assert_eq!(store.get("k").await.unwrap(), Some(b"v".to_vec()));
    tokio::time::sleep(Duration::from_millis(600).saturating_sub(set_at.elapsed())).await;
    assert_eq!(store.get("k").await.unwrap(), None, "expired after 500 ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn namespaces_are_isolated() {
    let server = server_or_skip!("namespaces_are_isolated");
    let a = store(&server, "app-a").await;
    let b = store(&server, "app-b").await;
    assert_eq!((a.namespace(), b.namespace()), ("app-a", "app-b"));
    let k = key!["user", 1].to_string();
    a.set(&k, b"from a".to_vec(), None).await.unwrap();
    b.set(&k, b"from b".to_vec(), None).await.unwrap();
    assert_eq!(a.get(&k).await.unwrap(), Some(b"from a".to_vec()));
    assert_eq!(b.get(&k).await.unwrap(), Some(b"from b".to_vec()));
    assert_eq!(a.redis_key(&k), r#"app-a:cache:["user",1]"#);

    assert_eq!(a.delete_prefix("").await.unwrap(), 1);
    assert_eq!(a.get(&k).await.unwrap(), None);
    assert_eq!(b.get(&k).await.unwrap(), Some(b"from b".to_vec()));
    // A namespace with glob characters is matched as text too.
    let c = store(&server, "app-*").await;
    c.set(&k, b"from c".to_vec(), None).await.unwrap();
    assert_eq!(c.delete_prefix("").await.unwrap(), 1);
    assert_eq!(b.get(&k).await.unwrap(), Some(b"from b".to_vec()));
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_prefix_walks_many_batches() {
    let server = server_or_skip!("delete_prefix_walks_many_batches");
    let store = RedisStorage::builder(server.url())
        .namespace("batch")
        .batch_size(50)
        .connect()
        .await
        .unwrap();
    let store = Arc::new(store);
    let mut writes = Vec::new();
    for i in 0..2_000_u32 {
        let store = Arc::clone(&store);
        writes.push(tokio::spawn(async move {
            let k = if i % 4 == 0 {
                key!["other", i]
            } else {
                key!["item", i]
            };
            store.set(&k.to_string(), vec![1; 16], None).await.unwrap();
        }));
    }
    for w in writes {
        w.await.unwrap();
    }
    let started = Instant::now();
    let removed = store
        .delete_prefix(&children_prefix(&key!["item"]))
        .await
        .unwrap();
    eprintln!(
        "delete_prefix: {removed} of 2000 keys in {:?} (batches of 50)",
        started.elapsed()
    );
    assert_eq!(removed, 1_500);
    // The 500 others and the index.
    assert_eq!(server.raw_command("DBSIZE").unwrap().trim(), ":501");
    assert_eq!(
        server.raw_command("ZCARD batch:idx").unwrap().trim(),
        ":500"
    );
    assert_eq!(
        store.get(&key!["other", 4].to_string()).await.unwrap(),
        Some(vec![1; 16])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_failures_are_backend_errors_not_panics() {
    let server = server_or_skip!("connection_failures_are_backend_errors_not_panics");
    let port = server.port();
    drop(server); // nothing listens on the port any more
    let started = Instant::now();
    let err = RedisStorage::connect(format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Backend(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = RedisBus::connect_namespaced(format!("redis://127.0.0.1:{port}"), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Backend(_)), "{err:?}");
    let err = RedisStorage::connect("not a url").await.unwrap_err();
    assert!(matches!(err, StorageError::Backend(_)), "{err:?}");
}

/// The short forms of the store and the bus take the same arguments and land in the same
/// namespace (both exported from the crate root); the bus's old two-argument `connect`
/// still works, deprecated; a message published on one namespaced bus reaches the other.
#[tokio::test(flavor = "multi_thread")]
async fn store_and_bus_short_forms_agree() {
    let server = server_or_skip!("store_and_bus_short_forms_agree");
    let store = stackquery::RedisStorage::connect_namespaced(server.url(), "app")
        .await
        .unwrap();
    let bus = stackquery::RedisBus::connect_namespaced(server.url(), "app")
        .await
        .unwrap();
    assert_eq!(store.namespace(), "app");
    assert_eq!(bus.channel(), "app:bus");
    let default = RedisStorage::connect(server.url()).await.unwrap();
    assert_eq!(default.namespace(), "stackquery");
    #[allow(deprecated)]
    let old = RedisBus::connect(server.url(), "app").await.unwrap();
    assert_eq!(old.channel(), bus.channel());

    let mut heard = old.subscribe();
    bus.publish(BusMessageKind::Invalidate {
        scope: KeyScope::Prefix(key!["user"]),
    })
    .await
    .unwrap();
    match next_event(&mut heard, Duration::from_secs(5)).await {
        BusEvent::Message(msg) => assert_eq!(msg.origin, bus.instance_id()),
        other => panic!("{other:?}"),
    }
}

/// A server that accepts but does not answer (here: `CLIENT PAUSE`) costs each call the
/// timeout, as `StorageError::Timeout`, and the store works again once it answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_server_turns_calls_into_timeouts() {
    let server = server_or_skip!("a_hanging_server_turns_calls_into_timeouts");
    let timeout = Duration::from_millis(300);
    let store = RedisStorage::builder(server.url())
        .namespace("hang")
        .timeout(timeout)
        .connect()
        .await
        .unwrap();
    let leases = store.leases();
    let a = bus(&server, "hang").await;
    store.set("k", b"v".to_vec(), None).await.unwrap();

    assert!(server
        .raw_command("CLIENT PAUSE 3000 ALL")
        .unwrap()
        .starts_with("+OK"));
    let paused_at = Instant::now();
    let started = Instant::now();
    let err = store.get("k").await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, StorageError::Timeout(d) if d == timeout),
        "{err:?}"
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(400),
        "{took:?}"
    );
    assert!(store.set("k", vec![], None).await.unwrap_err().is_timeout());
    assert!(store.delete_prefix("").await.unwrap_err().is_timeout());
    assert!(leases.is_held("k").await.unwrap_err().is_timeout());
    assert!(a
        .publish(BusMessageKind::Set { key: key!["k"] })
        .await
        .unwrap_err()
        .is_timeout());
    assert!(
        paused_at.elapsed() < Duration::from_millis(3000),
        "still paused"
    );

    // Once the pause is over, the same connection answers again.
    tokio::time::sleep(Duration::from_millis(3100).saturating_sub(paused_at.elapsed())).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(value) = store.get("k").await {
            assert!(value.is_some());
            break;
        }
        assert!(Instant::now() < deadline, "the store never answered again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bus_carries_messages_between_instances() {
    let server = server_or_skip!("the_bus_carries_messages_between_instances");
    let a = bus(&server, "shop").await;
    let b = bus(&server, "shop").await;
    let elsewhere = bus(&server, "other-app").await;
    assert_ne!(a.instance_id(), b.instance_id());
    assert_eq!(a.channel(), "shop:bus");
    let mut at_b = b.subscribe();
    let mut elsewhere_sub = elsewhere.subscribe();

    // Every kind arrives intact, stamped with the sender's id.
    let kinds = [
        BusMessageKind::Invalidate {
            scope: KeyScope::Prefix(key!["user"]),
        },
        BusMessageKind::Set {
            key: key!["user", 1],
        },
        BusMessageKind::Remove {
            scope: KeyScope::Prefix(key!["cart"]),
        },
    ];
    for kind in kinds {
        a.publish(kind.clone()).await.unwrap();
        match next_event(&mut at_b, Duration::from_secs(5)).await {
            BusEvent::Message(msg) => {
                assert_eq!(msg.origin, a.instance_id());
                assert_eq!(msg.kind, kind);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // The delay from publish to receipt, one message at a time.
    let mut delays = Vec::new();
    for i in 0..200_i64 {
        let sent = Instant::now();
        a.publish(BusMessageKind::Set { key: key!["n", i] })
            .await
            .unwrap();
        match next_event(&mut at_b, Duration::from_secs(5)).await {
            BusEvent::Message(msg) => {
                assert_eq!(msg.kind, BusMessageKind::Set { key: key!["n", i] })
            }
            other => panic!("unexpected {other:?}"),
        }
        delays.push(sent.elapsed());
    }
    delays.sort();
    let p50 = delays[delays.len() / 2];
    let p99 = delays[delays.len() * 99 / 100];
    let max = delays[delays.len() - 1];
    eprintln!("bus delay (publish -> other instance's subscriber, 200 msgs): p50 {p50:?}, p99 {p99:?}, max {max:?}");
    assert!(p50 < Duration::from_millis(100), "p50 {p50:?}");

    // Another namespace heard none of it.
    assert!(quiet_for_200ms(&mut elsewhere_sub).await);
}

/// True when nothing arrives within 200 ms.
async fn quiet_for_200ms(sub: &mut BusSubscription) -> bool {
    tokio::time::timeout(Duration::from_millis(200), sub.recv())
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_ignores_its_own_messages() {
    let server = server_or_skip!("an_instance_ignores_its_own_messages");
    let a = bus(&server, "own").await;
    let b = bus(&server, "own").await;
    let mut at_a = a.subscribe();
    let mut at_b = b.subscribe();

    // `a` publishes first; the server delivers in order, so if `a` heard itself its first
    // event would be its own message rather than b's.
    a.publish(BusMessageKind::Invalidate {
        scope: KeyScope::Exact(key!["mine"]),
    })
    .await
    .unwrap();
    b.publish(BusMessageKind::Invalidate {
        scope: KeyScope::Exact(key!["theirs"]),
    })
    .await
    .unwrap();
    match next_event(&mut at_a, Duration::from_secs(5)).await {
        BusEvent::Message(msg) => {
            assert_eq!(msg.origin, b.instance_id());
            assert_eq!(
                msg.kind,
                BusMessageKind::Invalidate {
                    scope: KeyScope::Exact(key!["theirs"]),
                }
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    match next_event(&mut at_b, Duration::from_secs(5)).await {
        BusEvent::Message(msg) => assert_eq!(msg.origin, a.instance_id()),
        other => panic!("unexpected {other:?}"),
    }
    // Clones share the id: a clone's message is also "own".
    let a2 = a.clone();
    a2.publish(BusMessageKind::Set { key: key!["x"] })
        .await
        .unwrap();
    assert!(quiet_for_200ms(&mut at_a).await);
    // Foreign garbage on the channel is skipped, not fatal.
    assert!(server
        .raw_command("PUBLISH own:bus not-json")
        .unwrap()
        .starts_with(':'));
    b.publish(BusMessageKind::Set { key: key!["after"] })
        .await
        .unwrap();
    match next_event(&mut at_a, Duration::from_secs(5)).await {
        BusEvent::Message(msg) => assert_eq!(msg.kind, BusMessageKind::Set { key: key!["after"] }),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_bus_ends_its_subscriptions() {
    let server = server_or_skip!("dropping_the_bus_ends_its_subscriptions");
    let a = bus(&server, "drop").await;
    let mut sub = a.subscribe();
    let clients_before = connected_clients(&server);
    drop(a);
    let end = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("the subscription ends when the bus is dropped");
    assert_eq!(end, None);
    // Both of its connections are closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while connected_clients(&server) > clients_before - 2 {
        assert!(Instant::now() < deadline, "the bus's connections stay open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `connected_clients` from `INFO clients`, not counting the probe itself.
fn connected_clients(server: &RedisServer) -> i64 {
    let info = server.raw_command("INFO clients").unwrap();
    let count = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .expect("INFO clients has connected_clients")
        .trim()
        .parse::<i64>()
        .unwrap();
    count - 1
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_are_exclusive_released_by_their_holder_and_expire() {
    let server = server_or_skip!("leases_are_exclusive_released_by_their_holder_and_expire");
    let one = store(&server, "lease").await;
    let two = store(&server, "lease").await; // another instance: its own connection
    let (l1, l2) = (RedisLeases::new(&one), two.leases());
    let k = key!["report", 2024].to_string();

    let token = l1
        .try_acquire(&k, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert_eq!(token.key(), k);
    assert!(l2.is_held(&k).await.unwrap());
    assert_eq!(
        l2.try_acquire(&k, Duration::from_secs(10)).await.unwrap(),
        None
    );
    assert!(l1.renew(&token, Duration::from_secs(20)).await.unwrap());
    assert!(l1.release(&token).await.unwrap());
    assert!(!l2.is_held(&k).await.unwrap());
    assert!(!l1.release(&token).await.unwrap(), "released twice");

    // Expiry: a holder that dies blocks the others for at most the ttl.
    let dead = l1
        .try_acquire(&k, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        l2.try_acquire(&k, Duration::from_secs(10)).await.unwrap(),
        None
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(!l2.is_held(&k).await.unwrap());
    let taken_over = l2
        .try_acquire(&k, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the expired lease is free");
    assert_ne!(taken_over.token(), dead.token());
    // The late holder can neither remove nor extend the new holder's lease.
    assert!(!l1.release(&dead).await.unwrap());
    assert!(!l1.renew(&dead, Duration::from_secs(60)).await.unwrap());
    assert!(l1.is_held(&k).await.unwrap());
    assert!(l2.release(&taken_over).await.unwrap());

    // Many contenders at once: exactly one wins.
    let winners = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let leases = if i % 2 == 0 { l1.clone() } else { l2.clone() };
        let (k, winners) = (k.clone(), Arc::clone(&winners));
        tasks.push(tokio::spawn(async move {
            if leases
                .try_acquire(&k, Duration::from_secs(10))
                .await
                .unwrap()
                .is_some()
            {
                winners.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(winners.load(Ordering::SeqCst), 1);
    // Leases do not show up as cache entries.
    assert_eq!(one.delete_prefix("").await.unwrap(), 0);
    assert!(l1.is_held(&k).await.unwrap());
}

/// The fault test: SIGKILL the server in the middle of a load, then restart it.
///
/// While it is down every storage call and publish returns an error within the timeout
/// (none hangs, none panics) and the lease helper errors too; after the restart the store,
/// the bus (which emits `Reconnected`) and the leases work again by themselves within a
/// few seconds. The recovery times are printed.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_load_then_restart_recovers_by_itself() {
    let mut server = server_or_skip!("sigkill_mid_load_then_restart_recovers_by_itself");
    let timeout = Duration::from_millis(500);
    let store = Arc::new(
        RedisStorage::builder(server.url())
            .namespace("fault")
            .timeout(timeout)
            .connect()
            .await
            .unwrap(),
    );
    let leases = store.leases();
    // A store nobody uses during the outage: its first call afterwards finds the dead
    // connection, which starts the reconnection.
    let idle = RedisStorage::builder(server.url())
        .namespace("fault")
        .connect()
        .await
        .unwrap();
    let a = bus(&server, "fault").await;
    let b = bus(&server, "fault").await;
    let mut at_b = b.subscribe();

    // A load of 8 workers doing set + get in a loop, recording the slowest call.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..8_u32 {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        let (ok, failed, slowest_us) = (
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&slowest_us),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0_u64;
            while !stop.load(Ordering::SeqCst) {
                let k = format!("w{w}:{}", i % 64);
                let started = Instant::now();
                let result = match store.set(&k, vec![7; 64], None).await {
                    Ok(()) => store.get(&k).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                slowest_us.fetch_max(took, Ordering::SeqCst);
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        assert!(
                            matches!(e, StorageError::Backend(_) | StorageError::Timeout(_)),
                            "{e:?}"
                        );
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok_before = ok.load(Ordering::SeqCst);
    assert!(ok_before > 0, "the load runs");
    assert_eq!(failed.load(Ordering::SeqCst), 0);

    server.kill_hard();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Down: every kind of call fails within the timeout.
    for _ in 0..5 {
        let started = Instant::now();
        assert!(store.get("k").await.is_err());
        assert!(store.set("k", vec![1], None).await.is_err());
        assert!(store.delete_prefix("").await.is_err());
        assert!(a
            .publish(BusMessageKind::Set { key: key!["lost"] })
            .await
            .is_err());
        assert!(leases
            .try_acquire("k", Duration::from_secs(1))
            .await
            .is_err());
        assert!(started.elapsed() < 5 * (timeout + Duration::from_millis(200)));
    }
    assert!(failed.load(Ordering::SeqCst) > 0, "the load saw the outage");
    assert!(
        !a.is_connected() && !b.is_connected(),
        "the buses saw the outage"
    );
    let down_for = killed_at.elapsed();

    server.restart();
    let restarted_at = Instant::now();

    // Storage: the first successful set + get after the restart.
    let storage_back = loop {
        if store.set("probe", b"p".to_vec(), None).await.is_ok()
            && store.get("probe").await.ok().flatten() == Some(b"p".to_vec())
        {
            break restarted_at.elapsed();
        }
        assert!(
            restarted_at.elapsed() < Duration::from_secs(10),
            "storage never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The load recovers too.
    let ok_at_restart = ok.load(Ordering::SeqCst);
    let load_back = loop {
        if ok.load(Ordering::SeqCst) > ok_at_restart + 50 {
            break restarted_at.elapsed();
        }
        assert!(
            restarted_at.elapsed() < Duration::from_secs(10),
            "the load never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    // Bus: `b` says it reconnected, then hears `a` again.
    match next_event(&mut at_b, Duration::from_secs(10)).await {
        BusEvent::Reconnected => {}
        other => panic!("expected Reconnected first, got {other:?}"),
    }
    let resubscribed = restarted_at.elapsed();
    let bus_back = loop {
        if a.publish(BusMessageKind::Invalidate {
            scope: KeyScope::Prefix(key!["after-outage"]),
        })
        .await
        .is_ok()
        {
            if let Ok(Some(BusEvent::Message(msg))) =
                tokio::time::timeout(Duration::from_millis(200), at_b.recv()).await
            {
                assert_eq!(msg.origin, a.instance_id());
                break restarted_at.elapsed();
            }
        }
        assert!(
            restarted_at.elapsed() < Duration::from_secs(10),
            "the bus never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    while !(a.is_connected() && b.is_connected()) {
        assert!(
            restarted_at.elapsed() < Duration::from_secs(10),
            "a bus never resubscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((a.reconnect_count(), b.reconnect_count()), (1, 1));

    let mut idle_failures = 0;
    let idle_back = loop {
        match idle.get("probe").await {
            Ok(value) => {
                assert_eq!(value, Some(b"p".to_vec()));
                break restarted_at.elapsed();
            }
            Err(_) => idle_failures += 1,
        }
        assert_eq!(
            idle_failures, 0,
            "the first call after the outage retries on a new connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    let lease_back = loop {
        if let Ok(Some(token)) = leases.try_acquire("k", Duration::from_secs(1)).await {
            assert!(leases.release(&token).await.unwrap());
            break restarted_at.elapsed();
        }
        assert!(
            restarted_at.elapsed() < Duration::from_secs(10),
            "leases never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("no worker panicked");
    }
    let slowest = Duration::from_micros(slowest_us.load(Ordering::SeqCst));
    eprintln!(
        "outage: down {down_for:?}; calls ok {} / failed {}; slowest call {slowest:?} (timeout {timeout:?})",
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
    );
    eprintln!(
        "recovery after restart: storage {storage_back:?}, load {load_back:?}, \
         bus resubscribed {resubscribed:?}, bus delivering {bus_back:?}, leases {lease_back:?}, \
         idle store {idle_back:?} after {idle_failures} failed call(s)"
    );
    // A set + get pair: each call within the timeout, plus scheduling slack.
    assert!(
        slowest < 2 * timeout + Duration::from_millis(500),
        "slowest {slowest:?}"
    );
    for back in [storage_back, load_back, bus_back, lease_back, idle_back] {
        assert!(back < Duration::from_secs(5), "recovery took {back:?}");
    }
}

/// Issue 11, prefix removal on a shared Redis. The story: the cache shared its Redis
/// database with another application's 5 million keys. `delete_prefix` walked the whole
/// database with `SCAN MATCH`, so its cost followed the database, not the namespace: within
/// its deadline it got through part of the keyspace and gave up, 64 of the 100 removed
/// entries stayed, and a fresh instance hydrated them — data another instance had removed.
///
/// Now each namespace keeps an index of its keys (a sorted set read with `ZRANGEBYLEX`),
/// and a prefix delete costs the matching entries only. Here 200 000 keys of another
/// application share the database with 100 entries under `["user",…]`: the prefix delete,
/// given a deadline of a quarter of what one `SCAN` walk of the database takes (measured
/// here, old algorithm, dry run), removes all 100, and a fresh store reads none of them.
#[tokio::test(flavor = "multi_thread")]
async fn prefix_delete_on_a_shared_database_costs_the_namespace_not_the_database() {
    let server =
        server_or_skip!("prefix_delete_on_a_shared_database_costs_the_namespace_not_the_database");
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    const FOREIGN: u32 = 200_000;
    let filled = Instant::now();
    for chunk in 0..FOREIGN / 10_000 {
        let mut pipe = redis::pipe();
        for i in chunk * 10_000..(chunk + 1) * 10_000 {
            pipe.cmd("SET")
                .arg(format!("billing:invoice:{i}"))
                .arg("x")
                .ignore();
        }
        let () = pipe.query_async(&mut raw).await.unwrap();
    }
    eprintln!("{FOREIGN} foreign keys written in {:?}", filled.elapsed());

    let writer = store(&server, "shared").await;
    for i in 0..100_u32 {
        let k = key!["user", i].to_string();
        writer.set(&k, b"v".to_vec(), None).await.unwrap();
    }
    for i in 0..10_u32 {
        let k = key!["post", i].to_string();
        writer.set(&k, b"v".to_vec(), None).await.unwrap();
    }

    // What the old delete_prefix did before removing anything: walk the database.
    let pattern = r#"shared:cache:\["user",*"#;
    let scanned = Instant::now();
    let (mut cursor, mut found) = (0_u64, 0_usize);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(&mut raw)
            .await
            .unwrap();
        found += keys.len();
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let scan_walk = scanned.elapsed();
    assert_eq!(found, 100);

    // A deadline the SCAN walk could not meet; the index-based delete easily does.
    let budget = scan_walk / 4;
    let bounded = stackquery::storage::TimeoutStorage::new(writer.clone(), Duration::from_secs(1))
        .with_delete_prefix_timeout(budget);
    let started = Instant::now();
    let removed = bounded.delete_prefix(&children_prefix(&key!["user"])).await;
    let took = started.elapsed();
    eprintln!(
        "delete_prefix of 100 entries among {FOREIGN} foreign keys: {took:?} \
         (one SCAN walk of the database: {scan_walk:?}; deadline {budget:?})"
    );

    let fresh = store(&server, "shared").await;
    let mut survivors = 0;
    for i in 0..100_u32 {
        let k = key!["user", i].to_string();
        survivors += usize::from(fresh.get(&k).await.unwrap().is_some());
    }
    assert_eq!(
        survivors, 0,
        "{survivors} of 100 removed entries are still served to a fresh store \
         (delete_prefix: {removed:?} after {took:?})"
    );
    assert_eq!(removed.unwrap(), 100);
    for i in 0..10_u32 {
        let k = key!["post", i].to_string();
        assert!(
            fresh.get(&k).await.unwrap().is_some(),
            "{k} was not under the prefix"
        );
    }
    let dbsize: u64 = redis::cmd("DBSIZE").query_async(&mut raw).await.unwrap();
    assert_eq!(
        dbsize,
        u64::from(FOREIGN) + 10 + 1,
        "foreign keys, posts, the index"
    );
}

/// Entries that expire by their ttl leave their index member behind; the members are
/// pruned (by the background sweep of `set`s, by `prune_index`, and by a prefix delete
/// that meets them) and never make a prefix delete count an expired entry.
#[tokio::test(flavor = "multi_thread")]
async fn index_members_of_expired_entries_are_pruned_and_never_counted() {
    let server = server_or_skip!("index_members_of_expired_entries_are_pruned_and_never_counted");
    let store = store(&server, "prune").await;
    let zcard = || -> u64 {
        server
            .raw_command("ZCARD prune:idx")
            .unwrap()
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap()
    };
    for i in 0..50_u32 {
        let k = key!["gone", i].to_string();
        store
            .set(&k, b"v".to_vec(), Some(Duration::from_millis(50)))
            .await
            .unwrap();
    }
    store
        .set(r#"["gone","live"]"#, b"v".to_vec(), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Expired entries leave members (unless a background sweep step already met them).
    assert!(zcard() > 1, "{} members", zcard());
    // Only the live entry counts; the stale members go with it.
    assert_eq!(store.delete_prefix(r#"["gone","#).await.unwrap(), 1);
    assert_eq!(zcard(), 0);

    for i in 0..50_u32 {
        let k = key!["gone", i].to_string();
        store
            .set(&k, b"v".to_vec(), Some(Duration::from_millis(50)))
            .await
            .unwrap();
    }
    store.set("kept", b"v".to_vec(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stale = zcard() - 1;
    assert!(stale > 0);
    // A background sweep step may prune some at the same moment.
    assert!(store.prune_index().await.unwrap() <= stale);
    assert_eq!(zcard(), 1);
    store.delete("kept").await.unwrap();
    assert_eq!(zcard(), 0);

    // Churn of short-lived unique keys: the background sweep keeps the index near the
    // live entries instead of growing with every key ever written.
    for round in 0..20_u32 {
        for i in 0..100_u32 {
            let k = key!["tmp", round, i].to_string();
            store
                .set(&k, b"v".to_vec(), Some(Duration::from_millis(30)))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left = zcard();
    eprintln!("index after 2000 short-lived keys: {left} members");
    assert!(left < 1_000, "{left} members for ~0 live entries");
}
