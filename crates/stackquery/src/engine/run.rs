//! The one place where entry transitions happen and their effects run.
//!
//! [`Shared::dispatch`] hands an [`Event`] to the entry's state machine and then runs the
//! [`Effects`] it returned, always in this order, with no lock held:
//!
//! 1. start the fetch (spawn its task; or, for a caller that waits for it, hand it to the
//!    caller, which runs it in its own task after the other effects: see
//!    [`Shared::lead_fetch`]);
//! 2. write the entry behind to the second tier;
//! 3. announce the write to the other instances, once it has landed;
//! 4. notify the observers (user code may run here);
//! 5. wake the waiters of a settled flight.
//!
//! Writing before waking means a caller that flushes the storage after its fetch returns
//! finds the write queued; notifying before waking means a caller that reads an observer
//! after its fetch returns sees the delivered state.

use std::sync::Arc;

use tokio::time::Instant;

use super::Shared;
use crate::deadline::Now;
use crate::entry::{
    Ask, Effects, Entry, Event, Outcome, StartFetch, Step, Timer, TimerSink, Watcher,
};
use crate::entry::{EntryListener, Mode};
use crate::error::QueryError;
use crate::events::CacheEventKind;
use crate::key::QueryKey;
use crate::options::QueryOptions;
use crate::timers::{TimerKind, TimerTarget, Timers};

/// The client's timer queue and the cache's weight total, seen from one entry.
struct EntryTimers<'a> {
    timers: &'a Timers,
    cache: &'a crate::cache::Cache<dyn super::EngineEntry>,
    id: u64,
    key: &'a QueryKey,
}

impl TimerSink for EntryTimers<'_> {
    fn arm(&self, timer: Timer, previous: Option<Instant>, at: Instant) {
        let target = TimerTarget::Entry(self.key.clone());
        self.timers.arm(self.id, kind(timer), previous, at, target);
    }
    fn disarm(&self, timer: Timer, previous: Instant) {
        self.timers.disarm(self.id, kind(timer), Some(previous));
    }
    fn add_weight(&self, delta: i64) {
        self.cache.add_weight(delta);
    }
}

fn kind(timer: Timer) -> TimerKind {
    match timer {
        Timer::Gc => TimerKind::Gc,
        Timer::Stale => TimerKind::Stale,
    }
}

