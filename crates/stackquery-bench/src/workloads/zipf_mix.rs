//! Zipf-distributed reads over 1,000,000 keys into caches bounded to 100,000 entries: each
//! read is the library's fetch-on-miss call with a fetch that is ready at once, so a miss
//! costs the library's miss path and no I/O. One task on a 2-worker runtime. The caches
//! are warmed with one pass of the same length first; the timed runs then continue on
//! the warm cache with fresh samples.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use moka::future::Cache as MokaCache;
use stackquery::{key, QueryClient, QueryKey, QueryOptions};
use stackquery_bench::contenders::{Floor, SingleFlight};
use stackquery_bench::zipf::{SplitMix64, Zipf};

use super::{multi_thread, on_worker, Never, FLOOR, FRESH_FOR, HAND, MOKA_GET_WITH, SQ_FETCH};
use crate::report::{fmt_num, Better, Row, Section};
use crate::Cfg;

/// Per-run outcome: ops/s and the number of misses.
type Outcome = (f64, u64);

pub(crate) fn run(cfg: &Cfg) -> Section {
    let universe = cfg.zipf_universe;
    let bound = cfg.zipf_bound;
    let ops = cfg.zipf_ops;
    let mut s = Section::new(
        "zipf",
        format!(
            "Zipf (s = {}) reads over {} keys, bound {} entries",
            cfg.zipf_s,
            fmt_num(universe as f64),
            fmt_num(bound as f64)
        ),
        "ops/s",
        Better::Higher,
    );
    s.reference(SQ_FETCH);
    let zipf = Zipf::new(universe, cfg.zipf_s);
    let ideal = zipf.ideal_hit_ratio(bound);
    let mut rng = SplitMix64::new(0x5eed);
    let warm: Arc<Vec<u32>> = Arc::new(zipf.samples(&mut rng, ops));
    let runs: Arc<Vec<Vec<u32>>> = Arc::new(
        (0..cfg.zipf_reps)
            .map(|_| zipf.samples(&mut rng, ops))
            .collect(),
    );
    let keys: Arc<Vec<QueryKey>> = Arc::new((0..universe).map(|i| key!["z", i]).collect());
    let rt = multi_thread();

    let summarize = |s: &mut Section, name: &str, outcomes: Vec<Outcome>, extra: &str| {
        let misses: u64 = outcomes.iter().map(|o| o.1).sum();
        let total = (ops * outcomes.len()) as f64;
        let hit = 1.0 - misses as f64 / total;
        s.push(
            Row::new(name, outcomes.iter().map(|o| o.0).collect())
                .note(format!("hit ratio {:.1}%{extra}", hit * 100.0)),
        );
    };

    // stackquery: QueryOptions are built before timing (one per key, like an app that
    // keeps them), the client is bounded with max_queries.
    {
        let opts: Arc<Vec<QueryOptions<u64>>> = Arc::new(
            keys.iter()
                .enumerate()
                .map(|(i, k)| {
                    QueryOptions::new(k.clone(), move || async move { Ok::<_, Never>(i as u64) })
                        .stale_time(FRESH_FOR)
                })
                .collect(),
        );
        let client = QueryClient::builder().max_queries(bound).build();
        let (c, o, w, r) = (client.clone(), opts.clone(), warm.clone(), runs.clone());
        let outcomes = on_worker(&rt, async move {
            for &i in w.iter() {
                std::hint::black_box(c.fetch_query(&o[i as usize]).await.expect("fetch"));
            }
            let mut out = Vec::new();
            for run in r.iter() {
                let before = c.stats();
                let t = Instant::now();
                for &i in run {
                    std::hint::black_box(c.fetch_query(&o[i as usize]).await.expect("fetch"));
                }
                let rate = ops as f64 / t.elapsed().as_secs_f64();
                let after = c.stats();
                out.push((rate, (ops as u64) - (after.hits - before.hits)));
            }
            out
        });
        let st = client.stats();
        let extra = format!(
            "; {} entries at the end, {} evictions",
            fmt_num(st.entries as f64),
            fmt_num(st.evictions as f64)
        );
        summarize(&mut s, SQ_FETCH, outcomes, &extra);
    }

    // moka: get_with, bounded with max_capacity.
    {
        let (k, w, r) = (keys.clone(), warm.clone(), runs.clone());
        let outcomes = on_worker(&rt, async move {
            let cache: MokaCache<QueryKey, Arc<u64>> = MokaCache::new(bound as u64);
            let misses = AtomicU64::new(0);
            let read = |i: u32| {
                let misses = &misses;
                cache.get_with_by_ref(&k[i as usize], async move {
                    misses.fetch_add(1, Ordering::Relaxed);
                    Arc::new(u64::from(i))
                })
            };
            for &i in w.iter() {
                std::hint::black_box(read(i).await);
            }
            let mut out = Vec::new();
            for run in r.iter() {
                let before = misses.load(Ordering::Relaxed);
                let t = Instant::now();
                for &i in run {
                    std::hint::black_box(read(i).await);
                }
                let rate = ops as f64 / t.elapsed().as_secs_f64();
                out.push((rate, misses.load(Ordering::Relaxed) - before));
            }
            cache.run_pending_tasks().await;
            let _ = cache.entry_count();
            out
        });
        summarize(&mut s, MOKA_GET_WITH, outcomes, "");
    }

    // Unbounded references: they keep every key they ever saw.
    {
        let (k, w, r) = (keys.clone(), warm.clone(), runs.clone());
        let outcomes = on_worker(&rt, async move {
            let map: SingleFlight<QueryKey, Arc<u64>> = SingleFlight::new();
            let misses = Arc::new(AtomicU64::new(0));
            let read = |i: u32| {
                let misses = misses.clone();
                map.get_or_fetch(&k[i as usize], move || async move {
                    misses.fetch_add(1, Ordering::Relaxed);
                    Arc::new(u64::from(i))
                })
            };
            for &i in w.iter() {
                std::hint::black_box(read(i).await);
            }
            let mut out = Vec::new();
            for run in r.iter() {
                let before = misses.load(Ordering::Relaxed);
                let t = Instant::now();
                for &i in run {
                    std::hint::black_box(read(i).await);
                }
                let rate = ops as f64 / t.elapsed().as_secs_f64();
                out.push((rate, misses.load(Ordering::Relaxed) - before));
            }
            out
        });
        summarize(&mut s, HAND, outcomes, " (no bound: reference only)");
    }
    {
        let (k, w, r) = (keys.clone(), warm.clone(), runs.clone());
        let outcomes = on_worker(&rt, async move {
            let map: Floor<QueryKey, Arc<u64>> = Floor::new();
            // Returns whether the read missed.
            let read = |i: u32| match map.get(&k[i as usize]) {
                Some(v) => {
                    std::hint::black_box(v);
                    false
                }
                None => {
                    map.insert(k[i as usize].clone(), Arc::new(u64::from(i)));
                    true
                }
            };
            for &i in w.iter() {
                read(i);
            }
            let mut out = Vec::new();
            for run in r.iter() {
                let t = Instant::now();
                let mut misses = 0u64;
                for &i in run {
                    misses += u64::from(read(i));
                }
                let rate = ops as f64 / t.elapsed().as_secs_f64();
                out.push((rate, misses));
            }
            out
        });
        summarize(
            &mut s,
            FLOOR,
            outcomes,
            " (get, insert on miss; no bound: reference only)",
        );
    }
    s.note(format!(
        "{} reads per run after a warm-up pass of the same length; {} runs each. The best \
         hit ratio any cache of {} entries can reach on this distribution (keeping the most \
         popular keys) is {:.1}%.",
        fmt_num(ops as f64),
        cfg.zipf_reps,
        fmt_num(bound as f64),
        ideal * 100.0
    ));
    s
}
