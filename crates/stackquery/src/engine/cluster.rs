//! Many instances, one cache: the client side of the invalidation bus and of cluster-wide
//! deduplication (feature `redis`; without it every hook here is a no-op).
//!
//! * Outgoing: `invalidate_queries`, `set_query_data` (after its shared-tier write has
//!   landed) and `remove_queries` are published on the bus.
//! * Incoming: another instance's invalidation marks matching entries stale (observed ones
//!   refetch at once; the sender's `RefetchType` is not carried, it is about what the
//!   sender reads next); its `set_query_data` marks the entry stale and flags it to reload
//!   from the shared tier first, so the update costs no upstream fetch; its removal removes.
//! * Keeping up: the listener takes every message already waiting after each one it waits
//!   for (up to [`MAX_BATCH`]), merges them per scope (a key invalidated 100 times is
//!   looked up once; exact keys cost one shard read each, no registry lock), and applies
//!   each touched entry once. The bus's channel holds 16,384 events by default.
//! * Falling behind anyway (a lag), or reconnecting: messages were lost. After a
//!   reconnection nothing is known of them, so every entry may be stale. After a lag the
//!   bus knows the scopes of the events it emitted (see `bus::lost`): only entries in the
//!   scopes touched since the last event read are marked stale — exact keys for a recent
//!   lag, whole key kinds (first key part) for an older one, everything only past that.
//!   This is the cheapest *correct* answer: a lost event's key is always in what is marked,
//!   so data another instance invalidated is never served as fresh. Per-origin sequence
//!   numbers on the wire would tell how many messages were lost, not which keys; the
//!   digest tells which keys, without a wire change.
//! * What a loss costs: entries are marked stale and flagged to reload from the shared
//!   tier if it holds newer data (`Reload::IfNewer`), but no refetch storm starts. An
//!   unobserved entry refetches on its next read; observed ones are refetched in the
//!   background at most [`LOST_REFETCHES`] at a time (skipping any a read refreshed
//!   meanwhile), instead of one upstream fetch per observed entry at the same moment.
//! * Cluster dedup: for a cold persisted key, the fetch runs under a lease (`SET NX PX`
//!   with a token). The others wait — woken by the holder's `Set` message, checking the
//!   shared tier — and take the lease over if it expires (its holder died), or fetch locally
//!   after a bounded wait.

#[cfg(feature = "redis")]
pub(crate) use enabled::*;

#[cfg(not(feature = "redis"))]
pub(crate) use disabled::*;

#[cfg(not(feature = "redis"))]
mod disabled {
    use std::sync::Arc;

    use crate::engine::Shared;
    use crate::key::QueryKey;
    use crate::scope::KeyScope;

    /// Without the `redis` feature there is no bus: every hook does nothing.
    #[derive(Default)]
    pub(crate) struct Cluster {
        _none: (),
    }

    impl Cluster {
        pub(crate) fn start(&self, _shared: &Arc<Shared>) {}
        #[inline]
        pub(crate) fn ensure_listening(&self, _shared: &Arc<Shared>) {}
        pub(crate) fn set_events(
            &self,
            _events: Arc<crate::events::Events>,
            _counters: Arc<crate::stats::Counters>,
        ) {
        }
        pub(crate) fn has_bus(&self) -> bool {
            false
        }
        pub(crate) fn publish_invalidate(&self, _scope: KeyScope) {}
        pub(crate) fn publish_set(&self, _key: QueryKey) {}
        pub(crate) fn publish_remove(&self, _scope: KeyScope) {}
        pub(crate) async fn drain(&self, _limit: std::time::Duration) -> bool {
            true
        }
    }
}

