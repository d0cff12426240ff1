//! Cold-key deduplication: N concurrent callers (spawned tasks on a 2-worker runtime) ask
//! for one key that is not cached; the fetch sleeps 10 ms. Every contender must run the
//! fetch once. The figure is the wall time from the first spawn until every caller has
//! its value, minus the fetch's own measured duration, divided by N: what each extra
//! caller costs beyond the 10 ms.
//!
//! [`scaling`] runs the 1,000-caller case on 1, 2 and 4 workers (`--only scaling`).

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache as MokaCache;
use stackquery::{key, QueryClient, QueryOptions};
use stackquery_bench::contenders::SingleFlight;
use stackquery_bench::stats::median;

use super::{
    multi_thread_with, on_worker, Never, FRESH_FOR, HAND, MOKA_GET_WITH, MOKA_TRY_GET_WITH,
    SCALING, SQ_FETCH,
};
use crate::report::{curve, fmt_count, fmt_num, Better, Row, Section};
use crate::Cfg;

const FETCH: Duration = Duration::from_millis(10);

/// What the fetch function saw: how often it ran and how long its sleep took.
#[derive(Default)]
struct Probe {
    fetches: AtomicUsize,
    fetch_ns: AtomicU64,
}

async fn slow_fetch(p: Arc<Probe>) -> String {
    p.fetches.fetch_add(1, Ordering::SeqCst);
    let t = Instant::now();
    tokio::time::sleep(FETCH).await;
    p.fetch_ns
        .fetch_max(t.elapsed().as_nanos() as u64, Ordering::SeqCst);
    "a user record".to_string()
}

/// Spawns `n` callers made by `call` and waits for all of them; returns the wall time.
async fn callers<F, Fut>(n: usize, call: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..n).map(|_| tokio::spawn(call())).collect();
    for h in handles {
        black_box(h.await.expect("caller panicked"));
    }
    start.elapsed()
}

/// One repetition's outcome.
struct Rep {
    total: Duration,
    probe: Arc<Probe>,
    /// stackquery's own counters: (fetches, callers that joined the flight, hits).
    own_count: Option<(u64, u64, u64)>,
}

async fn rep_stackquery(n: usize) -> Rep {
    let probe = Arc::new(Probe::default());
    let client = QueryClient::new();
    let p = probe.clone();
    let opts = Arc::new(
        QueryOptions::new(key!["cold", 1], move || {
            let p = p.clone();
            async move { Ok::<_, Never>(slow_fetch(p).await) }
        })
        .stale_time(FRESH_FOR),
    );
    let total = callers(n, || {
        let c = client.clone();
        let o = opts.clone();
        async move { c.fetch_query(&o).await.expect("fetch") }
    })
    .await;
    let st = client.stats();
    Rep {
        total,
        probe,
        own_count: Some((st.fetches, st.dedup_joins, st.hits)),
    }
}

async fn rep_moka(n: usize, try_get: bool) -> Rep {
    let probe = Arc::new(Probe::default());
    let cache: MokaCache<u64, Arc<String>> = MokaCache::new(1_000);
    let total = callers(n, || {
        let m = cache.clone();
        let p = probe.clone();
        async move {
            if try_get {
                m.try_get_with(
                    1,
                    async move { Ok::<_, Never>(Arc::new(slow_fetch(p).await)) },
                )
                .await
                .expect("fetch")
            } else {
                m.get_with(1, async move { Arc::new(slow_fetch(p).await) })
                    .await
            }
        }
    })
    .await;
    Rep {
        total,
        probe,
        own_count: None,
    }
}

async fn rep_hand(n: usize) -> Rep {
    let probe = Arc::new(Probe::default());
    let map: Arc<SingleFlight<u64, Arc<String>>> = Arc::new(SingleFlight::new());
    let total = callers(n, || {
        let s = map.clone();
        let p = probe.clone();
        async move {
            s.get_or_fetch(&1, move || async move { Arc::new(slow_fetch(p).await) })
                .await
        }
    })
    .await;
    Rep {
        total,
        probe,
        own_count: None,
    }
}

