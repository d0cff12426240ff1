//! The second tier: hydration, write-behind, failures, snapshots.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{scripted, settle, Calls};
use serde::{Deserialize, Serialize};
use stackquery::storage::{async_trait, MemoryStorage, Storage, StorageError};
use stackquery::{key, QueryClient, QueryKey, QueryOptions, SqliteStorage};

const SEC: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn user_query(id: u64, name: &'static str) -> (QueryOptions<User>, Calls) {
    let (opts, calls) = scripted(key!["user", id], move |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(User {
            id,
            name: format!("{name} v{n}"),
        })
    });
    (opts.persist(), calls)
}

/// A storage wrapper that can be slowed down, made to fail, or made to hang.
#[derive(Clone, Default)]
struct Faulty {
    inner: MemoryStorage,
    delay: Arc<parking_lot::Mutex<Duration>>,
    fail: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
    sets: Arc<AtomicU32>,
    gets: Arc<AtomicU32>,
}

impl Faulty {
    async fn gate(&self) -> Result<(), StorageError> {
        if self.hang.load(Ordering::SeqCst) {
            futures::future::pending::<()>().await;
        }
        let d = *self.delay.lock();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StorageError::backend("injected failure"));
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for Faulty {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.gate().await?;
        self.inner.get(key).await
    }
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.sets.fetch_add(1, Ordering::SeqCst);
        self.gate().await?;
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.gate().await?;
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        self.gate().await?;
        self.inner.delete_prefix(prefix).await
    }
}

fn client_on(store: &Faulty) -> QueryClient {
    QueryClient::builder().storage(store.clone()).build()
}

#[tokio::test]
async fn a_new_client_on_the_same_sqlite_file_reads_without_fetching() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.db");
    {
        let client = QueryClient::builder()
            .storage(SqliteStorage::open(&path).unwrap())
            .build();
        let (opts, calls) = user_query(1, "ada");
        assert_eq!(client.fetch_query(&opts).await.unwrap().name, "ada v1");
        assert_eq!(calls.get(), 1);
        client.flush_storage().await;
    }
    let client = QueryClient::builder()
        .storage(SqliteStorage::open(&path).unwrap())
        .build();
    let (opts, calls) = user_query(1, "ada");
    let opts = opts.stale_time(Duration::from_secs(3600));
    assert_eq!(client.fetch_query(&opts).await.unwrap().name, "ada v1");
    assert_eq!(calls.get(), 0, "served from SQLite, no fetch");
    assert_eq!(client.stats().l2_hits, 1);
    let state = client.get_query_state::<User>(&key!["user", 1]).unwrap();
    assert!(!state.is_fetching(), "hydrated state is idle");
}

