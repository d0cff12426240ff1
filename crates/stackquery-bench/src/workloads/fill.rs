//! Filling 100,000 distinct keys into an empty cache, one task (on a 2-worker runtime, so
//! background work of a cache runs beside it, as in an application). Two ways per
//! library: through its fetch-on-miss call with a fetch that is ready at once, and
//! through its plain write.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use moka::future::Cache as MokaCache;
use stackquery::{key, QueryClient, QueryKey, QueryOptions};
use stackquery_bench::contenders::{Floor, SingleFlight};

use super::{
    multi_thread, on_worker, Never, FLOOR, FRESH_FOR, HAND, MOKA_GET_WITH, MOKA_INSERT, SQ_FETCH,
    SQ_SET,
};
use crate::report::{fmt_num, Better, Row, Section};
use crate::Cfg;

pub(crate) fn run(cfg: &Cfg) -> Section {
    let n = cfg.fill_keys;
    let mut s = Section::new(
        "fill",
        format!(
            "Fill {} distinct keys into an empty cache",
            fmt_num(n as f64)
        ),
        "keys/s",
        Better::Higher,
    );
    s.reference(SQ_FETCH);
    let keys: Arc<Vec<QueryKey>> = Arc::new((0..n).map(|i| key!["fill", i]).collect());
    let opts: Arc<Vec<QueryOptions<u64>>> = Arc::new(
        keys.iter()
            .enumerate()
            .map(|(i, k)| {
                QueryOptions::new(k.clone(), move || async move { Ok::<_, Never>(i as u64) })
                    .stale_time(FRESH_FOR)
            })
            .collect(),
    );
    let rt = multi_thread();
    let rate = move |t: Instant| n as f64 / t.elapsed().as_secs_f64();

    let mut samples = Vec::new();
    for _ in 0..cfg.fill_reps {
        let o = opts.clone();
        let (r, client) = on_worker(&rt, async move {
            let client = QueryClient::new();
            let t = Instant::now();
            for o in o.iter() {
                std::hint::black_box(client.fetch_query(o).await.expect("fetch"));
            }
            (rate(t), client)
        });
        assert_eq!(client.stats().fetches as usize, n);
        assert_eq!(client.stats().entries, n);
        samples.push(r);
    }
    s.push(
        Row::new(SQ_FETCH, samples).note(
            "one fetch per key, ready at once: it runs in the caller's task, no task spawned",
        ),
    );

    let mut samples = Vec::new();
    for _ in 0..cfg.fill_reps {
        let k = keys.clone();
        let (r, client) = on_worker(&rt, async move {
            let client = QueryClient::new();
            let t = Instant::now();
            for (i, k) in k.iter().enumerate() {
                client
                    .set_query_data(k.clone(), i as u64)
                    .expect("set_query_data");
            }
            (rate(t), client)
        });
        assert_eq!(client.stats().entries, n);
        samples.push(r);
    }
    s.push(Row::new(SQ_SET, samples));

    let mut samples = Vec::new();
    for _ in 0..cfg.fill_reps {
        let k = keys.clone();
        let (r, count) = on_worker(&rt, async move {
            let cache: MokaCache<QueryKey, Arc<u64>> = MokaCache::new(10 * n as u64);
            let inits = AtomicUsize::new(0);
            let t = Instant::now();
            for (i, k) in k.iter().enumerate() {
                let inits = &inits;
                std::hint::black_box(
                    cache
                        .get_with_by_ref(k, async move {
                            inits.fetch_add(1, Ordering::Relaxed);
                            Arc::new(i as u64)
                        })
                        .await,
                );
            }
            let r = rate(t);
            (r, inits.load(Ordering::Relaxed))
        });
        assert_eq!(count, n);
        samples.push(r);
    }
    s.push(Row::new(MOKA_GET_WITH, samples).note("one init per key"));

    let mut samples = Vec::new();
    for _ in 0..cfg.fill_reps {
        let k = keys.clone();
        let r = on_worker(&rt, async move {
            let cache: MokaCache<QueryKey, Arc<u64>> = MokaCache::new(10 * n as u64);
            let t = Instant::now();
            for (i, k) in k.iter().enumerate() {
                cache.insert(k.clone(), Arc::new(i as u64)).await;
            }
            rate(t)
        });
        samples.push(r);
    }
    s.push(Row::new(MOKA_INSERT, samples));

    let mut samples = Vec::new();
    for _ in 0..cfg.fill_reps {
        let k = keys.clone();
        let (r, len) = on_worker(&rt, async move {
            let map: SingleFlight<QueryKey, Arc<u64>> = SingleFlight::new();
            let t = Instant::now();
            for (i, k) in k.iter().enumerate() {
                std::hint::black_box(
                    map.get_or_fetch(k, move || async move { Arc::new(i as u64) })
                        .await,
                );
            }
            (rate(t), map.len())
        });
        assert_eq!(len, n);
        samples.push(r);
    }
    s.push(Row::new(HAND, samples).note("get_or_fetch, fetch ready at once"));

    let mut samples = Vec::new();
    for _ in 0..cfg.fill_reps {
        let k = keys.clone();
        let r = on_worker(&rt, async move {
            let map: Floor<QueryKey, Arc<u64>> = Floor::new();
            let t = Instant::now();
            for (i, k) in k.iter().enumerate() {
                map.insert(k.clone(), Arc::new(i as u64));
            }
            rate(t)
        });
        samples.push(r);
    }
    s.push(Row::new(FLOOR, samples).note("write lock + insert"));
    s.note(format!(
        "Keys are built before timing; each run starts from an empty cache (dropped outside \
         the timing). {} runs each.",
        cfg.fill_reps
    ));
    s
}
