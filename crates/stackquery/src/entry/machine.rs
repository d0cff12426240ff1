//! The sealed state machine of one cache entry.
//!
//! Everything that can happen to an entry is an [`Event`]; [`Machine::transition`] is the
//! one function that changes an entry. It owns the generations, the monotonic `updated_at`,
//! the flight, the fetch status and the version, and it returns the [`Effects`] of the
//! change — start a fetch, wake a flight's waiters, write behind, announce, notify, move a
//! timer — for the engine to run in one place and one order. Nothing outside this file
//! reads or writes a machine's fields.
//!
//! [`Cell`] puts a machine behind its lock (`crate::sync::Mutex`, so the same file is
//! model-checked under shuttle: `tests/shuttle_flight.rs` compiles it with `#[path]`).
//! Timer changes are the one effect applied before the lock is released: the timer queue
//! must agree with the deadlines the machine recorded, or a late arm could outlive a
//! removal. Everything else — user code included — runs after.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::error::QueryError;
use crate::flight::{FetchResult, Flight};
use crate::notify::{CowList, Snapshot};
use crate::options::QueryOptions;
use crate::state::{reduce, Action, QueryState};

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

/// Told about changes to an entry, after its lock is released.
pub(crate) trait EntryListener: Send + Sync {
    /// The entry's state changed (its version moved), or its data just turned stale.
    fn changed(&self);
    /// The entry left the cache.
    fn removed(&self);
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

/// The observers of an entry as they were when a change happened (notified outside the
/// lock: the entry keeps them in the notification primitive's copy-on-write list).
pub(crate) type Listeners = Snapshot<Watcher>;

/// How a typed call treats cached data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Fresh: return. Stale: return and refresh in the background. None: fetch.
    Swr,
    /// Any data: return (no refresh). None: fetch.
    Ensure,
    /// Always fetch (joining a fetch in flight), return the fetched value.
    Force,
}

/// Where settled data came from.
pub(crate) enum Source {
    /// The entry's own fetch: stamped now, stale if an invalidation came meanwhile.
    Fetch,
    /// The second tier, a peer's result or a snapshot: its stamp and age are kept.
    Stored {
        at: SystemTime,
        invalidated: bool,
        age: Duration,
    },
}

/// Something that happens to an entry.
pub(crate) enum Event<'a, T> {
    /// A new entry: born unused, so born collectable.
    Born,
    /// A typed call (`fetch_query` and friends, an observer's first fetch) asks for data.
    Ask(Ask<'a, T>),
    /// A background refresh after a stale hydration (unless a fetch is in flight).
    Refresh {
        opts: &'a QueryOptions<T>,
        can_spawn: bool,
    },
    /// An observer joins.
    Attach {
        watcher: Watcher,
        opts: &'a QueryOptions<T>,
        gc_time: Duration,
    },
    /// An observer leaves.
    Detach {
        listener: &'a Arc<dyn EntryListener>,
    },
    /// One attempt of `flight` failed (a retry may follow).
    AttemptFailed {
        flight: &'a Arc<Flight<T>>,
        error: QueryError,
    },
    /// `flight` ended with `result`, from `source`; stored data is written behind when
    /// `write` (a fetch's own result; the cluster's lease holder writes it itself).
    Settled {
        flight: &'a Arc<Flight<T>>,
        result: FetchResult<T>,
        source: Source,
        write: bool,
    },
    /// A manual write; with `expect`, only if the entry still holds that data at that data
    /// generation (a compare-and-write).
    Write {
        data: Arc<T>,
        expect: Option<(Option<&'a Arc<T>>, u64)>,
    },
    /// A snapshot item: taken only if newer than the data held.
    Restore {
        data: Arc<T>,
        at: SystemTime,
        invalidated: bool,
    },
    /// `invalidate_queries`: stale now; an active entry refetches.
    Invalidate { can_spawn: bool },
    /// `refetch_queries`: refetch unless disabled (joining a fetch in flight).
    Refetch { can_spawn: bool },
    /// `cancel_queries`: the fetch in flight ends as cancelled.
    Cancel,
    /// `reset_queries`: back to the initial state.
    Reset,
    /// The entry left the cache: nothing writes into it or schedules work for it again.
    /// (Called under the cache's lock: it tells nobody.)
    Remove,
    /// After `Remove`, with no lock held: the observers hear that the entry is gone.
    TellRemoved,
    /// Another instance changed the key: stale, maybe reload from the shared tier, and an
    /// active idle entry refetches now (`refetch_now`) or is reported for a later refetch.
    RemoteChange {
        reload: Reload,
        refetch_now: bool,
        can_spawn: bool,
    },
    /// The stale timer fired: observers recompute, the timer moves on.
    StaleTimerFired,
    /// The gc timer fired at `now`.
    GcTimerFired { now: Instant },
}

/// What a typed call asks of an entry.
pub(crate) struct Ask<'a, T> {
    pub(crate) opts: &'a QueryOptions<T>,
    pub(crate) stale_time: Duration,
    pub(crate) gc_time: Duration,
    pub(crate) mode: Mode,
    /// Go on even if the entry left the cache (the caller gave up looking it up again).
    pub(crate) even_if_removed: bool,
    /// A fetch can be spawned (a runtime is present).
    pub(crate) can_spawn: bool,
}

