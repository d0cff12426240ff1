//! One cache entry: the state of one key, its in-flight fetch, and its bookkeeping
//! (observers, generations, gc deadline).
//!
//! Entries are stored type-erased (`Arc<dyn AnyEntry>`) and downcast to `Entry<T>` by
//! typed calls; bulk operations (invalidate, cancel, reset…) go through [`AnyEntry`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use std::ops::{Deref, DerefMut};

use parking_lot::{Mutex, MutexGuard};
use tokio::time::Instant;

mod erased;
mod stale;

pub(crate) use erased::{AnyEntry, GcVerdict};

use crate::engine::Shared;
use crate::error::QueryError;
use crate::flight::{FetchResult, Flight};
use crate::key::QueryKey;
use crate::options::QueryOptions;
use crate::state::{reduce, Action, QueryState};
use crate::tier::{AfterWrite, PendingWrite, PersistFns};
use crate::timers::{TimerKind, TimerTarget};

/// A future that resolves when a started refetch settles (its outcome is in the cache).
pub(crate) type Settled = BoxFuture<'static, ()>;

pub(crate) struct Entry<T> {
    pub(crate) id: u64,
    pub(crate) key: QueryKey,
    /// CLOCK "second chance" bit: set on use, cleared by the eviction hand.
    referenced: AtomicBool,
    inner: Mutex<EntryInner<T>>,
}

pub(crate) struct EntryInner<T> {
    state: QueryState<T>,
    /// Monotonic time of the last data write: freshness is judged on it.
    updated_at: Option<Instant>,
    flight: Option<Arc<Flight<T>>>,
    /// Bumped by manual writes and resets: an older fetch must not overwrite them.
    data_gen: u64,
    /// Bumped by invalidations: an older fetch's result comes back stale.
    inval_gen: u64,
    /// Observers attached (enabled or not): any of them pins the entry against the gc and
    /// eviction.
    observers: usize,
    /// Observers whose query is enabled: only these make the entry *active* (bulk
    /// refetches and invalidations fetch for it, as in TanStack Query).
    enabled_observers: usize,
    /// The last options used with this key: lets bulk refetches run the fetch function.
    /// Boxed: entries only ever written by hand do not pay for them.
    options: Option<Box<QueryOptions<T>>>,
    /// Stale time of the last caller: judges an unobserved entry (filters, snapshots).
    stale_time: Duration,
    /// The largest gc time any caller or observer asked for (as in TanStack Query: a caller
    /// with a short gc time never shortens what another asked for).
    gc_time: Duration,
    /// Nobody has asked for a gc time yet: `gc_time` is the client default, and the first
    /// caller's value replaces it instead of competing with it.
    gc_time_asked: bool,
    /// When the entry's stale timer is armed (see `stale.rs`); `None`: not armed.
    stale_timer_at: Option<Instant>,
    /// When the gc may collect this entry (None: in use, or never).
    gc_deadline: Option<Instant>,
    /// When the entry's gc timer fires (`None`: none armed). A timer that fires before
    /// `gc_deadline` re-arms itself, so moving the deadline later costs no timer update.
    gc_timer_at: Option<Instant>,
    /// Removed from the cache: nothing schedules work for it any more.
    removed: bool,
    /// Bumped on every state change; observers deliver states by version.
    version: u64,
    /// Observers to tell about changes (copy-on-write: cloned to notify, outside the lock).
    /// `None` until the first observer: most entries never have one.
    listeners: Option<Listeners>,
    /// The second tier was consulted for this entry (or it never needs to be).
    hydrated: bool,
    /// Fresh hits served by the hit path (folded into the client's counters on removal).
    hits: u64,
    /// The next fetch reads the shared tier first (another instance changed the key).
    reload: Reload,
}

/// Whether the next fetch of an entry reads the shared tier first. (Only the `redis`
/// feature's bus ever asks for a reload.)
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reload {
    No,
    /// Messages may have been lost: take stored data only if it is newer than ours.
    IfNewer,
    /// Another instance announced that the shared tier holds the newest data (clocks of
    /// different machines may disagree, so stamps are not compared).
    Trust,
}

