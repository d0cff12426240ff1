//! Issue 11, defect 9: bus lag made everything stale too easily.
//!
//! The story: instance B holds 2,000 fresh entries `["b", i]` (stale time 1 h, every one
//! observed, as a busy server's would be). Another instance sends 20,000 invalidations of
//! keys B does not hold (`["other", i]`) as fast as it can. B's listener fell behind the
//! bus (its in-process channel held 1,024 events), got `Lagged`, and — not knowing what it
//! had missed — marked all 2,000 entries stale and refetched every observed one at once:
//! 2,000 upstream fetches caused by messages that concerned none of them.
//!
//! The test sends that burst five times (the issue saw a lag in 4 runs of 5), while B
//! serves reads and three spinning threads keep the machine busy.
//!
//! Now B must keep up with such a burst (it batches and its channel is larger), and when it
//! does fall behind, it invalidates only what the lost messages may have touched and starts
//! no refetch storm — while still never serving as fresh an entry another instance
//! invalidated.
//!
//! Real time against a private `redis-server`; figures are printed (run with
//! `--nocapture`).
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use stackquery::bus::{BusMessage, BusMessageKind, InstanceId, RedisBus};
use stackquery::{key, KeyScope, QueryClient, QueryKey, QueryOptions};

macro_rules! server_or_skip {
    ($name:expr) => {
        match RedisServer::start($name) {
            Some(server) => server,
            None => return,
        }
    };
}

const ENTRIES: i64 = 2_000;
const BURST: i64 = 20_000;
const ROUNDS: i64 = 5;
const CHUNK: usize = 1_000;

/// Options of a fresh-for-an-hour query whose fetch function counts its calls.
fn counted(key: QueryKey, calls: Arc<AtomicU32>) -> QueryOptions<String> {
    QueryOptions::new(key, move || {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, String>(format!("v{n}"))
        }
    })
    .stale_time(Duration::from_secs(3600))
}

async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A fresh-for-an-hour query whose fetch function takes `delay` and records how many of its
/// calls ran at once (the most in `peak`).
fn tracked(
    key: QueryKey,
    calls: Arc<AtomicU32>,
    running: Arc<AtomicU32>,
    peak: Arc<AtomicU32>,
    delay: Duration,
) -> QueryOptions<String> {
    QueryOptions::new(key, move || {
        let (calls, running, peak) = (calls.clone(), running.clone(), peak.clone());
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, String>(format!("v{n}"))
        }
    })
    .stale_time(Duration::from_secs(3600))
}

/// The payloads of `count` exact invalidations of `["other", i]` from another instance,
/// encoded beforehand so that the burst itself costs nothing but the sending.
fn unrelated(count: i64) -> Vec<Vec<u8>> {
    (0..count).map(|i| invalidation(key!["other", i])).collect()
}

/// The payload of an exact invalidation of `key` from another instance.
fn invalidation(key: QueryKey) -> Vec<u8> {
    BusMessage::new(
        InstanceId::from(0x5eed),
        BusMessageKind::Invalidate {
            scope: KeyScope::Exact(key),
        },
    )
    .encode()
}

/// Sends `payloads` on `channel` as fast as Redis takes them: pipelines of `CHUNK`
/// `PUBLISH`es on two connections at once (a burst no single `publish` loop can make).
async fn burst(url: &str, channel: &str, payloads: Vec<Vec<u8>>) {
    let client = redis::Client::open(url).expect("url");
    let mut halves = Vec::new();
    let mid = payloads.len() / 2;
    let mut payloads = payloads;
    let second = payloads.split_off(mid);
    for half in [payloads, second] {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let channel = channel.to_owned();
        halves.push(tokio::spawn(async move {
            for chunk in half.chunks(CHUNK) {
                let mut pipe = redis::pipe();
                for payload in chunk {
                    pipe.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
                }
                pipe.exec_async(&mut conn).await.expect("publish");
            }
        }));
    }
    for half in halves {
        half.await.expect("publisher task");
    }
}

