//! The worker / CLI guide: a batch job that starts, warms the cache, reads through it,
//! leaves what it fetched in a SQLite file for its next run, and exits.
//!
//! - **warm**: every key the job will need is prefetched at once (one fetch per key, run
//!   concurrently; concurrent asks for one key share one fetch);
//! - **read**: the job's own work reads through `fetch_query`, hitting the warm cache;
//! - **persist**: queries marked `.persist()` are written behind to SQLite, and
//!   `flush_storage()` waits for those writes before the process exits;
//! - **next run**: a new process (here: a new client on the same file) finds the data in
//!   SQLite and calls the upstream for nothing that is still fresh.
//!
//! Run: `cargo run -p stackquery --example worker` (a temporary file, two runs in one
//! process), or `cargo run -p stackquery --example worker -- /tmp/prices.db` twice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stackquery::{key, QueryClient, QueryError, QueryOptions, SqliteStorage};

/// The products the job prices.
const SKUS: [u32; 8] = [101, 102, 103, 104, 105, 106, 107, 108];

/// A price from the (simulated) upstream, counting its calls.
fn price(sku: u32, upstream_calls: &Arc<AtomicU32>) -> QueryOptions<u64> {
    let calls = upstream_calls.clone();
    QueryOptions::new(key!["price", sku], move || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await; // a network round trip
            Ok::<_, std::io::Error>(u64::from(sku) * 3)
        }
    })
    .stale_time(Duration::from_secs(3600)) // prices are good for an hour
    .persist()
}

/// One run of the job: returns the total and how many upstream calls it made.
async fn run(path: &std::path::Path) -> Result<(u64, u32), QueryError> {
    let storage = SqliteStorage::open(path)?;
    let client = QueryClient::builder().storage(storage).build();
    let upstream_calls = Arc::new(AtomicU32::new(0));
    let queries: Vec<_> = SKUS.iter().map(|&s| price(s, &upstream_calls)).collect();

    // Warm: all at once.
    futures::future::join_all(queries.iter().map(|q| client.prefetch_query(q))).await;
    // Read: the job's work, from the warm cache.
    let mut total = 0;
    for q in &queries {
        total += *client.fetch_query(q).await?;
    }
    // Persist: wait for the write-behind before exiting, or the next run misses it.
    client.flush_storage().await;
    Ok((total, upstream_calls.load(Ordering::SeqCst)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), QueryError> {
    if let Some(path) = std::env::args_os().nth(1) {
        let (total, calls) = run(std::path::Path::new(&path)).await?;
        println!("total {total}, upstream calls {calls}");
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("stackquery-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| QueryError::fetch(e.to_string()))?;
    let path = dir.join("prices.db");
    let first = run(&path).await?;
    println!("first run: total {}, upstream calls {}", first.0, first.1);
    let second = run(&path).await?;
    println!("next run: total {}, upstream calls {}", second.0, second.1);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(first.1 as usize, SKUS.len(), "one upstream call per key");
    assert_eq!(
        second,
        (first.0, 0),
        "the next run reads SQLite, not the upstream"
    );
    Ok(())
}