/// What a typed call got.
pub(crate) enum Step<T> {
    /// Data from the cache: `fresh` is false for a stale hit.
    Ready { data: Arc<T>, fresh: bool },
    /// Wait for a flight (`joined`: one already in flight).
    Wait {
        flight: Arc<Flight<T>>,
        joined: bool,
    },
}

/// What the gc does when an entry's timer fires.
pub(crate) enum GcVerdict {
    Collect,
    Rearm(Instant),
    Keep,
}

/// The answer of a transition to its caller (the effects are separate).
pub(crate) enum Outcome<T> {
    /// Nothing to report.
    Done,
    /// The entry has left the cache (an `Ask` without `even_if_removed`).
    Removed,
    Step(Step<T>),
    /// A fetch could not start: `Ask` fails with it.
    Failed(QueryError),
    /// A flight to wait on (`Invalidate`, `Refetch`, `Cancel`).
    Flight(Arc<Flight<T>>),
    /// `Attach`: joined; `Write`: written; `Settled`: data stored; `RemoteChange` without
    /// `refetch_now`: the entry should refetch later.
    Yes,
    /// The opposite of `Yes`.
    No,
    Gc(GcVerdict),
}

/// A fetch to start (the engine spawns its task).
pub(crate) struct StartFetch<T> {
    pub(crate) flight: Arc<Flight<T>>,
    pub(crate) opts: QueryOptions<T>,
    /// Read the second tier first, with this reload rule, if the query is persisted and
    /// something can be read (`None`: go straight to the fetch function).
    pub(crate) hydrate: Option<Reload>,
}

/// An entry's deadline timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// When the gc may collect the entry.
    Gc,
    /// When its data turns stale for one of its observers.
    Stale,
}

/// Where a cell applies its timer changes (the client's timer queue, keyed by entry).
pub(crate) trait TimerSink {
    fn arm(&self, timer: Timer, at: Instant);
    fn disarm(&self, timer: Timer);
}

/// What the engine runs after a transition, in this order: start the fetch, write behind,
/// announce, notify, wake the settled flight's waiters.
pub(crate) struct Effects<T> {
    /// Timer changes (applied by [`Cell::transition`] under the lock).
    timers: [Option<(Timer, Option<Instant>)>; 2],
    /// Boxed: most transitions start no fetch, and the effects are moved around.
    pub(crate) fetch: Option<Box<StartFetch<T>>>,
    /// Write the entry's state to the second tier.
    pub(crate) write: bool,
    /// Tell the other instances what the write did (a manual write: `Set`).
    pub(crate) announce: bool,
    /// Observers to tell that the state changed.
    pub(crate) notify: Option<Listeners>,
    /// Observers to tell that the entry left the cache.
    pub(crate) removed: Option<Listeners>,
    /// Wake the waiters of a settled (or cancelled) flight with its result.
    pub(crate) resolve: Option<(Arc<Flight<T>>, FetchResult<T>)>,
    /// The entry's data was used (a read or an overwrite): a second chance for eviction.
    pub(crate) used: bool,
    /// The gc deadline restarts if nothing uses the entry (internal to the transition).
    arm_gc: bool,
}

