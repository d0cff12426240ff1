//! One in-flight fetch shared by every caller of a key (the deduplication point).
//!
//! The result is written once and then every waiter is woken; the one-shot cell that does
//! it ([`slot::Slot`]) registers a waiter *and* checks the result under one lock, so a
//! wake-up can never be lost between the check and the wait, and a waiter that is dropped
//! unregisters itself. The cell is model-checked under shuttle (`tests/shuttle_flight.rs`),
//! which compiles this file too: its unit tests live in `tests.rs`, declared from
//! `lib.rs`, so they stay out of the shuttle build.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::error::QueryError;
use crate::host::TaskHandle;
use crate::state::QueryState;
use crate::sync::Mutex;
// Not `crate::sync`'s: only ever touched under the entry's lock, so a model checker has
// nothing to preempt there.
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) mod slot;

use slot::Slot;

/// The shared result of a fetch.
pub(crate) type FetchResult<T> = Result<Arc<T>, QueryError>;

pub(crate) struct Flight<T> {
    result: Slot<FetchResult<T>>,
    /// The task that runs the fetch, once it has one (a ready fetch never does), and
    /// whether a cancel asked to stop it (see [`hand_to_task`](Self::hand_to_task)).
    task: Mutex<Task>,
    /// The entry's state when the fetch began: what a cancel goes back to.
    pub(crate) previous: QueryState<T>,
    /// The entry's data generation when the fetch began; a manual write bumps it, and
    /// then this fetch's result must not overwrite the newer manual data. A streamed
    /// query's items move it along with the entry's (`Machine::stream_item`, under the
    /// entry's lock): its own items are no manual write. (An atomic only so the flight
    /// can be shared; it is the size of the `u64` it replaced.)
    data_gen: AtomicU64,
    /// The entry's invalidation generation when the fetch began; if it moved, the result
    /// is stored but stays stale.
    pub(crate) inval_gen: u64,
    /// The flight settles only with data fresh when it began: the fetch function's, or a
    /// stored copy (second tier, snapshot) that is neither invalidated nor older than the
    /// stale time. Only the first fetch of a cold key for a stale-while-revalidate caller
    /// may take a stale stored copy; a caller that refuses stale data
    /// (`fetch_query_fresh`) joins only flights with this set.
    pub(crate) fresh_only: bool,
    /// Resolved when the fetch task has stopped (finished, or dropped after an abort):
    /// its fetch function's future is gone by then.
    stopped: Slot<()>,
    /// Fired when the entry stops waiting for this fetch (cancelled, removed, reset): each
    /// attempt's token is its child. Only a fetch function that takes a context has one
    /// (`None` is one word and no allocation).
    cancel: Option<CancellationToken>,
}

/// The fetch's task as far as cancelling it goes.
#[derive(Default)]
struct Task {
    abort: Option<TaskHandle>,
    cancelled: bool,
}

/// Held by a flight's task: dropping it (with the task's future) says the task stopped.
pub(crate) struct Running<T>(Arc<Flight<T>>);

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        self.0.stopped.resolve(());
    }
}

impl<T> Flight<T> {
    /// `cancel`: the flight's cancellation token, when its fetch function takes a context.
    pub(crate) fn new(
        previous: QueryState<T>,
        data_gen: u64,
        inval_gen: u64,
        fresh_only: bool,
        cancel: Option<CancellationToken>,
    ) -> Self {
        Flight {
            result: Slot::new(),
            task: Mutex::new(Task::default()),
            previous,
            data_gen: AtomicU64::new(data_gen),
            inval_gen,
            fresh_only,
            stopped: Slot::new(),
            cancel,
        }
    }

    /// The data generation this flight's result may overwrite (see the field).
    pub(crate) fn data_gen(&self) -> u64 {
        // Written and read under the entry's lock only: the lock orders them.
        self.data_gen.load(Ordering::Relaxed)
    }

    /// A streamed item of this flight replaced the entry's data, which is now at
    /// generation `gen` (called under the entry's lock).
    pub(crate) fn follow_data_gen(&self, gen: u64) {
        self.data_gen.store(gen, Ordering::Relaxed);
    }

    /// The flight's cancellation token, if its fetch function takes a context.
    pub(crate) fn cancellation(&self) -> Option<&CancellationToken> {
        self.cancel.as_ref()
    }

    /// Records the task that now runs the fetch. A cancel that came first (while the
    /// fetch ran in its caller's task, or between the spawn and this call) aborts it at
    /// once: a cancel never waits for a fetch it could not reach.
    pub(crate) fn hand_to_task(&self, abort: TaskHandle) {
        let mut task = self.task.lock();
        if task.cancelled {
            abort.abort();
        } else {
            task.abort = Some(abort);
        }
    }

    /// Stops the fetch's task, now if it has one, else as soon as it is handed one.
    pub(crate) fn abort_task(&self) {
        let mut task = self.task.lock();
        task.cancelled = true;
        if let Some(abort) = task.abort.take() {
            abort.abort();
        }
    }

    /// The token the flight's task holds while it runs (see [`stopped`](Self::stopped)).
    pub(crate) fn running(self: &Arc<Self>) -> Running<T> {
        Running(Arc::clone(self))
    }

    /// Waits until the flight's task has stopped and dropped everything it held (the fetch
    /// function's future included).
    pub(crate) async fn stopped(&self) {
        self.stopped.wait().await;
    }

    /// Publishes the result (the first one wins) and wakes every waiter.
    pub(crate) fn resolve(&self, result: FetchResult<T>) {
        self.result.resolve(result);
    }

    pub(crate) fn is_resolved(&self) -> bool {
        self.result.is_resolved()
    }

    /// Waiters registered now (the unit tests check that abandoned ones leave nothing).
    #[cfg(test)]
    pub(crate) fn waiters(&self) -> usize {
        self.result.waiters()
    }

    /// Waits for the result. Dropping this future leaves nothing behind.
    pub(crate) async fn wait(&self) -> FetchResult<T> {
        self.result.wait().await
    }
}
