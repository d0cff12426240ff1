//! What a fetch function that asks for it is given on each attempt: the key, the attempt
//! number and a cancellation token (TanStack Query's `QueryFunctionContext` and its
//! `AbortSignal`). See [`QueryOptions::with_context`](crate::QueryOptions::with_context).

use std::fmt;

use tokio_util::sync::CancellationToken;

use crate::key::QueryKey;

/// What one attempt of a fetch function receives when it is built with
/// [`QueryOptions::with_context`](crate::QueryOptions::with_context).
///
/// The [cancellation token](Self::cancellation) fires when nobody will take the
/// attempt's result any more:
///
/// * [`cancel_queries`](crate::QueryClient::cancel_queries) stopped the fetch;
/// * the attempt ran past the query's [`fetch_timeout`](crate::QueryOptions::fetch_timeout)
///   (the next attempt, if the fetch is retried, gets a token of its own, live);
/// * the entry left the cache ([`remove_queries`](crate::QueryClient::remove_queries),
///   [`clear`](crate::QueryClient::clear)) or was reset
///   ([`reset_queries`](crate::QueryClient::reset_queries)): the fetch is not stopped (its
///   callers still get what it returns), but it makes no further attempt, and an attempt
///   that fails once its token fired ends the fetch as
///   [`QueryError::Cancelled`](crate::QueryError::Cancelled) whatever its error;
/// * the attempt's future was dropped before it finished for any other reason (the
///   fetch's task stopped with its runtime).
///
/// Once the fetch has finished (its value, or its last error, delivered) its tokens
/// never fire. (While it is retried, the token of an attempt that failed fires with the
/// fetch's: each attempt's is a child of one token per fetch.) A fetch that a newer one
/// of the same key replaces (an invalidation refetching an observed query) is not
/// cancelled: its callers still wait for its result.
///
/// Cloning is cheap (two reference-count bumps); the token can be handed to other tasks.
///
/// A removal does not stop the fetch: a function that listens stops itself.
///
/// ```
/// use std::time::Duration;
/// use stackquery::{key, FetchContext, QueryClient, QueryError, QueryOptions};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let client = QueryClient::new();
/// let opts = QueryOptions::with_context(key!["export"], |ctx: FetchContext| async move {
///     tokio::select! {
///         _ = ctx.cancelled() => Err("nobody wants the export any more"),
///         _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(ctx.attempt()),
///     }
/// })
/// .retry(3);
/// let fetch = tokio::spawn({
///     let (client, opts) = (client.clone(), opts.clone());
///     async move { client.fetch_query(&opts).await }
/// });
/// tokio::time::sleep(Duration::from_secs(1)).await;
/// client.remove_queries(key!["export"]);
/// // Ended at the removal, not retried.
/// assert!(matches!(fetch.await.unwrap(), Err(QueryError::Cancelled)));
/// # }
/// ```
#[derive(Clone)]
pub struct FetchContext {
    key: QueryKey,
    attempt: u32,
    cancellation: CancellationToken,
}

impl FetchContext {
    /// A context for calling a fetch function outside the client (in a test, say): the
    /// client builds its own for every attempt.
    pub fn new(key: QueryKey, attempt: u32, cancellation: CancellationToken) -> Self {
        FetchContext {
            key,
            attempt,
            cancellation,
        }
    }

    /// The key being fetched.
    pub fn key(&self) -> &QueryKey {
        &self.key
    }

    /// Which attempt of this fetch this is, from 0: the first call is attempt 0, the first
    /// retry attempt 1. It is the number of attempts of this fetch that failed before this
    /// one (the wait before it was [`retry_delay`](crate::QueryOptions::retry_delay)`(attempt - 1)`).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempt's cancellation token (see the type's docs for when it fires). Clone it
    /// to hand it to a task, or derive a child token from it.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancellation
    }

    /// Whether the attempt's token has fired.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// Completes once the attempt's token fires (at once if it has): race it against the
    /// work, with `tokio::select!`, to stop early.
    pub async fn cancelled(&self) {
        self.cancellation.cancelled().await;
    }
}

impl fmt::Debug for FetchContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchContext")
            .field("key", &self.key)
            .field("attempt", &self.attempt)
            .field("cancelled", &self.cancellation.is_cancelled())
            .finish()
    }
}
