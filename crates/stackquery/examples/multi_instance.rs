//! Several instances sharing one cache on Redis: a value fetched by one is read by the
//! others from the shared tier, and an invalidation made by one reaches all of them.
//!
//! Run (with a local redis-server):
//! `cargo run --features redis --example multi_instance -- redis://127.0.0.1:6379 demo`
//! starts two instances in this process and shows them sharing. The tests also run it as
//! `multi_instance <url> <name> <n>`: one instance per process, `n` processes in all, each
//! invalidating its own key and printing the invalidations it sees from the others.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stackquery::bus::RedisBus;
use stackquery::storage::RedisStorage;
use stackquery::{key, QueryClient, QueryError, QueryOptions};

async fn instance(url: &str, ns: &str) -> Result<QueryClient, QueryError> {
    let to_err = |e: stackquery::StorageError| QueryError::fetch(e.to_string());
    let storage = RedisStorage::builder(url)
        .namespace(ns)
        .connect()
        .await
        .map_err(to_err)?;
    let bus = RedisBus::builder(url)
        .namespace(ns)
        .connect()
        .await
        .map_err(to_err)?;
    Ok(QueryClient::builder().storage(storage).bus(bus).build())
}

fn price(calls: Arc<AtomicU32>) -> QueryOptions<u64> {
    QueryOptions::new(key!["price", "widget"], move || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, std::io::Error>(42)
        }
    })
    .stale_time(Duration::from_secs(60))
    .persist()
}

#[tokio::main]
async fn main() -> Result<(), QueryError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    match (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
    ) {
        (Some(name), Some(n)) => process_role(&url, name, n).await,
        _ => demo(&url).await,
    }
}

async fn demo(url: &str) -> Result<(), QueryError> {
    let ns = format!("demo-{}", std::process::id());
    let (a, b) = (instance(url, &ns).await?, instance(url, &ns).await?);
    let calls = Arc::new(AtomicU32::new(0));
    let t = Instant::now();
    let p = a.fetch_query(&price(calls.clone())).await?;
    println!("A fetched price {p} in {:?}", t.elapsed());
    a.flush_storage().await;
    let t = Instant::now();
    let p = b.fetch_query(&price(calls.clone())).await?;
    println!(
        "B read price {p} from the shared tier in {:?} (upstream calls: {})",
        t.elapsed(),
        calls.load(Ordering::SeqCst)
    );
    a.invalidate_queries(key!["price"]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stale = b
        .get_query_state::<u64>(&key!["price", "widget"])
        .is_some_and(|s| s.is_invalidated);
    println!("A invalidated [\"price\"]; B sees it stale: {stale}");
    Ok(())
}

/// One of `n` processes: announce readiness, invalidate our own key, report what we see.
async fn process_role(url: &str, name: &str, n: usize) -> Result<(), QueryError> {
    let client = instance(url, "procs").await?;
    for i in 0..n {
        client.set_query_data(key!["proc", format!("p{}", i + 1)], 0_u32)?;
    }
    // Wait until every process is subscribed (a counter in the shared tier would do too;
    // a fixed pause keeps the example short).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.invalidate_queries(key!["proc", name]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = std::collections::BTreeSet::new();
    while Instant::now() < deadline && seen.len() < n - 1 {
        for i in 0..n {
            let other = format!("p{}", i + 1);
            if other != name
                && client
                    .get_query_state::<u32>(&key!["proc", other.as_str()])
                    .is_some_and(|s| s.is_invalidated)
                && seen.insert(other.clone())
            {
                println!("saw invalidation from {other}");
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
