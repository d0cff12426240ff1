//! The engine's glue between the memory cache (L1) and a [`Storage`] (L2): hydration
//! reads, and the write-behind queue of what this instance owes the store
//! (`write_queue.rs`). The typed encode/decode functions live with the storage format
//! (`storage/typed.rs`); the `Storage` trait and its backends know nothing of this.
//!
//! Write-behind keeps at most one pending operation per key: a newer write replaces an
//! older one that has not started, so a burst of updates to a few keys under a slow store
//! costs a few writes, and the last write always carries the newest data. Encoding is
//! lazy (done by the worker), so replaced writes are never encoded. Prefix deletions in a
//! batch run before the key operations of that batch (a prefix deletion drops the older
//! pending operations under it when it is queued).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod ttl;
pub(crate) mod write_queue;

use crate::events::{CacheEventKind, Events, StorageOutcome};
use crate::stats::Counters;
pub(crate) use crate::storage::typed::PersistFns;
use crate::storage::{Codec, Envelope, Storage};
use crate::worker::Worker;
use write_queue::{Encoder, Op, WriteQueue};

pub(crate) use ttl::{clamp_jitter, TtlPolicy};

pub(crate) use write_queue::{AfterWrite, Landed};

/// One entry's data to write behind.
pub(crate) struct PendingWrite<T> {
    pub(crate) key: String,
    pub(crate) fns: PersistFns<T>,
    pub(crate) data: Arc<T>,
    pub(crate) at: SystemTime,
    pub(crate) invalidated: bool,
    pub(crate) gc_time: Duration,
    /// The entry's own ttl: its query's, else a prefix rule's (`None`: the client's).
    pub(crate) ttl: Option<Duration>,
    pub(crate) after: Option<AfterWrite>,
}

/// Settings of the second tier.
#[derive(Debug)]
pub(crate) struct TierConfig {
    pub(crate) codec: Codec,
    /// The ttl of each write (`ttl.rs`).
    pub(crate) ttl: TtlPolicy,
}

/// The client's view of its second tier.
pub(crate) struct Tier {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) config: TierConfig,
    /// What this instance still owes the store (see `write_queue.rs`).
    queue: Arc<WriteQueue>,
    /// The write-behind task; restarted on the current runtime if its runtime died.
    worker: Worker,
    /// The client's event stream (set once the engine exists).
    events: std::sync::OnceLock<Arc<Events>>,
}

impl Tier {
    /// The ttl of one write (see `ttl.rs`; `None`: never expires).
    fn ttl<T>(&self, w: &PendingWrite<T>) -> Option<Duration> {
        self.config.ttl.ttl_of(w.ttl, w.gc_time)
    }

    /// The ttl a prefix rule gives `key`, if any covers it.
    pub(crate) fn ttl_rule(&self, key: &crate::key::QueryKey) -> Option<Duration> {
        self.config.ttl.rule_for(key)
    }

    pub(crate) fn new(storage: Arc<dyn Storage>, config: TierConfig) -> Self {
        Tier {
            storage,
            config,
            queue: Arc::new(WriteQueue::new()),
            worker: Worker::default(),
            events: std::sync::OnceLock::new(),
        }
    }

