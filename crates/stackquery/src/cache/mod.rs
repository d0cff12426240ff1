//! The entry map: sharded for reads, with one registry for structure.
//!
//! * Reads (the hit path) take one shard's read lock and nothing else.
//! * Structural changes (insert, remove, evict) take the registry lock, then a shard's
//!   write lock — always in that order — so the prefix index and the eviction ring always
//!   agree with the map.
//! * Prefix matching asks the prefix index (`prefix_index.rs`: keys filed under the hash of
//!   each of their proper prefixes), so its cost grows with the number of matches, not the
//!   size of the cache; the matches are returned sorted by key.
//! * Eviction is CLOCK (second chance), a close approximation of LRU whose hit path is a
//!   single relaxed store: entries that are observed or fetching are skipped.
//! * Two bounds drive it, alone or together: the number of entries (`max_queries`) and
//!   their total weight (`max_weight`). The total is an atomic the entries keep up to
//!   date themselves, under their own locks (`TimerSink::add_weight`); an entry's removal
//!   takes its weight off (`remove_locked`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, MutexGuard, RwLock};
use tokio_util::sync::CancellationToken;

mod prefix_index;

use crate::entry::{AnyEntry, GcVerdict};
use crate::key::{KeyHashBuilder, QueryKey};
use crate::scope::KeyScope;
use crate::timers::{TimerKind, TimerTarget, Timers};
use crate::weight::WeightBound;
use prefix_index::PrefixIndex;

type Shard<E> = HashMap<QueryKey, Arc<E>, KeyHashBuilder>;

#[derive(Default)]
struct Registry {
    index: PrefixIndex,
    /// CLOCK ring of (entry id, key); ids tell a live slot from one left by a removed entry.
    /// Kept only under a bound (`max_queries`, `max_weight`): an unbounded cache never
    /// evicts.
    ring: VecDeque<(u64, QueryKey)>,
    /// The cancellation tokens of fetches whose entries were removed under this lock:
    /// fired once it is released ([`Cache::unlock`]), since firing one wakes its waiters.
    detached: Vec<CancellationToken>,
}

/// The entry map, over the stored entry type `E` (the engine stores its own extension of
/// [`AnyEntry`]; the cache needs only what `AnyEntry` offers).
pub(crate) struct Cache<E: ?Sized + AnyEntry> {
    shards: Box<[CachePadded<RwLock<Shard<E>>>]>,
    mask: usize,
    registry: Mutex<Registry>,
    len: AtomicUsize,
    max: Option<usize>,
    /// The weight bound, if any, and the total weight of the entries in the map (kept
    /// only under a bound: every weight is 0 without one).
    weight_bound: Option<WeightBound>,
    weight: AtomicU64,
    /// An entry's timers leave with it, so nothing is kept for entries that are gone.
    timers: Arc<Timers>,
    /// Entries evicted for a bound, and collected by the gc (the cache reports its
    /// own removals: it knows nothing of the client's other counters).
    evicted: AtomicU64,
    collected: AtomicU64,
    removals: RemovalLog,
}

impl<E: ?Sized + AnyEntry> Cache<E> {
    /// `listeners`: while above zero, evictions and collections are logged for
    /// [`take_removals`](Self::take_removals) (the engine's event stream).
    pub(crate) fn new(bounds: Bounds, timers: Arc<Timers>, listeners: Arc<AtomicUsize>) -> Self {
        let n = (std::thread::available_parallelism().map_or(4, |n| n.get()) * 8)
            .next_power_of_two()
            .max(16);
        Cache {
            shards: (0..n)
                .map(|_| CachePadded::new(RwLock::new(Shard::default())))
                .collect(),
            mask: n - 1,
            registry: Mutex::new(Registry::default()),
            len: AtomicUsize::new(0),
            max: bounds.max_queries,
            weight_bound: bounds.weight,
            weight: AtomicU64::new(0),
            timers,
            evicted: AtomicU64::new(0),
            collected: AtomicU64::new(0),
            removals: RemovalLog {
                listeners,
                log: Mutex::new(Vec::new()),
                pending: std::sync::atomic::AtomicBool::new(false),
            },
        }
    }

    /// Evictions and collections logged since the last call (logged only while the
    /// engine has event listeners). One atomic load when there are none.
    pub(crate) fn take_removals(&self) -> Vec<(QueryKey, Removal)> {
        if !self.removals.pending.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.removals.pending.store(false, Ordering::Release);
        std::mem::take(&mut *self.removals.log.lock())
    }

    fn log_removal(&self, key: &QueryKey, why: Removal) {
        if self.removals.listeners.load(Ordering::Relaxed) > 0 {
            self.removals.log.lock().push((key.clone(), why));
            self.removals.pending.store(true, Ordering::Release);
        }
    }

