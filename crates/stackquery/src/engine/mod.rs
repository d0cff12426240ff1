//! The engine's shared context: what the client's handles, fetch tasks, observers,
//! mutations and background workers share — the cache, the timers, the second tier, the
//! other instances, the counters and the client-wide settings. It lives below the
//! `QueryClient` façade, which only holds an `Arc` of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod announce;
pub(crate) mod cluster;
mod erased;
mod fetch;
mod initial;
pub(crate) mod mutation_scopes;
mod run;
mod stream;
pub(crate) mod tier;
mod timer_driver;
mod typed;

pub(crate) use announce::Covered;
pub(crate) use erased::EngineEntry;
pub(crate) use typed::{downcast, mismatch};

use crate::cache::{Cache, Removal};
use crate::events::{CacheEventKind, Events};
use crate::host::Runtime;
use crate::options::Defaults;
use crate::persist_rules::PersistRules;
use crate::snapshot::Restored;
use crate::stats::Counters;
use crate::timers::Timers;
use cluster::Cluster;
use tier::Tier;

/// An entry as the engine's cache holds it.
pub(crate) type ErasedEntry = Arc<dyn EngineEntry>;

/// Everything the client's handles, fetch tasks and background work share.
pub(crate) struct Shared {
    pub(crate) defaults: Defaults,
    pub(crate) cache: Cache<dyn EngineEntry>,
    pub(crate) counters: Arc<Counters>,
    /// The second tier, if the client has a storage.
    pub(crate) tier: Option<Arc<Tier>>,
    /// Snapshot entries restored by `hydrate` that no typed call has claimed yet.
    pub(crate) restored: Restored,
    /// Gc, stale notices and polls: one queue, one driver task (see `timers.rs`).
    pub(crate) timers: Arc<Timers>,
    /// The other instances: invalidation bus and cluster dedup (see `cluster.rs`).
    pub(crate) cluster: Cluster,
    /// Keys persisted whatever their queries say (see `persist_rules.rs`).
    pub(crate) persist_rules: PersistRules,
    /// Scope queues of mutations (see `mutation.rs`).
    pub(crate) mutation_scopes: mutation_scopes::Scopes,
    /// Names of the durable mutation queues registered (one worker per queue).
    pub(crate) durable_names: Arc<parking_lot::Mutex<std::collections::HashSet<Arc<str>>>>,
    /// Where the engine runs: its clock, tasks and sleeps (tokio unless the client was
    /// built with another [`Host`](crate::Host)).
    pub(crate) runtime: Runtime,
    /// The event stream (see `events.rs`).
    pub(crate) events: Arc<Events>,
    /// What the metrics recorder has been told of the batched counters (fresh hits).
    published: crate::telemetry::Published,
    next_id: AtomicU64,
}

impl Shared {
    /// Builds the context; its timer driver holds it weakly.
    pub(crate) fn new(
        defaults: Defaults,
        bounds: crate::cache::Bounds,
        tier: Option<Arc<Tier>>,
        cluster: Cluster,
        persist_rules: PersistRules,
        runtime: Runtime,
        event_capacity: usize,
    ) -> Arc<Shared> {
        let events = Arc::new(Events::new(event_capacity));
        if let Some(tier) = &tier {
            tier.set_events(events.clone());
        }
        let counters = Arc::new(Counters::default());
        cluster.set_events(events.clone(), counters.clone());
        Arc::new_cyclic(|weak| {
            let weak = weak.clone();
            let timers = Arc::new(Timers::new(
                Box::new(move |wake, running| {
                    Box::pin(timer_driver::drive(weak.clone(), wake, running))
                }),
                runtime.clone(),
            ));
            Shared {
                defaults,
                cache: Cache::new(bounds, timers.clone(), events.subscriber_count()),
                timers,
                counters,
                tier,
                restored: Restored::new(),
                persist_rules,
                mutation_scopes: mutation_scopes::Scopes::default(),
                durable_names: Arc::default(),
                cluster,
                runtime,
                events,
                published: crate::telemetry::Published::default(),
                next_id: AtomicU64::new(0),
            }
        })
    }

    /// Sends the evictions and collections the cache logged (call with no cache lock
    /// held). One atomic load when there are none.
    pub(crate) fn send_removals(&self) {
        for (key, why) in self.cache.take_removals() {
            self.events.emit(|| match why {
                Removal::Evicted => CacheEventKind::QueryEvicted { key },
                Removal::Collected => CacheEventKind::QueryCollected { key },
            });
        }
    }

    /// Publishes the batched metrics (fresh hits, the entries gauge) to the `metrics`
    /// recorder. O(stripes); nothing without the `metrics` feature.
    #[inline]
    pub(crate) fn publish_metrics(&self) {
        // `TIMED` is a constant: without the feature the hit total (O(stripes)) is not
        // even summed.
        if crate::telemetry::TIMED {
            self.published
                .flush(self.counters.hits.get(), self.cache.len());
        }
    }

    /// A process-unique id for an entry or an observer (timers are keyed by it).
    pub(crate) fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
