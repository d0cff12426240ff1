//! Initial data (`QueryOptions::initial_data`): the value a new entry starts with, cached
//! and judged fresh or stale like fetched data, unlike the placeholder.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::QueryError;
use crate::user_code::contain;

/// Builds initial data on demand (`QueryOptions::initial_data_with`).
type Make<T> = dyn Fn() -> T + Send + Sync;

/// A query's initial data: a value, or a function that builds it.
pub(crate) enum InitialData<T> {
    Value(Arc<T>),
    Lazy(Arc<Make<T>>),
}

impl<T> Clone for InitialData<T> {
    fn clone(&self) -> Self {
        match self {
            InitialData::Value(v) => InitialData::Value(v.clone()),
            InitialData::Lazy(f) => InitialData::Lazy(f.clone()),
        }
    }
}

impl<T> InitialData<T> {
    /// The data. A builder is user code: the caller holds no lock, and a panic becomes an
    /// error (the entry then simply has no initial data).
    pub(crate) fn get(&self) -> Result<Arc<T>, QueryError> {
        match self {
            InitialData::Value(v) => Ok(v.clone()),
            InitialData::Lazy(f) => contain("initial_data_with", || Arc::new(f())),
        }
    }
}

/// When initial data was last true, and so how old it is, by the wall clock: the stamp
/// the query gave (`initial_data_updated_at`), else now. A stamp in the future is age 0.
pub(crate) fn stamp_and_age(given: Option<SystemTime>) -> (SystemTime, Duration) {
    match given {
        Some(at) => (at, crate::deadline::age_of(at)),
        None => (SystemTime::now(), Duration::ZERO),
    }
}
