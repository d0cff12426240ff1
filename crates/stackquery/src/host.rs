//! Where the engine runs: its clock, its background tasks and its sleeps.
//!
//! By default a client runs on tokio: tokio's clock (so tests on the paused clock are
//! exact), `tokio::spawn` for fetches that outlive their first caller and for the timer
//! driver, `tokio::time::sleep` between retries. A [`Host`] replaces all three, so the same
//! engine can run inside another event loop. The Python package drives it from an asyncio
//! loop this way (`crates/stackquery-py/DESIGN.md`): the loop's clock, its tasks and its
//! timers. Everything the entries decide stays the same; only where the work runs changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;

/// A boxed, sendable future, as a [`Host`] receives and returns them.
pub type HostFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An event loop the engine can run on instead of tokio.
///
/// Install one with [`QueryClientBuilder::host`](crate::QueryClientBuilder::host). The
/// engine calls it from any thread that uses the client, and never under one of its
/// locks.
pub trait Host: Send + Sync + 'static {
    /// The current time on the host's monotonic clock. Freshness, gc and every deadline
    /// are judged by it.
    fn now(&self) -> Instant;

    /// Runs `task` in the background until it finishes. `None`: no task can be started
    /// now (for tokio: no runtime); the engine then reports
    /// [`QueryError::NoRuntime`](crate::QueryError::NoRuntime) or retries later.
    fn spawn(&self, task: HostFuture) -> Option<TaskHandle>;

    /// Whether [`spawn`](Self::spawn) could start a task now (checked before a fetch
    /// begins, so that a fetch that cannot run is never begun).
    fn can_spawn(&self) -> bool;

    /// A future that completes at `deadline` on the host's clock.
    fn sleep_until(&self, deadline: Instant) -> HostFuture;
}

/// A background task started by a [`Host`], which the engine may stop (a cancelled fetch,
/// a client going away).
pub struct TaskHandle(TaskInner);

enum TaskInner {
    Tokio(tokio::task::AbortHandle),
    Custom(Box<dyn Fn() + Send + Sync>),
}

impl TaskHandle {
    /// A handle that stops the task by calling `abort`. Stopping drops the task's future;
    /// a task that already finished ignores it.
    pub fn new(abort: impl Fn() + Send + Sync + 'static) -> Self {
        TaskHandle(TaskInner::Custom(Box::new(abort)))
    }

    /// Stops the task.
    pub fn abort(&self) {
        match &self.0 {
            TaskInner::Tokio(handle) => handle.abort(),
            TaskInner::Custom(abort) => abort(),
        }
    }
}

impl From<tokio::task::AbortHandle> for TaskHandle {
    fn from(handle: tokio::task::AbortHandle) -> Self {
        TaskHandle(TaskInner::Tokio(handle))
    }
}

impl std::fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskHandle(..)")
    }
}

/// The engine's host: tokio unless the client was built with another. (An enum, not a
/// trait object for both: the hit path reads the clock, and tokio's stays a direct call.)
#[derive(Clone, Default)]
pub(crate) enum Runtime {
    /// The current tokio runtime, looked up at each call.
    #[default]
    Tokio,
    /// A host the client was built with.
    Custom(Arc<dyn Host>),
}

impl Runtime {
    /// The host's time.
    #[inline(always)]
    pub(crate) fn now(&self) -> Instant {
        match self {
            Runtime::Tokio => Instant::now(),
            Runtime::Custom(host) => host.now(),
        }
    }

    /// Starts `task` in the background (see [`Host::spawn`]).
    pub(crate) fn spawn<F>(&self, task: F) -> Option<TaskHandle>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self {
            Runtime::Tokio => {
                let handle = tokio::runtime::Handle::try_current().ok()?;
                Some(handle.spawn(task).abort_handle().into())
            }
            Runtime::Custom(host) => host.spawn(Box::pin(task)),
        }
    }

    /// See [`Host::can_spawn`].
    pub(crate) fn can_spawn(&self) -> bool {
        match self {
            Runtime::Tokio => tokio::runtime::Handle::try_current().is_ok(),
            Runtime::Custom(host) => host.can_spawn(),
        }
    }

    /// Sleeps until `deadline` on the host's clock. Boxed: a sleep is rare (a retry, the
    /// timer driver's wait), and a small handle keeps the futures that may sleep small —
    /// an inline tokio `Sleep` made every fetch's future large enough to leave the
    /// allocator's fast size classes (+14 % instructions per new key, measured).
    pub(crate) fn sleep_until(&self, deadline: Instant) -> HostFuture {
        match self {
            Runtime::Tokio => Box::pin(tokio::time::sleep_until(deadline)),
            Runtime::Custom(host) => host.sleep_until(deadline),
        }
    }

    /// Sleeps for `d` on the host's clock (saturating: `Duration::MAX` sleeps "forever").
    pub(crate) fn sleep(&self, d: std::time::Duration) -> HostFuture {
        self.sleep_until(crate::deadline::saturating_after(self.now(), d))
    }
}
