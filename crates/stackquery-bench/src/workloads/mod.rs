//! The workloads of the comparison, one module each, and what they share: contender
//! names, runtimes and the fetch functions.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::Runtime;

pub(crate) mod dedup;
pub(crate) mod fill;
pub(crate) mod hit;
pub(crate) mod hydration;
pub(crate) mod invalidate;
pub(crate) mod memory;
pub(crate) mod zipf_mix;

pub(crate) const SQ_FETCH: &str = "stackquery fetch_query";
pub(crate) const SQ_GET: &str = "stackquery get_query_data";
pub(crate) const SQ_SET: &str = "stackquery set_query_data";
pub(crate) const SQ_INVALIDATE: &str = "stackquery invalidate_queries";
pub(crate) const MOKA_GET: &str = "moka get";
pub(crate) const MOKA_GET_WITH: &str = "moka get_with";
pub(crate) const MOKA_TRY_GET_WITH: &str = "moka try_get_with";
pub(crate) const MOKA_INSERT: &str = "moka insert";
pub(crate) const HAND: &str = "hand-written single-flight";
pub(crate) const FLOOR: &str = "floor RwLock+HashMap";
pub(crate) const FLOOR_PRE: &str = "floor, precomputed hash";
/// `fetch_query` with `QueryOptions::new(key![..], f)` built for every call (the README's
/// pattern), against the same floor with the key cloned for every call.
pub(crate) const SQ_FETCH_NEW_OPTS: &str = "stackquery fetch_query, options built per call";
pub(crate) const FLOOR_KEY_CLONE: &str = "floor RwLock+HashMap, key cloned per call";
pub(crate) const FLOOR_KEY_BUILT: &str = "floor RwLock+HashMap, key built per call";

/// Data stays fresh for the whole run.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(3600);

/// A single-threaded runtime: the "1 task" workloads run on it.
pub(crate) fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A runtime with one worker per core of this 2-core machine (2 workers).
pub(crate) fn multi_thread() -> Runtime {
    multi_thread_with(2)
}

/// A runtime with `workers` worker threads.
pub(crate) fn multi_thread_with(workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Thread counts of the scaling workload (`--only scaling`), each with the ids of its
/// hit and dedup sections.
pub(crate) const SCALING: [(usize, &str, &str); 3] = [
    (1, "scaling_hit_1", "scaling_dedup_1"),
    (2, "scaling_hit_2", "scaling_dedup_2"),
    (4, "scaling_hit_4", "scaling_dedup_4"),
];

/// Runs `f` as a task on one of `rt`'s workers (like a request handler in an
/// application), so background tasks of the cache run on the other worker meanwhile.
pub(crate) fn on_worker<F>(rt: &Runtime, f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    rt.block_on(async { tokio::spawn(f).await.expect("benchmark task panicked") })
}

/// The error type of fetches that cannot fail.
pub(crate) type Never = std::convert::Infallible;
