//! The second tier from Python.
//!
//! Two kinds of storage:
//! - **Rust backends** ([`SqliteStorage`], [`RedisStorage`]) and the Redis bus
//!   ([`RedisBus`]): the Rust library's own, with no Python dependency. Entries are the
//!   Rust library's versioned envelope under the key's canonical text (`hash_key`), so
//!   Python and Rust clients share one tier and one bus namespace.
//! - **Any Python object with PyStackQuery's `StorageBackend` protocol** (async `get`,
//!   `set(key, value, ttl)`, `delete`), adapted by [`PyBackend`]. Its calls run on the
//!   client's asyncio loop. It keeps PyStackQuery's names (`str(key)`, e.g.
//!   `"('user', 7)"`) and a value that PyStackQuery reads too: the envelope's fields plus
//!   the seed's state fields (`status`, `data_updated_at` in seconds, 0.0 once
//!   invalidated, …). A value PyStackQuery wrote (no `version`) is read if its status is
//!   `SUCCESS`, so data already in such a store is kept across the switch.
//!
//! Every call is bounded by the client's `storage_timeout`; a storage that raises or hangs
//! is a logged miss (or a logged skipped write), never an error of the query.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use pyo3::exceptions::{PyConnectionError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use serde_json::{Map, Value};
use stackquery::storage::{async_trait, Storage, StorageError};

use crate::io_runtime;
use crate::pyhost::{support, Loop};

/// What a `QueryClientConfig(storage=…)` is.
#[derive(Clone)]
pub(crate) enum StorageChoice {
    /// A Rust backend.
    Rust(Arc<dyn Storage>),
    /// A Python object with the `StorageBackend` protocol.
    Python(Arc<Py<PyAny>>),
}

impl StorageChoice {
    /// `obj` as a storage, or a `TypeError` saying what a storage must have.
    pub(crate) fn of(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(s) = obj.cast::<SqliteStorage>() {
            return Ok(StorageChoice::Rust(s.get().inner.clone()));
        }
        if let Ok(s) = obj.cast::<RedisStorage>() {
            return Ok(StorageChoice::Rust(s.get().inner.clone()));
        }
        for method in ["get", "set", "delete"] {
            let callable = obj
                .getattr(method)
                .map(|m| m.is_callable())
                .unwrap_or(false);
            if !callable {
                return Err(PyTypeError::new_err(format!(
                    "storage must be a SqliteStorage, a RedisStorage, or an object with async \
                     get, set and delete methods (PyStackQuery's StorageBackend); {} has no {method}()",
                    obj.get_type().name()?
                )));
            }
        }
        Ok(StorageChoice::Python(Arc::new(obj.clone().unbind())))
    }

