//! Many instances on one `redis-server`: the invalidation bus wired into the client,
//! cluster-wide deduplication, a Redis outage under load, several OS processes.
//!
//! Real time with generous bounds (the paused clock cannot wait on sockets). Figures are
//! printed; run with `--nocapture` to see them.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use stackquery::bus::{RedisBus, RedisLeases};
use stackquery::storage::RedisStorage;
use stackquery::{key, QueryClient, QueryOptions, QueryState};

macro_rules! server_or_skip {
    ($name:expr) => {
        match RedisServer::start($name) {
            Some(server) => server,
            None => return,
        }
    };
}

/// One instance: its own storage connection, bus and leases.
async fn instance(server: &RedisServer, ns: &str, dedup: bool) -> QueryClient {
    let storage = RedisStorage::builder(server.url())
        .namespace(ns)
        .connect()
        .await
        .expect("storage");
    let bus = RedisBus::builder(server.url())
        .namespace(ns)
        .connect()
        .await
        .expect("bus");
    let mut b = QueryClient::builder().storage(storage.clone()).bus(bus);
    if dedup {
        b = b.cluster_dedup(
            RedisLeases::new(&storage),
            Duration::from_millis(1500),
            Duration::from_secs(10),
        );
    }
    let client = b.build();
    // Start the bus listener (it starts with the first use of the client).
    client.set_query_data(key!["__warmup"], 0_u8).unwrap();
    client
}

fn counted(
    key: stackquery::QueryKey,
    calls: Arc<AtomicU32>,
    delay: Duration,
) -> QueryOptions<String> {
    QueryOptions::new(key, move || {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(delay).await;
            Ok::<_, String>(format!("v{n}"))
        }
    })
    .persist()
    .stale_time(Duration::from_secs(3600))
}

