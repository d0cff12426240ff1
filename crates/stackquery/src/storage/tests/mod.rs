//! Unit tests of the storage layer: one conformance suite run against every backend
//! (`backends`, `sqlite`), the timeout wrapper, the envelope codecs including a no-panic
//! fuzz loop (`envelope`), and SQLite's background purge, bounded queue and shutdown.

use std::time::Duration;

use super::*;
use crate::key;

mod backends;
mod envelope;
#[cfg(feature = "sqlite")]
mod sqlite;

// ---------------------------------------------------------------------------------------
// Conformance: what every backend must do (no time passes in it).
// ---------------------------------------------------------------------------------------

async fn conformance(store: &dyn Storage) {
    // get / set / overwrite / delete
    assert_eq!(store.get("missing").await.unwrap(), None);
    store.set("a", b"1".to_vec(), None).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(b"1".to_vec()));
    store.set("a", b"2".to_vec(), None).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(b"2".to_vec()));
    store.delete("a").await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), None);
    store.delete("a").await.unwrap(); // deleting a missing key is fine

    // empty and large values survive unchanged
    store.set("empty", Vec::new(), None).await.unwrap();
    assert_eq!(store.get("empty").await.unwrap(), Some(Vec::new()));
    let big: Vec<u8> = (0..1_000_000_u32).map(|i| (i % 251) as u8).collect();
    store.set("big", big.clone(), None).await.unwrap();
    assert_eq!(store.get("big").await.unwrap(), Some(big));
    store.delete("big").await.unwrap();
    store.delete("empty").await.unwrap();

    // a long ttl is live; set without ttl replaces an entry that had one
    store
        .set("ttl", b"x".to_vec(), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(store.get("ttl").await.unwrap(), Some(b"x".to_vec()));
    store.set("ttl", b"y".to_vec(), None).await.unwrap();
    assert_eq!(store.get("ttl").await.unwrap(), Some(b"y".to_vec()));
    store
        .set("huge-ttl", b"z".to_vec(), Some(Duration::MAX))
        .await
        .unwrap();
    assert_eq!(store.get("huge-ttl").await.unwrap(), Some(b"z".to_vec()));
    store.delete("ttl").await.unwrap();
    store.delete("huge-ttl").await.unwrap();

    // delete_prefix over QueryKey texts: ["user"] and its children, not ["users", ..]
    let keys = [
        key!["user"],
        key!["user", 1],
        key!["user", 2],
        key!["user", 1, "posts"],
        key!["users", 1],
        key!["post", 1],
        key!["user_", 1],
    ];
    for k in &keys {
        store
            .set(&k.to_string(), b"v".to_vec(), None)
            .await
            .unwrap();
    }
    let removed = store
        .delete_prefix(&children_prefix(&key!["user"]))
        .await
        .unwrap();
    assert_eq!(removed, 3);
    for (k, kept) in keys
        .iter()
        .zip([true, false, false, false, true, true, true])
    {
        assert_eq!(
            store.get(&k.to_string()).await.unwrap().is_some(),
            kept,
            "{k}"
        );
    }
    assert_eq!(
        store
            .delete_prefix(&children_prefix(&key![]))
            .await
            .unwrap(),
        4,
        "the empty key's children are every key"
    );

    // the prefix is text, not a pattern
    for k in ["a%b", "a_b", "axb", "a*b", "a"] {
        store.set(k, b"v".to_vec(), None).await.unwrap();
    }
    assert_eq!(store.delete_prefix("a%").await.unwrap(), 1);
    assert_eq!(store.delete_prefix("a_").await.unwrap(), 1);
    assert_eq!(store.delete_prefix("a*").await.unwrap(), 1);
    assert_eq!(store.get("axb").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(store.delete_prefix("nothing").await.unwrap(), 0);

    // prefixes ending in chars next to encoding boundaries
    for k in [
        "é1",
        "é2",
        "ê",
        "\u{D7FF}x",
        "\u{E000}",
        "\u{10FFFF}a",
        "\u{10FFFF}",
        "z",
    ] {
        store.set(k, b"v".to_vec(), None).await.unwrap();
    }
    assert_eq!(store.delete_prefix("é").await.unwrap(), 2);
    assert_eq!(store.get("ê").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(store.delete_prefix("\u{D7FF}").await.unwrap(), 1);
    assert_eq!(store.get("\u{E000}").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(store.delete_prefix("\u{10FFFF}").await.unwrap(), 2);
    assert_eq!(store.get("z").await.unwrap(), Some(b"v".to_vec()));

    // the empty prefix removes everything that is left
    let left = store.delete_prefix("").await.unwrap();
    assert_eq!(left, 5, "a, axb, ê, \\u{{E000}} and z");
    assert_eq!(store.get("z").await.unwrap(), None);
}