impl<T> Default for Effects<T> {
    fn default() -> Self {
        Effects {
            timers: [None, None],
            fetch: None,
            write: false,
            announce: false,
            notify: None,
            removed: None,
            resolve: None,
            used: false,
            arm_gc: false,
        }
    }
}

/// What a persisted write of the entry carries (read by the engine after a transition).
pub(crate) struct Persisted<T> {
    pub(crate) data: Arc<T>,
    pub(crate) at: SystemTime,
    pub(crate) invalidated: bool,
    pub(crate) gc_time: Duration,
}

/// The state of one entry. Every field is private: [`transition`](Self::transition)
/// changes them, the read methods below read them.
pub(crate) struct Machine<T> {
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
    /// When the stale timer is armed; `None`: not armed.
    stale_timer_at: Option<Instant>,
    /// When the gc may collect this entry (None: in use, or never).
    gc_deadline: Option<Instant>,
    /// When the gc timer fires (`None`: none armed). A timer that fires before
    /// `gc_deadline` re-arms itself, so moving the deadline later costs no timer update.
    gc_timer_at: Option<Instant>,
    /// Removed from the cache: nothing schedules work for it any more.
    removed: bool,
    /// Bumped on every state change; observers deliver states by version.
    version: u64,
    /// Observers to tell about changes (copy-on-write; empty, it allocates nothing: most
    /// entries never have one).
    listeners: CowList<Watcher>,
    /// The second tier was consulted for this entry (or it never needs to be).
    hydrated: bool,
    /// Fresh hits served by the hit path (folded into the client's counters on removal).
    hits: u64,
    /// The next fetch reads the shared tier first (another instance changed the key).
    reload: Reload,
}

impl<T> Machine<T> {
    pub(crate) fn new(stale_time: Duration, gc_time: Duration) -> Self {
        Machine {
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
            listeners: CowList::default(),
            hydrated: false,
            hits: 0,
            reload: Reload::No,
        }
    }

    // ---- reads -------------------------------------------------------------------------

    #[inline(always)]
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

    /// The hit path: fresh data, counted as a hit, or nothing. An entry that has never
    /// seen a query's options (created by a manual write) takes the slow path once, which
    /// records them.
    #[inline(always)]
    pub(crate) fn hit(&mut self, stale_time: Duration) -> Option<Arc<T>> {
        match &self.state.data {
            Some(d) if self.options.is_some() && self.is_fresh(stale_time) => {
                let d = d.clone();
                self.hits += 1;
                Some(d)
            }
            _ => None,
        }
    }

    pub(crate) fn data(&self) -> Option<&Arc<T>> {
        self.state.data.as_ref()
    }

    /// The data held and its data generation (for a compare-and-write).
    pub(crate) fn data_and_gen(&self) -> (Option<Arc<T>>, u64) {
        (self.state.data.clone(), self.data_gen)
    }

    pub(crate) fn data_updated_at(&self) -> Option<SystemTime> {
        self.state.data_updated_at
    }

    /// A snapshot whose staleness is judged with `stale_time`, or (`None`) with the
    /// entry's own rule.
    pub(crate) fn snapshot(&self, stale_time: Option<Duration>) -> QueryState<T> {
        let stale_time = stale_time.unwrap_or_else(|| self.entry_stale_time());
        let mut s = self.state.clone();
        s.stale = !(s.data.is_some() && self.is_fresh(stale_time));
        s
    }

    /// The stale time that judges the entry as a whole (filters, `get_query_state`): with
    /// observers, stale as soon as it is stale for any of them (the shortest of their stale
    /// times); without, the last caller's stale time. As in TanStack Query.
    fn entry_stale_time(&self) -> Duration {
        self.watchers()
            .map(|w| w.stale_time)
            .min()
            .unwrap_or(self.stale_time)
    }

    pub(crate) fn is_stale(&self) -> bool {
        !(self.state.data.is_some() && self.is_fresh(self.entry_stale_time()))
    }

