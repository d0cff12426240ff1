//! The crate's one source of randomness, and its one jitter.
//!
//! Everything random in the crate comes from here: the per-process key-hash seed, bus
//! instance ids and lease tokens, the jitter of retry delays and bus reconnects, and the
//! jitter of second-tier ttls (drawn from a seedable [`Stream`], so its tests are exact).
//! Keeping one source means one place to reason about (and, one day, to swap for a real
//! generator) instead of a `RandomState` trick per module.
//!
//! None of it is cryptographic: the bits are std's randomly seeded `RandomState` (keys
//! drawn from the OS once per thread, then varied per instance) hashed over the clock,
//! the process id and a process-wide counter. That is unpredictable enough for hash
//! seeds, unique ids and spreading retries, without a random-number dependency.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use foldhash::fast::{FoldHasher, SeedableRandomState};
use foldhash::SharedSeed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 64 random bits.
pub(crate) fn u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = RandomState::new().build_hasher();
    // The counter keeps two draws in the same clock tick apart even if the hasher keys
    // were ever to repeat; the pid keeps forked processes apart.
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// 128 random bits (two draws of [`u64`]), for ids that must not collide.
#[cfg(feature = "redis")]
pub(crate) fn u128() -> u128 {
    (u128::from(u64()) << 64) | u128::from(u64())
}

/// The hasher seeded once per process, for hashes that must agree within the process (on
/// every thread) but be unpredictable from outside it: keys from request input must not be
/// craftable to collide. Query keys are hashed with it once, when built
/// (`key::hash_parts`), and the cache's prefix index hashes key prefixes with it.
///
/// foldhash, hashbrown's default hasher: a folded multiply keyed by 128 random bits (its
/// per-hasher seed, and its shared seeds expanded from a second draw), about a tenth of
/// SipHash's instructions on a short key. Without the seeds, nobody can aim keys at one
/// bucket.
pub(crate) fn process_seed() -> &'static SeedableRandomState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    static STATE: OnceLock<SeedableRandomState> = OnceLock::new();
    STATE.get_or_init(|| {
        let shared = SHARED.get_or_init(|| SharedSeed::from_u64(u64()));
        SeedableRandomState::with_seed(u64(), shared)
    })
}

/// A hasher for one query key ([`process_seed`]'s).
#[inline]
pub(crate) fn key_hasher() -> FoldHasher {
    process_seed().build_hasher()
}

/// "Equal jitter": half of `delay` kept, plus a uniformly random part of the other half,
/// so the result is uniform in `[delay / 2, delay]`. Many clients that failed together
/// then do not retry (or reconnect) together, while none retries sooner than half its
/// delay. (Not "full jitter", which draws from the whole `[0, delay]`.)
pub(crate) fn jittered(delay: Duration) -> Duration {
    jittered_by(delay, u64())
}

/// `delay` scaled by a factor in `[0.5, 1]` drawn from the random bits `r`, saturating.
fn jittered_by(delay: Duration, r: u64) -> Duration {
    let frac = unit(r);
    // Not `mul_f64`: it panics when the product is past `Duration::MAX`, which a user-given
    // `Duration::MAX` reaches whenever the factor rounds to 1.0 (`MAX` as f64 is 2^64 s).
    Duration::try_from_secs_f64(delay.as_secs_f64() * (0.5 + 0.5 * frac))
        .map_or(delay, |d| d.min(delay))
}

/// A seedable stream of random bits (SplitMix64 over an atomic counter): cheap enough to
/// draw once per second-tier write, shareable between threads without a lock, and, given
/// a fixed seed, the same sequence every run (which is how the ttl jitter is tested).
/// Seeded from [`u64`] in production, so instances do not draw in step.
pub(crate) struct Stream(AtomicU64);

impl Stream {
    /// A stream that starts at `seed`.
    pub(crate) fn seeded(seed: u64) -> Self {
        Stream(AtomicU64::new(seed))
    }

    /// A stream with an unpredictable seed.
    pub(crate) fn new() -> Self {
        Self::seeded(u64())
    }

    /// The next 64 random bits.
    pub(crate) fn next(&self) -> u64 {
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        // SplitMix64: a Weyl sequence through a bijective finaliser. Concurrent draws get
        // distinct counter values (fetch_add), hence distinct outputs.
        let mut z = self
            .0
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream(..)")
    }
}