/// One observer of an entry, with the settings the entry decides by for it.
#[derive(Clone)]
pub(crate) struct Watcher {
    pub(crate) listener: Arc<dyn EntryListener>,
    /// Its query is enabled (counts towards `enabled_observers`).
    pub(crate) enabled: bool,
    /// Its own stale time: freshness is judged per observer.
    pub(crate) stale_time: Duration,
}

/// Told about changes to an entry, after its lock is released.
pub(crate) trait EntryListener: Send + Sync {
    /// The entry's state changed (its version moved).
    fn changed(&self);
    /// The entry left the cache.
    fn removed(&self);
}

type Listeners = Arc<Vec<Watcher>>;

/// The entry lock, plus notification: when the guard drops and the state's version moved,
/// the lock is released first and then every listener is told.
pub(crate) struct EntryGuard<'a, T> {
    guard: Option<MutexGuard<'a, EntryInner<T>>>,
    version: u64,
}

impl<T> Deref for EntryGuard<'_, T> {
    type Target = EntryInner<T>;
    fn deref(&self) -> &EntryInner<T> {
        self.guard.as_ref().expect("guard present until drop")
    }
}
impl<T> DerefMut for EntryGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut EntryInner<T> {
        self.guard.as_mut().expect("guard present until drop")
    }
}
impl<T> Drop for EntryGuard<'_, T> {
    fn drop(&mut self) {
        let Some(g) = self.guard.take() else { return };
        if g.version == self.version {
            return;
        }
        let Some(listeners) = g.listeners.clone() else {
            return;
        };
        drop(g);
        for w in listeners.iter() {
            w.listener.changed();
        }
    }
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

    /// Applies a state change (and moves the version so observers hear of it).
    pub(crate) fn apply(&mut self, action: Action<T>) {
        reduce(&mut self.state, action);
        self.version += 1;
    }

    fn unused(&self) -> bool {
        self.observers == 0 && self.flight.is_none() && !self.removed
    }

    /// The stale time that judges the entry as a whole (filters, `get_query_state`): with
    /// observers, stale as soon as it is stale for any of them (the shortest of their stale
    /// times); without, the last caller's stale time. As in TanStack Query.
    pub(crate) fn entry_stale_time(&self) -> Duration {
        self.listeners
            .iter()
            .flat_map(|l| l.iter())
            .map(|w| w.stale_time)
            .min()
            .unwrap_or(self.stale_time)
    }

    /// Records a caller's or observer's gc time: the largest asked for wins.
    pub(crate) fn ask_gc_time(&mut self, gc_time: Duration) {
        self.gc_time = if self.gc_time_asked {
            self.gc_time.max(gc_time)
        } else {
            gc_time
        };
        self.gc_time_asked = true;
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
                enabled_observers: 0,
                options: None,
                stale_time,
                gc_time,
                gc_time_asked: false,
                stale_timer_at: None,
                gc_deadline: None,
                gc_timer_at: None,
                removed: false,
                version: 0,
                listeners: None,
                hydrated: false,
                hits: 0,
                reload: Reload::No,
            }),
        }
    }

    /// A new entry is born unused, so born collectable: whatever its creator does next
    /// (fetch, observe, or nothing because user code panicked), it is never left without
    /// a gc timer.
    pub(crate) fn born(&self, shared: &Shared) {
        self.arm_gc_if_unused(&mut self.inner.lock(), shared);
    }

    /// The data held, fresh or stale (a plain read: not a hit, but a use for eviction).
    pub(crate) fn data(&self) -> Option<Arc<T>> {
        let data = self.inner.lock().state.data.clone();
        self.touch();
        data
    }

    /// The data held and its data generation (for a compare-and-write: `set_data_if`).
    pub(crate) fn data_and_gen(&self) -> (Option<Arc<T>>, u64) {
        let g = self.inner.lock();
        (g.state.data.clone(), g.data_gen)
    }

    /// A snapshot whose staleness is judged with `stale_time`, or (`None`) with the
    /// entry's own rule: stale for any observer, else by its last caller.
    pub(crate) fn snapshot(&self, stale_time: Option<Duration>) -> QueryState<T> {
        let g = self.inner.lock();
        g.snapshot(stale_time.unwrap_or_else(|| g.entry_stale_time()))
    }

    /// Wall-clock stamp of the data held.
    pub(crate) fn data_updated_at(&self) -> Option<SystemTime> {
        self.inner.lock().state.data_updated_at
    }

    /// Whether the data held is fresh for `stale_time`.
    pub(crate) fn is_fresh_for(&self, stale_time: Duration) -> bool {
        self.inner.lock().is_fresh(stale_time)
    }

    /// Locks the entry; listeners are notified when the guard drops if the state changed.
    pub(crate) fn lock(&self) -> EntryGuard<'_, T> {
        let g = self.inner.lock();
        let version = g.version;
        EntryGuard {
            guard: Some(g),
            version,
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
        let mut g = self.inner.lock();
        match &g.state.data {
            // An entry that has never seen this query's options (created by a manual
            // write) takes the slow path once, which records them.
            Some(d) if g.options.is_some() && g.is_fresh(stale_time) => {
                let d = d.clone();
                // Counted under the lock we hold anyway: no shared counter on the hit path.
                g.hits += 1;
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
        let mut g = self.lock();
        if g.state.data.is_some() {
            self.touch();
        }
        if g.removed && !even_if_removed {
            return Ok(None);
        }
        // Remember the latest options (for refetches, persistence); skip the copy when the
        // caller passes the same query again.
        if !g.options.as_ref().is_some_and(|o| o.same_as(opts)) {
            g.options = Some(Box::new(opts.clone()));
        }
        g.stale_time = stale_time;
        g.ask_gc_time(shared.defaults.gc_time(opts));
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
        g: &mut EntryInner<T>,
        shared: &Arc<Shared>,
        mut opts: QueryOptions<T>,
    ) -> Result<Arc<Flight<T>>, QueryError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| QueryError::NoRuntime)?;
        // A client rule can persist a key whose query does not say `.persist()`.
        if opts.persist.is_none() {
            opts.persist = shared.persist_rules.find::<T>(&self.key);
        }
        let persist = opts.persist;
        let previous = match &g.flight {
            Some(old) => old.previous.clone(),
            None => g.state.clone(),
        };
        let flight = Arc::new(Flight::new(previous, g.data_gen, g.inval_gen));
        // The first fetch of a cold persisted key reads the second tier first; callers
        // that join this flight share that read too.
        let reload = g.reload;
        let hydrate = (reload != Reload::No || (!g.hydrated && g.state.data.is_none()))
            && persist.is_some()
            && (shared.tier.is_some() || !shared.restored.is_empty());
        g.hydrated = true;
        g.reload = Reload::No;
        g.apply(Action::Fetch);
        g.flight = Some(flight.clone());
        g.gc_deadline = None;
        shared.counters.fetches.incr();
        tracing::debug!(key = %self.key, "fetch start");
        let task = crate::fetch::run_flight(
            shared.clone(),
            self.clone(),
            flight.clone(),
            opts,
            hydrate.then_some(reload),
        );
        let join = handle.spawn(task);
        let _ = flight.abort.set(join.abort_handle());
        Ok(flight)
    }

    /// Adds an observer of `opts`. `false` if the entry has left the cache.
    pub(crate) fn attach(
        &self,
        shared: &Shared,
        listener: Arc<dyn EntryListener>,
        opts: &QueryOptions<T>,
    ) -> bool {
        let mut g = self.inner.lock();
        if g.removed {
            return false;
        }
        g.observers += 1;
        if opts.enabled {
            g.enabled_observers += 1;
        }
        g.ask_gc_time(shared.defaults.gc_time(opts));
        // An entry written only by hand learns how to fetch from its first observer, so
        // bulk refetches and invalidations can fetch for it.
        if g.options.is_none() {
            g.options = Some(Box::new(opts.clone()));
        }
        let watcher = Watcher {
            listener,
            enabled: opts.enabled,
            stale_time: shared.defaults.stale_time(opts),
        };
        Arc::make_mut(g.listeners.get_or_insert_with(Default::default)).push(watcher);
        g.gc_deadline = None;
        self.rearm_stale_timer(&mut g, shared);
        true
    }

    /// Removes an observer; the gc timer starts when the last one leaves.
    pub(crate) fn detach(&self, shared: &Shared, listener: &Arc<dyn EntryListener>) {
        let mut g = self.inner.lock();
        let target = Arc::as_ptr(listener).cast::<u8>();
        let inner = &mut *g;
        if let Some(list) = inner.listeners.as_mut().map(Arc::make_mut) {
            if let Some(i) = list
                .iter()
                .position(|w| Arc::as_ptr(&w.listener).cast::<u8>() == target)
            {
                let gone = list.remove(i);
                inner.observers = inner.observers.saturating_sub(1);
                if gone.enabled {
                    inner.enabled_observers = inner.enabled_observers.saturating_sub(1);
                }
            }
            if list.is_empty() {
                inner.listeners = None;
            }
        }
        self.rearm_stale_timer(&mut g, shared);
        self.arm_gc_if_unused(&mut g, shared);
    }

    /// Records a failed attempt of `flight` (if it is still the entry's current fetch).
    pub(crate) fn attempt_failed(&self, flight: &Arc<Flight<T>>, error: QueryError) {
        let mut g = self.lock();
        if is_current(&g, flight) {
            g.apply(Action::Failed { error });
        }
    }

    /// Settles `flight` with `result`: updates the entry if the flight is still current,
    /// then wakes its waiters. Idempotent: the first settlement wins. Returns the stamp of
    /// the data it stored, if it stored any (the caller then writes it behind).
    pub(crate) fn settle(
        &self,
        shared: &Shared,
        flight: &Arc<Flight<T>>,
        result: FetchResult<T>,
    ) -> Option<(SystemTime, bool)> {
        self.settle_inner(shared, flight, result, None, false)
    }

    /// [`settle`](Self::settle) for a fetch's own result: the second-tier write is queued
    /// *before* the waiters wake, so a caller that then flushes the storage finds it.
    pub(crate) fn settle_and_write(
        &self,
        shared: &Shared,
        flight: &Arc<Flight<T>>,
        result: FetchResult<T>,
    ) {
        self.settle_inner(shared, flight, result, None, true);
    }

    /// Settles `flight` with data read from the second tier (or a restored snapshot):
    /// its wall-clock stamp and invalidated flag are kept, and its age counts against the
    /// stale time. Without `keep_invalidated` the flag is dropped (a fresh cluster result).
    pub(crate) fn settle_stored(
        &self,
        shared: &Shared,
        flight: &Arc<Flight<T>>,
        envelope: crate::storage::Envelope<T>,
        keep_invalidated: bool,
    ) {
        let at = envelope.data_updated_at();
        let age = age_of(at);
        let invalidated = keep_invalidated && envelope.invalidated;
        tracing::debug!(key = %self.key, ?age, "settled from the second tier");
        let data = Ok(Arc::new(envelope.data));
        self.settle_inner(shared, flight, data, Some((at, invalidated, age)), false);
    }

    fn settle_inner(
        &self,
        shared: &Shared,
        flight: &Arc<Flight<T>>,
        mut result: FetchResult<T>,
        hydrated: Option<(SystemTime, bool, Duration)>,
        write_behind: bool,
    ) -> Option<(SystemTime, bool)> {
        let mut stored = None;
        let mut g = self.lock();
        if is_current(&g, flight) {
            g.flight = None;
            match &result {
                Ok(data) if g.data_gen == flight.data_gen => {
                    let (at, invalidated, age) = match hydrated {
                        Some(h) => h,
                        None => (
                            SystemTime::now(),
                            g.inval_gen != flight.inval_gen,
                            Duration::ZERO,
                        ),
                    };
                    g.apply(Action::Success {
                        data: data.clone(),
                        at,
                        invalidated,
                    });
                    let now = Instant::now();
                    g.updated_at = Some(now.checked_sub(age).unwrap_or(now));
                    stored = g.state.data_updated_at.map(|at| (at, invalidated));
                }
                // A manual write landed meanwhile: the newer manual data stays, and it is
                // what this flight's callers get when it was a hydration.
                Ok(_) => {
                    g.apply(Action::Superseded);
                    if hydrated.is_some() {
                        if let Some(d) = g.state.data.clone() {
                            result = Ok(d);
                        }
                    }
                }
                Err(QueryError::Cancelled) => {
                    let previous = flight.previous.clone();
                    g.apply(Action::Revert { previous });
                }
                Err(error) => g.apply(Action::Error {
                    error: error.clone(),
                    at: SystemTime::now(),
                }),
            }
            self.rearm_stale_timer(&mut g, shared);
            self.arm_gc_if_unused(&mut g, shared);
        }
        drop(g);
        if write_behind && stored.is_some() {
            let _ = self.write_behind(shared, None);
        }
        flight.resolve(result);
        stored
    }

    /// Starts a background fetch unless one is in flight (after a stale hydration).
    pub(crate) fn refresh(self: &Arc<Self>, shared: &Arc<Shared>, opts: QueryOptions<T>) {
        let mut g = self.lock();
        if g.flight.is_none() && !g.removed {
            if let Err(error) = self.begin_flight(&mut g, shared, opts) {
                tracing::debug!(key = %self.key, %error, "background refresh did not start");
            }
        }
    }

    /// Writes the entry's current data to the second tier now (cluster-dedup lease holder).
    /// Returns how it landed, if it did.
    #[cfg(feature = "redis")]
    pub(crate) async fn write_now(&self, shared: &Shared) -> Option<crate::tier::Landed> {
        let tier = shared.tier.as_ref()?;
        let write = self.pending_write(shared, None)?;
        tier.write_now(&shared.counters, &write).await
    }

    /// Queues a second-tier write of the entry's current data, if the query is persisted;
    /// `after` runs once it has landed. `Err` gives `after` back when nothing was queued
    /// (no storage, not persisted, or no data).
    pub(crate) fn write_behind(
        &self,
        shared: &Shared,
        after: Option<AfterWrite>,
    ) -> Result<(), Option<AfterWrite>> {
        let Some(tier) = &shared.tier else {
            return Err(after);
        };
        let g = self.inner.lock();
        let ready = self.persist_fns(&g, shared).is_some()
            && g.state.data.is_some()
            && g.state.data_updated_at.is_some();
        drop(g);
        if !ready {
            return Err(after);
        }
        match self.pending_write(shared, after) {
            Some(write) => {
                tier.write(&shared.counters, write);
                Ok(())
            }
            // Raced with a reset: its hook was dropped, which counts as run.
            None => Err(None),
        }
    }

    /// The entry's current data as a second-tier write, if the query is persisted and
    /// has data.
    fn pending_write(&self, shared: &Shared, after: Option<AfterWrite>) -> Option<PendingWrite<T>> {
        let g = self.inner.lock();
        let fns = self.persist_fns(&g, shared)?;
        let (Some(data), Some(at)) = (g.state.data.clone(), g.state.data_updated_at) else {
            return None;
        };
        Some(PendingWrite {
            key: self.key.to_string(),
            fns,
            data,
            at,
            invalidated: g.state.is_invalidated,
            gc_time: g.gc_time,
            after,
        })
    }

    /// How the entry's data is persisted: as its query's options say, else as a client
    /// rule for its key and type says (`None`: not persisted).
    pub(crate) fn persist_fns(&self, g: &EntryInner<T>, shared: &Shared) -> Option<PersistFns<T>> {
        g.options
            .as_ref()
            .and_then(|o| o.persist)
            .or_else(|| shared.persist_rules.find::<T>(&self.key))
    }

    /// Arms the gc timer when nothing uses the entry any more.
    pub(crate) fn arm_gc_if_unused(&self, g: &mut EntryInner<T>, shared: &Shared) {
        if !g.unused() {
            return;
        }
        match crate::deadline::after(g.gc_time) {
            Some(at) => {
                g.gc_deadline = Some(at);
                // A timer armed to fire no later re-arms itself for the new deadline when
                // it fires (see `AnyEntry::gc_timer_fired`): the common case (a deadline
                // that only moves later) touches no shared timer queue.
                if g.gc_timer_at.is_some_and(|t| t <= at) {
                    return;
                }
                g.gc_timer_at = Some(at);
                let target = TimerTarget::Entry(self.key.clone());
                shared.timers.arm(self.id, TimerKind::Gc, at, target);
            }
            None => g.gc_deadline = None, // gc_time "forever"
        }
    }

    /// Writes data by hand. The write wins over any fetch that started before it.
    pub(crate) fn set_data(&self, shared: &Shared, data: Arc<T>) {
        let mut g = self.lock();
        self.write_locked(&mut g, shared, data);
    }

    /// Writes `data` only if the entry still holds `expected` at data generation `gen`
    /// (the check and the write under one lock). `false`: someone wrote in between.
    pub(crate) fn set_data_if(
        &self,
        shared: &Shared,
        expected: Option<&Arc<T>>,
        gen: u64,
        data: Arc<T>,
    ) -> bool {
        let mut g = self.lock();
        let unchanged = g.data_gen == gen
            && match (&g.state.data, expected) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
        if unchanged {
            self.write_locked(&mut g, shared, data);
        }
        unchanged
    }

    fn write_locked(&self, g: &mut EntryGuard<'_, T>, shared: &Shared, data: Arc<T>) {
        g.hydrated = true;
        if g.state.data.is_some() {
            // Overwriting data is a use; the first write is the insertion itself.
            self.touch();
        }
        g.data_gen += 1;
        let fetching = g.flight.is_some();
        g.apply(Action::Success {
            data,
            at: SystemTime::now(),
            invalidated: false,
        });
        if fetching {
            // The fetch goes on for its waiters; the entry still shows it.
            g.apply(Action::FetchGoesOn);
        }
        g.updated_at = Some(Instant::now());
        self.rearm_stale_timer(g, shared);
        self.arm_gc_if_unused(g, shared);
    }

    fn typed_invalidate(self: &Arc<Self>, shared: &Arc<Shared>) -> Option<Settled> {
        let mut g = self.lock();
        g.inval_gen += 1;
        g.apply(Action::Invalidate);
        // Stale for everyone now: no stale notice is due any more.
        self.rearm_stale_timer(&mut g, shared);
        // (The client writes the invalidated flag to the second tier, then announces it.)
        // Only an entry with an enabled observer refetches; a disabled query is marked
        // stale and waits for an explicit fetch (as in TanStack Query).
        if g.enabled_observers == 0 || g.removed {
            return None;
        }
        // Observed: refetch now. A fetch that began before the invalidation would come
        // back stale, so a new one replaces it (its own waiters still get its result).
        let opts = g.options.as_deref().cloned()?;
        let flight = self.begin_flight(&mut g, shared, opts).ok()?;
        Some(settled(flight))
    }

    fn typed_refetch(self: &Arc<Self>, shared: &Arc<Shared>) -> Option<Settled> {
        let mut g = self.lock();
        // Observed only by disabled queries: disabled, so bulk refetches leave it alone (an
        // unobserved entry is not disabled: its last caller wanted it fetched).
        let disabled = g.observers > 0 && g.enabled_observers == 0;
        if g.removed || disabled {
            return None;
        }
        if let Some(f) = &g.flight {
            return Some(settled(f.clone()));
        }
        let opts = g.options.as_deref().cloned()?;
        let flight = self.begin_flight(&mut g, shared, opts).ok()?;
        Some(settled(flight))
    }

    /// Cancels the fetch in flight, if any; the future resolves once its task has stopped.
    fn typed_cancel(&self, shared: &Shared) -> Option<Settled> {
        let f = self.inner.lock().flight.clone()?;
        self.settle(shared, &f, Err(QueryError::Cancelled));
        if let Some(h) = f.abort.get() {
            h.abort();
        }
        Some(async move { f.stopped().await }.boxed())
    }
}

/// How long ago a wall-clock stamp was (zero for a stamp in the future: clocks differ).
pub(crate) fn age_of(at: SystemTime) -> Duration {
    SystemTime::now()
        .duration_since(at)
        .unwrap_or(Duration::ZERO)
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
