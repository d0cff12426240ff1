//! Fault scenarios for many instances on one Redis (issue 11): after the fault ends, no
//! instance may serve a value that was replaced, invalidated or removed as fresh.
//!
//! Each scenario runs two instances (A, B: each with its own storage connection, bus and
//! leases) over one `redis-server`, with a workload of `fetch_query` on 50 persisted keys
//! (stale time 1 h, so nothing turns stale by itself during a test). The upstream is a
//! tiny versioned "database": every value is `k<id>:v<version>`; a change bumps the
//! version (a `set_query_data` writes the bumped value, as a mutation's result would).
//! After the fault no version moves, so "old" simply means "a version below the
//! database's".
//!
//! Scenarios: SIGKILL of `redis-server` with its data kept (append-only file), restarted
//! after ~1 s, plus a third instance started right after the restart; one instance (A)
//! partitioned for ~3 s, by a cut link and by a frozen one, with A changing keys and with
//! B changing keys; Redis at `maxmemory` (noeviction) for ~2 s, plus a third instance
//! started after it.
//!
//! What each test measures and prints (run with `--nocapture`):
//! * failed `fetch_query` calls (workload and checks) and the longest `fetch_query` whose
//!   run overlapped the fault;
//! * `old-as-fresh`: the last moment (after the fault ended) an instance held an old value
//!   that it would serve as fresh (`get_query_state`: old data, neither invalidated nor
//!   stale);
//! * `agreed`: the time from the end of the fault until `fetch_query` returns the
//!   database's value for every key on every instance (stale-while-revalidate may serve an
//!   old value marked stale meanwhile: that is allowed, serving it as fresh is not).
//!
//! Asserted: agreement within [`BOUND`], no old value held as fresh at or after [`BOUND`]
//! nor after agreement, nothing disagreeing again after agreement, no failed call, no
//! `fetch_query` longer than [`LONGEST_CALL`].
//!
//! Real time with generous bounds (sockets cannot run on the paused clock).
#![cfg(feature = "redis")]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::redis_server::RedisServer;
use parking_lot::Mutex;
use stackquery::bus::{RedisBus, RedisLeases};
use stackquery::storage::RedisStorage;
use stackquery::{key, QueryClient, QueryKey, QueryOptions};

/// After the fault ends, every instance agrees (and none holds an old value as fresh)
/// within this.
const BOUND: Duration = Duration::from_secs(10);
/// No `fetch_query` may take longer than this, during the fault or after.
const LONGEST_CALL: Duration = Duration::from_secs(5);
/// Keys in the workload.
const KEYS: u32 = 50;
/// How long the checks keep watching after agreement, for a regression.
const WATCH_AFTER_AGREEMENT: Duration = Duration::from_secs(1);

macro_rules! server_or_skip {
    ($start:expr) => {
        match $start {
            Some(server) => server,
            None => return,
        }
    };
}

/// The upstream: a versioned value per key, and a count of fetches.
#[derive(Default)]
struct Db {
    versions: Mutex<HashMap<u32, u64>>,
    fetches: AtomicU64,
}

impl Db {
    fn value(id: u32, version: u64) -> String {
        format!("k{id}:v{version}")
    }

    fn version_of(value: &str) -> u64 {
        value
            .rsplit_once(":v")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("not a versioned value: {value}"))
    }

    fn version(&self, id: u32) -> u64 {
        *self.versions.lock().get(&id).unwrap_or(&1)
    }

    fn current(&self, id: u32) -> String {
        Self::value(id, self.version(id))
    }

    /// A change upstream: the key's next version.
    fn bump(&self, id: u32) -> String {
        let mut v = self.versions.lock();
        let version = v.entry(id).or_insert(1);
        *version += 1;
        Self::value(id, *version)
    }
}

fn item(id: u32) -> QueryKey {
    key!["item", id]
}

