//! Prefix invalidation of 100 matching entries among 1,000,000, against a linear scan
//! over the same keys, in one run.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use stackquery::{key, QueryClient, QueryKey};

const TOTAL: usize = 1_000_000;
const MATCHING: usize = 100;

fn invalidate(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = QueryClient::new();
    let mut keys: Vec<QueryKey> = Vec::with_capacity(TOTAL);
    for i in 0..TOTAL - MATCHING {
        keys.push(key!["cold", i as u64 % 1000, i as u64]);
    }
    for i in 0..MATCHING {
        keys.push(key!["hot", i as u64]);
    }
    rt.block_on(async {
        for k in &keys {
            client.set_query_data(k.clone(), 1_u64).unwrap();
        }
    });
    // The same keys in a plain map, for the scan.
    let map: std::collections::HashMap<QueryKey, (Arc<u64>, bool)> = keys
        .iter()
        .map(|k| (k.clone(), (Arc::new(1), false)))
        .collect();
    let mut map = map;
    let prefix = key!["hot"];

    let mut g = c.benchmark_group("invalidate_100_of_1m");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("stackquery_prefix_index", |b| {
        b.to_async(&rt).iter(|| async {
            let n = client.invalidate_queries(black_box(prefix.clone())).await;
            assert_eq!(n, MATCHING);
        })
    });
    g.bench_function("linear_scan", |b| {
        b.iter(|| {
            let mut n = 0;
            for (k, v) in map.iter_mut() {
                if k.starts_with(&prefix) {
                    v.1 = true;
                    n += 1;
                }
            }
            assert_eq!(black_box(n), MATCHING);
        })
    });
    g.finish();
}

criterion_group!(benches, invalidate);
criterion_main!(benches);
