//! The second tier (L2): a byte store behind the in-memory cache.
//!
//! A [`Storage`] keeps opaque bytes under string keys, with an optional time to live. The
//! client names each persisted entry by its key's `Display` text (a JSON array such as
//! `["user",1]`) and writes the value as an [`Envelope`] encoded with a [`Codec`]. The backends
//! know nothing about queries:
//!
//! | backend | for | feature |
//! |---|---|---|
//! | [`MemoryStorage`] | tests, docs, examples | always |
//! | `RedisStorage` | many instances: one shared tier (with `RedisBus` and `RedisLeases` from `stackquery::bus` under the same namespace) | `redis` |
//! | `SqliteStorage` | one machine: an embedded file, survives restarts | `sqlite` (default; SQLite compiled in) or `sqlite-system` (the system's libsqlite3) |
//!
//! # The stored format (public, stable)
//!
//! What the client writes is public on purpose: the key text ([`QueryKey`]'s `Display`,
//! [`children_prefix`] for a key's subtree) and the value, an [`Envelope`] written by
//! [`encode`] and read by [`decode`], versioned by [`ENVELOPE_VERSION`] (also the version
//! of [`DehydratedState`](crate::DehydratedState) snapshots). A backend does not need
//! them — it stores opaque bytes — but code that works on a shared tier without a
//! `QueryClient` does: a job that pre-warms or migrates entries, a service that reads
//! what the cache holds, a test that plants or inspects stored data. A change of this
//! format takes a new [`ENVELOPE_VERSION`] (entries of another version are misses, never
//! misread) and a CHANGELOG entry.
//!
//! Redis is built in (`RedisStorage`, feature `redis`: `RedisStorage::connect(url)` or
//! `RedisStorage::builder(url).namespace(ns).connect()`). Any other store (a KV service, a
//! file per key…) plugs in by implementing [`Storage`]; wrap it in a [`TimeoutStorage`] so a store that hangs turns into an error
//! value after a bounded wait. The conformance suite the built-in backends pass is public
//! as `storage::testing` (feature `test-util`): run it from the new backend's tests.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use stackquery::storage::{MemoryStorage, Storage, TimeoutStorage};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stackquery::StorageError> {
//! let store: Arc<dyn Storage> =
//!     Arc::new(TimeoutStorage::new(MemoryStorage::new(), Duration::from_secs(1)));
//! store.set(r#"["user",1]"#, b"Ada".to_vec(), Some(Duration::from_secs(60))).await?;
//! assert_eq!(store.get(r#"["user",1]"#).await?, Some(b"Ada".to_vec()));
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::QueryKey;

mod codec;
mod envelope;
mod error;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub(crate) mod redis_conn;
#[cfg(any(feature = "sqlite", feature = "sqlite-system"))]
mod sqlite;
#[cfg(any(test, feature = "test-util"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod timeout;
pub(crate) mod typed;

#[cfg(test)]
mod tests;

/// Re-exported so that implementors of [`Storage`] need no direct dependency on
/// `async-trait`: write `#[stackquery::storage::async_trait]` on the `impl` block.
#[doc(no_inline)]
pub use async_trait::async_trait;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisStorage, RedisStorageBuilder};
pub use codec::Codec;
pub use envelope::{decode, encode, Envelope, ENVELOPE_VERSION};
pub use error::StorageError;
pub use memory::{MemoryStorage, MemoryStorageStats};
#[cfg(any(feature = "sqlite", feature = "sqlite-system"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "sqlite-system"))))]
pub use sqlite::{SqliteStorage, SqliteStorageBuilder};
pub use timeout::{TimeoutStorage, DEFAULT_DELETE_PREFIX_TIMEOUT};
pub use typed::JsonConverter;

