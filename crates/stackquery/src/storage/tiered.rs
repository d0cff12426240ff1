//! The glue between the memory cache (L1) and a [`Storage`] (L2): typed encode/decode
//! functions for persisted queries, hydration reads, and a coalescing write-behind queue.
//!
//! Write-behind keeps at most one pending operation per key: a newer write replaces an
//! older one that has not started, so a burst of updates to a few keys under a slow store
//! costs a few writes, and the last write always carries the newest data. Encoding is
//! lazy (done by the worker), so replaced writes are never encoded. Prefix deletions in a
//! batch run before the key operations of that batch (a prefix deletion drops the older
//! pending operations under it when it is queued).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use super::{decode, encode, Codec, Envelope, Storage, StorageError};
use crate::stats::Counters;
use crate::worker::{Running, Worker};

type EncodeFn<T> = fn(&T, SystemTime, bool, Codec) -> Result<Vec<u8>, StorageError>;

/// Typed encode/decode for one persisted data type (plain function pointers: cheap to copy).
pub(crate) struct PersistFns<T> {
    pub(crate) encode: EncodeFn<T>,
    pub(crate) decode: fn(&[u8]) -> Result<Envelope<T>, StorageError>,
    pub(crate) to_json: fn(&T) -> Result<serde_json::Value, StorageError>,
    pub(crate) from_json: fn(serde_json::Value) -> Result<T, StorageError>,
}

impl<T> Clone for PersistFns<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for PersistFns<T> {}

impl<T: Serialize + DeserializeOwned> PersistFns<T> {
    pub(crate) fn new() -> Self {
        PersistFns {
            encode: |data, at, invalidated, codec| {
                encode(&Envelope::new(data, at, invalidated), codec)
            },
            decode: |bytes| decode::<T>(bytes),
            to_json: |data| {
                serde_json::to_value(data).map_err(|e| StorageError::Encode(e.to_string()))
            },
            from_json: |value| {
                serde_json::from_value(value).map_err(|e| StorageError::Corrupt(e.to_string()))
            },
        }
    }
}

/// One entry's data to write behind.
pub(crate) struct PendingWrite<T> {
    pub(crate) key: String,
    pub(crate) fns: PersistFns<T>,
    pub(crate) data: Arc<T>,
    pub(crate) at: SystemTime,
    pub(crate) invalidated: bool,
    pub(crate) gc_time: Duration,
    pub(crate) after: Option<AfterWrite>,
}

type Encoder = Box<dyn FnOnce() -> Result<Vec<u8>, StorageError> + Send>;

/// Runs after a successful write (e.g. to announce it to other instances).
pub(crate) type AfterWrite = Box<dyn FnOnce() + Send + Sync>;

enum Op {
    Set(Encoder, Option<Duration>, Option<AfterWrite>),
    Delete,
    /// A `Set` already encoded by a worker: kept until written, so a worker that dies
    /// mid-write leaves it for the next one.
    Encoded(Vec<u8>, Option<Duration>, Option<AfterWrite>),
}

#[derive(Default)]
struct Pending {
    keys: HashMap<String, Op>,
    prefixes: Vec<String>,
}

/// Settings of the second tier.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TierConfig {
    pub(crate) codec: Codec,
    /// `None`: follow each query's gc time.
    pub(crate) ttl: Option<Duration>,
}

/// The client's view of its second tier.
pub(crate) struct Tier {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) config: TierConfig,
    pending: Mutex<Pending>,
    /// Shared with the worker, which must not keep the tier alive while it waits.
    wake: Arc<Notify>,
    /// Operations queued or being written; `flush` waits for 0.
    outstanding: AtomicUsize,
    idle: Notify,
    /// The write-behind task; restarted on the current runtime if its runtime died.
    worker: Worker,
}

impl Tier {
    /// The second-tier ttl of an entry: configured, else its gc time ("forever": none).
    fn ttl(&self, gc_time: Duration) -> Option<Duration> {
        self.config
            .ttl
            .or(Some(gc_time))
            .filter(|d| *d != Duration::MAX)
    }