#[cfg(feature = "redis")]
mod enabled {
    use std::collections::hash_map::Entry as Slot;
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Weak};
    use std::time::Duration;

    use parking_lot::Mutex;
    use tokio::sync::{Notify, Semaphore};

    use crate::bus::lost::Lost;
    use crate::bus::outbox::Outbox;
    use crate::bus::{BusEvent, BusMessageKind, Incoming, LeaseToken, RedisBus, RedisLeases};
    use crate::engine::ErasedEntry;
    use crate::engine::Shared;
    use crate::entry::Reload;
    use crate::key::{KeyHashBuilder, QueryKey};
    use crate::scope::KeyScope;
    use crate::worker::{Running, Worker};

    /// The most events applied as one batch: bounds the batch's memory and how long the
    /// listener goes without checking that the client still exists.
    pub(crate) const MAX_BATCH: usize = 4_096;

    /// Refetches that lost messages (a lag, a reconnection) may run at once, over all of
    /// them: enough to refresh what users watch quickly, few enough not to flood upstream.
    pub(crate) const LOST_REFETCHES: usize = 8;

    /// The outcome of trying to take a fetch lease.
    pub(crate) enum Acquired {
        /// This instance holds it.
        Held(LeaseToken),
        /// Another instance holds it: wait for its result.
        Busy,
        /// Redis cannot be reached: nobody can coordinate, so fetch locally, now.
        Unreachable,
    }

    /// Cluster-wide deduplication settings.
    pub(crate) struct Dedup {
        pub(crate) leases: RedisLeases,
        /// How long a lease lasts if its holder never releases it (it died).
        pub(crate) lease_ttl: Duration,
        /// How long a non-holder waits for the holder before fetching itself.
        pub(crate) max_wait: Duration,
    }

    /// The client's view of the other instances.
    #[derive(Default)]
    pub(crate) struct Cluster {
        pub(crate) bus: Option<RedisBus>,
        /// What this instance still has to tell the others (present with a bus).
        pub(crate) outbox: Option<Outbox>,
        pub(crate) dedup: Option<Dedup>,
        /// The task applying other instances' messages; restarted on the current runtime
        /// if the runtime it ran on died.
        listener: Worker,
        /// The listener has run before: a restarted one may have missed messages.
        listened: AtomicBool,
        /// Waiters for a key's `Set` message (cluster dedup), by key text.
        waiters: Mutex<HashMap<String, Arc<Notify>>>,
        /// Permits for the refetches lost messages cause ([`LOST_REFETCHES`]).
        lost_refetches: LostRefetches,
        /// The client's event stream (set once the engine exists).
        events: std::sync::OnceLock<Arc<crate::events::Events>>,
        /// The client's counters (bus messages out; set once the engine exists).
        counters: std::sync::OnceLock<Arc<crate::stats::Counters>>,
    }

    /// A semaphore of [`LOST_REFETCHES`] permits (a type of its own for `Default`).
    struct LostRefetches(Arc<Semaphore>);

    impl Default for LostRefetches {
        fn default() -> Self {
            LostRefetches(Arc::new(Semaphore::new(LOST_REFETCHES)))
        }
    }

    impl Cluster {
        pub(crate) fn has_bus(&self) -> bool {
            self.bus.is_some()
        }

        /// Connects the cluster to the client's event stream.
        pub(crate) fn set_events(
            &self,
            events: Arc<crate::events::Events>,
            counters: Arc<crate::stats::Counters>,
        ) {
            let _ = self.events.set(events);
            let _ = self.counters.set(counters);
        }

        /// Starts the listener task on the current runtime unless it runs (first use, or
        /// the runtime it ran on has shut down). Two atomic loads while it runs.
        pub(crate) fn start(&self, shared: &Arc<Shared>) {
            let Some(bus) = &self.bus else { return };
            bus.keep_listening();
            let weak = Arc::downgrade(shared);
            self.listener.ensure(|running| {
                let sub = bus.subscribe();
                // A restart: messages sent while nobody listened are lost. Marked before
                // this call returns, so the caller (a hit) cannot serve them as fresh.
                if self.listened.swap(true, Ordering::AcqRel) {
                    everything_may_be_stale(shared);
                }
                listen(sub, weak, running)
            });
        }

        /// The hit path's check: the listener must be alive for fresh data to be trusted.
        /// One atomic load when it is.
        #[inline]
        pub(crate) fn ensure_listening(&self, shared: &Arc<Shared>) {
            if self.bus.is_some() && !self.listener.is_running() {
                self.start(shared);
            }
        }

        /// Queues `kind` in the outbox: sent in order, retried until the bus takes it.
        fn publish(&self, kind: BusMessageKind) {
            if let Some(outbox) = &self.outbox {
                if let Some(counters) = self.counters.get() {
                    counters.bus_out.incr();
                }
                if let Some(events) = self.events.get() {
                    events.emit(|| crate::events::CacheEventKind::BusOut {
                        message: format!("{kind:?}"),
                    });
                }
                outbox.send(kind);
            }
        }

        /// Sends what the outbox holds, within `limit`. Returns whether all went out.
        pub(crate) async fn drain(&self, limit: Duration) -> bool {
            match &self.outbox {
                Some(outbox) => outbox.drain(limit).await,
                None => true,
            }
        }

        pub(crate) fn publish_invalidate(&self, scope: KeyScope) {
            self.publish(BusMessageKind::Invalidate { scope });
        }

        pub(crate) fn publish_set(&self, key: QueryKey) {
            self.publish(BusMessageKind::Set { key });
        }

        pub(crate) fn publish_remove(&self, scope: KeyScope) {
            self.publish(BusMessageKind::Remove { scope });
        }

        /// The notifier woken when another instance announces new data for `key`.
        pub(crate) fn waiter(&self, key: &str) -> Arc<Notify> {
            self.waiters
                .lock()
                .entry(key.to_string())
                .or_insert_with(|| Arc::new(Notify::new()))
                .clone()
        }

        pub(crate) fn forget_waiter(&self, key: &str, notify: &Arc<Notify>) {
            let mut w = self.waiters.lock();
            // Only the map and this caller hold it: nobody else is waiting.
            if w.get(key)
                .is_some_and(|n| Arc::ptr_eq(n, notify) && Arc::strong_count(n) <= 2)
            {
                w.remove(key);
            }
        }

        fn wake(&self, keys: &[QueryKey]) {
            let waiters = self.waiters.lock();
            // Usually nobody waits: no key text is built then.
            if waiters.is_empty() {
                return;
            }
            for key in keys {
                if let Some(n) = waiters.get(&key.to_string()) {
                    n.notify_waiters();
                }
            }
        }

        /// Tries to take the fetch lease for `key`.
        pub(crate) async fn acquire(&self, key: &str) -> Acquired {
            let Some(dedup) = self.dedup.as_ref() else {
                return Acquired::Unreachable;
            };
            match dedup.leases.try_acquire(key, dedup.lease_ttl).await {
                Ok(Some(token)) => Acquired::Held(token),
                Ok(None) => Acquired::Busy,
                Err(error) => {
                    tracing::warn!(key, error = %crate::error::report(&error), "lease unavailable: fetching locally");
                    Acquired::Unreachable
                }
            }
        }

        /// Runs `work` while renewing the lease `token` (every third of its ttl), so a
        /// fetch that outlasts the ttl keeps it. Without cluster dedup: just `work`.
        pub(crate) async fn hold_while<F: std::future::Future>(
            &self,
            token: &LeaseToken,
            work: F,
        ) -> F::Output {
            match &self.dedup {
                Some(dedup) => dedup.leases.hold_while(token, dedup.lease_ttl, work).await,
                None => work.await,
            }
        }

        pub(crate) async fn release(&self, token: &LeaseToken) {
            if let Some(dedup) = &self.dedup {
                if let Err(error) = dedup.leases.release(token).await {
                    tracing::warn!(key = token.key(), error = %crate::error::report(&error), "lease release failed (it will expire)");
                }
            }
        }
    }

    /// Applies other instances' messages to this client, in batches: after waiting for
    /// one event it takes every event already waiting (up to [`MAX_BATCH`]).
    async fn listen(mut sub: crate::bus::BusSubscription, shared: Weak<Shared>, _running: Running) {
        let mut batch = Vec::new();
        while let Some(first) = sub.recv_incoming().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match sub.try_recv_incoming() {
                    Some(next) => batch.push(next),
                    None => break,
                }
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut changes = Changes::default();
            for _ in &batch {
                shared.counters.bus_in.incr();
            }
            if shared.events.on() {
                for incoming in &batch {
                    shared.events.emit(|| crate::events::CacheEventKind::BusIn {
                        message: format!("{incoming:?}"),
                    });
                }
            }
            for incoming in batch.drain(..) {
                changes.add(incoming);
            }
            changes.apply(&shared);
        }
    }

    /// What one entry must undergo: the strongest of what the batch asked for it.
    #[derive(Clone, Copy)]
    struct Change {
        reload: Reload,
        /// Refetch at once if active (a message said so); otherwise through the
        /// throttled background refetches (lost messages only suggested so).
        now: bool,
    }

    impl Change {
        const INVALIDATED: Change = Change {
            reload: Reload::No,
            now: true,
        };
        const SET: Change = Change {
            reload: Reload::Trust,
            now: true,
        };
        const MAYBE_LOST: Change = Change {
            reload: Reload::IfNewer,
            now: false,
        };

        fn merge(self, other: Change) -> Change {
            Change {
                reload: self.reload.max(other.reload),
                now: self.now || other.now,
            }
        }
    }

    fn merge_into<K: std::hash::Hash + Eq, S: std::hash::BuildHasher>(
        map: &mut HashMap<K, Change, S>,
        key: K,
        change: Change,
    ) {
        match map.entry(key) {
            Slot::Occupied(mut slot) => {
                let merged = slot.get().merge(change);
                slot.insert(merged);
            }
            Slot::Vacant(slot) => {
                slot.insert(change);
            }
        }
    }

    /// A batch of events, merged by scope. Order within a batch does not matter: every
    /// change is idempotent, and a removal wins over anything else for its entries
    /// whichever came first (an entry removed here is not found by the later steps).
    #[derive(Default)]
    struct Changes {
        everything: Option<Change>,
        prefixes: HashMap<QueryKey, Change, KeyHashBuilder>,
        exact: HashMap<QueryKey, Change, KeyHashBuilder>,
        removals: HashSet<KeyScope>,
        /// Keys another instance wrote: cluster dedup waiters to wake.
        written: Vec<QueryKey>,
    }

    impl Changes {
        fn add(&mut self, incoming: Incoming) {
            match incoming {
                Incoming::Event(BusEvent::Message(msg)) => match msg.kind {
                    BusMessageKind::Invalidate { scope } => {
                        self.scope(scope, Change::INVALIDATED);
                    }
                    BusMessageKind::Set { key } => {
                        merge_into(&mut self.exact, key.clone(), Change::SET);
                        self.written.push(key);
                    }
                    BusMessageKind::Remove { scope } => {
                        self.removals.insert(scope.normalized());
                    }
                },
                // Nothing is known of what was missed.
                Incoming::Event(BusEvent::Reconnected) => self.everything(Change::MAYBE_LOST),
                // Not sent by the bus itself; as a lag that knows nothing.
                Incoming::Event(BusEvent::Lagged(_)) => self.everything(Change::MAYBE_LOST),
                Incoming::Lagged { missed, lost } => match lost {
                    Lost::Everything => {
                        tracing::info!(
                            missed,
                            "bus: fell behind, scopes unknown: everything may be stale"
                        );
                        self.everything(Change::MAYBE_LOST);
                    }
                    Lost::Scopes(scopes) => {
                        tracing::info!(
                            missed,
                            scopes = scopes.len(),
                            "bus: fell behind: entries in the lost messages' scopes may be stale"
                        );
                        for scope in scopes {
                            self.scope(scope, Change::MAYBE_LOST);
                        }
                    }
                },
            }
        }

        fn everything(&mut self, change: Change) {
            self.everything = Some(self.everything.map_or(change, |c| c.merge(change)));
        }

        fn scope(&mut self, scope: KeyScope, change: Change) {
            match scope.normalized() {
                KeyScope::All => self.everything(change),
                KeyScope::Exact(key) => merge_into(&mut self.exact, key, change),
                KeyScope::Prefix(key) => merge_into(&mut self.prefixes, key, change),
            }
        }

        /// Removals first, then one `remote_change` per touched entry, then the wakes.
        fn apply(self, shared: &Arc<Shared>) {
            for scope in &self.removals {
                for e in shared.cache.remove_matching(scope) {
                    e.notify_removed(shared);
                }
            }
            // By entry id: an entry in several scopes changes once (a second change would
            // mark the refetch the first one started as outdated).
            let mut touched: HashMap<u64, (ErasedEntry, Change)> = HashMap::new();
            let mut touch = |e: ErasedEntry, change: Change| match touched.entry(e.id()) {
                Slot::Occupied(mut slot) => slot.get_mut().1 = slot.get().1.merge(change),
                Slot::Vacant(slot) => {
                    slot.insert((e, change));
                }
            };
            if let Some(change) = self.everything {
                tracing::info!(
                    "bus messages may have been lost: treating the memory tier as stale"
                );
                for e in shared.cache.matching(&KeyScope::All) {
                    touch(e, change);
                }
            }
            for (prefix, change) in self.prefixes {
                for e in shared.cache.matching(&KeyScope::Prefix(prefix)) {
                    touch(e, change);
                }
            }
            for (key, change) in &self.exact {
                // A shard's read lock, not the registry's: the common case (a key this
                // instance does not hold) costs one hash lookup.
                if let Some(e) = shared.cache.get(key) {
                    touch(e, *change);
                }
            }
            let mut later = Vec::new();
            for (e, change) in touched.into_values() {
                if e.clone().remote_change(shared, change.reload, change.now) {
                    later.push(e);
                }
            }
            refetch_later(shared, later);
            if !self.written.is_empty() {
                shared.cluster.wake(&self.written);
            }
        }
    }

    /// Messages may have been lost and nothing is known of them: every entry may be stale.
    /// Nothing refetches at once (see [`refetch_later`]).
    fn everything_may_be_stale(shared: &Arc<Shared>) {
        let mut changes = Changes::default();
        changes.everything(Change::MAYBE_LOST);
        changes.apply(shared);
    }

    /// Refetches `entries` (active ones marked stale by lost messages) in the background,
    /// at most [`LOST_REFETCHES`] at a time over the whole client. An entry refreshed
    /// meanwhile (a read, another message), no longer observed, or already fetching is
    /// skipped when its turn comes.
    fn refetch_later(shared: &Arc<Shared>, entries: Vec<ErasedEntry>) {
        if entries.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime, no fetch at all: the entries refetch on their next read.
            return;
        };
        let permits = Arc::clone(&shared.cluster.lost_refetches.0);
        let weak = Arc::downgrade(shared);
        tracing::debug!(
            entries = entries.len(),
            "bus: refetching observed entries, throttled"
        );
        runtime.spawn(async move {
            for e in entries {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                if !e.is_active() || !e.is_stale(shared.runtime.now()) || e.is_fetching() {
                    continue;
                }
                if let Some(settled) = e.refetch(&shared) {
                    // The permit is held until the fetch settles.
                    tokio::spawn(async move {
                        settled.await;
                        drop(permit);
                    });
                }
            }
        });
    }
}