impl Shared {
    /// Applies `event` to `entry`, runs its effects, and returns the machine's answer.
    pub(crate) fn dispatch<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        event: Event<'_, T>,
    ) -> Outcome<T> {
        self.dispatch_leading(entry, event, None)
    }

    /// [`dispatch`](Self::dispatch), where a fetch the event starts goes into `lead`
    /// instead of a task when the caller passes one: the caller will wait for it, and
    /// runs it in its own task first (see [`lead_fetch`](Self::lead_fetch)).
    fn dispatch_leading<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        event: Event<'_, T>,
        lead: Option<&mut Option<StartFetch<T>>>,
    ) -> Outcome<T> {
        let sink = EntryTimers {
            timers: &self.timers,
            cache: &self.cache,
            id: entry.id,
            key: &entry.key,
        };
        let mut fx = Effects::default();
        // The host's clock (tokio's by default, whose paused clock drives tests exactly).
        let clock = || self.runtime.now();
        let before = self
            .events
            .on()
            .then(|| Summary::of(entry, self.runtime.now()));
        let outcome = entry.transition(event, &Now::new(&clock), &mut fx, &sink);
        if let Some(before) = before {
            self.tell_change(entry, &before);
        }
        self.run_effects(entry, fx, lead);
        outcome
    }

    /// Tells the event stream how a transition changed the entry (only with a listener).
    #[cold]
    fn tell_change<T: Send + Sync + 'static>(&self, entry: &Entry<T>, before: &Summary) {
        let after = Summary::of(entry, self.runtime.now());
        if after == *before {
            return;
        }
        let key = &entry.key;
        self.events.emit(|| CacheEventKind::QueryUpdated {
            key: key.clone(),
            status: after.status,
            fetch_status: after.fetch_status,
            data_version: after.data_version,
            data_updated_at: after.data_updated_at,
            failure_count: after.failure_count,
        });
        if after.invalidated && !before.invalidated {
            self.events
                .emit(|| CacheEventKind::QueryInvalidated { key: key.clone() });
        }
    }

    fn run_effects<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        fx: Effects<T>,
        lead: Option<&mut Option<StartFetch<T>>>,
    ) {
        if let Some(start) = fx.fetch {
            match lead {
                Some(lead) => *lead = Some(*start),
                None => self.spawn_fetch(entry, *start),
            }
        }
        if fx.write || fx.announce {
            self.write_and_announce(entry, fx.announce);
        }
        for w in fx.notify.iter().flat_map(|l| l.iter()) {
            w.listener.changed();
        }
        for w in fx.removed.iter().flat_map(|l| l.iter()) {
            w.listener.removed();
        }
        if let Some((flight, result)) = fx.resolve {
            flight.resolve(result);
        }
    }

    fn spawn_fetch<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        start: StartFetch<T>,
    ) {
        if let Some((flight, task)) = self.fetch_task(entry, start) {
            if let Some(handle) = self.runtime.spawn(task) {
                flight.hand_to_task(handle);
            }
        }
    }

    /// Runs a fetch its caller started and will wait for, in the caller's own task, until
    /// the fetch first has to wait; then hands what is left of it to a task of its own.
    /// A fetch that is ready at once (a cache in front of a cache, a computed value) so
    /// costs no task, no scheduling and no wake-up; a slow one still runs apart from its
    /// caller, so a caller that goes away (dropped, timed out) cancels nothing for the
    /// others. (User code runs here with no lock held, like in the task.)
    pub(crate) async fn lead_fetch<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        start: StartFetch<T>,
    ) {
        let Some((flight, task)) = self.fetch_task(entry, start) else {
            return;
        };
        let mut task = Box::pin(task);
        let finished = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(task.as_mut(), cx).is_ready())
        })
        .await;
        if !finished {
            // Even a flight that is settled already may have work left (the shared-tier
            // write of a lease holder): the task finishes it. A cancel that landed during
            // the first poll aborts the task as it is handed over.
            if let Some(handle) = self.runtime.spawn(task) {
                flight.hand_to_task(handle);
            }
        }
    }

    /// The fetch `start` asks for, ready to run: its flight and the future. `None`: the
    /// host cannot run tasks now (the flight is settled with `NoRuntime`). A task the host
    /// then fails to start is dropped, and its guard settles the flight as cancelled.
    fn fetch_task<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        start: StartFetch<T>,
    ) -> Option<(
        Arc<crate::flight::Flight<T>>,
        impl std::future::Future<Output = ()> + Send + 'static,
    )> {
        let StartFetch {
            flight,
            mut opts,
            replaced,
            hydrate,
        } = start;
        // A refetch restarts a stream: the one it replaced stops (no lock is held here).
        if let Some(replaced) = replaced {
            replaced.cancel();
        }
        if !self.runtime.can_spawn() {
            // Checked before the transition (`can_spawn`), so this is not expected.
            let event = Event::Settled {
                flight: &flight,
                result: Err(QueryError::NoRuntime),
                weight: 0,
                source: crate::entry::Source::Fetch,
                write: false,
            };
            self.dispatch(entry, event);
            return None;
        }
        // A client rule can persist a key whose query does not say `.persist()`.
        if opts.persist.is_none() {
            opts.persist = self.persist_rules.find::<T>(&entry.key);
        }
        // The first fetch of a cold persisted key reads the second tier first (or a
        // restored snapshot).
        let hydrate = hydrate.filter(|_| {
            opts.persist.is_some() && (self.tier.is_some() || !self.restored.is_empty())
        });
        self.counters.fetches.incr();
        self.publish_metrics();
        tracing::debug!(key = %entry.key, "fetch start");
        // The caller's span is current here (the task is about to leave it): the fetch's
        // span is its child.
        let trace = crate::telemetry::FetchTrace::start(&entry.key);
        let task = super::fetch::run_flight(
            self.clone(),
            entry.clone(),
            flight.clone(),
            opts,
            hydrate,
            trace,
        );
        Some((flight, task))
    }

    /// A new entry for `key`, born collectable: whatever its creator does next (fetch,
    /// observe, or nothing because user code panicked), it is never left without a gc
    /// timer.
    pub(crate) fn new_entry<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        key: &QueryKey,
    ) -> Arc<Entry<T>> {
        let entry = Arc::new(Entry::<T>::new(
            self.fresh_id(),
            key.clone(),
            self.defaults.stale_time,
            self.defaults.gc_time,
        ));
        // Nothing to read for it: no second tier, no snapshot item waiting. (`hydrate`
        // applies a later item for a key in memory to its entry at once.)
        let hydrated = self.tier.is_none() && self.restored.is_empty();
        self.dispatch(&entry, Event::Born { hydrated });
        entry
    }

    /// Decides what a typed call gets, starting a fetch if one is needed. `None`: the
    /// entry was removed from the cache before anything started (the caller looks the key
    /// up again), unless `even_if_removed`.
    ///
    /// With `lead`, a fetch that the caller is told to wait for is left in it for the
    /// caller to run ([`lead_fetch`](Self::lead_fetch)); any other fetch (a background
    /// refresh behind served data) still gets its own task.
    pub(crate) fn ask<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        opts: &QueryOptions<T>,
        mode: Mode,
        even_if_removed: bool,
        mut lead: Option<&mut Option<StartFetch<T>>>,
    ) -> Result<Option<Step<T>>, QueryError> {
        // Initial data first, so the ask judges it like any data (fresh: served).
        self.seed_initial(entry, opts);
        let event = Event::Ask(Ask {
            opts,
            stale_time: self.defaults.stale_time(opts),
            gc_time: self.defaults.gc_time(opts),
            mode,
            even_if_removed,
            can_spawn: self.runtime.can_spawn(),
        });
        let counters = &self.counters;
        let outcome = self.dispatch_leading(entry, event, lead.as_deref_mut());
        if !matches!(outcome, Outcome::Step(Step::Wait { .. })) {
            if let Some(start) = lead.and_then(Option::take) {
                self.spawn_fetch(entry, start);
            }
        }
        match outcome {
            Outcome::Step(step) => {
                match &step {
                    Step::Ready { fresh: true, .. } => {
                        counters.hits.incr();
                        tracing::trace!(key = %entry.key, "cache hit");
                    }
                    Step::Ready { fresh: false, .. } => {
                        counters.stale_hits.incr();
                        tracing::trace!(key = %entry.key, "stale hit");
                    }
                    Step::Wait { joined, .. } => {
                        if mode != Mode::Force {
                            counters.misses.incr();
                            tracing::trace!(key = %entry.key, "cache miss");
                        }
                        if *joined {
                            counters.dedup_joins.incr();
                        }
                    }
                }
                Ok(Some(step))
            }
            Outcome::Failed(error) => {
                if mode != Mode::Force {
                    counters.misses.incr();
                }
                Err(error)
            }
            _ => Ok(None),
        }
    }

    /// Adds an observer of `opts`. `false` if the entry has left the cache.
    pub(crate) fn attach<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        listener: Arc<dyn EntryListener>,
        opts: &QueryOptions<T>,
    ) -> bool {
        let watcher = Watcher {
            listener,
            enabled: opts.enabled,
            stale_time: self.defaults.stale_time(opts),
        };
        let event = Event::Attach {
            watcher,
            opts,
            gc_time: self.defaults.gc_time(opts),
        };
        let attached = matches!(self.dispatch(entry, event), Outcome::Yes);
        if attached {
            // A disabled observer fetches nothing, but shows the initial data.
            self.seed_initial(entry, opts);
            crate::telemetry::gauge_add(crate::telemetry::names::OBSERVERS, 1.0);
            self.events.emit(|| CacheEventKind::ObserverAdded {
                key: entry.key.clone(),
            });
        }
        attached
    }

    /// Removes an observer; the gc deadline starts when the last one leaves.
    pub(crate) fn detach<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        listener: &Arc<dyn EntryListener>,
    ) {
        self.dispatch(entry, Event::Detach { listener });
        crate::telemetry::gauge_add(crate::telemetry::names::OBSERVERS, -1.0);
        self.events.emit(|| CacheEventKind::ObserverRemoved {
            key: entry.key.clone(),
        });
    }

    /// Writes data by hand (with `expect`: only if the entry still holds that data at that
    /// data generation). The write wins over any fetch that started before it; it goes to
    /// the second tier, and then to the other instances. `false`: someone wrote in between.
    /// (The caller then trims the cache: `Cache::drop_if_keeping_nothing`.)
    pub(crate) fn write<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        data: Arc<T>,
        expect: Option<(Option<&Arc<T>>, u64)>,
    ) -> bool {
        let weight = self.weigh_for_entry(entry, &data);
        let event = Event::Write {
            data,
            weight,
            expect,
        };
        matches!(self.dispatch(entry, event), Outcome::Yes)
    }

    /// The weight of `data` about to be stored in `entry` without a query at hand (a
    /// manual write, a snapshot): weighed by the weigher of the entry's last options. Runs
    /// the weigher with no lock held; 0 at once without a weight bound (inlined: one load
    /// and a branch on the write path of a client without one).
    #[inline]
    pub(crate) fn weigh_for_entry<T: Send + Sync + 'static>(
        &self,
        entry: &Entry<T>,
        data: &T,
    ) -> u32 {
        let Some(bound) = self.cache.weight_bound() else {
            return 0;
        };
        let weigher = entry.weigher();
        crate::weight::weigh(bound, weigher.as_deref(), data, &entry.key)
    }

    /// The weight of `data` fetched (or read from the second tier) for a query of `opts`:
    /// weighed by the query's weigher, with no lock held. (Inlined: on the fill path of a
    /// client without a weight bound it is one load and a branch.)
    #[inline]
    pub(crate) fn weigh_for_query<T>(
        &self,
        opts: &QueryOptions<T>,
        data: &T,
        key: &QueryKey,
    ) -> u32 {
        let Some(bound) = self.cache.weight_bound() else {
            return 0;
        };
        crate::weight::weigh(bound, opts.weigher_fn().map(|w| &**w), data, key)
    }

    /// Starts a background fetch unless one is in flight (after a stale hydration).
    pub(crate) fn refresh<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        opts: &QueryOptions<T>,
    ) {
        if !self.runtime.can_spawn() {
            tracing::debug!(key = %entry.key, "background refresh did not start: no runtime");
            return;
        }
        self.dispatch(entry, Event::Refresh { opts });
    }
}

/// What the event stream reports of an entry's state.
#[derive(PartialEq)]
struct Summary {
    status: crate::state::QueryStatus,
    fetch_status: crate::state::FetchStatus,
    data_version: u64,
    data_updated_at: Option<std::time::SystemTime>,
    failure_count: u32,
    invalidated: bool,
}

impl Summary {
    fn of<T: Send + Sync + 'static>(entry: &Entry<T>, now: Instant) -> Self {
        let state = entry.snapshot(None, now);
        let (_, data_version) = entry.data_and_gen();
        Summary {
            status: state.status,
            fetch_status: state.fetch_status,
            data_version,
            data_updated_at: state.data_updated_at,
            failure_count: state.failure_count,
            invalidated: state.is_invalidated,
        }
    }
}
