//! The sealed state machine of one cache entry.
//!
//! Everything that can happen to an entry is an [`Event`]; [`Machine::transition`] is the
//! one function that changes an entry. It owns the generations, the monotonic `updated_at`,
//! the flight, the fetch status and the version, and it returns the [`Effects`] of the
//! change — start a fetch, wake a flight's waiters, write behind, announce, notify, move a
//! timer — for the engine to run in one place and one order. Nothing outside this module
//! reads or writes a machine's fields.
//!
//! [`Cell`] puts a machine behind its lock (`crate::sync::Mutex`, so the same files are
//! model-checked under shuttle: `tests/shuttle_flight.rs` compiles this module with
//! `#[path]`). The vocabulary (events, answers, effects) is in `events.rs`, the steps the
//! transition is made of in `steps.rs`, the reads in `reads.rs`.
//! Timer changes are the one effect applied before the lock is released: the timer queue
//! must agree with the deadlines the machine recorded, or a late arm could outlive a
//! removal. Everything else — user code included — runs after.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::deadline::Now;
use crate::error::QueryError;
use crate::flight::Flight;
use crate::notify::CowList;
use crate::options::QueryOptions;
use crate::state::{Action, QueryState};

mod events;
mod reads;
mod steps;

pub(crate) use events::*;

