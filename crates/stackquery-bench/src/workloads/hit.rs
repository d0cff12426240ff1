//! Fresh-hit latency: every contender holds the same 1,024 keys with fresh values; the
//! loop reads them round-robin (1 task on a current-thread runtime), then 2 OS threads
//! read the same 8 hot keys at once, each on its own current-thread runtime.
//!
//! Each operation returns the cached `Arc` (cloned) and drops it, for every contender.
//!
//! A third section (issue 13) times the hit with `QueryOptions::new(key!["user", id], f)`
//! built for every call, as the README writes it, next to the same hit with held options
//! and the floor with the key cloned, or built with `key!`, for every call.
//!
//! [`scaling`] runs the hot-key loop on 1, 2 and 4 threads (`--only scaling`).

use std::sync::{Arc, Barrier};
use std::time::Instant;

use moka::future::Cache as MokaCache;
use stackquery::{key, QueryClient, QueryKey, QueryOptions};
use stackquery_bench::contenders::{Floor, FloorPrehashed, SingleFlight};
use stackquery_bench::stats::{batch_spans, median, ns_per_op};

use super::{
    current_thread, Never, FLOOR, FLOOR_KEY_BUILT, FLOOR_KEY_CLONE, FLOOR_PRE, FRESH_FOR, HAND,
    MOKA_GET, MOKA_GET_WITH, SCALING, SQ_FETCH, SQ_FETCH_NEW_OPTS, SQ_GET,
};
use crate::report::{curve, fmt_num, Better, Row, Section};
use crate::Cfg;

const KEYS: usize = 1024;
const MASK: usize = KEYS - 1;
/// Hot keys of the two-thread run (shared by both threads).
const HOT: usize = 8;

type V = Arc<String>;

struct Fixture {
    keys: Vec<QueryKey>,
    opts: Vec<QueryOptions<String>>,
    client: QueryClient,
    moka: MokaCache<QueryKey, V>,
    hand: SingleFlight<QueryKey, V>,
    floor: Floor<QueryKey, V>,
    floor_pre: FloorPrehashed<QueryKey, V>,
}

fn value() -> String {
    "a user record".to_string()
}

/// The fetch function of the options built per call (never called: every read is a hit).
async fn load_user(_id: usize) -> Result<String, Never> {
    Ok(value())
}

/// The options an application builds for every call: a fresh key and a closure that
/// captures the id (the README's pattern). Not inlined, so that no loop folds the building
/// into its own code, and `--profile hit-new-opts` shows the building as one function.
#[inline(never)]
pub(crate) fn opts_for(id: usize) -> QueryOptions<String> {
    QueryOptions::new(key!["user", id], move || load_user(id)).stale_time(FRESH_FOR)
}

fn fixture() -> Fixture {
    let keys: Vec<QueryKey> = (0..KEYS).map(|i| key!["user", i]).collect();
    let opts: Vec<QueryOptions<String>> = keys
        .iter()
        .map(|k| {
            QueryOptions::new(k.clone(), || async { Ok::<_, Never>(value()) }).stale_time(FRESH_FOR)
        })
        .collect();
    let client = QueryClient::new();
    let moka = MokaCache::new(10 * KEYS as u64);
    let hand = SingleFlight::new();
    let floor = Floor::new();
    let floor_pre = FloorPrehashed::new();
    let rt = current_thread();
    rt.block_on(async {
        for (k, o) in keys.iter().zip(&opts) {
            // stackquery: a real fetch, so the entry holds its options like in an app.
            client.fetch_query(o).await.expect("prime");
            let v: V = Arc::new(value());
            moka.insert(k.clone(), v.clone()).await;
            hand.insert(k.clone(), v.clone());
            floor.insert(k.clone(), v.clone());
            floor_pre.insert(k.clone(), v);
        }
        moka.run_pending_tasks().await;
    });
    Fixture {
        keys,
        opts,
        client,
        moka,
        hand,
        floor,
        floor_pre,
    }
}

/// Runs the same hit loop on `threads` OS threads at once (each with its own
/// current-thread runtime); every thread's batch starts at a shared barrier. `$i` is the
/// call counter of the thread and `$body` the async operation. Returns the start and end
/// of each timed batch, per thread.
macro_rules! threads {
    ($cfg:expr, $threads:expr, |$i:ident| $body:expr) => {{
        let cfg: &Cfg = $cfg;
        let threads: usize = $threads;
        let barrier = Barrier::new(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let rt = current_thread();
                        rt.block_on(batch_spans(
                            cfg.hit_reps,
                            cfg.hit_batch,
                            || {
                                barrier.wait();
                            },
                            move |n| {
                                // Threads start on different hot keys.
                                let $i = n + t * 3;
                                async move { $body }
                            },
                        ))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("bench thread panicked"))
                .collect::<Vec<Vec<(Instant, Instant)>>>()
        })
    }};
}

