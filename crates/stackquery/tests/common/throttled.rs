//! A storage wrapper for fault tests: writes and prefix deletes can be slowed down, writes
//! made to hang, and writes are counted.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stackquery::storage::{async_trait, MemoryStorage, Storage, StorageError};

/// Wraps `inner`; clones share the switches and the counter.
#[derive(Clone)]
pub struct Throttled<S = MemoryStorage> {
    pub inner: S,
    /// Added before every `set` and `delete`.
    pub write_delay: Duration,
    /// Added before every `delete_prefix`.
    pub prefix_delay: Duration,
    /// While set, every `set` hangs (after being counted).
    pub stall: Arc<AtomicBool>,
    /// `set` calls so far.
    pub sets: Arc<AtomicU32>,
}

impl Default for Throttled<MemoryStorage> {
    fn default() -> Self {
        Throttled::new(MemoryStorage::new())
    }
}

impl<S> Throttled<S> {
    pub fn new(inner: S) -> Self {
        Throttled {
            inner,
            write_delay: Duration::ZERO,
            prefix_delay: Duration::ZERO,
            stall: Arc::default(),
            sets: Arc::default(),
        }
    }

    pub fn write_delay(mut self, d: Duration) -> Self {
        self.write_delay = d;
        self
    }

    pub fn prefix_delay(mut self, d: Duration) -> Self {
        self.prefix_delay = d;
        self
    }
}

async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

#[async_trait]
impl<S: Storage> Storage for Throttled<S> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key).await
    }
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.sets.fetch_add(1, Ordering::SeqCst);
        if self.stall.load(Ordering::SeqCst) {
            futures::future::pending::<()>().await;
        }
        pause(self.write_delay).await;
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        pause(self.write_delay).await;
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        pause(self.prefix_delay).await;
        self.inner.delete_prefix(prefix).await
    }
}
