//! The native side of `stackquery.Mutation`: the core's mutation, with Python functions.
//!
//! The core runs the call: the state machine (`PENDING`, then `SUCCESS` or `ERROR` with
//! `settled_at`, whatever happens, a dropped call included), the retries, the callbacks
//! after the result (an exception in `on_success` is reported and never re-runs the
//! mutation function: weak spot 17), and the listeners.

use std::sync::Arc;

use pyo3::prelude::*;
use stackquery::{MutationOptions, MutationStatus, QueryError};

use crate::awaitable::RustAwaitable;
use crate::client::{
    data_future, delay_fn, deliver, to_pyerr, unix_seconds, NativeClient, Subscriptions,
};
use crate::coro::PyFetch;

/// A Python value the core can clone (inputs and contexts are cloned into callbacks).
#[derive(Clone)]
pub(crate) struct PyVal(pub(crate) Arc<Py<PyAny>>);

type Options = MutationOptions<PyVal, Py<PyAny>, Option<PyVal>>;

/// Calls `f(*args)` for a callback; an exception is reported as unraisable.
fn callback(f: &Arc<Py<PyAny>>, args: impl FnOnce(Python<'_>) -> Vec<Py<PyAny>>) {
    Python::attach(|py| {
        let args = pyo3::types::PyTuple::new(py, args(py));
        let called = args.and_then(|a| f.bind(py).call1(a));
        if let Err(e) = called {
            e.write_unraisable(py, Some(f.bind(py)));
        }
    });
}

fn error_object(py: Python<'_>, e: &QueryError) -> Py<PyAny> {
    to_pyerr(py, e.clone()).into_value(py).into_any()
}

/// The engine's mutation (`stackquery.Mutation` wraps it).
#[pyclass(module = "stackquery._native")]
pub(crate) struct NativeMutation {
    mutation: stackquery::Mutation<PyVal, Py<PyAny>>,
    lp: Arc<crate::pyhost::Loop>,
    subscriptions: Arc<Subscriptions>,
}

/// Builds a mutation on `client` from PyStackQuery's `MutationOptions` fields.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    py: Python<'_>,
    client: &NativeClient,
    mutation_fn: Bound<'_, PyAny>,
    on_success: Option<Bound<'_, PyAny>>,
    on_error: Option<Bound<'_, PyAny>>,
    on_settled: Option<Bound<'_, PyAny>>,
    on_mutate: Option<Bound<'_, PyAny>>,
    on_error_takes_context: bool,
    retry: u32,
    retry_delay: Option<Bound<'_, PyAny>>,
    scope: Option<String>,
) -> PyResult<NativeMutation> {
    if !mutation_fn.is_callable() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "mutation_fn must be an async function, got {}",
            mutation_fn.get_type().name()?
        )));
    }
    let f = Arc::new(mutation_fn.unbind());
    let base = MutationOptions::<PyVal, Py<PyAny>>::new(move |vars: PyVal| {
        PyFetch::with_arg(f.clone(), vars.0.clone())
    });
    // `on_mutate` may return a value or a coroutine; its outcome is the context. One
    // that raises fails the call before the mutation function runs (the core's rule for
    // a failing `on_mutate`), with the state `ERROR`, never stuck `PENDING`.
    let mut opts: Options = match on_mutate.filter(|f| !f.is_none()) {
        Some(hook) => {
            let hook = Arc::new(hook.unbind());
            base.on_mutate_async(move |vars: PyVal| {
                let hook = hook.clone();
                async move {
                    match PyFetch::hook(hook, vars.0.clone()).await {
                        Ok(ctx) => Some(PyVal(Arc::new(ctx))),
                        Err(e) => panic!("on_mutate raised: {e}"),
                    }
                }
            })
        }
        None => base.on_mutate(|_: &PyVal| None),
    };
    if let Some(cb) = on_success.filter(|f| !f.is_none()) {
        let cb = Arc::new(cb.unbind());
        opts = opts.on_success(move |data: &Py<PyAny>, vars: &PyVal, _ctx| {
            callback(&cb, |py| vec![data.clone_ref(py), vars.0.clone_ref(py)]);
        });
    }
    if let Some(cb) = on_error.filter(|f| !f.is_none()) {
        let cb = Arc::new(cb.unbind());
        // Weak spot 18: the rollback context goes to an `on_error` that takes a third
        // parameter (decided once, in Python, from its signature); PyStackQuery's
        // two-parameter form is called as before.
        opts = opts.on_error(
            move |err: &QueryError, vars: &PyVal, ctx: Option<&Option<PyVal>>| {
                callback(&cb, |py| {
                    let mut args = vec![error_object(py, err), vars.0.clone_ref(py)];
                    if on_error_takes_context {
                        let ctx = ctx.and_then(Option::as_ref);
                        args.push(ctx.map_or_else(|| py.None(), |c| c.0.clone_ref(py)));
                    }
                    args
                });
            },
        );
    }
    if let Some(cb) = on_settled.filter(|f| !f.is_none()) {
        let cb = Arc::new(cb.unbind());
        opts = opts.on_settled(move |data: Option<&Py<PyAny>>, err, vars: &PyVal, _ctx| {
            callback(&cb, |py| {
                vec![
                    data.map_or_else(|| py.None(), |d| d.clone_ref(py)),
                    err.map_or_else(|| py.None(), |e| error_object(py, e)),
                    vars.0.clone_ref(py),
                ]
            });
        });
    }
    opts = opts.retry(retry);
    // Weak spot 21: calls of mutations with one scope run one at a time, in call order.
    if let Some(scope) = scope {
        opts = opts.scope(scope);
    }
    if let Some(delay) = retry_delay.filter(|d| !d.is_none()) {
        opts = opts.retry_delay(delay_fn(Arc::new(delay.unbind())));
    }
    let (lp, core) = client.bound_client(py)?;
    Ok(NativeMutation {
        mutation: core.mutation(opts),
        lp,
        subscriptions: client.subscriptions(),
    })
}

