//! The time to live of each second-tier write: which setting decides it, and its jitter.
//!
//! The ttl of a stored copy is an upper bound on how long that copy can be read back
//! (by this instance after a restart, or by the others sharing the tier). It decides
//! nothing about freshness — a copy read back is judged by its own `data_updated_at`
//! against the reader's stale time — so a shorter ttl only costs a refetch sooner, while a
//! longer one would let a copy be read past the age its owner configured. Hence the jitter
//! only ever **shortens**: a configured ttl stays a maximum age, whatever the draw.
//!
//! The decision, first that applies: the query's own
//! [`QueryOptions::storage_ttl`](crate::QueryOptions::storage_ttl); the first
//! [`storage_ttl_prefix`](crate::QueryClientBuilder::storage_ttl_prefix) rule whose prefix
//! the key is under; the client's [`storage_ttl`](crate::QueryClientBuilder::storage_ttl);
//! the entry's gc time. `Duration::MAX` means "never expires" (no jitter then).

use std::fmt;
use std::time::Duration;

use crate::key::QueryKey;
use crate::random::{self, Stream};

/// The client's ttl settings for its second tier.
pub(crate) struct TtlPolicy {
    /// The client's ttl (`None`: each entry's gc time).
    pub(crate) default: Option<Duration>,
    /// The largest part of a ttl the jitter may cut, in `[0, 1]` (0: no jitter).
    jitter: f64,
    /// Per-prefix ttls, tried in the order added.
    rules: Vec<(QueryKey, Duration)>,
    /// Where the jitter's draws come from (seeded in tests).
    bits: Stream,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        TtlPolicy {
            default: None,
            jitter: 0.0,
            rules: Vec::new(),
            bits: Stream::new(),
        }
    }
}

impl fmt::Debug for TtlPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TtlPolicy")
            .field("default", &self.default)
            .field("jitter", &self.jitter)
            .field(
                "rules",
                &self
                    .rules
                    .iter()
                    .map(|(prefix, ttl)| (prefix.to_string(), *ttl))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// `fraction` as a jitter: NaN and negative values are 0 (no jitter), values past 1 are 1.
/// `Err` carries the clamped value when the input was out of range (for the caller to log).
pub(crate) fn clamp_jitter(fraction: f64) -> Result<f64, f64> {
    if fraction.is_nan() {
        Err(0.0)
    } else if (0.0..=1.0).contains(&fraction) {
        Ok(fraction)
    } else {
        Err(fraction.clamp(0.0, 1.0))
    }
}

impl TtlPolicy {
    /// Sets the jitter (`fraction` already clamped to `[0, 1]`).
    pub(crate) fn set_jitter(&mut self, fraction: f64) {
        debug_assert!((0.0..=1.0).contains(&fraction));
        self.jitter = fraction;
    }

    /// Adds a per-prefix ttl (after the ones already there).
    pub(crate) fn add_rule(&mut self, prefix: QueryKey, ttl: Duration) {
        self.rules.push((prefix, ttl));
    }

    /// The ttl the first rule covering `key` gives.
    pub(crate) fn rule_for(&self, key: &QueryKey) -> Option<Duration> {
        if self.rules.is_empty() {
            return None;
        }
        self.rules
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix))
            .map(|(_, ttl)| *ttl)
    }

    /// The ttl of one write: `own` (the query's or a prefix rule's), else the client's,
    /// else `gc_time`; jittered. `None`: never expires.
    pub(crate) fn ttl_of(&self, own: Option<Duration>, gc_time: Duration) -> Option<Duration> {
        let ttl = own.or(self.default).unwrap_or(gc_time);
        if ttl == Duration::MAX {
            return None;
        }
        if self.jitter == 0.0 {
            return Some(ttl);
        }
        Some(random::shortened(ttl, self.jitter, self.bits.next()))
    }

    /// A policy drawing from a fixed seed (tests).
    #[cfg(test)]
    pub(crate) fn seeded(seed: u64) -> Self {
        TtlPolicy {
            bits: Stream::seeded(seed),
            ..TtlPolicy::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key;

    const HOUR: Duration = Duration::from_secs(3_600);

    /// Which setting wins: the entry's own, then the client's, then the gc time; "forever"
    /// (`Duration::MAX`) is no ttl at all. Without jitter the ttl is exact.
    #[test]
    fn the_entrys_own_ttl_then_the_clients_then_the_gc_time() {
        let mut p = TtlPolicy::seeded(1);
        let gc = Duration::from_secs(300);
        assert_eq!(p.ttl_of(None, gc), Some(gc));
        assert_eq!(p.ttl_of(None, Duration::MAX), None);
        p.default = Some(HOUR);
        assert_eq!(p.ttl_of(None, gc), Some(HOUR));
        assert_eq!(
            p.ttl_of(Some(Duration::from_secs(5)), gc),
            Some(Duration::from_secs(5))
        );
        assert_eq!(p.ttl_of(Some(Duration::MAX), gc), None);
    }

    /// The first prefix rule covering a key applies, in the order added; a key under none
    /// has none.
    #[test]
    fn the_first_prefix_rule_that_covers_the_key() {
        let mut p = TtlPolicy::seeded(1);
        assert_eq!(p.rule_for(&key!["user", 1]), None);
        p.add_rule(key!["user", "admin"], Duration::from_secs(10));
        p.add_rule(key!["user"], HOUR);
        assert_eq!(p.rule_for(&key!["user", 1]), Some(HOUR));
        assert_eq!(
            p.rule_for(&key!["user", "admin", 3]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(p.rule_for(&key!["users"]), None);
    }

    /// With a seeded stream the jitter is exact and repeatable: the same seed gives the
    /// same ttls, every one within `(ttl · (1 − j), ttl]`, and they are spread (not all
    /// equal). "Forever" is never jittered.
    #[test]
    fn jitter_is_seeded_shortening_only_and_spread() {
        let draw = |seed| {
            let mut p = TtlPolicy::seeded(seed);
            p.set_jitter(0.25);
            (0..50)
                .map(|_| p.ttl_of(Some(HOUR), HOUR).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(42);
        assert_eq!(a, draw(42), "a fixed seed repeats");
        assert_ne!(a, draw(43));
        for ttl in &a {
            assert!(*ttl <= HOUR && *ttl > HOUR.mul_f64(0.75), "{ttl:?}");
        }
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 50);
        let mut p = TtlPolicy::seeded(42);
        p.set_jitter(1.0);
        assert_eq!(p.ttl_of(Some(Duration::MAX), HOUR), None);
    }

    /// Out-of-range jitter is clamped (and reported), never a panic.
    #[test]
    fn jitter_out_of_range_is_clamped() {
        assert_eq!(clamp_jitter(0.1), Ok(0.1));
        assert_eq!(clamp_jitter(0.0), Ok(0.0));
        assert_eq!(clamp_jitter(1.0), Ok(1.0));
        assert_eq!(clamp_jitter(-0.5), Err(0.0));
        assert_eq!(clamp_jitter(f64::NEG_INFINITY), Err(0.0));
        assert_eq!(clamp_jitter(1.5), Err(1.0));
        assert_eq!(clamp_jitter(f64::INFINITY), Err(1.0));
        assert_eq!(clamp_jitter(f64::NAN), Err(0.0));
    }
}