#[tokio::test]
async fn two_os_processes_share_a_cache_through_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    // The persist_restart example is built by `cargo test` alongside this test.
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    let bin = examples.join(format!("persist_restart{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        // `cargo test` builds examples with the whole suite; when this file runs alone,
        // build the example ourselves.
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "stackquery", "--example", "persist_restart"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    assert!(bin.exists(), "example binary missing at {}", bin.display());
    let run = || {
        let out = std::process::Command::new(&bin)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = run();
    let second = run();
    assert!(
        first.contains("fetch calls: 1"),
        "first process fetched:\n{first}"
    );
    assert!(
        second.contains("fetch calls: 0"),
        "second process read the file:\n{second}"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_hydrated_data_is_served_at_once_and_refreshed_once() {
    let store = Faulty::default();
    let writer = client_on(&store);
    let (opts, _) = user_query(1, "ada");
    writer.fetch_query(&opts).await.unwrap();
    writer.flush_storage().await;
    // Default stale time 0: hydrated data is stale for the next client.
    let reader = client_on(&store);
    let (opts, calls) = user_query(1, "ada");
    let gets_before = store.gets.load(Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let results = futures::future::join_all((0..20).map(|_| reader.fetch_query(&opts))).await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no waiting for the network"
    );
    assert!(results.iter().all(|r| r.as_ref().unwrap().name == "ada v1"));
    assert_eq!(
        store.gets.load(Ordering::SeqCst) - gets_before,
        1,
        "concurrent callers share one read"
    );
    tokio::time::sleep(SEC).await;
    settle().await;
    assert_eq!(calls.get(), 1, "exactly one background refresh");
    assert_eq!(
        reader
            .get_query_data::<User>(&key!["user", 1])
            .unwrap()
            .name,
        "ada v1"
    );
}

#[tokio::test(start_paused = true)]
async fn one_storage_write_per_settled_fetch_and_no_transient_states() {
    let store = Faulty::default();
    let client = client_on(&store);
    let (opts, _) = user_query(1, "ada");
    let c = client.clone();
    let o = opts.clone();
    let t = tokio::spawn(async move { c.fetch_query(&o).await });
    settle().await;
    client.flush_storage().await;
    assert_eq!(
        store.sets.load(Ordering::SeqCst),
        0,
        "nothing written while fetching"
    );
    t.await.unwrap().unwrap();
    client.flush_storage().await;
    assert_eq!(store.sets.load(Ordering::SeqCst), 1);
    client.refetch_query(&opts).await.unwrap();
    client.flush_storage().await;
    assert_eq!(store.sets.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn write_behind_keeps_one_pending_write_per_key_and_the_newest_data() {
    let store = Faulty::default();
    *store.delay.lock() = Duration::from_millis(500);
    let client = client_on(&store);
    let (opts, _) = user_query(1, "ada");
    client
        .set_query_data(
            key!["user", 1],
            User {
                id: 1,
                name: "seed".into(),
            },
        )
        .unwrap();
    client
        .fetch_query(&opts.clone().stale_time(Duration::MAX))
        .await
        .unwrap(); // options now known
    for i in 0..1000 {
        client
            .set_query_data(
                key!["user", 1],
                User {
                    id: 1,
                    name: format!("n{i}"),
                },
            )
            .unwrap();
    }
    client.flush_storage().await;
    let writes = store.sets.load(Ordering::SeqCst);
    assert!(writes <= 3, "1,000 updates coalesced into {writes} writes");
    let reader = client_on(&store);
    let got = reader
        .fetch_query(&opts.stale_time(Duration::MAX))
        .await
        .unwrap();
    assert_eq!(got.name, "n999", "the last write holds the newest data");
}

/// A `set_query_data` lands while the second tier is being read for the same key: the
/// older stored data must not overwrite it, and the callers get the newer data.
#[tokio::test(start_paused = true)]
async fn hydration_never_overwrites_newer_data_in_memory() {
    let store = Faulty::default();
    let writer = client_on(&store);
    let (opts, _) = user_query(1, "ada");
    writer.fetch_query(&opts).await.unwrap();
    writer.flush_storage().await;
    *store.delay.lock() = SEC;
    let reader = client_on(&store);
    let r = reader.clone();
    let o = opts.clone().stale_time(Duration::MAX);
    let t = tokio::spawn(async move { r.fetch_query(&o).await });
    settle().await;
    reader
        .set_query_data(
            key!["user", 1],
            User {
                id: 1,
                name: "manual".into(),
            },
        )
        .unwrap();
    let got = t.await.unwrap().unwrap();
    assert_eq!(got.name, "manual");
    assert_eq!(
        reader
            .get_query_data::<User>(&key!["user", 1])
            .unwrap()
            .name,
        "manual"
    );
}

#[tokio::test(start_paused = true)]
async fn the_invalidated_flag_survives_eviction() {
    let store = Faulty::default();
    let client = QueryClient::builder()
        .storage(store.clone())
        .max_queries(1)
        .build();
    let (opts, calls) = user_query(1, "ada");
    let opts = opts.stale_time(Duration::MAX);
    client.fetch_query(&opts).await.unwrap();
    client.invalidate_queries(key!["user"]).await;
    client.flush_storage().await;
    client.set_query_data(key!["other"], 1_u32).unwrap(); // evicts user 1
    assert!(client.get_query_data::<User>(&key!["user", 1]).is_none());
    let got = client.fetch_query(&opts).await.unwrap();
    assert_eq!(got.name, "ada v1", "hydrated");
    settle().await;
    assert_eq!(
        calls.get(),
        2,
        "still stale after hydration: refreshed in the background"
    );
}

#[tokio::test(start_paused = true)]
async fn removed_and_reset_data_is_not_resurrected() {
    let store = Faulty::default();
    let client = client_on(&store);
    let (a, _) = user_query(1, "ada");
    let (b, _) = user_query(2, "bob");
    client.fetch_query(&a).await.unwrap();
    client.fetch_query(&b).await.unwrap();
    client.flush_storage().await;
    assert_eq!(store.inner.len(), 2);
    client.remove_queries(key!["user", 1]);
    client.reset_queries(key!["user", 2]);
    client.flush_storage().await;
    assert_eq!(store.inner.len(), 0);
    let fresh = client_on(&store);
    let (a, calls) = user_query(1, "ada");
    assert_eq!(fresh.fetch_query(&a).await.unwrap().name, "ada v1");
    assert_eq!(calls.get(), 1, "fetched, not hydrated");
}

#[tokio::test(start_paused = true)]
async fn ttl_follows_gc_time_in_milliseconds() {
    let store = MemoryStorage::new();
    let client = QueryClient::builder().storage(store.clone()).build();
    let (opts, _) = user_query(1, "ada");
    client
        .fetch_query(&opts.gc_time(Duration::from_millis(500)))
        .await
        .unwrap();
    client.flush_storage().await;
    assert_eq!(store.len(), 1);
    tokio::time::advance(Duration::from_millis(400)).await;
    assert!(store.get(r#"["user",1]"#).await.unwrap().is_some());
    tokio::time::advance(Duration::from_millis(150)).await;
    assert!(
        store.get(r#"["user",1]"#).await.unwrap().is_none(),
        "500 ms, not 0 s or 1 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_storage_never_fails_a_query() {
    let store = Faulty::default();
    store.fail.store(true, Ordering::SeqCst);
    let client = client_on(&store);
    let (opts, calls) = user_query(1, "ada");
    assert_eq!(client.fetch_query(&opts).await.unwrap().name, "ada v1");
    client
        .set_query_data(
            key!["user", 1],
            User {
                id: 1,
                name: "x".into(),
            },
        )
        .unwrap();
    client.flush_storage().await;
    assert_eq!(calls.get(), 1);
    assert!(client.stats().l2_errors >= 2, "{:?}", client.stats());
}

#[tokio::test(start_paused = true)]
async fn a_hanging_storage_times_out_and_the_query_goes_on() {
    let store = Faulty::default();
    store.hang.store(true, Ordering::SeqCst);
    let client = QueryClient::builder()
        .storage(store.clone())
        .storage_timeout(Duration::from_millis(200))
        .build();
    let (opts, calls) = user_query(1, "ada");
    let start = tokio::time::Instant::now();
    assert_eq!(client.fetch_query(&opts).await.unwrap().name, "ada v1");
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(300),
        "200 ms timeout + 100 ms fetch"
    );
    assert_eq!(calls.get(), 1);
    client.flush_storage().await;
    assert!(client.stats().l2_errors >= 2);
}

#[tokio::test]
async fn an_unwritable_sqlite_path_is_an_error_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    assert!(SqliteStorage::open(file.join("cache.db")).is_err());
}

#[tokio::test(start_paused = true)]
async fn corrupt_truncated_and_unknown_version_entries_are_misses() {
    let store = Faulty::default();
    let bad: [&[u8]; 3] = [
        b"\x00\x01garbage",
        br#"{"version":1,"data":{"id":1,"na"#,
        br#"{"version":99,"data":{"id":1,"name":"x"},"data_updated_at_ms":0,"invalidated":false}"#,
    ];
    for (i, bytes) in bad.iter().enumerate() {
        let k = key!["user", i as u64 + 1];
        store
            .inner
            .set(&k.to_string(), bytes.to_vec(), None)
            .await
            .unwrap();
        let client = client_on(&store);
        let (opts, calls) = user_query(i as u64 + 1, "ok");
        assert_eq!(client.fetch_query(&opts).await.unwrap().name, "ok v1");
        assert_eq!(calls.get(), 1, "case {i}: a miss, so fetched");
        client.flush_storage().await;
        let now = store.inner.peek(&k.to_string()).unwrap();
        assert_ne!(now.as_slice(), *bytes, "case {i}: replaced");
    }
}

#[tokio::test(start_paused = true)]
async fn snapshots_round_trip_and_newer_data_wins() {
    let store = Faulty::default();
    let a = client_on(&store);
    let (opts, _) = user_query(1, "ada");
    a.fetch_query(&opts).await.unwrap();
    let snapshot = a.dehydrate();
    assert_eq!(snapshot.queries.len(), 1);
    let json = serde_json::to_string(&snapshot).unwrap();
    assert!(json.contains("ada v1"));

    // Hand-off: another client restores it and serves it without fetching.
    let b = QueryClient::new();
    b.hydrate(serde_json::from_str(&json).unwrap()).unwrap();
    let (opts_b, calls_b) = user_query(1, "ada");
    let got = b
        .fetch_query(&opts_b.clone().stale_time(Duration::MAX))
        .await
        .unwrap();
    assert_eq!(got.name, "ada v1");
    assert_eq!(calls_b.get(), 0);

    // Newer data in memory wins over an older snapshot.
    tokio::time::advance(SEC).await;
    b.set_query_data(
        key!["user", 1],
        User {
            id: 1,
            name: "newer".into(),
        },
    )
    .unwrap();
    b.hydrate(serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(
        b.get_query_data::<User>(&key!["user", 1]).unwrap().name,
        "newer"
    );
    let k: QueryKey = snapshot.queries[0].key.parse().unwrap();
    assert_eq!(k, key!["user", 1]);
}

#[tokio::test(start_paused = true)]
async fn queries_without_persist_never_touch_the_storage() {
    let store = Faulty::default();
    let client = client_on(&store);
    let (opts, _) = scripted(key!["plain"], |n| async move { Ok::<_, String>(n) });
    client.fetch_query(&opts).await.unwrap();
    client.set_query_data(key!["plain"], 5_u32).unwrap();
    client.flush_storage().await;
    assert_eq!(
        store.gets.load(Ordering::SeqCst) + store.sets.load(Ordering::SeqCst),
        0
    );
}