pub(crate) fn run(cfg: &Cfg) -> Vec<Section> {
    let fx = fixture();
    let (c, o, k) = (&fx.client, &fx.opts, &fx.keys);
    let (m, h, f, fp) = (&fx.moka, &fx.hand, &fx.floor, &fx.floor_pre);
    let stats_before = c.stats();

    // --- 1 task -----------------------------------------------------------------------
    let mut one = Section::new(
        "hit_1task",
        "Fresh-hit latency, 1 task (1,024 keys read round-robin)",
        "ns/op",
        Better::Lower,
    );
    one.reference(SQ_FETCH);
    let single = |rows: &mut Section, name: &str, samples: Vec<f64>| {
        rows.push(Row::new(name, samples));
    };
    let rt = current_thread();
    single(
        &mut one,
        SQ_FETCH,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move { c.fetch_query(&o[i & MASK]).await.expect("hit") },
        )),
    );
    single(
        &mut one,
        SQ_GET,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move { c.get_query_data::<String>(&k[i & MASK]).expect("hit") },
        )),
    );
    single(
        &mut one,
        MOKA_GET,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move { m.get(&k[i & MASK]).await.expect("hit") },
        )),
    );
    single(
        &mut one,
        MOKA_GET_WITH,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move {
                m.get_with_by_ref(&k[i & MASK], async { Arc::new(value()) })
                    .await
            },
        )),
    );
    single(
        &mut one,
        HAND,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move {
                h.get_or_fetch(&k[i & MASK], || async { Arc::new(value()) })
                    .await
            },
        )),
    );
    single(
        &mut one,
        FLOOR,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move { f.get(&k[i & MASK]).expect("hit") },
        )),
    );
    single(
        &mut one,
        FLOOR_PRE,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move { fp.get(&k[i & MASK]).expect("hit") },
        )),
    );
    drop(rt);

    // --- 2 OS threads on 8 hot keys -----------------------------------------------------
    let mut two = Section::new(
        "hit_2threads",
        "Fresh-hit latency, 2 OS threads on 8 hot keys (per thread)",
        "ns/op",
        Better::Lower,
    );
    two.reference(SQ_FETCH);
    let batch = cfg.hit_batch as f64;
    let mut both = |name: &str, spans: Vec<Vec<(Instant, Instant)>>| {
        // Sample r: the two threads' batches r ran side by side; ns/op per thread is
        // their mean, and the aggregate throughput 2 / that.
        let per_thread: Vec<Vec<f64>> = spans
            .iter()
            .map(|t| {
                t.iter()
                    .map(|(a, b)| (*b - *a).as_nanos() as f64 / batch)
                    .collect()
            })
            .collect();
        let reps = per_thread[0].len();
        let samples: Vec<f64> = (0..reps)
            .map(|r| per_thread.iter().map(|t| t[r]).sum::<f64>() / per_thread.len() as f64)
            .collect();
        let mops = per_thread.len() as f64 * 1e3 / median(&samples);
        two.push(Row::new(name, samples).note(format!("≈ {mops:.1} M ops/s in total")));
    };
    both(
        SQ_FETCH,
        threads!(cfg, 2, |i| c.fetch_query(&o[i % HOT]).await.expect("hit")),
    );
    both(
        SQ_GET,
        threads!(cfg, 2, |i| c
            .get_query_data::<String>(&k[i % HOT])
            .expect("hit")),
    );
    both(
        MOKA_GET,
        threads!(cfg, 2, |i| m.get(&k[i % HOT]).await.expect("hit")),
    );
    both(
        MOKA_GET_WITH,
        threads!(cfg, 2, |i| m
            .get_with_by_ref(&k[i % HOT], async { Arc::new(value()) })
            .await),
    );
    both(
        HAND,
        threads!(cfg, 2, |i| h
            .get_or_fetch(&k[i % HOT], || async { Arc::new(value()) })
            .await),
    );
    both(
        FLOOR,
        threads!(cfg, 2, |i| f.get(&k[i % HOT]).expect("hit")),
    );
    both(
        FLOOR_PRE,
        threads!(cfg, 2, |i| fp.get(&k[i % HOT]).expect("hit")),
    );

    // --- 1 task, options built per call (issue 13) ---------------------------------------
    let mut per_call = Section::new(
        "hit_new_opts",
        "Fresh-hit latency with options built per call, 1 task (1,024 keys round-robin)",
        "ns/op",
        Better::Lower,
    );
    per_call.reference(SQ_FETCH_NEW_OPTS);
    let rt = current_thread();
    single(
        &mut per_call,
        SQ_FETCH_NEW_OPTS,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move { c.fetch_query(&opts_for(i & MASK)).await.expect("hit") },
        )),
    );
    single(
        &mut per_call,
        FLOOR_KEY_CLONE,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move {
                let key = k[i & MASK].clone();
                f.get(&key).expect("hit")
            },
        )),
    );
    single(
        &mut per_call,
        FLOOR_KEY_BUILT,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move {
                let key = key!["user", i & MASK];
                f.get(&key).expect("hit")
            },
        )),
    );
    single(
        &mut per_call,
        SQ_FETCH,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move { c.fetch_query(&o[i & MASK]).await.expect("hit") },
        )),
    );
    single(
        &mut per_call,
        FLOOR,
        rt.block_on(ns_per_op(
            cfg.hit_reps,
            cfg.hit_batch,
            || {},
            move |i| async move { f.get(&k[i & MASK]).expect("hit") },
        )),
    );
    drop(rt);
    let ratio = |floor: &str| match (per_call.median(SQ_FETCH_NEW_OPTS), per_call.median(floor)) {
        (Some(sq), Some(fl)) => format!("{:.2}×", sq / fl),
        _ => "—".into(),
    };
    let (to_clone, to_built) = (ratio(FLOOR_KEY_CLONE), ratio(FLOOR_KEY_BUILT));
    per_call.note(format!(
        "`{SQ_FETCH_NEW_OPTS}` builds `QueryOptions::new(key![\"user\", id], move || \
         load_user(id)).stale_time(1 h)` for every call and drops it after the hit (the \
         README's pattern); the floors look the same key up in the `RwLock<HashMap>` floor \
         after cloning it out of the key table, or after building it with `key!`. Options \
         built per call against the floor with a key clone: {to_clone} (issue 13 target: \
         ≤ 1.2×); against the floor with the key built per call: {to_built}."
    ));

    // Every read above must have been a hit.
    let st = c.stats();
    assert_eq!(
        st.fetches, stats_before.fetches,
        "stackquery fetched on a hit"
    );
    assert_eq!(
        fx.moka.entry_count(),
        KEYS as u64,
        "moka lost an entry during the hit loop"
    );
    assert_eq!(fx.hand.len(), KEYS);
    let fetch_hits = st.hits - stats_before.hits;
    one.note(format!(
        "Each op returns the cached `Arc` (a clone) and drops it. stackquery counted {fetch_hits} \
         fresh hits and no fetch during the loops; moka kept all {KEYS} entries."
    ));
    two.note(
        "Both threads read the same 8 keys; the figure is ns per op seen by one thread \
         (the mean of the two threads' batch times).",
    );
    vec![one, two, per_call]
}

