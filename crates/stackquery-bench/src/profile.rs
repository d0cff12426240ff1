//! `--profile <loop>`: one of stackquery's benchmark loops alone, long enough to sample
//! with `perf record` or to count instructions with `valgrind --tool=callgrind` (no
//! contender runs beside it, and nothing is printed but a line of timing).
//!
//! ```text
//! CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release -p stackquery-bench
//! perf record -g -- target/release/stackquery-bench --profile hit
//! valgrind --tool=callgrind target/release/stackquery-bench --profile hit --ops 200000
//! ```
//!
//! Per-op instruction counts: run callgrind at two `--ops` and divide the difference of
//! the totals by the difference of the ops (setup cancels out).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use stackquery::{key, QueryClient, QueryKey, QueryOptions};
use stackquery_bench::contenders::{Floor, SingleFlight};

use crate::workloads::{current_thread, multi_thread, on_worker, Never, FRESH_FOR};

/// The loops: fresh hits through `fetch_query` or `get_query_data` (1,024 keys
/// round-robin), a fill of fresh keys through `fetch_query` or `set_query_data`,
/// cold-key dedup rounds of 100,000 callers with a 10 ms fetch (`dedup`), and rounds of
/// 1,000 callers with a 300 ms fetch (`join`: long enough that every caller joins the
/// flight even under valgrind, where spawning is ~50× slower).
/// `join-hand` is `join` on the hand-written single-flight map, for comparison.
/// `hit-new-opts` is `hit` with the options built for every call
/// (`QueryOptions::new(key!["user", id], move || load(id))`, issue 13), and
/// `floor-key-clone` its reference: the `RwLock<HashMap>` floor, the key cloned per lookup
/// (`floor-key-built`: the key built per lookup with `key!`, as the options are).
/// `hit-events` and `fill-events` are `hit` and `fill` with a subscriber of the event
/// stream held (issue 15: the cost of the stream when someone listens). `fill-weighed`
/// is `fill` on a client with a weight bound (never reached), each query with a weigher:
/// the cost of weighing every fill.
pub(crate) const LOOPS: &[&str] = &[
    "hit",
    "hit-events",
    "fill-events",
    "get",
    "hit-new-opts",
    "floor-key-clone",
    "floor-key-built",
    "fill",
    "fill-weighed",
    "set",
    "dedup",
    "join",
    "join-hand",
];

pub(crate) fn run(what: &str, ops: Option<usize>) {
    let t = Instant::now();
    let ops = match what {
        "hit" | "get" => hits(what == "hit", false, ops.unwrap_or(50_000_000)),
        "hit-events" => hits(true, true, ops.unwrap_or(50_000_000)),
        "fill-events" => fill(true, true, ops.unwrap_or(2_000_000)),
        "hit-new-opts" => hits_new_opts(ops.unwrap_or(20_000_000)),
        "floor-key-clone" => floor_key(false, ops.unwrap_or(50_000_000)),
        "floor-key-built" => floor_key(true, ops.unwrap_or(50_000_000)),
        "fill" | "set" => fill(what == "fill", false, ops.unwrap_or(2_000_000)),
        "fill-weighed" => fill_weighed(ops.unwrap_or(2_000_000)),
        "dedup" => dedup(ops.unwrap_or(1_000_000), 100_000, 10),
        "join" => dedup(ops.unwrap_or(10_000), 1_000, 300),
        "join-hand" => join_hand(ops.unwrap_or(10_000)),
        other => {
            eprintln!("unknown profile loop {other:?}; one of {LOOPS:?}");
            std::process::exit(2);
        }
    };
    let el = t.elapsed();
    println!(
        "profile {what}: {ops} ops in {:.2} s ({:.1} ns/op, setup included)",
        el.as_secs_f64(),
        el.as_nanos() as f64 / ops as f64
    );
}

/// `events`: with a subscriber of the event stream held (never read: the worst case,
/// a subscriber that lags), as issue 15 asks the hit path's cost with and without one.
fn hits(fetch: bool, events: bool, ops: usize) -> usize {
    let rt = current_thread();
    let client = QueryClient::new();
    let _events = events.then(|| client.subscribe_events());
    let keys: Vec<QueryKey> = (0..1024).map(|i| key!["user", i]).collect();
    let opts: Vec<QueryOptions<String>> = keys
        .iter()
        .map(|k| {
            QueryOptions::new(k.clone(), || async {
                Ok::<_, Never>("a user record".into())
            })
            .stale_time(FRESH_FOR)
        })
        .collect();
    rt.block_on(async {
        for o in &opts {
            client.fetch_query(o).await.expect("prime");
        }
        for i in 0..ops {
            if fetch {
                black_box(client.fetch_query(&opts[i & 1023]).await.expect("hit"));
            } else {
                black_box(client.get_query_data::<String>(&keys[i & 1023]));
            }
        }
    });
    ops
}

/// Fresh hits through `fetch_query` with the options built for every call (and dropped
/// after it), on the keys `hits` uses.
fn hits_new_opts(ops: usize) -> usize {
    let rt = current_thread();
    let client = QueryClient::new();
    rt.block_on(async {
        for i in 0..1024 {
            client
                .fetch_query(&crate::workloads::hit::opts_for(i))
                .await
                .expect("prime");
        }
        for i in 0..ops {
            let opts = crate::workloads::hit::opts_for(black_box(i & 1023));
            black_box(client.fetch_query(&opts).await.expect("hit"));
        }
    });
    assert_eq!(client.stats().fetches, 1024, "a fetch during the hit loop");
    ops
}

