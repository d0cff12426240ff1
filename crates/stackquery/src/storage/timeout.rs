//! A deadline on every call of a [`Storage`].

use std::future::Future;
use std::time::Duration;

use super::{async_trait, Storage, StorageError};

/// The default deadline of a whole [`Storage::delete_prefix`] under a [`TimeoutStorage`].
pub const DEFAULT_DELETE_PREFIX_TIMEOUT: Duration = Duration::from_secs(5);

/// Wraps a [`Storage`] so that every call fails with [`StorageError::Timeout`] once it has
/// taken longer than a fixed deadline.
///
/// `get`, `set` and `delete` share one deadline ([`timeout`](Self::timeout));
/// [`delete_prefix`](Storage::delete_prefix) has its own
/// ([`delete_prefix_timeout`](Self::delete_prefix_timeout), 5 s by default), because it may
/// remove many entries and take many round trips. This wrapper is the one place that bounds
/// a whole prefix delete: the backends bound their single round trips only (e.g.
/// `RedisStorage`'s per-call timeout), so a short per-call
/// deadline here never cuts a long prefix delete short, and there is no second, hidden
/// bound on it further in.
///
/// The deadline runs on tokio's clock, so tests on a paused clock see it fire exactly. When
/// it fires, the inner call's future is dropped: an in-flight `set` or `delete` may still
/// have happened (or may still happen, for backends that hand work to another thread), so
/// a `Timeout` from a write means "unknown", not "not written".
///
/// ```
/// use std::time::Duration;
/// use stackquery::storage::{MemoryStorage, Storage, TimeoutStorage};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stackquery::StorageError> {
/// let store = TimeoutStorage::new(MemoryStorage::new(), Duration::from_millis(250));
/// store.set("k", b"v".to_vec(), None).await?;
/// assert_eq!(store.get("k").await?, Some(b"v".to_vec()));
/// assert_eq!(store.timeout(), Duration::from_millis(250));
/// assert_eq!(store.delete_prefix_timeout(), Duration::from_secs(5));
/// let store = store.with_delete_prefix_timeout(Duration::from_secs(30));
/// assert_eq!(store.delete_prefix("k").await?, 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TimeoutStorage<S> {
    inner: S,
    timeout: Duration,
    delete_prefix_timeout: Duration,
}

impl<S> TimeoutStorage<S> {
    /// Wraps `inner`, bounding each `get`, `set` and `delete` by `timeout`, and each
    /// `delete_prefix` by [`DEFAULT_DELETE_PREFIX_TIMEOUT`] (5 s).
    pub fn new(inner: S, timeout: Duration) -> Self {
        TimeoutStorage {
            inner,
            timeout,
            delete_prefix_timeout: DEFAULT_DELETE_PREFIX_TIMEOUT,
        }
    }

    /// Bounds each whole `delete_prefix` by `timeout` instead (independent of the
    /// per-call deadline, longer or shorter).
    #[must_use]
    pub fn with_delete_prefix_timeout(mut self, timeout: Duration) -> Self {
        self.delete_prefix_timeout = timeout;
        self
    }

    /// The deadline of each `get`, `set` and `delete`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The deadline of each whole `delete_prefix`.
    pub fn delete_prefix_timeout(&self) -> Duration {
        self.delete_prefix_timeout
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    async fn bounded<R>(
        &self,
        call: impl Future<Output = Result<R, StorageError>>,
    ) -> Result<R, StorageError> {
        bounded(self.timeout, call).await
    }
}

/// Bounds `call` by `limit`; a `limit` past the clock's range is no bound (never panics).
async fn bounded<R>(
    limit: Duration,
    call: impl Future<Output = Result<R, StorageError>>,
) -> Result<R, StorageError> {
    let Some(deadline) = crate::deadline::after(limit) else {
        return call.await;
    };
    match tokio::time::timeout_at(deadline, call).await {
        Ok(result) => result,
        Err(_elapsed) => Err(StorageError::Timeout(limit)),
    }
}

#[async_trait]
impl<S: Storage> Storage for TimeoutStorage<S> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.bounded(self.inner.get(key)).await
    }

    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.bounded(self.inner.set(key, value, ttl)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.bounded(self.inner.delete(key)).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        bounded(self.delete_prefix_timeout, self.inner.delete_prefix(prefix)).await
    }

    /// Bounded like a prefix delete: it too walks a range of keys.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        bounded(self.delete_prefix_timeout, self.inner.scan_prefix(prefix)).await
    }
}
