//! The second-tier backends through the public API: SQLite files shared between handles,
//! time to live, prefix deletion of key trees, bad paths, corrupt envelopes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use stackquery::key;
use stackquery::storage::{
    children_prefix, decode, encode, Codec, Envelope, MemoryStorage, Storage, StorageError,
    TimeoutStorage,
};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn user_envelope(id: u64, name: &str) -> Envelope<User> {
    Envelope::new(
        User {
            id,
            name: name.into(),
        },
        SystemTime::now(),
        false,
    )
}

/// Removes a key and every key under it, as the client does for `remove_queries`.
async fn delete_tree(store: &dyn Storage, prefix: &stackquery::QueryKey) -> u64 {
    store.delete(&prefix.to_string()).await.unwrap();
    store.delete_prefix(&children_prefix(prefix)).await.unwrap()
}

#[tokio::test]
async fn memory_storage_behind_arc_dyn_and_a_timeout() {
    let memory = MemoryStorage::new();
    let store: Arc<dyn Storage> =
        Arc::new(TimeoutStorage::new(memory.clone(), Duration::from_secs(1)));
    let k = key!["user", 1].to_string();
    let bytes = encode(&user_envelope(1, "Ada"), Codec::Json).unwrap();
    store.set(&k, bytes, None).await.unwrap();
    let env: Envelope<User> = decode(&store.get(&k).await.unwrap().unwrap()).unwrap();
    assert_eq!(env.data.name, "Ada");
    assert_eq!((memory.stats().sets, memory.stats().gets), (1, 1));
}

#[tokio::test]
async fn memory_storage_removes_key_trees_and_reports_corrupt_entries() {
    let store = MemoryStorage::new();
    for k in [key!["user"], key!["user", 1], key!["users", 1]] {
        store
            .set(&k.to_string(), b"{".to_vec(), None)
            .await
            .unwrap();
    }
    assert_eq!(delete_tree(&store, &key!["user"]).await, 1);
    assert_eq!(store.keys(), [key!["users", 1].to_string()]);
    let stored = store
        .get(&key!["users", 1].to_string())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        decode::<User>(&stored),
        Err(StorageError::Corrupt(_))
    ));
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use stackquery::storage::SqliteStorage;

    #[tokio::test]
    async fn a_value_written_by_one_handle_is_read_by_another_on_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.sqlite");
        let writer = SqliteStorage::open(&path).unwrap();
        let reader = SqliteStorage::open(&path).unwrap(); // open at the same time

        let k = key!["user", 1].to_string();
        let bytes = encode(&user_envelope(1, "Ada"), Codec::Json).unwrap();
        writer.set(&k, bytes.clone(), None).await.unwrap();
        assert_eq!(reader.get(&k).await.unwrap(), Some(bytes));

        // and after the writer is gone and a third handle opens the file ("a restart")
        writer
            .set(&key!["user", 2].to_string(), b"later".to_vec(), None)
            .await
            .unwrap();
        drop(writer);
        drop(reader);
        let restarted = SqliteStorage::open(&path).unwrap();
        let env: Envelope<User> = decode(&restarted.get(&k).await.unwrap().unwrap()).unwrap();
        assert_eq!(
            env.data,
            User {
                id: 1,
                name: "Ada".into()
            }
        );
        assert_eq!(
            restarted.get(&key!["user", 2].to_string()).await.unwrap(),
            Some(b"later".to_vec())
        );
    }

    #[tokio::test]
    async fn entries_expire_after_their_ttl_for_every_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ttl.sqlite");
        let a = SqliteStorage::open(&path).unwrap();
        let b = SqliteStorage::open(&path).unwrap();
        a.set("short", b"v".to_vec(), Some(Duration::from_millis(300)))
            .await
            .unwrap();
        a.set("long", b"v".to_vec(), Some(Duration::from_secs(600)))
            .await
            .unwrap();
        a.set("forever", b"v".to_vec(), None).await.unwrap();
        assert_eq!(b.get("short").await.unwrap(), Some(b"v".to_vec()));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(a.get("short").await.unwrap(), None);
        assert_eq!(b.get("short").await.unwrap(), None);
        assert_eq!(b.get("long").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(b.get("forever").await.unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn an_unwritable_path_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"").unwrap();
        let result = SqliteStorage::open(not_a_dir.join("cache.sqlite"));
        assert!(
            matches!(result, Err(StorageError::Backend(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn corrupt_envelopes_read_back_as_corrupt_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStorage::open(dir.path().join("corrupt.sqlite")).unwrap();
        let good = encode(&user_envelope(7, "Grace"), Codec::Json).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"\x13\x37 not an envelope".to_vec()),
            ("truncated", good[..good.len() / 2].to_vec()),
            (
                "unknown version",
                br#"{"version":99,"data":{"id":7,"name":"Grace"},"data_updated_at_ms":0,"invalidated":false}"#
                    .to_vec(),
            ),
            (
                "wrong shape",
                br#"{"version":1,"data":[1,2],"data_updated_at_ms":0,"invalidated":false}"#.to_vec(),
            ),
            ("empty", Vec::new()),
        ];
        for (name, bytes) in cases {
            store.set(name, bytes, None).await.unwrap();
            let stored = store.get(name).await.unwrap().unwrap();
            match decode::<User>(&stored) {
                Err(StorageError::Corrupt(_)) => {}
                other => panic!("{name}: expected Corrupt, got {other:?}"),
            }
        }
        store.set("good", good, None).await.unwrap();
        let env: Envelope<User> = decode(&store.get("good").await.unwrap().unwrap()).unwrap();
        assert_eq!(env.data.id, 7);
    }
}
