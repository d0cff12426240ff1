//! The observable state of one query, and the pure reducer that changes it.
//!
//! Every change to an entry's state goes through [`reduce`] with an [`Action`]; the
//! notification of observers happens after, outside any lock. The reducer is pure (the
//! caller passes wall-clock stamps in), so tests can use it as a reference model.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::QueryError;

/// Whether a query has data, an error, or neither yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueryStatus {
    /// Never fetched and no data.
    Idle,
    /// No data yet, the first fetch is under way.
    Pending,
    /// The last fetch (or manual write) produced data.
    Success,
    /// The last fetch failed (data from earlier, if any, is kept).
    Error,
}

/// Whether a fetch is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FetchStatus {
    /// No fetch in flight.
    Idle,
    /// A fetch is in flight.
    Fetching,
    /// The observer is paused: no automatic fetches or polling.
    Paused,
}

/// A snapshot of one query's state.
///
/// Data is shared (`Arc<T>`): taking a snapshot never deep-copies.
pub struct QueryState<T> {
    /// Data / error / neither.
    pub status: QueryStatus,
    /// Fetch in flight or not.
    pub fetch_status: FetchStatus,
    /// The last successful data (kept through later errors and invalidation).
    pub data: Option<Arc<T>>,
    /// The error of the last failed fetch, cleared by a success.
    pub error: Option<QueryError>,
    /// Wall-clock time of the last data write (for display and persistence).
    pub data_updated_at: Option<SystemTime>,
    /// Wall-clock time of the last error.
    pub error_updated_at: Option<SystemTime>,
    /// Failed attempts of the current (or last) fetch; reset by a success.
    pub failure_count: u32,
    /// The error of the last failed attempt; reset by a success.
    pub failure_reason: Option<QueryError>,
    /// Marked stale by `invalidate_queries`; cleared by a fetch that started after it.
    pub is_invalidated: bool,
    /// The data shown is an observer's placeholder, not fetched data.
    pub is_placeholder_data: bool,
    /// Staleness judged when the snapshot was taken.
    pub(crate) stale: bool,
}

impl<T> Clone for QueryState<T> {
    fn clone(&self) -> Self {
        QueryState {
            status: self.status,
            fetch_status: self.fetch_status,
            data: self.data.clone(),
            error: self.error.clone(),
            data_updated_at: self.data_updated_at,
            error_updated_at: self.error_updated_at,
            failure_count: self.failure_count,
            failure_reason: self.failure_reason.clone(),
            is_invalidated: self.is_invalidated,
            is_placeholder_data: self.is_placeholder_data,
            stale: self.stale,
        }
    }
}

