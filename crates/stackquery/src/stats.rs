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
/// Fresh hits are a plain [`StripedCounter`]: the hit path adds one relaxed increment to
/// its thread's stripe and nothing else, whatever the features. With the `metrics`
/// feature they reach the recorder in batches (see `telemetry.rs`); every other counter
/// is recorded as it happens.
pub(crate) struct Counters {
    pub(crate) hits: StripedCounter,
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
            hits: StripedCounter::default(),
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
    /// Entries evicted to respect `max_queries` or `max_weight`.
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
    /// What the entries in memory weigh together now, as
    /// [`max_weight`](crate::QueryClientBuilder::max_weight) counts it (0 on a client
    /// without a weight bound: nothing is weighed there).
    pub total_weight: u64,
}

impl Counters {
    /// The counters kept here (the cache's evictions, collections and total weight are
    /// filled in by the client, from the cache).
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
            total_weight: 0,
        }
    }
}
