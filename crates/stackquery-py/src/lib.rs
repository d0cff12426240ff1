//! `stackquery._native`: the Rust side of the Python package.
//!
//! The package keeps PyStackQuery's API (see `python/stackquery/__init__.py`) and moves
//! its engine into Rust, piece by piece (`DESIGN.md` beside this crate gives the design
//! and what is built so far). This module holds the pieces that are built: query keys,
//! converted from Python tuples into the core's [`stackquery::QueryKey`] (so a key
//! written by Python and one written by a Rust service are the same key, with the same
//! hash and the same storage name), prefix matching, and the default retry delay.

use pyo3::prelude::*;

mod awaitable;
mod client;
mod coro;
mod hooks;
mod io_runtime;
mod json;
mod keys;
mod logs;
mod mutation;
mod pyhost;
mod storage;

/// The native module, imported by the package as `stackquery._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logs::install();
    m.add_function(wrap_pyfunction!(keys::hash_key, m)?)?;
    m.add_function(wrap_pyfunction!(keys::partial_match, m)?)?;
    m.add_function(wrap_pyfunction!(keys::key_parts, m)?)?;
    m.add_function(wrap_pyfunction!(keys::parse_key_hash, m)?)?;
    m.add_function(wrap_pyfunction!(default_retry_delay, m)?)?;
    m.add_class::<client::NativeClient>()?;
    m.add_class::<awaitable::RustAwaitable>()?;
    m.add_class::<client::FetchCall>()?;
    m.add_class::<client::NativeOptions>()?;
    m.add_class::<client::NativeObserver>()?;
    m.add_class::<mutation::NativeMutation>()?;
    m.add_class::<storage::SqliteStorage>()?;
    m.add_class::<storage::RedisStorage>()?;
    m.add_class::<storage::RedisBus>()?;
    Ok(())
}

/// The default delay before retry `attempt` (0 for the first retry), in seconds:
/// `min(2 ** attempt, 30)`, the same schedule as PyStackQuery and the Rust library.
///
/// Raises `ValueError` for a negative attempt (PyStackQuery returned fractions of a
/// second for those, which no retry loop asks for).
#[pyfunction]
fn default_retry_delay(attempt: i64) -> PyResult<f64> {
    if attempt < 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "the retry attempt must be 0 or more, got {attempt}"
        )));
    }
    let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
    Ok(stackquery::default_retry_delay(attempt).as_secs_f64())
}