/// Hit scaling: the hot-key loop of the 2-thread section on 1, 2 and 4 OS threads (each
/// with its own current-thread runtime), one section per thread count. The figure is the
/// total throughput of a repetition: threads × batch ops over the wall time from the
/// first thread's start to the last thread's end (all are released by one barrier, so
/// time a thread spends waiting for a core counts).
pub(crate) fn scaling(cfg: &Cfg) -> Vec<Section> {
    let fx = fixture();
    let (c, o, k) = (&fx.client, &fx.opts, &fx.keys);
    let (m, h, f) = (&fx.moka, &fx.hand, &fx.floor);
    let fetches_before = c.stats().fetches;
    let mut out = Vec::new();
    for (threads, id, _) in SCALING {
        let mut s = Section::new(
            id,
            format!(
                "Hit scaling: {threads} OS thread{} on 8 hot keys (total throughput)",
                if threads == 1 { "" } else { "s" }
            ),
            "M ops/s",
            Better::Higher,
        );
        s.reference(SQ_FETCH);
        let ops = (threads * cfg.hit_batch) as f64;
        let mut add = |name: &str, spans: Vec<Vec<(Instant, Instant)>>| {
            let reps = spans[0].len();
            let wall: Vec<f64> = (0..reps)
                .map(|r| {
                    let first = spans.iter().map(|t| t[r].0).min().expect("a thread");
                    let last = spans.iter().map(|t| t[r].1).max().expect("a thread");
                    (last - first).as_nanos() as f64
                })
                .collect();
            let total: Vec<f64> = wall.iter().map(|ns| ops * 1e3 / ns).collect();
            s.push(Row::new(name, total).note(format!(
                "wall time {} µs per repetition (median)",
                fmt_num(median(&wall) / 1e3)
            )));
        };
        add(
            SQ_FETCH,
            threads!(cfg, threads, |i| c
                .fetch_query(&o[i % HOT])
                .await
                .expect("hit")),
        );
        add(
            SQ_GET,
            threads!(cfg, threads, |i| c
                .get_query_data::<String>(&k[i % HOT])
                .expect("hit")),
        );
        add(
            MOKA_GET,
            threads!(cfg, threads, |i| m.get(&k[i % HOT]).await.expect("hit")),
        );
        add(
            HAND,
            threads!(cfg, threads, |i| h
                .get_or_fetch(&k[i % HOT], || async { Arc::new(value()) })
                .await),
        );
        add(
            FLOOR,
            threads!(cfg, threads, |i| f.get(&k[i % HOT]).expect("hit")),
        );
        out.push(s);
    }
    assert_eq!(
        c.stats().fetches,
        fetches_before,
        "stackquery fetched on a hit"
    );
    let labels: Vec<String> = SCALING.iter().map(|(t, _, _)| t.to_string()).collect();
    let table = curve(&out, &labels);
    if let Some(last) = out.last_mut() {
        last.note(format!(
            "All threads read the same 8 keys; each has its own current-thread runtime. This \
             machine has 2 cores: 4 threads time-share them.\n\nThe curve (median total M \
             ops/s by thread count; higher is better):\n\n{table}"
        ));
    }
    out
}
