//! A Python query function's coroutine as the engine's fetch future.
//!
//! The engine polls its fetch future like any other, first in the caller's asyncio task
//! (`lead_fetch`), then in a task of its own if it has to wait. Each poll resumes the
//! coroutine with `send(None)`, the way an asyncio task does:
//! - `StopIteration` is the result;
//! - an exception is the error, kept as the very exception object, so every waiter
//!   receives the same object;
//! - a yielded asyncio future is waited on. Its done callback wakes the engine's waker,
//!   and the coroutine is not resumed before that future is done.
//!
//! A coroutine that returns without awaiting finishes inside the first poll, with no task.
//! Dropped before the end (a cancelled fetch), the coroutine is closed, so its `finally`
//! blocks run, and the future it waits on is cancelled.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use pyo3::exceptions::{PyStopIteration, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyCFunction;
use stackquery::BoxError;

/// One call of a query function, driven as a Rust future.
pub(crate) struct PyFetch {
    query_fn: Arc<Py<PyAny>>,
    /// The one argument to call it with (a mutation's input), if any.
    arg: Option<Arc<Py<PyAny>>>,
    /// A plain (not awaitable) return value is the result (a hook such as `on_mutate`,
    /// which may be sync or async), rather than a `TypeError`.
    plain_ok: bool,
    coro: Option<Py<PyAny>>,
    /// The asyncio future the coroutine waits on.
    awaiting: Option<Py<PyAny>>,
    /// The waker its done callback wakes: the latest poller's. The fetch moves from its
    /// caller's task to a task of its own at its first wait, so the waker changes while
    /// the callback stays registered. Made at the first wait (a coroutine that returns at
    /// once needs none).
    waker: Option<Arc<Mutex<Option<Waker>>>>,
}

impl PyFetch {
    pub(crate) fn new(query_fn: Arc<Py<PyAny>>) -> Self {
        PyFetch {
            query_fn,
            arg: None,
            plain_ok: false,
            coro: None,
            awaiting: None,
            waker: None,
        }
    }
}

impl PyFetch {
    /// `f(arg)`, driven the same way (a mutation function and its input).
    pub(crate) fn with_arg(f: Arc<Py<PyAny>>, arg: Arc<Py<PyAny>>) -> Self {
        let mut fetch = PyFetch::new(f);
        fetch.arg = Some(arg);
        fetch
    }

    /// `hook(arg)`, whose result may be a plain value or a coroutine to drive.
    pub(crate) fn hook(f: Arc<Py<PyAny>>, arg: Arc<Py<PyAny>>) -> Self {
        let mut fetch = PyFetch::with_arg(f, arg);
        fetch.plain_ok = true;
        fetch
    }
}

/// The error a query function raised, carried through the engine unchanged.
pub(crate) fn fetch_error(e: PyErr) -> BoxError {
    Box::new(e)
}

/// A query function that is not async: a bug in the caller's code, reported at once and
/// never retried (retrying cannot make it async).
#[derive(Debug)]
pub(crate) struct NotAsync(pub(crate) PyErr, pub(crate) Py<PyAny>);

impl std::fmt::Display for NotAsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for NotAsync {}

impl Future for PyFetch {
    type Output = Result<Py<PyAny>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(slot) = &this.waker {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        Python::attach(|py| {
            if let Some(fut) = &this.awaiting {
                let done = fut
                    .bind(py)
                    .call_method0("done")
                    .and_then(|d| d.is_truthy())
                    .unwrap_or(true);
                if !done {
                    // Polled before the future is done (woken by something else, or a new
                    // poller): its callback is still registered, and wakes the waker above.
                    return Poll::Pending;
                }
                this.awaiting = None;
            }
            if this.coro.is_none() {
                match start(py, &this.query_fn, this.arg.as_deref()) {
                    Ok(Ok(coro)) => this.coro = Some(coro),
                    Ok(Err(NotAsync(_, plain))) if this.plain_ok => return Poll::Ready(Ok(plain)),
                    // The function itself raised: an ordinary failure.
                    Err(e) => return Poll::Ready(Err(fetch_error(e))),
                    Ok(Err(not_async)) => return Poll::Ready(Err(Box::new(not_async))),
                }
            }
            let coro = this.coro.as_ref().expect("set above").bind(py).clone();
            match send(py, &coro) {
                Ok(Sent::Yielded(yielded)) => {
                    if yielded.is_none() {
                        // A bare `yield` (`asyncio.sleep(0)`): come back at once.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    let slot = this.waker.get_or_insert_with(Arc::default);
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
                    match wait_on(py, &yielded, slot) {
                        Ok(()) => {
                            this.awaiting = Some(yielded.unbind());
                            Poll::Pending
                        }
                        Err(e) => {
                            this.finish(py);
                            Poll::Ready(Err(fetch_error(e)))
                        }
                    }
                }
                Ok(Sent::Returned(value)) => {
                    this.coro = None;
                    Poll::Ready(Ok(value.unbind()))
                }
                Err(e) => {
                    this.coro = None;
                    Poll::Ready(Err(fetch_error(e)))
                }
            }
        })
    }
}

static COROUTINE_TYPE: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();

/// `types.CoroutineType` (what an `async def` returns).
fn coroutine_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    COROUTINE_TYPE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("types")?.getattr("CoroutineType")?.unbind())
        })
        .map(|t| t.bind(py))
}

