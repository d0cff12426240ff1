//! The conformance suite of [`Storage`]: what every backend must do, for backend authors to
//! run from their own tests (feature `test-util`, off by default).
//!
//! The crate runs this very suite against its own backends ([`MemoryStorage`](super::MemoryStorage), the SQLite
//! and Redis stores, and each behind [`TimeoutStorage`](super::TimeoutStorage) or an
//! `Arc<dyn Storage>`), so a third-party store that passes it behaves, as far as the client
//! can tell, like the built-in ones.
//!
//! Enable the feature for tests only:
//!
//! ```toml
//! [dev-dependencies]
//! stackquery = { version = "0.1", features = ["test-util"] }
//! ```
//!
//! then call [`run_all`] (or the `check_*` functions one by one) from a test:
//!
//! ```
//! use stackquery::storage::{testing, MemoryStorage};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // In a `#[tokio::test]`, with your own store in place of `MemoryStorage`.
//! let store = MemoryStorage::new();
//! testing::run_all(&store).await;
//! # }
//! ```
//!
//! # What it asks of the store
//!
//! - The store starts **empty** and nothing else uses it meanwhile: the checks count what
//!   [`delete_prefix`](Storage::delete_prefix) removes. Give each test a fresh store (a new
//!   file, database or namespace).
//! - Every check leaves the store empty again, so they can run one after another on one
//!   store, in any order.
//! - No time passes in them: a ttl is either zero (already expired) or long. Expiry after
//!   a short ttl depends on the backend's clock and is for the backend's own tests.
//! - The calls are plain `async` calls on the store, on whatever runtime the test runs; a
//!   failed check panics with an assertion message, as a test expects.

use std::time::Duration;

use super::{children_prefix, Storage};
use crate::key;

/// Runs every check of the suite on `store`, one after another (see [the module
/// docs](self) for what it asks of the store).
///
/// # Panics
///
/// When the store fails a check, or returns an error.
pub async fn run_all(store: &dyn Storage) {
    check_get_set_delete(store).await;
    check_values_round_trip(store).await;
    check_ttl(store).await;
    check_delete_prefix_of_key_trees(store).await;
    check_remove_key_tree(store).await;
    check_delete_prefix_is_plain_text(store).await;
}

/// `get` of a missing key is `None`; `set` stores and replaces; `delete` removes, and
/// removing a missing key is not an error.
///
/// # Panics
///
/// When the store fails the check, or returns an error.
pub async fn check_get_set_delete(store: &dyn Storage) {
    assert_eq!(store.get("missing").await.unwrap(), None);
    store.set("a", b"1".to_vec(), None).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(b"1".to_vec()));
    store.set("a", b"2".to_vec(), None).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(b"2".to_vec()));
    store.delete("a").await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), None);
    store.delete("a").await.unwrap(); // deleting a missing key is fine
}

/// An empty value and a large one (1 MB) are read back unchanged.
///
/// # Panics
///
/// When the store fails the check, or returns an error.
pub async fn check_values_round_trip(store: &dyn Storage) {
    store.set("empty", Vec::new(), None).await.unwrap();
    assert_eq!(store.get("empty").await.unwrap(), Some(Vec::new()));
    let big: Vec<u8> = (0..1_000_000_u32).map(|i| (i % 251) as u8).collect();
    store.set("big", big.clone(), None).await.unwrap();
    assert_eq!(store.get("big").await.unwrap(), Some(big));
    store.delete("big").await.unwrap();
    store.delete("empty").await.unwrap();
}

/// A long ttl is live, and so is [`Duration::MAX`] (a store must clamp it, not overflow);
/// a `set` without ttl replaces an entry that had one; a zero ttl stores an entry that is
/// already expired.
///
/// # Panics
///
/// When the store fails the check, or returns an error.
pub async fn check_ttl(store: &dyn Storage) {
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
    store
        .set("zero-ttl", b"z".to_vec(), Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(store.get("zero-ttl").await.unwrap(), None);
    store.delete("ttl").await.unwrap();
    store.delete("huge-ttl").await.unwrap();
    store.delete("zero-ttl").await.unwrap();
}

/// `delete_prefix` over [`QueryKey`](crate::QueryKey) texts: the [`children_prefix`] of
/// `["user"]` removes its children and counts them, not `["user"]` itself nor `["users",…]`
/// or `["user_",…]`; the children of the empty key `[]` are every key.
///
/// # Panics
///
/// When the store fails the check, or returns an error.
pub async fn check_delete_prefix_of_key_trees(store: &dyn Storage) {
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
}

/// Removing a key and everything under it, as the client does for `remove_queries`: a
/// `delete` of the key and a `delete_prefix` of its [`children_prefix`] take the tree
/// (with `%` and `_` in a key part) and nothing else; doing it again removes nothing.
///
/// # Panics
///
/// When the store fails the check, or returns an error.
pub async fn check_remove_key_tree(store: &dyn Storage) {
    async fn delete_tree(store: &dyn Storage, prefix: &crate::QueryKey) -> u64 {
        store.delete(&prefix.to_string()).await.unwrap();
        store.delete_prefix(&children_prefix(prefix)).await.unwrap()
    }
    let keys = [
        key!["user"],
        key!["user", 1],
        key!["user", 1, "posts"],
        key!["user", "a%_"],
        key!["users"],
        key!["users", 1],
        key!["todo", 1],
    ];
    for k in &keys {
        store
            .set(&k.to_string(), b"v".to_vec(), None)
            .await
            .unwrap();
    }
    assert_eq!(delete_tree(store, &key!["user"]).await, 3);
    for (k, kept) in keys
        .iter()
        .zip([false, false, false, false, true, true, true])
    {
        assert_eq!(
            store.get(&k.to_string()).await.unwrap().is_some(),
            kept,
            "{k}"
        );
    }
    assert_eq!(delete_tree(store, &key!["user"]).await, 0);
    for k in &keys[4..] {
        store.delete(&k.to_string()).await.unwrap();
    }
}

/// The prefix of `delete_prefix` is plain text, not a pattern: SQL `LIKE` (`%`, `_`) and
/// glob (`*`, `?`, `[`, `]`, `\`) characters match themselves; prefixes ending in
/// characters next to UTF-8 and UTF-16 encoding boundaries match exactly their keys; the
/// empty prefix removes every key.
///
/// # Panics
///
/// When the store fails the check, or returns an error.
pub async fn check_delete_prefix_is_plain_text(store: &dyn Storage) {
    for k in ["a%b", "a_b", "axb", "a*b", "a", "a?b", "a[b", "a]b", "a\\b"] {
        store.set(k, b"v".to_vec(), None).await.unwrap();
    }
    assert_eq!(store.delete_prefix("a%").await.unwrap(), 1);
    assert_eq!(store.delete_prefix("a_").await.unwrap(), 1);
    assert_eq!(store.delete_prefix("a*").await.unwrap(), 1);
    assert_eq!(store.delete_prefix("a?").await.unwrap(), 1);
    assert_eq!(store.delete_prefix("a[").await.unwrap(), 1);
    assert_eq!(store.delete_prefix("a]").await.unwrap(), 1);
    assert_eq!(store.delete_prefix("a\\").await.unwrap(), 1);
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
