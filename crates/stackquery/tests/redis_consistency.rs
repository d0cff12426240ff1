//! Many instances on one `redis-server`: no instance serves data that another instance has
//! replaced, invalidated or removed, as fresh — not during a race, not after an outage.
//! One named test per defect of issue 11; each tells its story.
//!
//! Real time with generous bounds (sockets). One instance is cut off from Redis with a TCP
//! proxy (`common::proxy`) while the others still reach it.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::redis_server::RedisServer;
use common::throttled::Throttled;
use serde::{Deserialize, Serialize};
use stackquery::bus::{RedisBus, RedisLeases};
use stackquery::storage::RedisStorage;
use stackquery::{key, QueryClient, QueryKey, QueryOptions};

macro_rules! server_or_skip {
    ($name:expr) => {
        match RedisServer::start($name) {
            Some(server) => server,
            None => return,
        }
    };
}

const HOUR: Duration = Duration::from_secs(3600);

struct Opts {
    url: String,
    ns: &'static str,
    slow: Option<Duration>,
    /// `(lease_ttl, max_wait)` for cluster dedup.
    dedup: Option<(Duration, Duration)>,
    rule: Option<QueryKey>,
}

impl Opts {
    fn new(url: String, ns: &'static str) -> Self {
        Opts {
            url,
            ns,
            slow: None,
            dedup: None,
            rule: None,
        }
    }
}

/// One instance: its own storage connection, bus and (optionally) leases.
async fn instance(o: Opts) -> QueryClient {
    let storage = RedisStorage::builder(o.url.clone())
        .namespace(o.ns)
        .connect()
        .await
        .expect("storage");
    let bus = RedisBus::builder(o.url.clone())
        .namespace(o.ns)
        .connect()
        .await
        .expect("bus");
    let mut b = QueryClient::builder().bus(bus);
    b = match o.slow {
        // A slow link to Redis: every write and delete waits `delay` first.
        Some(delay) => b.storage(
            Throttled::new(storage.clone())
                .write_delay(delay)
                .prefix_delay(delay),
        ),
        None => b.storage(storage.clone()),
    };
    if let Some((lease_ttl, max_wait)) = o.dedup {
        b = b.cluster_dedup(RedisLeases::new(&storage), lease_ttl, max_wait);
    }
    if let Some(prefix) = o.rule {
        b = b.persist_prefix::<String>(prefix);
    }
    let client = b.build();
    // Start the background work (it starts with the first use of the client).
    client.set_query_data(key!["__warmup"], 0_u8).unwrap();
    client
}

/// A persisted query whose upstream answers `<who>-v<n>`, with a call counter.
fn query(k: QueryKey, who: &'static str) -> (QueryOptions<String>, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let opts = QueryOptions::new(k, move || {
        let c = c.clone();
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, String>(format!("{who}-v{n}"))
        }
    })
    .persist()
    .stale_time(HOUR);
    (opts, calls)
}

async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < within,
            "timed out ({within:?}) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// Whether `client` would serve `old` for `k` as fresh data.
fn serves_as_fresh(client: &QueryClient, k: &QueryKey, old: &str) -> bool {
    client
        .get_query_state::<String>(k)
        .is_some_and(|s| s.data.as_deref().map(String::as_str) == Some(old) && !s.is_stale())
}

