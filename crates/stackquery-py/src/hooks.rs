//! A query's callbacks (`on_success`, `on_error`, `on_settled`), run once per fetch.
//!
//! The outcome of a fetch is known inside the engine's fetch task: a successful attempt,
//! or the retry policy giving up. The callbacks are not run there. They are queued on the
//! loop thread's list and run when the engine hands control back to Python:
//! - at the end of the step of the awaitable that polled the fetch ([`drain`], called by
//!   `RustAwaitable` and `FetchCall`), which is after the engine has stored the result
//!   and before the caller's `await` returns;
//! - or by a `loop.call_soon` scheduled when the first one is queued, which runs before
//!   any task the settled fetch woke.
//!
//! So a callback runs on the loop's thread, with no Rust lock held, after the state is
//! `SUCCESS` or `ERROR`. An `async def` callback's coroutine runs as a task of the loop. An exception in a callback is reported (`sys.unraisablehook`)
//! and changes nothing else: the fetch is neither retried nor failed by it (weak spot 16).

use std::cell::RefCell;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyTuple};
use stackquery::QueryError;

/// The callbacks of one `QueryOptions` (each optional).
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) on_success: Option<Arc<Py<PyAny>>>,
    pub(crate) on_error: Option<Arc<Py<PyAny>>>,
    pub(crate) on_settled: Option<Arc<Py<PyAny>>>,
    /// `data_of()`: the query's data once a fetch failed (`on_settled`'s first argument,
    /// as in PyStackQuery, which passed the data it kept).
    pub(crate) data_of: Option<Arc<Py<PyAny>>>,
}

/// One queued call.
enum Deferred {
    /// `f(*args)`.
    Call(Arc<Py<PyAny>>, Py<PyTuple>),
    /// `on_settled(data_of(), error)`.
    SettledAfterError {
        on_settled: Arc<Py<PyAny>>,
        data_of: Option<Arc<Py<PyAny>>>,
        error: Py<PyAny>,
    },
}

thread_local! {
    static QUEUE: RefCell<Vec<Deferred>> = const { RefCell::new(Vec::new()) };
}

impl Hooks {
    /// Whether any callback is set.
    pub(crate) fn any(&self) -> bool {
        self.on_success.is_some() || self.on_error.is_some() || self.on_settled.is_some()
    }

    /// Whether a failed fetch has a callback to run.
    pub(crate) fn on_failure(&self) -> bool {
        self.on_error.is_some() || self.on_settled.is_some()
    }

    /// Queues `on_success(data)` then `on_settled(data, None)`.
    pub(crate) fn succeeded(&self, py: Python<'_>, data: &Py<PyAny>) {
        let mut calls = Vec::new();
        if let Some(f) = &self.on_success {
            if let Ok(args) = PyTuple::new(py, [data.clone_ref(py)]) {
                calls.push(Deferred::Call(f.clone(), args.unbind()));
            }
        }
        if let Some(f) = &self.on_settled {
            if let Ok(args) = PyTuple::new(py, [data.clone_ref(py), py.None()]) {
                calls.push(Deferred::Call(f.clone(), args.unbind()));
            }
        }
        queue(py, calls);
    }

    /// Queues `on_error(error)` then `on_settled(data, error)` (the fetch gave up).
    pub(crate) fn failed(&self, py: Python<'_>, error: &QueryError) {
        let exc = crate::client::to_pyerr(py, error.clone())
            .into_value(py)
            .into_any();
        let mut calls = Vec::new();
        if let Some(f) = &self.on_error {
            if let Ok(args) = PyTuple::new(py, [exc.clone_ref(py)]) {
                calls.push(Deferred::Call(f.clone(), args.unbind()));
            }
        }
        if let Some(f) = &self.on_settled {
            calls.push(Deferred::SettledAfterError {
                on_settled: f.clone(),
                data_of: self.data_of.clone(),
                error: exc,
            });
        }
        queue(py, calls);
    }
}

/// Adds `calls` to this thread's queue; the first ones also schedule a [`drain`] on the
/// running loop (if there is one: otherwise the next awaitable step drains them).
fn queue(py: Python<'_>, calls: Vec<Deferred>) {
    if calls.is_empty() {
        return;
    }
    let was_empty = QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        let was_empty = q.is_empty();
        q.extend(calls);
        was_empty
    });
    if was_empty {
        let scheduled = crate::pyhost::running_loop(py).and_then(|lp| {
            let cb = PyCFunction::new_closure(py, None, None, |args, _kwargs| {
                drain(args.py());
            })?;
            lp.call_method1("call_soon", (cb,))
        });
        drop(scheduled); // No running loop: the next awaitable step drains the queue.
    }
}

/// Runs every queued callback (and those they queue), each reported if it raises.
/// Called with no Rust lock held.
pub(crate) fn drain(py: Python<'_>) {
    loop {
        let calls = QUEUE.with(|q| std::mem::take(&mut *q.borrow_mut()));
        if calls.is_empty() {
            return;
        }
        for call in calls {
            run(py, call);
        }
    }
}

/// Whether callbacks are waiting (cheap: the hot paths check it before [`drain`]).
#[inline]
pub(crate) fn pending() -> bool {
    QUEUE.with(|q| !q.borrow().is_empty())
}

fn run(py: Python<'_>, call: Deferred) {
    let (f, result) = match call {
        Deferred::Call(f, args) => {
            let result = f.bind(py).call1(args.bind(py).clone());
            (f, result)
        }
        Deferred::SettledAfterError {
            on_settled,
            data_of,
            error,
        } => {
            let data = data_of
                .and_then(|d| d.bind(py).call0().ok())
                .map_or_else(|| py.None(), Bound::unbind);
            let result = on_settled.bind(py).call1((data, error));
            (on_settled, result)
        }
    };
    match result {
        Ok(returned) if returned.hasattr("__await__").unwrap_or(false) => {
            if let Err(e) = spawn(py, returned, &f) {
                e.write_unraisable(py, Some(f.bind(py)));
            }
        }
        Ok(_) => {}
        Err(e) => e.write_unraisable(py, Some(f.bind(py))),
    }
}

/// An `async def` callback: its coroutine runs as a task on the loop, and an exception
/// it raises is reported like a plain callback's.
fn spawn(py: Python<'_>, awaitable: Bound<'_, PyAny>, owner: &Arc<Py<PyAny>>) -> PyResult<()> {
    let task = py
        .import("asyncio")?
        .call_method1("ensure_future", (awaitable,))?;
    let owner = owner.clone();
    let done = PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
        let py = args.py();
        let Ok(task) = args.get_item(0) else {
            return;
        };
        let cancelled = task
            .call_method0("cancelled")
            .and_then(|c| c.is_truthy())
            .unwrap_or(true);
        if cancelled {
            return;
        }
        if let Ok(exc) = task.call_method0("exception") {
            if !exc.is_none() {
                PyErr::from_value(exc).write_unraisable(py, Some(owner.bind(py)));
            }
        }
    })?;
    task.call_method1("add_done_callback", (done,))?;
    Ok(())
}
