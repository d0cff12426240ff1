//! The one error type of the storage layer.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use crate::BoxError;

/// Why a second-tier operation failed.
///
/// Cloning is cheap (the backend's error is behind an `Arc`), so one failure can be
/// logged, counted and handed to several waiters. Queries never fail with these: the
/// client treats a failing second tier as a miss and goes on from memory. Code of yours
/// that calls a storage (or [`hydrate`](crate::QueryClient::hydrate)) can still return one
/// as a [`QueryError`](crate::QueryError) with `?` (there is a `From` conversion).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend failed (I/O, SQLite, network…); the source is the backend's own error.
    #[error("the storage backend failed")]
    Backend(#[source] Arc<dyn StdError + Send + Sync + 'static>),
    /// The call did not finish within the deadline set by a
    /// [`TimeoutStorage`](crate::storage::TimeoutStorage).
    #[error("storage call timed out after {0:?}")]
    Timeout(Duration),
    /// Stored bytes could not be decoded: truncated, damaged, written by an unknown
    /// format version, or not an envelope at all. Such an entry is a miss.
    #[error("corrupt storage entry: {0}")]
    Corrupt(String),
    /// Data could not be encoded by the chosen [`Codec`](crate::storage::Codec) (e.g. a
    /// map with non-string keys in JSON); nothing was written.
    #[error("cannot encode storage entry: {0}")]
    Encode(String),
    /// The backend (or this build, for lack of a cargo feature) cannot do this operation.
    #[error("not supported by this storage: {0}")]
    Unsupported(&'static str),
}

impl StorageError {
    /// Wraps a backend's error (or a message: `StorageError::backend("disk full")`) as
    /// [`StorageError::Backend`].
    pub fn backend(err: impl Into<BoxError>) -> Self {
        StorageError::Backend(Arc::from(err.into()))
    }

    /// True for [`StorageError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, StorageError::Timeout(_))
    }

    /// True for [`StorageError::Corrupt`]: the entry should be treated as missing (and may
    /// be deleted).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StorageError::Corrupt(_))
    }
}
