//! The observable state of a mutation, and the pure reducer that changes it.
//!
//! Every change goes through [`reduce`] with an [`Action`]; notifying listeners happens
//! after, outside any lock (see `listeners.rs`). The caller passes wall-clock stamps in,
//! so the reducer stays pure.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::QueryError;

pub use crate::state::MutationStatus;

/// A snapshot of a mutation's state: that of its latest call.
///
/// Data is shared (`Arc<T>`): taking a snapshot never deep-copies.
pub struct MutationState<T> {
    /// Idle / pending / success / error.
    pub status: MutationStatus,
    /// The latest call's result, once it succeeded.
    pub data: Option<Arc<T>>,
    /// The latest call's error, once it failed.
    pub error: Option<QueryError>,
    /// Wall-clock time the latest call was submitted (first polled).
    pub submitted_at: Option<SystemTime>,
    /// Wall-clock time the latest call settled (success or error).
    pub settled_at: Option<SystemTime>,
    /// Failed attempts of the latest call so far; 0 after a success.
    pub failure_count: u32,
    /// The error of the latest failed attempt; `None` after a success.
    pub failure_reason: Option<QueryError>,
}

impl<T> MutationState<T> {
    /// True when the status is `Idle`.
    pub fn is_idle(&self) -> bool {
        self.status == MutationStatus::Idle
    }
    /// True when the status is `Pending`.
    pub fn is_pending(&self) -> bool {
        self.status == MutationStatus::Pending
    }
    /// True when the status is `Success`.
    pub fn is_success(&self) -> bool {
        self.status == MutationStatus::Success
    }
    /// True when the status is `Error`.
    pub fn is_error(&self) -> bool {
        self.status == MutationStatus::Error
    }
}

impl<T> Default for MutationState<T> {
    fn default() -> Self {
        MutationState {
            status: MutationStatus::Idle,
            data: None,
            error: None,
            submitted_at: None,
            settled_at: None,
            failure_count: 0,
            failure_reason: None,
        }
    }
}

impl<T> Clone for MutationState<T> {
    fn clone(&self) -> Self {
        MutationState {
            status: self.status,
            data: self.data.clone(),
            error: self.error.clone(),
            submitted_at: self.submitted_at,
            settled_at: self.settled_at,
            failure_count: self.failure_count,
            failure_reason: self.failure_reason.clone(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for MutationState<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutationState")
            .field("status", &self.status)
            .field("data", &self.data)
            .field("error", &self.error)
            .field("submitted_at", &self.submitted_at)
            .field("settled_at", &self.settled_at)
            .field("failure_count", &self.failure_count)
            .field("failure_reason", &self.failure_reason)
            .finish()
    }
}

/// One change to a mutation's state.
pub(crate) enum Action<T> {
    /// A call was submitted: everything from the previous call is cleared.
    Submit { at: SystemTime },
    /// An attempt failed and will be retried.
    Failed { count: u32, reason: QueryError },
    /// The call succeeded.
    Success { data: Arc<T>, at: SystemTime },
    /// The call failed for good (`count` failed attempts; 0 if the function never ran).
    Error {
        error: QueryError,
        count: u32,
        at: SystemTime,
    },
    /// Back to the initial state.
    Reset,
}

/// The next state after `action`.
pub(crate) fn reduce<T>(state: &MutationState<T>, action: Action<T>) -> MutationState<T> {
    match action {
        Action::Submit { at } => MutationState {
            status: MutationStatus::Pending,
            submitted_at: Some(at),
            ..MutationState::default()
        },
        Action::Failed { count, reason } => MutationState {
            failure_count: count,
            failure_reason: Some(reason),
            ..state.clone()
        },
        Action::Success { data, at } => MutationState {
            status: MutationStatus::Success,
            data: Some(data),
            error: None,
            submitted_at: state.submitted_at,
            settled_at: Some(at),
            failure_count: 0,
            failure_reason: None,
        },
        Action::Error { error, count, at } => MutationState {
            status: MutationStatus::Error,
            data: None,
            error: Some(error.clone()),
            submitted_at: state.submitted_at,
            settled_at: Some(at),
            failure_count: count,
            failure_reason: Some(error),
        },
        Action::Reset => MutationState::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_clears_the_previous_call() {
        let t0 = SystemTime::UNIX_EPOCH;
        let done = reduce(
            &MutationState::default(),
            Action::Success {
                data: Arc::new(1),
                at: t0,
            },
        );
        let s = reduce(&done, Action::Submit { at: t0 });
        assert!(s.is_pending());
        assert!(s.data.is_none() && s.settled_at.is_none());
        assert_eq!(s.submitted_at, Some(t0));
    }

    #[test]
    fn failures_count_then_success_clears_them() {
        let t0 = SystemTime::UNIX_EPOCH;
        let s = reduce(&MutationState::<u8>::default(), Action::Submit { at: t0 });
        let s = reduce(
            &s,
            Action::Failed {
                count: 1,
                reason: QueryError::Cancelled,
            },
        );
        assert!(s.is_pending());
        assert_eq!(s.failure_count, 1);
        let s = reduce(
            &s,
            Action::Success {
                data: Arc::new(2),
                at: t0,
            },
        );
        assert!(s.is_success());
        assert_eq!((s.failure_count, s.failure_reason.is_none()), (0, true));
        assert_eq!(s.submitted_at, Some(t0));
        assert!(reduce(&s, Action::Reset).is_idle());
    }

    #[test]
    fn error_keeps_submitted_at_and_sets_reason() {
        let t0 = SystemTime::UNIX_EPOCH;
        let s = reduce(&MutationState::<u8>::default(), Action::Submit { at: t0 });
        let s = reduce(
            &s,
            Action::Error {
                error: QueryError::Cancelled,
                count: 2,
                at: t0,
            },
        );
        assert!(s.is_error());
        assert_eq!(s.failure_count, 2);
        assert!(s.error.as_ref().is_some_and(QueryError::is_cancelled));
        assert!(s.failure_reason.is_some());
    }
}
