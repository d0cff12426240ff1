//! A Rust client that shares a second tier and a bus with other clients — the Rust side of
//! the Python package's cross-language tests (`crates/stackquery-py/tests/test_shared_tier.py`),
//! and a small demonstration of reading what another process (in any language) wrote.
//!
//! ```text
//! shared_tier_peer sqlite-read PATH ID        print the stored ["user", ID] as JSON
//! shared_tier_peer sqlite-write PATH ID       store a user under ["user", ID]
//! shared_tier_peer redis-read URL NS ID       the same on Redis namespace NS
//! shared_tier_peer redis-write URL NS ID
//! shared_tier_peer redis-watch URL NS         cache ["item", 1], print "ready", then print
//!                                             "invalidated" once another client invalidates it
//! shared_tier_peer redis-invalidate URL NS    invalidate ["item"] on every client of NS
//! ```
//!
//! A read never fetches: the fetch function fails, so what it prints came from the tier.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stackquery::bus::RedisBus;
use stackquery::storage::RedisStorage;
use stackquery::{key, QueryClient, QueryOptions, SqliteStorage};

/// The shared type: a Python client stores it as a dict with the same fields.
#[derive(Debug, Serialize, Deserialize)]
struct User {
    name: String,
    age: u32,
    tags: Vec<String>,
}

fn from_tier_only(id: u64) -> QueryOptions<User> {
    QueryOptions::new(key!["user", id], || async {
        Err::<User, _>(std::io::Error::other("not in the shared tier"))
    })
    .stale_time(Duration::from_secs(3600))
    .persist()
}

async fn read(client: &QueryClient, id: u64) -> Result<(), String> {
    let user = client
        .fetch_query(&from_tier_only(id))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::to_string(&*user).map_err(|e| e.to_string())?
    );
    Ok(())
}

async fn write(client: &QueryClient, id: u64) -> Result<(), String> {
    let user = User {
        name: "Grace".into(),
        age: 85,
        tags: vec!["navy".into(), "cobol".into()],
    };
    client
        .fetch_query(
            &QueryOptions::new(key!["user", id], move || {
                let user = User {
                    name: user.name.clone(),
                    age: user.age,
                    tags: user.tags.clone(),
                };
                async move { Ok::<_, std::io::Error>(user) }
            })
            .persist(),
        )
        .await
        .map_err(|e| e.to_string())?;
    if client.shutdown(Duration::from_secs(10)).await {
        Ok(())
    } else {
        Err("the write did not land within 10 s".into())
    }
}

async fn redis_client(url: &str, ns: &str, bus: bool) -> Result<QueryClient, String> {
    let storage = RedisStorage::builder(url)
        .namespace(ns)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut builder = QueryClient::builder().storage(storage);
    if bus {
        let bus = RedisBus::builder(url)
            .namespace(ns)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        builder = builder.bus(bus);
    }
    Ok(builder.build())
}

async fn watch(client: &QueryClient) -> Result<(), String> {
    let item = QueryOptions::new(key!["item", 1], || async {
        Ok::<_, std::io::Error>(serde_json::json!({ "v": 1 }))
    })
    .stale_time(Duration::from_secs(3600))
    .persist();
    client.fetch_query(&item).await.map_err(|e| e.to_string())?;
    println!("ready");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let state = client.get_query_state::<serde_json::Value>(&key!["item", 1]);
        if state.is_some_and(|s| s.is_invalidated) {
            println!("invalidated");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("no invalidation arrived within 20 s".into())
}

async fn invalidate(client: &QueryClient) -> Result<(), String> {
    client.invalidate_queries(key!["item"]).await;
    // The bus message goes out behind the call: wait until it has left.
    if client.shutdown(Duration::from_secs(10)).await {
        Ok(())
    } else {
        Err("the invalidation was not sent within 10 s".into())
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let id = |i: usize| arg(i).parse::<u64>().unwrap_or(1);
    let result = match arg(0).as_str() {
        "sqlite-read" | "sqlite-write" => match SqliteStorage::open(arg(1)) {
            Ok(storage) => {
                let client = QueryClient::builder().storage(storage).build();
                if arg(0) == "sqlite-read" {
                    read(&client, id(2)).await
                } else {
                    write(&client, id(2)).await
                }
            }
            Err(e) => Err(e.to_string()),
        },
        "redis-read" | "redis-write" => match redis_client(&arg(1), &arg(2), false).await {
            Ok(client) if arg(0) == "redis-read" => read(&client, id(3)).await,
            Ok(client) => write(&client, id(3)).await,
            Err(e) => Err(e),
        },
        "redis-watch" => match redis_client(&arg(1), &arg(2), true).await {
            Ok(client) => watch(&client).await,
            Err(e) => Err(e),
        },
        "redis-invalidate" => match redis_client(&arg(1), &arg(2), true).await {
            Ok(client) => invalidate(&client).await,
            Err(e) => Err(e),
        },
        other => Err(format!("unknown command {other:?} (see the file's header)")),
    };
    if let Err(e) = result {
        eprintln!("shared_tier_peer: {e}");
        std::process::exit(1);
    }
}
