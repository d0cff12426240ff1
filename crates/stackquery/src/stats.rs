//! Cheap counters: striped so two threads hitting the same hot key do not fight over one
//! cache line.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

const STRIPES: usize = 8;

/// A counter split over cache-padded stripes; each thread adds to its own stripe.
pub(crate) struct StripedCounter {
    stripes: [CachePadded<AtomicU64>; STRIPES],
}

impl Default for StripedCounter {
    fn default() -> Self {
        StripedCounter {
            stripes: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
        }
    }
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `usize::MAX` = not assigned yet; a const initialiser keeps the access check-free.
    static STRIPE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

#[inline]
fn stripe_index() -> usize {
    STRIPE.with(|s| {
        let i = s.get();
        if i < STRIPES {
            i
        } else {
            let i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
            i
        }
    })
}

impl StripedCounter {
    #[inline]
    pub(crate) fn incr(&self) {
        self.stripes[stripe_index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// Threads that own a stripe of every [`HitCounter`] (the first ones to count a hit;
/// a stripe is handed on when its thread exits).
const OWNED: usize = 16;
/// Stripes shared, with atomic adds, by the threads beyond [`OWNED`].
const SHARED: usize = 4;

/// The hit counter: the hit path's one write to shared memory, so it avoids even an
/// uncontended atomic read-modify-write (a `lock`-prefixed add, ~10 ns here). Each of the
/// first [`OWNED`] threads to count a hit owns a stripe of *every* hit counter — one id
/// for the process, not per counter — and, being its only writer, adds with a plain load
/// and store. Threads beyond those share [`SHARED`] stripes with atomic adds. A thread
/// that exits hands its id back (under a lock, which orders its last writes before the
/// next owner's first), and the stripe's count carries on. `get` sums the stripes:
/// O(stripes), never O(entries).
pub(crate) struct HitCounter {
    stripes: [CachePadded<AtomicU64>; OWNED + SHARED],
}

impl Default for HitCounter {
    fn default() -> Self {
        HitCounter {
            stripes: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
        }
    }
}

/// Owned ids never handed out yet (`OWNED` and up: none left), and ids handed back.
static NEXT_OWNED: AtomicUsize = AtomicUsize::new(0);
static FREED: parking_lot::Mutex<Vec<usize>> = parking_lot::Mutex::new(Vec::new());
static NEXT_SHARED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // The thread's stripe of every hit counter: below `OWNED` one it owns, from `OWNED`
    // a shared one, `usize::MAX` not assigned yet. Const-initialised and without a
    // destructor, so it is readable with no check, even while the thread exits.
    static HIT_STRIPE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    // Hands an owned id back when the thread exits.
    static OWNERSHIP: std::cell::RefCell<Option<Ownership>> = const { std::cell::RefCell::new(None) };
}

struct Ownership(usize);

impl Drop for Ownership {
    fn drop(&mut self) {
        // Anything the thread still counts from here on (other destructors) is shared.
        let _ = HIT_STRIPE.try_with(|s| s.set(shared_stripe()));
        FREED.lock().push(self.0);
    }
}

fn shared_stripe() -> usize {
    OWNED + NEXT_SHARED.fetch_add(1, Ordering::Relaxed) % SHARED
}

#[cold]
fn assign_hit_stripe() -> usize {
    let owned = FREED.lock().pop().or_else(|| {
        let n = NEXT_OWNED.fetch_add(1, Ordering::Relaxed);
        (n < OWNED).then_some(n)
    });
    let stripe = match owned {
        // Owned only if the thread can hand it back when it exits.
        Some(id) => match OWNERSHIP.try_with(|o| *o.borrow_mut() = Some(Ownership(id))) {
            Ok(()) => id,
            Err(_) => {
                FREED.lock().push(id);
                shared_stripe()
            }
        },
        None => shared_stripe(),
    };
    HIT_STRIPE.with(|s| s.set(stripe));
    stripe
}

impl HitCounter {
    #[inline]
    pub(crate) fn incr(&self) {
        let mut i = HIT_STRIPE.with(std::cell::Cell::get);
        if i >= OWNED + SHARED {
            i = assign_hit_stripe();
        }
        let stripe = &self.stripes[i];
        if i < OWNED {
            // This thread is the stripe's only writer: no read-modify-write needed.
            stripe.store(stripe.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        } else {
            stripe.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// A [`StripedCounter`] that is also a counter of the `metrics` facade (feature
/// `metrics`), recorded as it happens. Only for paths slower than a fresh hit: the
/// recorder's lookup runs on every increment.
pub(crate) struct Metered {
    counter: StripedCounter,
    #[cfg(feature = "metrics")]
    name: &'static str,
}

impl Metered {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn new(name: &'static str) -> Self {
        Metered {
            counter: StripedCounter::default(),
            #[cfg(feature = "metrics")]
            name,
        }
    }

    #[inline]
    pub(crate) fn incr(&self) {
        self.counter.incr();
        #[cfg(feature = "metrics")]
        metrics::counter!(self.name).increment(1);
    }

    pub(crate) fn get(&self) -> u64 {
        self.counter.get()
    }
}

/// Counters kept by a client; read them with [`QueryClient::stats`](crate::QueryClient::stats).
///
/// Fresh hits are a [`HitCounter`]: the hit path adds one to its thread's stripe (a plain
/// load and store) and nothing else, whatever the features. With the `metrics`
/// feature they reach the recorder in batches (see `telemetry.rs`); every other counter
/// is recorded as it happens.
pub(crate) struct Counters {
    pub(crate) hits: HitCounter,
    pub(crate) stale_hits: Metered,
    pub(crate) misses: Metered,
    pub(crate) fetches: Metered,
    pub(crate) dedup_joins: Metered,
    pub(crate) retries: Metered,
    pub(crate) errors: Metered,
    pub(crate) l2_hits: Metered,
    pub(crate) l2_misses: Metered,
    pub(crate) l2_errors: Metered,
    pub(crate) l2_writes: Metered,
    pub(crate) bus_in: Metered,
    pub(crate) bus_out: Metered,
}

impl Default for Counters {
    fn default() -> Self {
        use crate::telemetry::names;
        Counters {
            hits: HitCounter::default(),
            stale_hits: Metered::new(names::STALE_HITS),
            misses: Metered::new(names::MISSES),
            fetches: Metered::new(names::FETCHES),
            dedup_joins: Metered::new(names::DEDUP_JOINS),
            retries: Metered::new(names::RETRIES),
            errors: Metered::new(names::ERRORS),
            l2_hits: Metered::new(names::L2_HITS),
            l2_misses: Metered::new(names::L2_MISSES),
            l2_errors: Metered::new(names::L2_ERRORS),
            l2_writes: Metered::new(names::L2_WRITES),
            bus_in: Metered::new(names::BUS_IN),
            bus_out: Metered::new(names::BUS_OUT),
        }
    }
}

/// A snapshot of a client's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Calls answered with fresh cached data (removed and evicted entries' hits
    /// included).
    pub hits: u64,
    /// Calls answered with stale cached data (a background refetch was started or joined).
    pub stale_hits: u64,
    /// Calls that found no data and waited for a fetch.
    pub misses: u64,
    /// Fetches started (one per deduplicated flight, retries included in it).
    pub fetches: u64,
    /// Calls that joined a fetch already in flight instead of starting one.
    pub dedup_joins: u64,
    /// Fetch attempts that failed and were tried again.
    pub retries: u64,
    /// Fetches that failed for good: retries spent, or the fetch function panicked (a
    /// cancelled fetch is not an error here).
    pub errors: u64,
    /// Entries evicted to respect `max_queries`.
    pub evictions: u64,
    /// Unused entries removed after their `gc_time`.
    pub gc_collections: u64,
    /// Second-tier reads that found a usable entry (hydrations).
    pub l2_hits: u64,
    /// Second-tier reads that found nothing.
    pub l2_misses: u64,
    /// Second-tier failures: errors, timeouts, corrupt entries (each logged).
    pub l2_errors: u64,
    /// Second-tier writes attempted by the write-behind queue.
    pub l2_writes: u64,
    /// Messages received from other instances on the invalidation bus.
    pub bus_in: u64,
    /// Messages sent to other instances on the invalidation bus.
    pub bus_out: u64,
    /// Entries in memory now.
    pub entries: usize,
}

impl Counters {
    /// The counters kept here (the cache's evictions and collections are filled in by the
    /// client, from the cache).
    pub(crate) fn snapshot(&self, entries: usize) -> CacheStats {
        CacheStats {
            hits: self.hits.get(),
            stale_hits: self.stale_hits.get(),
            misses: self.misses.get(),
            fetches: self.fetches.get(),
            dedup_joins: self.dedup_joins.get(),
            retries: self.retries.get(),
            errors: self.errors.get(),
            evictions: 0,
            gc_collections: 0,
            l2_hits: self.l2_hits.get(),
            l2_misses: self.l2_misses.get(),
            l2_errors: self.l2_errors.get(),
            l2_writes: self.l2_writes.get(),
            bus_in: self.bus_in.get(),
            bus_out: self.bus_out.get(),
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// More threads than owned stripes, some exiting and handing their stripe on while
    /// others count: every hit is counted, and ids are handed back.
    #[test]
    fn hit_counts_are_exact_across_many_short_lived_threads() {
        let counter = Arc::new(HitCounter::default());
        for _round in 0..3 {
            let threads: Vec<_> = (0..(OWNED + 8))
                .map(|_| {
                    let c = counter.clone();
                    std::thread::spawn(move || {
                        for _ in 0..10_000 {
                            c.incr();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        assert_eq!(counter.get(), 3 * (OWNED as u64 + 8) * 10_000);
    }

    /// While more threads than owned stripes count at once, the ones beyond share the
    /// atomic stripes, and the total is still exact.
    #[test]
    fn hit_counts_are_exact_with_more_live_threads_than_owned_stripes() {
        let counter = Arc::new(HitCounter::default());
        let n = OWNED + SHARED + 4;
        let barrier = Arc::new(std::sync::Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (c, b) = (counter.clone(), barrier.clone());
                std::thread::spawn(move || {
                    c.incr();
                    // All alive at once: not every thread can own a stripe.
                    b.wait();
                    for _ in 1..20_000 {
                        c.incr();
                    }
                    HIT_STRIPE.with(std::cell::Cell::get)
                })
            })
            .collect();
        let stripes: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(counter.get(), n as u64 * 20_000);
        assert!(
            stripes.iter().any(|&s| s >= OWNED),
            "some shared: {stripes:?}"
        );
        let mut owned: Vec<_> = stripes.iter().filter(|&&s| s < OWNED).collect();
        let count = owned.len();
        owned.sort();
        owned.dedup();
        assert_eq!(
            owned.len(),
            count,
            "an owned stripe has one thread: {stripes:?}"
        );
    }
}
