//! Issue 16's features where they meet a real second tier or the bus: data read back from
//! a SQLite file or a Redis tier is weighed against `max_weight` like fetched data, and a
//! removal another instance sends over the Redis bus fires the token of a fetch in flight
//! here. Real time (files and sockets), generous bounds.

mod common;

use std::time::Duration;

use common::{scripted, Calls};
use stackquery::{key, FetchContext, QueryClient, QueryKey, QueryOptions};

/// A persisted document of `len` characters, weighed by its JSON length (`len` + 2).
fn document(key: QueryKey, len: usize) -> (QueryOptions<String>, Calls) {
    let (opts, calls) = scripted(key, move |_| async move { Ok("x".repeat(len)) });
    (
        opts.persist().weigh_serialized().stale_time(Duration::MAX),
        calls,
    )
}

/// Both tiers' shared scenario: `writer` fetched and stored a 30-character document;
/// `reader` (bound 100) holds an 80-weight entry, then reads the document from the tier
/// without fetching: 32 more pushes the older entry out, and the total is exactly the
/// document's weight.
async fn stored_data_is_weighed(writer: QueryClient, reader: QueryClient) {
    let (doc, calls) = document(key!["doc"], 30);
    writer.fetch_query(&doc).await.unwrap();
    writer.flush_storage().await;
    assert_eq!(calls.get(), 1);

    let (small, _) = scripted(key!["small"], |_| async { Ok(vec![0_u8; 80]) });
    let small = small.weigher(|v: &Vec<u8>| v.len() as u32);
    reader.fetch_query(&small).await.unwrap();
    assert_eq!(reader.stats().total_weight, 80);
    let read = reader.fetch_query(&doc).await.unwrap();
    assert_eq!(read.len(), 30);
    assert_eq!(calls.get(), 1, "read back from the tier, not fetched");
    // The fetch task trims after it settles, so on a multi-threaded runtime the caller
    // may run first: wait (generously) for the trim.
    let started = std::time::Instant::now();
    while reader.stats().total_weight != 32 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "total {} after 5 s",
            reader.stats().total_weight
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(reader.get_query_data::<Vec<u8>>(&key!["small"]).is_none());
}

mod sqlite {
    use super::*;
    use stackquery::SqliteStorage;

    /// Guards the weight bound on hydration from a SQLite file: a copy read back is
    /// weighed like fetched data, so reading a shared file cannot grow memory past
    /// `max_weight`.
    #[tokio::test]
    async fn data_read_from_a_sqlite_file_is_weighed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.db");
        let on_file = |bound: Option<u64>| {
            let builder = QueryClient::builder().storage(SqliteStorage::open(&path).unwrap());
            match bound {
                Some(max) => builder.max_weight(max),
                None => builder,
            }
            .build()
        };
        stored_data_is_weighed(on_file(None), on_file(Some(100))).await;
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use common::redis_server::RedisServer;
    use stackquery::bus::RedisBus;
    use stackquery::storage::RedisStorage;

    async fn instance(server: &RedisServer, ns: &str, bound: Option<u64>) -> QueryClient {
        let storage = RedisStorage::builder(server.url())
            .namespace(ns)
            .connect()
            .await
            .expect("storage");
        let bus = RedisBus::builder(server.url())
            .namespace(ns)
            .connect()
            .await
            .expect("bus");
        let mut builder = QueryClient::builder().storage(storage).bus(bus);
        if let Some(max) = bound {
            builder = builder.max_weight(max);
        }
        let client = builder.build();
        // Start the bus listener (it starts with the first use of the client).
        client.set_query_data(key!["__warmup"], 0_u8).unwrap();
        client
    }

    /// Guards the weight bound on hydration from the shared Redis tier: another
    /// instance's copy read back is weighed like fetched data.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_read_from_the_redis_tier_is_weighed() {
        let Some(server) = RedisServer::start("data_read_from_the_redis_tier_is_weighed") else {
            return;
        };
        let writer = instance(&server, "weights", None).await;
        let reader = instance(&server, "weights", Some(100)).await;
        // The warm-up entry weighs the default weight (1): out of the way first.
        reader.remove_queries(key!["__warmup"]);
        stored_data_is_weighed(writer, reader).await;
    }

    /// Guards the fetch context across instances: `remove_queries` on instance A reaches
    /// B over the bus, and B's fetch of that key in flight hears it through its token
    /// (the function here stops on it), instead of holding its upstream call open for
    /// an entry nobody keeps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removal_sent_over_the_bus_fires_the_fetch_token_on_another_instance() {
        let Some(server) = RedisServer::start("a_removal_sent_over_the_bus_fires_the_token") else {
            return;
        };
        let a = instance(&server, "tokens", None).await;
        let b = instance(&server, "tokens", None).await;
        let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<u32>();
        let fired_tx = std::sync::Mutex::new(Some(fired_tx));
        let started = std::sync::Arc::new(tokio::sync::Notify::new());
        let on_start = started.clone();
        let opts = QueryOptions::with_context(key!["slow"], move |ctx: FetchContext| {
            let tx = fired_tx.lock().unwrap().take();
            let on_start = on_start.clone();
            async move {
                on_start.notify_one();
                // An upstream call that would take a minute, unless told to stop.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(60)) => Ok::<u32, String>(1),
                    () = ctx.cancelled() => {
                        if let Some(tx) = tx {
                            let _ = tx.send(ctx.attempt());
                        }
                        Err("stopped: the entry was removed".to_string())
                    }
                }
            }
        })
        .retry(0);
        let fetch = tokio::spawn({
            let b = b.clone();
            async move { b.fetch_query(&opts).await }
        });
        started.notified().await;
        a.remove_queries(key!["slow"]);
        let attempt = tokio::time::timeout(Duration::from_secs(10), fired_rx)
            .await
            .expect("B's token fired within 10 s of A's removal")
            .expect("the fetch reported its token");
        assert_eq!(attempt, 0);
        let result = tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .expect("B's fetch ended")
            .unwrap();
        let err = result.unwrap_err();
        assert!(err.is_cancelled(), "{err}");
        assert!(b.get_query_data::<u32>(&key!["slow"]).is_none());
    }
}
