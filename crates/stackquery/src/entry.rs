//! One cache entry: the state of one key, its in-flight fetch, and its bookkeeping
//! (observers, generations, gc deadline).
//!
//! Entries are stored type-erased (`Arc<dyn AnyEntry>`) and downcast to `Entry<T>` by
//! typed calls; bulk operations (invalidate, cancel, reset…) go through [`AnyEntry`].

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::{Mutex, MutexGuard};
use tokio::time::Instant;

use crate::client::Shared;
use crate::error::{panic_message, QueryError};
use crate::flight::{FetchResult, Flight};
use crate::key::QueryKey;
use crate::options::QueryOptions;
use crate::state::{reduce, Action, FetchStatus, QueryState};

/// A future that resolves when a started refetch settles (its outcome is in the cache).
pub(crate) type Settled = BoxFuture<'static, ()>;

pub(crate) struct Entry<T> {
    pub(crate) id: u64,
    pub(crate) key: QueryKey,
    /// CLOCK "second chance" bit: set on use, cleared by the eviction hand.
    referenced: AtomicBool,
    pub(crate) inner: Mutex<EntryInner<T>>,
}

pub(crate) struct EntryInner<T> {
    pub(crate) state: QueryState<T>,
    /// Monotonic time of the last data write: freshness is judged on it.
    pub(crate) updated_at: Option<Instant>,
    pub(crate) flight: Option<Arc<Flight<T>>>,
    /// Bumped by manual writes and resets: an older fetch must not overwrite them.
    pub(crate) data_gen: u64,
    /// Bumped by invalidations: an older fetch's result comes back stale.
    pub(crate) inval_gen: u64,
    pub(crate) observers: usize,
    /// The last options used with this key: lets bulk refetches run the fetch function.
    pub(crate) options: Option<QueryOptions<T>>,
    /// Stale time of the last caller, for filters and snapshots.
    pub(crate) stale_time: Duration,
    pub(crate) gc_time: Duration,
    /// When the gc may collect this entry (None: in use, or never).
    pub(crate) gc_deadline: Option<Instant>,
    /// Removed from the cache: nothing schedules work for it any more.
    pub(crate) removed: bool,
}

/// What a `fetch_query`-style call found.
pub(crate) enum Step<T> {
    Ready(Arc<T>),
    Wait(Arc<Flight<T>>),
}

/// How a typed call treats cached data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Fresh: return. Stale: return and refresh in the background. None: fetch.
    Swr,
    /// Any data: return (no refresh). None: fetch.
    Ensure,
    /// Always fetch (joining a fetch in flight), return the fetched value.
    Force,
}

impl<T> EntryInner<T> {
    #[inline]
    pub(crate) fn is_fresh(&self, stale_time: Duration) -> bool {
        if self.state.is_invalidated || stale_time.is_zero() {
            return false;
        }
        match self.updated_at {
            None => false,
            Some(at) => match at.checked_add(stale_time) {
                Some(deadline) => Instant::now() < deadline,
                None => true, // "forever" (Duration::MAX)
            },
        }
    }

    /// A snapshot whose staleness is judged with `stale_time`.
    pub(crate) fn snapshot(&self, stale_time: Duration) -> QueryState<T> {
        let mut s = self.state.clone();
        s.stale = !(s.data.is_some() && self.is_fresh(stale_time));
        s
    }

    fn unused(&self) -> bool {
        self.observers == 0 && self.flight.is_none() && !self.removed
    }
}

