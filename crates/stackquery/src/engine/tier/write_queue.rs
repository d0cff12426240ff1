//! The second tier's write-behind queue: what this instance still owes the shared store.
//!
//! * **Coalescing**: at most one pending operation per key; a newer one replaces an older
//!   one that has not started (a burst of updates costs a few writes, the last carries the
//!   newest data). Encoding is lazy, so replaced writes are never encoded. A prefix delete
//!   drops the pending operations under it.
//! * **Nothing announced before it lands**: an operation carries the `after` hooks of
//!   everything it replaced; they run once it has landed, and are told how
//!   ([`Landed::Written`], or [`Landed::Deleted`] when the data could not be written and
//!   the key was deleted instead, so the old stored value cannot come back as fresh).
//! * **Nothing lost in an outage**: an operation that fails for a transient reason (the
//!   store is unreachable, a timeout, out of memory) stays queued and is retried with
//!   backoff; a failed `set` is turned into a `delete` first. Only an operation the store
//!   refuses for good (unsupported, does not encode) is given up, and it still deletes.
//! * **Reads see what is owed**: a key with a queued or in-flight operation (or under a
//!   pending prefix delete) reads as a miss, so a value this instance removed, invalidated
//!   or replaced is never read back from the store meanwhile.
//! * A worker that dies with its runtime puts back what it held (see `worker.rs`).

use crate::events::{CacheEventKind, Events, StorageOutcome};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::stats::Counters;
use crate::storage::{Storage, StorageError};
use crate::worker::Running;

pub(crate) type Encoder = Box<dyn FnOnce() -> Result<Vec<u8>, StorageError> + Send>;

/// How an operation landed in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Landed {
    /// The data was written.
    Written,
    /// The key (or prefix) was deleted: asked for, or instead of a write that failed.
    Deleted,
}

/// Runs once an operation has landed (e.g. to announce it to the other instances).
pub(crate) type AfterWrite = Box<dyn FnOnce(Landed) + Send + Sync>;

pub(crate) enum Op {
    Set(Encoder, Option<Duration>),
    /// A `Set` already encoded: kept until written, so a retry or the next worker does not
    /// need the encoder again.
    Encoded(Vec<u8>, Option<Duration>),
    Delete,
}

struct Queued {
    op: Op,
    after: Vec<AfterWrite>,
    /// Still counted in `outstanding` (never attempted yet): `flush` waits for those.
    counted: bool,
}

struct QueuedPrefix {
    prefix: String,
    after: Vec<AfterWrite>,
    counted: bool,
}

#[derive(Default)]
struct Pending {
    keys: HashMap<String, Queued>,
    prefixes: Vec<QueuedPrefix>,
    /// What the worker is writing right now: reads treat it as still owed.
    busy_keys: HashSet<String>,
    busy_prefixes: Vec<String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.prefixes.is_empty()
    }
}

/// First and longest pause after a failed round.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(crate) struct WriteQueue {
    pending: Mutex<Pending>,
    /// Shared with the worker, which must not keep the queue alive while it waits.
    pub(crate) wake: Arc<Notify>,
    /// Operations queued and not attempted yet; `flush` waits for 0.
    outstanding: AtomicUsize,
    idle: Notify,
    /// The most keys owed at once (see [`MAX_PENDING_KEYS`]).
    max_pending: usize,
}

/// The most keys the queue owes at once. Past it (a long outage during which many distinct
/// keys changed), everything owed collapses into one delete of the whole namespace's
/// entries: costly for the others (they refetch), but bounded, and no stored copy can come
/// back as fresh.
pub(crate) const MAX_PENDING_KEYS: usize = 100_000;

impl WriteQueue {
    pub(crate) fn new() -> Self {
        Self::bounded(MAX_PENDING_KEYS)
    }

    /// A queue owing at most `max_pending` keys at once.
    pub(crate) fn bounded(max_pending: usize) -> Self {
        WriteQueue {
            pending: Mutex::new(Pending::default()),
            wake: Arc::new(Notify::new()),
            outstanding: AtomicUsize::new(0),
            idle: Notify::new(),
            max_pending,
        }
    }

