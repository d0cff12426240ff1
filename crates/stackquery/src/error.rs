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
///
/// # The original error
/// The fetch function's own error is this error's [`source`](StdError::source), not a
/// copy of its text: `to_string()` says what stackquery saw ("the fetch function
/// failed"), and an error reporter that walks the sources (`anyhow`'s `{:#}`, `tracing`'s
/// error fields, [`QueryError::report`]) prints each cause once. Get the original back
/// with [`downcast_ref`](Self::downcast_ref), which looks through the whole chain:
///
/// ```
/// use stackquery::{key, QueryClient, QueryError, QueryOptions};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("upstream answered {status}")]
/// struct Upstream {
///     status: u16,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = QueryClient::new();
/// let opts = QueryOptions::new(key!["user", 7], || async {
///     Err::<String, _>(Upstream { status: 404 })
/// })
/// .retry(0);
/// let err = client.fetch_query(&opts).await.unwrap_err();
/// assert_eq!(err.downcast_ref::<Upstream>().map(|u| u.status), Some(404));
/// assert_eq!(err.to_string(), "the fetch function failed");
/// assert_eq!(err.report().to_string(), "the fetch function failed: upstream answered 404");
/// # }
/// ```
///
/// # In a web service
/// Map each case to a response once, in one function; the status of an upstream's own
/// error is found by [`downcast_ref`](Self::downcast_ref). With axum this is the body of
/// an `IntoResponse` impl on your handler's error type (the whole service is in
/// `examples/web_service.rs`):
///
/// ```
/// use stackquery::QueryError;
///
/// # #[derive(Debug, thiserror::Error)]
/// # #[error("upstream answered {status}")]
/// # struct Upstream { status: u16 }
/// /// The HTTP status and body for a query that failed.
/// fn response_of(err: &QueryError) -> (u16, String) {
///     if let Some(upstream) = err.downcast_ref::<Upstream>() {
///         // The upstream's "not found" is ours; its other failures are a bad gateway.
///         let status = if upstream.status == 404 { 404 } else { 502 };
///         return (status, err.report().to_string());
///     }
///     let status = match err {
///         QueryError::Timeout(_) => 504,   // gateway timeout: the upstream hung
///         QueryError::Fetch(_) => 502,     // bad gateway: the upstream failed
///         QueryError::Cancelled => 503,    // cancelled by a shutdown or an operator
///         _ => 500,                        // panics, type mismatches: our bug
///     };
///     // Never show internal errors to clients: log the report, send a generic text.
///     (status, format!("request failed ({status})"))
/// }
///
/// assert_eq!(response_of(&QueryError::Timeout(std::time::Duration::from_secs(5))).0, 504);
/// assert_eq!(response_of(&QueryError::fetch(Upstream { status: 404 })).0, 404);
/// assert_eq!(response_of(&QueryError::fetch(Upstream { status: 500 })).0, 502);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum QueryError {
    /// The fetch function returned an error (after all retries); it is this error's
    /// source.
    Fetch(FetchError),
    /// The fetch was cancelled (by [`cancel_queries`](crate::QueryClient::cancel_queries)),
    /// or, for a fetch function that takes a [`FetchContext`](crate::FetchContext), its
    /// attempt failed after its cancellation token fired (the entry was removed or reset).
    Cancelled,
    /// The key already holds data of another type.
    /// (Boxed behind an `Arc`: it is rare, and keeping it small keeps every entry's two
    /// error slots small.)
    TypeMismatch(Arc<TypeMismatch>),
    /// The fetch function (or a user callback) panicked; the message is the panic payload.
    Panicked(Arc<str>),
    /// One attempt of the fetch function ran longer than the query's
    /// [`fetch_timeout`](crate::QueryOptions::fetch_timeout) (after all retries: each
    /// attempt has the whole timeout). Every waiter of the fetch gets it.
    Timeout(std::time::Duration),
    /// A fetch had to start but the call was not made inside a tokio runtime.
    NoRuntime,
    /// A second-tier operation failed ([`hydrate`](crate::QueryClient::hydrate), or a
    /// [`StorageError`](crate::StorageError) a caller turned into a `QueryError` with `?`).
    /// Queries themselves never fail for the second tier: they go on from memory.
    /// (Behind an `Arc`, like `TypeMismatch`: rare, and the entry's error slots stay small.)
    Storage(Arc<crate::StorageError>),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The cause is the source: not repeated here.
            QueryError::Fetch(_) => f.write_str("the fetch function failed"),
            QueryError::Cancelled => f.write_str("the query was cancelled"),
            QueryError::TypeMismatch(m) => write!(
                f,
                "key {} holds {}, but {} was requested",
                m.key, m.stored, m.requested
            ),
            QueryError::Panicked(message) => write!(f, "user code panicked: {message}"),
            QueryError::Timeout(limit) => write!(f, "the fetch timed out after {limit:?}"),
            QueryError::NoRuntime => {
                f.write_str("no tokio runtime: stackquery fetches run as tokio tasks")
            }
            QueryError::Storage(_) => f.write_str("the second tier failed"),
        }
    }
}

impl StdError for QueryError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            // The fetch function's own error itself (not the `FetchError` wrapper), so
            // `source()?.downcast_ref::<E>()` finds it.
            QueryError::Fetch(e) => Some(e.inner()),
            QueryError::Storage(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<crate::StorageError> for QueryError {
    fn from(error: crate::StorageError) -> Self {
        QueryError::Storage(Arc::new(error))
    }
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

    /// The first error of type `E` in this error's chain of sources: the fetch function's
    /// own error (or one of its causes), or the storage's. `None` if there is none.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        let mut next = self.source();
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<E>() {
                return Some(found);
            }
            next = error.source();
        }
        None
    }

    /// This error and each of its sources, joined by `": "`, for logs and messages
    /// ("the fetch function failed: upstream answered 503: connection reset").
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

/// An error and its chain of sources, displayed on one line, each separated by `": "`
/// (made by [`QueryError::report`]).
#[derive(Clone, Copy)]
pub struct Report<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.0, f)?;
        let mut next = self.0.source();
        while let Some(error) = next {
            write!(f, ": {error}")?;
            next = error.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`Report`] for any error: the crate's log lines print whole chains with it, since
/// errors no longer repeat their sources' text.
pub(crate) fn report<E: StdError + 'static>(error: &E) -> Report<'_> {
    Report(error)
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
