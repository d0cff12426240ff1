//! One in-flight fetch shared by every caller of a key (the deduplication point).
//!
//! The result is written once (`OnceLock`) and then every waiter is woken. A waiter
//! registers with the `Notify` *before* checking the result, so a wake-up can never be
//! lost between the check and the wait; a waiter that is dropped unregisters itself.

use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::error::QueryError;
use crate::state::QueryState;

/// The shared result of a fetch.
pub(crate) type FetchResult<T> = Result<Arc<T>, QueryError>;

pub(crate) struct Flight<T> {
    result: OnceLock<FetchResult<T>>,
    notify: Notify,
    pub(crate) abort: OnceLock<AbortHandle>,
    /// The entry's state when the fetch began: what a cancel goes back to.
    pub(crate) previous: QueryState<T>,
    /// The entry's data generation when the fetch began; a manual write bumps it, and
    /// then this fetch's result must not overwrite the newer manual data.
    pub(crate) data_gen: u64,
    /// The entry's invalidation generation when the fetch began; if it moved, the result
    /// is stored but stays stale.
    pub(crate) inval_gen: u64,
}

impl<T> Flight<T> {
    pub(crate) fn new(previous: QueryState<T>, data_gen: u64, inval_gen: u64) -> Self {
        Flight {
            result: OnceLock::new(),
            notify: Notify::new(),
            abort: OnceLock::new(),
            previous,
            data_gen,
            inval_gen,
        }
    }

    /// Publishes the result (the first one wins) and wakes every waiter.
    pub(crate) fn resolve(&self, result: FetchResult<T>) {
        let _ = self.result.set(result);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_resolved(&self) -> bool {
        self.result.get().is_some()
    }

    /// Waits for the result. Dropping this future leaves nothing behind.
    pub(crate) async fn wait(&self) -> FetchResult<T> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(result) = self.result.get() {
                return result.clone();
            }
            notified.await;
        }
    }
}
