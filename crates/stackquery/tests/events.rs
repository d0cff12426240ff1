//! `QueryClient::subscribe_events`: the cache's event stream.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::scripted;
use futures::StreamExt;
use stackquery::storage::MemoryStorage;
use stackquery::{
    key, CacheEventKind, EventStream, EventStreamItem, FetchStatus, MutationOptions,
    MutationStatus, QueryClient, QueryKey, QueryStatus, StorageOutcome,
};

/// Every event the stream holds right now (after letting spawned work run).
async fn drain(events: &mut EventStream) -> Vec<CacheEventKind> {
    let mut out = Vec::new();
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    while let Some(Some(item)) = futures::FutureExt::now_or_never(events.next()) {
        match item {
            EventStreamItem::Event(e) => out.push(e.kind),
            EventStreamItem::Lagged(n) => panic!("lagged by {n}"),
        }
    }
    out
}

fn names(events: &[CacheEventKind]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e {
            CacheEventKind::QueryAdded { .. } => "added",
            CacheEventKind::QueryUpdated { .. } => "updated",
            CacheEventKind::QueryInvalidated { .. } => "invalidated",
            CacheEventKind::QueryRemoved { .. } => "removed",
            CacheEventKind::QueryEvicted { .. } => "evicted",
            CacheEventKind::QueryCollected { .. } => "collected",
            CacheEventKind::ObserverAdded { .. } => "observer+",
            CacheEventKind::ObserverRemoved { .. } => "observer-",
            CacheEventKind::MutationAdded { .. } => "mutation+",
            CacheEventKind::MutationUpdated { .. } => "mutation",
            CacheEventKind::FetchStarted { .. } => "fetch",
            CacheEventKind::FetchRetried { .. } => "retry",
            CacheEventKind::FetchSucceeded { .. } => "ok",
            CacheEventKind::FetchFailed { .. } => "failed",
            CacheEventKind::StorageRead { .. } => "read",
            CacheEventKind::StorageWrite { .. } => "write",
            CacheEventKind::BusIn { .. } => "bus-in",
            CacheEventKind::BusOut { .. } => "bus-out",
            _ => "other",
        })
        .collect()
}

/// A fetch: the entry appears, goes fetching, the fetch starts and succeeds (with its
/// duration), and the entry holds data with a new data version. A hit adds nothing.
#[tokio::test(start_paused = true)]
async fn a_fetch_tells_its_whole_story_and_a_hit_tells_nothing() {
    let client = QueryClient::new();
    let mut events = client.subscribe_events();
    let (opts, _) = scripted(key!["a"], |_| async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok::<_, String>(1_u32)
    });
    let opts = opts.stale_time(Duration::from_secs(60));
    client.fetch_query(&opts).await.unwrap();
    let seen = drain(&mut events).await;
    assert_eq!(names(&seen), ["added", "updated", "fetch", "ok", "updated"]);
    match &seen[1] {
        CacheEventKind::QueryUpdated {
            fetch_status,
            status,
            ..
        } => {
            assert_eq!(
                (*status, *fetch_status),
                (QueryStatus::Pending, FetchStatus::Fetching)
            );
        }
        other => panic!("{other:?}"),
    }
    let CacheEventKind::QueryUpdated {
        status,
        data_version,
        data_updated_at,
        ..
    } = &seen[4]
    else {
        panic!("{:?}", seen[4]);
    };
    assert_eq!(*status, QueryStatus::Success);
    assert!(*data_version > 0 && data_updated_at.is_some());
    assert!(matches!(seen[3], CacheEventKind::FetchSucceeded { .. }));

    client.fetch_query(&opts).await.unwrap();
    assert!(
        drain(&mut events).await.is_empty(),
        "a fresh hit emits nothing"
    );
}

/// Invalidation, removal, eviction (the `max_queries` bound) and gc each have their event.
#[tokio::test(start_paused = true)]
async fn invalidated_removed_evicted_and_collected() {
    let client = QueryClient::builder()
        .max_queries(1)
        .gc_time(Duration::from_secs(5))
        .build();
    let mut events = client.subscribe_events();
    client.set_query_data(key!["x"], 1_u8).unwrap();
    client.invalidate_queries(key!["x"]).await;
    let seen = drain(&mut events).await;
    assert!(names(&seen).contains(&"invalidated"), "{seen:?}");

    client.set_query_data(key!["y"], 2_u8).unwrap(); // bound 1: x goes
    let seen = drain(&mut events).await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, CacheEventKind::QueryEvicted { key } if *key == key!["x"])),
        "{seen:?}"
    );

    client.remove_queries(key!["y"]);
    let seen = drain(&mut events).await;
    assert!(seen
        .iter()
        .any(|e| matches!(e, CacheEventKind::QueryRemoved { key } if *key == key!["y"])));

    let unbounded = QueryClient::builder()
        .gc_time(Duration::from_secs(5))
        .build();
    let mut events = unbounded.subscribe_events();
    let (opts, _) = scripted(key!["gc"], |_| async { Ok::<_, String>(1_u8) });
    let observer = unbounded.watch(&opts.gc_time(Duration::from_secs(5)));
    let sub = observer.subscribe(|_| {});
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(sub);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let seen = drain(&mut events).await;
    let n = names(&seen);
    assert!(
        n.contains(&"observer+") && n.contains(&"observer-"),
        "{n:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, CacheEventKind::QueryCollected { key } if *key == key!["gc"])),
        "{n:?}"
    );
}

