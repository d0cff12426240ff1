//! The engine's type-erased view of an entry ([`EngineEntry`]): the bulk operations
//! (invalidate, refetch, cancel, reset, remote changes, snapshots) that filters, the bus
//! and the timer driver run on entries whose data type they do not know. Each one is an
//! event dispatched through [`Shared::dispatch`], so its effects run in the usual order.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::time::Instant;

use super::Shared;
use crate::engine::tier::AfterWrite;
use crate::entry::{AnyEntry, Entry, Event, Outcome, Reload};
use crate::inspect::{DataDescription, QueryInfo};
use crate::refetch::RefetchType;
use crate::snapshot::DehydratedQuery;
use crate::storage::Envelope;

/// A future that resolves when a started refetch settles (its outcome is in the cache).
pub(crate) type Settled = BoxFuture<'static, ()>;

/// An entry as the engine stores it: the cache's view plus the engine's bulk operations.
pub(crate) trait EngineEntry: AnyEntry {
    /// Marks the entry stale; refetches it if `refetch` covers it (see [`RefetchType`]).
    fn invalidate(self: Arc<Self>, shared: &Arc<Shared>, refetch: RefetchType) -> Option<Settled>;
    fn refetch(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled>;
    /// Cancels the fetch in flight; the future resolves once its task has stopped.
    fn cancel(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled>;
    fn reset(self: Arc<Self>, shared: &Arc<Shared>);
    /// Tells the observers of a removed entry (called with no lock held).
    fn notify_removed(self: Arc<Self>, shared: &Arc<Shared>);
    /// Whether the query is persisted (its options or a client rule say so).
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
    fn on_stale_timer(self: Arc<Self>, shared: &Arc<Shared>, at: Instant);
    /// The entry as a snapshot item, if it is persisted and has data.
    fn dehydrate(&self, shared: &Shared) -> Option<DehydratedQuery>;
    /// What the entry holds and how it is doing, for inspection (devtools): read under
    /// the entry's lock, then (with `with_data`, for persisted data) encoded as JSON with
    /// no lock held.
    fn describe(&self, shared: &Shared, with_data: bool) -> QueryInfo;
    /// Applies a snapshot item if the entry can decode it; gives it back otherwise.
    fn restore(
        self: Arc<Self>,
        shared: &Arc<Shared>,
        q: DehydratedQuery,
    ) -> Result<(), DehydratedQuery>;
}

/// The settlement of the flight a bulk operation started or joined, if any.
fn settled<T: Send + Sync + 'static>(outcome: Outcome<T>) -> Option<Settled> {
    let Outcome::Flight(flight) = outcome else {
        return None;
    };
    Some(
        async move {
            let _ = flight.wait().await;
        }
        .boxed(),
    )
}

impl<T: Send + Sync + 'static> EngineEntry for Entry<T> {
    fn invalidate(self: Arc<Self>, shared: &Arc<Shared>, refetch: RefetchType) -> Option<Settled> {
        // (The client writes the invalidated flag to the second tier, then announces it.)
        let can_spawn = shared.runtime.can_spawn();
        settled(shared.dispatch(&self, Event::Invalidate { can_spawn, refetch }))
    }
    fn refetch(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled> {
        let can_spawn = shared.runtime.can_spawn();
        settled(shared.dispatch(&self, Event::Refetch { can_spawn }))
    }
    fn cancel(self: Arc<Self>, shared: &Arc<Shared>) -> Option<Settled> {
        let Outcome::Flight(f) = shared.dispatch(&self, Event::Cancel) else {
            return None;
        };
        // Its fetch function hears it at once (a context's token); the abort drops the
        // attempt only when the host gets to the task.
        if let Some(token) = f.cancellation() {
            token.cancel();
        }
        f.abort_task();
        Some(async move { f.stopped().await }.boxed())
    }
    fn reset(self: Arc<Self>, shared: &Arc<Shared>) {
        let mut cancel = None;
        shared.dispatch(
            &self,
            Event::Reset {
                cancel: &mut cancel,
            },
        );
        // With no lock held, after the reset's effects: the detached fetch's function
        // hears that the entry stopped waiting for it.
        if let Some(token) = cancel {
            token.cancel();
        }
    }
    fn notify_removed(self: Arc<Self>, shared: &Arc<Shared>) {
        shared
            .events
            .emit(|| crate::events::CacheEventKind::QueryRemoved {
                key: self.key.clone(),
            });
        // Most removed entries have no observer: no transition for them (a cleared
        // cache of a million entries tells nobody).
        if self.has_listeners() {
            shared.dispatch(&self, Event::TellRemoved);
        }
    }
    fn is_persisted(&self, shared: &Shared) -> bool {
        shared.persist_fns(self).is_some()
    }
    fn write_state_behind(
        &self,
        shared: &Shared,
        after: Option<AfterWrite>,
    ) -> Result<(), Option<AfterWrite>> {
        shared.write_behind(self, after)
    }
    fn remote_change(
        self: Arc<Self>,
        shared: &Arc<Shared>,
        reload: Reload,
        refetch_now: bool,
    ) -> bool {
        let event = Event::RemoteChange {
            reload,
            refetch_now,
            can_spawn: shared.runtime.can_spawn(),
        };
        matches!(shared.dispatch(&self, event), Outcome::Yes)
    }
    fn on_stale_timer(self: Arc<Self>, shared: &Arc<Shared>, at: Instant) {
        shared.dispatch(&self, Event::StaleTimerFired { at });
    }
    fn dehydrate(&self, shared: &Shared) -> Option<DehydratedQuery> {
        let fns = shared.persist_fns(self)?;
        let p = self.persisted()?;
        let envelope = Envelope::new((), p.at, p.invalidated);
        match (fns.to_json)(&p.data) {
            Ok(json) => Some(DehydratedQuery {
                key: self.key.to_string(),
                data: json,
                data_updated_at_ms: envelope.data_updated_at_ms,
                invalidated: p.invalidated,
            }),
            Err(error) => {
                tracing::warn!(key = %self.key, error = %crate::error::report(&error), "not dehydrated: data does not encode");
                None
            }
        }
    }
    fn describe(&self, shared: &Shared, with_data: bool) -> QueryInfo {
        // One read of the entry's state (its lock), then everything else lock-free.
        let state = self.snapshot(None, shared.runtime.now());
        let (observers, enabled_observers) = self.observer_counts();
        let persist = shared.persist_fns(self);
        let data = state.data.as_ref().map(|d| {
            let json = match (with_data, persist) {
                // User code (a `Serialize` impl): run here, no lock held; a panic is
                // contained by `to_json` and reported as an encode error.
                (true, Some(fns)) => Some((fns.to_json)(d).map_err(|e| e.to_string())),
                _ => None,
            };
            DataDescription {
                type_name: std::any::type_name::<T>(),
                size: std::mem::size_of_val::<T>(d),
                json,
            }
        });
        QueryInfo {
            key: self.key.clone(),
            type_name: std::any::type_name::<T>(),
            status: state.status,
            fetch_status: state.fetch_status,
            observers,
            enabled_observers,
            data_updated_at: state.data_updated_at,
            stale: state.is_stale(),
            invalidated: state.is_invalidated,
            failure_count: state.failure_count,
            error: state.error.as_ref().map(|e| e.report().to_string()),
            persisted: persist.is_some(),
            data,
        }
    }
    fn restore(
        self: Arc<Self>,
        shared: &Arc<Shared>,
        q: DehydratedQuery,
    ) -> Result<(), DehydratedQuery> {
        let Some(fns) = shared.persist_fns(&self) else {
            return Err(q);
        };
        let envelope = match q.decode(fns) {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(key = %self.key, error = %crate::error::report(&error), "snapshot entry does not decode: ignored");
                return Ok(());
            }
        };
        let at = envelope.data_updated_at();
        // Weighed before the transition, with no lock held (a weigher is user code).
        let weight = shared.weigh_for_entry(&self, &envelope.data);
        let event = Event::Restore {
            data: Arc::new(envelope.data),
            weight,
            at,
            invalidated: envelope.invalidated,
        };
        shared.dispatch(&self, event);
        Ok(())
    }
}