/// The options of every key: the fetch reads the database, then takes 2 ms (a response
/// can be overtaken by a change, as with a real upstream).
fn all_opts(db: &Arc<Db>) -> Arc<Vec<QueryOptions<String>>> {
    Arc::new(
        (0..KEYS)
            .map(|id| {
                let db = db.clone();
                QueryOptions::new(item(id), move || {
                    let db = db.clone();
                    async move {
                        db.fetches.fetch_add(1, Ordering::Relaxed);
                        let value = db.current(id);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        Ok::<_, String>(value)
                    }
                })
                .persist()
                .stale_time(Duration::from_secs(3600))
            })
            .collect(),
    )
}

/// One instance on `url`: its own storage connection, bus and leases (cluster dedup).
async fn instance(url: &str, ns: &str) -> QueryClient {
    let storage = RedisStorage::builder(url)
        .namespace(ns)
        .connect()
        .await
        .expect("storage");
    let bus = RedisBus::builder(url)
        .namespace(ns)
        .connect()
        .await
        .expect("bus");
    let client = QueryClient::builder()
        .storage(storage.clone())
        .bus(bus)
        .cluster_dedup(
            RedisLeases::new(&storage),
            Duration::from_millis(1500),
            Duration::from_secs(3),
        )
        .build();
    // Starts the bus listener (it starts with the first use of the client).
    client.set_query_data(key!["__warmup"], 0_u8).unwrap();
    client
}