    /// Bumped on every state change (the model checker compares the versions an
    /// observer saw with the entry's last).
    #[allow(dead_code)]
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits
    }

    /// Has observers to tell about changes (or about its removal).
    pub(crate) fn has_listeners(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// Observed or fetching: never evicted or collected.
    pub(crate) fn is_pinned(&self) -> bool {
        self.observers > 0 || self.flight.is_some()
    }

    pub(crate) fn is_active(&self) -> bool {
        self.enabled_observers > 0
    }

    pub(crate) fn is_fetching(&self) -> bool {
        self.flight.is_some()
    }

    /// The options the entry was last used with.
    pub(crate) fn options(&self) -> Option<&QueryOptions<T>> {
        self.options.as_deref()
    }

    /// What a second-tier write of the entry carries (`None`: no data).
    pub(crate) fn persisted(&self) -> Option<Persisted<T>> {
        Some(Persisted {
            data: self.state.data.clone()?,
            at: self.state.data_updated_at?,
            invalidated: self.state.is_invalidated,
            gc_time: self.gc_time,
        })
    }

    fn watchers(&self) -> impl Iterator<Item = &Watcher> {
        self.listeners.iter()
    }

    /// The observers to notify of a change (`None`: nobody, no clone).
    fn observers_to_tell(&self) -> Option<Listeners> {
        (!self.listeners.is_empty()).then(|| self.listeners.snapshot())
    }

    fn unused(&self) -> bool {
        self.observers == 0 && self.flight.is_none() && !self.removed
    }

    fn is_current(&self, flight: &Arc<Flight<T>>) -> bool {
        self.flight.as_ref().is_some_and(|f| Arc::ptr_eq(f, flight))
    }

    // ---- the transition ----------------------------------------------------------------

    /// Applies `event`: the one place an entry changes. Fills in `fx` (empty on entry)
    /// with the effects to run, and returns the answer for the caller. (An out-parameter:
    /// the effects are large, and returning them by value costs a copy per transition.)
    pub(crate) fn transition(&mut self, event: Event<'_, T>, fx: &mut Effects<T>) -> Outcome<T> {
        let version = self.version;
        let outcome = match event {
            Event::Born => {
                fx.arm_gc = true;
                Outcome::Done
            }
            Event::Ask(ask) => self.ask(fx, ask),
            Event::Refresh { opts, can_spawn } => {
                if self.flight.is_none() && !self.removed && can_spawn {
                    self.begin_fetch(fx, opts.clone());
                }
                Outcome::Done
            }
            Event::Attach {
                watcher,
                opts,
                gc_time,
            } => self.attach(watcher, opts, gc_time),
            Event::Detach { listener } => {
                self.detach(listener);
                fx.arm_gc = true;
                Outcome::Done
            }
            Event::AttemptFailed { flight, error } => {
                if self.is_current(flight) {
                    self.apply(Action::Failed { error });
                }
                Outcome::Done
            }
            Event::Settled {
                flight,
                result,
                source,
                write,
            } => {
                let outcome = self.settle(fx, flight, result, source);
                fx.write = write && matches!(outcome, Outcome::Yes);
                outcome
            }
            Event::Write { data, expect } => {
                let unchanged = expect.is_none_or(|(expected, gen)| {
                    self.data_gen == gen
                        && match (&self.state.data, expected) {
                            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                            (None, None) => true,
                            _ => false,
                        }
                });
                if !unchanged {
                    return Outcome::No;
                }
                // Overwriting data is a use; the first write is the insertion itself.
                fx.used = self.state.data.is_some();
                fx.arm_gc = true;
                self.hydrated = true;
                self.data_gen += 1;
                self.take_data(data, SystemTime::now(), false, Duration::ZERO);
                fx.write = true;
                fx.announce = true;
                Outcome::Yes
            }
            Event::Restore {
                data,
                at,
                invalidated,
            } => {
                // Newer data wins: a snapshot never overwrites fresher data in memory.
                if self
                    .state
                    .data_updated_at
                    .is_none_or(|current| current < at)
                {
                    self.hydrated = true;
                    let age = crate::deadline::age_of(at);
                    self.take_data(data, at, invalidated, age);
                }
                Outcome::Done
            }
            Event::Invalidate { can_spawn } => {
                self.inval_gen += 1;
                self.apply(Action::Invalidate);
                // Only an entry with an enabled observer refetches; a disabled query is
                // marked stale and waits for an explicit fetch (as in TanStack Query). A
                // fetch that began before the invalidation would come back stale, so a new
                // one replaces it (its own waiters still get its result).
                match self.options.as_deref().cloned() {
                    Some(opts) if self.enabled_observers > 0 && !self.removed && can_spawn => {
                        Outcome::Flight(self.begin_fetch(fx, opts))
                    }
                    _ => Outcome::Done,
                }
            }
            Event::Refetch { can_spawn } => {
                // Observed only by disabled queries: disabled, so bulk refetches leave it
                // alone (an unobserved entry is not disabled: its last caller wanted it).
                let disabled = self.observers > 0 && self.enabled_observers == 0;
                match (&self.flight, self.options.as_deref()) {
                    _ if self.removed || disabled => Outcome::Done,
                    (Some(f), _) => Outcome::Flight(f.clone()),
                    (None, Some(opts)) if can_spawn => {
                        let opts = opts.clone();
                        Outcome::Flight(self.begin_fetch(fx, opts))
                    }
                    _ => Outcome::Done,
                }
            }
            Event::Cancel => match self.flight.clone() {
                Some(f) => {
                    self.settle(fx, &f, Err(QueryError::Cancelled), Source::Fetch);
                    Outcome::Flight(f)
                }
                None => Outcome::Done,
            },
            Event::Reset => {
                self.data_gen += 1;
                self.inval_gen += 1;
                // A fetch in flight goes on for its waiters but no longer writes here.
                self.flight = None;
                self.updated_at = None;
                self.apply(Action::Reset);
                fx.arm_gc = true;
                Outcome::Done
            }
            Event::Remove => {
                self.removed = true;
                self.flight = None;
                self.gc_deadline = None;
                self.gc_timer_at = None;
                Outcome::Done
            }
            Event::TellRemoved => {
                fx.removed = Some(std::mem::take(&mut self.listeners).snapshot());
                Outcome::Done
            }
            Event::RemoteChange {
                reload,
                refetch_now,
                can_spawn,
            } => {
                if self.removed {
                    return Outcome::No;
                }
                self.inval_gen += 1;
                self.apply(Action::Invalidate);
                self.reload = self.reload.max(reload);
                if self.enabled_observers == 0 || self.flight.is_some() {
                    Outcome::No
                } else if !refetch_now {
                    if self.options.is_some() {
                        Outcome::Yes
                    } else {
                        Outcome::No
                    }
                } else {
                    if let Some(opts) = self.options.as_deref().cloned().filter(|_| can_spawn) {
                        self.begin_fetch(fx, opts);
                    }
                    Outcome::No
                }
            }
            Event::StaleTimerFired => {
                self.stale_timer_at = None; // the queue no longer holds it
                                            // Nothing in the state changed, but an observer's view did: it recomputes.
                fx.notify = self.observers_to_tell();
                Outcome::Done
            }
            Event::GcTimerFired { now } => {
                self.gc_timer_at = None;
                let verdict = match self.gc_deadline {
                    Some(d) if self.unused() && d <= now => GcVerdict::Collect,
                    Some(d) if self.unused() => {
                        self.gc_timer_at = Some(d);
                        GcVerdict::Rearm(d)
                    }
                    _ => GcVerdict::Keep,
                };
                // The caller arms the timer again (or collects): no timer effect here.
                return Outcome::Gc(verdict);
            }
        };
        self.bookkeeping(fx);
        if self.version != version && fx.notify.is_none() {
            fx.notify = self.observers_to_tell();
        }
        outcome
    }

    fn ask(&mut self, fx: &mut Effects<T>, ask: Ask<'_, T>) -> Outcome<T> {
        let Ask {
            opts,
            stale_time,
            gc_time,
            mode,
            even_if_removed,
            can_spawn,
        } = ask;
        fx.used = self.state.data.is_some();
        if self.removed && !even_if_removed {
            return Outcome::Removed;
        }
        // Remember the latest options (for refetches, persistence); skip the copy when the
        // caller passes the same query again.
        if !self.options.as_ref().is_some_and(|o| o.same_as(opts)) {
            self.options = Some(Box::new(opts.clone()));
        }
        self.stale_time = stale_time;
        self.ask_gc_time(gc_time);
        if mode != Mode::Force {
            if let Some(data) = self.state.data.clone() {
                let fresh = self.is_fresh(stale_time);
                // A failed start (no runtime) still serves the stale data.
                if !fresh && mode == Mode::Swr && self.flight.is_none() {
                    if can_spawn {
                        self.begin_fetch(fx, opts.clone());
                    } else {
                        fx.arm_gc = true;
                    }
                }
                return Outcome::Step(Step::Ready { data, fresh });
            }
        }
        if let Some(f) = &self.flight {
            return Outcome::Step(Step::Wait {
                flight: f.clone(),
                joined: true,
            });
        }
        if !can_spawn {
            fx.arm_gc = true;
            return Outcome::Failed(QueryError::NoRuntime);
        }
        Outcome::Step(Step::Wait {
            flight: self.begin_fetch(fx, opts.clone()),
            joined: false,
        })
    }

    /// Starts a fetch. A flight already attached is detached: its waiters still get its
    /// result, but the entry takes the new one.
    fn begin_fetch(&mut self, fx: &mut Effects<T>, opts: QueryOptions<T>) -> Arc<Flight<T>> {
        let previous = match &self.flight {
            Some(old) => old.previous.clone(),
            None => self.state.clone(),
        };
        let flight = Arc::new(Flight::new(previous, self.data_gen, self.inval_gen));
        // The first fetch of a cold key (or one another instance changed) may read the
        // second tier first; callers that join this flight share that read too.
        let reload = self.reload;
        let hydrate = reload != Reload::No || (!self.hydrated && self.state.data.is_none());
        self.hydrated = true;
        self.reload = Reload::No;
        self.apply(Action::Fetch);
        self.flight = Some(flight.clone());
        fx.fetch = Some(Box::new(StartFetch {
            flight: flight.clone(),
            opts,
            hydrate: hydrate.then_some(reload),
        }));
        flight
    }

    fn attach(
        &mut self,
        watcher: Watcher,
        opts: &QueryOptions<T>,
        gc_time: Duration,
    ) -> Outcome<T> {
        if self.removed {
            return Outcome::No;
        }
        self.observers += 1;
        if watcher.enabled {
            self.enabled_observers += 1;
        }
        self.ask_gc_time(gc_time);
        // An entry written only by hand learns how to fetch from its first observer, so
        // bulk refetches and invalidations can fetch for it.
        if self.options.is_none() {
            self.options = Some(Box::new(opts.clone()));
        }
        self.listeners.push(watcher);
        Outcome::Yes
    }

    fn detach(&mut self, listener: &Arc<dyn EntryListener>) {
        let target = Arc::as_ptr(listener).cast::<u8>();
        let gone = self
            .listeners
            .remove_where(|w| Arc::as_ptr(&w.listener).cast::<u8>() == target);
        if let Some(gone) = gone {
            self.observers = self.observers.saturating_sub(1);
            if gone.enabled {
                self.enabled_observers = self.enabled_observers.saturating_sub(1);
            }
        }
    }

    /// Settles `flight` if it is still current; its waiters are woken either way (the
    /// first settlement wins). `Yes`: data was stored.
    fn settle(
        &mut self,
        fx: &mut Effects<T>,
        flight: &Arc<Flight<T>>,
        mut result: FetchResult<T>,
        source: Source,
    ) -> Outcome<T> {
        let mut stored = false;
        if self.is_current(flight) {
            self.flight = None;
            fx.arm_gc = true;
            match &result {
                Ok(data) if self.data_gen == flight.data_gen => {
                    let (at, invalidated, age) = match source {
                        Source::Stored {
                            at,
                            invalidated,
                            age,
                        } => (at, invalidated, age),
                        Source::Fetch => (
                            SystemTime::now(),
                            self.inval_gen != flight.inval_gen,
                            Duration::ZERO,
                        ),
                    };
                    self.take_data(data.clone(), at, invalidated, age);
                    stored = self.state.data_updated_at.is_some();
                }
                // A manual write landed meanwhile: the newer manual data stays, and it is
                // what this flight's callers get when it was a hydration.
                Ok(_) => {
                    self.apply(Action::Superseded);
                    if matches!(source, Source::Stored { .. }) {
                        if let Some(d) = self.state.data.clone() {
                            result = Ok(d);
                        }
                    }
                }
                Err(QueryError::Cancelled) => {
                    let previous = flight.previous.clone();
                    self.apply(Action::Revert { previous });
                }
                Err(error) => self.apply(Action::Error {
                    error: error.clone(),
                    at: SystemTime::now(),
                }),
            }
        }
        fx.resolve = Some((flight.clone(), result));
        if stored {
            Outcome::Yes
        } else {
            Outcome::No
        }
    }

    /// Takes data `age` old, stamped `at`; a fetch in flight goes on for its waiters and
    /// the entry still shows it.
    fn take_data(&mut self, data: Arc<T>, at: SystemTime, invalidated: bool, age: Duration) {
        self.apply(Action::Success {
            data,
            at,
            invalidated,
        });
        if self.flight.is_some() {
            self.apply(Action::FetchGoesOn);
        }
        let now = Instant::now();
        self.updated_at = Some(now.checked_sub(age).unwrap_or(now));
    }

    fn apply(&mut self, action: Action<T>) {
        reduce(&mut self.state, action);
        self.version += 1;
    }

    /// Records a caller's or observer's gc time: the largest asked for wins.
    fn ask_gc_time(&mut self, gc_time: Duration) {
        self.gc_time = if self.gc_time_asked {
            self.gc_time.max(gc_time)
        } else {
            gc_time
        };
        self.gc_time_asked = true;
    }

    /// After every transition: the stale timer follows the data and the observers; the gc
    /// deadline ends while something uses the entry, and restarts after the transitions
    /// that can leave it unused (birth, a settled fetch, a write, a reset, a departing
    /// observer, a fetch that could not start).
    fn bookkeeping(&mut self, fx: &mut Effects<T>) {
        // An unobserved entry without a stale timer has none to move: no clock read.
        if !self.listeners.is_empty() || self.stale_timer_at.is_some() {
            let next = self.next_stale_deadline(Instant::now());
            if next != self.stale_timer_at {
                self.stale_timer_at = next;
                fx.timers[0] = Some((Timer::Stale, next));
            }
        }
        if !self.unused() {
            self.gc_deadline = None;
            return;
        }
        if !fx.arm_gc {
            return;
        }
        match crate::deadline::after(self.gc_time) {
            Some(at) => {
                self.gc_deadline = Some(at);
                // A timer armed to fire no later re-arms itself for the new deadline when
                // it fires (`GcTimerFired`): the common case (a deadline that only moves
                // later) touches no shared timer queue.
                if self.gc_timer_at.is_none_or(|t| t > at) {
                    self.gc_timer_at = Some(at);
                    fx.timers[1] = Some((Timer::Gc, Some(at)));
                }
            }
            None => self.gc_deadline = None, // gc_time "forever"
        }
    }

    /// The earliest moment after `now` at which the data turns stale for one of the
    /// observers (`None`: no observer, no data, already invalidated, or never).
    fn next_stale_deadline(&self, now: Instant) -> Option<Instant> {
        if self.removed || self.state.is_invalidated || self.state.data.is_none() {
            return None;
        }
        let written = self.updated_at?;
        self.watchers()
            // `Duration::MAX` (or anything past the clock's range) is "never stale".
            .filter_map(|w| crate::deadline::checked_after(written, w.stale_time))
            .filter(|at| *at > now)
            .min()
    }
}

