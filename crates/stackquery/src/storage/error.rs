//! The one error type of the storage layer.

use std::error::Error as StdError;
use std::fmt;
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
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend failed (I/O, SQLite, network…); the source is the backend's own error.
    Backend(Arc<dyn StdError + Send + Sync + 'static>),
    /// The call did not finish within the deadline set by a
    /// [`TimeoutStorage`](crate::storage::TimeoutStorage).
    Timeout(Duration),
    /// Stored bytes could not be decoded: truncated, damaged, written by an unknown
    /// format version, or not an envelope at all. Such an entry is a miss.
    Corrupt(String),
    /// Data could not be encoded by the chosen [`Codec`](crate::storage::Codec) (e.g. a
    /// map with non-string keys in JSON); nothing was written.
    Encode(String),
    /// The backend (or this build, for lack of a cargo feature) cannot do this operation.
    Unsupported(&'static str),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The backend's text is the source's: not repeated here.
            StorageError::Backend(_) => f.write_str("the storage backend failed"),
            StorageError::Timeout(limit) => write!(f, "storage call timed out after {limit:?}"),
            StorageError::Corrupt(why) => write!(f, "corrupt storage entry: {why}"),
            StorageError::Encode(why) => write!(f, "cannot encode storage entry: {why}"),
            StorageError::Unsupported(what) => write!(f, "not supported by this storage: {what}"),
        }
    }
}

impl StdError for StorageError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            // The backend's error itself (not the `Arc` around it, whose `source` would
            // skip it), so `source()?.downcast_ref::<E>()` finds it.
            StorageError::Backend(e) => Some(&**e),
            _ => None,
        }
    }
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
