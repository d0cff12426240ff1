//! A Rust future awaited from Python.
//!
//! `await client.fetch_query(opts)` gets a [`RustAwaitable`]. The asyncio task that awaits
//! it calls `send(None)`, which polls the future once:
//! - a fresh hit is ready at that first poll, so the `await` completes right there, with
//!   no task switch and no thread hop;
//! - a pending future yields an asyncio future to the task. The future's waker resolves
//!   that asyncio future, and the task then sends again.
//!
//! A task that is cancelled throws into the awaitable. That drops the Rust future, which
//! cancels this caller's wait and nothing else: a fetch shared with other callers runs in
//! a task of its own (the engine's `lead_fetch` moved it there at its first wait).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::prelude::*;

use crate::pyhost::{support, Loop};

/// What a [`RustAwaitable`] runs.
pub(crate) type PyFuture = Pin<Box<dyn Future<Output = PyResult<Py<PyAny>>> + Send>>;

/// A Rust future as a Python awaitable (see the module docs).
#[pyclass(module = "stackquery._native")]
pub(crate) struct RustAwaitable {
    future: Mutex<Option<PyFuture>>,
    waker: Arc<LoopWaker>,
}

/// Wakes the asyncio task that awaits a [`RustAwaitable`].
struct LoopWaker {
    lp: Arc<Loop>,
    state: Mutex<WakeState>,
}

#[derive(Default)]
struct WakeState {
    /// Woken while being polled: the task is told to come back at once.
    woken: bool,
    /// The asyncio future the task waits on.
    fut: Option<Py<PyAny>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Wake for LoopWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let fut = {
            let mut state = lock(&self.state);
            match state.fut.take() {
                Some(fut) => fut,
                None => {
                    state.woken = true;
                    return;
                }
            }
        };
        Python::attach(|py| {
            let woke = support(py)
                .and_then(|s| s.getattr("wake"))
                .and_then(|wake| self.lp.call_soon(py, &wake, fut.into_bound(py)));
            if let Err(e) = woke {
                e.print(py);
            }
        });
    }
}

impl RustAwaitable {
    pub(crate) fn new(lp: Arc<Loop>, future: PyFuture) -> Self {
        let awaitable = RustAwaitable::empty(lp);
        awaitable.set(future);
        awaitable
    }

    /// An awaitable with no future yet (see [`set`](Self::set)).
    pub(crate) fn empty(lp: Arc<Loop>) -> Self {
        RustAwaitable {
            future: Mutex::new(None),
            waker: Arc::new(LoopWaker {
                lp,
                state: Mutex::new(WakeState::default()),
            }),
        }
    }

    /// Gives the awaitable its future.
    pub(crate) fn set(&self, future: PyFuture) {
        *lock(&self.future) = Some(future);
    }

    /// The waker that resumes the awaiting task (for a first poll made elsewhere).
    pub(crate) fn waker(&self) -> Waker {
        *lock(&self.waker.state) = WakeState::default();
        Waker::from(self.waker.clone())
    }
}

#[pymethods]
impl RustAwaitable {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    /// Polls the future (the value sent is ignored, as asyncio sends `None`).
    #[pyo3(signature = (_value = None))]
    fn send(&self, py: Python<'_>, _value: Option<Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    /// The awaiting task was cancelled (or an exception thrown in): the future is dropped
    /// (this caller stops waiting) and the exception goes on.
    #[pyo3(signature = (typ, val = None, _tb = None))]
    pub(crate) fn throw(
        &self,
        py: Python<'_>,
        typ: Bound<'_, PyAny>,
        val: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        drop(lock(&self.future).take());
        let exc = match val {
            Some(v) if !v.is_none() => v,
            _ if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() => typ,
            _ => typ.call0()?,
        };
        let _ = py;
        Err(PyErr::from_value(exc))
    }

    /// Drops the future.
    pub(crate) fn close(&self) {
        drop(lock(&self.future).take());
    }
}

impl RustAwaitable {
    pub(crate) fn step(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut slot = lock(&self.future);
        let Some(future) = slot.as_mut() else {
            return Err(PyRuntimeError::new_err(
                "cannot reuse an already awaited stackquery awaitable",
            ));
        };
        *lock(&self.waker.state) = WakeState::default();
        let waker = Waker::from(self.waker.clone());
        // Tier work (a write behind, a timeout) started by this poll finds its runtime.
        let _rt = crate::io_runtime::enter();
        match future.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(result) => {
                *slot = None;
                drop(slot);
                if crate::hooks::pending() {
                    crate::hooks::drain(py);
                }
                let value = result?;
                Err(PyStopIteration::new_err((value,)))
            }
            Poll::Pending => {
                drop(slot);
                if crate::hooks::pending() {
                    crate::hooks::drain(py);
                }
                let fut = self.waker.lp.obj.bind(py).call_method0("create_future")?;
                fut.setattr("_asyncio_future_blocking", true)?;
                let mut state = lock(&self.waker.state);
                if state.woken {
                    // Woken during the poll: a bare yield, and the task sends again.
                    return Ok(py.None());
                }
                state.fut = Some(fut.clone().unbind());
                Ok(fut.unbind())
            }
        }
    }
}