    /// Queues a write of an entry's data (replacing an older queued operation on its key);
    /// its `after` hook runs once it has landed.
    pub(crate) fn write<T: Send + Sync + 'static>(
        &self,
        counters: &Arc<Counters>,
        w: PendingWrite<T>,
    ) {
        let codec = self.config.codec;
        let ttl = self.ttl(&w);
        let (fns, data, at, invalidated) = (w.fns, w.data, w.at, w.invalidated);
        let encoder: Encoder = Box::new(move || (fns.encode)(&data, at, invalidated, codec));
        self.queue.push(w.key, Op::Set(encoder, ttl), w.after);
        self.start(counters);
    }

    /// Queues a deletion of `key`; `after` runs once it has landed.
    pub(crate) fn delete(&self, counters: &Arc<Counters>, key: String, after: Option<AfterWrite>) {
        self.queue.push(key, Op::Delete, after);
        self.start(counters);
    }

    /// Queues a deletion of every key starting with `prefix` (older queued operations under
    /// it are dropped: they would be deleted anyway); `after` runs once it has landed.
    pub(crate) fn delete_prefix(
        &self,
        counters: &Arc<Counters>,
        prefix: String,
        after: Option<AfterWrite>,
    ) {
        self.queue.push_prefix(prefix, after);
        self.start(counters);
    }

    /// Connects the tier to the client's event stream.
    pub(crate) fn set_events(&self, events: Arc<Events>) {
        let _ = self.events.set(events);
    }

    fn start(&self, counters: &Arc<Counters>) {
        // Without a runtime the operations stay queued; the worker starts with the next
        // call made inside one (and again if the runtime it ran on has shut down).
        let queue = Arc::downgrade(&self.queue);
        let (storage, counters) = (self.storage.clone(), counters.clone());
        let wake = self.queue.wake.clone();
        let events = self.events.get().cloned();
        self.worker.ensure(move |running| {
            write_queue::worker(queue, storage, counters, wake, events, running)
        });
    }

    /// Writes now (not behind): the cluster-dedup lease holder must have the data in the
    /// shared tier before it tells the others. A write that fails deletes the stored copy
    /// instead (queued for retry if even that fails). Returns how it landed, if it did.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) async fn write_now<T>(
        &self,
        counters: &Arc<Counters>,
        w: &PendingWrite<T>,
    ) -> Option<Landed> {
        let ttl = self.ttl(w);
        let result = match (w.fns.encode)(&w.data, w.at, w.invalidated, self.config.codec) {
            Ok(bytes) => {
                counters.l2_writes.incr();
                self.storage.set(&w.key, bytes, ttl).await
            }
            Err(e) => Err(e),
        };
        let Err(error) = result else {
            return Some(Landed::Written);
        };
        counters.l2_errors.incr();
        tracing::warn!(key = %w.key, error = %crate::error::report(&error), "second tier write failed: deleting the stored copy");
        match self.storage.delete(&w.key).await {
            Ok(()) => Some(Landed::Deleted),
            Err(_) => {
                self.delete(counters, w.key.clone(), None);
                None
            }
        }
    }

    /// Waits until every queued operation has been attempted at least once.
    pub(crate) async fn flush(&self, counters: &Arc<Counters>) {
        self.start(counters);
        self.queue.flush().await;
    }

    /// Waits until everything owed has landed (retries included), or `limit` passes.
    /// Returns whether it all landed.
    pub(crate) async fn settle(&self, counters: &Arc<Counters>, limit: Duration) -> bool {
        self.start(counters);
        let deadline = crate::deadline::saturating_after(tokio::time::Instant::now(), limit);
        loop {
            if self.queue.is_settled() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            self.queue.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Reads and decodes `key`. Misses, errors and corrupt entries are `None` (logged and
    /// counted; a corrupt entry is deleted).
    pub(crate) fn read<'a, T: Send + Sync + 'static>(
        self: &'a Arc<Self>,
        counters: &'a Arc<Counters>,
        key: &'a str,
        fns: PersistFns<T>,
    ) -> impl std::future::Future<Output = Option<Envelope<T>>> + Send + 'a {
        use futures::future::{Either, FutureExt};
        // Not an `async fn` wrapping the read: its future would hold the arguments twice,
        // and this future is part of every fetch task's (whose size decides its
        // allocator class). A read with a listener is timed and told, boxed.
        match self.events.get().filter(|e| e.on()) {
            Some(events) => Either::Left(Box::pin(self.read_told(events, counters, key, fns))),
            None => Either::Right(self.read_quietly(counters, key, fns).map(|(read, _)| read)),
        }
    }

    async fn read_told<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        events: &Events,
        counters: &Arc<Counters>,
        key: &str,
        fns: PersistFns<T>,
    ) -> Option<Envelope<T>> {
        let started = std::time::Instant::now();
        let (read, outcome) = self.read_quietly(counters, key, fns).await;
        events.emit(|| CacheEventKind::StorageRead {
            key: key.to_owned(),
            outcome,
            duration: started.elapsed(),
        });
        read
    }

    async fn read_quietly<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        counters: &Arc<Counters>,
        key: &str,
        fns: PersistFns<T>,
    ) -> (Option<Envelope<T>>, StorageOutcome) {
        if self.queue.owes(key) {
            // This instance has not finished writing, invalidating or deleting the key:
            // the stored value is older than what it knows.
            counters.l2_misses.incr();
            return (None, StorageOutcome::Miss);
        }
        match self.storage.get(key).await {
            Ok(Some(bytes)) => match (fns.decode)(&bytes) {
                Ok(envelope) => {
                    counters.l2_hits.incr();
                    (Some(envelope), StorageOutcome::Hit)
                }
                Err(error) => {
                    counters.l2_errors.incr();
                    if error.is_corrupt() {
                        tracing::warn!(key, error = %crate::error::report(&error), "corrupt second-tier entry: treated as a miss and deleted");
                        self.delete(counters, key.to_string(), None);
                    } else {
                        tracing::warn!(key, error = %crate::error::report(&error), "unreadable second-tier entry: treated as a miss (kept)");
                    }
                    (None, StorageOutcome::Error)
                }
            },
            Ok(None) => {
                counters.l2_misses.incr();
                (None, StorageOutcome::Miss)
            }
            Err(error) => {
                counters.l2_errors.incr();
                tracing::warn!(key, error = %crate::error::report(&error), "second tier read failed: going on without it");
                (None, StorageOutcome::Error)
            }
        }
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        // Let the worker see that the tier is gone.
        self.queue.wake.notify_one();
    }
}
