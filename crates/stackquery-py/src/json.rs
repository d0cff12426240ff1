//! Python data as the JSON of the stored envelope, and back.
//!
//! The second tier stores a query's data in the same versioned envelope as the Rust
//! library (`stackquery::storage::Envelope`), so a dict written by a Python client is read
//! by a Rust client as a serde struct with the same fields, and the reverse. JSON has
//! fewer types than Python: a tuple comes back as a list (as with PyStackQuery's
//! `json.dumps`). Anything without a JSON form (a set, a `datetime`, `nan`, a dict with
//! non-`str` keys, an int beyond 64 bits, a cycle) is refused with a message naming it.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};
use stackquery::storage::{JsonConverter, StorageError};

/// The converter the engine uses for every persisted Python value.
pub(crate) struct PyJson;

/// Deeper nesting is refused (it is almost always a cycle, and bounds the recursion).
const MAX_DEPTH: usize = 128;

impl JsonConverter<Py<PyAny>> for PyJson {
    fn to_json(data: &Py<PyAny>) -> Result<Value, StorageError> {
        Python::attach(|py| to_json(data.bind(py), 0)).map_err(StorageError::Encode)
    }

    fn from_json(value: Value) -> Result<Py<PyAny>, StorageError> {
        Python::attach(|py| from_json(py, &value).map(Bound::unbind))
            .map_err(|e| StorageError::Corrupt(e.to_string()))
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `obj` as JSON, or why it has no JSON form.
pub(crate) fn to_json(obj: &Bound<'_, PyAny>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels (a cycle?)"));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // `bool` first: in Python it is a subclass of `int`.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.cast::<PyInt>().is_ok() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(i.into());
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(u.into());
        }
        return Err("an int beyond 64 bits has no JSON form here".into());
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| format!("the float {v} has no JSON form"));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(
            s.to_str().map_err(|e| e.to_string())?.to_owned(),
        ));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut map = Map::new();
        for (k, v) in d.iter() {
            let key = k
                .cast::<PyString>()
                .map_err(|_| format!("a dict key must be a str, got {}", type_name(&k)))?;
            let key = key.to_str().map_err(|e| e.to_string())?.to_owned();
            let value = to_json(&v, depth + 1).map_err(|e| format!("[{key:?}]: {e}"))?;
            map.insert(key, value);
        }
        return Ok(Value::Object(map));
    }
    let items: Option<Vec<Bound<'_, PyAny>>> = if let Ok(l) = obj.cast::<PyList>() {
        Some(l.iter().collect())
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        Some(t.iter().collect())
    } else {
        None
    };
    if let Some(items) = items {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(to_json(item, depth + 1).map_err(|e| format!("[{i}]: {e}"))?);
        }
        return Ok(Value::Array(out));
    }
    Err(format!("a {} is not JSON-serialisable", type_name(obj)))
}

/// JSON as Python data (objects become dicts, arrays lists).
pub(crate) fn from_json<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(from_json(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, from_json(py, v)?)?;
            }
            dict.into_any()
        }
    })
}