    /// Queues `op` on `key`, replacing (and inheriting the hooks of) an older pending one.
    pub(crate) fn push(&self, key: String, op: Op, after: Option<AfterWrite>) {
        let mut p = self.pending.lock();
        let mut queued = Queued {
            op,
            after: after.into_iter().collect(),
            counted: true,
        };
        match p.keys.remove(&key) {
            Some(old) => {
                let mut hooks = old.after;
                hooks.append(&mut queued.after);
                queued.after = hooks;
                if !old.counted {
                    self.outstanding.fetch_add(1, Ordering::AcqRel);
                }
            }
            None => {
                self.outstanding.fetch_add(1, Ordering::AcqRel);
            }
        }
        p.keys.insert(key, queued);
        let over = p.keys.len() > self.max_pending;
        drop(p);
        if over {
            tracing::warn!(
                max = self.max_pending,
                "second tier write queue full: collapsing it into one delete of every entry"
            );
            // Every stored key's text starts with `[`: this drops (and inherits the hooks
            // of) every key owed.
            self.push_prefix("[".to_string(), None);
        }
        self.wake.notify_one();
    }

    /// Queues a delete of every key starting with `prefix`; pending operations under it
    /// are dropped (they would be deleted anyway) and their hooks wait for the delete.
    pub(crate) fn push_prefix(&self, prefix: String, after: Option<AfterWrite>) {
        let mut p = self.pending.lock();
        let under: Vec<String> = p
            .keys
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        let mut hooks = Vec::new();
        for k in under {
            if let Some(old) = p.keys.remove(&k) {
                if old.counted {
                    self.outstanding.fetch_sub(1, Ordering::AcqRel);
                }
                hooks.extend(old.after);
            }
        }
        hooks.extend(after);
        match p.prefixes.iter_mut().find(|q| q.prefix == prefix) {
            Some(q) => q.after.extend(hooks),
            None => {
                self.outstanding.fetch_add(1, Ordering::AcqRel);
                p.prefixes.push(QueuedPrefix {
                    prefix,
                    after: hooks,
                    counted: true,
                });
            }
        }
        drop(p);
        self.wake.notify_one();
    }

    /// Whether `key` has an operation queued or in flight (or lies under a pending prefix
    /// delete): its stored value is not to be trusted until that lands.
    pub(crate) fn owes(&self, key: &str) -> bool {
        let p = self.pending.lock();
        p.keys.contains_key(key)
            || p.busy_keys.contains(key)
            || p.prefixes.iter().any(|q| key.starts_with(&q.prefix))
            || p.busy_prefixes.iter().any(|b| key.starts_with(b.as_str()))
    }

    /// True when nothing is queued or in flight (every operation has landed or was given up).
    pub(crate) fn is_settled(&self) -> bool {
        let p = self.pending.lock();
        p.is_empty() && p.busy_keys.is_empty() && p.busy_prefixes.is_empty()
    }