/// Every key fetched on every instance, and what they wrote landed in Redis.
async fn warm(clients: &[(&'static str, QueryClient)], opts: &[QueryOptions<String>]) {
    for (_, c) in clients {
        for o in opts {
            c.fetch_query(o).await.expect("warm-up fetch");
        }
        c.flush_storage().await;
    }
}

// ---------------------------------------------------------------------------------------
// The workload: `fetch_query` in a loop on every instance, each call recorded.

struct Sample {
    who: &'static str,
    start: Instant,
    took: Duration,
    ok: bool,
}

struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Two looping tasks per instance, one call per millisecond or so each.
fn start_load(
    clients: &[(&'static str, QueryClient)],
    opts: &Arc<Vec<QueryOptions<String>>>,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let mut tasks = Vec::new();
    for (who, client) in clients {
        for stride in [1_usize, 7] {
            let (who, c, opts, stop, samples) = (
                *who,
                client.clone(),
                opts.clone(),
                stop.clone(),
                samples.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = 0_usize;
                while !stop.load(Ordering::Relaxed) {
                    let o = &opts[(i * stride) % opts.len()];
                    let start = Instant::now();
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(10), c.fetch_query(o)).await,
                        Ok(Ok(_))
                    );
                    samples.lock().push(Sample {
                        who,
                        start,
                        took: start.elapsed(),
                        ok,
                    });
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
    }
    Load {
        stop,
        samples,
        tasks,
    }
}

/// The workload's figures over a window.
#[derive(Debug, Default)]
struct LoadFigures {
    calls: usize,
    failed: usize,
    longest: Duration,
    longest_by: &'static str,
}

impl Load {
    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("workload task");
        }
        std::mem::take(&mut *self.samples.lock())
    }
}

/// Calls whose run overlapped `[from, to]`.
fn figures(samples: &[Sample], from: Instant, to: Instant) -> LoadFigures {
    let mut f = LoadFigures::default();
    for s in samples
        .iter()
        .filter(|s| s.start <= to && s.start + s.took >= from)
    {
        f.calls += 1;
        f.failed += usize::from(!s.ok);
        if s.took > f.longest {
            f.longest = s.took;
            f.longest_by = s.who;
        }
    }
    f
}

/// Every call of the run.
fn whole(samples: &[Sample]) -> LoadFigures {
    match samples.iter().map(|s| s.start).min() {
        Some(first) => figures(samples, first, Instant::now()),
        None => LoadFigures::default(),
    }
}

// ---------------------------------------------------------------------------------------
// The check after the fault.

#[derive(Debug, Default)]
struct Convergence {
    /// From the end of the fault until every instance returned the database's value for
    /// every key.
    agreed: Option<Duration>,
    /// The last time (since the end of the fault) an instance held an old value as fresh,
    /// and what.
    last_old_as_fresh: Option<(Duration, String)>,
    /// The same, by instance.
    last_by: std::collections::BTreeMap<&'static str, Duration>,
    /// Disagreements seen after agreement (a value that came back).
    regressions: Vec<String>,
    failed: usize,
    longest: Duration,
    /// `fetch_query` returned an old value (marked stale: allowed).
    stale_served: usize,
}

/// The old value `client` holds for `id` as fresh, if any.
fn old_as_fresh(client: &QueryClient, db: &Db, id: u32) -> Option<String> {
    let state = client.get_query_state::<String>(&item(id))?;
    let data = state.data.as_deref()?;
    let old = Db::version_of(data) < db.version(id);
    (old && !state.is_invalidated && !state.is_stale()).then(|| data.to_string())
}

/// Polls every key on every instance (state, then `fetch_query`) from `fault_end` until
/// they agree (and [`WATCH_AFTER_AGREEMENT`] more), or [`BOUND`] passes.
async fn converge(
    clients: &[(&'static str, QueryClient)],
    db: &Db,
    opts: &[QueryOptions<String>],
    fault_end: Instant,
) -> Convergence {
    let mut c = Convergence::default();
    loop {
        let mut all = true;
        for (who, client) in clients {
            for (id, o) in (0..KEYS).zip(opts) {
                if let Some(v) = old_as_fresh(client, db, id) {
                    c.last_old_as_fresh = Some((fault_end.elapsed(), format!("{who} holds {v}")));
                    c.last_by.insert(who, fault_end.elapsed());
                }
                let start = Instant::now();
                let got =
                    tokio::time::timeout(Duration::from_secs(10), client.fetch_query(o)).await;
                c.longest = c.longest.max(start.elapsed());
                let agrees = match got {
                    Ok(Ok(v)) if *v == db.current(id) => true,
                    Ok(Ok(v)) => {
                        if let Some(held) = old_as_fresh(client, db, id) {
                            c.last_old_as_fresh = Some((
                                fault_end.elapsed(),
                                format!("{who} served {v}, holds {held}"),
                            ));
                            c.last_by.insert(who, fault_end.elapsed());
                        } else {
                            c.stale_served += 1;
                        }
                        if c.agreed.is_some() {
                            c.regressions.push(format!(
                                "{who} served {v} (db: {}) {:?} after the fault",
                                db.current(id),
                                fault_end.elapsed()
                            ));
                        }
                        false
                    }
                    _ => {
                        c.failed += 1;
                        false
                    }
                };
                all &= agrees;
            }
        }
        if all && c.agreed.is_none() {
            c.agreed = Some(fault_end.elapsed());
        }
        match c.agreed {
            Some(at) if fault_end.elapsed() >= at + WATCH_AFTER_AGREEMENT => return c,
            None if fault_end.elapsed() >= BOUND => return c,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints the scenario's figures, then asserts them.
fn report(scenario: &str, during: &LoadFigures, whole: &LoadFigures, conv: &Convergence, db: &Db) {
    println!(
        "[{scenario}] during the fault: {} calls, {} failed, longest fetch_query {:?} (on {}); \
         whole run: {} calls, {} failed, longest {:?}; after the fault: agreed {:?}, last old \
         value held as fresh {:?} (by instance: {:?}), {} stale (allowed) old values served, {} failed checks, \
         longest check {:?}; upstream fetches {}",
        during.calls,
        during.failed,
        during.longest,
        during.longest_by,
        whole.calls,
        whole.failed,
        whole.longest,
        conv.agreed,
        conv.last_old_as_fresh,
        conv.last_by,
        conv.stale_served,
        conv.failed,
        conv.longest,
        db.fetches.load(Ordering::Relaxed),
    );
    let agreed = conv.agreed.unwrap_or_else(|| {
        panic!("[{scenario}] instances did not agree within {BOUND:?}: {conv:?}")
    });
    assert!(agreed <= BOUND, "[{scenario}] agreed after {agreed:?}");
    if let Some((at, what)) = &conv.last_old_as_fresh {
        assert!(
            *at < BOUND && *at <= agreed,
            "[{scenario}] an old value was held as fresh {at:?} after the fault ({what}); \
             agreement at {agreed:?}"
        );
    }
    assert!(
        conv.regressions.is_empty(),
        "[{scenario}] old values came back after agreement: {:?}",
        conv.regressions
    );
    assert_eq!(
        whole.failed + conv.failed,
        0,
        "[{scenario}] failed fetch_query calls"
    );
    assert!(
        whole.longest.max(conv.longest) <= LONGEST_CALL,
        "[{scenario}] a fetch_query took {:?}",
        whole.longest.max(conv.longest)
    );
}

/// What one instance does to keys: each bumps the key upstream first, as a mutation would.
async fn change(
    client: &QueryClient,
    db: &Db,
    invalidate: std::ops::Range<u32>,
    remove: std::ops::Range<u32>,
    set: std::ops::Range<u32>,
) {
    for id in invalidate {
        db.bump(id);
        client.invalidate_queries(item(id)).await;
    }
    for id in remove {
        db.bump(id);
        client.remove_queries(item(id));
    }
    for id in set {
        let new = db.bump(id);
        client.set_query_data(item(id), new).unwrap();
    }
}

fn redis_reply(server: &RedisServer, command: &str) -> String {
    server
        .raw_command(command)
        .unwrap_or_else(|e| format!("({e})"))
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------
// 1. SIGKILL of redis-server, data kept (AOF).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_data_kept_no_instance_serves_changed_values_as_fresh() {
    let mut server = server_or_skip!(RedisServer::start_with_aof(
        "sigkill_with_data_kept_no_instance_serves_changed_values_as_fresh"
    ));
    let db = Arc::new(Db::default());
    let opts = all_opts(&db);
    let clients = [
        ("A", instance(&server.url(), "kill").await),
        ("B", instance(&server.url(), "kill").await),
    ];
    warm(&clients, &opts).await;
    let (a, _b) = (&clients[0].1, &clients[1].1);
    let load = start_load(&clients, &opts);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Proof that the server keeps what it acknowledged: a key set behind the clients' back.
    assert_eq!(redis_reply(&server, "SET aof-sentinel kept"), "+OK");
    let before = redis_reply(&server, "DBSIZE");

    let fault_start = Instant::now();
    tokio::task::block_in_place(|| server.kill_hard());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // During the outage A invalidates 0..8, removes 8..16, replaces 16..24.
    change(a, &db, 0..8, 8..16, 16..24).await;
    tokio::time::sleep(Duration::from_millis(1000).saturating_sub(fault_start.elapsed())).await;
    tokio::task::block_in_place(|| server.restart());
    let fault_end = Instant::now();
    let sentinel = redis_reply(&server, "GET aof-sentinel");
    assert!(
        sentinel.contains("kept"),
        "the data survived the SIGKILL: {sentinel}"
    );

    // A third instance, started right after the restart, hydrates from what Redis kept
    // (the old copies of A's keys, until A's owed deletes land).
    let c = instance(&server.url(), "kill").await;
    let all = [clients[0].clone(), clients[1].clone(), ("C", c)];
    let conv = converge(&all, &db, &opts, fault_end).await;
    let samples = load.stop().await;
    println!(
        "[sigkill] outage {:?}; keys in Redis before the kill: {before}",
        fault_end - fault_start
    );
    report(
        "sigkill",
        &figures(&samples, fault_start, fault_end),
        &whole(&samples),
        &conv,
        &db,
    );
}

// ---------------------------------------------------------------------------------------
// 2. One instance partitioned from Redis (A behind a proxy, B direct).
//
// Two kinds of partition: the shared proxy *cuts* (connections closed, new ones refused:
// failures are immediate), and a *frozen* link (connections stay open, nothing moves:
// every call waits for its timeout, commands sent meanwhile run when the link thaws).

/// A proxy that can freeze: while frozen it moves no bytes and keeps every connection
/// open (a hung network path rather than a refused one). Plain threads.
struct FreezingProxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl FreezingProxy {
    fn start(target: u16) -> FreezingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                frozen_pump(client, server, f.clone());
                frozen_pump(s2, c2, f.clone());
            }
        });
        FreezingProxy { port, frozen }
    }
}

fn frozen_pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    frozen: Arc<AtomicBool>,
) {
    use std::io::{ErrorKind, Read, Write};
    std::thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(10)));
        let mut buf = [0_u8; 16 * 1024];
        loop {
            if frozen.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
    });
}

