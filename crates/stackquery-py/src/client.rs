//! The native side of `stackquery.QueryClient`: the core's client, hosted on the asyncio
//! loop it is first used on (see `pyhost.rs`), with Python objects as its data.
//!
//! The Python class (`python/stackquery/_client.py`) keeps PyStackQuery's signatures and
//! hands the pieces of a `QueryOptions` to these methods.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use stackquery::{QueryClient, QueryError, QueryFilter, QueryKey, QueryOptions};

use crate::awaitable::RustAwaitable;
use crate::coro::{NotAsync, PyFetch};
use crate::json::PyJson;
use crate::keys::{to_key, Role};
use crate::pyhost::{Loop, PyHost};
use crate::storage::StorageChoice;

/// A query's data, as the engine stores it.
type Data = Py<PyAny>;

/// The engine behind one `stackquery.QueryClient`.
#[pyclass(module = "stackquery._native")]
pub(crate) struct NativeClient {
    /// Set once, at first use (then read with no lock on every call).
    bound: std::sync::OnceLock<Bound_>,
    /// Live subscriptions of this client's observers. A subscription lasts until its
    /// unsubscribe function is called, as in PyStackQuery, whether or not anything still
    /// references the observer or that function (`client.watch(o).subscribe(f)`).
    subscriptions: Arc<Subscriptions>,
    max_queries: Option<usize>,
    /// The client-wide defaults (`QueryClientConfig`), applied by the core to every query
    /// that does not set its own.
    stale_time: Duration,
    gc_time: Duration,
    retry: u32,
    retry_delay: Option<Arc<Py<PyAny>>>,
    /// The second tier, if any (see `storage.rs`), and the bound on each of its calls.
    storage: Option<StorageChoice>,
    storage_timeout: Duration,
    /// The invalidation bus, if any.
    bus: Option<stackquery::bus::RedisBus>,
}

/// A `QueryOptions` converted once: the core's options, with only the fields the query
/// set explicitly (the others fall back to the client's defaults inside the core).
#[pyclass(module = "stackquery._native", frozen)]
pub(crate) struct NativeOptions {
    opts: Arc<QueryOptions<Data>>,
    /// The client engine (`NativeClient`) these options were converted for, when their
    /// callbacks depend on it (its default `retry`, its data); `None`: any client.
    bound: Option<Py<PyAny>>,
}

/// `retry` failures are retried, except a query function that is not async (a bug in
/// the caller's code, which retrying cannot fix).
fn retry_unless_not_async(retry: u32) -> impl Fn(u32, &QueryError) -> bool + Send + Sync {
    move |failures, e| {
        let not_async = e
            .fetch_source()
            .is_some_and(|s| s.downcast_ref::<NotAsync>().is_some());
        failures <= retry && !not_async
    }
}

/// A Python `retry_delay(attempt) -> seconds` as the core's delay function (the default
/// schedule when it raises or returns something unusable).
pub(crate) fn delay_fn(delay: Arc<Py<PyAny>>) -> impl Fn(u32) -> Duration + Send + Sync {
    move |attempt| {
        Python::attach(|py| {
            delay
                .bind(py)
                .call1((attempt,))
                .and_then(|s| s.extract::<f64>())
                .ok()
                .and_then(|s| seconds("retry_delay", s).ok())
                .unwrap_or_else(|| stackquery::default_retry_delay(attempt))
        })
    }
}

