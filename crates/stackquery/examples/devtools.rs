//! The devtools panel over a small, busy cache: users (persisted, so their data shows as
//! JSON), todos, a flaky endpoint that fails now and then, an observed clock that polls,
//! a mutation every few seconds, and 2,000 filler entries to scroll through.
//!
//! Run: `cargo run -p stackquery --features devtools --example devtools`, then open the
//! printed address. `--port N` picks the port (default 7777); `--read-only` serves the
//! panel with no actions. Stop with Ctrl-C.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stackquery::devtools::Devtools;
use stackquery::{key, MutationOptions, QueryClient, QueryOptions};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct User {
    id: u32,
    name: String,
    email: String,
    roles: Vec<String>,
}

fn user_query(id: u32) -> QueryOptions<User> {
    const NAMES: [&str; 4] = [
        "Ada Lovelace",
        "Grace Hopper",
        "Barbara Liskov",
        "Edsger Dijkstra",
    ];
    QueryOptions::new(key!["users", id], move || async move {
        tokio::time::sleep(Duration::from_millis(80)).await;
        let name = NAMES[id as usize % NAMES.len()].to_string();
        Ok::<_, std::io::Error>(User {
            id,
            email: format!(
                "{}@example.com",
                name.split(' ').next().unwrap_or("x").to_lowercase()
            ),
            name,
            roles: vec![
                "reader".into(),
                if id == 1 { "admin" } else { "writer" }.into(),
            ],
        })
    })
    .persist()
    .stale_time(Duration::from_secs(30))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 7777_u16;
    let mut read_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => {
                port = args
                    .next()
                    .ok_or("--port needs a number")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--read-only" => read_only = true,
            other => {
                return Err(format!("unknown argument {other:?} (--port N, --read-only)").into())
            }
        }
    }

    let client = QueryClient::new();
    for id in 1..=4 {
        client.fetch_query(&user_query(id)).await?;
    }
    for i in 1..=12_u32 {
        client.set_query_data(key!["todos", i], format!("todo #{i}: ship it"))?;
    }
    for i in 0..2_000_u32 {
        client.set_query_data(key!["filler", i / 100, i], vec![i; (i % 7) as usize])?;
    }

    // A flaky endpoint: fails every other call.
    let calls = Arc::new(AtomicU32::new(0));
    let flaky = {
        let calls = calls.clone();
        QueryOptions::new(key!["reports", "daily"], move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n % 2 == 1 {
                    Err(format!("upstream 503 (call {n})"))
                } else {
                    Ok(format!("report #{n}"))
                }
            }
        })
        .retry(1)
    };
    let _ = client.fetch_query(&flaky).await;

    // An observed query, polled every 5 s.
    let clock = QueryOptions::new(key!["server", "time"], || async {
        Ok::<_, String>(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    })
    .refetch_interval(Duration::from_secs(5));
    let observer = client.watch(&clock);
    let _subscription = observer.subscribe(|_| {});

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = Devtools::new(client.clone())
        .read_only(read_only)
        .show_json::<String>()
        .show_json::<Vec<u32>>()
        .bind(addr)
        .await?;
    println!("devtools: {} (Ctrl-C to stop)", server.url());

    // Keep the cache busy: a mutation and a refresh every few seconds.
    let save = client.mutation(MutationOptions::new(|n: u32| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, String>(n)
    }));
    let mut tick = tokio::time::interval(Duration::from_secs(4));
    let mut n = 0_u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let _ = save.mutate(n).await;
                client.set_query_data(key!["todos", n % 12 + 1], format!("todo #{}: edited {n}x", n % 12 + 1))?;
                let _ = client.fetch_query(&flaky).await;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    server.shutdown().await;
    Ok(())
}
