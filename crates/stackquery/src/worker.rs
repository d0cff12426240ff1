//! Background workers that outlive the runtime they started on.
//!
//! A client can outlive the tokio runtime its background work was spawned on (a client in
//! a `static` shared by several `#[tokio::test]`s, a sync wrapper that builds a runtime per
//! call). When that runtime shuts down, it drops its tasks. A [`Worker`] notices: the task
//! owns a [`Running`] guard whose drop clears the flag, so the next call that needs the
//! worker starts it again on the *current* runtime. The work itself (timers, queued writes)
//! is kept outside the task, in the structures the task reads, so a restarted worker picks
//! up everything its predecessor owned.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::host::Runtime;

/// One restartable background task.
#[derive(Default)]
pub(crate) struct Worker {
    running: Arc<AtomicBool>,
    /// The task's abort handle, for owners that stop it when they are dropped.
    task: parking_lot::Mutex<Option<crate::host::TaskHandle>>,
}

/// Held by the worker's task; dropping it (task finished, aborted, or dropped with its
/// runtime) marks the worker as not running.
pub(crate) struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Worker {
    /// Starts the task `make(guard)` on the current runtime unless it is running. Without a
    /// runtime nothing starts: the work waits for the next call made inside one. One atomic
    /// load when the task runs.
    pub(crate) fn ensure<F, Fut>(&self, make: F)
    where
        F: FnOnce(Running) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.ensure_on(&Runtime::Tokio, make);
    }

    /// [`ensure`](Self::ensure) on `runtime` (the client's host).
    pub(crate) fn ensure_on<F, Fut>(&self, runtime: &Runtime, make: F)
    where
        F: FnOnce(Running) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.running.load(Ordering::Acquire) {
            return;
        }
        if !runtime.can_spawn() {
            return;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        // If the runtime is shutting down, the task is dropped at once with its guard, so
        // the flag goes back to false and a later call tries again.
        let task = runtime.spawn(make(Running(self.running.clone())));
        *self.task.lock() = task;
    }

    /// Stops the task if it runs (its owner is going away).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn abort(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }

    /// Whether the task is alive.
    #[inline]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker spawned on a runtime that is then dropped is restarted by the next
    /// `ensure` on another runtime.
    #[test]
    fn a_worker_whose_runtime_died_starts_again_on_the_next_one() {
        let worker = Worker::default();
        let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..3 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let s = starts.clone();
                worker.ensure(move |running| async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    let _running = running;
                    std::future::pending::<()>().await;
                });
                tokio::task::yield_now().await;
                assert!(worker.is_running());
            });
            drop(rt);
            assert!(!worker.is_running(), "the dead runtime dropped the task");
        }
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }
}
