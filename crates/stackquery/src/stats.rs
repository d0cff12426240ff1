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

/// Counters kept by a client; read them with [`QueryClient::stats`](crate::QueryClient::stats).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: StripedCounter,
    pub(crate) stale_hits: StripedCounter,
    pub(crate) misses: StripedCounter,
    pub(crate) fetches: StripedCounter,
    pub(crate) dedup_joins: StripedCounter,
    pub(crate) l2_hits: StripedCounter,
    pub(crate) l2_misses: StripedCounter,
    pub(crate) l2_errors: StripedCounter,
    pub(crate) l2_writes: StripedCounter,
}

/// A snapshot of a client's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// `fetch_query` calls answered with fresh cached data.
    pub hits: u64,
    /// Calls answered with stale cached data (a background refetch was started or joined).
    pub stale_hits: u64,
    /// Calls that found no data and waited for a fetch.
    pub misses: u64,
    /// Fetches started (one per deduplicated flight, retries included in it).
    pub fetches: u64,
    /// Calls that joined a fetch already in flight instead of starting one.
    pub dedup_joins: u64,
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
            evictions: 0,
            gc_collections: 0,
            l2_hits: self.l2_hits.get(),
            l2_misses: self.l2_misses.get(),
            l2_errors: self.l2_errors.get(),
            l2_writes: self.l2_writes.get(),
            entries,
        }
    }
}