/// Defect 1, the story: an instance published `remove` on the bus before its own delete
/// had reached Redis. Another instance dropped the key on the message, read it again at
/// once, found the old stored copy (the delete had not landed) and served it as fresh for
/// its whole stale time. The delete is slow here (300 ms), so the old order fails every
/// time; now the message goes out only after the delete has landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_is_announced_only_after_it_reached_the_shared_tier() {
    let server = server_or_skip!("a_removal_is_announced_only_after_it_reached_the_shared_tier");
    let mut a_opts = Opts::new(server.url(), "d1");
    a_opts.slow = Some(Duration::from_millis(300));
    let a = instance(a_opts).await;
    let b = instance(Opts::new(server.url(), "d1")).await;
    let k = key!["d1", 1];
    let (qa, _) = query(k.clone(), "A");
    let (qb, calls_b) = query(k.clone(), "B");
    assert_eq!(*a.fetch_query(&qa).await.unwrap(), "A-v1");
    a.flush_storage().await;
    assert_eq!(
        *b.fetch_query(&qb).await.unwrap(),
        "A-v1",
        "B hydrates A's value"
    );
    assert_eq!(calls_b.load(Ordering::SeqCst), 0);

    a.remove_queries(k.clone());
    eventually("B hears of the removal", Duration::from_secs(5), || {
        b.get_query_data::<String>(&k).is_none()
    })
    .await;
    let got = b.fetch_query(&qb).await.unwrap();
    assert_eq!(
        *got, "B-v1",
        "B fetched upstream instead of reading the removed copy"
    );
}

