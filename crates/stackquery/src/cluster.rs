//! Many instances, one cache: the client side of the invalidation bus and of cluster-wide
//! deduplication (feature `redis`; without it every hook here is a no-op).
//!
//! * Outgoing: `invalidate_queries`, `set_query_data` (after its shared-tier write has
//!   landed) and `remove_queries` are published on the bus.
//! * Incoming: another instance's invalidation marks matching entries stale (observed ones
//!   refetch at once); its `set_query_data` marks the entry stale and flags it to reload
//!   from the shared tier first, so the update costs no upstream fetch; its removal removes.
//!   After a reconnect (or a lagging subscriber) every entry is treated as possibly stale.
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

    use crate::client::Shared;
    use crate::key::QueryKey;

    /// Without the `redis` feature there is no bus: every hook does nothing.
    #[derive(Default)]
    pub(crate) struct Cluster {
        _none: (),
    }

    impl Cluster {
        pub(crate) fn start(&self, _shared: &Arc<Shared>) {}
        #[inline]
        pub(crate) fn ensure_listening(&self, _shared: &Arc<Shared>) {}
        pub(crate) fn has_bus(&self) -> bool {
            false
        }
        pub(crate) fn publish_invalidate(&self, _key: QueryKey, _exact: bool) {}
        pub(crate) fn publish_set(&self, _key: QueryKey) {}
        pub(crate) fn publish_remove(&self, _key: QueryKey, _prefix: bool) {}
        pub(crate) async fn drain(&self, _limit: std::time::Duration) -> bool {
            true
        }
    }
}

#[cfg(feature = "redis")]
mod enabled {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Weak};
    use std::time::Duration;

    use parking_lot::Mutex;
    use tokio::sync::Notify;

    use crate::bus::outbox::Outbox;
    use crate::bus::{BusEvent, BusMessageKind, LeaseToken, RedisBus, RedisLeases};
    use crate::cache::Scope;
    use crate::client::Shared;
    use crate::entry::Reload;
    use crate::key::QueryKey;
    use crate::worker::{Running, Worker};

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
    }

    impl Cluster {
        pub(crate) fn has_bus(&self) -> bool {
            self.bus.is_some()
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

        pub(crate) fn publish_invalidate(&self, key: QueryKey, exact: bool) {
            self.publish(BusMessageKind::Invalidate { key, exact });
        }

        pub(crate) fn publish_set(&self, key: QueryKey) {
            self.publish(BusMessageKind::Set { key });
        }

        pub(crate) fn publish_remove(&self, key: QueryKey, prefix: bool) {
            self.publish(BusMessageKind::Remove { key, prefix });
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

        fn wake(&self, key: &str) {
            if let Some(n) = self.waiters.lock().get(key) {
                n.notify_waiters();
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
                    tracing::warn!(key, %error, "lease unavailable: fetching locally");
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
                    tracing::warn!(key = token.key(), %error, "lease release failed (it will expire)");
                }
            }
        }
    }

    /// Applies other instances' messages to this client.
    async fn listen(mut sub: crate::bus::BusSubscription, shared: Weak<Shared>, _running: Running) {
        while let Some(event) = sub.recv().await {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match event {
                BusEvent::Message(msg) => match msg.kind {
                    BusMessageKind::Invalidate { key, exact } => {
                        let scope = match (exact, key.is_empty()) {
                            (true, _) => Scope::Exact(&key),
                            (false, true) => Scope::All,
                            (false, false) => Scope::Prefix(&key),
                        };
                        for e in shared.cache.matching(scope) {
                            e.remote_change(&shared, Reload::No);
                        }
                    }
                    BusMessageKind::Set { key } => {
                        if let Some(e) = shared.cache.get(&key) {
                            e.remote_change(&shared, Reload::Trust);
                        }
                        shared.cluster.wake(&key.to_string());
                    }
                    BusMessageKind::Remove { key, prefix } => {
                        let scope = match (prefix, key.is_empty()) {
                            (false, _) => Scope::Exact(&key),
                            (true, true) => Scope::All,
                            (true, false) => Scope::Prefix(&key),
                        };
                        for e in shared.cache.remove_matching(scope) {
                            e.notify_removed();
                        }
                    }
                },
                // Messages may have been lost: everything in memory may be stale.
                BusEvent::Reconnected | BusEvent::Lagged(_) => everything_may_be_stale(&shared),
            }
        }
    }

    /// Messages may have been lost: everything in memory may be stale.
    fn everything_may_be_stale(shared: &Arc<Shared>) {
        tracing::info!("bus messages may have been lost: treating the memory tier as stale");
        for e in shared.cache.matching(Scope::All) {
            e.remote_change(shared, Reload::IfNewer);
        }
    }
}
