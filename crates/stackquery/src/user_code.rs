//! One policy for running user code (fetch functions, selectors, equality, listeners,
//! callbacks, predicates, updaters, retry rules): it is always *contained*.
//!
//! * A panic becomes a value ([`QueryError::Panicked`] with the payload's message) and is
//!   logged once, with what was running; it never unwinds through the engine's state.
//! * On a thread that is already unwinding, user code is *not run at all*: a second panic
//!   there would abort the process, so the call is skipped and reported as a panic value
//!   (`"skipped: the thread is already panicking"`). The caller's fallback then applies,
//!   exactly as for a panic.
//! * Callers must hold no internal lock while calling these functions (see the crate's
//!   lock rule in ARCHITECTURE.md): user code may call back into the client.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use futures::FutureExt;

use crate::error::{panic_message, QueryError};

/// The message of the error returned when user code is skipped during unwinding.
pub(crate) const SKIPPED_WHILE_PANICKING: &str = "skipped: the thread is already panicking";

/// Runs a synchronous piece of user code under the crate's panic policy. `what` names it
/// in the log ("select", "listener", "retry_if"…).
pub(crate) fn contain<R>(what: &'static str, f: impl FnOnce() -> R) -> Result<R, QueryError> {
    if std::thread::panicking() {
        tracing::warn!(what, "user code skipped: the thread is already panicking");
        return Err(QueryError::Panicked(Arc::from(SKIPPED_WHILE_PANICKING)));
    }
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = panic_message(&*payload);
        tracing::warn!(what, panic = %message, "user code panicked");
        QueryError::Panicked(message)
    })
}

/// Runs an async piece of user code (a function returning a future) under the same policy:
/// a panic while building the future or while polling it becomes a value.
pub(crate) async fn contain_async<Fut, F>(
    what: &'static str,
    f: F,
) -> Result<Fut::Output, QueryError>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    let fut = contain(what, f)?;
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|payload| {
            let message = panic_message(&*payload);
            tracing::warn!(what, panic = %message, "user code panicked");
            QueryError::Panicked(message)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_value_with_its_message() {
        let r: Result<u32, _> = contain("test", || panic!("boom"));
        assert!(matches!(r, Err(QueryError::Panicked(m)) if &*m == "boom"));
        assert_eq!(contain("test", || 7).ok(), Some(7));
    }

    #[test]
    fn user_code_is_skipped_on_a_thread_that_is_already_unwinding() {
        struct RunsOnUnwind(std::sync::mpsc::Sender<Result<u32, QueryError>>);
        impl Drop for RunsOnUnwind {
            fn drop(&mut self) {
                // Without the policy this inner panic would abort the test process.
                let r = contain("test", || -> u32 { panic!("second panic") });
                let _ = self.0.send(r);
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let outer = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _guard = RunsOnUnwind(tx);
            panic!("first panic");
        }));
        assert!(outer.is_err());
        let inner = rx.recv().unwrap();
        assert!(matches!(inner, Err(QueryError::Panicked(m)) if &*m == SKIPPED_WHILE_PANICKING));
    }

    #[tokio::test]
    async fn an_async_panic_becomes_a_value() {
        let r = contain_async("test", || async { panic!("later") }).await;
        assert!(matches!(r, Err(QueryError::Panicked(m)) if &*m == "later"));
        let r: Result<(), _> =
            contain_async("test", || -> futures::future::Ready<()> { panic!("early") }).await;
        assert!(matches!(r, Err(QueryError::Panicked(m)) if &*m == "early"));
    }
}