    pub(crate) fn new(storage: Arc<dyn Storage>, config: TierConfig) -> Self {
        Tier {
            storage,
            config,
            pending: Mutex::new(Pending::default()),
            wake: Arc::new(Notify::new()),
            outstanding: AtomicUsize::new(0),
            idle: Notify::new(),
            worker: Worker::default(),
        }
    }

    /// Queues a write of an entry's data (replacing an older queued operation on its key).
    pub(crate) fn write<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        counters: &Arc<Counters>,
        w: PendingWrite<T>,
    ) {
        let codec = self.config.codec;
        let ttl = self.ttl(w.gc_time);
        let (fns, data, at, invalidated) = (w.fns, w.data, w.at, w.invalidated);
        let encoder: Encoder = Box::new(move || (fns.encode)(&data, at, invalidated, codec));
        self.queue(counters, w.key, Op::Set(encoder, ttl, w.after));
    }

    /// Queues a deletion of `key`.
    pub(crate) fn delete(self: &Arc<Self>, counters: &Arc<Counters>, key: String) {
        self.queue(counters, key, Op::Delete);
    }

    /// Queues a deletion of every key starting with `prefix` (older queued operations under
    /// it are dropped: they would be deleted anyway).
    pub(crate) fn delete_prefix(self: &Arc<Self>, counters: &Arc<Counters>, prefix: String) {
        {
            let mut p = self.pending.lock();
            let before = p.keys.len();
            p.keys.retain(|k, _| !k.starts_with(&prefix));
            let dropped = before - p.keys.len();
            self.outstanding.fetch_sub(dropped, Ordering::AcqRel);
            if !p.prefixes.contains(&prefix) {
                p.prefixes.push(prefix);
                self.outstanding.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.kick(counters);
    }

    fn queue(self: &Arc<Self>, counters: &Arc<Counters>, key: String, op: Op) {
        {
            let mut p = self.pending.lock();
            if p.keys.insert(key, op).is_none() {
                self.outstanding.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.kick(counters);
    }

    fn kick(self: &Arc<Self>, counters: &Arc<Counters>) {
        self.start(counters);
        self.wake.notify_one();
    }

    fn start(self: &Arc<Self>, counters: &Arc<Counters>) {
        // Without a runtime the operations stay queued; the worker starts with the next
        // call made inside one (and again if the runtime it ran on has shut down).
        let (tier, wake, counters) = (Arc::downgrade(self), self.wake.clone(), counters.clone());
        self.worker
            .ensure(move |running| worker(tier, wake, counters, running));
    }

    /// Writes now (not behind): the cluster-dedup lease holder must have the data in the
    /// shared tier before it tells the others.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) async fn write_now<T>(&self, counters: &Counters, w: &PendingWrite<T>) {
        let ttl = self.ttl(w.gc_time);
        let result = match (w.fns.encode)(&w.data, w.at, w.invalidated, self.config.codec) {
            Ok(bytes) => {
                counters.l2_writes.incr();
                self.storage.set(&w.key, bytes, ttl).await
            }
            Err(e) => Err(e),
        };
        if let Err(error) = result {
            counters.l2_errors.incr();
            tracing::warn!(key = %w.key, %error, "second tier write failed");
        }
    }

    /// Waits until every queued operation has been attempted.
    pub(crate) async fn flush(self: &Arc<Self>, counters: &Arc<Counters>) {
        self.start(counters);
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.outstanding.load(Ordering::Acquire) == 0 {
                return;
            }
            self.wake.notify_one();
            idle.await;
        }
    }

    /// Reads and decodes `key`. Misses, errors and corrupt entries are `None` (logged and
    /// counted; a corrupt entry is deleted).
    pub(crate) async fn read<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        counters: &Arc<Counters>,
        key: &str,
        fns: PersistFns<T>,
    ) -> Option<Envelope<T>> {
        match self.storage.get(key).await {
            Ok(Some(bytes)) => match (fns.decode)(&bytes) {
                Ok(envelope) => {
                    counters.l2_hits.incr();
                    Some(envelope)
                }
                Err(error) => {
                    counters.l2_errors.incr();
                    tracing::warn!(key, %error, "unreadable second-tier entry: treated as a miss and deleted");
                    if error.is_corrupt() {
                        self.delete(counters, key.to_string());
                    }
                    None
                }
            },
            Ok(None) => {
                counters.l2_misses.incr();
                None
            }
            Err(error) => {
                counters.l2_errors.incr();
                tracing::warn!(key, %error, "second tier read failed: going on without it");
                None
            }
        }
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        // Let the worker see that the tier is gone.
        self.wake.notify_one();
    }
}

