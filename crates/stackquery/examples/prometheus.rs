//! The client's metrics (feature `metrics`) exported as Prometheus text.
//!
//! ```text
//! cargo run -p stackquery --features metrics --example prometheus
//! ```
//!
//! Installs `metrics-exporter-prometheus` as the process's recorder, sends some traffic
//! through a client (misses, hits, a stale hit, a retried and a failed fetch, an
//! eviction, an observer) and prints the scrape a Prometheus server would receive. In a
//! service, serve `handle.render()` on `/metrics` (or use the exporter's own HTTP
//! listener) and call `client.flush_metrics()` before each render.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use stackquery::{key, QueryClient, QueryOptions};

#[tokio::main]
async fn main() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder is installed");

    let client = QueryClient::builder()
        .max_queries(8)
        .retry(1)
        .retry_delay(|_| Duration::from_millis(1))
        .build();

    // Five users: five misses and fetches, then three rounds of hits.
    let user = |id: u32| {
        QueryOptions::new(key!["user", id], move || async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, String>(format!("user {id}"))
        })
        .stale_time(Duration::from_secs(60))
    };
    for _ in 0..4 {
        for id in 0..5 {
            client.fetch_query(&user(id)).await.expect("a user");
        }
    }
    // Ten more: the bound of 8 evicts.
    for id in 100..110 {
        client.fetch_query(&user(id)).await.expect("a user");
    }
    // A query that always fails: one retry, then an error.
    let broken = QueryOptions::new(key!["broken"], || async {
        Err::<u32, _>("upstream is down".to_string())
    });
    let _ = client.fetch_query(&broken).await;
    // An observer (the observers gauge).
    let observer = client.watch(&user(1));
    let _subscription = observer.subscribe(|_| {});

    client.flush_metrics();
    println!("{}", handle.render());
    let stats = client.stats();
    eprintln!(
        "stats(): {} hits, {} misses, {} fetches, {} evictions",
        stats.hits, stats.misses, stats.fetches, stats.evictions
    );
}