#[pymethods]
impl NativeOptions {
    /// The callbacks (`on_success`, `on_error`, `on_settled`) run once per fetch, after
    /// its result is stored (see `hooks.rs`); `data_of()` gives `on_settled` the data
    /// kept after a failure. With `on_error` or `on_settled`, `retry` must be given (the
    /// caller resolves the client's default): it decides which failure is the last.
    /// `placeholder_data` is shown by observers while there is no data; it is never
    /// stored, returned by a fetch, or persisted.
    #[new]
    #[pyo3(signature = (key, query_fn, stale_time = None, gc_time = None, retry = None, retry_delay = None, refetch_interval = None, enabled = true, placeholder_data = None, on_success = None, on_error = None, on_settled = None, data_of = None, bound = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        key: &Bound<'_, PyAny>,
        query_fn: Bound<'_, PyAny>,
        stale_time: Option<f64>,
        gc_time: Option<f64>,
        retry: Option<u32>,
        retry_delay: Option<Bound<'_, PyAny>>,
        refetch_interval: Option<f64>,
        enabled: bool,
        placeholder_data: Option<Bound<'_, PyAny>>,
        on_success: Option<Bound<'_, PyAny>>,
        on_error: Option<Bound<'_, PyAny>>,
        on_settled: Option<Bound<'_, PyAny>>,
        data_of: Option<Bound<'_, PyAny>>,
        bound: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let key = to_key(key, Role::Key)?;
        if !query_fn.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "query_fn must be an async function, got {}",
                query_fn.get_type().name()?
            )));
        }
        let query_fn = Arc::new(query_fn.unbind());
        let hook =
            |f: Option<Bound<'_, PyAny>>| f.filter(|f| !f.is_none()).map(|f| Arc::new(f.unbind()));
        let hooks = crate::hooks::Hooks {
            on_success: hook(on_success),
            on_error: hook(on_error),
            on_settled: hook(on_settled),
            data_of: hook(data_of),
        };
        let mut opts = if hooks.any() {
            let hooks = hooks.clone();
            QueryOptions::<Data>::new(key, move || {
                let fetch = PyFetch::new(query_fn.clone());
                let hooks = hooks.clone();
                async move {
                    let result = fetch.await;
                    if let Ok(data) = &result {
                        Python::attach(|py| hooks.succeeded(py, data));
                    }
                    result
                }
            })
        } else {
            QueryOptions::<Data>::new(key, move || PyFetch::new(query_fn.clone()))
        };
        if let Some(p) = placeholder_data.filter(|p| !p.is_none()) {
            opts = opts.placeholder_data(p.unbind());
        }
        if let Some(s) = stale_time {
            opts = opts.stale_time(seconds("stale_time", s)?);
        }
        if let Some(s) = gc_time {
            opts = opts.gc_time(seconds("gc_time", s)?);
        }
        if let Some(n) = retry {
            let again = retry_unless_not_async(n);
            if hooks.on_failure() {
                opts = opts.retry_if(move |failures, e| {
                    let retried = again(failures, e);
                    if !retried {
                        Python::attach(|py| hooks.failed(py, e));
                    }
                    retried
                });
            } else {
                opts = opts.retry_if(again);
            }
        }
        if let Some(delay) = retry_delay.filter(|d| !d.is_none()) {
            opts = opts.retry_delay(delay_fn(Arc::new(delay.unbind())));
        }
        if let Some(s) = refetch_interval {
            opts = opts.refetch_interval(seconds("refetch_interval", s)?);
        }
        // Read from and written to the client's second tier when it has one (as every
        // PyStackQuery query is); nothing without one.
        opts = opts.enabled(enabled).persist_with::<PyJson>();
        Ok(NativeOptions {
            opts: Arc::new(opts),
            bound: bound.filter(|b| !b.is_none()).map(Bound::unbind),
        })
    }
}

/// The client and the loop it runs on, made at first use.
struct Bound_ {
    lp: Arc<Loop>,
    client: QueryClient,
}

/// A Python filter key (a tuple or a list prefix; `None`: every query) as the core's.
fn filter_of(filter_key: Option<&Bound<'_, PyAny>>) -> PyResult<QueryFilter> {
    Ok(match filter_key.filter(|f| !f.is_none()) {
        Some(f) => QueryFilter::from(to_key(f, Role::Filter)?),
        None => QueryFilter::all(),
    })
}

/// Seconds (a float, as in PyStackQuery) as a duration: `inf` is "never"; negative or
/// NaN is a `ValueError` naming the argument.
pub(crate) fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    if s.is_nan() || s < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{what} must be a number of seconds >= 0, got {s}"
        )));
    }
    Ok(Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))
}

/// A core call that yields a query's data, as the future a [`RustAwaitable`] runs.
pub(crate) fn data_future(
    call: impl Future<Output = Result<Arc<Data>, QueryError>> + Send + 'static,
) -> crate::awaitable::PyFuture {
    Box::pin(async move {
        let result = call.await;
        Python::attach(|py| match result {
            Ok(data) => Ok(data.clone_ref(py)),
            Err(e) => Err(to_pyerr(py, e)),
        })
    })
}

