//! Fresh-hit latency: `fetch_query` and `get_query_data` against a floor (an
//! `RwLock<HashMap>` lookup plus an `Arc` clone of the same key and value), in one run.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures::FutureExt;
use stackquery::{key, QueryClient, QueryKey, QueryOptions};

#[derive(Default)]
struct PassThrough(u64);
impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("QueryKey hashes with write_u64")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = QueryClient::new();
    let keys: Vec<QueryKey> = (0..1000).map(|i| key!["user", i]).collect();
    let value = Arc::new("a user record".to_string());
    for k in &keys {
        client.set_query_data_arc(k.clone(), value.clone()).unwrap();
    }
    let k = keys[500].clone();
    let opts = QueryOptions::new(k.clone(), || async { Ok::<_, String>(String::new()) })
        .stale_time(Duration::from_secs(3600));
    // Prime: the entry remembers the options.
    rt.block_on(client.fetch_query(&opts)).unwrap();

    let floor: RwLock<HashMap<QueryKey, Arc<String>>> =
        RwLock::new(keys.iter().map(|k| (k.clone(), value.clone())).collect());
    let floor_pre: RwLock<HashMap<QueryKey, Arc<String>, BuildHasherDefault<PassThrough>>> =
        RwLock::new(keys.iter().map(|k| (k.clone(), value.clone())).collect());

    let mut g = c.benchmark_group("fresh_hit");
    g.bench_function("floor_rwlock_hashmap", |b| {
        b.iter(|| black_box(floor.read().unwrap().get(black_box(&k)).cloned()))
    });
    g.bench_function("floor_rwlock_hashmap_precomputed_hash", |b| {
        b.iter(|| black_box(floor_pre.read().unwrap().get(black_box(&k)).cloned()))
    });
    g.bench_function("stackquery_get_query_data", |b| {
        b.iter(|| black_box(client.get_query_data::<String>(black_box(&k))))
    });
    // One poll of the future, as when awaited inside the caller's own async fn.
    g.bench_function("stackquery_fetch_query_single_poll", |b| {
        b.iter(|| {
            black_box(
                client
                    .fetch_query(black_box(&opts))
                    .now_or_never()
                    .expect("a fresh hit is ready at once"),
            )
        })
    });
    // Through criterion's async runner (adds its own per-iteration overhead).
    g.bench_function("stackquery_fetch_query", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(client.fetch_query(black_box(&opts)).await.unwrap()) })
    });
    g.finish();
}

criterion_group!(benches, hit);
criterion_main!(benches);