/// A mutation state as a tuple (`status`, `data`, `error`, `submitted_at`,
/// `settled_at`, `failure_count`).
fn state_tuple(py: Python<'_>, s: &stackquery::MutationState<Py<PyAny>>) -> PyResult<Py<PyAny>> {
    let status = match s.status {
        MutationStatus::Idle => "IDLE",
        MutationStatus::Pending => "PENDING",
        MutationStatus::Success => "SUCCESS",
        MutationStatus::Error => "ERROR",
        _ => "IDLE",
    };
    let tuple = (
        status,
        s.data
            .as_ref()
            .map_or_else(|| py.None(), |d| d.clone_ref(py)),
        s.error
            .as_ref()
            .map_or_else(|| py.None(), |e| error_object(py, e)),
        unix_seconds(s.submitted_at),
        unix_seconds(s.settled_at),
        s.failure_count,
    );
    Ok(tuple.into_pyobject(py)?.into_any().unbind())
}

#[pymethods]
impl NativeMutation {
    /// `await`able: runs the mutation with `input`; returns its data or raises its error
    /// (the mutation function's own exception object).
    fn mutate(&self, input: Bound<'_, PyAny>) -> RustAwaitable {
        let call = self.mutation.mutate(PyVal(Arc::new(input.unbind())));
        RustAwaitable::new(self.lp.clone(), data_future(call))
    }

    /// The state of the latest call, as a tuple (see `state_tuple`).
    fn state(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        state_tuple(py, &self.mutation.state())
    }

    /// Calls `listener(state_tuple)` now and on every change; returns the function that
    /// unsubscribes. The subscription lasts until then.
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        listener: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, pyo3::types::PyCFunction>> {
        let subscription = self
            .mutation
            .subscribe(deliver(self.lp.clone(), listener, state_tuple));
        self.subscriptions.closure(py, subscription)
    }

    /// Back to `IDLE` (listeners hear it: weak spot 20).
    fn reset(&self) {
        self.mutation.reset();
    }
}
