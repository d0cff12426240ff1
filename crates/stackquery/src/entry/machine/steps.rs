//! The steps the transition is made of (`Machine::transition` in `mod.rs` picks them):
//! asking, starting and settling a fetch, observers joining and leaving, taking data, and
//! the bookkeeping of timers after every transition.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::deadline::Now;

use super::{
    Ask, Effects, EntryListener, Machine, Mode, Outcome, Reload, Source, StartFetch, Step, Timer,
    Watcher,
};
use crate::error::QueryError;
use crate::flight::{FetchResult, Flight};
use crate::options::QueryOptions;
use crate::state::{reduce, Action};

impl<T> Machine<T> {
    pub(super) fn ask(
        &mut self,
        fx: &mut Effects<T>,
        ask: Ask<'_, T>,
        now: &Now<'_>,
    ) -> Outcome<T> {
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
        // caller passes the same query again. A one-off fetch (an infinite query's next
        // page) is not how the entry refetches: its options are not remembered.
        if !self.options.as_ref().is_some_and(|o| o.same_as(opts)) && !opts.one_off() {
            self.options = Some(Box::new(opts.clone()));
        }
        self.stale_time = stale_time;
        self.ask_gc_time(gc_time);
        if mode != Mode::Force {
            if let Some(data) = self.state.data.clone() {
                let fresh = self.is_fresh(stale_time, now.get());
                // `Fresh` refuses stale data: it waits for a fetch below.
                if fresh || mode != Mode::Fresh {
                    // A failed start (no runtime) still serves the stale data.
                    if !fresh && mode == Mode::Swr && self.flight.is_none() {
                        if can_spawn {
                            self.begin_fetch(fx, opts.clone(), false);
                        } else {
                            fx.arm_gc = true;
                        }
                    }
                    return Outcome::Step(Step::Ready { data, fresh });
                }
            }
        }
        // `Fresh` joins only a flight whose result is newer than what the entry was told
        // (a fetch that began before an invalidation may have read the old data).
        if let Some(f) = &self.flight {
            if mode != Mode::Fresh || self.delivers_fresh(f) {
                return Outcome::Step(Step::Wait {
                    flight: f.clone(),
                    joined: true,
                });
            }
        }
        if !can_spawn {
            fx.arm_gc = true;
            return Outcome::Failed(QueryError::NoRuntime);
        }
        Outcome::Step(Step::Wait {
            flight: self.begin_fetch(fx, opts.clone(), mode == Mode::Fresh),
            joined: false,
        })
    }

    /// Starts a fetch. A flight already attached is detached: its waiters still get its
    /// result, but the entry takes the new one. With `fresh_only`, a read of the second
    /// tier first takes only a fresh copy (see [`Flight::fresh_only`]).
    pub(super) fn begin_fetch(
        &mut self,
        fx: &mut Effects<T>,
        opts: QueryOptions<T>,
        fresh_only: bool,
    ) -> Arc<Flight<T>> {
        // Only a fetch function that takes a context is given a token.
        let cancel = opts
            .takes_context()
            .then(tokio_util::sync::CancellationToken::new);
        let previous = match &self.flight {
            Some(old) => old.previous.clone(),
            None => self.state.clone(),
        };
        // A stream never ends by itself: the one this fetch replaces is stopped (its
        // waiters get what it gathered). Other fetches replaced go on for their waiters.
        let replaced = match &self.flight {
            Some(old) if opts.is_streamed() => old.cancellation().cloned(),
            _ => None,
        };
        // The first fetch of a cold key (or one another instance changed) may read the
        // second tier first; callers that join this flight share that read too.
        let reload = self.reload;
        let hydrate = reload != Reload::No || (!self.hydrated && self.state.data.is_none());
        // A flight that reads no stored copy delivers the fetch function's data.
        let fresh_only = fresh_only || !hydrate;
        let flight = Arc::new(Flight::new(
            previous,
            self.data_gen,
            self.inval_gen,
            fresh_only,
            cancel,
        ));
        self.hydrated = true;
        self.reload = Reload::No;
        self.apply(Action::Fetch);
        self.flight = Some(flight.clone());
        fx.fetch = Some(Box::new(StartFetch {
            flight: flight.clone(),
            opts,
            replaced,
            hydrate: hydrate.then_some(reload),
        }));
        flight
    }

    /// Drops the flight in flight, if any, without settling it (its waiters still get
    /// its result); returns its cancellation token, for the engine to fire.
    pub(super) fn detach_flight(&mut self) -> Option<tokio_util::sync::CancellationToken> {
        self.flight.take()?.cancellation().cloned()
    }

