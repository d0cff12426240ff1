//! The one error type every query operation returns.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// A boxed error from a user's fetch function.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a query operation did not produce data.
///
/// Cloning is cheap (an `Arc` bump): every deduplicated waiter of one fetch receives the same
/// error value.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The fetch function returned an error (after all retries).
    #[error("fetch failed: {0}")]
    Fetch(#[source] FetchError),
    /// The fetch was cancelled (by [`cancel_queries`](crate::QueryClient::cancel_queries)),
    /// or, for a fetch function that takes a [`FetchContext`](crate::FetchContext), its
    /// attempt failed after its cancellation token fired (the entry was removed or reset).
    #[error("the query was cancelled")]
    Cancelled,
    /// The key already holds data of another type.
    /// (Boxed behind an `Arc`: it is rare, and keeping it small keeps every entry's two
    /// error slots small.)
    #[error("key {} holds {}, but {} was requested", .0.key, .0.stored, .0.requested)]
    TypeMismatch(Arc<TypeMismatch>),
    /// The fetch function (or a user callback) panicked; the message is the panic payload.
    #[error("user code panicked: {0}")]
    Panicked(Arc<str>),
    /// One attempt of the fetch function ran longer than the query's
    /// [`fetch_timeout`](crate::QueryOptions::fetch_timeout) (after all retries: each
    /// attempt has the whole timeout). Every waiter of the fetch gets it.
    #[error("the fetch timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A fetch had to start but the call was not made inside a tokio runtime.
    #[error("no tokio runtime: stackquery fetches run as tokio tasks")]
    NoRuntime,
}

impl QueryError {
    /// Wraps any error as [`QueryError::Fetch`].
    pub fn fetch(err: impl Into<BoxError>) -> Self {
        let err = err.into();
        // An attempt that ran past its `fetch_timeout` is a timeout, not a fetch error.
        if let Some(t) = err.downcast_ref::<TimedOut>() {
            return QueryError::Timeout(t.0);
        }
        // An attempt whose cancellation token fired (see `FetchContext`) was cancelled.
        if err.is::<CancelledAttempt>() {
            return QueryError::Cancelled;
        }
        QueryError::Fetch(FetchError(Arc::from(err)))
    }

    /// True for [`QueryError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, QueryError::Timeout(_))
    }

    /// True for [`QueryError::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, QueryError::Cancelled)
    }

    /// The fetch function's own error, if this is [`QueryError::Fetch`]; downcast it to the
    /// concrete type with `downcast_ref`.
    pub fn fetch_source(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match self {
            QueryError::Fetch(e) => Some(&*e.0),
            _ => None,
        }
    }
}

/// Which two types met on one key (see [`QueryError::TypeMismatch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeMismatch {
    /// The key used with two types.
    pub key: String,
    /// The type already stored under the key.
    pub stored: &'static str,
    /// The type this call asked for.
    pub requested: &'static str,
}

impl QueryError {
    /// The error of a typed call on `key`, which holds `stored` data, asking for `requested`.
    pub(crate) fn type_mismatch(
        key: String,
        stored: &'static str,
        requested: &'static str,
    ) -> Self {
        QueryError::TypeMismatch(Arc::new(TypeMismatch {
            key,
            stored,
            requested,
        }))
    }
}

/// The shared, cloneable error a fetch function returned.
#[derive(Clone)]
pub struct FetchError(Arc<dyn StdError + Send + Sync + 'static>);

impl FetchError {
    /// The underlying error.
    pub fn inner(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}
impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}
impl StdError for FetchError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// Turns a panic payload into a readable message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> Arc<str> {
    if let Some(s) = payload.downcast_ref::<&str>() {
        Arc::from(*s)
    } else if let Some(s) = payload.downcast_ref::<String>() {
        Arc::from(s.as_str())
    } else {
        Arc::from("non-string panic payload")
    }
}

/// The error of a fetch attempt that ran past its
/// [`fetch_timeout`](crate::QueryOptions::fetch_timeout) (internal: it becomes
/// [`QueryError::Timeout`]).
#[derive(Debug)]
pub(crate) struct TimedOut(pub(crate) std::time::Duration);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}

impl StdError for TimedOut {}

/// The error of a fetch attempt whose cancellation token had fired (internal: it becomes
/// [`QueryError::Cancelled`], which is never retried).
#[derive(Debug)]
pub(crate) struct CancelledAttempt;

impl fmt::Display for CancelledAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the fetch attempt was cancelled")
    }
}

impl StdError for CancelledAttempt {}
