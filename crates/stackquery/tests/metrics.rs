//! Feature `metrics`: the client's counters, histograms and gauges through the `metrics`
//! facade, checked in a Prometheus exporter's text after some traffic, and against
//! `stats()`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use stackquery::storage::MemoryStorage;
use stackquery::telemetry::names;
use stackquery::{key, QueryClient, QueryOptions};

/// Runs `body` on a paused current-thread runtime with `recorder` as this thread's
/// recorder (every task of that runtime runs on this thread).
fn with_recorder<R: metrics::Recorder, F: std::future::Future>(recorder: &R, body: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || rt.block_on(body))
}

/// The unlabelled samples of a Prometheus text export.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn user(id: u32) -> QueryOptions<String> {
    QueryOptions::new(key!["user", id], move || async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, String>(format!("user {id}"))
    })
    .stale_time(Duration::from_secs(60))
}

#[test]
fn the_prometheus_export_has_the_counters_after_traffic() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let (stats, text) = with_recorder(&recorder, async {
        let client = QueryClient::builder().max_queries(4).build();
        // 6 cold keys: 6 misses and fetches; the bound of 4 evicts 2.
        for id in 0..6 {
            client.fetch_query(&user(id)).await.unwrap();
        }
        // 5 fresh hits.
        for _ in 0..5 {
            client.fetch_query(&user(5)).await.unwrap();
        }
        // Two callers of a cold key: one miss that fetches, one that joins.
        let cold = user(9);
        let (a, b) = tokio::join!(client.fetch_query(&cold), client.fetch_query(&cold));
        assert!(
            Arc::ptr_eq(&a.unwrap(), &b.unwrap()),
            "one fetch, one value"
        );
        // A stale hit (stale time zero), which refreshes behind.
        let stale = user(5).stale_time(Duration::ZERO);
        client.fetch_query(&stale).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A fetch retried once, then failed for good.
        let broken = QueryOptions::new(key!["broken"], || async {
            Err::<u32, _>("down".to_string())
        })
        .retry(1)
        .retry_delay(|_| Duration::from_millis(1));
        client.fetch_query(&broken).await.unwrap_err();
        // An observer.
        let observer = client.watch(&user(5));
        let _sub = observer.subscribe(|_| {});
        client.flush_metrics();
        let stats = client.stats();
        (stats, handle.render())
    });
    let s = samples(&text);
    let get = |name: &str| {
        s.get(name)
            .copied()
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(
        stats.hits,
        5 + 1,
        "and the observer's first read, of fresh data"
    );
    assert_eq!(stats.stale_hits, 1);
    assert_eq!(stats.misses, 6 + 2 + 1);
    assert_eq!(stats.dedup_joins, 1);
    assert_eq!(stats.fetches, 6 + 1 + 1 + 1);
    assert_eq!((stats.retries, stats.errors), (1, 1));
    assert!(stats.evictions >= 2, "{stats:?}");
    for (name, value) in [
        (names::HITS, stats.hits),
        (names::STALE_HITS, stats.stale_hits),
        (names::MISSES, stats.misses),
        (names::FETCHES, stats.fetches),
        (names::DEDUP_JOINS, stats.dedup_joins),
        (names::RETRIES, stats.retries),
        (names::ERRORS, stats.errors),
        (names::EVICTIONS, stats.evictions),
    ] {
        assert_eq!(get(name), value as f64, "{name} in\n{text}");
    }
    assert_eq!(get(names::ENTRIES), stats.entries as f64);
    assert_eq!(get(names::OBSERVERS), 1.0);
    // A histogram renders as a summary: one sample per fetch that ran to its result.
    let fetch_count = get(&format!("{}_count", names::FETCH_DURATION));
    assert_eq!(fetch_count, stats.fetches as f64);
}

#[test]
fn gc_hydration_and_the_second_tier_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    with_recorder(&recorder, async {
        let storage = MemoryStorage::new();
        let writer = QueryClient::builder().storage(storage.clone()).build();
        let opts = user(1).persist().gc_time(Duration::from_secs(1));
        writer.fetch_query(&opts).await.unwrap();
        writer.flush_storage().await;
        // A second client hydrates the key from the storage (no fetch).
        let reader = QueryClient::builder().storage(storage).build();
        reader.fetch_query(&opts).await.unwrap();
        assert_eq!(reader.stats().fetches, 1, "the hydration counts as a fetch");
        assert_eq!(reader.stats().l2_hits, 1);
        // Unobserved past its gc time: collected.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(reader.stats().gc_collections, 1);
        assert_eq!(reader.stats().entries, 0);
    });
    let snapshot: HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k.key().name().to_string(), v))
        .collect();
    let counter = |name: &str| match snapshot.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(counter(names::GC), 2, "one entry in each client");
    assert_eq!(counter(names::L2_HITS), 1);
    assert!(counter(names::L2_WRITES) >= 1);
    match snapshot.get(names::HYDRATION_DURATION) {
        // The writer's cold key read the storage first (a miss), the reader's hit.
        Some(DebugValue::Histogram(v)) => assert_eq!(v.len(), 2, "two hydrating reads"),
        other => panic!("{other:?}"),
    }
    match snapshot.get(names::ENTRIES) {
        Some(DebugValue::Gauge(v)) => assert_eq!(v.into_inner(), 0.0),
        other => panic!("{other:?}"),
    }
}
