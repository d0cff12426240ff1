//! Watchdog stress test: 2 worker threads × thousands of tasks hammering random keys of
//! one small, bounded client for a fixed number of operations, with faults injected (fetch
//! errors, panicking fetch functions, panicking listeners, cancellations, removals).
//!
//! Checks, every round: every call returns (a real-time watchdog fails the test on a
//! hang), no task panics, once quiescent no fetch is left in flight and the entry count is
//! back within `max_queries`; at the end, no task leaked and resident memory is flat
//! between N and 2N rounds.
//!
//! Fast by default (a few seconds: 4 rounds × 1,000 tasks × 8 ops); `STACKQUERY_DEEP=1`
//! runs 20 rounds × 4,000 tasks × 10 ops. `STACKQUERY_SEED=N` fixes the operation mix
//! (thread scheduling still varies).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stackquery::{key, QueryClient, QueryFilter, QueryKey, QueryOptions, QueryState};

const MAX_QUERIES: usize = 64;
const KEYS: u64 = 512;
const GROUPS: u64 = 8;
/// Real time a round may take before the watchdog calls it a hang.
const WATCHDOG: Duration = Duration::from_secs(120);

fn deep() -> bool {
    std::env::var("STACKQUERY_DEEP").is_ok_and(|v| v != "0" && !v.is_empty())
}

/// Faults injected and operations run, for RELIABILITY.md.
#[derive(Default)]
struct Figures {
    ops: AtomicU64,
    fetch_calls: AtomicU64,
    fetch_errors: AtomicU64,
    fetch_panics: AtomicU64,
    listener_panics: AtomicU64,
    cancels: AtomicU64,
    removals: AtomicU64,
}

/// A small xorshift generator: deterministic operation mixes per task.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn key_of(i: u64) -> QueryKey {
    key!["s", i % GROUPS, i]
}

/// Options for key `i`: usually quick, sometimes slow, failing or panicking.
fn options(i: u64, figures: &Arc<Figures>) -> QueryOptions<u64> {
    let f = figures.clone();
    let calls = Arc::new(AtomicU64::new(0));
    QueryOptions::new(key_of(i), move || {
        let n = calls.fetch_add(1, Relaxed);
        f.fetch_calls.fetch_add(1, Relaxed);
        let roll = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i) % 100;
        let f = f.clone();
        async move {
            match roll {
                0..=1 => {
                    f.fetch_panics.fetch_add(1, Relaxed);
                    panic!("injected fetch panic");
                }
                2..=11 => {
                    f.fetch_errors.fetch_add(1, Relaxed);
                    Err(format!("injected error {n}"))
                }
                12..=31 => {
                    tokio::time::sleep(Duration::from_micros(200 + roll * 50)).await;
                    Ok(i * 1_000 + n)
                }
                _ => {
                    tokio::task::yield_now().await;
                    Ok(i * 1_000 + n)
                }
            }
        }
    })
    .stale_time(Duration::from_millis(2))
}

