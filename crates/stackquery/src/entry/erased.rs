//! The type-erased view of an entry (`AnyEntry`): what the cache, the filters, the gc and
//! the bus need from an entry without knowing its data type.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use crate::engine::Shared;
use crate::entry::{age_of, Entry, Reload, Settled};
use crate::key::QueryKey;
use crate::snapshot::DehydratedQuery;
use crate::state::Action;
use crate::storage::Envelope;
use crate::tier::AfterWrite;

/// What the gc does when an entry's timer fires.
pub(crate) enum GcVerdict {
    Collect,
    Rearm(Instant),
    Keep,
}

/// Type-erased view of an entry, for bulk operations and the cache's bookkeeping.
pub(crate) trait AnyEntry: Send + Sync + 'static {
    fn id(&self) -> u64;
    fn key(&self) -> &QueryKey;
    fn type_name(&self) -> &'static str;
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// Hit-path hits counted in the entry so far.
    fn hits(&self) -> u64;
    /// Reads and clears the CLOCK bit.
    fn take_referenced(&self) -> bool;
    /// Observed or fetching: never evicted or collected.
    fn is_pinned(&self) -> bool;
    /// Has at least one enabled observer.
    fn is_active(&self) -> bool;
    fn is_fetching(&self) -> bool;
    fn is_stale(&self) -> bool;
    /// The entry's gc timer fired at `now`: `Collect` when its deadline has passed and it
    /// is still unused; `Rearm(at)` when it is unused but its deadline moved later (the
    /// caller arms the timer at `at`); `Keep` when it is in use (it arms a timer again when
    /// it becomes unused).
    fn gc_timer_fired(&self, now: Instant) -> GcVerdict;
    fn invalidate(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled>;
    fn refetch(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled>;
    /// Cancels the fetch in flight; the future resolves once its task has stopped.
    fn cancel(&self, shared: &Shared) -> Option<Settled>;
    fn reset(&self, shared: &Shared);
    /// The entry left the cache: detach any fetch so nothing writes into it again.
    /// Called under the cache's lock, so it notifies nobody.
    fn mark_removed(&self);
    /// Tells the observers of a removed entry (called with no lock held).
    fn notify_removed(&self);
    /// Whether the query is persisted (its options say so).
    fn is_persisted(&self, shared: &Shared) -> bool;
    /// Queues a second-tier write of the entry's current state (data and invalidated
    /// flag), if persisted and holding data; `after` runs once it has landed. Returns
    /// `after` back when nothing was queued.
    fn write_state_behind(
        &self,
        shared: &Shared,
        after: Option<AfterWrite>,
    ) -> Result<(), Option<AfterWrite>>;
    /// Another instance changed this key: mark it stale; with `reload`, the next fetch
    /// reads the shared tier first. Active entries fetch at once when `refetch_now`;
    /// otherwise the call returns whether the entry is one that should refetch (active,
    /// idle), and the caller schedules it (a lag spreads its refetches out).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn remote_change(
        self: Arc<Self>,
        shared: &Arc<Shared>,
        reload: Reload,
        refetch_now: bool,
    ) -> bool;
    /// The entry's `Stale` timer fired: its data crossed an observer's stale time, so
    /// observers recompute their state (called by the timer driver, no lock held).
    fn on_stale_timer(&self, shared: &Arc<Shared>);
    /// The entry as a snapshot item, if it is persisted and has data.
    fn dehydrate(&self, shared: &Shared) -> Option<DehydratedQuery>;
    /// Applies a snapshot item if the entry can decode it; gives it back otherwise.
    fn restore(&self, shared: &Shared, q: DehydratedQuery) -> Result<(), DehydratedQuery>;
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
    fn hits(&self) -> u64 {
        self.inner.lock().hits
    }
    fn take_referenced(&self) -> bool {
        self.referenced.swap(false, Ordering::Relaxed)
    }
    fn is_pinned(&self) -> bool {
        let g = self.inner.lock();
        g.observers > 0 || g.flight.is_some()
    }
    fn is_active(&self) -> bool {
        self.inner.lock().enabled_observers > 0
    }
    fn is_fetching(&self) -> bool {
        self.inner.lock().flight.is_some()
    }
    fn is_stale(&self) -> bool {
        let g = self.inner.lock();
        !(g.state.data.is_some() && g.is_fresh(g.entry_stale_time()))
    }
    fn gc_timer_fired(&self, now: Instant) -> GcVerdict {
        let mut g = self.inner.lock();
        g.gc_timer_at = None;
        match g.gc_deadline {
            Some(d) if g.unused() && d <= now => GcVerdict::Collect,
            Some(d) if g.unused() => {
                g.gc_timer_at = Some(d);
                GcVerdict::Rearm(d)
            }
            _ => GcVerdict::Keep,
        }
    }
    fn invalidate(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled> {
        self.typed_invalidate(shared)
    }
    fn refetch(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled> {
        self.typed_refetch(shared)
    }
    fn cancel(&self, shared: &Shared) -> Option<Settled> {
        self.typed_cancel(shared)
    }
    fn reset(&self, shared: &Shared) {
        let mut g = self.lock();
        g.data_gen += 1;
        g.inval_gen += 1;
        // A fetch in flight goes on for its waiters but no longer writes here.
        g.flight = None;
        g.updated_at = None;
        g.apply(Action::Reset);
        self.rearm_stale_timer(&mut g, shared);
        self.arm_gc_if_unused(&mut g, shared);
    }
    fn mark_removed(&self) {
        let mut g = self.inner.lock();
        g.removed = true;
        g.flight = None;
        g.gc_deadline = None;
        g.gc_timer_at = None;
    }
    fn remote_change(
        self: Arc<Self>,
        shared: &Arc<Shared>,
        reload: Reload,
        refetch_now: bool,
    ) -> bool {
        let mut g = self.lock();
        if g.removed {
            return false;
        }
        g.inval_gen += 1;
        g.apply(Action::Invalidate);
        self.rearm_stale_timer(&mut g, shared);
        g.reload = g.reload.max(reload);
        if g.enabled_observers == 0 || g.flight.is_some() {
            return false;
        }
        if !refetch_now {
            return g.options.is_some();
        }
        if let Some(opts) = g.options.as_deref().cloned() {
            if let Err(error) = self.begin_flight(&mut g, shared, opts) {
                tracing::debug!(key = %self.key, %error, "remote change: refetch did not start");
            }
        }
        false
    }
    fn write_state_behind(
        &self,
        shared: &Shared,
        after: Option<AfterWrite>,
    ) -> Result<(), Option<AfterWrite>> {
        self.write_behind(shared, after)
    }
    fn is_persisted(&self, shared: &Shared) -> bool {
        let g = self.inner.lock();
        self.persist_fns(&g, shared).is_some()
    }
    fn dehydrate(&self, shared: &Shared) -> Option<DehydratedQuery> {
        let g = self.inner.lock();
        let fns = self.persist_fns(&g, shared)?;
        let data = g.state.data.clone()?;
        let at = g.state.data_updated_at?;
        let invalidated = g.state.is_invalidated;
        drop(g);
        let envelope = Envelope::new((), at, invalidated);
        match (fns.to_json)(&data) {
            Ok(json) => Some(DehydratedQuery {
                key: self.key.to_string(),
                data: json,
                data_updated_at_ms: envelope.data_updated_at_ms,
                invalidated,
            }),
            Err(error) => {
                tracing::warn!(key = %self.key, %error, "not dehydrated: data does not encode");
                None
            }
        }
    }
    fn restore(&self, shared: &Shared, q: DehydratedQuery) -> Result<(), DehydratedQuery> {
        let fns = {
            let g = self.inner.lock();
            self.persist_fns(&g, shared)
        };
        let Some(fns) = fns else {
            return Err(q);
        };
        let envelope = match q.decode(fns) {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(key = %self.key, %error, "snapshot entry does not decode: ignored");
                return Ok(());
            }
        };
        let at = envelope.data_updated_at();
        let mut g = self.lock();
        // Newer data wins: a snapshot never overwrites fresher data in memory.
        if g.state.data_updated_at.is_some_and(|current| current >= at) {
            return Ok(());
        }
        let age = age_of(at);
        g.hydrated = true;
        g.apply(Action::Success {
            data: Arc::new(envelope.data),
            at,
            invalidated: envelope.invalidated,
        });
        if g.flight.is_some() {
            g.apply(Action::FetchGoesOn);
        }
        let now = Instant::now();
        g.updated_at = Some(now.checked_sub(age).unwrap_or(now));
        self.rearm_stale_timer(&mut g, shared);
        Ok(())
    }
    fn on_stale_timer(&self, shared: &Arc<Shared>) {
        self.stale_timer_fired(shared);
    }
    fn notify_removed(&self) {
        let listeners = {
            let mut g = self.inner.lock();
            g.listeners.take()
        };
        for w in listeners.iter().flat_map(|l| l.iter()) {
            w.listener.removed();
        }
    }
}