/// A core call whose output converts to Python (a count, a flag, `None`), as the future
/// a [`RustAwaitable`] runs.
fn value_future<O>(call: impl Future<Output = O> + Send + 'static) -> crate::awaitable::PyFuture
where
    O: for<'py> IntoPyObject<'py> + Send + 'static,
{
    Box::pin(async move {
        let value = call.await;
        Python::attach(|py| pyo3::IntoPyObjectExt::into_py_any(value, py))
    })
}

/// A wall-clock stamp as seconds since the epoch (`time.time()`'s scale).
pub(crate) fn unix_seconds(t: Option<std::time::SystemTime>) -> Option<f64> {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

/// A listener for the core's `subscribe`: calls the Python `listener` with the state as
/// a tuple (`to_tuple`); an exception in it is reported as unraisable and changes
/// nothing else.
pub(crate) fn deliver<S: 'static>(
    lp: Arc<Loop>,
    listener: Bound<'_, PyAny>,
    to_tuple: fn(Python<'_>, &S) -> PyResult<Py<PyAny>>,
) -> impl Fn(&S) + Send + Sync + 'static {
    let listener = listener.unbind();
    move |state| {
        Python::attach(|py| {
            let called = to_tuple(py, state).and_then(|t| {
                if lp.on_loop_thread() {
                    listener.bind(py).call1((t,)).map(drop)
                } else {
                    // A change made by the storage runtime (a bus message): the listener
                    // still runs on its loop's thread.
                    lp.call_soon(py, listener.bind(py), t.into_bound(py))
                }
            });
            if let Err(e) = called {
                e.write_unraisable(py, Some(listener.bind(py)));
            }
        })
    }
}

/// A core error as the Python exception to raise: the query function's own exception
/// object when it raised one (the same object for every waiter).
pub(crate) fn to_pyerr(py: Python<'_>, e: QueryError) -> PyErr {
    if let Some(source) = e.fetch_source() {
        if let Some(raised) = source.downcast_ref::<PyErr>() {
            return raised.clone_ref(py);
        }
        if let Some(NotAsync(raised, _)) = source.downcast_ref::<NotAsync>() {
            return raised.clone_ref(py);
        }
    }
    match e {
        QueryError::Cancelled => {
            pyo3::exceptions::asyncio::CancelledError::new_err("the query was cancelled")
        }
        QueryError::TypeMismatch(_) => PyTypeError::new_err(e.to_string()),
        QueryError::Timeout(_) => pyo3::exceptions::PyTimeoutError::new_err(e.to_string()),
        other => PyRuntimeError::new_err(other.report().to_string()),
    }
}

impl NativeClient {
    /// The core client and its loop (bound to the running loop at first use).
    pub(crate) fn bound_client(&self, py: Python<'_>) -> PyResult<(Arc<Loop>, QueryClient)> {
        self.client(py)
    }

    /// The registry of this client's live subscriptions.
    pub(crate) fn subscriptions(&self) -> Arc<Subscriptions> {
        self.subscriptions.clone()
    }

    /// The core client, bound to the running loop at first use.
    fn client(&self, py: Python<'_>) -> PyResult<(Arc<Loop>, QueryClient)> {
        if let Some(b) = self.bound.get() {
            let running = crate::pyhost::running_loop(py)?;
            if running.is(b.lp.obj.bind(py)) {
                return Ok((b.lp.clone(), b.client.clone()));
            }
            return Err(PyRuntimeError::new_err(
                "this QueryClient runs on another event loop: make one client per loop",
            ));
        }
        let lp = Loop::current(py)?;
        let mut builder = QueryClient::builder()
            .host(Arc::new(PyHost { lp: lp.clone() }))
            .stale_time(self.stale_time)
            .gc_time(self.gc_time)
            .retry_if(retry_unless_not_async(self.retry));
        if let Some(delay) = &self.retry_delay {
            builder = builder.retry_delay(delay_fn(delay.clone()));
        }
        if let Some(n) = self.max_queries {
            builder = builder.max_queries(n);
        }
        let _rt = crate::io_runtime::enter();
        if let Some(storage) = &self.storage {
            builder = builder
                .storage(storage.for_loop(&lp))
                .storage_timeout(self.storage_timeout)
                .storage_delete_prefix_timeout(self.storage_timeout.max(Duration::from_secs(5)))
                // Manual writes of keys no query has used yet persist too.
                .persist_prefix_with::<Data, PyJson>(QueryKey::new(Vec::new()));
        }
        if let Some(bus) = &self.bus {
            builder = builder.bus(bus.clone());
        }
        let client = builder.build();
        // Under the GIL no other thread binds meanwhile; if one did, the first stays.
        let b = self.bound.get_or_init(|| Bound_ { lp, client });
        Ok((b.lp.clone(), b.client.clone()))
    }

    /// The client if it was used already (reads need no loop).
    fn existing(&self) -> Option<&QueryClient> {
        self.bound.get().map(|b| &b.client)
    }
}

#[pymethods]
impl NativeClient {
    #[new]
    #[pyo3(signature = (max_queries = None, stale_time = 0.0, gc_time = 300.0, retry = 3, retry_delay = None, storage = None, bus = None, storage_timeout = 1.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_queries: Option<usize>,
        stale_time: f64,
        gc_time: f64,
        retry: u32,
        retry_delay: Option<Bound<'_, PyAny>>,
        storage: Option<Bound<'_, PyAny>>,
        bus: Option<PyRef<'_, crate::storage::RedisBus>>,
        storage_timeout: f64,
    ) -> PyResult<Self> {
        let storage = match storage.filter(|s| !s.is_none()) {
            Some(s) => {
                crate::io_runtime::runtime()?;
                Some(StorageChoice::of(&s)?)
            }
            None => None,
        };
        Ok(NativeClient {
            storage,
            storage_timeout: seconds("storage_timeout", storage_timeout)?,
            bus: bus.map(|b| b.inner.clone()),
            bound: std::sync::OnceLock::new(),
            subscriptions: Arc::default(),
            max_queries,
            stale_time: seconds("stale_time", stale_time)?,
            gc_time: seconds("gc_time", gc_time)?,
            retry,
            retry_delay: retry_delay
                .filter(|d| !d.is_none())
                .map(|d| Arc::new(d.unbind())),
        })
    }

    /// `await`able: the data of the query, from the cache or from its function. Nothing
    /// runs until it is awaited (as with PyStackQuery's `async def`); see [`FetchCall`].
    ///
    /// `options` is a `NativeOptions` or a `stackquery.QueryOptions`, whose `_native` is
    /// read (one attribute; `_engine_options()` makes it again after a field changed).
    /// `QueryClient.fetch_query` is this method itself, with no Python frame between.
    fn fetch_query(slf: &Bound<'_, Self>, options: &Bound<'_, PyAny>) -> PyResult<FetchCall> {
        let py = slf.py();
        let opts = match options.cast::<NativeOptions>() {
            Ok(native) => native.get().opts.clone(),
            Err(_) => {
                let native = options.getattr(pyo3::intern!(py, "_native"))?;
                // Converted for this client, or for any: used as it is. Converted for
                // another client (its callbacks read that one): converted again here.
                let usable = native.cast::<NativeOptions>().is_ok_and(|n| {
                    n.get()
                        .bound
                        .as_ref()
                        .is_none_or(|b| b.bind(py).is(slf.as_any()))
                });
                let native = if usable {
                    native
                } else {
                    options.call_method1(pyo3::intern!(py, "_convert"), (slf,))?
                };
                native.cast::<NativeOptions>()?.get().opts.clone()
            }
        };
        let this = slf.borrow();
        let (lp, client) = this.client(py)?;
        Ok(FetchCall {
            start: Mutex::new(Some((client, opts))),
            rest: RustAwaitable::empty(lp),
        })
    }

    /// `await`able: fetches the query now even if its data is fresh (joining a fetch in
    /// flight); returns the data.
    fn refetch_query(&self, py: Python<'_>, options: &NativeOptions) -> PyResult<RustAwaitable> {
        let (lp, client) = self.client(py)?;
        let opts = options.opts.clone();
        Ok(RustAwaitable::new(
            lp,
            data_future(async move { client.refetch_query(&opts).await }),
        ))
    }

    /// The cached data of `key`, or `None`.
    fn get_query_data(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let key: QueryKey = to_key(key, Role::Key)?;
        let data = self
            .existing()
            .and_then(|c| c.get_query_data::<Data>(&key))
            .map(|d| d.clone_ref(py));
        Ok(data.unwrap_or_else(|| py.None()))
    }

    /// The state of `key` as a tuple (`status`, `fetch_status`, `data`, `error`,
    /// `data_updated_at`, `error_updated_at`, `failure_count`, `failure_reason`,
    /// `is_invalidated`), or `None`. Errors are the query function's exception objects.
    fn get_query_state(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let key: QueryKey = to_key(key, Role::Key)?;
        match self
            .existing()
            .and_then(|c| c.get_query_state::<Data>(&key))
        {
            Some(state) => state_tuple(py, &state),
            None => Ok(py.None()),
        }
    }

    /// A mutation (`QueryClient.mutation`), from PyStackQuery's `MutationOptions` fields.
    #[pyo3(signature = (mutation_fn, on_success = None, on_error = None, on_settled = None, on_mutate = None, on_error_takes_context = false, retry = 0, retry_delay = None, scope = None))]
    #[allow(clippy::too_many_arguments)]
    fn mutation(
        &self,
        py: Python<'_>,
        mutation_fn: Bound<'_, PyAny>,
        on_success: Option<Bound<'_, PyAny>>,
        on_error: Option<Bound<'_, PyAny>>,
        on_settled: Option<Bound<'_, PyAny>>,
        on_mutate: Option<Bound<'_, PyAny>>,
        on_error_takes_context: bool,
        retry: u32,
        retry_delay: Option<Bound<'_, PyAny>>,
        scope: Option<String>,
    ) -> PyResult<crate::mutation::NativeMutation> {
        crate::mutation::build(
            py,
            self,
            mutation_fn,
            on_success,
            on_error,
            on_settled,
            on_mutate,
            on_error_takes_context,
            retry,
            retry_delay,
            scope,
        )
    }

    /// `await`able: the data of `key` from memory, else from the storage (not put in
    /// memory), else `None`.
    fn get_query_data_async(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<RustAwaitable> {
        let key: QueryKey = to_key(key, Role::Key)?;
        let (lp, client) = self.client(py)?;
        Ok(RustAwaitable::new(
            lp,
            Box::pin(async move {
                let data = client.get_query_data_or_stored::<Data>(&key).await;
                Ok(Python::attach(|py| match data {
                    Some(d) => d.clone_ref(py),
                    None => py.None(),
                }))
            }),
        ))
    }

    /// An observer of the query (`QueryClient.watch`), showing `select(data)` when a
    /// `select` is given (run by the core once per data change; `None` data is shown as
    /// `None` without calling it, as in PyStackQuery).
    #[pyo3(signature = (options, select = None))]
    fn watch(
        &self,
        py: Python<'_>,
        options: &NativeOptions,
        select: Option<Bound<'_, PyAny>>,
    ) -> PyResult<NativeObserver> {
        let (lp, client) = self.client(py)?;
        let plain = client.watch(&options.opts);
        let observer = match select.filter(|s| !s.is_none()) {
            None => Observer::Plain(plain),
            Some(select) => {
                let select = Arc::new(select.unbind());
                Observer::Select(plain.select(move |data: &Data| {
                    Python::attach(|py| {
                        if data.is_none(py) {
                            return Selected(Ok(py.None()));
                        }
                        let out = select.bind(py).call1((data.clone_ref(py),));
                        Selected(out.map(Bound::unbind))
                    })
                }))
            }
        };
        Ok(NativeObserver {
            lp,
            observer,
            subscriptions: self.subscriptions.clone(),
        })
    }

    /// Writes `data` under `key` (creating the entry if needed).
    fn set_query_data(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        data: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let key: QueryKey = to_key(key, Role::Key)?;
        if self.storage.is_some() {
            // Refused here, with the reason, rather than kept in memory only and
            // dropped from the tier with a log line nobody connects to this call.
            if let Err(why) = crate::json::to_json(&data, 0) {
                return Err(PyTypeError::new_err(format!(
                    "set_query_data({key}): the client persists its data, and this value \
                     cannot be stored as JSON: {why}"
                )));
            }
        }
        let (_, client) = self.client(py)?;
        let _rt = crate::io_runtime::enter();
        client
            .set_query_data::<Data>(key, data.unbind())
            .map_err(|e| to_pyerr(py, e))
    }

    /// `await`able: marks the queries under `filter_key` (all when `None`) stale, and
    /// refetches the observed ones. Returns how many matched.
    #[pyo3(signature = (filter_key = None))]
    fn invalidate_queries(
        &self,
        py: Python<'_>,
        filter_key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<RustAwaitable> {
        let filter = filter_of(filter_key)?;
        let (lp, client) = self.client(py)?;
        Ok(RustAwaitable::new(
            lp,
            value_future(async move { client.invalidate_queries(filter).await }),
        ))
    }

    /// Removes the queries under `filter_key` (all when `None`) from the cache; returns
    /// how many. A fetch in flight for one goes on for its waiters but stores nothing.
    #[pyo3(signature = (filter_key = None))]
    fn remove_queries(&self, filter_key: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let filter = filter_of(filter_key)?;
        let _rt = crate::io_runtime::enter();
        Ok(self.existing().map_or(0, |c| c.remove_queries(filter)))
    }

    /// Puts the queries under `filter_key` back to their initial state (no data).
    #[pyo3(signature = (filter_key = None))]
    fn reset_queries(&self, filter_key: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let filter = filter_of(filter_key)?;
        let _rt = crate::io_runtime::enter();
        Ok(self.existing().map_or(0, |c| c.reset_queries(filter)))
    }

    /// `await`able: cancels the fetches in flight under `filter_key`; returns how many.
    /// Their waiters get `CancelledError`, and each entry goes back to its state from
    /// before the fetch.
    #[pyo3(signature = (filter_key = None))]
    fn cancel_queries(
        &self,
        py: Python<'_>,
        filter_key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<RustAwaitable> {
        let filter = filter_of(filter_key)?;
        let (lp, client) = self.client(py)?;
        Ok(RustAwaitable::new(
            lp,
            value_future(async move { client.cancel_queries(filter).await }),
        ))
    }

    /// Empties the cache.
    fn clear(&self) {
        let _rt = crate::io_runtime::enter();
        if let Some(c) = self.existing() {
            c.clear();
        }
    }

    /// `await`able: waits until every write behind to the second tier queued so far has
    /// been attempted (nothing to wait for without a storage).
    fn flush_storage(&self, py: Python<'_>) -> PyResult<RustAwaitable> {
        let (lp, client) = self.client(py)?;
        Ok(RustAwaitable::new(
            lp,
            value_future(async move {
                client.flush_storage().await;
                None::<Py<PyAny>>
            }),
        ))
    }

    /// `await`able: waits, at most `limit` seconds, until everything this client owes
    /// the second tier and the bus has landed; returns whether it all did.
    fn shutdown(&self, py: Python<'_>, limit: f64) -> PyResult<RustAwaitable> {
        let limit = seconds("timeout", limit)?;
        let (lp, client) = self.client(py)?;
        Ok(RustAwaitable::new(
            lp,
            value_future(async move { client.shutdown(limit).await }),
        ))
    }

    /// The client's counters (hits, misses, fetches, second-tier reads, writes and
    /// errors, …) and its size, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let d = pyo3::types::PyDict::new(py);
        let Some(client) = self.existing() else {
            return Ok(d);
        };
        let s = client.stats();
        for (name, value) in [
            ("hits", s.hits),
            ("stale_hits", s.stale_hits),
            ("misses", s.misses),
            ("fetches", s.fetches),
            ("dedup_joins", s.dedup_joins),
            ("evictions", s.evictions),
            ("gc_collections", s.gc_collections),
            ("l2_hits", s.l2_hits),
            ("l2_misses", s.l2_misses),
            ("l2_errors", s.l2_errors),
            ("l2_writes", s.l2_writes),
        ] {
            d.set_item(name, value)?;
        }
        d.set_item("entries", s.entries)?;
        Ok(d)
    }

    /// The client's default `retry` count (`QueryClientConfig.retry`).
    #[getter]
    fn default_retry(&self) -> u32 {
        self.retry
    }

    /// Entries held now.
    fn __len__(&self) -> usize {
        self.existing().map_or(0, |c| c.stats().entries)
    }

    // --- `QueryCache` (`client.cache`): a view over the engine's entries. ---

    /// The keys (tuples, sorted) of the entries under `filter_key` (all when `None`),
    /// found through the engine's prefix index.
    #[pyo3(signature = (filter_key = None))]
    fn query_keys<'py>(
        &self,
        py: Python<'py>,
        filter_key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, pyo3::types::PyTuple>>> {
        let filter = filter_of(filter_key)?;
        let keys = self
            .existing()
            .map(|c| c.query_keys(filter))
            .unwrap_or_default();
        keys.iter().map(|k| crate::keys::key_tuple(py, k)).collect()
    }

    /// How many entries the cache holds (one atomic read).
    fn query_count(&self) -> usize {
        self.existing().map_or(0, QueryClient::query_count)
    }

    /// Whether the cache holds `key` (a tuple, or its `hash_key` text).
    fn has_query(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = crate::keys::key_or_hash(key)?;
        Ok(self
            .existing()
            .is_some_and(|c| !c.query_keys(QueryFilter::exact(key)).is_empty()))
    }

    /// Removes exactly `key` (a tuple, or its `hash_key` text); returns whether it was
    /// there. A fetch in flight for it goes on for its waiters but stores nothing.
    fn remove_query(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = crate::keys::key_or_hash(key)?;
        Ok(self
            .existing()
            .is_some_and(|c| c.remove_queries(QueryFilter::exact(key)) > 0))
    }

    /// `await`able: refetches exactly `key` (a tuple, or its `hash_key` text) with the
    /// function the engine knows for it (joining a fetch in flight), and returns its
    /// state tuple afterwards (`None` when the cache does not hold it).
    fn refetch_key(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<RustAwaitable> {
        let key = crate::keys::key_or_hash(key)?;
        let (lp, client) = self.client(py)?;
        Ok(RustAwaitable::new(
            lp,
            Box::pin(async move {
                client
                    .refetch_queries(QueryFilter::exact(key.clone()))
                    .await;
                Python::attach(|py| match client.get_query_state::<Data>(&key) {
                    Some(state) => state_tuple(py, &state),
                    None => Ok(py.None()),
                })
            }),
        ))
    }
}

/// One `fetch_query` call, awaited.
///
/// Its first step polls the core's call on the stack, with the awaiting task's waker: a
/// fresh hit, or a query function that returns at once, completes right there, with
/// nothing boxed and no task. Otherwise that first call is dropped (a caller that stops
/// waiting cancels nothing: a fetch it started has moved to a task of its own at its
/// first wait) and a second one, which joins the flight with no transition, is boxed and
/// awaited like any [`RustAwaitable`].
#[pyclass(module = "stackquery._native")]
pub(crate) struct FetchCall {
    start: Mutex<Option<(QueryClient, Arc<QueryOptions<Data>>)>>,
    rest: RustAwaitable,
}

#[pymethods]
impl FetchCall {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    #[pyo3(signature = (_value = None))]
    fn send(&self, py: Python<'_>, _value: Option<Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    #[pyo3(signature = (typ, val = None, tb = None))]
    fn throw(
        &self,
        py: Python<'_>,
        typ: Bound<'_, PyAny>,
        val: Option<Bound<'_, PyAny>>,
        tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        drop(self.start.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.rest.throw(py, typ, val, tb)
    }

    fn close(&self) {
        drop(self.start.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.rest.close();
    }
}

impl FetchCall {
    fn step(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let start = self.start.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some((client, opts)) = start else {
            return self.rest.step(py);
        };
        let _rt = crate::io_runtime::enter();
        {
            let waker = self.rest.waker();
            let mut cx = std::task::Context::from_waker(&waker);
            let first = client.fetch_query(&opts);
            let mut first = std::pin::pin!(first);
            let polled = first.as_mut().poll(&mut cx);
            if crate::hooks::pending() {
                crate::hooks::drain(py);
            }
            if let std::task::Poll::Ready(result) = polled {
                return match result {
                    Ok(data) => Err(crate::awaitable::stop_iteration(py, data.clone_ref(py))),
                    Err(e) => Err(to_pyerr(py, e)),
                };
            }
        }
        self.rest
            .set(data_future(async move { client.fetch_query(&opts).await }));
        self.rest.step(py)
    }
}

/// A state as the tuple `stackquery._state._from_engine` turns into a `QueryState`
/// (`status`, `fetch_status`, `data`, `error`, `data_updated_at`, `error_updated_at`,
/// `failure_count`, `failure_reason`, `is_invalidated`, `is_placeholder_data`). Errors are
/// the query function's exception objects.
fn state_tuple<D: ViewData>(
    py: Python<'_>,
    state: &stackquery::QueryState<D>,
) -> PyResult<Py<PyAny>> {
    let mut status = match state.status {
        stackquery::QueryStatus::Idle => "IDLE",
        stackquery::QueryStatus::Pending => "PENDING",
        stackquery::QueryStatus::Success => "SUCCESS",
        stackquery::QueryStatus::Error => "ERROR",
        _ => "IDLE",
    };
    let fetch = match state.fetch_status {
        stackquery::FetchStatus::Idle => "IDLE",
        stackquery::FetchStatus::Fetching => "FETCHING",
        stackquery::FetchStatus::Paused => "PAUSED",
        _ => "IDLE",
    };
    let error = |e: &Option<QueryError>| -> Py<PyAny> {
        match e {
            Some(e) => to_pyerr(py, e.clone()).into_value(py).into_any(),
            None => py.None(),
        }
    };
    let mut failed_select = None;
    let data = match state.data.as_ref().map(|d| d.view(py)) {
        None => py.None(),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            // Weak spot 23: a `select` that raised is this observer's error, never the
            // raw data.
            status = "ERROR";
            failed_select = Some(e.clone_ref(py).into_value(py).into_any());
            py.None()
        }
    };
    let tuple = (
        status,
        fetch,
        data,
        failed_select.unwrap_or_else(|| error(&state.error)),
        unix_seconds(state.data_updated_at),
        unix_seconds(state.error_updated_at),
        state.failure_count,
        error(&state.failure_reason),
        state.is_invalidated,
        state.is_placeholder_data,
    );
    Ok(tuple.into_pyobject(py)?.into_any().unbind())
}

/// Data as an observer shows it: the stored object, or what `select` made of it.
trait ViewData {
    /// The object to show, or the exception `select` raised.
    fn view(&self, py: Python<'_>) -> Result<Py<PyAny>, &PyErr>;
}

impl ViewData for Data {
    fn view(&self, py: Python<'_>) -> Result<Py<PyAny>, &PyErr> {
        Ok(self.clone_ref(py))
    }
}

/// What a Python `select` returned for one data value, or what it raised. The core runs
/// `select` once per data change (not per listener or read) and calls no listener when
/// the new selection is equal (`==`) to the previous one (weak spot 24).
pub(crate) struct Selected(Result<Py<PyAny>, PyErr>);

impl ViewData for Selected {
    fn view(&self, py: Python<'_>) -> Result<Py<PyAny>, &PyErr> {
        match &self.0 {
            Ok(v) => Ok(v.clone_ref(py)),
            Err(e) => Err(e),
        }
    }
}

impl PartialEq for Selected {
    /// Python's `==` (the core calls it with no lock held); an exception in it, or a
    /// failed `select` on either side, counts as "changed".
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Ok(a), Ok(b)) => {
                Python::attach(|py| a.is(b) || a.bind(py).eq(b.bind(py)).unwrap_or(false))
            }
            _ => false,
        }
    }
}

/// The core's observer, plain or with a Python `select`.
enum Observer {
    Plain(stackquery::QueryObserver<Data>),
    Select(stackquery::QueryObserver<Selected, Data>),
}

/// The engine's observer of one query (`stackquery.QueryObserver` wraps it).
#[pyclass(module = "stackquery._native")]
pub(crate) struct NativeObserver {
    lp: Arc<Loop>,
    observer: Observer,
    subscriptions: Arc<Subscriptions>,
}

/// The live subscriptions of one client, by id.
#[derive(Default)]
pub(crate) struct Subscriptions(
    Mutex<(
        u64,
        std::collections::HashMap<u64, stackquery::Subscription>,
    )>,
);

impl Subscriptions {
    /// Keeps `s` until the returned Python function is called.
    pub(crate) fn closure<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        s: stackquery::Subscription,
    ) -> PyResult<Bound<'py, pyo3::types::PyCFunction>> {
        let id = self.add(s);
        let subscriptions = self.clone();
        pyo3::types::PyCFunction::new_closure(py, None, None, move |_args, _kwargs| {
            // Taken out of the registry first: the subscription ends with no lock held.
            if let Some(s) = subscriptions.remove(id) {
                s.unsubscribe();
            }
        })
    }

    fn add(&self, s: stackquery::Subscription) -> u64 {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let id = guard.0;
        guard.0 += 1;
        guard.1.insert(id, s);
        id
    }

    fn remove(&self, id: u64) -> Option<stackquery::Subscription> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .remove(&id)
    }
}