impl<T: Send + Sync + 'static> Entry<T> {
    pub(crate) fn new(id: u64, key: QueryKey, stale_time: Duration, gc_time: Duration) -> Self {
        Entry {
            id,
            key,
            referenced: AtomicBool::new(false),
            inner: Mutex::new(EntryInner {
                state: QueryState::default(),
                updated_at: None,
                flight: None,
                data_gen: 0,
                inval_gen: 0,
                observers: 0,
                options: None,
                stale_time,
                gc_time,
                gc_deadline: None,
                removed: false,
            }),
        }
    }

    #[inline]
    pub(crate) fn touch(&self) {
        // Load first: an already-set bit costs no write, so hot keys do not bounce lines.
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }

    /// The hit path: fresh data or nothing.
    #[inline]
    pub(crate) fn fresh_data(&self, stale_time: Duration) -> Option<Arc<T>> {
        let g = self.inner.lock();
        match &g.state.data {
            Some(d) if g.is_fresh(stale_time) => {
                let d = d.clone();
                drop(g);
                self.touch();
                Some(d)
            }
            _ => None,
        }
    }

    /// Decides what a typed call gets, starting a fetch if one is needed. `None`: the
    /// entry was removed from the cache before anything started (the caller looks the key
    /// up again), unless `even_if_removed`.
    pub(crate) fn step(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        opts: &QueryOptions<T>,
        mode: Mode,
        even_if_removed: bool,
    ) -> Result<Option<Step<T>>, QueryError> {
        let stale_time = shared.defaults.stale_time(opts);
        let mut g = self.inner.lock();
        if g.state.data.is_some() {
            self.touch();
        }
        if g.removed && !even_if_removed {
            return Ok(None);
        }
        g.options = Some(opts.clone());
        g.stale_time = stale_time;
        g.gc_time = shared.defaults.gc_time(opts);
        if mode != Mode::Force {
            if let Some(data) = g.state.data.clone() {
                if g.is_fresh(stale_time) {
                    shared.counters.hits.incr();
                    tracing::trace!(key = %self.key, "cache hit");
                    return Ok(Some(Step::Ready(data)));
                }
                shared.counters.stale_hits.incr();
                tracing::trace!(key = %self.key, "stale hit");
                if mode == Mode::Swr && g.flight.is_none() {
                    // A failed start (no runtime) still serves the stale data.
                    if self.begin_flight(&mut g, shared, opts.clone()).is_err() {
                        self.arm_gc_if_unused(&mut g, shared);
                    }
                }
                return Ok(Some(Step::Ready(data)));
            }
            shared.counters.misses.incr();
            tracing::trace!(key = %self.key, "cache miss");
        }
        if let Some(f) = &g.flight {
            shared.counters.dedup_joins.incr();
            return Ok(Some(Step::Wait(f.clone())));
        }
        match self.begin_flight(&mut g, shared, opts.clone()) {
            Ok(f) => Ok(Some(Step::Wait(f))),
            Err(e) => {
                self.arm_gc_if_unused(&mut g, shared);
                Err(e)
            }
        }
    }

    /// Starts a fetch (the entry lock is held, so no second fetch can start meanwhile).
    /// A flight already attached is detached: its waiters still get its result, but the
    /// cache takes the new one.
    pub(crate) fn begin_flight(
        self: &Arc<Self>,
        g: &mut MutexGuard<'_, EntryInner<T>>,
        shared: &Arc<Shared>,
        opts: QueryOptions<T>,
    ) -> Result<Arc<Flight<T>>, QueryError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| QueryError::NoRuntime)?;
        let previous = match &g.flight {
            Some(old) => old.previous.clone(),
            None => g.state.clone(),
        };
        let flight = Arc::new(Flight::new(previous, g.data_gen, g.inval_gen));
        reduce(&mut g.state, Action::Fetch);
        g.flight = Some(flight.clone());
        g.gc_deadline = None;
        shared.counters.fetches.incr();
        tracing::debug!(key = %self.key, "fetch start");
        let task = run_flight(shared.clone(), self.clone(), flight.clone(), opts);
        let join = handle.spawn(task);
        let _ = flight.abort.set(join.abort_handle());
        Ok(flight)
    }

    /// Records a failed attempt of `flight` (if it is still the entry's current fetch).
    fn attempt_failed(&self, flight: &Arc<Flight<T>>, error: QueryError) {
        let mut g = self.inner.lock();
        if is_current(&g, flight) {
            reduce(&mut g.state, Action::Failed { error });
        }
    }

    /// Settles `flight` with `result`: updates the entry if the flight is still current,
    /// then wakes its waiters. Idempotent: the first settlement wins.
    pub(crate) fn settle(&self, shared: &Shared, flight: &Arc<Flight<T>>, result: FetchResult<T>) {
        let mut g = self.inner.lock();
        if is_current(&g, flight) {
            g.flight = None;
            match &result {
                Ok(data) if g.data_gen == flight.data_gen => {
                    let invalidated = g.inval_gen != flight.inval_gen;
                    reduce(
                        &mut g.state,
                        Action::Success {
                            data: data.clone(),
                            at: SystemTime::now(),
                            invalidated,
                        },
                    );
                    g.updated_at = Some(Instant::now());
                }
                // A manual write landed during the fetch: the newer manual data stays.
                Ok(_) => g.state.fetch_status = FetchStatus::Idle,
                Err(QueryError::Cancelled) => {
                    let previous = flight.previous.clone();
                    reduce(&mut g.state, Action::Revert { previous });
                }
                Err(error) => reduce(
                    &mut g.state,
                    Action::Error {
                        error: error.clone(),
                        at: SystemTime::now(),
                    },
                ),
            }
            self.arm_gc_if_unused(&mut g, shared);
        }
        drop(g);
        flight.resolve(result);
    }

    /// Arms the gc timer when nothing uses the entry any more.
    pub(crate) fn arm_gc_if_unused(&self, g: &mut EntryInner<T>, shared: &Shared) {
        if !g.unused() {
            return;
        }
        match Instant::now().checked_add(g.gc_time) {
            Some(at) => {
                g.gc_deadline = Some(at);
                shared.gc.arm(self.id, self.key.clone(), at);
            }
            None => g.gc_deadline = None, // gc_time "forever"
        }
    }

    /// Writes data by hand. The write wins over any fetch that started before it.
    pub(crate) fn set_data(&self, shared: &Shared, data: Arc<T>) {
        let mut g = self.inner.lock();
        if g.state.data.is_some() {
            // Overwriting data is a use; the first write is the insertion itself.
            self.touch();
        }
        g.data_gen += 1;
        let fetching = g.flight.is_some();
        reduce(
            &mut g.state,
            Action::Success {
                data,
                at: SystemTime::now(),
                invalidated: false,
            },
        );
        if fetching {
            // The fetch goes on for its waiters; the entry still shows it.
            g.state.fetch_status = FetchStatus::Fetching;
        }
        g.updated_at = Some(Instant::now());
        self.arm_gc_if_unused(&mut g, shared);
    }

    fn typed_invalidate(self: &Arc<Self>, shared: &Arc<Shared>) -> Option<Settled> {
        let mut g = self.inner.lock();
        g.inval_gen += 1;
        reduce(&mut g.state, Action::Invalidate);
        if g.observers == 0 || g.removed {
            return None;
        }
        // Observed: refetch now. A fetch that began before the invalidation would come
        // back stale, so a new one replaces it (its own waiters still get its result).
        let opts = g.options.clone()?;
        let flight = self.begin_flight(&mut g, shared, opts).ok()?;
        Some(settled(flight))
    }

    fn typed_refetch(self: &Arc<Self>, shared: &Arc<Shared>) -> Option<Settled> {
        let mut g = self.inner.lock();
        if g.removed {
            return None;
        }
        if let Some(f) = &g.flight {
            return Some(settled(f.clone()));
        }
        let opts = g.options.clone()?;
        let flight = self.begin_flight(&mut g, shared, opts).ok()?;
        Some(settled(flight))
    }

    fn typed_cancel(&self, shared: &Shared) {
        let flight = self.inner.lock().flight.clone();
        if let Some(f) = flight {
            self.settle(shared, &f, Err(QueryError::Cancelled));
            if let Some(h) = f.abort.get() {
                h.abort();
            }
        }
    }
}