/// The floors of `hit-new-opts`: a read-locked `HashMap` lookup with the key cloned out of
/// the key table first, or built with `key!` (`build`).
fn floor_key(build: bool, ops: usize) -> usize {
    let keys: Vec<QueryKey> = (0..1024).map(|i| key!["user", i]).collect();
    let floor: Floor<QueryKey, Arc<String>> = Floor::new();
    let value = Arc::new("a user record".to_string());
    for k in &keys {
        floor.insert(k.clone(), value.clone());
    }
    for i in 0..ops {
        let key = if build {
            key!["user", black_box(i & 1023)]
        } else {
            black_box(&keys[i & 1023]).clone()
        };
        black_box(floor.get(&key).expect("hit"));
    }
    ops
}

fn fill(fetch: bool, events: bool, ops: usize) -> usize {
    const ROUND: usize = 100_000;
    let rt = multi_thread();
    let keys: Arc<Vec<QueryKey>> = Arc::new((0..ROUND).map(|i| key!["fill", i]).collect());
    let opts: Arc<Vec<QueryOptions<u64>>> = Arc::new(
        keys.iter()
            .enumerate()
            .map(|(i, k)| {
                QueryOptions::new(k.clone(), move || async move { Ok::<_, Never>(i as u64) })
                    .stale_time(FRESH_FOR)
            })
            .collect(),
    );
    let rounds = ops.div_ceil(ROUND);
    for _ in 0..rounds {
        let (k, o) = (keys.clone(), opts.clone());
        let client = on_worker(&rt, async move {
            let client = QueryClient::new();
            let _events = events.then(|| client.subscribe_events());
            for i in 0..ROUND {
                if fetch {
                    black_box(client.fetch_query(&o[i]).await.expect("fetch"));
                } else {
                    client.set_query_data(k[i].clone(), i as u64).expect("set");
                }
            }
            client
        });
        drop(client);
    }
    rounds * ROUND
}

/// `fill` through `fetch_query` under `max_weight` (never reached), every query weighed
/// by a weigher of its own.
fn fill_weighed(ops: usize) -> usize {
    const ROUND: usize = 100_000;
    let rt = multi_thread();
    let opts: Arc<Vec<QueryOptions<u64>>> = Arc::new(
        (0..ROUND)
            .map(|i| {
                QueryOptions::new(
                    key!["fill", i],
                    move || async move { Ok::<_, Never>(i as u64) },
                )
                .stale_time(FRESH_FOR)
                .weigher(|_: &u64| 8)
            })
            .collect(),
    );
    let rounds = ops.div_ceil(ROUND);
    for _ in 0..rounds {
        let o = opts.clone();
        let client = on_worker(&rt, async move {
            let client = QueryClient::builder().max_weight(u64::MAX).build();
            for q in o.iter() {
                black_box(client.fetch_query(q).await.expect("fetch"));
            }
            assert_eq!(client.stats().total_weight, 8 * ROUND as u64);
            client
        });
        drop(client);
    }
    rounds * ROUND
}

fn dedup(ops: usize, callers: usize, fetch_ms: u64) -> usize {
    let rt = multi_thread();
    let rounds = ops.div_ceil(callers);
    for _ in 0..rounds {
        on_worker(&rt, async move {
            let client = QueryClient::new();
            let opts = Arc::new(
                QueryOptions::new(key!["cold", 1], move || async move {
                    tokio::time::sleep(std::time::Duration::from_millis(fetch_ms)).await;
                    Ok::<_, Never>("a user record".to_string())
                })
                .stale_time(FRESH_FOR),
            );
            let handles: Vec<_> = (0..callers)
                .map(|_| {
                    let (c, o) = (client.clone(), opts.clone());
                    tokio::spawn(async move { c.fetch_query(&o).await.expect("fetch") })
                })
                .collect();
            for h in handles {
                black_box(h.await.expect("caller"));
            }
            let st = client.stats();
            assert_eq!(st.fetches, 1);
            eprintln!(
                "round: {} misses, {} joined the flight, {} hits",
                st.misses, st.dedup_joins, st.hits
            );
        });
    }
    rounds * callers
}

fn join_hand(ops: usize) -> usize {
    const CALLERS: usize = 1_000;
    let rt = multi_thread();
    let rounds = ops.div_ceil(CALLERS);
    for _ in 0..rounds {
        on_worker(&rt, async move {
            let map: Arc<SingleFlight<u64, Arc<String>>> = Arc::new(SingleFlight::new());
            let handles: Vec<_> = (0..CALLERS)
                .map(|_| {
                    let m = map.clone();
                    tokio::spawn(async move {
                        m.get_or_fetch(&1, || async {
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            Arc::new("a user record".to_string())
                        })
                        .await
                    })
                })
                .collect();
            for h in handles {
                black_box(h.await.expect("caller"));
            }
        });
    }
    rounds * CALLERS
}