#[pymethods]
impl NativeObserver {
    /// The current state, as a tuple (see `state_tuple`).
    fn state(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.observer {
            Observer::Plain(o) => state_tuple(py, &o.state()),
            Observer::Select(o) => state_tuple(py, &o.state()),
        }
    }

    /// Calls `listener(state_tuple)` at once and on every change; returns a callable that
    /// ends the subscription (idempotent). An exception in the listener is reported as
    /// unraisable and changes nothing else.
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        listener: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, pyo3::types::PyCFunction>> {
        let subscription = match &self.observer {
            Observer::Plain(o) => o.subscribe(deliver(self.lp.clone(), listener, state_tuple)),
            Observer::Select(o) => o.subscribe(deliver(self.lp.clone(), listener, state_tuple)),
        };
        self.subscriptions.closure(py, subscription)
    }

    /// Stops automatic fetches and polling for this observer.
    fn pause(&self) {
        match &self.observer {
            Observer::Plain(o) => o.pause(),
            Observer::Select(o) => o.pause(),
        }
    }

    /// Starts them again; with `refetch`, fetches now if the data is stale.
    fn resume(&self, refetch: bool) {
        match &self.observer {
            Observer::Plain(o) => o.resume(refetch),
            Observer::Select(o) => o.resume(refetch),
        }
    }

    /// Whether the observer is paused.
    fn is_paused(&self) -> bool {
        match &self.observer {
            Observer::Plain(o) => o.is_paused(),
            Observer::Select(o) => o.is_paused(),
        }
    }

    /// `await`able: fetches again now (joining a fetch in flight); returns the state.
    fn refetch(&self, py: Python<'_>) -> PyResult<RustAwaitable> {
        let lp = crate::pyhost::Loop::current(py)?;
        let fut: crate::awaitable::PyFuture = match &self.observer {
            Observer::Plain(o) => refetch_future(o.clone()),
            Observer::Select(o) => refetch_future(o.clone()),
        };
        Ok(RustAwaitable::new(lp, fut))
    }
}

/// An observer's `refetch`, as the future a [`RustAwaitable`] runs.
fn refetch_future<D: ViewData + Send + Sync + 'static>(
    observer: stackquery::QueryObserver<D, Data>,
) -> crate::awaitable::PyFuture {
    Box::pin(async move {
        let result = observer.refetch().await;
        Python::attach(|py| match result {
            Ok(state) => state_tuple(py, &state),
            Err(e) => Err(to_pyerr(py, e)),
        })
    })
}
