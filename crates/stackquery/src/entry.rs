//! One cache entry: a key, its sealed state machine ([`machine`]), and the CLOCK bit the
//! eviction reads without taking the entry's lock.
//!
//! An entry changes only through [`Entry::transition`], which returns the effects for the
//! engine to run; everything else here reads. Entries are stored type-erased
//! (`Arc<dyn AnyEntry>` and its engine extension) and downcast to `Entry<T>` by typed calls.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

pub(crate) mod machine;

pub(crate) use machine::{
    Ask, Effects, EntryListener, Event, GcVerdict, Mode, Outcome, Persisted, Reload, Source,
    StartFetch, Step, Timer, TimerSink, Watcher,
};

use crate::deadline::Now;
use crate::key::QueryKey;
use crate::state::QueryState;
use machine::{Cell, Machine};

pub(crate) struct Entry<T> {
    pub(crate) id: u64,
    pub(crate) key: QueryKey,
    /// CLOCK "second chance" bit: set on use, cleared by the eviction hand.
    referenced: AtomicBool,
    cell: Cell<T>,
}

impl<T> Entry<T> {
    pub(crate) fn new(id: u64, key: QueryKey, stale_time: Duration, gc_time: Duration) -> Self {
        Entry {
            id,
            key,
            referenced: AtomicBool::new(false),
            cell: Cell::new(Machine::new(stale_time, gc_time)),
        }
    }

    /// The one way an entry changes (see [`machine`]). Timer changes are applied to
    /// `timers` before the lock is released; the engine runs the returned effects.
    pub(crate) fn transition(
        &self,
        event: Event<'_, T>,
        now: &Now<'_>,
        fx: &mut Effects<T>,
        timers: &dyn TimerSink,
    ) -> Outcome<T> {
        let outcome = self.cell.transition(event, now, fx, timers);
        if fx.used {
            self.touch();
        }
        outcome
    }

    #[inline(always)]
    fn touch(&self) {
        // Load first: an already-set bit costs no write, so hot keys do not bounce lines.
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }

    /// The hit path: fresh data or nothing.
    #[inline(always)]
    pub(crate) fn fresh_data(
        &self,
        stale_time: Duration,
        now: impl FnOnce() -> Instant,
    ) -> Option<Arc<T>> {
        let data = self.cell.hit(stale_time, now)?;
        self.touch();
        Some(data)
    }

    /// A flight in flight this caller can join with no transition (see
    /// [`Machine::joinable`]).
    pub(crate) fn joinable(
        &self,
        opts: &crate::options::QueryOptions<T>,
        stale_time: Duration,
        gc_time: Duration,
        fresh: bool,
    ) -> Option<Arc<crate::flight::Flight<T>>> {
        self.cell
            .read(|m| m.joinable(opts, stale_time, gc_time, fresh))
    }

    /// The data held, fresh or stale (a plain read: not a hit, but a use for eviction).
    pub(crate) fn data(&self) -> Option<Arc<T>> {
        let data = self.cell.read(|m| m.data().cloned());
        self.touch();
        data
    }

    /// `None` when the entry holds data, else whether its second tier was consulted (for
    /// seeding initial data).
    pub(crate) fn seedable(&self) -> Option<bool> {
        self.cell.read(Machine::seedable)
    }

    /// The data held and its data generation (for a compare-and-write).
    pub(crate) fn data_and_gen(&self) -> (Option<Arc<T>>, u64) {
        self.cell.read(Machine::data_and_gen)
    }

    /// A snapshot whose staleness is judged with `stale_time`, or (`None`) with the
    /// entry's own rule: stale for any observer, else by its last caller.
    pub(crate) fn snapshot(&self, stale_time: Option<Duration>, now: Instant) -> QueryState<T> {
        self.cell.read(|m| m.snapshot(stale_time, now))
    }

    /// Wall-clock stamp of the data held.
    pub(crate) fn data_updated_at(&self) -> Option<SystemTime> {
        self.cell.read(Machine::data_updated_at)
    }

    /// Whether the data held is fresh for `stale_time`.
    pub(crate) fn is_fresh_for(&self, stale_time: Duration, now: Instant) -> bool {
        self.cell.read(|m| m.is_fresh(stale_time, now))
    }

    /// The weigher of the entry's last options (for data stored without a query at hand:
    /// manual writes, snapshots).
    pub(crate) fn weigher(&self) -> Option<Arc<crate::weight::Weigher<T>>> {
        self.cell
            .read(|m| m.options().and_then(|o| o.weigher_fn().cloned()))
    }

