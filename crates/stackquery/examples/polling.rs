//! A live-updating stream: a query polled with `refetch_interval`, an observer's stream
//! printing each new state, and the cache's event stream printing what happens inside,
//! for a few seconds.
//!
//! ```text
//! cargo run -p stackquery --example polling
//! ```
//!
//! The "ticker" is a pretend remote price that moves on every call and fails once in a
//! while (retried once, 100 ms later). The observer's stream yields each new state
//! (fetching, new data, an error being retried); the event stream shows the fetches with
//! their durations, the entry's updates and the observer coming and going.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use stackquery::{key, CacheEventKind, EventStreamItem, QueryClient, QueryOptions};

/// How long the demo runs.
const RUN_FOR: Duration = Duration::from_secs(4);

#[tokio::main]
async fn main() {
    let client = QueryClient::new();
    let start = Instant::now();
    let elapsed = move || format!("{:>5} ms", start.elapsed().as_millis());

    // Everything the cache does, as it happens.
    let mut events = client.subscribe_events();
    let events_task = tokio::spawn(async move {
        while let Some(item) = events.next().await {
            match item {
                EventStreamItem::Event(event) => {
                    println!("{}  event     {}", elapsed(), describe(&event.kind))
                }
                EventStreamItem::Lagged(n) => println!("{}  event     (missed {n})", elapsed()),
            }
        }
    });

    // A price that moves on every call; every fourth call fails.
    let calls = Arc::new(AtomicU32::new(0));
    let ticker = {
        let calls = calls.clone();
        QueryOptions::new(key!["ticker", "ACME"], move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(80)).await;
                if n % 4 == 0 {
                    return Err(format!("upstream hiccup on call {n}"));
                }
                Ok(100.0 + f64::from(n % 7) * 0.25)
            }
        })
        .refetch_interval(Duration::from_millis(700))
        .retry(1)
        .retry_delay(|_| Duration::from_millis(100))
    };

    // The observer's stream: one item per new state, while it is held.
    let observer = client.watch(&ticker);
    let mut states = observer.stream();
    let watching = async {
        while let Some(state) = states.next().await {
            let data = state.data.map_or("-".to_string(), |p| format!("{p:.2}"));
            let failure = state
                .failure_reason
                .map(|e| format!(", failing ({e})"))
                .unwrap_or_default();
            println!(
                "{}  observer  {:?} / {:?}, price {data}{failure}",
                elapsed(),
                state.status,
                state.fetch_status,
            );
        }
    };
    // Run for a while, then stop watching: polling stops with the last subscriber.
    let _ = tokio::time::timeout(RUN_FOR, watching).await;
    drop(states);
    drop(observer);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let stats = client.stats();
    println!(
        "\n{} calls to the ticker in {:?}; stats: {} fetches, {} retries, {} errors",
        calls.load(Ordering::SeqCst),
        RUN_FOR,
        stats.fetches,
        stats.retries,
        stats.errors
    );
    drop(client);
    // The event stream ends when the client is gone.
    let _ = tokio::time::timeout(Duration::from_secs(1), events_task).await;
}

/// One line for an event.
fn describe(kind: &CacheEventKind) -> String {
    match kind {
        CacheEventKind::QueryAdded { key } => format!("added {key}"),
        CacheEventKind::QueryUpdated {
            key,
            status,
            fetch_status,
            data_version,
            failure_count,
            ..
        } => format!(
            "updated {key}: {status:?} / {fetch_status:?}, data version {data_version}, failures {failure_count}"
        ),
        CacheEventKind::FetchStarted { key } => format!("fetch started {key}"),
        CacheEventKind::FetchRetried { key, failures, error } => {
            format!("fetch retried {key} after {failures} failure(s): {error}")
        }
        CacheEventKind::FetchSucceeded { key, duration } => {
            format!("fetch succeeded {key} in {} ms", duration.as_millis())
        }
        CacheEventKind::FetchFailed { key, duration, error } => {
            format!("fetch failed {key} after {} ms: {error}", duration.as_millis())
        }
        CacheEventKind::ObserverAdded { key } => format!("observer added {key}"),
        CacheEventKind::ObserverRemoved { key } => format!("observer removed {key}"),
        CacheEventKind::QueryRemoved { key } => format!("removed {key}"),
        other => format!("{other:?}"),
    }
}