/// Defect 2, the story: an instance cut off from Redis invalidated a key; its publish was
/// fire-and-forget and its flag write was never retried, so after it could reach Redis
/// again the other instance (which never disconnected) went on serving the old value as
/// fresh for its whole stale time. Now both are owed and replayed on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_made_while_cut_off_reaches_the_others_after_the_heal() {
    let server = server_or_skip!("an_invalidation_made_while_cut_off_reaches_the_others");
    let proxy = Proxy::start(server.port());
    let a = instance(Opts::new(proxy.url(), "d2")).await;
    let b = instance(Opts::new(server.url(), "d2")).await;
    let keys: Vec<QueryKey> = (0..8).map(|i| key!["d2", i]).collect();
    for k in &keys {
        let (qa, _) = query(k.clone(), "A");
        let (qb, _) = query(k.clone(), "B");
        a.fetch_query(&qa).await.unwrap();
        a.flush_storage().await;
        assert_eq!(*b.fetch_query(&qb).await.unwrap(), "A-v1");
    }

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.invalidate_queries(key!["d2"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for k in &keys {
        assert!(serves_as_fresh(&b, k, "A-v1"), "cut off: B cannot know yet");
    }
    proxy.heal();
    let healed = Instant::now();
    eventually(
        "B sees every invalidation made while A was cut off",
        Duration::from_secs(15),
        || keys.iter().all(|k| !serves_as_fresh(&b, k, "A-v1")),
    )
    .await;
    println!(
        "invalidations made while cut off reached B {:?} after the heal",
        healed.elapsed()
    );
    // And the shared tier holds the flag: a new instance does not take the value as fresh.
    let c = instance(Opts::new(server.url(), "d2")).await;
    assert!(
        a.shutdown(Duration::from_secs(15)).await,
        "A's owed writes landed"
    );
    for k in &keys {
        let (qc, _) = query(k.clone(), "C");
        let got = c.fetch_query(&qc).await.unwrap();
        let state = c.get_query_state::<String>(k).unwrap();
        assert!(
            *got != "A-v1" || state.is_invalidated,
            "{k}: C got {got} as fresh"
        );
    }
}

/// Defect 3 (invalidation), the story: an instance held a value it had read from Redis and
/// invalidated it while cut off. After the reconnect it reloaded from Redis with a rule that
/// accepted a stored copy with an equal timestamp — the very copy it had invalidated — and
/// served it as fresh again with no upstream call. A reload now never clears an
/// invalidation: only strictly newer, non-invalidated data is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_never_undoes_its_own_invalidation_after_reconnecting() {
    let server = server_or_skip!("an_instance_never_undoes_its_own_invalidation");
    let proxy = Proxy::start(server.port());
    let a = instance(Opts::new(proxy.url(), "d3")).await;
    let b = instance(Opts::new(server.url(), "d3")).await;
    let k = key!["d3", 1];
    let (qa, calls_a) = query(k.clone(), "A");
    let (qb, _) = query(k.clone(), "B");
    assert_eq!(*b.fetch_query(&qb).await.unwrap(), "B-v1");
    b.flush_storage().await;
    assert_eq!(
        *a.fetch_query(&qa).await.unwrap(),
        "B-v1",
        "A holds Redis's copy"
    );
    assert_eq!(calls_a.load(Ordering::SeqCst), 0);

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.invalidate_queries(k.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.heal();
    // Let A reconnect (bus and storage) and treat its memory as possibly stale.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A read starts the refresh (stale-while-revalidate); then look at what A holds.
    let _ = a.fetch_query(&qa).await.unwrap();
    eventually("A's refresh settles", Duration::from_secs(10), || {
        a.get_query_state::<String>(&k)
            .is_some_and(|s| !s.is_fetching())
    })
    .await;
    assert!(
        !serves_as_fresh(&a, &k, "B-v1"),
        "A serves the value it invalidated as fresh: {:?}",
        a.get_query_state::<String>(&k)
    );
}

/// Defect 3 (removal), the story: an instance removed a key while cut off from Redis; its
/// delete failed and was never retried, so after the reconnect its next read found the
/// removed value in Redis and served it with no upstream call. The delete is now owed,
/// retried, and until it lands a read of the key is a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_while_cut_off_is_not_read_back_from_the_shared_tier() {
    let server = server_or_skip!("a_key_removed_while_cut_off_is_not_read_back");
    let proxy = Proxy::start(server.port());
    let a = instance(Opts::new(proxy.url(), "d3r")).await;
    let b = instance(Opts::new(server.url(), "d3r")).await;
    let k = key!["d3r", 1];
    let (qa, calls_a) = query(k.clone(), "A");
    let (qb, _) = query(k.clone(), "B");
    assert_eq!(*b.fetch_query(&qb).await.unwrap(), "B-v1");
    b.flush_storage().await;
    assert_eq!(*a.fetch_query(&qa).await.unwrap(), "B-v1");

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.remove_queries(k.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.heal();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = a.fetch_query(&qa).await.unwrap();
    assert_eq!(*got, "A-v1", "fetched upstream, not the removed copy");
    assert_eq!(calls_a.load(Ordering::SeqCst), 1);
    // And B, told of the removal once A could reach Redis, fetches too.
    eventually("B hears of the removal", Duration::from_secs(10), || {
        b.get_query_data::<String>(&k).is_none()
    })
    .await;
    // B reads A's new upstream value from the shared tier, or fetches its own: never the
    // removed one.
    assert_ne!(*b.fetch_query(&qb).await.unwrap(), "B-v1");
}

/// Defect 4 (never written), the story: `set_query_data` on an instance that had never
/// read the key announced `Set` without writing anything; the other instance reloaded the
/// old stored value and served it as fresh. Now an unpersisted write deletes the stored
/// copy and announces an invalidation: the others refetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_write_on_a_key_never_read_here_does_not_make_others_reload_old_data() {
    let server = server_or_skip!("a_manual_write_on_a_key_never_read_here");
    let a = instance(Opts::new(server.url(), "d4")).await;
    let b = instance(Opts::new(server.url(), "d4")).await;
    let k = key!["d4", 1];
    let (qb, calls_b) = query(k.clone(), "B");
    assert_eq!(*b.fetch_query(&qb).await.unwrap(), "B-v1");
    b.flush_storage().await;

    a.set_query_data(k.clone(), "A-set".to_string()).unwrap();
    eventually(
        "B stops serving its old value as fresh",
        Duration::from_secs(10),
        || !serves_as_fresh(&b, &k, "B-v1"),
    )
    .await;
    // B's next reads converge on new data, never the old value as fresh.
    let _ = b.fetch_query(&qb).await.unwrap();
    eventually("B refetches", Duration::from_secs(10), || {
        calls_b.load(Ordering::SeqCst) == 2
    })
    .await;
    eventually("B holds the new value", Duration::from_secs(10), || {
        b.get_query_data::<String>(&k)
            .as_deref()
            .map(String::as_str)
            == Some("B-v2")
    })
    .await;
}