/// How many of B's `["b", i]` entries are no longer fresh.
fn not_fresh(b: &QueryClient) -> usize {
    (0..ENTRIES)
        .filter(|i| {
            b.get_query_state::<String>(&key!["b", *i])
                .is_none_or(|s| s.is_invalidated || s.is_stale())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unrelated_invalidations_marks_nothing_stale_and_fetches_nothing() {
    let server = server_or_skip!("a_burst_of_unrelated_invalidations_marks_nothing_stale");
    let url = server.url();
    let b_bus = RedisBus::builder(url.as_str())
        .namespace("lag")
        .connect()
        .await
        .expect("bus");
    let b = QueryClient::builder().bus(b_bus.clone()).build();
    let publisher = RedisBus::builder(url.as_str())
        .namespace("lag")
        .connect()
        .await
        .expect("bus");

    // B: 2,000 fresh, observed entries, plus a sentinel per burst.
    let calls = Arc::new(AtomicU32::new(0));
    let mut observers = Vec::new();
    for i in 0..ENTRIES {
        let opts = counted(key!["b", i], calls.clone());
        b.fetch_query(&opts).await.expect("fetch");
        observers.push(b.watch(&opts).subscribe(|_| {}));
    }
    for round in 0..ROUNDS {
        let sentinel = counted(key!["sentinel", round], Arc::new(AtomicU32::new(0)));
        b.fetch_query(&sentinel).await.expect("fetch");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2_000);
    assert_eq!(not_fresh(&b), 0);
    let fetches_before = b.stats().fetches;

    // B is serving while the bursts arrive: readers hit its entries (fresh: no fetch),
    // competing with its listener for the runtime's two threads.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for reader in 0..2 {
        let (b, stop, calls) = (b.clone(), stop.clone(), calls.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0_i64;
            while !stop.load(Ordering::Relaxed) {
                let opts = counted(key!["b", (reads * 7 + reader) % ENTRIES], calls.clone());
                b.fetch_query(&opts).await.expect("read");
                reads += 1;
                if reads % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            reads
        }));
    }
    // And the machine is busy (the had builds running): three spinning threads
    // compete with B's two for the cores, so the OS preempts B's listener for
    // milliseconds at a time — at 200,000 messages/s, 5 ms overflowed the old channel.
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    // Several bursts, as the several runs: each had a good chance to overflow the
    // old channel; together they certainly do.
    for round in 0..ROUNDS {
        let payloads = unrelated(BURST);
        let start = Instant::now();
        burst(&url, publisher.channel(), payloads).await;
        let published = start.elapsed();
        publisher
            .publish(BusMessageKind::Invalidate {
                scope: KeyScope::Exact(key!["sentinel", round]),
            })
            .await
            .expect("publish");
        eventually("B to see the sentinel", Duration::from_secs(60), || {
            b.get_query_state::<String>(&key!["sentinel", round])
                .is_some_and(|s| s.is_invalidated)
        })
        .await;
        let seen = start.elapsed();
        let messages = BURST + 1;
        println!(
            "burst {round}: {messages} messages published in {published:?} ({:.0}/s); \
             B applied them all within {seen:?}: {:.0} messages/s sustained",
            messages as f64 / published.as_secs_f64(),
            messages as f64 / seen.as_secs_f64(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().expect("spinner");
    }
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.expect("reader");
    }
    // Any refetch a lag would have started runs now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "B served {reads} reads meanwhile; lagged {} times",
        b_bus.lag_count()
    );

    assert_eq!(b_bus.lag_count(), 0, "B's listener fell behind a burst");
    assert_eq!(
        not_fresh(&b),
        0,
        "entries marked stale by unrelated messages"
    );
    // A reconnection of B's listener is no lag: its health ping can time out when the
    // machine is loaded far past this test's own spinners (it failed once that way at a
    // load average of 5.7: 4,000 fetches, 0 lags, every observed entry refetched once).
    // Messages may have been lost across a reconnection, so by design it refetches every
    // observed entry once; what must never happen is a refetch caused by the unrelated
    // messages themselves.
    let reconnects = u32::try_from(b_bus.reconnect_count()).expect("few reconnects");
    if reconnects > 0 {
        println!("B's listener reconnected {reconnects} times (a loaded machine)");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2_000 * (1 + reconnects),
        "upstream fetches caused by unrelated messages"
    );
    // Not even the sentinels refetched (they are not observed).
    assert_eq!(
        b.stats().fetches,
        fetches_before + u64::from(2_000 * reconnects)
    );
    drop(observers);
}

/// Point 2: when B does fall behind (a channel of 8 events, and B's listener on the same
/// thread as its bus, so a burst certainly overflows it), the lag costs only the keys the
/// lost messages named. In the burst of 2,001 invalidations one concerns B: `["b", 7]`.
/// Afterwards `["b", 7]` is not served as fresh (stale, or refetched since), the 1,999
/// others stay fresh, and B fetched upstream at most once (for `["b", 7]`, observed).
#[tokio::test(flavor = "current_thread")]
async fn a_lag_marks_stale_only_the_keys_the_lost_messages_named() {
    let server = server_or_skip!("a_lag_marks_stale_only_the_keys_the_lost_messages_named");
    let url = server.url();
    let b_bus = RedisBus::builder(url.as_str())
        .namespace("lag")
        .capacity(8)
        .connect()
        .await
        .expect("bus");
    let b = QueryClient::builder().bus(b_bus.clone()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let mut observers = Vec::new();
    for i in 0..ENTRIES {
        let opts = counted(key!["b", i], calls.clone());
        b.fetch_query(&opts).await.expect("fetch");
        observers.push(b.watch(&opts).subscribe(|_| {}));
    }
    let sentinel = counted(key!["sentinel"], Arc::new(AtomicU32::new(0)));
    b.fetch_query(&sentinel).await.expect("fetch");
    let before = b.get_query_data::<String>(&key!["b", 7]).expect("data");

    let mut payloads = unrelated(2_000);
    payloads.insert(1_000, invalidation(key!["b", 7]));
    payloads.push(invalidation(key!["sentinel"]));
    // One connection, so the sentinel comes last.
    let client = redis::Client::open(url.as_str()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let mut pipe = redis::pipe();
    for payload in &payloads {
        pipe.cmd("PUBLISH")
            .arg(b_bus.channel())
            .arg(payload)
            .ignore();
    }
    pipe.exec_async(&mut conn).await.expect("publish");
    eventually("B to see the sentinel", Duration::from_secs(30), || {
        b.get_query_state::<String>(&key!["sentinel"])
            .is_some_and(|s| s.is_invalidated)
    })
    .await;
    let b7 = b.get_query_state::<String>(&key!["b", 7]).expect("state");
    let lags = b_bus.lag_count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "capacity 8, burst of {}: B lagged {lags} times; [\"b\", 7] afterwards: \
         invalidated {}, stale {}, data {:?} (was {before:?}); upstream fetches {}",
        payloads.len(),
        b7.is_invalidated,
        b7.is_stale(),
        b7.data,
        calls.load(Ordering::SeqCst) - 2_000,
    );
    assert!(lags > 0, "the burst was meant to overflow B's channel");
    assert!(
        b7.is_invalidated || b7.is_stale() || b7.data.as_deref() != Some(&*before),
        "an entry another instance invalidated was served as fresh"
    );
    let stale_others = (0..ENTRIES)
        .filter(|i| *i != 7)
        .filter(|i| {
            b.get_query_state::<String>(&key!["b", *i])
                .is_none_or(|s| s.is_invalidated || s.is_stale())
        })
        .count();
    assert_eq!(
        stale_others, 0,
        "entries no lost message named were marked stale"
    );
    assert!(
        calls.load(Ordering::SeqCst) <= 2_001,
        "upstream fetches beyond [\"b\", 7]'s"
    );
    drop(observers);
}

/// Point 2, the worst case: after a reconnection nothing is known of what was missed, so
/// every entry may be stale. B holds 200 observed and 200 unobserved entries; Redis dies
/// and comes back. Every entry is marked stale (none is served as fresh), but the observed
/// ones are refetched in the background a few at a time — never more than 8 upstream
/// fetches at once — and the unobserved ones not at all until read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnection_refetches_observed_entries_a_few_at_a_time() {
    let mut server = server_or_skip!("a_reconnection_refetches_observed_entries_a_few_at_a_time");
    let url = server.url();
    let b_bus = RedisBus::builder(url.as_str())
        .namespace("lag")
        .max_backoff(Duration::from_millis(100))
        .ping_interval(Duration::from_millis(100))
        .connect()
        .await
        .expect("bus");
    let b = QueryClient::builder().bus(b_bus.clone()).build();
    let (calls, running, peak) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
    );
    let delay = Duration::from_millis(20);
    let mut observers = Vec::new();
    for i in 0..200 {
        let watched = tracked(
            key!["w", i],
            calls.clone(),
            running.clone(),
            peak.clone(),
            delay,
        );
        b.fetch_query(&watched).await.expect("fetch");
        observers.push(b.watch(&watched).subscribe(|_| {}));
        let idle = tracked(
            key!["u", i],
            calls.clone(),
            running.clone(),
            peak.clone(),
            delay,
        );
        b.fetch_query(&idle).await.expect("fetch");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 400);
    peak.store(0, Ordering::SeqCst);

    server.kill_hard();
    eventually("B to notice", Duration::from_secs(10), || {
        !b_bus.is_connected()
    })
    .await;
    server.restart();
    eventually("B to reconnect", Duration::from_secs(10), || {
        b_bus.reconnect_count() > 0
    })
    .await;
    eventually(
        "B to mark its entries stale",
        Duration::from_secs(10),
        || {
            b.get_query_state::<String>(&key!["u", 199])
                .is_some_and(|s| s.is_invalidated)
        },
    )
    .await;
    let start = Instant::now();
    eventually(
        "the observed entries to be refetched",
        Duration::from_secs(30),
        || calls.load(Ordering::SeqCst) >= 600 && running.load(Ordering::SeqCst) == 0,
    )
    .await;
    println!(
        "after a reconnection: 200 observed entries refetched in {:?}, at most {} at once \
         ({delay:?} each); unobserved entries fetched: {}",
        start.elapsed(),
        peak.load(Ordering::SeqCst),
        calls.load(Ordering::SeqCst) - 600,
    );
    assert!(peak.load(Ordering::SeqCst) <= 8, "a refetch storm");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        600,
        "unobserved entries fetched before a read"
    );
    for i in 0..200 {
        let s = b.get_query_state::<String>(&key!["u", i]).expect("state");
        assert!(
            s.is_invalidated,
            "served as fresh after messages may have been lost"
        );
        let w = b.get_query_state::<String>(&key!["w", i]).expect("state");
        assert!(
            !w.is_invalidated && !w.is_stale(),
            "observed entry not refreshed"
        );
    }
    drop(observers);
}