/// How A is partitioned.
enum Link {
    Cut(Proxy),
    Frozen(FreezingProxy),
}

impl Link {
    fn start(frozen: bool, target: u16) -> Link {
        if frozen {
            Link::Frozen(FreezingProxy::start(target))
        } else {
            Link::Cut(Proxy::start(target))
        }
    }

    fn url(&self) -> String {
        match self {
            Link::Cut(p) => p.url(),
            Link::Frozen(p) => format!("redis://127.0.0.1:{}", p.port),
        }
    }

    fn partition(&self) {
        match self {
            Link::Cut(p) => p.cut(),
            Link::Frozen(p) => p.frozen.store(true, Ordering::SeqCst),
        }
    }

    fn heal(&self) {
        match self {
            Link::Cut(p) => p.heal(),
            Link::Frozen(p) => p.frozen.store(false, Ordering::SeqCst),
        }
    }
}

/// A behind a link partitioned for ~3 s, B direct. The instance `changer` (A when
/// `a_changes`) invalidates 0..8, removes 8..16 and replaces 16..24 while A is cut off.
async fn partition(test: &str, scenario: &str, frozen: bool, a_changes: bool) {
    let server = server_or_skip!(RedisServer::start(test));
    let db = Arc::new(Db::default());
    let link = Link::start(frozen, server.port());
    let opts = all_opts(&db);
    let ns = test;
    let clients = [
        ("A", instance(&link.url(), ns).await),
        ("B", instance(&server.url(), ns).await),
    ];
    warm(&clients, &opts).await;
    let (a, b) = (&clients[0].1, &clients[1].1);
    let load = start_load(&clients, &opts);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let fault_start = Instant::now();
    link.partition();
    tokio::time::sleep(Duration::from_millis(300)).await;
    change(if a_changes { a } else { b }, &db, 0..8, 8..16, 16..24).await;
    // A graceful shutdown cannot drain while A is cut off: it says so, within its limit.
    let t = Instant::now();
    let shutdown_ok = a.shutdown(Duration::from_millis(300)).await;
    let shutdown_cut = t.elapsed();
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(fault_start.elapsed())).await;
    link.heal();
    let fault_end = Instant::now();

    let conv = converge(&clients, &db, &opts, fault_end).await;
    let samples = load.stop().await;
    let t = Instant::now();
    let drained = a.shutdown(Duration::from_secs(5)).await;
    println!(
        "[{scenario}] shutdown(300 ms) while cut off returned {shutdown_ok} after \
         {shutdown_cut:?}; after the heal shutdown(5 s) returned {drained} after {:?}",
        t.elapsed()
    );
    report(
        scenario,
        &figures(&samples, fault_start, fault_end),
        &whole(&samples),
        &conv,
        &db,
    );
    if a_changes {
        assert!(
            !shutdown_ok,
            "[{scenario}] nothing A owes can land while cut off"
        );
    }
    assert!(
        shutdown_cut < Duration::from_secs(1),
        "[{scenario}] shutdown kept its limit"
    );
    assert!(
        drained,
        "[{scenario}] everything A owed landed after the heal"
    );
}