    /// Waits until every operation queued so far has been attempted at least once.
    pub(crate) async fn flush(&self) {
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

    fn attempted(&self, counted: bool) {
        if counted && self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Puts back an operation that did not land, unless a newer one replaced it (which
    /// then carries its hooks).
    fn requeue(&self, key: String, mut queued: Queued) {
        let mut p = self.pending.lock();
        p.busy_keys.remove(&key);
        match p.keys.get_mut(&key) {
            Some(newer) => {
                queued.after.append(&mut newer.after);
                newer.after = queued.after;
                if queued.counted {
                    self.outstanding.fetch_sub(1, Ordering::AcqRel);
                }
            }
            None => {
                p.keys.insert(key, queued);
            }
        }
    }

    fn requeue_prefix(&self, q: QueuedPrefix) {
        let mut p = self.pending.lock();
        p.busy_prefixes.retain(|b| *b != q.prefix);
        match p.prefixes.iter_mut().find(|o| o.prefix == q.prefix) {
            Some(o) => {
                o.after.extend(q.after);
                if q.counted {
                    self.outstanding.fetch_sub(1, Ordering::AcqRel);
                }
            }
            None => p.prefixes.push(q),
        }
    }

    fn done_key(&self, key: &str) {
        self.pending.lock().busy_keys.remove(key);
    }

    fn done_prefix(&self, prefix: &str) {
        self.pending.lock().busy_prefixes.retain(|b| b != prefix);
    }

    /// Takes everything queued, marking it in flight.
    fn take(&self) -> Pending {
        let mut p = self.pending.lock();
        let batch = Pending {
            keys: std::mem::take(&mut p.keys),
            prefixes: std::mem::take(&mut p.prefixes),
            ..Pending::default()
        };
        p.busy_keys.extend(batch.keys.keys().cloned());
        p.busy_prefixes
            .extend(batch.prefixes.iter().map(|q| q.prefix.clone()));
        batch
    }
}

/// Whether an error may go away by itself (retry) or is final (give up).
fn transient(e: &StorageError) -> bool {
    matches!(e, StorageError::Backend(_) | StorageError::Timeout(_))
}

/// The write-behind worker: writes batches until the queue is dropped; after a failed
/// round it pauses (50 ms doubling to 2 s) before retrying what is owed.
pub(crate) async fn worker(
    queue: Weak<WriteQueue>,
    storage: Arc<dyn Storage>,
    counters: Arc<Counters>,
    wake_handle: Arc<Notify>,
    events: Option<Arc<Events>>,
    _running: Running,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(q) = queue.upgrade() else { return };
        let batch = q.take();
        if batch.is_empty() {
            let wake = wake_handle.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            // Re-check after registering, so an operation queued in between is not missed.
            let empty = q.pending.lock().is_empty();
            drop(q);
            if empty {
                wake.await;
            }
            continue;
        }
        let mut round = InFlight {
            queue: q.clone(),
            left: batch,
        };
        let failed = round.write(&*storage, &counters, events.as_deref()).await;
        drop(round);
        if failed {
            drop(q);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = FIRST_BACKOFF;
        }
    }
}

/// A batch being written. What is left in it when it is dropped (its runtime shut down)
/// goes back to the queue for the next worker.
struct InFlight {
    queue: Arc<WriteQueue>,
    left: Pending,
}

impl InFlight {
    /// Writes the batch: prefix deletes first, then the keys. Returns whether anything
    /// failed for a transient reason (and was put back).
    async fn write(
        &mut self,
        storage: &dyn Storage,
        counters: &Counters,
        events: Option<&Events>,
    ) -> bool {
        let tell = |key: &str, outcome: StorageOutcome| {
            if let Some(events) = events {
                events.emit(|| CacheEventKind::StorageWrite {
                    key: key.to_owned(),
                    outcome,
                });
            }
        };
        let q = self.queue.clone();
        let mut failed = false;
        while !self.left.prefixes.is_empty() {
            let prefix = self.left.prefixes[0].prefix.clone();
            let result = storage.delete_prefix(&prefix).await;
            let mut item = self.left.prefixes.remove(0);
            q.attempted(std::mem::replace(&mut item.counted, false));
            match result {
                Err(error) if transient(&error) => {
                    counters.l2_errors.incr();
                    tell(&prefix, StorageOutcome::Error);
                    tracing::warn!(prefix, error = %crate::error::report(&error), "second tier prefix delete failed: will retry");
                    q.requeue_prefix(item);
                    failed = true;
                }
                result => {
                    if let Err(error) = result {
                        counters.l2_errors.incr();
                        tell(&prefix, StorageOutcome::Error);
                        tracing::warn!(prefix, error = %crate::error::report(&error), "second tier prefix delete refused: given up");
                    } else {
                        tell(&prefix, StorageOutcome::Deleted);
                    }
                    q.done_prefix(&prefix);
                    for after in item.after {
                        after(Landed::Deleted);
                    }
                }
            }
        }
        // Not `while let`: its scrutinee (a map iterator) would live across the awaits
        // below and make the worker's future not `Send`.
        #[allow(clippy::while_let_loop)]
        loop {
            let Some(key) = self.left.keys.keys().next().cloned() else {
                break;
            };
            let Some(mut item) = self.left.keys.remove(&key) else {
                break;
            };
            // Kept in `left` while the store call runs, so a dropped worker puts it back.
            let attempt = prepare(&mut item.op, &key, counters);
            self.left.keys.insert(key.clone(), item);
            let outcome = attempt_op(storage, &key, attempt, counters).await;
            let Some(mut item) = self.left.keys.remove(&key) else {
                break;
            };
            q.attempted(std::mem::replace(&mut item.counted, false));
            match outcome {
                Ok(landed) => {
                    tell(
                        &key,
                        match landed {
                            Landed::Written => StorageOutcome::Written,
                            Landed::Deleted => StorageOutcome::Deleted,
                        },
                    );
                    q.done_key(&key);
                    for after in item.after {
                        after(landed);
                    }
                }
                Err(error) => {
                    counters.l2_errors.incr();
                    tell(&key, StorageOutcome::Error);
                    tracing::warn!(key, error = %crate::error::report(&error), "second tier write failed: will retry as a delete");
                    // The old stored value must not come back: what is owed is a delete.
                    item.op = Op::Delete;
                    q.requeue(key, item);
                    failed = true;
                }
            }
        }
        failed
    }
}

/// What one store call does.
enum Attempt {
    Set(Vec<u8>, Option<Duration>),
    Delete,
}

/// Encodes a `Set` (once); one that does not encode becomes a delete.
fn prepare(op: &mut Op, key: &str, counters: &Counters) -> Attempt {
    if let Op::Set(..) = op {
        let Op::Set(encoder, ttl) = std::mem::replace(op, Op::Delete) else {
            unreachable!("matched above");
        };
        match encoder() {
            Ok(bytes) => *op = Op::Encoded(bytes, ttl),
            Err(error) => {
                counters.l2_errors.incr();
                tracing::warn!(key, error = %crate::error::report(&error), "data does not encode: deleting the stored copy instead");
            }
        }
    }
    match op {
        Op::Encoded(bytes, ttl) => Attempt::Set(bytes.clone(), *ttl),
        _ => Attempt::Delete,
    }
}

/// Runs one attempt: a failed set falls back to a delete at once. `Err` only for a
/// transient failure of the delete (the caller retries).
async fn attempt_op(
    storage: &dyn Storage,
    key: &str,
    attempt: Attempt,
    counters: &Counters,
) -> Result<Landed, StorageError> {
    if let Attempt::Set(bytes, ttl) = attempt {
        counters.l2_writes.incr();
        match storage.set(key, bytes, ttl).await {
            Ok(()) => return Ok(Landed::Written),
            Err(error) => {
                counters.l2_errors.incr();
                tracing::warn!(key, error = %crate::error::report(&error), "second tier write failed: deleting the stored copy");
            }
        }
    }
    match storage.delete(key).await {
        Ok(()) => Ok(Landed::Deleted),
        Err(error) if transient(&error) => Err(error),
        Err(error) => {
            tracing::warn!(key, error = %crate::error::report(&error), "second tier delete refused: given up");
            Ok(Landed::Deleted)
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = std::mem::take(&mut self.left);
        for (key, item) in left.keys {
            self.queue.requeue(key, item);
        }
        for item in left.prefixes {
            self.queue.requeue_prefix(item);
        }
        self.queue.wake.notify_one();
    }
}

/// `n` hooks that run `f` once, when the last of them has run (whatever way each landed).
/// Dropping a hook unrun counts as run, so `f` is never lost to an operation that was
/// given up or replaced.
pub(crate) fn after_all(n: usize, f: impl FnOnce() + Send + Sync + 'static) -> Vec<AfterWrite> {
    struct Countdown {
        left: AtomicUsize,
        f: Mutex<Option<Box<dyn FnOnce() + Send + Sync>>>,
    }
    impl Countdown {
        fn tick(&self) {
            if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
                if let Some(f) = self.f.lock().take() {
                    f();
                }
            }
        }
    }
    struct Hook(Arc<Countdown>);
    impl Drop for Hook {
        fn drop(&mut self) {
            self.0.tick();
        }
    }
    let countdown = Arc::new(Countdown {
        left: AtomicUsize::new(n),
        f: Mutex::new(Some(Box::new(f))),
    });
    (0..n)
        .map(|_| {
            let hook = Hook(countdown.clone());
            let after: AfterWrite = Box::new(move |_landed| drop(hook));
            after
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The story: the queue owed one operation per key changed while the store was
    /// unreachable, without a bound; a long outage over many distinct keys grew it without
    /// limit. Past its bound it now collapses into one delete of every entry, which still
    /// keeps every old stored copy from being read back as fresh.
    #[test]
    fn the_queue_owes_a_bounded_number_of_keys() {
        let q = WriteQueue::bounded(5);
        let ran = Arc::new(AtomicUsize::new(0));
        for i in 0..12 {
            let r = ran.clone();
            let after: AfterWrite = Box::new(move |_| {
                r.fetch_add(1, Ordering::SeqCst);
            });
            q.push(format!("[\"k\",{i}]"), Op::Delete, Some(after));
        }
        let p = q.pending.lock();
        assert!(p.keys.len() <= 5, "{} keys owed", p.keys.len());
        assert_eq!(p.prefixes.len(), 1, "one delete of every entry");
        assert_eq!(p.prefixes[0].prefix, "[");
        let hooks =
            p.prefixes[0].after.len() + p.keys.values().map(|q| q.after.len()).sum::<usize>();
        drop(p);
        assert_eq!(
            hooks, 12,
            "no announcement is lost: every hook waits for a delete"
        );
        for i in 0..12 {
            assert!(q.owes(&format!("[\"k\",{i}]")), "key {i} is still owed");
        }
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