/// Retries and a final failure, with the error.
#[tokio::test(start_paused = true)]
async fn retries_and_failures() {
    let client = QueryClient::new();
    let mut events = client.subscribe_events();
    let (opts, calls) = scripted(key!["f"], |_| async { Err::<u8, _>("down".to_string()) });
    let opts = opts.retry(2).retry_delay(|_| Duration::from_millis(10));
    assert!(client.fetch_query(&opts).await.is_err());
    assert_eq!(calls.get(), 3);
    let seen = drain(&mut events).await;
    let retries = seen
        .iter()
        .filter(|e| matches!(e, CacheEventKind::FetchRetried { .. }))
        .count();
    assert_eq!(retries, 2);
    assert!(seen.iter().any(|e| matches!(
        e,
        CacheEventKind::FetchFailed { error, .. } if error.report().to_string().contains("down")
    )));
}

/// A mutation is added, then goes pending and succeeds.
#[tokio::test]
async fn mutations() {
    let client = QueryClient::new();
    let mut events = client.subscribe_events();
    let m = client.mutation(MutationOptions::new(|n: u32| async move {
        Ok::<_, String>(n + 1)
    }));
    assert_eq!(*m.mutate(1).await.unwrap(), 2);
    m.reset();
    let seen = drain(&mut events).await;
    let statuses: Vec<MutationStatus> = seen
        .iter()
        .filter_map(|e| match e {
            CacheEventKind::MutationUpdated { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    assert!(matches!(seen[0], CacheEventKind::MutationAdded { .. }));
    assert_eq!(
        statuses,
        [
            MutationStatus::Pending,
            MutationStatus::Success,
            MutationStatus::Idle
        ]
    );
}

/// Second-tier traffic: a write behind, then a read (hit) by a new client, a miss.
#[tokio::test]
async fn storage_reads_and_writes() {
    let store = Arc::new(MemoryStorage::new());
    let writer = QueryClient::builder().storage(store.clone()).build();
    let mut events = writer.subscribe_events();
    let (opts, _) = scripted(key!["s"], |_| async { Ok::<_, String>(5_u32) });
    let opts = opts.persist();
    writer.fetch_query(&opts).await.unwrap();
    writer.flush_storage().await;
    let seen = drain(&mut events).await;
    assert!(seen.iter().any(|e| matches!(
        e,
        CacheEventKind::StorageRead {
            outcome: StorageOutcome::Miss,
            ..
        }
    )));
    assert!(seen.iter().any(|e| matches!(
        e,
        CacheEventKind::StorageWrite { outcome: StorageOutcome::Written, key } if key == "[\"s\"]"
    )));

    let reader = QueryClient::builder().storage(store).build();
    let mut events = reader.subscribe_events();
    reader.fetch_query(&opts).await.unwrap();
    let seen = drain(&mut events).await;
    assert!(seen.iter().any(|e| matches!(
        e,
        CacheEventKind::StorageRead {
            outcome: StorageOutcome::Hit,
            ..
        }
    )));
}

/// A subscriber that does not keep up is told how many events it missed; the cache
/// never waits for it.
#[tokio::test]
async fn a_slow_subscriber_sees_that_it_lagged() {
    let client = QueryClient::builder().event_capacity(8).build();
    let mut events = client.subscribe_events();
    for i in 0..100_u32 {
        client.set_query_data(key!["k", i], i).unwrap();
    }
    match events.next().await {
        Some(EventStreamItem::Lagged(n)) => assert!(n >= 100, "{n}"),
        other => panic!("{other:?}"),
    }
    // Then the newest events, in order.
    let mut last: Option<QueryKey> = None;
    while let Some(Some(EventStreamItem::Event(e))) =
        futures::FutureExt::now_or_never(events.next())
    {
        if let CacheEventKind::QueryUpdated { key, .. } = e.kind {
            last = Some(key);
        }
    }
    assert_eq!(last, Some(key!["k", 99_u32]));
}

/// The stream ends with the client; dropping a stream unsubscribes.
#[tokio::test]
async fn the_stream_ends_with_the_client() {
    let client = QueryClient::new();
    let mut events = client.subscribe_events();
    drop(client);
    assert!(events.next().await.is_none());
}

/// Bus traffic: what one instance sends is `BusOut` there and `BusIn` on the other.
/// Real Redis, real time, generous bounds.
#[cfg(feature = "redis")]
#[tokio::test]
async fn bus_messages_in_and_out() {
    use common::redis_server::RedisServer;
    use stackquery::bus::RedisBus;
    use stackquery::storage::RedisStorage;

    let Some(server) = RedisServer::start("events_bus") else {
        return;
    };
    let instance = || async {
        let storage = RedisStorage::builder(server.url())
            .namespace("events")
            .connect()
            .await
            .expect("storage");
        let bus = RedisBus::builder(server.url())
            .namespace("events")
            .connect()
            .await
            .expect("bus");
        let client = QueryClient::builder().storage(storage).bus(bus).build();
        client.set_query_data(key!["warmup"], 0_u8).unwrap(); // starts the listener
        client
    };
    let (a, b) = (instance().await, instance().await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut out = a.subscribe_events();
    let mut incoming = b.subscribe_events();
    a.invalidate_queries(key!["doc"]).await;
    assert!(a.shutdown(Duration::from_secs(10)).await);
    let sent = drain(&mut out).await;
    assert!(
        sent.iter()
            .any(|e| matches!(e, CacheEventKind::BusOut { message } if message.contains("doc"))),
        "{sent:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = drain(&mut incoming).await;
        if seen
            .iter()
            .any(|e| matches!(e, CacheEventKind::BusIn { message } if message.contains("doc")))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no BusIn on the other instance"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
