//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stackquery::{QueryKey, QueryOptions};

/// Counts calls of a fetch function.
#[derive(Clone, Default)]
pub struct Calls(Arc<AtomicU32>);

impl Calls {
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
    fn next(&self) -> u32 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Options whose fetch function is `f(call_number)` (1-based), with a call counter.
pub fn scripted<T, F, Fut>(key: QueryKey, f: F) -> (QueryOptions<T>, Calls)
where
    T: Send + Sync + 'static,
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let calls = Calls::default();
    let c = calls.clone();
    let f = Arc::new(f);
    let opts = QueryOptions::new(key, move || {
        let n = c.next();
        f(n)
    });
    (opts, calls)
}

/// A fetch that takes `delay` and returns its call number.
pub fn slow_counter(key: QueryKey, delay: Duration) -> (QueryOptions<u32>, Calls) {
    scripted(key, move |n| async move {
        tokio::time::sleep(delay).await;
        Ok(n)
    })
}

/// Lets spawned tasks run (on the paused clock, without moving time).
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}
/// One "call" of a sync wrapper: a fresh current-thread runtime on the paused clock,
/// dropped (with every task spawned on it) when the call returns.
pub fn on_a_fresh_runtime<R>(f: impl Future<Output = R>) -> R {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(f)
}

pub mod proxy;
pub mod redis_server;
pub mod throttled;