    /// The storage the engine uses, for a client on `lp`.
    pub(crate) fn for_loop(&self, lp: &Arc<Loop>) -> Arc<dyn Storage> {
        match self {
            StorageChoice::Rust(s) => s.clone(),
            StorageChoice::Python(obj) => Arc::new(PyBackend {
                obj: obj.clone(),
                lp: lp.clone(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rust backends

/// `SqliteStorage(path=None)`: the Rust library's embedded SQLite tier (a file, or memory
/// when `path` is `None`). Entries expire with their ttl; expired rows are misses and are
/// purged in the background.
#[pyclass(module = "stackquery._native", frozen)]
pub(crate) struct SqliteStorage {
    inner: Arc<dyn Storage>,
    path: Option<PathBuf>,
}

#[pymethods]
impl SqliteStorage {
    #[new]
    #[pyo3(signature = (path = None))]
    fn new(path: Option<PathBuf>) -> PyResult<Self> {
        let rt = io_runtime::runtime()?;
        let _rt = rt.enter();
        let opened = match &path {
            Some(p) => stackquery::SqliteStorage::open(p),
            None => stackquery::SqliteStorage::open_in_memory(),
        };
        let storage =
            opened.map_err(|e| PyValueError::new_err(format!("cannot open SQLite: {e}")))?;
        Ok(SqliteStorage {
            inner: Arc::new(storage),
            path,
        })
    }

    /// The database file (`None` in memory).
    #[getter]
    fn path(&self) -> Option<PathBuf> {
        self.path.clone()
    }

    fn __repr__(&self) -> String {
        match &self.path {
            Some(p) => format!("SqliteStorage({:?})", p.display().to_string()),
            None => "SqliteStorage(None)".into(),
        }
    }
}

/// `RedisStorage(url, namespace=None, timeout=1.0)`: the Rust library's Redis tier,
/// shared by every client (Python or Rust) on the same namespace. Connects at once
/// (raises `ConnectionError` when Redis cannot be reached) and reconnects by itself later.
#[pyclass(module = "stackquery._native", frozen)]
pub(crate) struct RedisStorage {
    inner: Arc<dyn Storage>,
    namespace: String,
}

#[pymethods]
impl RedisStorage {
    #[new]
    #[pyo3(signature = (url, namespace = None, timeout = 1.0))]
    fn new(py: Python<'_>, url: String, namespace: Option<String>, timeout: f64) -> PyResult<Self> {
        let timeout = crate::client::seconds("timeout", timeout)?;
        let rt = io_runtime::runtime()?;
        let mut builder = stackquery::RedisStorage::builder(url).timeout(timeout);
        if let Some(ns) = namespace {
            builder = builder.namespace(ns);
        }
        let storage = py
            .detach(|| rt.block_on(builder.connect()))
            .map_err(|e| PyConnectionError::new_err(format!("cannot connect to Redis: {e}")))?;
        Ok(RedisStorage {
            namespace: storage.namespace().to_owned(),
            inner: Arc::new(storage),
        })
    }

    /// The namespace every key is stored under.
    #[getter]
    fn namespace(&self) -> String {
        self.namespace.clone()
    }
}

/// `RedisBus(url, namespace=None)`: the Rust library's invalidation bus. A client given
/// one (`QueryClientConfig(bus=…)`) sends its invalidations, writes and removals to every
/// other client on the namespace, Python or Rust, and applies theirs.
#[pyclass(module = "stackquery._native", frozen)]
pub(crate) struct RedisBus {
    pub(crate) inner: stackquery::bus::RedisBus,
}

#[pymethods]
impl RedisBus {
    #[new]
    #[pyo3(signature = (url, namespace = None))]
    fn new(py: Python<'_>, url: String, namespace: Option<String>) -> PyResult<Self> {
        let rt = io_runtime::runtime()?;
        let mut builder = stackquery::bus::RedisBus::builder(url);
        if let Some(ns) = namespace {
            builder = builder.namespace(ns);
        }
        let bus = py
            .detach(|| rt.block_on(builder.connect()))
            .map_err(|e| PyConnectionError::new_err(format!("cannot connect to Redis: {e}")))?;
        Ok(RedisBus { inner: bus })
    }

    /// The Redis channel the bus publishes on.
    #[getter]
    fn channel(&self) -> String {
        self.inner.channel().to_owned()
    }

    /// Whether the bus is subscribed right now.
    #[getter]
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
}

// ---------------------------------------------------------------------------------------
// Python objects with the StorageBackend protocol

/// A Python `StorageBackend` as the engine's [`Storage`]: each call runs as a task on the
/// client's loop, from whichever thread the engine calls (a hydration read on the loop, a
/// write behind from the storage runtime).
pub(crate) struct PyBackend {
    obj: Arc<Py<PyAny>>,
    lp: Arc<Loop>,
}

fn backend_error(e: PyErr) -> StorageError {
    Python::attach(|py| {
        StorageError::backend(format!(
            "storage raised {}",
            e.value(py)
                .repr()
                .map(|r| r.to_string())
                .unwrap_or_default()
        ))
    })
}

/// Cancels the Python task of a call whose Rust side was dropped (a timeout).
struct CancelOnDrop {
    lp: Arc<Loop>,
    call: Option<Py<PyAny>>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            Python::attach(|py| {
                let cancelled = support(py).and_then(|s| {
                    s.call_method1("cancel_storage_call", (self.lp.obj.bind(py), call.bind(py)))
                });
                if let Err(e) = cancelled {
                    e.print(py);
                }
            });
        }
    }
}

impl PyBackend {
    /// Calls `method(*args, **kwargs)` on the loop and waits for its result.
    async fn call(
        &self,
        method: &'static str,
        args: impl for<'py> FnOnce(
            Python<'py>,
        )
            -> PyResult<(Bound<'py, PyTuple>, Option<Bound<'py, PyDict>>)>,
    ) -> Result<Py<PyAny>, StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<Py<PyAny>, PyErr>>();
        let guard = Python::attach(|py| -> PyResult<CancelOnDrop> {
            let (args, kwargs) = args(py)?;
            let tx = Mutex::new(Some(tx));
            let done = pyo3::types::PyCFunction::new_closure(
                py,
                None,
                None,
                move |a: &Bound<'_, PyTuple>, _kw| -> PyResult<()> {
                    let result = a.get_item(0)?;
                    let error = a.get_item(1)?;
                    let outcome = if error.is_none() {
                        Ok(result.unbind())
                    } else {
                        Err(PyErr::from_value(error))
                    };
                    if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                        let _ = tx.send(outcome);
                    }
                    Ok(())
                },
            )?;
            let bound_method = self.obj.bind(py).getattr(method)?;
            let call = support(py)?.call_method1(
                "storage_call",
                (self.lp.obj.bind(py), bound_method, args, kwargs, done),
            )?;
            Ok(CancelOnDrop {
                lp: self.lp.clone(),
                call: Some(call.unbind()),
            })
        })
        .map_err(backend_error)?;
        let outcome = rx.await;
        let mut guard = guard;
        guard.call = None;
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(backend_error(e)),
            Err(_) => Err(StorageError::backend(
                "the storage call was dropped (its loop closed?)",
            )),
        }
    }
}

