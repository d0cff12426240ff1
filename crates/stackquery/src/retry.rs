//! Retry policy: how many times a failed fetch is tried again, and how long to wait.
//!
//! Everything here is pure (no clocks, no tasks) so it can be tested on its own.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crate::error::QueryError;
use crate::user_code::contain;

type RetryPredicate = dyn Fn(u32, &QueryError) -> bool + Send + Sync;
type DelayFn = dyn Fn(u32) -> Duration + Send + Sync;

/// Whether a failed attempt is retried.
#[derive(Clone)]
pub enum RetryPolicy {
    /// Retry up to this many times after the first failure (`0`: never retry).
    Count(u32),
    /// Retry while the predicate returns true. It receives the number of failures so far
    /// (1 after the first failure) and the last error.
    Predicate(Arc<RetryPredicate>),
}

impl RetryPolicy {
    /// Whether to try again after `failure_count` failures, the last being `error`.
    ///
    /// A panic inside a predicate counts as "do not retry", and so does a call on a thread
    /// that is already panicking (the predicate is not run: see the crate's panic policy).
    pub fn should_retry(&self, failure_count: u32, error: &QueryError) -> bool {
        match self {
            RetryPolicy::Count(n) => failure_count <= *n,
            RetryPolicy::Predicate(p) => {
                contain("retry_if", || p(failure_count, error)).unwrap_or(false)
            }
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryPolicy::Count(n) => write!(f, "Count({n})"),
            RetryPolicy::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// How long to wait before retry number `attempt` (0 for the first retry).
#[derive(Clone)]
pub struct RetryDelay(pub(crate) Arc<DelayFn>);

impl RetryDelay {
    /// Wraps a delay function.
    pub fn new(f: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Self {
        RetryDelay(Arc::new(f))
    }

    /// The delay before retry `attempt`; a panicking delay function (or a call on a thread
    /// that is already panicking, where it is not run) falls back to the default.
    pub fn delay(&self, attempt: u32) -> Duration {
        contain("retry_delay", || (self.0)(attempt))
            .unwrap_or_else(|_| default_retry_delay(attempt))
    }
}

impl fmt::Debug for RetryDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryDelay(..)")
    }
}

/// The default delay: `min(1s · 2^attempt, 30s)`.
pub fn default_retry_delay(attempt: u32) -> Duration {
    let secs = 1u64.checked_shl(attempt).unwrap_or(u64::MAX).min(30);
    Duration::from_secs(secs)
}

/// "Full jitter": a uniformly random delay between half the delay and the whole of it, so
/// many clients that failed together do not retry together.
pub(crate) fn jittered(delay: Duration) -> Duration {
    // std's RandomState is seeded from the OS per instance: enough randomness for jitter
    // without another dependency.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    jittered_by(delay, r)
}

/// `delay` scaled by a factor in `[0.5, 1]` drawn from the random bits `r`, saturating.
fn jittered_by(delay: Duration, r: u64) -> Duration {
    let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
    // Not `mul_f64`: it panics when the product is past `Duration::MAX`, which a user-given
    // `Duration::MAX` reaches whenever the factor rounds to 1.0 (`MAX` as f64 is 2^64 s).
    Duration::try_from_secs_f64(delay.as_secs_f64() * (0.5 + 0.5 * frac))
        .map_or(delay, |d| d.min(delay))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_delay_doubles_then_caps() {
        assert_eq!(default_retry_delay(0), Duration::from_secs(1));
        assert_eq!(default_retry_delay(1), Duration::from_secs(2));
        assert_eq!(default_retry_delay(4), Duration::from_secs(16));
        assert_eq!(default_retry_delay(5), Duration::from_secs(30));
        assert_eq!(default_retry_delay(200), Duration::from_secs(30));
    }

    #[test]
    fn count_policy() {
        let p = RetryPolicy::Count(2);
        assert!(p.should_retry(1, &QueryError::Cancelled));
        assert!(p.should_retry(2, &QueryError::Cancelled));
        assert!(!p.should_retry(3, &QueryError::Cancelled));
        assert!(!RetryPolicy::Count(0).should_retry(1, &QueryError::Cancelled));
    }

    #[test]
    fn panicking_predicate_means_no_retry() {
        let p = RetryPolicy::Predicate(Arc::new(|_, _| panic!("boom")));
        assert!(!p.should_retry(1, &QueryError::Cancelled));
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
}