    pub(super) fn attach(
        &mut self,
        watcher: Watcher,
        opts: &QueryOptions<T>,
        gc_time: Duration,
    ) -> Outcome<T> {
        if self.removed {
            return Outcome::No;
        }
        self.observers = self.observers.saturating_add(1);
        if watcher.enabled {
            self.enabled_observers = self.enabled_observers.saturating_add(1);
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

    pub(super) fn detach(&mut self, listener: &Arc<dyn EntryListener>) {
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
    pub(super) fn settle(
        &mut self,
        fx: &mut Effects<T>,
        flight: &Arc<Flight<T>>,
        mut result: FetchResult<T>,
        weight: u32,
        source: Source,
        now: &Now<'_>,
    ) -> Outcome<T> {
        let mut stored = false;
        if self.is_current(flight) {
            self.flight = None;
            fx.arm_gc = true;
            match &result {
                Ok(data) if self.data_gen == flight.data_gen() => {
                    // Data read before an invalidation came is stale, wherever it was
                    // read from: the fetch function, or a stored copy the invalidation
                    // had not flagged yet.
                    let outdated = self.inval_gen != flight.inval_gen;
                    let (at, invalidated, age) = match source {
                        Source::Stored {
                            at,
                            invalidated,
                            age,
                        } => (at, invalidated || outdated, age),
                        Source::Fetch => (SystemTime::now(), outdated, Duration::ZERO),
                    };
                    self.take_data(fx, data.clone(), weight, at, invalidated, age, now);
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
                // (A revert or an error keeps the data held, and with it its weight.)
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

    /// An item of `flight`'s stream: the entry shows `data` (or, `None`, nothing: the
    /// stream restarted) while the fetch goes on. `Yes`: taken; `No`: the flight is no
    /// longer the entry's, or a manual write came since it began (the stream stops).
    pub(super) fn stream_item(
        &mut self,
        fx: &mut Effects<T>,
        flight: &Arc<Flight<T>>,
        data: Option<Arc<T>>,
        weight: u32,
        now: &Now<'_>,
    ) -> Outcome<T> {
        if !self.is_current(flight) || self.data_gen != flight.data_gen() {
            return Outcome::No;
        }
        match data {
            Some(data) => {
                let outdated = self.inval_gen != flight.inval_gen;
                self.take_data(
                    fx,
                    data,
                    weight,
                    SystemTime::now(),
                    outdated,
                    Duration::ZERO,
                    now,
                );
            }
            None => {
                self.data_gen += 1;
                self.updated_at = None;
                self.apply(Action::Restart);
                self.set_weight(fx, 0);
            }
        }
        // The flight's own items are no manual write: its result may still land.
        flight.follow_data_gen(self.data_gen);
        Outcome::Yes
    }

    /// Takes data `age` old, stamped `at`, weighing `weight`; a fetch in flight goes on for
    /// its waiters and the entry still shows it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take_data(
        &mut self,
        fx: &mut Effects<T>,
        data: Arc<T>,
        weight: u32,
        at: SystemTime,
        invalidated: bool,
        age: Duration,
        now: &Now<'_>,
    ) {
        // Every replacement of the data is a new version (the event stream reports it;
        // a compare-and-write that saw the older data then fails, as it should).
        self.data_gen += 1;
        self.apply(Action::Success {
            data,
            at,
            invalidated,
        });
        if self.flight.is_some() {
            self.apply(Action::FetchGoesOn);
        }
        let now = now.get();
        self.updated_at = Some(now.checked_sub(age).unwrap_or(now));
        self.set_weight(fx, weight);
    }

    /// Records the weight of the data now held; the cache's total follows through `fx`
    /// (applied under this lock). A removed entry counts for nothing: its weight left the
    /// total with it, and nothing it stores later is counted.
    pub(super) fn set_weight(&mut self, fx: &mut Effects<T>, weight: u32) {
        if self.removed {
            return;
        }
        fx.weight_delta += i64::from(weight) - i64::from(self.weight);
        self.weight = weight;
    }

    pub(super) fn apply(&mut self, action: Action<T>) {
        reduce(&mut self.state, action);
        self.version += 1;
    }

    /// Records a caller's or observer's gc time: the largest asked for wins.
    pub(super) fn ask_gc_time(&mut self, gc_time: Duration) {
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
    pub(super) fn bookkeeping(&mut self, fx: &mut Effects<T>, now: &Now<'_>) {
        // An unobserved entry without a stale timer has none to move: no clock read.
        if !self.listeners.is_empty() || self.stale_timer_at.is_some() {
            let next = self.next_stale_deadline(now.get());
            if next != self.stale_timer_at {
                let previous = std::mem::replace(&mut self.stale_timer_at, next);
                fx.timers[0] = Some((Timer::Stale, previous, next));
            }
        }
        if !self.unused() {
            self.gc_deadline = None;
            return;
        }
        if !fx.arm_gc {
            return;
        }
        match crate::deadline::checked_after(now.get(), self.gc_time) {
            Some(at) => {
                self.gc_deadline = Some(at);
                // A timer armed to fire no later re-arms itself for the new deadline when
                // it fires (`GcTimerFired`): the common case (a deadline that only moves
                // later) touches no shared timer queue.
                if self.gc_timer_at.is_none_or(|t| t > at) {
                    let previous = self.gc_timer_at.replace(at);
                    fx.timers[1] = Some((Timer::Gc, previous, Some(at)));
                }
            }
            None => self.gc_deadline = None, // gc_time "forever"
        }
    }

    /// The earliest moment after `now` at which the data turns stale for one of the
    /// observers (`None`: no observer, no data, already invalidated, or never).
    pub(super) fn next_stale_deadline(&self, now: Instant) -> Option<Instant> {
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
