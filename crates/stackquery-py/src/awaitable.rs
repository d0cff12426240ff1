//! A Rust future awaited from Python.
//!
//! `await client.fetch_query(opts)` gets a [`RustAwaitable`]. The asyncio task that awaits
//! it calls `send(None)`, which polls the future once:
//! - a fresh hit is ready at that first poll, so the `await` completes right there, with
//!   no task switch and no thread hop;
//! - a pending future yields the awaitable's [`Waiter`] to the task: a small object that
//!   speaks asyncio's future protocol (`_asyncio_future_blocking`, `get_loop`,
//!   `add_done_callback`, `cancel`, `result`). The task registers its wake-up on it.
//!   The future's waker hands that wake-up to the loop's batch (`Loop::wake_task`): all
//!   the wake-ups of one turn (10,000 callers of one cold key) run in one loop callback,
//!   each in its task's context. No asyncio future, no handle and no Python frame is made
//!   per waiter.
//!
//! A task that is cancelled while it waits cancels the [`Waiter`] (as it would cancel an
//! asyncio future): the task is woken with `CancelledError`, which it throws into the
//! awaitable. That drops the Rust future, which cancels this caller's wait and nothing
//! else: a fetch shared with other callers runs in a task of its own (the engine's
//! `lead_fetch` moved it there at its first wait).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::sync::OnceLock;

use crate::pyhost::Loop;

/// What a [`RustAwaitable`] runs.
pub(crate) type PyFuture = Pin<Box<dyn Future<Output = PyResult<Py<PyAny>>> + Send>>;

/// A Rust future as a Python awaitable (see the module docs).
#[pyclass(module = "stackquery._native")]
pub(crate) struct RustAwaitable {
    future: Mutex<Option<PyFuture>>,
    waker: Arc<LoopWaker>,
    /// The object yielded to the task while the future is pending (made at the first
    /// suspension, then reused).
    waiter: OnceLock<Py<Waiter>>,
}

/// A task's wake-up, as registered with `add_done_callback`: the callback and its context.
pub(crate) type Wakeup = (Py<PyAny>, Option<Py<PyAny>>);

/// Wakes the asyncio task that awaits a [`RustAwaitable`].
pub(crate) struct LoopWaker {
    lp: Arc<Loop>,
    state: Mutex<WakeState>,
}

#[derive(Default)]
struct WakeState {
    /// Woken while not waited on (during a poll, or before the task registered its
    /// wake-up).
    woken: bool,
    /// The [`Waiter`] is yielded and not resolved yet.
    armed: bool,
    /// `_asyncio_future_blocking`, as the task reads and writes it.
    blocking: bool,
    /// The waiting task was cancelled (the waiter resolves with `CancelledError`), with
    /// the message given to `cancel`.
    cancelled: bool,
    cancel_msg: Option<Py<PyAny>>,
    /// The task's wake-up.
    wakeup: Option<Wakeup>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Wake for LoopWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let wakeup = {
            let mut state = lock(&self.state);
            if !state.armed {
                state.woken = true;
                return;
            }
            match state.wakeup.take() {
                Some(w) => {
                    state.armed = false;
                    w
                }
                None => {
                    // Yielded, and the task has not registered yet (a wake from another
                    // thread): `add_done_callback` sees it.
                    state.woken = true;
                    return;
                }
            }
        };
        Python::attach(|py| match resolved(py) {
            Ok(ok) => self.lp.wake_task(py, wakeup, ok.clone_ref(py).into_any()),
            Err(e) => e.print(py),
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
            waiter: OnceLock::new(),
        }
    }

    /// Gives the awaitable its future.
    pub(crate) fn set(&self, future: PyFuture) {
        *lock(&self.future) = Some(future);
    }

    /// The waker that resumes the awaiting task (for a first poll made elsewhere).
    pub(crate) fn waker(&self) -> Waker {
        self.reset();
        Waker::from(self.waker.clone())
    }

    /// Before a poll: not woken, not waited on.
    fn reset(&self) {
        let mut state = lock(&self.waker.state);
        state.woken = false;
        state.armed = false;
        state.cancelled = false;
        state.cancel_msg = None;
        state.wakeup = None;
    }

    /// Drops the future and any registered wake-up.
    fn drop_future(&self) {
        drop(lock(&self.future).take());
        let wakeup = {
            let mut state = lock(&self.waker.state);
            state.armed = false;
            state.wakeup.take()
        };
        drop(wakeup);
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
        self.drop_future();
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
        self.drop_future();
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
        self.reset();
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
                Err(stop_iteration(py, value))
            }
            Poll::Pending => {
                drop(slot);
                if crate::hooks::pending() {
                    crate::hooks::drain(py);
                }
                self.suspend(py)
            }
        }
    }

    /// After a pending poll: the object to yield to the task.
    pub(crate) fn suspend(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let waiter = match self.waiter.get() {
            Some(w) => w,
            None => {
                let w = Py::new(
                    py,
                    Waiter {
                        waker: self.waker.clone(),
                    },
                )?;
                self.waiter.get_or_init(|| w)
            }
        };
        let mut state = lock(&self.waker.state);
        if state.woken {
            // Woken during the poll: a bare yield, and the task sends again.
            return Ok(py.None());
        }
        state.armed = true;
        state.blocking = true;
        Ok(waiter.clone_ref(py).into_any())
    }
}