fn is_current<T>(g: &EntryInner<T>, flight: &Arc<Flight<T>>) -> bool {
    g.flight.as_ref().is_some_and(|f| Arc::ptr_eq(f, flight))
}

fn settled<T: Send + Sync + 'static>(flight: Arc<Flight<T>>) -> Settled {
    async move {
        let _ = flight.wait().await;
    }
    .boxed()
}

/// Settles the flight as cancelled if its task is dropped before finishing (aborted, or
/// the runtime shut down), so no waiter is left hanging.
struct FlightGuard<T: Send + Sync + 'static> {
    shared: Arc<Shared>,
    entry: Arc<Entry<T>>,
    flight: Arc<Flight<T>>,
}

impl<T: Send + Sync + 'static> Drop for FlightGuard<T> {
    fn drop(&mut self) {
        if !self.flight.is_resolved() {
            self.entry
                .settle(&self.shared, &self.flight, Err(QueryError::Cancelled));
        }
    }
}

/// The fetch task: runs the user's function with retries, then settles the flight.
async fn run_flight<T: Send + Sync + 'static>(
    shared: Arc<Shared>,
    entry: Arc<Entry<T>>,
    flight: Arc<Flight<T>>,
    opts: QueryOptions<T>,
) {
    let guard = FlightGuard {
        shared,
        entry,
        flight,
    };
    let mut failures: u32 = 0;
    let result = loop {
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| (opts.fetcher)())) {
            Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
            Err(payload) => Err(payload),
        };
        let error = match outcome {
            Ok(Ok(value)) => break Ok(Arc::new(value)),
            Ok(Err(e)) => QueryError::fetch(e),
            Err(payload) => QueryError::Panicked(panic_message(&*payload)),
        };
        failures = failures.saturating_add(1);
        guard.entry.attempt_failed(&guard.flight, error.clone());
        // A panic is a bug in the fetch function, not a transient failure: no retry.
        let retry = !matches!(error, QueryError::Panicked(_))
            && guard
                .shared
                .defaults
                .retry(&opts)
                .should_retry(failures, &error);
        if !retry {
            tracing::warn!(key = %guard.entry.key, %error, failures, "fetch failed");
            break Err(error);
        }
        let delay = guard.shared.defaults.retry_delay(&opts, failures - 1);
        tracing::debug!(key = %guard.entry.key, %error, failures, ?delay, "fetch retry");
        tokio::time::sleep(delay).await;
    };
    if result.is_ok() {
        tracing::debug!(key = %guard.entry.key, "fetch success");
    }
    guard.entry.settle(&guard.shared, &guard.flight, result);
    guard.shared.cache.evict_if_over_capacity(&guard.shared);
}