/// A machine behind its lock.
pub(crate) struct Cell<T> {
    machine: crate::sync::Mutex<Machine<T>>,
}

impl<T> Cell<T> {
    pub(crate) fn new(machine: Machine<T>) -> Self {
        Cell {
            machine: crate::sync::Mutex::new(machine),
        }
    }

    /// Runs `event` through the machine under the lock, applies the timer changes to
    /// `timers` before releasing it, and leaves the rest of the effects in `fx`.
    pub(crate) fn transition(
        &self,
        event: Event<'_, T>,
        fx: &mut Effects<T>,
        timers: &dyn TimerSink,
    ) -> Outcome<T> {
        let mut m = self.machine.lock();
        let outcome = m.transition(event, fx);
        for (timer, at) in fx.timers.iter_mut().filter_map(Option::take) {
            match at {
                Some(at) => timers.arm(timer, at),
                None => timers.disarm(timer),
            }
        }
        drop(m);
        outcome
    }

    /// Reads the machine under the lock.
    #[inline]
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Machine<T>) -> R) -> R {
        f(&self.machine.lock())
    }

    /// The hit path: [`Machine::hit`] under the lock.
    #[inline(always)]
    pub(crate) fn hit(&self, stale_time: Duration) -> Option<Arc<T>> {
        self.machine.lock().hit(stale_time)
    }
}
