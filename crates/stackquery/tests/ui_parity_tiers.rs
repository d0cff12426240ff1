//! Issue 17's cached-data features where they meet a real second tier, on a SQLite file
//! and on a Redis server: initial data never shadows or overwrites a stored copy, and a
//! structurally shared refetch (equal data, same `Arc`) still rewrites the stored copy's
//! stamp, so other instances judge its freshness from the refetch. Real time (files and
//! sockets).

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stackquery::{key, QueryClient, QueryOptions};

/// Persisted options for `["doc"]` whose fetch returns `value` and counts its calls.
fn doc(value: &'static str, calls: &Arc<AtomicU32>) -> QueryOptions<String> {
    let calls = calls.clone();
    QueryOptions::new(key!["doc"], move || {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, String>(value.to_string()) }
    })
    .persist()
    .stale_time(Duration::from_secs(600))
}

/// A stored copy written by one instance wins over unstamped initial data on another,
/// and initial data alone writes nothing to the tier.
async fn a_stored_copy_wins_over_initial_data<F, Fut>(instance: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = QueryClient>,
{
    let calls = Arc::new(AtomicU32::new(0));
    let seeded = || doc("never", &calls).initial_data("initial".to_string());
    // Initial data alone: served, and nothing reaches the tier.
    let a = instance().await;
    assert_eq!(a.fetch_query(&seeded()).await.unwrap().as_str(), "initial");
    a.flush_storage().await;
    let b = instance().await;
    let read = b.get_query_data_or_stored::<String>(&key!["doc"]).await;
    assert!(read.is_none(), "initial data was written to the tier");
    // A fetched copy in the tier wins over initial data on a new instance.
    let writer = instance().await;
    writer.fetch_query(&doc("stored", &calls)).await.unwrap();
    writer.flush_storage().await;
    let c = instance().await;
    assert_eq!(c.fetch_query(&seeded()).await.unwrap().as_str(), "stored");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the writer fetched");
}

/// A refetch returning equal data keeps the same `Arc` in memory, but the stored copy
/// carries the refetch's stamp: a new instance reads it with that stamp, not the first.
async fn a_shared_refetch_rewrites_the_stored_stamp<F, Fut>(instance: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = QueryClient>,
{
    let calls = Arc::new(AtomicU32::new(0));
    let opts = doc("same", &calls).structural_sharing();
    let a = instance().await;
    let first = a.fetch_query(&opts).await.unwrap();
    let first_at = a
        .get_query_state::<String>(&key!["doc"])
        .unwrap()
        .data_updated_at
        .unwrap();
    a.flush_storage().await;
    // Stamps are whole milliseconds: make the second one differ.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = a.refetch_query(&opts).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "equal data keeps its Arc");
    let second_at = a
        .get_query_state::<String>(&key!["doc"])
        .unwrap()
        .data_updated_at
        .unwrap();
    assert!(second_at > first_at, "the refetch moved the stamp");
    a.flush_storage().await;
    let b = instance().await;
    assert_eq!(b.fetch_query(&opts).await.unwrap().as_str(), "same");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "b read the stored copy");
    let read_at = b
        .get_query_state::<String>(&key!["doc"])
        .unwrap()
        .data_updated_at
        .unwrap();
    let skew = read_at
        .duration_since(second_at)
        .unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_millis(2),
        "stored stamp {read_at:?}, refetch {second_at:?}"
    );
}

mod sqlite {
    use super::*;
    use stackquery::SqliteStorage;

    fn on_file(path: &std::path::Path) -> impl Fn() -> std::future::Ready<QueryClient> + '_ {
        move || {
            let store = SqliteStorage::open(path).unwrap();
            std::future::ready(QueryClient::builder().storage(store).build())
        }
    }

    /// Initial data and a SQLite file shared by several clients.
    #[tokio::test]
    async fn a_stored_copy_in_sqlite_wins_over_initial_data() {
        let dir = tempfile::tempdir().unwrap();
        a_stored_copy_wins_over_initial_data(on_file(&dir.path().join("c.db"))).await;
    }

    /// Structural sharing and a SQLite file shared by several clients.
    #[tokio::test]
    async fn a_shared_refetch_rewrites_the_stamp_in_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        a_shared_refetch_rewrites_the_stored_stamp(on_file(&dir.path().join("c.db"))).await;
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use common::redis_server::RedisServer;
    use stackquery::storage::RedisStorage;

    async fn instance(url: String, ns: &'static str) -> QueryClient {
        let storage = RedisStorage::builder(url)
            .namespace(ns)
            .connect()
            .await
            .expect("storage");
        QueryClient::builder().storage(storage).build()
    }

    /// Initial data and a Redis tier shared by several instances.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stored_copy_in_redis_wins_over_initial_data() {
        let Some(server) = RedisServer::start("a_stored_copy_in_redis_wins_over_initial_data")
        else {
            return;
        };
        a_stored_copy_wins_over_initial_data(|| instance(server.url(), "initial")).await;
    }

    /// Structural sharing and a Redis tier shared by several instances.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_refetch_rewrites_the_stamp_in_redis() {
        let Some(server) = RedisServer::start("a_shared_refetch_rewrites_the_stamp_in_redis")
        else {
            return;
        };
        a_shared_refetch_rewrites_the_stored_stamp(|| instance(server.url(), "sharing")).await;
    }
}