    /// Whether the entry's last options say the query is persisted, and with what.
    pub(crate) fn persist_option(&self) -> Option<crate::storage::typed::PersistFns<T>> {
        self.cell.read(|m| m.options().and_then(|o| o.persist))
    }

    /// How the entry's last options persist it, and the second-tier ttl they ask for
    /// (`None`: the client's rule), in one read: what a second-tier write needs of them.
    pub(crate) fn persist_settings(
        &self,
    ) -> (
        Option<crate::storage::typed::PersistFns<T>>,
        Option<Duration>,
    ) {
        self.cell.read(|m| {
            m.options()
                .map_or((None, None), |o| (o.persist, o.storage_ttl.get()))
        })
    }

    /// Observers subscribed, and how many of them are enabled.
    pub(crate) fn observer_counts(&self) -> (u32, u32) {
        self.cell.read(Machine::observer_counts)
    }

    /// Has observers (cheaper than a transition: most removed entries have none).
    pub(crate) fn has_listeners(&self) -> bool {
        self.cell.read(Machine::has_listeners)
    }

    /// What a second-tier write of the entry carries now (`None`: no data).
    pub(crate) fn persisted(&self) -> Option<Persisted<T>> {
        self.cell.read(Machine::persisted)
    }
}

/// No timers: for transitions that change none (gc verdicts, removal under the cache's
/// lock, whose timers and weight the cache drops itself).
struct NoTimers;

impl TimerSink for NoTimers {
    fn arm(&self, _: Timer, _: Option<Instant>, _: Instant) {}
    fn disarm(&self, _: Timer, _: Instant) {}
    fn add_weight(&self, _: i64) {}
}

/// What [`AnyEntry::mark_removed`] hands the cache.
pub(crate) struct Removed {
    /// The deadlines of the entry's gc and stale timers, to drop from the queue.
    pub(crate) deadlines: [Option<Instant>; 2],
    /// The cancellation token of the fetch the entry had in flight (only a fetch function
    /// that takes a context has one), to fire once the cache's lock is released.
    pub(crate) cancel: Option<tokio_util::sync::CancellationToken>,
    /// The weight the cache counted for the entry, to take off its total.
    pub(crate) weight: u32,
}

/// What the cache needs from an entry without knowing its data type.
pub(crate) trait AnyEntry: Send + Sync + 'static {
    fn id(&self) -> u64;
    fn key(&self) -> &QueryKey;
    fn type_name(&self) -> &'static str;
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// Reads and clears the CLOCK bit.
    fn take_referenced(&self) -> bool;
    /// For the eviction hand, in one read: `None` when observed or fetching (never
    /// evicted or collected), else the weight the cache counts for the entry.
    fn eviction_weight(&self) -> Option<u32>;
    /// Has at least one enabled observer.
    fn is_active(&self) -> bool;
    fn is_fetching(&self) -> bool;
    fn is_stale(&self, now: Instant) -> bool;
    /// The entry's gc timer fired at `now`: `Collect` when its deadline has passed and it
    /// is still unused; `Rearm(at)` when it is unused but its deadline moved later (the
    /// caller arms the timer at `at`); `Keep` when it is in use (it arms a timer again when
    /// it becomes unused).
    fn gc_timer_fired(&self, fired_at: Instant, now: Instant) -> GcVerdict;
    /// The entry left the cache: detach any fetch so nothing writes into it again.
    /// Called under the cache's lock, so it notifies nobody (see `Event::TellRemoved`).
    /// Returns the deadlines of its gc and stale timers and the weight the cache counted
    /// for it, for the caller to drop, and the detached fetch's cancellation token, for
    /// the caller to fire once the lock is released.
    fn mark_removed(&self) -> Removed;
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
    fn eviction_weight(&self) -> Option<u32> {
        self.cell.read(Machine::eviction_weight)
    }
    fn is_active(&self) -> bool {
        self.cell.read(Machine::is_active)
    }
    fn is_fetching(&self) -> bool {
        self.cell.read(Machine::is_fetching)
    }
    fn is_stale(&self, now: Instant) -> bool {
        self.cell.read(|m| m.is_stale(now))
    }
    fn gc_timer_fired(&self, fired_at: Instant, now: Instant) -> GcVerdict {
        let clock = move || now;
        match self.transition(
            Event::GcTimerFired { fired_at, now },
            &Now::new(&clock),
            &mut Effects::default(),
            &NoTimers,
        ) {
            Outcome::Gc(verdict) => verdict,
            _ => GcVerdict::Keep,
        }
    }
    fn mark_removed(&self) -> Removed {
        // A removal computes no deadline (it clears them): the clock is never read.
        let clock = Instant::now;
        let mut cancel = None;
        let (deadlines, weight) = match self.transition(
            Event::Remove {
                cancel: &mut cancel,
            },
            &Now::new(&clock),
            &mut Effects::default(),
            &NoTimers,
        ) {
            Outcome::Deadlines { gc, stale, weight } => ([gc, stale], weight),
            _ => ([None, None], 0),
        };
        Removed {
            deadlines,
            cancel,
            weight,
        }
    }
}

