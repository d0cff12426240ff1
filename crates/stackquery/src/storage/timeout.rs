//! A deadline on every call of a [`Storage`].

use std::future::Future;
use std::time::Duration;

use super::{async_trait, Storage, StorageError};

/// Wraps a [`Storage`] so that every call fails with [`StorageError::Timeout`] once it has
/// taken longer than a fixed deadline.
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
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TimeoutStorage<S> {
    inner: S,
    timeout: Duration,
}

impl<S> TimeoutStorage<S> {
    /// Wraps `inner`, bounding each call by `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        TimeoutStorage { inner, timeout }
    }

    /// The deadline of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
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
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_elapsed) => Err(StorageError::Timeout(self.timeout)),
        }
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
        self.bounded(self.inner.delete_prefix(prefix)).await
    }
}
