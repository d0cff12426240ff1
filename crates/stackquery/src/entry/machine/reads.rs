//! What can be read of a machine: freshness, snapshots, the hit path, and the facts the
//! cache and the engine decide by. Nothing here changes the state .

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Listeners, Machine, Persisted, Watcher};
use crate::flight::Flight;
use crate::options::QueryOptions;
use crate::state::QueryState;

impl<T> Machine<T> {
    #[inline(always)]
    pub(crate) fn is_fresh(&self, stale_time: Duration, now: Instant) -> bool {
        self.is_fresh_with(stale_time, || now)
    }

    /// [`is_fresh`](Self::is_fresh), reading the time with `now` only when the answer
    /// depends on it (not for invalidated data, a zero or endless stale time, no data).
    #[inline(always)]
    fn is_fresh_with(&self, stale_time: Duration, now: impl FnOnce() -> Instant) -> bool {
        if self.state.is_invalidated || stale_time.is_zero() {
            return false;
        }
        match self.updated_at {
            None => false,
            Some(at) => match at.checked_add(stale_time) {
                Some(deadline) => now() < deadline,
                None => true, // "forever" (Duration::MAX)
            },
        }
    }

    /// The hit path: fresh data, or nothing (the caller counts the hit). An entry that has never
    /// seen a query's options (created by a manual write) takes the slow path once, which
    /// records them.
    #[inline(always)]
    pub(crate) fn hit(
        &mut self,
        stale_time: Duration,
        now: impl FnOnce() -> Instant,
    ) -> Option<Arc<T>> {
        match &self.state.data {
            Some(d) if self.options.is_some() && self.is_fresh_with(stale_time, now) => {
                Some(d.clone())
            }
            _ => None,
        }
    }

    /// The flight a caller can join without changing anything: one is in flight, there is
    /// no data to serve instead, and the caller's options, stale time and gc time are the
    /// ones the entry already has (so `Event::Ask` would only answer "wait"). With
    /// `fresh` (a caller that refuses stale data), only a flight that
    /// [delivers fresh data](Self::delivers_fresh). `None`: ask.
    pub(crate) fn joinable(
        &self,
        opts: &QueryOptions<T>,
        stale_time: Duration,
        gc_time: Duration,
        fresh: bool,
    ) -> Option<Arc<Flight<T>>> {
        let flight = self.flight.as_ref()?;
        let unchanged = !self.removed
            && (!fresh || self.delivers_fresh(flight))
            && self.state.data.is_none()
            && self.stale_time == stale_time
            && self.gc_time_asked
            && self.gc_time >= gc_time
            && self.options.as_ref().is_some_and(|o| o.same_as(opts));
        unchanged.then(|| flight.clone())
    }

    /// Whether `flight` delivers data newer than anything the entry has been told of: it
    /// began after the latest invalidation (an older fetch may have read the data the
    /// invalidation says changed) and the latest data replacement, and it settles only
    /// with fresh data (no stale stored copy). A caller that refuses stale data waits for
    /// such a flight only.
    pub(crate) fn delivers_fresh(&self, flight: &Flight<T>) -> bool {
        flight.fresh_only
            && flight.inval_gen == self.inval_gen
            && flight.data_gen() == self.data_gen
    }

    /// For seeding initial data: `None` when the entry holds data (or was removed), else
    /// whether its second tier has been consulted.
    pub(crate) fn seedable(&self) -> Option<bool> {
        (self.state.data.is_none() && !self.removed).then_some(self.hydrated)
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
    pub(crate) fn snapshot(&self, stale_time: Option<Duration>, now: Instant) -> QueryState<T> {
        let stale_time = stale_time.unwrap_or_else(|| self.entry_stale_time());
        let mut s = self.state.clone();
        s.stale = !(s.data.is_some() && self.is_fresh(stale_time, now));
        s
    }

    /// The stale time that judges the entry as a whole (filters, `get_query_state`): with
    /// observers, stale as soon as it is stale for any of them (the shortest of their stale
    /// times); without, the last caller's stale time. As in TanStack Query.
    pub(super) fn entry_stale_time(&self) -> Duration {
        self.watchers()
            .map(|w| w.stale_time)
            .min()
            .unwrap_or(self.stale_time)
    }

    pub(crate) fn is_stale(&self, now: Instant) -> bool {
        !(self.state.data.is_some() && self.is_fresh(self.entry_stale_time(), now))
    }

    /// Bumped on every state change (the model checker compares the versions an
    /// observer saw with the entry's last).
    #[allow(dead_code)]
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Has observers to tell about changes (or about its removal).
    pub(crate) fn has_listeners(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// Observed or fetching: never evicted or collected.
    pub(crate) fn is_pinned(&self) -> bool {
        self.observers > 0 || self.flight.is_some()
    }

    /// What the eviction hand needs in one read: `None` when pinned (never evicted), else
    /// the weight the cache counts for the entry.
    pub(crate) fn eviction_weight(&self) -> Option<u32> {
        (!self.is_pinned()).then_some(self.weight)
    }

    pub(crate) fn is_active(&self) -> bool {
        self.enabled_observers > 0
    }

    /// Observers subscribed, and how many of them are enabled (for inspection).
    pub(crate) fn observer_counts(&self) -> (u32, u32) {
        (self.observers, self.enabled_observers)
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

    pub(super) fn watchers(&self) -> impl Iterator<Item = &Watcher> {
        self.listeners.iter()
    }

    /// The observers to notify of a change (`None`: nobody, no clone).
    pub(super) fn observers_to_tell(&self) -> Option<Listeners> {
        (!self.listeners.is_empty()).then(|| self.listeners.snapshot())
    }

    pub(super) fn unused(&self) -> bool {
        self.observers == 0 && self.flight.is_none() && !self.removed
    }

    pub(super) fn is_current(&self, flight: &Arc<Flight<T>>) -> bool {
        self.flight.as_ref().is_some_and(|f| Arc::ptr_eq(f, flight))
    }
}
