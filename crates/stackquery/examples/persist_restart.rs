//! A cache that survives a restart: the first run fetches and writes the result to a
//! SQLite file; a second run (a new process) reads it back without calling the fetch
//! function.
//!
//! Run twice: `cargo run --example persist_restart -- /tmp/stackquery-demo.db`
//! (without an argument the file goes to a fresh temporary folder, and the example
//! simulates the restart with a second client in the same process).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stackquery::{key, QueryClient, QueryError, QueryOptions, SqliteStorage};

async fn run_once(path: &std::path::Path) -> Result<(), QueryError> {
    let storage = SqliteStorage::open(path).map_err(|e| QueryError::fetch(e.to_string()))?;
    let client = QueryClient::builder().storage(storage).build();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let opts = QueryOptions::new(key!["report", 2026], move || {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await; // a slow upstream
            Ok::<_, std::io::Error>(vec!["q1: 10".to_string(), "q2: 12".to_string()])
        }
    })
    .stale_time(Duration::from_secs(3600))
    .persist();
    let t = Instant::now();
    let report = client.fetch_query(&opts).await?;
    client.flush_storage().await;
    println!(
        "report {:?} in {:.1?}; fetch calls: {}",
        report,
        t.elapsed(),
        calls.load(Ordering::SeqCst)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), QueryError> {
    match std::env::args_os().nth(1) {
        Some(path) => run_once(std::path::Path::new(&path)).await,
        None => {
            let dir = std::env::temp_dir().join(format!("stackquery-demo-{}", std::process::id()));
            let path = dir.join("cache.db");
            println!("cache file: {}", path.display());
            println!("first start:");
            run_once(&path).await?;
            println!("after a restart:");
            run_once(&path).await?;
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }
    }
}
