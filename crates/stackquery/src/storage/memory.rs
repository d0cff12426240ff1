//! [`MemoryStorage`]: the second tier in a map, for tests, docs and examples.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{async_trait, Storage, StorageError};

/// An in-process [`Storage`]: an ordered map with time to live, plus call counters.
///
/// It is a real backend (ttl to the millisecond, [`delete_prefix`](Storage::delete_prefix)
/// over an ordered map) that forgets everything when the process ends, made for tests of
/// the persistence layer. Expiry is read from tokio's clock, so a test on a paused clock
/// moves entries past their ttl with `tokio::time::advance`.
///
/// Cloning is cheap and shares the map and the counters: keep a clone to inspect what a
/// client wrote.
///
/// ```
/// use std::time::Duration;
/// use stackquery::storage::{MemoryStorage, Storage};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), stackquery::StorageError> {
/// let store = MemoryStorage::new();
/// store.set("k", b"v".to_vec(), Some(Duration::from_millis(500))).await?;
/// tokio::time::advance(Duration::from_millis(499)).await;
/// assert_eq!(store.get("k").await?, Some(b"v".to_vec()));
/// tokio::time::advance(Duration::from_millis(1)).await;
/// assert_eq!(store.get("k").await?, None);          // 500 ms ttl: gone at 500 ms
///
/// let stats = store.stats();
/// assert_eq!((stats.sets, stats.gets, stats.hits), (1, 2, 1));
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStorage {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    map: Mutex<BTreeMap<String, Slot>>,
    gets: AtomicU64,
    hits: AtomicU64,
    sets: AtomicU64,
    deletes: AtomicU64,
    prefix_deletes: AtomicU64,
}

struct Slot {
    value: Vec<u8>,
    /// `None`: never expires (no ttl, or a ttl beyond what `Instant` can represent).
    expires_at: Option<Instant>,
}

impl Slot {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// Call counters of a [`MemoryStorage`], from [`MemoryStorage::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStorageStats {
    /// Calls of [`get`](Storage::get).
    pub gets: u64,
    /// Calls of `get` that found a live entry.
    pub hits: u64,
    /// Calls of [`set`](Storage::set).
    pub sets: u64,
    /// Calls of [`delete`](Storage::delete).
    pub deletes: u64,
    /// Calls of [`delete_prefix`](Storage::delete_prefix).
    pub prefix_deletes: u64,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times each operation has been called (shared by all clones).
    pub fn stats(&self) -> MemoryStorageStats {
        let i = &self.inner;
        MemoryStorageStats {
            gets: i.gets.load(Ordering::Relaxed),
            hits: i.hits.load(Ordering::Relaxed),
            sets: i.sets.load(Ordering::Relaxed),
            deletes: i.deletes.load(Ordering::Relaxed),
            prefix_deletes: i.prefix_deletes.load(Ordering::Relaxed),
        }
    }

    /// The keys of the live (unexpired) entries, in order. Does not count as a call.
    pub fn keys(&self) -> Vec<String> {
        let now = Instant::now();
        let map = self.inner.map.lock();
        map.iter()
            .filter(|(_, slot)| slot.is_live(now))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The live entry under `key`, without counting a call. For assertions in tests.
    pub fn peek(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let map = self.inner.map.lock();
        map.get(key)
            .filter(|slot| slot.is_live(now))
            .map(|slot| slot.value.clone())
    }

    /// Number of live (unexpired) entries.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        let map = self.inner.map.lock();
        map.values().filter(|slot| slot.is_live(now)).count()
    }

    /// True when no live entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the expired entries now (reads already ignore them); returns how many.
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        let before = map.len();
        map.retain(|_, slot| slot.is_live(now));
        before - map.len()
    }
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("entries", &self.inner.map.lock().len())
            .field("stats", &self.stats())
            .finish()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.gets.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        let found = match map.get(key) {
            Some(slot) if slot.is_live(now) => Some(slot.value.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        };
        drop(map);
        if found.is_some() {
            self.inner.hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(found)
    }

    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.inner.sets.fetch_add(1, Ordering::Relaxed);
        // A ttl too large for `Instant` never expires.
        let expires_at = ttl.and_then(|ttl| Instant::now().checked_add(ttl));
        let slot = Slot { value, expires_at };
        self.inner.map.lock().insert(key.to_owned(), slot);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.deletes.fetch_add(1, Ordering::Relaxed);
        self.inner.map.lock().remove(key);
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        self.inner.prefix_deletes.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut map = self.inner.map.lock();
        // Keys with the prefix form one contiguous run starting at the prefix itself.
        let doomed: Vec<String> = map
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key.clone())
            .collect();
        let mut live = 0;
        for key in doomed {
            if map.remove(&key).is_some_and(|slot| slot.is_live(now)) {
                live += 1;
            }
        }
        Ok(live)
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let now = Instant::now();
        let map = self.inner.map.lock();
        // The map is ordered by key: the matches are one contiguous, sorted run.
        Ok(map
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(_, slot)| slot.is_live(now))
            .map(|(key, slot)| (key.clone(), slot.value.clone()))
            .collect())
    }
}