impl<T> Default for QueryState<T> {
    fn default() -> Self {
        QueryState {
            status: QueryStatus::Idle,
            fetch_status: FetchStatus::Idle,
            data: None,
            error: None,
            data_updated_at: None,
            error_updated_at: None,
            failure_count: 0,
            failure_reason: None,
            is_invalidated: false,
            is_placeholder_data: false,
            stale: true,
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for QueryState<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryState")
            .field("status", &self.status)
            .field("fetch_status", &self.fetch_status)
            .field("data", &self.data)
            .field("error", &self.error)
            .field("failure_count", &self.failure_count)
            .field("is_invalidated", &self.is_invalidated)
            .field("stale", &self.stale)
            .finish_non_exhaustive()
    }
}

impl<T> QueryState<T> {
    /// Stale when the snapshot was taken: no data, invalidated, or older than the stale
    /// time in force (the caller's options, or the client default for plain reads).
    pub fn is_stale(&self) -> bool {
        self.stale
    }
    /// True when data is present.
    pub fn has_data(&self) -> bool {
        self.data.is_some()
    }
    /// True while a fetch is in flight.
    pub fn is_fetching(&self) -> bool {
        self.fetch_status == FetchStatus::Fetching
    }
    /// True during the first fetch: no data yet and a fetch in flight.
    pub fn is_loading(&self) -> bool {
        self.status == QueryStatus::Pending && self.is_fetching()
    }
    /// True when the status is `Success`.
    pub fn is_success(&self) -> bool {
        self.status == QueryStatus::Success
    }
    /// True when the status is `Error`.
    pub fn is_error(&self) -> bool {
        self.status == QueryStatus::Error
    }
}

/// A change to a query's state.
pub(crate) enum Action<T> {
    /// A fetch starts.
    Fetch,
    /// One attempt failed; a retry may follow.
    Failed { error: QueryError },
    /// Data arrived (from a fetch or a manual write). `invalidated` carries an
    /// invalidation that happened while the fetch was in flight.
    Success {
        data: Arc<T>,
        at: SystemTime,
        invalidated: bool,
    },
    /// The fetch failed for good.
    Error { error: QueryError, at: SystemTime },
    /// Mark stale, keep data.
    Invalidate,
    /// The fetch was cancelled: undo what the fetch changed (status, failure bookkeeping).
    Revert { previous: QueryState<T> },
    /// Forget everything.
    Reset,
    /// Data was written (by hand, or from a snapshot) while a fetch goes on for its
    /// waiters: the entry still shows the fetch.
    FetchGoesOn,
    /// A fetch ended but its result was not taken (a newer manual write stands).
    Superseded,
    /// A streamed fetch restarts from nothing (refetch mode reset): no data, pending,
    /// still fetching.
    Restart,
}

/// Applies `action` to `state`. Pure: no clocks, no I/O.
pub(crate) fn reduce<T>(state: &mut QueryState<T>, action: Action<T>) {
    match action {
        Action::Fetch => {
            state.fetch_status = FetchStatus::Fetching;
            state.failure_count = 0;
            state.failure_reason = None;
            if state.status == QueryStatus::Idle {
                state.status = QueryStatus::Pending;
            }
        }
        Action::Failed { error } => {
            state.failure_count = state.failure_count.saturating_add(1);
            state.failure_reason = Some(error);
        }
        Action::Success {
            data,
            at,
            invalidated,
        } => {
            state.status = QueryStatus::Success;
            state.fetch_status = FetchStatus::Idle;
            state.data = Some(data);
            // Wall clocks can step back; a later write never shows an earlier stamp.
            state.data_updated_at = Some(match state.data_updated_at {
                Some(prev) if prev > at => prev,
                _ => at,
            });
            state.error = None;
            state.failure_count = 0;
            state.failure_reason = None;
            state.is_invalidated = invalidated;
        }
        Action::Error { error, at } => {
            state.status = QueryStatus::Error;
            state.fetch_status = FetchStatus::Idle;
            state.error = Some(error.clone());
            state.error_updated_at = Some(at);
            state.failure_reason = Some(error);
        }
        Action::Invalidate => state.is_invalidated = true,
        Action::Revert { previous } => {
            // Only what the fetch itself changed goes back: data written meanwhile (a manual
            // write, a snapshot) and an invalidation made meanwhile both stand.
            state.fetch_status = FetchStatus::Idle;
            if state.status == QueryStatus::Pending {
                // A streamed fetch that restarted from nothing (`Restart`) cleared the
                // data it would go back to: with none left, the query is idle.
                state.status = if state.data.is_none() && previous.data.is_some() {
                    QueryStatus::Idle
                } else {
                    previous.status
                };
            }
            state.failure_count = previous.failure_count;
            state.failure_reason = previous.failure_reason;
        }
        Action::Reset => *state = QueryState::default(),
        Action::FetchGoesOn => state.fetch_status = FetchStatus::Fetching,
        Action::Superseded => state.fetch_status = FetchStatus::Idle,
        Action::Restart => {
            state.status = QueryStatus::Pending;
            state.fetch_status = FetchStatus::Fetching;
            state.data = None;
            state.data_updated_at = None;
            state.error = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every change of an entry's state goes through the reducer, including a write made
    /// while a fetch goes on and a fetch whose result a newer write superseded.
    #[test]
    fn a_write_during_a_fetch_keeps_showing_the_fetch_until_it_is_superseded() {
        let mut s = QueryState::<u32>::default();
        reduce(&mut s, Action::Fetch);
        reduce(
            &mut s,
            Action::Success {
                data: Arc::new(1),
                at: SystemTime::UNIX_EPOCH,
                invalidated: false,
            },
        );
        reduce(&mut s, Action::FetchGoesOn);
        assert_eq!(s.fetch_status, FetchStatus::Fetching);
        assert_eq!(s.data.as_deref(), Some(&1));
        reduce(&mut s, Action::Superseded);
        assert_eq!(s.fetch_status, FetchStatus::Idle);
        assert_eq!(s.status, QueryStatus::Success);
        assert_eq!(s.data.as_deref(), Some(&1));
    }

    #[test]
    fn fetch_then_success_then_error_keeps_data() {
        let mut s = QueryState::<u32>::default();
        reduce(&mut s, Action::Fetch);
        assert_eq!(s.status, QueryStatus::Pending);
        assert!(s.is_loading());
        reduce(
            &mut s,
            Action::Failed {
                error: QueryError::Cancelled,
            },
        );
        assert_eq!(s.failure_count, 1);
        let t = SystemTime::UNIX_EPOCH;
        reduce(
            &mut s,
            Action::Success {
                data: Arc::new(5),
                at: t,
                invalidated: false,
            },
        );
        assert_eq!(s.failure_count, 0);
        assert!(s.failure_reason.is_none());
        assert_eq!(s.data.as_deref(), Some(&5));
        reduce(&mut s, Action::Fetch);
        reduce(
            &mut s,
            Action::Error {
                error: QueryError::Cancelled,
                at: t,
            },
        );
        assert_eq!(s.status, QueryStatus::Error);
        assert_eq!(s.data.as_deref(), Some(&5));
        assert_eq!(s.fetch_status, FetchStatus::Idle);
    }

    #[test]
    fn data_updated_at_never_goes_backwards() {
        let mut s = QueryState::<u32>::default();
        let later = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10);
        reduce(
            &mut s,
            Action::Success {
                data: Arc::new(1),
                at: later,
                invalidated: false,
            },
        );
        reduce(
            &mut s,
            Action::Success {
                data: Arc::new(2),
                at: SystemTime::UNIX_EPOCH,
                invalidated: false,
            },
        );
        assert_eq!(s.data_updated_at, Some(later));
        assert_eq!(s.data.as_deref(), Some(&2));
    }

    #[test]
    fn revert_restores_previous_but_keeps_invalidation() {
        let mut s = QueryState::<u32>::default();
        let prev = s.clone();
        reduce(&mut s, Action::Fetch);
        reduce(&mut s, Action::Invalidate);
        reduce(&mut s, Action::Revert { previous: prev });
        assert_eq!(s.status, QueryStatus::Idle);
        assert_eq!(s.fetch_status, FetchStatus::Idle);
        assert!(s.is_invalidated);
    }
}

/// Where a mutation is in its life: `Idle → Pending → Success | Error`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MutationStatus {
    /// Never run since it was created or [`reset`](crate::Mutation::reset).
    #[default]
    Idle,
    /// A call is under way (waiting for its scope, in `on_mutate`, in the mutation
    /// function, between retries, or in `on_success` / `on_error` / `on_settled`).
    Pending,
    /// The latest call succeeded.
    Success,
    /// The latest call failed (after its retries), panicked, or was dropped mid-way.
    Error,
}