/// What one `send(None)` into the coroutine gave.
enum Sent<'py> {
    /// It yielded this.
    Yielded(Bound<'py, PyAny>),
    /// It returned this.
    Returned(Bound<'py, PyAny>),
}

/// `coro.send(None)`. A native coroutine goes through `PyIter_Send`, which hands back its
/// return value with no `StopIteration` made and caught; any other awaitable's iterator is
/// called as in asyncio.
fn send<'py>(py: Python<'py>, coro: &Bound<'py, PyAny>) -> PyResult<Sent<'py>> {
    if coro.get_type().is(coroutine_type(py)?) {
        // SAFETY: `PyIter_Send` accepts any object with `am_send`, which every native
        // coroutine has; `Bound<PyIterator>::send` makes only that call on it (a coroutine
        // is not an iterator by `PyIter_Check`, hence the unchecked cast).
        let iter = unsafe { coro.cast_unchecked::<pyo3::types::PyIterator>() };
        return Ok(match iter.send(&py.None().into_bound(py))? {
            pyo3::types::PySendResult::Next(y) => Sent::Yielded(y),
            pyo3::types::PySendResult::Return(v) => Sent::Returned(v),
        });
    }
    match coro.call_method1(pyo3::intern!(py, "send"), (py.None(),)) {
        Ok(yielded) => Ok(Sent::Yielded(yielded)),
        Err(e) if e.is_instance_of::<PyStopIteration>(py) => Ok(Sent::Returned(
            e.value(py)
                .getattr("value")
                .unwrap_or_else(|_| py.None().into_bound(py)),
        )),
        Err(e) => Err(e),
    }
}

/// Calls the query function; it must return a coroutine (or another awaitable).
fn start(
    py: Python<'_>,
    query_fn: &Py<PyAny>,
    arg: Option<&Py<PyAny>>,
) -> PyResult<Result<Py<PyAny>, NotAsync>> {
    let made = match arg {
        Some(arg) => query_fn.bind(py).call1((arg.clone_ref(py),))?,
        None => query_fn.bind(py).call0()?,
    };
    if made.get_type().is(coroutine_type(py)?) {
        return Ok(Ok(made.unbind()));
    }
    if made.hasattr("send")? && made.hasattr("throw")? {
        return Ok(Ok(made.unbind()));
    }
    if made.hasattr("__await__")? {
        return Ok(Ok(made.call_method0("__await__")?.unbind()));
    }
    Ok(Err(NotAsync(
        PyTypeError::new_err(format!(
            "query_fn must be an async function (a coroutine function): it returned {}",
            made.get_type().name()?
        )),
        made.unbind(),
    )))
}

/// Registers a done callback on the asyncio future the coroutine yielded, which wakes the
/// waker in `slot` (the latest poller's).
fn wait_on(
    py: Python<'_>,
    yielded: &Bound<'_, PyAny>,
    slot: &Arc<Mutex<Option<Waker>>>,
) -> PyResult<()> {
    if !yielded.hasattr("_asyncio_future_blocking")? {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
            "the query function's coroutine yielded {}, not an asyncio future",
            yielded.get_type().name()?
        )));
    }
    yielded.setattr("_asyncio_future_blocking", false)?;
    let slot = slot.clone();
    let cb = PyCFunction::new_closure(py, None, None, move |_args, _kwargs| {
        let waker = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(w) = waker {
            w.wake();
        }
    })?;
    yielded.call_method1("add_done_callback", (cb,))?;
    Ok(())
}

impl PyFetch {
    /// Closes the coroutine and cancels what it waits on.
    fn finish(&mut self, py: Python<'_>) {
        if let Some(fut) = self.awaiting.take() {
            let _ = fut.bind(py).call_method0("cancel");
        }
        if let Some(coro) = self.coro.take() {
            if let Err(e) = coro.bind(py).call_method0("close") {
                e.print(py);
            }
        }
    }
}

impl Drop for PyFetch {
    fn drop(&mut self) {
        if self.coro.is_some() || self.awaiting.is_some() {
            Python::attach(|py| self.finish(py));
        }
    }
}
