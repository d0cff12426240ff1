//! SQLite specifics: real time and real files, short waits only.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::super::*;

fn raw_count(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT count(*) FROM stackquery_cache", [], |row| {
        row.get(0)
    })
    .unwrap()
}

/// Polls `cond` every 5 ms for up to 5 s; true once it holds.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn ttl_is_kept_in_milliseconds_not_rounded_to_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ttl.sqlite");
    let store = SqliteStorage::open(&path).unwrap();
    let before = now_ms();
    store
        .set("k", b"v".to_vec(), Some(Duration::from_millis(500)))
        .await
        .unwrap();
    let after = now_ms();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let expires_at: i64 = conn
        .query_row(
            "SELECT expires_at FROM stackquery_cache WHERE key = 'k'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(
        (before + 500..=after + 500).contains(&expires_at),
        "{before} {expires_at} {after}"
    );
    // A ttl under a millisecond is rounded up, not down to "already expired".
    store
        .set("tiny", b"v".to_vec(), Some(Duration::from_micros(1)))
        .await
        .unwrap();
    let tiny: i64 = conn
        .query_row(
            "SELECT expires_at FROM stackquery_cache WHERE key = 'tiny'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(tiny > before, "{tiny} {before}");

    store
        .set("short", b"v".to_vec(), Some(Duration::from_millis(30)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(store.get("short").await.unwrap(), None);
    store
        .set("zero", b"v".to_vec(), Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(store.get("zero").await.unwrap(), None);
    store
        .set("long", b"v".to_vec(), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(store.get("long").await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn background_purge_deletes_expired_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("purge.sqlite");
    let store = SqliteStorage::builder(&path)
        .purge_interval(Some(Duration::from_millis(20)))
        .open()
        .unwrap();
    for k in ["a", "b", "c"] {
        store
            .set(k, b"v".to_vec(), Some(Duration::from_millis(1)))
            .await
            .unwrap();
    }
    store.set("keep", b"v".to_vec(), None).await.unwrap();
    assert!(eventually(|| raw_count(&path) == 1).await, "rows left");
    assert_eq!(store.get("keep").await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn without_purge_expired_rows_stay_but_are_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nopurge.sqlite");
    let store = SqliteStorage::builder(&path)
        .purge_interval(None)
        .open()
        .unwrap();
    store
        .set("gone", b"v".to_vec(), Some(Duration::from_millis(1)))
        .await
        .unwrap();
    store.set("keep", b"v".to_vec(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(store.get("gone").await.unwrap(), None);
    assert_eq!(raw_count(&path), 2, "no purge ran");
    assert_eq!(store.purge_expired().await.unwrap(), 1);
    assert_eq!(raw_count(&path), 1);
}

#[tokio::test]
async fn delete_prefix_counts_only_live_rows_and_removes_expired_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prefix.sqlite");
    let store = SqliteStorage::builder(&path)
        .purge_interval(None)
        .open()
        .unwrap();
    store
        .set("p1", b"v".to_vec(), Some(Duration::from_millis(1)))
        .await
        .unwrap();
    store.set("p2", b"v".to_vec(), None).await.unwrap();
    store.set("q", b"v".to_vec(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(store.delete_prefix("p").await.unwrap(), 1);
    assert_eq!(raw_count(&path), 1);
}

#[tokio::test]
async fn the_thread_stops_and_closes_the_file_when_the_last_handle_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drop.sqlite");
    let wal = dir.path().join("drop.sqlite-wal");
    let store = SqliteStorage::builder(&path)
        .purge_interval(Some(Duration::from_millis(5)))
        .open()
        .unwrap();
    let clone = store.clone();
    store.set("k", b"v".to_vec(), None).await.unwrap();
    assert!(wal.exists(), "WAL mode keeps a -wal file while open");
    drop(store);
    // A clone keeps the thread alive.
    assert_eq!(clone.get("k").await.unwrap(), Some(b"v".to_vec()));
    assert!(wal.exists());
    drop(clone);
    // Closing the last connection checkpoints and removes the WAL file.
    assert!(
        eventually(|| !wal.exists()).await,
        "the connection was not closed"
    );
    assert_eq!(raw_count(&path), 1);
}

#[tokio::test]
async fn writes_queued_before_the_drop_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flush.sqlite");
    let store = SqliteStorage::open(&path).unwrap();
    let mut pending = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        pending.push(tokio::spawn(async move {
            store.set(&format!("k{i}"), vec![i], None).await
        }));
    }
    drop(store);
    for p in pending {
        p.await.unwrap().unwrap();
    }
    assert_eq!(raw_count(&path), 50);
}

#[tokio::test]
async fn a_full_queue_fails_fast_instead_of_piling_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sqlite");
    let store = SqliteStorage::builder(&path)
        .queue_capacity(1)
        .busy_timeout(Duration::from_secs(10))
        .open()
        .unwrap();
    // Another process holds the write lock: the storage's thread waits on it.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let started = Instant::now();
    let calls: Vec<_> = (0..3_u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.set(&format!("k{i}"), vec![i], None).await })
        })
        .collect();
    // The thread holds at most one call and the queue one more: a third fails at once,
    // while the others wait for the lock.
    assert!(eventually(|| calls.iter().any(|c| c.is_finished())).await);
    other.execute_batch("COMMIT").unwrap();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let full = results
        .iter()
        .filter(|r| matches!(r, Err(StorageError::Backend(e)) if e.to_string().contains("queue is full")))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!((1..=2).contains(&full), "{results:?}");
    assert_eq!(ok + full, 3, "{results:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(raw_count(&path), ok as i64);
}

#[tokio::test]
async fn opening_bad_paths_is_an_error_value() {
    let dir = tempfile::tempdir().unwrap();
    // A parent that is a file: not even root can create a directory there.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = SqliteStorage::open(file.join("cache.sqlite")).unwrap_err();
    assert!(matches!(err, StorageError::Backend(_)));
    let report = crate::error::report(&err).to_string();
    assert!(report.contains("plain-file"), "{report}");
    // A directory is not a database file.
    assert!(SqliteStorage::open(dir.path()).is_err());
    // Nor is a file of garbage.
    let garbage = dir.path().join("garbage.sqlite");
    std::fs::write(&garbage, vec![0xAB; 8192]).unwrap();
    assert!(SqliteStorage::open(&garbage).is_err());
}

#[tokio::test]
async fn missing_parent_directories_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c.sqlite");
    let store = SqliteStorage::open(&path).unwrap();
    assert_eq!(store.path(), Some(path.as_path()));
    store.set("k", b"v".to_vec(), None).await.unwrap();
    assert!(path.exists());
}

#[tokio::test]
async fn sqlite_in_memory_conformance() {
    testing::run_all(&SqliteStorage::open_in_memory().unwrap()).await;
}

#[tokio::test]
async fn sqlite_file_conformance() {
    let dir = tempfile::tempdir().unwrap();
    testing::run_all(&SqliteStorage::open(dir.path().join("c.sqlite")).unwrap()).await;
}