/// The state of one entry. Every field is private: [`transition`](Self::transition)
/// changes them, the read methods below read them.
pub(crate) struct Machine<T> {
    state: QueryState<T>,
    /// Monotonic time of the last data write: freshness is judged on it.
    updated_at: Option<Instant>,
    flight: Option<Arc<Flight<T>>>,
    /// The data's version: bumped whenever the data is replaced (fetched, hydrated or
    /// written) and by resets. An older fetch must not overwrite a manual write made
    /// after it started, and a compare-and-write fails once the data moved on.
    data_gen: u64,
    /// Bumped by invalidations: an older fetch's result comes back stale.
    inval_gen: u64,
    /// Observers attached (enabled or not): any of them pins the entry against the gc and
    /// eviction.
    observers: u32,
    /// Observers whose query is enabled: only these make the entry *active* (bulk
    /// refetches and invalidations fetch for it, as in TanStack Query).
    enabled_observers: u32,
    /// The weight of the data held, as the cache's total counts it (0: no data, removed,
    /// or a client without a weight bound). Set with the data, under this lock, so the
    /// weight always belongs to the data it was computed for. (Fits in the padding after
    /// the `u32` counts: the machine does not grow.)
    weight: u32,
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
            weight: 0,
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
            reload: Reload::No,
        }
    }

    /// Applies `event`: the one place an entry changes. Fills in `fx` (empty on entry)
    /// with the effects to run, and returns the answer for the caller. (An out-parameter:
    /// the effects are large, and returning them by value costs a copy per transition.)
    ///
    /// The machine reads no clock: `now` is its host's (see [`Now`]).
    pub(crate) fn transition(
        &mut self,
        event: Event<'_, T>,
        now: &Now<'_>,
        fx: &mut Effects<T>,
    ) -> Outcome<T> {
        let version = self.version;
        let outcome = match event {
            Event::Born { hydrated } => {
                // Known at birth, so even the first flight is known to deliver fetched
                // data (a caller refusing stale data can join it).
                self.hydrated = hydrated;
                fx.arm_gc = true;
                Outcome::Done
            }
            Event::Ask(ask) => self.ask(fx, ask, now),
            Event::Refresh { opts } => {
                if self.flight.is_none() && !self.removed {
                    self.begin_fetch(fx, opts.clone(), false);
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
                weight,
                source,
                write,
            } => {
                let outcome = self.settle(fx, flight, result, weight, source, now);
                fx.write = write && matches!(outcome, Outcome::Yes);
                outcome
            }
            Event::Streamed {
                flight,
                data,
                weight,
            } => self.stream_item(fx, flight, data, weight, now),
            Event::Write {
                data,
                weight,
                expect,
            } => {
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
                let at = SystemTime::now();
                self.take_data(fx, data, weight, at, false, Duration::ZERO, now);
                fx.write = true;
                fx.announce = true;
                Outcome::Yes
            }
            Event::Seed {
                data,
                weight,
                at,
                age,
            } => {
                if self.removed || self.state.data.is_some() {
                    return Outcome::No;
                }
                fx.arm_gc = true;
                // The data generation stays: a fetch in flight (which began on the same
                // empty entry) still replaces the initial data when it returns, as in
                // TanStack Query. (A compare-and-write that expected no data fails all
                // the same: it compares the data too.)
                let data_gen = self.data_gen;
                self.take_data(fx, data, weight, at, false, age, now);
                self.data_gen = data_gen;
                Outcome::Yes
            }
            Event::Restore {
                data,
                weight,
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
                    self.take_data(fx, data, weight, at, invalidated, age, now);
                }
                Outcome::Done
            }
            Event::Invalidate { can_spawn, refetch } => {
                self.inval_gen += 1;
                self.apply(Action::Invalidate);
                // The refetch type picks the entries that refetch; a disabled query is
                // marked stale and waits for an explicit fetch, and an entry written only
                // by hand has no fetch function (as in TanStack Query). A fetch that began
                // before the invalidation would come back stale, so a new one replaces it
                // (its own waiters still get its result). The new one must deliver data
                // newer than the invalidation: it never settles with a stale stored copy.
                let refetch = refetch.covers(self.observers, self.enabled_observers)
                    && !self.removed
                    && can_spawn;
                match self.options.as_deref().filter(|_| refetch).cloned() {
                    Some(opts) => Outcome::Flight(self.begin_fetch(fx, opts, true)),
                    None => Outcome::Done,
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
                        Outcome::Flight(self.begin_fetch(fx, opts, false))
                    }
                    _ => Outcome::Done,
                }
            }
            Event::Cancel => match self.flight.clone() {
                Some(f) => {
                    self.settle(fx, &f, Err(QueryError::Cancelled), 0, Source::Fetch, now);
                    Outcome::Flight(f)
                }
                None => Outcome::Done,
            },
            Event::Reset { cancel } => {
                self.data_gen += 1;
                self.inval_gen += 1;
                // A fetch in flight goes on for its waiters but no longer writes here;
                // its fetch function hears that the entry stopped waiting for it.
                *cancel = self.detach_flight();
                self.updated_at = None;
                self.apply(Action::Reset);
                self.set_weight(fx, 0);
                fx.arm_gc = true;
                Outcome::Done
            }
            Event::Remove { cancel } => {
                self.removed = true;
                *cancel = self.detach_flight();
                self.gc_deadline = None;
                // The cache drops these timers from the queue (it holds the queue).
                let gc = self.gc_timer_at.take();
                let stale = self.stale_timer_at.take();
                // From now on the entry counts for nothing (`set_weight` checks `removed`).
                let weight = std::mem::take(&mut self.weight);
                Outcome::Deadlines { gc, stale, weight }
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
                        self.begin_fetch(fx, opts, false);
                    }
                    Outcome::No
                }
            }
            Event::StaleTimerFired { at } => {
                // The queue no longer holds the timer that fired; one armed since stays.
                if self.stale_timer_at == Some(at) {
                    self.stale_timer_at = None;
                }
                // Nothing in the state changed, but an observer's view did: it recomputes.
                fx.notify = self.observers_to_tell();
                Outcome::Done
            }
            Event::GcTimerFired { fired_at, now } => {
                if self.gc_timer_at == Some(fired_at) {
                    self.gc_timer_at = None;
                }
                let verdict = match self.gc_deadline {
                    Some(d) if self.unused() && d <= now => GcVerdict::Collect,
                    // (Unless a timer armed since will see to it.)
                    Some(d) if self.unused() && self.gc_timer_at.is_none() => {
                        self.gc_timer_at = Some(d);
                        GcVerdict::Rearm(d)
                    }
                    _ => GcVerdict::Keep,
                };
                // The caller arms the timer again (or collects): no timer effect here.
                return Outcome::Gc(verdict);
            }
        };
        self.bookkeeping(fx, now);
        if self.version != version && fx.notify.is_none() {
            fx.notify = self.observers_to_tell();
        }
        outcome
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

    /// Runs `event` through the machine under the lock, applies the timer changes and the
    /// weight change to `timers` before releasing it, and leaves the rest of the effects
    /// in `fx`.
    pub(crate) fn transition(
        &self,
        event: Event<'_, T>,
        now: &Now<'_>,
        fx: &mut Effects<T>,
        timers: &dyn TimerSink,
    ) -> Outcome<T> {
        let mut m = self.machine.lock();
        let outcome = m.transition(event, now, fx);
        for (timer, previous, at) in fx.timers.iter_mut().filter_map(Option::take) {
            match (previous, at) {
                (previous, Some(at)) => timers.arm(timer, previous, at),
                (Some(previous), None) => timers.disarm(timer, previous),
                (None, None) => {}
            }
        }
        // Under the lock too: see `TimerSink::add_weight`.
        if fx.weight_delta != 0 {
            timers.add_weight(std::mem::take(&mut fx.weight_delta));
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
    pub(crate) fn hit(
        &self,
        stale_time: Duration,
        now: impl FnOnce() -> Instant,
    ) -> Option<Arc<T>> {
        self.machine.lock().hit(stale_time, now)
    }
}