/// The top 53 bits of `r` as a fraction in `[0, 1)`: exactly what an f64 can hold.
fn unit(r: u64) -> f64 {
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// `ttl` shortened by a random part of `fraction` of it: uniform in
/// `(ttl · (1 − fraction), ttl]`, drawn from the random bits `r`. Never longer than `ttl`
/// (a configured ttl stays a maximum age) and never shorter than `ttl · (1 − fraction)`.
/// `fraction` is expected in `[0, 1]` (the builder clamps it); outside it, or NaN, the
/// result still stays in `[0, ttl]`. Exact (no float rounding) when nothing is cut.
pub(crate) fn shortened(ttl: Duration, fraction: f64, r: u64) -> Duration {
    let part = fraction * unit(r);
    if part.is_nan() || part <= 0.0 {
        return ttl;
    }
    // The cut, not the result, goes through f64: a cut that rounds to zero leaves the
    // ttl exact. Not `mul_f64`, which panics past `Duration::MAX`.
    let cut = Duration::try_from_secs_f64(ttl.as_secs_f64() * part.min(1.0)).unwrap_or(ttl);
    ttl.saturating_sub(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ttl jitter only shortens, by at most `fraction` of the ttl, and its extremes
    /// are where they should be: no cut for the smallest draw, almost the whole fraction
    /// for the largest. A `Duration::MAX` ttl or a bad fraction never panics.
    #[test]
    fn shortened_stays_within_the_window() {
        let ttl = Duration::from_secs(100);
        assert_eq!(shortened(ttl, 0.2, 0), ttl);
        let most = shortened(ttl, 0.2, u64::MAX);
        assert!(most >= Duration::from_secs(80) && most < Duration::from_millis(80_001));
        assert_eq!(shortened(ttl, 0.2, 1 << 63), Duration::from_secs(90));
        assert_eq!(shortened(ttl, 0.0, u64::MAX), ttl);
        for bad in [f64::NAN, -1.0, f64::NEG_INFINITY] {
            assert_eq!(shortened(ttl, bad, u64::MAX), ttl, "{bad}");
        }
        for big in [2.0, f64::INFINITY] {
            assert!(shortened(ttl, big, u64::MAX) <= ttl, "{big}");
        }
        for r in [0, 1 << 40, 1 << 63, u64::MAX] {
            let d = shortened(Duration::MAX, 0.5, r);
            assert!(d <= Duration::MAX && d >= Duration::MAX / 2 - Duration::from_secs(1));
        }
        assert_eq!(shortened(Duration::ZERO, 0.5, u64::MAX), Duration::ZERO);
    }

    /// A seeded stream is the same sequence every time (what makes the jitter's tests
    /// exact), two seeds give different sequences, and its bits look uniform enough: the
    /// mean of many draws' fractions is near 1/2.
    #[test]
    fn a_seeded_stream_repeats_and_spreads() {
        let a: Vec<u64> = (0..5)
            .map({
                let s = Stream::seeded(7);
                move |_| s.next()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let s = Stream::seeded(7);
                move |_| s.next()
            })
            .collect();
        let c: Vec<u64> = (0..5)
            .map({
                let s = Stream::seeded(8);
                move |_| s.next()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let s = Stream::seeded(1);
        let mean = (0..10_000).map(|_| unit(s.next())).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }

    /// A user-given retry delay of `Duration::MAX` ("never retry soon") used to panic in
    /// `mul_f64` when the random factor rounded to 1.0, killing the fetch task: jitter now
    /// saturates, for every factor.
    #[test]
    fn jitter_of_duration_max_saturates() {
        for r in [0, 1 << 40, u64::MAX - (1 << 11), u64::MAX] {
            let d = jittered_by(Duration::MAX, r);
            assert!(d >= Duration::MAX / 2 - Duration::from_secs(1) && d <= Duration::MAX);
        }
        assert_eq!(jittered_by(Duration::MAX, u64::MAX), Duration::MAX);
        assert_eq!(
            jittered_by(Duration::from_secs(10), 0),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(10));
        }
    }

    /// The key hasher is seeded once per process: two hashers agree on the same input
    /// (whatever the thread), and the seed is not foldhash's fixed one. The prefix index's
    /// `process_seed().hash_one(..)` agrees across threads too.
    #[test]
    fn key_hasher_is_stable_within_the_process_and_not_fixed() {
        let hash = |h: &mut FoldHasher| {
            h.write(b"user");
            h.write_u64(42);
            h.finish()
        };
        let here = hash(&mut key_hasher());
        assert_eq!(here, hash(&mut key_hasher()));
        let there = std::thread::spawn(move || hash(&mut key_hasher()))
            .join()
            .unwrap();
        assert_eq!(here, there);
        let fixed = hash(&mut foldhash::fast::FixedState::default().build_hasher());
        assert_ne!(here, fixed);
        let parts = [1_u64, 2, 3];
        assert_eq!(
            process_seed().hash_one(parts),
            std::thread::spawn(move || process_seed().hash_one(parts))
                .join()
                .unwrap()
        );
    }

    #[test]
    fn draws_differ() {
        let draws: std::collections::HashSet<u64> = (0..1000).map(|_| u64()).collect();
        assert_eq!(draws.len(), 1000);
    }
}