    #[inline]
    fn shard(&self, key: &QueryKey) -> &RwLock<Shard<E>> {
        // High bits pick the shard; the map inside uses the whole hash.
        &self.shards[(key.precomputed_hash() >> 40) as usize & self.mask]
    }

    /// The `max_queries` bound, if any.
    pub(crate) fn max(&self) -> Option<usize> {
        self.max
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// The `max_weight` bound and the default weight, if the client has a weight bound.
    pub(crate) fn weight_bound(&self) -> Option<&WeightBound> {
        self.weight_bound.as_ref()
    }

    /// The total weight of the entries in memory (0 without a weight bound).
    pub(crate) fn weight(&self) -> u64 {
        self.weight.load(Ordering::Relaxed)
    }

    /// An entry's counted weight changed by `delta` (called under that entry's lock, see
    /// `TimerSink::add_weight`). Wrapping two's-complement arithmetic: a negative delta
    /// subtracts, and since each entry's changes and its removal reach the total in order,
    /// the total never goes below 0.
    pub(crate) fn add_weight(&self, delta: i64) {
        self.weight.fetch_add(delta as u64, Ordering::Relaxed);
    }

    /// Evicts under a bound: keeps the eviction ring.
    fn bounded(&self) -> bool {
        self.max.is_some() || self.weight_bound.is_some()
    }

    #[inline]
    fn over_weight(&self) -> bool {
        self.weight_bound
            .is_some_and(|b| self.weight.load(Ordering::Relaxed) > b.max)
    }

    /// Runs `f` on the entry under the shard's read lock (no reference-count traffic).
    #[inline]
    pub(crate) fn with<R>(&self, key: &QueryKey, f: impl FnOnce(&Arc<E>) -> R) -> Option<R> {
        let shard = self.shard(key).read();
        shard.get(key).map(f)
    }

    pub(crate) fn get(&self, key: &QueryKey) -> Option<Arc<E>> {
        self.with(key, Arc::clone)
    }

    /// The entry for `key`, creating it with `make` if missing.
    pub(crate) fn get_or_insert(&self, key: &QueryKey, make: impl FnOnce() -> Arc<E>) -> Arc<E> {
        if let Some(e) = self.get(key) {
            return e;
        }
        let mut reg = self.registry.lock();
        if let Some(e) = self.get(key) {
            return e;
        }
        if let Some(max) = self.max {
            // Make room first, so the new entry is never its own victim.
            let target = max.saturating_sub(1);
            if self.len() > target {
                self.evict_locked(&mut reg, self.len() - target, None);
            }
        }
        let entry = make();
        self.shard(key).write().insert(key.clone(), entry.clone());
        self.len.fetch_add(1, Ordering::Relaxed);
        reg.index.insert(key);
        if self.bounded() {
            reg.ring.push_back((entry.id(), key.clone()));
        }
        self.unlock(reg);
        entry
    }

    /// Removes `key` (only if it is entry `id`, when given).
    pub(crate) fn remove(&self, key: &QueryKey, id: Option<u64>) -> Option<Arc<E>> {
        let mut reg = self.registry.lock();
        let removed = self.remove_locked(&mut reg, key, id);
        self.unlock(reg);
        removed
    }

    /// Releases the registry lock, then fires the cancellation tokens of the fetches
    /// whose entries were removed under it (their fetch functions hear that the entry
    /// stopped waiting: see `FetchContext`). Firing wakes tasks, so it waits for the lock
    /// to be released; it runs no user code.
    #[inline]
    fn unlock(&self, reg: MutexGuard<'_, Registry>) {
        if !reg.detached.is_empty() {
            Self::fire_detached(reg);
        }
    }

    #[cold]
    fn fire_detached(mut reg: MutexGuard<'_, Registry>) {
        let detached = std::mem::take(&mut reg.detached);
        drop(reg);
        for token in detached {
            token.cancel();
        }
    }

    fn remove_locked(&self, reg: &mut Registry, key: &QueryKey, id: Option<u64>) -> Option<Arc<E>> {
        let removed = {
            let mut shard = self.shard(key).write();
            match shard.get(key) {
                Some(e) if id.is_none_or(|id| e.id() == id) => shard.remove(key),
                _ => None,
            }
        }?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        reg.index.remove(key);
        let marked = removed.mark_removed();
        let [gc, stale] = marked.deadlines;
        self.timers.disarm_entry(removed.id(), gc, stale);
        if marked.weight > 0 {
            self.weight
                .fetch_sub(u64::from(marked.weight), Ordering::Relaxed);
        }
        if let Some(token) = marked.cancel {
            reg.detached.push(token);
        }
        // Ring slots of removed entries are dropped lazily; compact when they pile up.
        if reg.ring.len() > 2 * self.len() + 64 {
            let shards = &self.shards;
            let mask = self.mask;
            reg.ring.retain(|(id, k)| {
                shards[(k.precomputed_hash() >> 40) as usize & mask]
                    .read()
                    .get(k)
                    .is_some_and(|e| e.id() == *id)
            });
        }
        Some(removed)
    }

    /// Entries in `scope`, collected under the registry lock (user predicates run later,
    /// outside every lock), sorted by key. An exact scope is one shard read, no registry
    /// lock.
    pub(crate) fn matching(&self, scope: &KeyScope) -> Vec<Arc<E>> {
        let mut found = self.matching_unsorted(scope);
        if found.len() > 1 {
            found.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        }
        found
    }

    fn matching_unsorted(&self, scope: &KeyScope) -> Vec<Arc<E>> {
        match scope {
            KeyScope::Exact(k) => self.get(k).into_iter().collect(),
            KeyScope::Prefix(p) if !p.is_empty() => {
                let reg = self.registry.lock();
                self.get(p)
                    .into_iter()
                    .chain(reg.index.longer_than(p).filter_map(|k| self.get(k)))
                    .collect()
            }
            // The empty prefix is everything.
            KeyScope::Prefix(_) | KeyScope::All => {
                let _reg = self.registry.lock();
                let mut all = Vec::with_capacity(self.len());
                for shard in self.shards.iter() {
                    all.extend(shard.read().values().cloned());
                }
                all
            }
        }
    }

    /// Removes every entry in `scope`; returns them (in no particular order).
    pub(crate) fn remove_matching(&self, scope: &KeyScope) -> Vec<Arc<E>> {
        let victims = self.matching_unsorted(scope);
        let mut reg = self.registry.lock();
        let removed = victims
            .iter()
            .filter_map(|e| self.remove_locked(&mut reg, e.key(), Some(e.id())))
            .collect();
        self.unlock(reg);
        removed
    }

    /// Gc: removes entry `id` at `key` if its deadline has passed and it is unused.
    /// `fired_at`: the deadline the fired timer was armed at.
    pub(crate) fn collect(
        &self,
        key: &QueryKey,
        id: u64,
        fired_at: tokio::time::Instant,
        now: tokio::time::Instant,
    ) {
        let mut reg = self.registry.lock();
        let verdict = self
            .with(key, |e| {
                (e.id() == id).then(|| e.gc_timer_fired(fired_at, now))
            })
            .flatten();
        match verdict {
            Some(GcVerdict::Collect) => {
                if self.remove_locked(&mut reg, key, Some(id)).is_some() {
                    self.collected.fetch_add(1, Ordering::Relaxed);
                    crate::telemetry::count(crate::telemetry::names::GC);
                    self.log_removal(key, Removal::Collected);
                    tracing::debug!(%key, "gc collected");
                }
            }
            Some(GcVerdict::Rearm(at)) => {
                let target = TimerTarget::Entry(key.clone());
                // The timer that fired left the queue: nothing to move.
                self.timers.arm(id, TimerKind::Gc, None, at, target);
            }
            Some(GcVerdict::Keep) | None => {}
        }
        // (An entry the gc collects has no fetch in flight, unless one began between its
        // verdict and its removal.)
        self.unlock(reg);
    }

    /// After a manual write to entry `id` at `key`: `max_queries(0)` keeps nothing, the
    /// written entry included; the weight bound trims what the write added (see
    /// [`trim_after_store`](Self::trim_after_store)). (With a count bound above 0 the
    /// insertion already made room for the entry, and a write never pushes out the very
    /// entry it wrote for the count: pinned entries may hold the count above its bound,
    /// and a write does not trim them back.)
    pub(crate) fn drop_if_keeping_nothing(&self, key: &QueryKey, id: u64) {
        let keep_nothing = self.max == Some(0) && self.len() > 0;
        if keep_nothing || self.over_weight() {
            self.trim(Some((key, id)), true, keep_nothing);
        }
    }

    /// Trim back to the bounds (after something that may have left the cache above one).
    pub(crate) fn evict_if_over_capacity(&self) {
        if self.over() {
            self.trim(None, false, true);
        }
    }

    /// After entry `id` at `key` stored data (a fetch settled, data read from the second
    /// tier): trim back to the bounds. Under the weight bound, an entry heavier than the
    /// whole bound goes first (it is not kept, and should not push out every other entry
    /// on its way out); any other entry that just stored its data gets a second chance
    /// like a used one, so older unused entries go first.
    #[inline]
    pub(crate) fn trim_after_store(&self, key: &QueryKey, id: u64) {
        // (Checked here, inline: the fill path of a cache within its bounds, or without
        // any, pays two loads and no call.)
        if self.over() {
            self.trim(Some((key, id)), true, true);
        }
    }

    /// After entry `id` at `key` lost its last pin (an observer left): trim back to the
    /// bounds, the entry first if it is heavier than the whole weight bound.
    pub(crate) fn trim_after_release(&self, key: &QueryKey, id: u64) {
        if self.over() {
            self.trim(Some((key, id)), false, true);
        }
    }

    /// Above a bound (a hint: `trim` decides under the registry lock).
    #[inline]
    fn over(&self) -> bool {
        self.max.is_some_and(|max| self.len() > max) || self.over_weight()
    }

    /// Evicts for the weight bound, and for the count bound when `count` (see
    /// `drop_if_keeping_nothing` for a trim that leaves the count alone). Out of line:
    /// the callers' inline `over` check keeps it off the path of a cache within bounds.
    #[inline(never)]
    fn trim(&self, changed: Option<(&QueryKey, u64)>, spare: bool, count: bool) {
        let mut reg = self.registry.lock();
        if let (Some(bound), Some((key, id))) = (&self.weight_bound, changed) {
            let too_heavy = self
                .with(key, |e| {
                    e.id() == id
                        && e.eviction_weight()
                            .is_some_and(|w| u64::from(w) > bound.max)
                })
                .unwrap_or(false);
            if too_heavy {
                self.evict_one(&mut reg, key, id);
            }
        }
        let excess = match self.max {
            Some(max) if count => self.len().saturating_sub(max),
            _ => 0,
        };
        let keep = changed.filter(|_| spare).map(|(_, id)| id);
        self.evict_locked(&mut reg, excess, keep);
        // Tokens of fetches detached by the evictions fire once the lock is released.
        self.unlock(reg);
    }

    /// CLOCK sweep: evicts unpinned entries until `n` are gone and the total weight is
    /// within its bound, giving referenced ones a second chance (and, under the weight
    /// bound, the entry `keep` that just stored its data). An entry heavier than the whole
    /// weight bound gets no second chance: it is never kept once unpinned. Stops after two
    /// full turns (every remaining entry may be pinned: then the bounds stay exceeded until
    /// pinned entries are released, and the next trim goes on).
    fn evict_locked(&self, reg: &mut Registry, mut n: usize, keep: Option<u64>) {
        let mut budget = reg.ring.len() * 2;
        // The count bound alone keeps its historical behaviour: no spared newcomer.
        let mut keep = keep.filter(|_| self.weight_bound.is_some());
        while (n > 0 || self.over_weight()) && budget > 0 {
            budget -= 1;
            let Some((id, key)) = reg.ring.pop_front() else {
                break;
            };
            let Some(entry) = self.get(&key).filter(|e| e.id() == id) else {
                continue; // slot of a removed entry
            };
            let Some(weight) = entry.eviction_weight() else {
                reg.ring.push_back((id, key)); // pinned
                continue;
            };
            let too_heavy = self.weight_bound.is_some_and(|b| u64::from(weight) > b.max);
            // (The CLOCK bit is read and cleared either way: a spared newcomer that was
            // also used keeps no second "second chance".)
            let spared = keep == Some(id);
            if !too_heavy && (entry.take_referenced() | spared) {
                if spared {
                    keep = None;
                }
                reg.ring.push_back((id, key));
                continue;
            }
            if self.evict_one(reg, &key, id) {
                n = n.saturating_sub(1);
            }
        }
    }

    /// Evicts entry `id` at `key` (counted, logged). `false`: it was gone already.
    fn evict_one(&self, reg: &mut Registry, key: &QueryKey, id: u64) -> bool {
        if self.remove_locked(reg, key, Some(id)).is_none() {
            return false;
        }
        self.evicted.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::count(crate::telemetry::names::EVICTIONS);
        self.log_removal(key, Removal::Evicted);
        tracing::debug!(%key, "evicted");
        true
    }

    /// Entries evicted for a bound so far, and collected by the gc.
    pub(crate) fn removals(&self) -> (u64, u64) {
        (
            self.evicted.load(Ordering::Relaxed),
            self.collected.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn clear(&self) -> Vec<Arc<E>> {
        self.remove_matching(&KeyScope::All)
    }
}

/// The cache's size bounds (none: it never evicts).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// `max_queries`: the most entries in memory.
    pub(crate) max_queries: Option<usize>,
    /// `max_weight` (and the default weight): the most the entries may weigh together.
    pub(crate) weight: Option<WeightBound>,
}

/// Why the cache removed an entry by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Evicted for `max_queries` or `max_weight`.
    Evicted,
    /// Collected by the gc.
    Collected,
}

/// Evictions and collections, logged while the engine has event listeners.
struct RemovalLog {
    listeners: Arc<AtomicUsize>,
    log: Mutex<Vec<(QueryKey, Removal)>>,
    pending: std::sync::atomic::AtomicBool,
}