/// A second-tier byte store: get, set with an optional time to live, delete.
///
/// Implementations must be cheap to share (`Arc<dyn Storage>`) and safe to call from many
/// tasks at once. They must not block the async worker threads: a store with a blocking
/// client moves that work to a thread of its own (see `SqliteStorage`).
///
/// Errors are values: the client logs and counts them and carries on from memory, so a
/// backend never needs to retry on its own. Put a bound on every call with
/// [`TimeoutStorage`].
///
/// # Keys
///
/// Keys are the `Display` text of a [`QueryKey`], e.g. `["user",1]`. Every key under the
/// prefix key `["user"]` is either `["user"]` itself or starts with the text
/// `["user",` — see [`children_prefix`] — which is what [`Storage::delete_prefix`] is for.
///
/// # Implementing
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use parking_lot::Mutex;
/// use stackquery::storage::{async_trait, Storage, StorageError};
///
/// /// A store that ignores time to live (fine for a demo).
/// #[derive(Default)]
/// struct MapStorage(Mutex<HashMap<String, Vec<u8>>>);
///
/// #[async_trait]
/// impl Storage for MapStorage {
///     async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
///         Ok(self.0.lock().get(key).cloned())
///     }
///     async fn set(&self, key: &str, value: Vec<u8>, _ttl: Option<Duration>) -> Result<(), StorageError> {
///         self.0.lock().insert(key.to_owned(), value);
///         Ok(())
///     }
///     async fn delete(&self, key: &str) -> Result<(), StorageError> {
///         self.0.lock().remove(key);
///         Ok(())
///     }
///     // `delete_prefix` is optional: by default it answers `StorageError::Unsupported`.
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MapStorage::default();
/// store.set("k", vec![1], None).await.unwrap();
/// assert_eq!(store.get("k").await.unwrap(), Some(vec![1]));
/// assert!(matches!(store.delete_prefix("k").await, Err(StorageError::Unsupported(_))));
/// # }
/// ```
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The bytes stored under `key`, or `None` when there are none or they have expired.
    ///
    /// # Errors
    ///
    /// Whatever the backend reports ([`StorageError::Backend`], [`StorageError::Timeout`]…).
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;

    /// Stores `value` under `key`, replacing what was there.
    ///
    /// With `ttl`, the entry expires that long after the call, to the millisecond (a 500 ms
    /// ttl is 500 ms); a zero ttl stores an entry that is already expired. Without `ttl`
    /// it never expires.
    ///
    /// # Errors
    ///
    /// Whatever the backend reports; the previous value may or may not have been replaced.
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError>;

    /// Removes the entry under `key`; removing a missing key is not an error.
    ///
    /// # Errors
    ///
    /// Whatever the backend reports.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// Removes every entry whose key starts with the text `prefix` and returns how many
    /// live (unexpired) entries were removed. The prefix is plain text, not a pattern:
    /// `%`, `_` and `*` match themselves.
    ///
    /// To remove a [`QueryKey`] and everything under it, call
    /// `delete(&key.to_string())` and `delete_prefix(&children_prefix(&key))`.
    ///
    /// # Errors
    ///
    /// [`StorageError::Unsupported`] from backends that cannot list keys (the default
    /// implementation); otherwise whatever the backend reports.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        let _ = prefix;
        Err(StorageError::Unsupported("delete_prefix"))
    }

    /// The live (unexpired) entries whose key starts with the text `prefix`, as
    /// `(key, bytes)` pairs sorted by key, byte-wise. The prefix is plain text, as for
    /// [`delete_prefix`](Self::delete_prefix).
    ///
    /// The client does not use it for queries; [durable
    /// mutations](crate::DurableMutation) read their queue with it. All the rows are
    /// returned at once: use it for bounded sets of records.
    ///
    /// # Errors
    ///
    /// [`StorageError::Unsupported`] from backends that cannot list keys (the default
    /// implementation); otherwise whatever the backend reports.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let _ = prefix;
        Err(StorageError::Unsupported("scan_prefix"))
    }
}

/// A shared store is a store: `Arc<dyn Storage>` can be wrapped (e.g. in a
/// [`TimeoutStorage`]) and passed where a `Storage` is expected.
#[async_trait]
impl<S: Storage + ?Sized> Storage for Arc<S> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).get(key).await
    }
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        (**self).set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        (**self).delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        (**self).delete_prefix(prefix).await
    }
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        (**self).scan_prefix(prefix).await
    }
}

/// The text every storage key strictly under `key` starts with: `["user",` for
/// `["user"]`, and `[` for the empty key `[]` (which is a prefix of every key).
///
/// `key` itself does not start with it, so removing a key and everything under it takes
/// a `delete` of the key and a [`delete_prefix`](Storage::delete_prefix) of this text; a
/// sibling such as `["users"]` is never matched.
///
/// ```
/// use stackquery::{key, storage::children_prefix};
/// assert_eq!(children_prefix(&key!["user"]), r#"["user","#);
/// assert!(key!["user", 1].to_string().starts_with(&children_prefix(&key!["user"])));
/// assert!(!key!["users"].to_string().starts_with(&children_prefix(&key!["user"])));
/// assert_eq!(children_prefix(&key![]), "[");
/// ```
pub fn children_prefix(key: &QueryKey) -> String {
    let mut text = key.to_string();
    // `Display` always ends with the closing bracket.
    text.pop();
    if !key.is_empty() {
        text.push(',');
    }
    text
}
