//! Python query keys as the core's [`QueryKey`].
//!
//! A key is a tuple of `str`, `int` and `bool` parts, as in PyStackQuery (whose keys are
//! `tuple[str, ...]`); each part becomes the core's [`KeyPart`], so `("user", "7")`
//! from Python and `key!["user", "7"]` from Rust are one key: equal, with the same hash
//! and the same storage name. Anything else is refused with a `TypeError` that names the
//! offending part, where PyStackQuery would fail later, or silently (its keys were
//! compared as `str(key)`: a list never matched a tuple, and `("1",)` and `(1,)` were
//! different keys with the same storage name only by accident).
//!
//! Filters (the first argument of [`partial_match`], and later of invalidation) may also
//! be lists: a filter names a prefix, it is never stored.

use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyList, PyString, PyTuple};
use stackquery::{KeyPart, QueryKey};

/// What a Python object is being converted for (it decides whether a list is accepted,
/// and names the argument in errors).
#[derive(Clone, Copy)]
pub(crate) enum Role {
    /// A query key: a tuple.
    Key,
    /// A filter: a tuple or a list.
    Filter,
}

/// `obj` as a core key, or a `TypeError` that says what was wrong.
/// Keys of up to this many parts are converted with no allocation but the key's own.
const SHORT: usize = 4;

pub(crate) fn to_key(obj: &Bound<'_, PyAny>, role: Role) -> PyResult<QueryKey> {
    let what = match role {
        Role::Key => "a query key",
        Role::Filter => "a key filter",
    };
    // The parts are read straight from the tuple (or list): the key's one allocation is
    // its own (`get_query_data` runs this on every call).
    let convert = |i: usize, item: &Bound<'_, PyAny>| {
        to_part(item).map_err(|e| {
            PyTypeError::new_err(format!("{what}: part {i} ({}): {e}", type_name(item)))
        })
    };
    let parts = if let Ok(t) = obj.cast::<PyTuple>() {
        if t.len() <= SHORT {
            // A short key is gathered on the stack: the `Arc` of its parts is then its
            // only allocation (the iterator below has an exact length).
            let mut buf: [Option<KeyPart>; SHORT] = Default::default();
            for (i, item) in t.iter_borrowed().enumerate() {
                buf[i] = Some(convert(i, &item)?);
            }
            let parts = buf.into_iter().take(t.len());
            return Ok(QueryKey::new(parts.map(|p| p.expect("set above"))));
        }
        let mut parts = Vec::with_capacity(t.len());
        for (i, item) in t.iter_borrowed().enumerate() {
            parts.push(convert(i, &item)?);
        }
        parts
    } else if let (Role::Filter, Ok(l)) = (role, obj.cast::<PyList>()) {
        let mut parts = Vec::with_capacity(l.len());
        for (i, item) in l.iter().enumerate() {
            parts.push(convert(i, &item)?);
        }
        parts
    } else {
        let expected = match role {
            Role::Key => "a tuple",
            Role::Filter => "a tuple or a list",
        };
        return Err(PyTypeError::new_err(format!(
            "{what} must be {expected} of str, int or bool parts, got {}",
            type_name(obj)
        )));
    };
    Ok(QueryKey::new(parts))
}

fn to_part(item: &Bound<'_, PyAny>) -> Result<KeyPart, String> {
    // `bool` first: in Python it is a subclass of `int`.
    if let Ok(b) = item.cast::<PyBool>() {
        return Ok(KeyPart::Bool(b.is_true()));
    }
    if let Ok(s) = item.cast::<PyString>() {
        let s = s.to_str().map_err(|e| e.to_string())?;
        return Ok(KeyPart::from(s));
    }
    if item.cast::<PyInt>().is_ok() {
        if let Ok(i) = item.extract::<i64>() {
            return Ok(KeyPart::from(i));
        }
        if let Ok(u) = item.extract::<u64>() {
            return Ok(KeyPart::from(u));
        }
        return Err("an int part must fit in 64 bits".into());
    }
    Err("parts must be str, int or bool".into())
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The key's canonical text: its storage name in the SQLite and Redis tiers, the same
/// text a Rust client prints for the same key (`["users","7"]`).
///
/// PyStackQuery returned `str(key)` (`"('users', '7')"`); this is the one deliberate
/// difference of `hash_key`: the text is shared with Rust and stable across Python
/// versions.
#[pyfunction]
pub(crate) fn hash_key(key: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(to_key(key, Role::Key)?.to_string())
}

/// `True` when `filter_key` is a prefix of `target_key` (every key is a prefix of
/// itself; the empty filter matches every key). The filter may be a list.
#[pyfunction]
pub(crate) fn partial_match(
    filter_key: &Bound<'_, PyAny>,
    target_key: &Bound<'_, PyAny>,
) -> PyResult<bool> {
    let filter = to_key(filter_key, Role::Filter)?;
    let target = to_key(target_key, Role::Key)?;
    Ok(target.starts_with(&filter))
}

/// The key's parts as the engine stores them (a tuple; `bool`, `int` and `str` parts
/// come back as the same Python types). Raises like any key conversion.
#[pyfunction]
pub(crate) fn key_parts<'py>(
    py: Python<'py>,
    key: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    key_tuple(py, &to_key(key, Role::Key)?)
}

/// A core key as a Python tuple (`bool`, `int` and `str` parts).
pub(crate) fn key_tuple<'py>(py: Python<'py>, key: &QueryKey) -> PyResult<Bound<'py, PyTuple>> {
    let mut out: Vec<Bound<'py, PyAny>> = Vec::with_capacity(key.parts().len());
    for part in key.parts() {
        out.push(match part {
            KeyPart::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
            KeyPart::Int(i) => i.into_pyobject(py)?.into_any(),
            KeyPart::UInt(u) => u.into_pyobject(py)?.into_any(),
            KeyPart::Str(s) => PyString::new(py, s).into_any(),
            KeyPart::Null => py.None().into_bound(py),
            #[allow(unreachable_patterns)]
            _ => return Err(PyOverflowError::new_err("unknown key part")),
        });
    }
    PyTuple::new(py, out)
}

/// A query key given either as a tuple or as its canonical text (`hash_key`'s result,
/// which is what PyStackQuery's cache was indexed by).
pub(crate) fn key_or_hash(obj: &Bound<'_, PyAny>) -> PyResult<QueryKey> {
    if let Ok(s) = obj.cast::<PyString>() {
        let text = s.to_str()?;
        return text.parse::<QueryKey>().map_err(|e| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "not a key hash (hash_key's text, e.g. '[\"users\",\"7\"]'): {text:?}: {e}"
            ))
        });
    }
    to_key(obj, Role::Key)
}

/// The key whose canonical text is `key_hash` (the inverse of `hash_key`), as a tuple.
/// Raises `ValueError` for text that is no key's hash.
#[pyfunction]
pub(crate) fn parse_key_hash<'py>(
    py: Python<'py>,
    key_hash: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyTuple>> {
    key_tuple(py, &key_or_hash(key_hash.as_any())?)
}
