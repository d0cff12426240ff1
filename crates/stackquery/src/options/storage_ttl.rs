//! A query's own second-tier ttl ([`QueryOptions::storage_ttl`](crate::QueryOptions::storage_ttl)),
//! kept in three bytes.
//!
//! Why three bytes: `QueryOptions` had exactly that much padding left after `enabled` and
//! `fetch_timeout`, and every entry keeps a copy of its options (and every fetch task
//! carries one), so a setting that most queries leave unset must not grow them. An
//! `Option<Duration>` would have cost 16 bytes more per copy.
//!
//! The format: a 24-bit word, little-endian. Its low 20 bits are a mantissa `m`
//! (0..=1,048,575) and its high 4 bits a tag: `0..=13` is a power of ten `e`, the ttl being
//! `m · 10^e` milliseconds; [`FOREVER`] is "never expires" (`Duration::MAX`, or more than
//! the format holds, about 333 million years); [`UNSET`] is "not set". So a ttl is kept to
//! 6 significant digits: exactly to the millisecond up to 17 minutes (every whole second
//! up to 12 days), and otherwise **rounded down**, by less than 0.001 % — a ttl is a
//! maximum age, and rounding must not lengthen it. The one exception: a ttl under 1 ms
//! that is not zero is 1 ms (as the backends round it), so it does not turn into "already
//! expired".

use std::fmt;
use std::time::Duration;

const MANTISSA_BITS: u32 = 20;
const MAX_MANTISSA: u128 = (1 << MANTISSA_BITS) - 1;
/// The largest power of ten a mantissa is scaled by.
const MAX_EXP: u8 = 13;
/// The tag of "never expires".
const FOREVER: u8 = 14;
/// The tag of "not set".
const UNSET: u8 = 15;

/// A second-tier ttl (or none) in 3 bytes, alignment 1 (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompactTtl([u8; 3]);

impl CompactTtl {
    /// No ttl of the query's own: the client's rule applies.
    pub(crate) const UNSET: Self = Self::pack(UNSET, 0);

    const fn pack(tag: u8, mantissa: u32) -> Self {
        let word = ((tag as u32) << MANTISSA_BITS) | mantissa;
        CompactTtl([word as u8, (word >> 8) as u8, (word >> 16) as u8])
    }

    fn unpack(self) -> (u8, u32) {
        let [a, b, c] = self.0;
        let word = u32::from(a) | (u32::from(b) << 8) | (u32::from(c) << 16);
        ((word >> MANTISSA_BITS) as u8, word & MAX_MANTISSA as u32)
    }

    /// `ttl`, rounded down to 6 significant digits (see the module docs).
    pub(crate) fn new(ttl: Duration) -> Self {
        if ttl == Duration::MAX {
            return Self::pack(FOREVER, 0);
        }
        let mut ms = ttl.as_millis();
        if ms == 0 && !ttl.is_zero() {
            ms = 1;
        }
        let mut exp = 0;
        while ms > MAX_MANTISSA {
            if exp == MAX_EXP {
                return Self::pack(FOREVER, 0);
            }
            ms /= 10;
            exp += 1;
        }
        // In range: the loop left at most MAX_MANTISSA.
        Self::pack(exp, ms as u32)
    }

    /// The ttl kept (`None`: unset; `Some(Duration::MAX)`: never expires).
    pub(crate) fn get(self) -> Option<Duration> {
        match self.unpack() {
            (UNSET, _) => None,
            (FOREVER, _) => Some(Duration::MAX),
            // At most 1,048,575 · 10^13 ms, which fits in a u64.
            (exp, mantissa) => Some(Duration::from_millis(
                u64::from(mantissa) * 10_u64.pow(u32::from(exp)),
            )),
        }
    }
}

impl fmt::Debug for CompactTtl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ttl round-trips to at most itself and to within 0.001 % of itself (1 ms under
    /// 1 ms), exactly for whole milliseconds under 17 minutes and whole seconds under 12
    /// days; `Duration::MAX` and anything past the format stay "never"; unset stays unset.
    #[test]
    fn ttls_round_trip_rounded_down_to_six_digits() {
        assert_eq!(CompactTtl::UNSET.get(), None);
        assert_eq!(std::mem::size_of::<CompactTtl>(), 3);
        assert_eq!(std::mem::align_of::<CompactTtl>(), 1);
        let exact = [
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_millis(1_500),
            Duration::from_millis(1_048_575),
            Duration::from_secs(3_600),
            Duration::from_secs(86_400),
            Duration::from_secs(12 * 86_400),
            Duration::from_secs(90 * 86_400),
            Duration::from_secs(365 * 86_400),
        ];
        for ttl in exact {
            assert_eq!(CompactTtl::new(ttl).get(), Some(ttl), "{ttl:?}");
        }
        assert_eq!(
            CompactTtl::new(Duration::from_nanos(1)).get(),
            Some(Duration::from_millis(1)),
            "a ttl under 1 ms is not 'already expired'"
        );
        assert_eq!(
            CompactTtl::new(Duration::from_micros(1_999)).get(),
            Some(Duration::from_millis(1))
        );
        for ttl in [
            Duration::from_millis(1_048_576),
            Duration::from_millis(123_456_789),
            Duration::from_millis(987_654_321_987),
            Duration::from_secs(u64::MAX / 2_000),
        ] {
            let kept = CompactTtl::new(ttl).get().unwrap();
            assert!(kept <= ttl, "{ttl:?} kept as {kept:?}: lengthened");
            let lost = (ttl - kept).as_secs_f64() / ttl.as_secs_f64();
            assert!(lost < 1e-5, "{ttl:?} kept as {kept:?}");
        }
        for never in [Duration::MAX, Duration::from_secs(u64::MAX / 100)] {
            assert_eq!(
                CompactTtl::new(never).get(),
                Some(Duration::MAX),
                "{never:?}"
            );
        }
    }
}