/// One task: `ops` random operations.
async fn worker(
    client: QueryClient,
    opts: Arc<Vec<QueryOptions<u64>>>,
    figures: Arc<Figures>,
    seed: u64,
    ops: u64,
) {
    let mut rng = Rng(seed | 1);
    let mut subs = Vec::new();
    for _ in 0..ops {
        figures.ops.fetch_add(1, Relaxed);
        let i = rng.below(KEYS);
        let o = &opts[i as usize];
        match rng.below(100) {
            0..=44 => {
                let _ = client.fetch_query(o).await;
            }
            45..=49 => {
                let _ = client.ensure_query_data(o).await;
            }
            50..=53 => {
                let _ = client.refetch_query(o).await;
            }
            54..=63 => {
                let _ = client.set_query_data(key_of(i), i);
            }
            64..=68 => {
                let _ = client.update_query_data(key_of(i), |old: Option<&u64>| old.map(|v| v + 1));
            }
            69..=72 => {
                client
                    .invalidate_queries(key!["s", rng.below(GROUPS)])
                    .await;
            }
            73..=75 => {
                figures.cancels.fetch_add(1, Relaxed);
                client.cancel_queries(QueryFilter::exact(key_of(i))).await;
            }
            76..=77 => {
                figures.removals.fetch_add(1, Relaxed);
                client.remove_queries(QueryFilter::exact(key_of(i)));
            }
            78 => {
                client.reset_queries(QueryFilter::exact(key_of(i)));
            }
            79..=88 => {
                let observer = client.watch(o);
                let f = figures.clone();
                let panicky = rng.below(10) == 0;
                let sub = observer.subscribe(move |s: &QueryState<u64>| {
                    if panicky && s.is_success() {
                        f.listener_panics.fetch_add(1, Relaxed);
                        panic!("injected listener panic");
                    }
                });
                // Half the tasks keep only the subscription (`watch(..).subscribe(..)`):
                // it must keep its observer alive and release the entry when dropped
                // (regressions.rs: `a_subscription_outliving_its_observer_handle_…`).
                let keep = (rng.below(2) == 0).then_some(observer);
                subs.push((sub, keep));
            }
            89..=94 => {
                if !subs.is_empty() {
                    let at = rng.below(subs.len() as u64) as usize;
                    drop(subs.swap_remove(at));
                }
            }
            _ => {
                let _ = client.get_query_state::<u64>(&key_of(i));
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Resident set size in bytes (Linux), from `/proc/self/statm`.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn many_tasks_on_two_threads_never_hang_panic_or_grow() {
    let (rounds, tasks, ops_per_task) = if deep() {
        (20_u64, 4_000_u64, 10_u64)
    } else {
        (4, 1_000, 8)
    };
    let seed: u64 = std::env::var("STACKQUERY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_CAFE);
    // Injected panics are expected: keep them out of the output (and skip the backtraces).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| m.starts_with("injected"));
        if !injected {
            default_hook(info);
        }
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let figures = Arc::new(Figures::default());
    let started = Instant::now();
    let mut rss_at = Vec::new();
    rt.block_on(async {
        let client = QueryClient::builder()
            .max_queries(MAX_QUERIES)
            .gc_time(Duration::from_millis(20))
            .retry(1)
            .retry_delay(|_| Duration::from_millis(1))
            .build();
        let opts: Arc<Vec<_>> = Arc::new((0..KEYS).map(|i| options(i, &figures)).collect());
        let baseline_tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        for round in 0..rounds {
            let handles: Vec<_> = (0..tasks)
                .map(|t| {
                    tokio::spawn(worker(
                        client.clone(),
                        opts.clone(),
                        figures.clone(),
                        seed ^ (round << 32) ^ (t + 1).wrapping_mul(0x2545_F491_4F6C_DD1D),
                        ops_per_task,
                    ))
                })
                .collect();
            let joined = tokio::time::timeout(WATCHDOG, futures::future::join_all(handles))
                .await
                .unwrap_or_else(|_| {
                    panic!("watchdog: round {round} did not finish within {WATCHDOG:?} (hang)")
                });
            for (t, r) in joined.into_iter().enumerate() {
                if let Err(e) = r {
                    panic!("round {round}: task {t} failed: {e}");
                }
            }
            // Quiescent: every fetch settles (the longest is a few ms plus a retry).
            let quiet = tokio::time::timeout(WATCHDOG, async {
                while client.is_fetching(QueryFilter::all()) > 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
            assert!(quiet.is_ok(), "round {round}: fetches never settled");
            // Observers were dropped with their tasks: nothing is pinned any more.
            let entries = client.stats().entries;
            assert!(
                entries <= MAX_QUERIES,
                "round {round}: {entries} entries once quiescent (max_queries {MAX_QUERIES})"
            );
            if let Some(r) = rss() {
                rss_at.push(r);
            }
        }
        client.clear();
        assert_eq!(client.stats().entries, 0);
        // Fetch tasks, polls and observers are gone: only the gc task may remain.
        let leak = tokio::time::timeout(WATCHDOG, async {
            loop {
                let alive = tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks();
                if alive <= baseline_tasks + 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(leak.is_ok(), "tasks leaked");
        let s = client.stats();
        eprintln!(
            "stress: {rounds} rounds × {tasks} tasks × {ops_per_task} ops = {} ops in {:.1?} \
             ({} fetch calls: {} injected errors, {} injected fetch panics; {} injected \
             listener panics; {} cancels; {} removals; {} evictions; {} gc collections)",
            figures.ops.load(Relaxed),
            started.elapsed(),
            figures.fetch_calls.load(Relaxed),
            figures.fetch_errors.load(Relaxed),
            figures.fetch_panics.load(Relaxed),
            figures.listener_panics.load(Relaxed),
            figures.cancels.load(Relaxed),
            figures.removals.load(Relaxed),
            s.evictions,
            s.gc_collections,
        );
    });
    // Memory flat: what N more rounds add after the first N is noise, not a leak.
    if rss_at.len() >= 4 {
        let half = rss_at.len() / 2;
        let (at_n, at_2n) = (rss_at[half - 1], rss_at[rss_at.len() - 1]);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        eprintln!(
            "stress: RSS after {half} rounds {:.1} MiB, after {} rounds {:.1} MiB",
            mib(at_n),
            rss_at.len(),
            mib(at_2n)
        );
        let allowed = (at_n / 4).max(16 * 1024 * 1024);
        assert!(
            at_2n <= at_n + allowed,
            "RSS grew from {:.1} MiB to {:.1} MiB between N and 2N rounds",
            mib(at_n),
            mib(at_2n)
        );
    }
}