/// Defect 4 (failed write) and 5, the story: with Redis at maxmemory, `set_query_data`'s
/// write failed but was announced anyway; the other instance reloaded the old stored value
/// as fresh, and the old value stayed in Redis, so a restarted instance hydrated it as
/// fresh too. Now a failed write deletes the stored copy (a delete works at maxmemory) and
/// the others are told to invalidate, not to reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_at_maxmemory_leaves_no_instance_with_the_old_value_as_fresh() {
    let server = server_or_skip!("a_write_refused_at_maxmemory");
    let a = instance(Opts::new(server.url(), "d5")).await;
    let b = instance(Opts::new(server.url(), "d5")).await;
    let k = key!["d5", 1];
    let (qa, _) = query(k.clone(), "A");
    let (qb, _) = query(k.clone(), "B");
    assert_eq!(*a.fetch_query(&qa).await.unwrap(), "A-v1");
    a.flush_storage().await;
    assert_eq!(*b.fetch_query(&qb).await.unwrap(), "A-v1");

    let reply = server.raw_command("CONFIG SET maxmemory 1").unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");
    a.set_query_data(k.clone(), "A-set".to_string()).unwrap();
    a.flush_storage().await;
    eventually(
        "B stops serving the old value as fresh",
        Duration::from_secs(10),
        || !serves_as_fresh(&b, &k, "A-v1"),
    )
    .await;
    let reply = server.raw_command("CONFIG SET maxmemory 0").unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");

    // A restarted instance does not hydrate the replaced value as fresh.
    let c = instance(Opts::new(server.url(), "d5")).await;
    let (qc, _) = query(k.clone(), "C");
    let got = c.fetch_query(&qc).await.unwrap();
    // B may have refetched and stored its own new value meanwhile; never A's old one.
    assert_ne!(*got, "A-v1", "the replaced value is gone from Redis");
}

/// Data whose `Serialize` can fail (a "poisoned" value).
#[derive(Clone, Debug, PartialEq, Deserialize)]
struct Doc {
    text: String,
    poison: bool,
}

impl Serialize for Doc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.poison {
            return Err(serde::ser::Error::custom("poisoned value"));
        }
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Doc", 2)?;
        st.serialize_field("text", &self.text)?;
        st.serialize_field("poison", &self.poison)?;
        st.end()
    }
}

/// Defect 4 (does not encode), the story: a value whose `Serialize` failed was neither
/// written nor announced, so the other instances kept the old value as fresh. Now the
/// stored copy is deleted and an invalidation announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_does_not_encode_still_invalidates_the_others() {
    let server = server_or_skip!("a_write_that_does_not_encode");
    let a = instance(Opts::new(server.url(), "d4e")).await;
    let b = instance(Opts::new(server.url(), "d4e")).await;
    let k = key!["d4e", 1];
    let doc = |who: &'static str| {
        QueryOptions::new(k.clone(), move || async move {
            Ok::<_, String>(Doc {
                text: who.to_string(),
                poison: false,
            })
        })
        .persist()
        .stale_time(HOUR)
    };
    a.fetch_query(&doc("A")).await.unwrap();
    a.flush_storage().await;
    assert_eq!(b.fetch_query(&doc("B")).await.unwrap().text, "A");

    a.set_query_data(
        k.clone(),
        Doc {
            text: "A-poisoned".into(),
            poison: true,
        },
    )
    .unwrap();
    eventually(
        "B stops serving the old value as fresh",
        Duration::from_secs(10),
        || {
            b.get_query_state::<Doc>(&k)
                .is_some_and(|s| s.is_stale() || s.data.is_none_or(|d| d.text != "A"))
        },
    )
    .await;
}

