//! A tour of stackquery against a simulated slow API (no server, no network):
//! a cold fetch vs a cached hit, 10,000 concurrent callers causing one fetch,
//! stale-while-revalidate, prefix invalidation, an error with retries, an observer, and
//! a cache surviving a restart on a SQLite file in a temporary folder.
//!
//! Run: `cargo run --release --example tour`

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stackquery::{key, QueryClient, QueryError, QueryOptions, SqliteStorage};

/// A pretend remote API: every call takes 150 ms and is counted.
#[derive(Clone, Default)]
struct SlowApi {
    calls: Arc<AtomicU32>,
}

impl SlowApi {
    async fn user(&self, id: u64) -> Result<String, std::io::Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
        Ok(format!("user #{id} (version {n})"))
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn user_query(api: &SlowApi, id: u64, stale: Duration) -> QueryOptions<String> {
    let api = api.clone();
    QueryOptions::new(key!["user", id], move || {
        let api = api.clone();
        async move { api.user(id).await }
    })
    .stale_time(stale)
}

#[tokio::main]
async fn main() -> Result<(), QueryError> {
    let client = QueryClient::builder().max_queries(10_000).build();
    let api = SlowApi::default();

    println!("== 1. cold fetch vs cached hit");
    let opts = user_query(&api, 1, Duration::from_secs(60));
    let t = Instant::now();
    let user = client.fetch_query(&opts).await?;
    println!(
        "   cold:   {user:<28} in {:>10.3?} (api calls: {})",
        t.elapsed(),
        api.calls()
    );
    let t = Instant::now();
    let user = client.fetch_query(&opts).await?;
    println!(
        "   cached: {user:<28} in {:>10.3?} (api calls: {})",
        t.elapsed(),
        api.calls()
    );

    println!("== 2. 10,000 concurrent callers, one fetch");
    let opts2 = user_query(&api, 2, Duration::from_secs(60));
    let before = api.calls();
    let t = Instant::now();
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let (client, opts) = (client.clone(), opts2.clone());
            tokio::spawn(async move { client.fetch_query(&opts).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if task.await.is_ok_and(|r| r.is_ok()) {
            ok += 1;
        }
    }
    println!(
        "   {ok} callers got the user in {:.3?}; api calls: {}",
        t.elapsed(),
        api.calls() - before
    );

    println!("== 3. stale-while-revalidate");
    let opts3 = user_query(&api, 3, Duration::from_millis(200));
    client.fetch_query(&opts3).await?;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let t = Instant::now();
    let stale = client.fetch_query(&opts3).await?;
    println!(
        "   stale data served at once: {stale} in {:.3?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = client
        .get_query_data::<String>(&key!["user", 3])
        .unwrap_or_default();
    println!("   after the background refresh: {fresh}");

    println!("== 4. prefix invalidation");
    let n = client.invalidate_queries(key!["user"]).await;
    let state = client.get_query_state::<String>(&key!["user", 1]);
    println!(
        "   invalidated {n} entries under [\"user\"]; [\"user\",1] invalidated: {}, data kept: {}",
        state.as_ref().is_some_and(|s| s.is_invalidated),
        state.as_ref().is_some_and(|s| s.has_data())
    );

    println!("== 5. an error with retries");
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let flaky = QueryOptions::new(key!["flaky"], move || {
        let a = a.clone();
        async move {
            let n = a.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 {
                Err(format!("attempt {n}: upstream timed out"))
            } else {
                Ok(format!("succeeded on attempt {n}"))
            }
        }
    })
    .retry(3)
    .retry_delay(|attempt| Duration::from_millis(20 << attempt));
    let t = Instant::now();
    let v = client.fetch_query(&flaky).await?;
    println!("   {v} after {:.3?} (delays 20 ms, 40 ms)", t.elapsed());
    let failing = QueryOptions::new(key!["down"], || async {
        Err::<String, _>("503 service unavailable")
    })
    .retry(2)
    .retry_delay(|_| Duration::from_millis(10));
    match client.fetch_query(&failing).await {
        Err(e) => {
            let state = client.get_query_state::<String>(&key!["down"]);
            println!(
                "   gave up: {e} (failure_count {})",
                state.map_or(0, |s| s.failure_count)
            );
        }
        Ok(v) => println!("   unexpected success: {v}"),
    }

    println!("== 6. an observer: notified on every change");
    let observed = user_query(&api, 6, Duration::from_secs(60));
    let observer = client.watch(&observed);
    let sub = observer.subscribe(|state| {
        println!(
            "   observer sees status {:?}, fetch {:?}, data {:?}",
            state.status,
            state.fetch_status,
            state.data.as_deref()
        );
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.set_query_data(key!["user", 6], "user #6 (edited locally)".to_string())?;
    drop(sub);

    println!("== 7. a cache that survives a restart (SQLite in a temporary folder)");
    let dir = std::env::temp_dir().join(format!("stackquery-tour-{}", std::process::id()));
    let path = dir.join("cache.db");
    for start in ["first start", "after restart"] {
        let storage = SqliteStorage::open(&path).map_err(|e| QueryError::fetch(e.to_string()))?;
        let client = QueryClient::builder().storage(storage).build();
        let before = api.calls();
        let opts = user_query(&api, 7, Duration::from_secs(3600)).persist();
        let t = Instant::now();
        let user = client.fetch_query(&opts).await?;
        client.flush_storage().await;
        println!(
            "   {start:<13}: {user} in {:.3?} (api calls: {})",
            t.elapsed(),
            api.calls() - before
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!("== stats: {:?}", client.stats());
    Ok(())
}