/// `n` callers per run, `reps` runs of each of `contenders` on a runtime of `workers`.
fn section(
    id: &'static str,
    title: String,
    n: usize,
    reps: usize,
    workers: usize,
    contenders: &[&str],
) -> Section {
    let mut s = Section::new(id, title, "ns/caller", Better::Lower);
    s.reference(SQ_FETCH);
    let rt = multi_thread_with(workers);
    let mut run = |name: &str, make: &dyn Fn() -> Rep| {
        let mut overhead = Vec::with_capacity(reps);
        let mut totals = Vec::with_capacity(reps);
        let mut fetches = Vec::with_capacity(reps);
        let mut joined = Vec::new();
        for _ in 0..reps {
            let r = make();
            let fetch_ns = r.probe.fetch_ns.load(Ordering::SeqCst) as f64;
            let total_ns = r.total.as_nanos() as f64;
            overhead.push((total_ns - fetch_ns).max(0.0) / n as f64);
            totals.push(total_ns / 1e6);
            let count = r.probe.fetches.load(Ordering::SeqCst);
            if let Some((own, joins, hits)) = r.own_count {
                assert_eq!(own as usize, count, "{name}: stats disagree with the probe");
                joined.push((joins as f64, hits as f64));
            }
            fetches.push(count);
        }
        let all_one = fetches.iter().all(|&f| f == 1);
        let fetch_note = if all_one {
            "1 fetch in every run".to_string()
        } else {
            format!("fetches per run: {fetches:?}")
        };
        let split = if joined.is_empty() {
            String::new()
        } else {
            let j: Vec<f64> = joined.iter().map(|x| x.0).collect();
            let h: Vec<f64> = joined.iter().map(|x| x.1).collect();
            format!(
                "; per run (median) {} callers joined the flight, {} arrived after it and hit",
                fmt_count(median(&j)),
                fmt_count(median(&h))
            )
        };
        s.push(Row::new(name, overhead).note(format!(
            "{fetch_note}; wall time {:.1} ms (median){split}",
            median(&totals)
        )));
    };
    for &name in contenders {
        match name {
            SQ_FETCH => run(name, &|| on_worker(&rt, rep_stackquery(n))),
            MOKA_GET_WITH => run(name, &|| on_worker(&rt, rep_moka(n, false))),
            MOKA_TRY_GET_WITH => run(name, &|| on_worker(&rt, rep_moka(n, true))),
            HAND => run(name, &|| on_worker(&rt, rep_hand(n))),
            other => unreachable!("no dedup run for {other}"),
        }
    }
    s.note(format!(
        "Callers are tasks spawned by one driver task on a {workers}-worker runtime; overhead = \
         (wall time − the fetch's measured sleep) / {n}. Spawning and joining a task is \
         included for every contender alike. {reps} runs each. When spawning the callers \
         takes longer than the 10 ms fetch (100,000 callers), the late callers find the \
         value cached: the figure then mixes the join path and the hit path, for every \
         contender alike (stackquery's counters show the split)."
    ));
    s
}

fn title(n: usize) -> String {
    format!(
        "Cold-key deduplication, {} concurrent callers, 10 ms fetch",
        fmt_num(n as f64)
    )
}

pub(crate) fn run(cfg: &Cfg) -> Vec<Section> {
    let all = [SQ_FETCH, MOKA_GET_WITH, MOKA_TRY_GET_WITH, HAND];
    vec![
        section(
            "dedup_1k",
            title(1_000),
            1_000,
            cfg.dedup_small_reps,
            2,
            &all,
        ),
        section(
            "dedup_100k",
            title(100_000),
            100_000,
            cfg.dedup_large_reps,
            2,
            &all,
        ),
    ]
}

/// Dedup scaling: the 1,000-caller run (every caller joins the flight) on runtimes of 1, 2
/// and 4 workers, one section per worker count; stackquery, moka `get_with` and the
/// hand-written map.
pub(crate) fn scaling(cfg: &Cfg) -> Vec<Section> {
    const N: usize = 1_000;
    let mut out: Vec<Section> = SCALING
        .iter()
        .map(|&(workers, _, id)| {
            section(
                id,
                format!(
                    "Dedup scaling: {} callers on {workers} worker thread{}, 10 ms fetch",
                    fmt_num(N as f64),
                    if workers == 1 { "" } else { "s" }
                ),
                N,
                cfg.dedup_small_reps,
                workers,
                &[SQ_FETCH, MOKA_GET_WITH, HAND],
            )
        })
        .collect();
    let labels: Vec<String> = SCALING.iter().map(|(w, _, _)| w.to_string()).collect();
    let table = curve(&out, &labels);
    if let Some(last) = out.last_mut() {
        last.note(format!(
            "This machine has 2 cores: 4 workers time-share them.\n\nThe curve (median \
             ns/caller by worker count; lower is better):\n\n{table}"
        ));
    }
    out
}
