//! Fresh-hit latency under criterion: stackquery's `fetch_query` against moka's `get`,
//! the hand-written single-flight map and the `RwLock<HashMap>` floor, on the same key.
//! (`cargo bench -p stackquery-bench`; the comparison table comes from the binary.)
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use stackquery::{key, QueryClient, QueryKey, QueryOptions};
use stackquery_bench::contenders::{Floor, FloorPrehashed, SingleFlight};

fn hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let keys: Vec<QueryKey> = (0..1024).map(|i| key!["user", i]).collect();
    let k = keys[500].clone();
    let value = Arc::new("a user record".to_string());

    let client = QueryClient::new();
    let opts = QueryOptions::new(k.clone(), || async {
        Ok::<_, std::convert::Infallible>("a user record".to_string())
    })
    .stale_time(Duration::from_secs(3600));
    let moka: moka::future::Cache<QueryKey, Arc<String>> = moka::future::Cache::new(10_000);
    let hand: SingleFlight<QueryKey, Arc<String>> = SingleFlight::new();
    let floor: Floor<QueryKey, Arc<String>> = Floor::new();
    let floor_pre: FloorPrehashed<QueryKey, Arc<String>> = FloorPrehashed::new();
    rt.block_on(async {
        for key in &keys {
            client
                .set_query_data_arc(key.clone(), value.clone())
                .expect("set");
            moka.insert(key.clone(), value.clone()).await;
            hand.insert(key.clone(), value.clone());
            floor.insert(key.clone(), value.clone());
            floor_pre.insert(key.clone(), value.clone());
        }
        client.fetch_query(&opts).await.expect("prime");
        moka.run_pending_tasks().await;
    });

    let mut g = c.benchmark_group("fresh_hit");
    g.bench_function("stackquery_fetch_query", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(client.fetch_query(black_box(&opts)).await.expect("hit")) })
    });
    g.bench_function("stackquery_get_query_data", |b| {
        b.iter(|| black_box(client.get_query_data::<String>(black_box(&k))))
    });
    g.bench_function("moka_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(moka.get(black_box(&k)).await) })
    });
    g.bench_function("hand_written_single_flight", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                hand.get_or_fetch(black_box(&k), || async { Arc::new(String::new()) })
                    .await,
            )
        })
    });
    g.bench_function("floor_rwlock_hashmap", |b| {
        b.iter(|| black_box(floor.get(black_box(&k))))
    });
    g.bench_function("floor_precomputed_hash", |b| {
        b.iter(|| black_box(floor_pre.get(black_box(&k))))
    });
    g.finish();
}

criterion_group!(benches, hit);
criterion_main!(benches);
