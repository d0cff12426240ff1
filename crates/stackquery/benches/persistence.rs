//! Second-tier figures, measured in one run:
//! 1. cold hydration latency from SQLite (p50 / p99): a new client's first `fetch_query`
//!    of a persisted key that is in the SQLite file but not in memory;
//! 2. the fresh-hit latency of `fetch_query` with and without a write-behind burst going on
//!    (another task rewriting persisted keys as fast as it can), as a ratio.
//!
//! Run: `cargo bench -p stackquery --bench persistence`
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use stackquery::{key, QueryClient, QueryOptions, SqliteStorage};

const KEYS: u64 = 2_000;

fn opts(id: u64) -> QueryOptions<Vec<String>> {
    QueryOptions::new(key!["report", id], move || async move {
        // Never called when hydration works: make a miss obvious.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, std::io::Error>(vec![format!("fetched {id}")])
    })
    .stale_time(Duration::from_secs(3600))
    .persist()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.db");

    rt.block_on(async {
        // Fill the file.
        let writer = QueryClient::builder()
            .storage(SqliteStorage::open(&path).expect("open"))
            .build();
        for id in 0..KEYS {
            let data: Vec<String> = (0..8).map(|i| format!("row {id}/{i}")).collect();
            writer.set_query_data(key!["report", id], data.clone()).expect("set");
            // set_query_data persists once the key's (persisted) options are known:
            writer.fetch_query(&opts(id)).await.expect("known");
            writer.set_query_data(key!["report", id], data).expect("set");
        }
        writer.flush_storage().await;
        drop(writer);

        // 1. Cold hydration, one key at a time, from a new client.
        let reader = QueryClient::builder()
            .storage(SqliteStorage::open(&path).expect("open"))
            .build();
        let mut samples = Vec::with_capacity(KEYS as usize);
        for id in 0..KEYS {
            let o = opts(id);
            let t = Instant::now();
            let v = reader.fetch_query(&o).await.expect("hydrated");
            samples.push(t.elapsed());
            assert!(v[0].starts_with("row"), "hydrated, not fetched");
        }
        samples.sort();
        let stats = reader.stats();
        println!(
            "cold hydration from SQLite ({KEYS} keys): p50 {:?}  p99 {:?}  max {:?}  (l2 hits {}, misses {})",
            percentile(&samples, 0.50),
            percentile(&samples, 0.99),
            samples[samples.len() - 1],
            stats.l2_hits,
            stats.l2_misses
        );

        // 2. Fresh-hit latency with and without write-behind traffic. The same writer runs
        //    against a twin client without storage (same CPU load, no write-behind) and
        //    against the persisted client: the ratio of the two isolates write-behind.
        let hot = opts(7);
        let plain = QueryClient::new();
        plain.set_query_data(key!["report", 7_u64], vec!["x".to_string()]).expect("seed");
        plain.fetch_query(&hot).await.expect("hit");
        let measure = |client: &QueryClient| {
            let n = 2_000_000;
            let t = Instant::now();
            for _ in 0..n {
                black_box(
                    client
                        .fetch_query(black_box(&hot))
                        .now_or_never()
                        .expect("ready")
                        .expect("hit"),
                );
            }
            t.elapsed().as_nanos() as f64 / n as f64
        };
        let burst = |client: QueryClient, stop: Arc<AtomicBool>| {
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = 100 + i % 500;
                    // (The reader hydrated these keys above, so it knows they are
                    // persisted: its writes go behind to SQLite.)
                    client
                        .set_query_data(key!["report", id], vec![format!("v{i}")])
                        .expect("set");
                    i += 1;
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                i
            })
        };
        // The same write-behind into an in-process store (no SQLite thread competing for
        // the two cores).
        let in_memory = QueryClient::builder()
            .storage(stackquery::MemoryStorage::new())
            .build();
        for id in std::iter::once(7).chain(100..600) {
            in_memory
                .set_query_data(key!["report", id], vec!["seed".to_string()])
                .expect("seed");
            in_memory.fetch_query(&opts(id)).await.expect("hit: records the options");
        }
        let quiet = measure(&reader);
        let mut rows = Vec::new();
        for (name, client) in [
            ("no storage", plain.clone()),
            ("write-behind to memory", in_memory.clone()),
            ("write-behind to SQLite", reader.clone()),
        ] {
            let stop = Arc::new(AtomicBool::new(false));
            let writer = burst(client.clone(), stop.clone());
            tokio::time::sleep(Duration::from_millis(50)).await;
            let ns = measure(&client);
            stop.store(true, Ordering::Relaxed);
            let updates = writer.await.expect("writer");
            client.flush_storage().await;
            rows.push((name, ns, updates, client.stats().l2_writes));
        }
        println!("fresh hit, quiet: {quiet:.1} ns");
        for (name, ns, updates, writes) in &rows {
            println!("fresh hit during a set_query_data burst ({name}): {ns:.1} ns ({updates} updates, {writes} second-tier writes)");
        }
        println!(
            "same burst, write-behind vs no storage: ratio {:.2} (in-memory store), {:.2} (SQLite, whose thread shares the 2 cores)",
            rows[1].1 / rows[0].1,
            rows[2].1 / rows[0].1
        );
    });
}
