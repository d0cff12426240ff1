//! The tokio runtime behind the second tier and the bus.
//!
//! The engine itself runs on the caller's asyncio loop (see `pyhost.rs`), but the SQLite
//! and Redis backends, the tier's write-behind worker, its per-call timeouts and the Redis
//! bus are tokio code. They run on one small runtime of their own, started by the first
//! client (or storage object) that needs it, so a package that never persists starts no
//! thread.
//!
//! Engine code that may start tier work (a write behind, a timeout around a read) runs
//! inside [`enter`], so that tokio finds this runtime from the asyncio thread. Without a
//! runtime `enter` is one atomic load.

use std::sync::OnceLock;

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyResult;
use tokio::runtime::{Builder, EnterGuard, Runtime};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime, started at the first call.
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = Builder::new_multi_thread()
        // Storage calls are I/O waits and SQLite has a thread of its own: one worker is
        // enough, and leaves the cores to the interpreter.
        .worker_threads(1)
        .thread_name("stackquery-io")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the storage runtime: {e}")))?;
    // Two threads racing here: the loser's runtime is dropped unused.
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Makes the runtime current on this thread until the guard drops (nothing when no
/// storage was ever made).
pub(crate) fn enter() -> Option<EnterGuard<'static>> {
    RUNTIME.get().map(Runtime::enter)
}