/// Type-erased view of an entry, for bulk operations and the cache's bookkeeping.
pub(crate) trait AnyEntry: Send + Sync + 'static {
    fn id(&self) -> u64;
    fn key(&self) -> &QueryKey;
    fn type_name(&self) -> &'static str;
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// Reads and clears the CLOCK bit.
    fn take_referenced(&self) -> bool;
    /// Observed or fetching: never evicted or collected.
    fn is_pinned(&self) -> bool;
    fn is_active(&self) -> bool;
    fn is_fetching(&self) -> bool;
    fn is_stale(&self) -> bool;
    /// True when the gc deadline has passed and the entry is still unused.
    fn gc_due(&self, now: Instant) -> bool;
    fn invalidate(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled>;
    fn refetch(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled>;
    fn cancel(&self, shared: &Shared);
    fn reset(&self, shared: &Shared);
    /// The entry left the cache: detach any fetch so nothing writes into it again.
    fn mark_removed(&self);
}

impl<T: Send + Sync + 'static> AnyEntry for Entry<T> {
    fn id(&self) -> u64 {
        self.id
    }
    fn key(&self) -> &QueryKey {
        &self.key
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn take_referenced(&self) -> bool {
        self.referenced.swap(false, Ordering::Relaxed)
    }
    fn is_pinned(&self) -> bool {
        let g = self.inner.lock();
        g.observers > 0 || g.flight.is_some()
    }
    fn is_active(&self) -> bool {
        self.inner.lock().observers > 0
    }
    fn is_fetching(&self) -> bool {
        self.inner.lock().flight.is_some()
    }
    fn is_stale(&self) -> bool {
        let g = self.inner.lock();
        !(g.state.data.is_some() && g.is_fresh(g.stale_time))
    }
    fn gc_due(&self, now: Instant) -> bool {
        let g = self.inner.lock();
        g.unused() && g.gc_deadline.is_some_and(|d| d <= now)
    }
    fn invalidate(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled> {
        self.typed_invalidate(shared)
    }
    fn refetch(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled> {
        self.typed_refetch(shared)
    }
    fn cancel(&self, shared: &Shared) {
        self.typed_cancel(shared)
    }
    fn reset(&self, shared: &Shared) {
        let mut g = self.inner.lock();
        g.data_gen += 1;
        g.inval_gen += 1;
        // A fetch in flight goes on for its waiters but no longer writes here.
        g.flight = None;
        g.updated_at = None;
        reduce(&mut g.state, Action::Reset);
        self.arm_gc_if_unused(&mut g, shared);
    }
    fn mark_removed(&self) {
        let mut g = self.inner.lock();
        g.removed = true;
        g.flight = None;
        g.gc_deadline = None;
    }
}
