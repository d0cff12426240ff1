//! The contenders a Rust user would write by hand instead of using a query library.
//!
//! * [`Floor`]: an `RwLock<HashMap>` lookup plus an `Arc` clone — the least a shared
//!   in-memory cache can cost (no freshness, no dedup, no bound).
//! * [`FloorPrehashed`]: the same with a pass-through hasher over the key's precomputed
//!   hash, so no hashing happens on a lookup.
//! * [`SingleFlight`]: the classic hand-written dedup cache, a
//!   `Mutex<HashMap<K, Shared<BoxFuture<..>>>>`: the first caller of a key stores a
//!   shared future, later callers clone and await it; completed futures stay in the map
//!   as the cached values.
//!
//! moka's `future::Cache` is used directly from its crate, as its documentation shows.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, RwLock};

use futures::future::{BoxFuture, FutureExt, Shared};

/// An `RwLock<HashMap<K, V>>` with the standard library's default hasher.
#[derive(Debug)]
pub struct Floor<K, V> {
    map: RwLock<HashMap<K, V>>,
}

impl<K: Hash + Eq, V: Clone> Default for Floor<K, V> {
    fn default() -> Self {
        Floor {
            map: RwLock::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, V: Clone> Floor<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// One read-locked lookup and a clone of the value (an `Arc` bump for `Arc` values).
    #[inline]
    pub fn get(&self, key: &K) -> Option<V> {
        self.map
            .read()
            .expect("floor lock poisoned")
            .get(key)
            .cloned()
    }

    /// Write-locked insert.
    #[inline]
    pub fn insert(&self, key: K, value: V) {
        self.map
            .write()
            .expect("floor lock poisoned")
            .insert(key, value);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.read().expect("floor lock poisoned").len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A hasher that passes a `write_u64` through: for keys that carry a precomputed hash
/// (such as `stackquery::QueryKey`, whose `Hash` writes one `u64`).
#[derive(Default, Clone, Copy, Debug)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is expected; fold anything else so the hasher stays total.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// [`Floor`] over a map whose hasher passes the key's precomputed hash through.
#[derive(Debug)]
pub struct FloorPrehashed<K, V> {
    map: RwLock<HashMap<K, V, BuildHasherDefault<PassThroughHasher>>>,
}

impl<K: Hash + Eq, V: Clone> Default for FloorPrehashed<K, V> {
    fn default() -> Self {
        FloorPrehashed {
            map: RwLock::new(HashMap::default()),
        }
    }
}

impl<K: Hash + Eq, V: Clone> FloorPrehashed<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// One read-locked lookup (no hashing) and a clone of the value.
    #[inline]
    pub fn get(&self, key: &K) -> Option<V> {
        self.map
            .read()
            .expect("floor lock poisoned")
            .get(key)
            .cloned()
    }

    /// Write-locked insert.
    #[inline]
    pub fn insert(&self, key: K, value: V) {
        self.map
            .write()
            .expect("floor lock poisoned")
            .insert(key, value);
    }
}

/// The hand-written single-flight cache: `Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>`.
///
/// The first caller of a key inserts `fetch()` as a shared future and every caller awaits
/// a clone of it, so concurrent callers share one fetch; the completed future stays in the
/// map and answers later calls (a hit is a lock, a lookup, an `Arc` bump of the shared
/// future and an `await` that is immediately ready).
pub struct SingleFlight<K, V: Clone> {
    map: Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>,
}

impl<K, V: Clone> std::fmt::Debug for SingleFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> SingleFlight<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value for `key`: the cached one, the one in flight, or `fetch()` (shared with
    /// every concurrent caller of the key).
    pub async fn get_or_fetch<F, Fut>(&self, key: &K, fetch: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let fut = {
            let mut map = self.map.lock().expect("single-flight lock poisoned");
            match map.get(key) {
                Some(f) => f.clone(),
                None => {
                    let f = fetch().boxed().shared();
                    map.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        fut.await
    }

    /// The value for `key` if a fetch for it was ever started (waits for it).
    pub async fn get(&self, key: &K) -> Option<V> {
        let fut = self
            .map
            .lock()
            .expect("single-flight lock poisoned")
            .get(key)
            .cloned()?;
        Some(fut.await)
    }

    /// Stores a ready value.
    pub fn insert(&self, key: K, value: V) {
        let f = futures::future::ready(value).boxed().shared();
        // Poll once so the stored future is in its completed state, like a fetched one.
        let _ = f.clone().now_or_never();
        self.map
            .lock()
            .expect("single-flight lock poisoned")
            .insert(key, f);
    }

    /// Number of entries (in flight or done).
    pub fn len(&self) -> usize {
        self.map.lock().expect("single-flight lock poisoned").len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