#[async_trait]
impl Storage for PyBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let key = key.to_owned();
        let value = self
            .call("get", move |py| {
                Ok((PyTuple::new(py, [legacy_name(py, &key)?])?, None))
            })
            .await?;
        Python::attach(|py| {
            let value = value.bind(py);
            if value.is_none() {
                return Ok(None);
            }
            let text: Vec<u8> = if let Ok(b) = value.cast::<PyBytes>() {
                b.as_bytes().to_vec()
            } else if let Ok(s) = value.cast::<PyString>() {
                s.to_str().map_err(backend_error)?.as_bytes().to_vec()
            } else {
                return Err(StorageError::Corrupt(format!(
                    "storage get() returned a {}, not str, bytes or None",
                    value
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                )));
            };
            Ok(from_stored(&text))
        })
    }

    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let text = to_stored(&value)?;
        let key = key.to_owned();
        self.call("set", move |py| {
            let kwargs = PyDict::new(py);
            kwargs.set_item("ttl", ttl.map(|t| t.as_secs_f64()))?;
            Ok((
                PyTuple::new(py, [legacy_name(py, &key)?, text])?,
                Some(kwargs),
            ))
        })
        .await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let key = key.to_owned();
        self.call("delete", move |py| {
            Ok((PyTuple::new(py, [legacy_name(py, &key)?])?, None))
        })
        .await?;
        Ok(())
    }
}

/// PyStackQuery's name of a key: `str(key)` of its tuple (`('user', 7)`), from the key's
/// canonical text (`["user",7]`, a JSON array).
fn legacy_name(py: Python<'_>, key: &str) -> PyResult<String> {
    let Ok(parts) = serde_json::from_str::<Vec<Value>>(key) else {
        return Ok(key.to_owned());
    };
    let parts = parts
        .iter()
        .map(|p| crate::json::from_json(py, p))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyTuple::new(py, parts)?.str()?.to_string())
}

/// The text stored for an envelope: the envelope's own fields, plus PyStackQuery's state
/// fields so that PyStackQuery (and code written for its format) reads it too.
fn to_stored(envelope: &[u8]) -> Result<String, StorageError> {
    let mut map: Map<String, Value> = serde_json::from_slice(envelope)
        .map_err(|e| StorageError::Encode(format!("a Python storage takes JSON envelopes: {e}")))?;
    let invalidated = map
        .get("invalidated")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ms = map
        .get("data_updated_at_ms")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    // PyStackQuery marks an invalidated entry with a zero stamp; the real one stays in
    // `data_updated_at_ms`.
    let seconds = if invalidated { 0.0 } else { ms as f64 / 1000.0 };
    map.insert("status".into(), "SUCCESS".into());
    map.insert("fetch_status".into(), "IDLE".into());
    map.insert("data_updated_at".into(), seconds.into());
    map.insert("error".into(), Value::Null);
    map.insert("error_updated_at".into(), Value::Null);
    map.insert("fetch_failure_count".into(), 0.into());
    map.insert("fetch_failure_reason".into(), Value::Null);
    serde_json::to_string(&map).map_err(|e| StorageError::Encode(e.to_string()))
}

/// The envelope bytes for stored text: our own format as it is; PyStackQuery's state
/// (no `version`) converted when its status is `SUCCESS`, a miss otherwise. Text that is
/// neither goes to the engine as it is, which counts it corrupt and deletes it.
fn from_stored(text: &[u8]) -> Option<Vec<u8>> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(text) else {
        return Some(text.to_vec());
    };
    if map.contains_key("version") {
        return Some(text.to_vec());
    }
    if map.get("status").and_then(Value::as_str) != Some("SUCCESS") {
        return None;
    }
    let data = map.get("data")?.clone();
    let seconds = map
        .get("data_updated_at")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let invalidated = seconds <= 0.0;
    let at = if invalidated {
        UNIX_EPOCH
    } else {
        UNIX_EPOCH + Duration::from_secs_f64(seconds.min(1e11))
    };
    let envelope = stackquery::storage::Envelope::new(data, at, invalidated);
    stackquery::storage::encode(&envelope, stackquery::storage::Codec::Json).ok()
}