/// `StopIteration(value)`, the way an awaitable returns `value`: the exception object is
/// made here, at once (a lazy `PyErr` would box a closure to make it later).
pub(crate) fn stop_iteration(py: Python<'_>, value: Py<PyAny>) -> PyErr {
    match py.get_type::<PyStopIteration>().call1((value,)) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// What a waiting task is given to wait on: one pending step of a [`RustAwaitable`], with
/// the part of asyncio's future protocol that a task uses.
///
/// It does not show the task's wake-up to the garbage collector: that wake-up is kept
/// for the Rust side that will wake it (the waker, held by the engine), not by this
/// object alone, and a task waiting on the engine must stay alive as long as the engine
/// may wake it (asyncio itself holds tasks only weakly).
#[pyclass(module = "stackquery._native", frozen)]
pub(crate) struct Waiter {
    waker: Arc<LoopWaker>,
}

#[pymethods]
impl Waiter {
    #[getter(_asyncio_future_blocking)]
    fn blocking(&self) -> bool {
        lock(&self.waker.state).blocking
    }

    #[setter(_asyncio_future_blocking)]
    fn set_blocking(&self, value: bool) {
        lock(&self.waker.state).blocking = value;
    }

    fn get_loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.waker.lp.obj.clone_ref(py)
    }

    /// The task's wake-up (asyncio passes its context as `context`).
    #[pyo3(signature = (callback, *, context = None))]
    fn add_done_callback(
        slf: &Bound<'_, Self>,
        callback: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let wakeup = (callback, context);
        {
            let mut state = lock(&this.waker.state);
            if state.armed && !state.woken {
                state.wakeup = Some(wakeup);
                return Ok(());
            }
            // Resolved already (woken from another thread before this call, or
            // cancelled): wake at once.
            state.armed = false;
        }
        this.waker
            .lp
            .wake_task(py, wakeup, slf.clone().into_any().unbind());
        Ok(())
    }

    fn remove_done_callback(&self, py: Python<'_>, callback: Bound<'_, PyAny>) -> usize {
        let mut state = lock(&self.waker.state);
        match &state.wakeup {
            Some((cb, _)) if cb.bind(py).eq(&callback).unwrap_or(false) => {
                state.wakeup = None;
                1
            }
            _ => 0,
        }
    }

    /// The waiting task is cancelled: it is woken with `CancelledError` (which it throws
    /// into the awaitable, dropping this caller's wait).
    #[pyo3(signature = (msg = None))]
    fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> bool {
        let this = slf.get();
        let wakeup = {
            let mut state = lock(&this.waker.state);
            if !state.armed {
                return false;
            }
            state.armed = false;
            state.cancelled = true;
            state.cancel_msg = msg;
            state.wakeup.take()
        };
        if let Some(w) = wakeup {
            this.waker
                .lp
                .wake_task(slf.py(), w, slf.clone().into_any().unbind());
        }
        true
    }

    fn cancelled(&self) -> bool {
        lock(&self.waker.state).cancelled
    }

    fn done(&self) -> bool {
        let state = lock(&self.waker.state);
        !state.armed || state.woken
    }

    fn result(&self, py: Python<'_>) -> PyResult<()> {
        let state = lock(&self.waker.state);
        if state.cancelled {
            return Err(match &state.cancel_msg {
                Some(msg) => {
                    pyo3::exceptions::asyncio::CancelledError::new_err((msg.clone_ref(py),))
                }
                None => pyo3::exceptions::asyncio::CancelledError::new_err(()),
            });
        }
        Ok(())
    }

    fn exception(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.result(py).map(|()| None)
    }
}

/// The object a woken task's wake-up is called with (it calls `result()` on it): a
/// step that is done (the task sends again, and the awaitable polls its future).
#[pyclass(module = "stackquery._native", frozen)]
pub(crate) struct Resolved;

#[pymethods]
impl Resolved {
    fn result(&self) {}

    fn cancelled(&self) -> bool {
        false
    }

    fn done(&self) -> bool {
        true
    }

    fn exception(&self) -> Option<Py<PyAny>> {
        None
    }
}

static RESOLVED: PyOnceLock<Py<Resolved>> = PyOnceLock::new();

/// The one [`Resolved`] object.
pub(crate) fn resolved(py: Python<'_>) -> PyResult<&Py<Resolved>> {
    RESOLVED.get_or_try_init(py, || Py::new(py, Resolved))
}