/// A, cut off, changes keys: B must agree after the heal (A's writes and messages were
/// owed, not lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_instance_changes_reach_the_others_after_the_heal() {
    partition(
        "partitioned_instance_changes_reach_the_others_after_the_heal",
        "partition (cut), A changes",
        false,
        true,
    )
    .await;
}

/// B changes keys while A is cut off: A missed B's messages, and must not serve those keys
/// as fresh once it reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_instance_does_not_serve_what_it_missed_as_fresh() {
    partition(
        "partitioned_instance_does_not_serve_what_it_missed_as_fresh",
        "partition (cut), B changes",
        false,
        false,
    )
    .await;
}

/// As above, with A's link frozen rather than cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_link_changes_reach_the_others_after_it_thaws() {
    partition(
        "frozen_link_changes_reach_the_others_after_it_thaws",
        "partition (frozen), A changes",
        true,
        true,
    )
    .await;
}

/// As above, with A's link frozen rather than cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_link_instance_does_not_serve_what_it_missed_as_fresh() {
    partition(
        "frozen_link_instance_does_not_serve_what_it_missed_as_fresh",
        "partition (frozen), B changes",
        true,
        false,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 3. Redis at maxmemory (noeviction): writes fail with OOM.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_at_maxmemory_no_instance_nor_a_restarted_one_serves_replaced_values() {
    let server = server_or_skip!(RedisServer::start(
        "redis_at_maxmemory_no_instance_nor_a_restarted_one_serves_replaced_values"
    ));
    let db = Arc::new(Db::default());
    let opts = all_opts(&db);
    let clients = [
        ("A", instance(&server.url(), "oom").await),
        ("B", instance(&server.url(), "oom").await),
    ];
    warm(&clients, &opts).await;
    let (a, b) = (&clients[0].1, &clients[1].1);
    let load = start_load(&clients, &opts);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let fault_start = Instant::now();
    let policy = redis_reply(&server, "CONFIG GET maxmemory-policy");
    assert!(policy.contains("noeviction"), "{policy}");
    assert_eq!(redis_reply(&server, "CONFIG SET maxmemory 1"), "+OK");
    let refused = redis_reply(&server, "SET probe 1");
    assert!(refused.starts_with("-OOM"), "writes fail: {refused}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A replaces 0..16 (its writes fail with OOM), invalidates 16..20, removes 20..24.
    change(a, &db, 16..20, 20..24, 0..16).await;
    // B hears of A's changes during the fault already (the failed writes became deletes).
    let b_heard = async {
        let start = Instant::now();
        while (0..24).any(|id| old_as_fresh(b, &db, id).is_some()) {
            if start.elapsed() > BOUND {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Some(start.elapsed())
    }
    .await;
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(fault_start.elapsed())).await;
    assert_eq!(redis_reply(&server, "CONFIG SET maxmemory 0"), "+OK");
    let fault_end = Instant::now();

    // A third instance, started after the fault (a restart), hydrating from Redis.
    let c = instance(&server.url(), "oom").await;
    let mut c_old_as_fresh = Vec::new();
    for (id, o) in (0..KEYS).zip(opts.iter()) {
        let v = c.fetch_query(o).await.expect("C's first fetch");
        if Db::version_of(&v) < db.version(id) && old_as_fresh(&c, &db, id).is_some() {
            c_old_as_fresh.push(v.to_string());
        }
    }
    let all = [clients[0].clone(), clients[1].clone(), ("C", c)];
    let conv = converge(&all, &db, &opts, fault_end).await;
    let samples = load.stop().await;
    println!(
        "[maxmemory] B stopped holding A's replaced values as fresh {b_heard:?} after A's changes \
         (during the fault); C's first reads held as fresh: {c_old_as_fresh:?}"
    );
    report(
        "maxmemory",
        &figures(&samples, fault_start, fault_end),
        &whole(&samples),
        &conv,
        &db,
    );
    assert!(
        b_heard.is_some(),
        "B kept A's replaced values as fresh during the fault"
    );
    assert!(
        c_old_as_fresh.is_empty(),
        "a client started after the fault got old values as fresh: {c_old_as_fresh:?}"
    );
}