#[cfg(test)]
mod size_tests {
    use std::mem::size_of;
    use std::sync::Arc;

    use super::{Entry, Machine};
    use crate::error::QueryError;
    use crate::state::QueryState;

    /// Memory per entry is an issue-13 target: the sizes of what every entry carries are
    /// pinned here, so a field that grows them shows up in review. (The error type was 56 B
    /// while one rare variant held a `String` and two `&str` inline; boxing that variant made
    /// each of the state's two error slots 24 B.)
    #[test]
    fn entry_parts_stay_small() {
        assert!(size_of::<Option<QueryError>>() <= 24);
        assert!(size_of::<QueryState<Arc<u64>>>() <= 104);
        // Before this test: 344 and 376; 272 and 320 until the hit counter left the
        // entry for the client's striped counter (issue 15).
        assert!(size_of::<Machine<Arc<u64>>>() <= 264);
        assert!(size_of::<Entry<Arc<u64>>>() <= 312);
        // Every fetched entry keeps its last options in a box: the weight bound's weigher
        // lives with the placeholder behind one pointer (`options::Extras`), so the box
        // stays 184 B (192 B would take a 208 B chunk from glibc's malloc instead of 192 B:
        // +16 B per entry).
        assert!(size_of::<crate::options::QueryOptions<Arc<u64>>>() <= 184);
    }
}

#[cfg(test)]
mod host_clock_tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::machine::{Cell, Effects, Event, Machine, Timer, TimerSink};
    use crate::deadline::Now;

    /// Records the timers a transition arms.
    #[derive(Default)]
    struct Armed(Mutex<Vec<(Timer, Instant)>>);

    impl TimerSink for Armed {
        fn arm(&self, timer: Timer, _: Option<Instant>, at: Instant) {
            self.0.lock().unwrap().push((timer, at));
        }
        fn disarm(&self, _: Timer, _: Instant) {}
        fn add_weight(&self, _: i64) {}
    }

    /// (Here, not beside the machine: `tests/shuttle_flight.rs` compiles the machine's files,
    /// whose lock is shuttle's there.)
    ///
    /// The Python package (issue 14) drives entries from an asyncio loop, whose clock
    /// (virtual under `looptime`) is not tokio's. So the machine must judge every time
    /// by the clock its host passes in, and read none itself. Here the host's clock is an
    /// hour ahead of the real one, with no tokio runtime at all: the gc deadline, the
    /// freshness of written data and its end are all counted from the host's instants.
    #[test]
    fn the_machine_keeps_time_by_its_hosts_clock_only() {
        let start = Instant::now() + Duration::from_secs(3600);
        let cell = Cell::new(Machine::<u32>::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
        ));
        let armed = Armed::default();
        let at = |secs: u64| start + Duration::from_secs(secs);

        let clock = move || at(0);
        let mut fx = Effects::default();
        let born = Event::Born { hydrated: true };
        cell.transition(born, &Now::new(&clock), &mut fx, &armed);
        assert_eq!(armed.0.lock().unwrap().as_slice(), &[(Timer::Gc, at(60))]);

        let clock = move || at(5);
        let mut fx = Effects::default();
        let write = Event::Write {
            data: Arc::new(7),
            weight: 0,
            expect: None,
        };
        cell.transition(write, &Now::new(&clock), &mut fx, &armed);

        let stale_time = Duration::from_secs(10);
        assert!(cell.read(|m| m.is_fresh(stale_time, at(14))));
        assert!(
            !cell.read(|m| m.is_fresh(stale_time, at(15))),
            "stale 10 s after the write"
        );
        assert_eq!(
            cell.hit(stale_time, || at(14)).as_deref(),
            None,
            "no options: slow path"
        );
        let snapshot = cell.read(|m| m.snapshot(Some(stale_time), at(16)));
        assert_eq!((snapshot.data.as_deref(), snapshot.stale), (Some(&7), true));
        // The real clock is an hour behind the host's: judged by it, the data would still
        // be fresh (an hour "before" the write).
        assert!(cell.read(|m| m.is_fresh(stale_time, Instant::now() + Duration::from_secs(3605))));
    }
}