/// Defect 5 (not persisted before the first read), the story: `set_query_data` on a key
/// no query had used yet on this instance was not persisted (persistence was only known
/// from a query's options), so a restart served the older stored value. A client rule
/// (`persist_prefix`) now says which keys persist without having seen a query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persist_rule_persists_a_manual_write_before_any_read() {
    let server = server_or_skip!("a_persist_rule_persists_a_manual_write");
    let b = instance(Opts::new(server.url(), "d5r")).await;
    let k = key!["d5r", 1];
    let (qb, _) = query(k.clone(), "B");
    assert_eq!(*b.fetch_query(&qb).await.unwrap(), "B-v1");
    b.flush_storage().await;

    let mut a_opts = Opts::new(server.url(), "d5r");
    a_opts.rule = Some(key!["d5r"]);
    let a = instance(a_opts).await;
    a.set_query_data(k.clone(), "A-set".to_string()).unwrap();
    assert!(a.shutdown(Duration::from_secs(10)).await);
    drop(a);

    // A "restart": a fresh instance hydrates what A wrote, with no upstream call.
    let c = instance(Opts::new(server.url(), "d5r")).await;
    let (qc, calls_c) = query(k.clone(), "C");
    assert_eq!(*c.fetch_query(&qc).await.unwrap(), "A-set");
    assert_eq!(calls_c.load(Ordering::SeqCst), 0);
    // And B, told of the write, reloads it from the shared tier.
    eventually("B reloads A's write", Duration::from_secs(10), || {
        !serves_as_fresh(&b, &k, "B-v1")
    })
    .await;
    // Stale-while-revalidate: the stale value once, while the reload from Redis runs.
    let _ = b.fetch_query(&qb).await.unwrap();
    eventually("B holds A's write", Duration::from_secs(10), || {
        b.get_query_data::<String>(&k)
            .as_deref()
            .map(String::as_str)
            == Some("A-set")
    })
    .await;
}

/// Defect 6, the story: with `cluster_dedup`, an instance that could not reach Redis took
/// the failed lease call for "someone else holds it" and waited the whole `max_wait`
/// before fetching (2–5 s instead of milliseconds). Unreachable now means "fetch locally,
/// now".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dedup_fetches_locally_at_once_when_redis_is_unreachable() {
    let server = server_or_skip!("cluster_dedup_fetches_locally_at_once");
    let proxy = Proxy::start(server.port());
    let mut a_opts = Opts::new(proxy.url(), "d6");
    a_opts.dedup = Some((Duration::from_secs(2), Duration::from_secs(20)));
    let a = instance(a_opts).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (qa, calls_a) = query(key!["d6", 1], "A");
    let start = Instant::now();
    let got = a.fetch_query(&qa).await.unwrap();
    let took = start.elapsed();
    println!("cold persisted fetch with Redis unreachable: {took:?}");
    assert_eq!(*got, "A-v1");
    assert_eq!(calls_a.load(Ordering::SeqCst), 1);
    assert!(
        took < Duration::from_secs(5),
        "waited {took:?} (max_wait is 20 s)"
    );
}

/// Defect 8, the story: the cluster-dedup lease was never renewed, so a fetch that took
/// longer than the lease (2.5 s against 1 s) let a second instance take the lease over and
/// fetch again, then a third: 3 upstream fetches on 3 instances. The holder now renews its
/// lease while its fetch and its shared-tier write run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_longer_than_its_lease_still_runs_once_across_the_cluster() {
    let server = server_or_skip!("a_fetch_longer_than_its_lease_still_runs_once");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut o = Opts::new(server.url(), "d8");
        o.dedup = Some((Duration::from_secs(1), Duration::from_secs(20)));
        clients.push(instance(o).await);
    }
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let slow = QueryOptions::new(key!["d8", 1], move || {
        let c = c.clone();
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Ok::<_, String>(format!("v{n}"))
        }
    })
    .persist()
    .stale_time(HOUR);
    let start = Instant::now();
    let results =
        futures::future::join_all(clients.iter().map(|client| client.fetch_query(&slow))).await;
    println!("3 instances, 2.5 s fetch, 1 s lease: {:?}", start.elapsed());
    for r in results {
        assert_eq!(*r.unwrap(), "v1");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one upstream fetch across the cluster"
    );
}