async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reaches_other_instances_by_prefix() {
    let server = server_or_skip!("invalidation_reaches_other_instances_by_prefix");
    let a = instance(&server, "inv", false).await;
    let b = instance(&server, "inv", false).await;
    let calls = Arc::new(AtomicU32::new(0));
    for id in [1, 2] {
        b.fetch_query(&counted(key!["user", id], calls.clone(), Duration::ZERO))
            .await
            .unwrap();
    }
    b.fetch_query(&counted(key!["team", 1], calls.clone(), Duration::ZERO))
        .await
        .unwrap();
    let (a_out, b_in) = (a.stats().bus_out, b.stats().bus_in);
    let start = Instant::now();
    a.invalidate_queries(key!["user"]).await;
    let delay = eventually("B to see A's invalidation", Duration::from_secs(5), || {
        b.get_query_state::<String>(&key!["user", 2])
            .is_some_and(|s| s.is_invalidated)
    })
    .await;
    // The bus traffic is counted on both sides (`stats()`, and the `metrics` counters).
    assert!(a.stats().bus_out > a_out, "{:?}", a.stats());
    assert!(b.stats().bus_in > b_in, "{:?}", b.stats());
    println!(
        "invalidation seen by another instance after {:?}",
        start.elapsed().min(delay)
    );
    assert!(
        b.get_query_state::<String>(&key!["user", 1])
            .unwrap()
            .is_invalidated
    );
    assert!(
        !b.get_query_state::<String>(&key!["team", 1])
            .unwrap()
            .is_invalidated,
        "outside the prefix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_query_data_elsewhere_reloads_observers_from_the_shared_tier() {
    let server = server_or_skip!("set_query_data_elsewhere_reloads_observers_from_the_shared_tier");
    let a = instance(&server, "set", false).await;
    let b = instance(&server, "set", false).await;
    let calls = Arc::new(AtomicU32::new(0));
    let opts = counted(key!["profile", 7], calls.clone(), Duration::ZERO);
    a.fetch_query(&opts).await.unwrap();
    a.flush_storage().await;
    b.fetch_query(&opts).await.unwrap(); // from the shared tier
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "{:?} {:?}",
        a.stats(),
        b.stats()
    );
    let seen: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let observer = b.watch(&opts);
    let _sub = observer.subscribe(move |st: &QueryState<String>| {
        if let Some(d) = &st.data {
            s.lock().push(d.to_string());
        }
    });
    let start = Instant::now();
    a.set_query_data(key!["profile", 7], "edited on A".to_string())
        .unwrap();
    eventually(
        "B's observer to get A's write",
        Duration::from_secs(5),
        || seen.lock().last().map(String::as_str) == Some("edited on A"),
    )
    .await;
    println!(
        "set_query_data seen by another instance's observer after {:?}",
        start.elapsed()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no upstream fetch for an update made elsewhere"
    );
    assert!(
        !a.get_query_state::<String>(&key!["profile", 7])
            .unwrap()
            .is_invalidated,
        "A's own message did not bounce back into A"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_reaches_other_instances() {
    let server = server_or_skip!("removal_reaches_other_instances");
    let a = instance(&server, "rm", false).await;
    let b = instance(&server, "rm", false).await;
    b.set_query_data(key!["cart", 1], 3_u32).unwrap();
    a.remove_queries(key!["cart"]);
    eventually("B to drop the removed key", Duration::from_secs(5), || {
        b.get_query_data::<u32>(&key!["cart", 1]).is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_on_three_instances_run_the_fetch_once() {
    let server = server_or_skip!("a_thousand_requests_on_three_instances_run_the_fetch_once");
    let clients = [
        instance(&server, "dedup", true).await,
        instance(&server, "dedup", true).await,
        instance(&server, "dedup", true).await,
    ];
    let calls = Arc::new(AtomicU32::new(0));
    let opts = counted(
        key!["report", "cold"],
        calls.clone(),
        Duration::from_millis(300),
    );
    let start = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let (c, o) = (clients[i % 3].clone(), opts.clone());
            tokio::spawn(async move { c.fetch_query(&o).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().as_str(), "v1");
    }
    println!(
        "1,000 requests over 3 instances served in {:?}",
        start.elapsed()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one fetch across the cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_lease_holder_dies_another_instance_takes_over() {
    let server = server_or_skip!("when_the_lease_holder_dies_another_instance_takes_over");
    let a = instance(&server, "die", true).await;
    let b = instance(&server, "die", true).await;
    let calls = Arc::new(AtomicU32::new(0));
    let opts = counted(key!["slow"], calls.clone(), Duration::from_secs(30));
    let holder = {
        let (a, o) = (a.clone(), opts.clone());
        tokio::spawn(async move { a.fetch_query(&o).await })
    };
    eventually("A to start fetching", Duration::from_secs(5), || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    // A dies mid-fetch: its fetch task is aborted and never releases the lease.
    a.cancel_queries(key!["slow"]).await;
    holder.abort();
    let fast = counted(key!["slow"], calls.clone(), Duration::from_millis(50));
    let start = Instant::now();
    let v = b.fetch_query(&fast).await.unwrap();
    let waited = start.elapsed();
    println!("B took over after {waited:?} (lease ttl 1.5 s)");
    assert_eq!(v.as_str(), "v2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        waited >= Duration::from_millis(1000),
        "B waited for the lease to expire"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_fails_no_query_and_everything_recovers() {
    let mut server = server_or_skip!("sigkill_during_load_fails_no_query_and_everything_recovers");
    let a = instance(&server, "fault", false).await;
    let b = instance(&server, "fault", false).await;
    let calls = Arc::new(AtomicU32::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8_u64 {
        let (c, calls, failures, done, stop) = (
            if w % 2 == 0 { a.clone() } else { b.clone() },
            calls.clone(),
            failures.clone(),
            done.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let k = key!["load", (w * 1000 + i) % 300];
                let o =
                    counted(k, calls.clone(), Duration::from_millis(1)).stale_time(Duration::ZERO);
                match c.fetch_query(&o).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                };
                if i % 7 == 0 {
                    c.invalidate_queries(key!["load", i % 300]).await;
                }
                i += 1;
                // Cache hits are ready at once: let the other tasks (and the test) run.
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill_hard();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = done.load(Ordering::Relaxed);
    server.restart();
    let restarted = Instant::now();
    // The bus and the storage come back by themselves: an invalidation from A reaches B.
    let probe = counted(key!["probe"], calls.clone(), Duration::ZERO);
    b.fetch_query(&probe).await.unwrap();
    let recovered = loop {
        a.invalidate_queries(key!["probe"]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if b.get_query_state::<String>(&key!["probe"])
            .is_some_and(|s| s.is_invalidated)
        {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "bus did not recover"
        );
    };
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    println!(
        "outage: {} calls ok ({} before restart), {} failed; bus and storage back {:?} after the restart",
        done.load(Ordering::Relaxed),
        during,
        failures.load(Ordering::Relaxed),
        recovered
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no fetch_query failed during the outage"
    );
    assert!(recovered < Duration::from_secs(5));
}

/// Builds the example `name` with the profile (and target) this test binary was built
/// with, and returns the path of its binary.
///
/// The story: the harness built the example with the default (debug) profile but looked
/// for it beside the test binary, in `target/release` under `cargo test --release`, so the
/// test failed there; and since it built only when the binary was missing, it could run a
/// stale one. Now the profile is read off the test binary's own path
/// (`<target dir>/[<triple>/]<profile>/deps/<test>`), the example is built with that
/// profile and target into the same target dir (cargo makes this a no-op when it is up to
/// date, so a stale binary is never run), and found in the matching `examples` folder.
fn build_example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test binary lives in <profile>/deps");
    // Integration tests get `<target dir>/tmp` at compile time.
    let target_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is <target dir>/tmp");
    let relative: Vec<String> = profile_dir
        .strip_prefix(target_dir)
        .expect("the test binary lives in the target dir")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let (triple, profile) = match relative.as_slice() {
        [profile] => (None, profile.as_str()),
        [triple, profile] => (Some(triple.as_str()), profile.as_str()),
        other => panic!("unexpected test binary location {other:?} in {exe:?}"),
    };
    let mut build = std::process::Command::new(env!("CARGO"));
    build
        .args([
            "build",
            "-p",
            "stackquery",
            "--all-features",
            "--example",
            name,
        ])
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        // `dev` and `test` both build into `debug`.
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        custom => {
            build.args(["--profile", custom]);
        }
    }
    if let Some(triple) = triple {
        build.args(["--target", triple]);
    }
    let out = build.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "building example {name} ({profile}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{bin:?} after building it with profile {profile}"
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_os_processes_see_one_anothers_invalidations() {
    let server = server_or_skip!("three_os_processes_see_one_anothers_invalidations");
    let bin = build_example("multi_instance");
    let spawn = |name: &str| {
        std::process::Command::new(&bin)
            .args([&server.url(), name, "3"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = ["p1", "p2", "p3"].iter().map(|n| spawn(n)).collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = text
            .lines()
            .filter(|l| l.starts_with("saw invalidation from"))
            .count();
        assert_eq!(seen, 2, "each process sees the other two:\n{text}");
    }
}

/// The story: a client whose bus listener started on one runtime stopped hearing the other
/// instances for good once that runtime shut down (the listener task died with it), so it
/// went on serving data they had invalidated, as fresh. Now the listener restarts on the
/// current runtime at the client's next call, resubscribes, and treats what it holds as
/// possibly stale (messages sent meanwhile were lost).
#[test]
fn bus_listener_restarts_after_the_runtime_it_started_on_shut_down() {
    let server = server_or_skip!("bus_listener_restarts");
    let other_rt = tokio::runtime::Runtime::new().unwrap();
    let other = other_rt.block_on(instance(&server, "rt", false));
    let calls = Arc::new(AtomicU32::new(0));
    let opts = counted(key!["rt", 1], calls.clone(), Duration::ZERO);

    let first_rt = tokio::runtime::Runtime::new().unwrap();
    let client = first_rt.block_on(async {
        let client = instance(&server, "rt", false).await;
        assert_eq!(*client.fetch_query(&opts).await.unwrap(), "v1");
        client.flush_storage().await;
        client
    });
    drop(first_rt); // the bus listener, the client's bus task and the gc driver die here

    let second_rt = tokio::runtime::Runtime::new().unwrap();
    second_rt.block_on(async {
        // The next call restarts the background work on this runtime.
        assert_eq!(*client.fetch_query(&opts).await.unwrap(), "v1");
        // Give the restarted listener time to subscribe again.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    other_rt.block_on(async {
        other.invalidate_queries(key!["rt"]).await;
    });
    second_rt.block_on(async {
        eventually(
            "the invalidation reaches the restarted listener",
            Duration::from_secs(10),
            || {
                client
                    .get_query_state::<String>(&key!["rt", 1])
                    .is_some_and(|s| s.is_invalidated)
            },
        )
        .await;
        let fresh = client.fetch_query(&opts).await.unwrap();
        // Stale-while-revalidate: the next read after the refetch sees new data.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = client.fetch_query(&opts).await.unwrap();
        assert!(
            after.as_str() != "v1" || fresh.as_str() != "v1",
            "refetched after the invalidation"
        );
    });
}