async fn worker(
    tier: Weak<Tier>,
    wake_handle: Arc<Notify>,
    counters: Arc<Counters>,
    _running: Running,
) {
    loop {
        let Some(t) = tier.upgrade() else { return };
        let batch = std::mem::take(&mut *t.pending.lock());
        if batch.keys.is_empty() && batch.prefixes.is_empty() {
            let wake = wake_handle.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            // Re-check after registering, so a write queued in between is not missed.
            if t.outstanding.load(Ordering::Acquire) == 0 {
                t.idle.notify_waiters();
            }
            let empty = {
                let p = t.pending.lock();
                p.keys.is_empty() && p.prefixes.is_empty()
            };
            drop(t);
            if empty {
                wake.await;
            }
            continue;
        }
        // Whatever this task has not written when it is dropped (its runtime shut down)
        // goes back to the queue for the next worker.
        let mut batch = InFlight {
            tier: t.clone(),
            left: batch,
        };
        while let Some(prefix) = batch.left.prefixes.first().cloned() {
            if let Err(error) = t.storage.delete_prefix(&prefix).await {
                counters.l2_errors.incr();
                tracing::warn!(prefix, %error, "second tier prefix delete failed");
            }
            batch.left.prefixes.remove(0);
            t.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
        loop {
            let Some(key) = batch.left.keys.keys().next().cloned() else {
                break;
            };
            let Some(op) = batch.left.keys.get_mut(&key) else {
                break;
            };
            if let Op::Set(..) = op {
                let Op::Set(encoder, ttl, after) = std::mem::replace(op, Op::Delete) else {
                    unreachable!("matched above");
                };
                match encoder() {
                    Ok(bytes) => *op = Op::Encoded(bytes, ttl, after),
                    Err(error) => {
                        batch.left.keys.remove(&key);
                        t.outstanding.fetch_sub(1, Ordering::AcqRel);
                        counters.l2_errors.incr();
                        tracing::warn!(key, %error, "second tier write failed: does not encode");
                        continue;
                    }
                }
            }
            let write = match &*op {
                Op::Encoded(bytes, ttl, _) => Some((bytes.clone(), *ttl)),
                _ => None,
            };
            let result = match write {
                Some((bytes, ttl)) => {
                    counters.l2_writes.incr();
                    t.storage.set(&key, bytes, ttl).await
                }
                None => t.storage.delete(&key).await,
            };
            if let Some(Op::Encoded(_, _, Some(after))) = batch.left.keys.remove(&key) {
                // Announced even if the write failed: the others then refetch.
                after();
            }
            t.outstanding.fetch_sub(1, Ordering::AcqRel);
            if let Err(error) = result {
                counters.l2_errors.incr();
                tracing::warn!(key, %error, "second tier write failed");
            }
        }
    }
}

/// A batch being written. An operation stays in `left` until it has been attempted, so
/// one whose future was dropped mid-write is written again by the next worker (writes of
/// the same bytes are idempotent).
struct InFlight {
    tier: Arc<Tier>,
    left: Pending,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = std::mem::take(&mut self.left);
        if left.keys.is_empty() && left.prefixes.is_empty() {
            return;
        }
        let mut p = self.tier.pending.lock();
        for (key, op) in left.keys {
            if p.keys.contains_key(&key) {
                // Superseded by a newer queued operation.
                self.tier.outstanding.fetch_sub(1, Ordering::AcqRel);
            } else {
                p.keys.insert(key, op);
            }
        }
        for prefix in left.prefixes {
            if p.prefixes.contains(&prefix) {
                self.tier.outstanding.fetch_sub(1, Ordering::AcqRel);
            } else {
                p.prefixes.push(prefix);
            }
        }
        drop(p);
        self.tier.wake.notify_one();
    }
}
