//! Deadlines from user-given durations. Every user-given `Duration` saturates: adding it to
//! an `Instant` never panics, and `Duration::MAX` (or anything past the clock's range)
//! means "never".

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// How far ahead "never" is put when a caller needs a concrete `Instant` (about 30 years:
/// far past any process's life, and well inside every platform's `Instant` range).
const NEVER: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// `from + d`, or `None` when that is past the clock's range ("never").
pub(crate) fn checked_after(from: Instant, d: Duration) -> Option<Instant> {
    from.checked_add(d)
}

/// `now + d`, or `None` when that is past the clock's range ("never").
pub(crate) fn after(d: Duration) -> Option<Instant> {
    checked_after(Instant::now(), d)
}

/// The time as one entry transition sees it. The machine never reads a clock itself: its
/// host passes the clock in (the tokio engine passes tokio's, so the paused clock drives
/// tests exactly; another host, such as an asyncio driver, passes its loop's). The clock
/// is read on first use only, and the same instant serves the rest of the transition, so
/// every deadline one transition computes starts from one moment, and a transition that
/// needs no time reads no clock.
pub(crate) struct Now<'c> {
    clock: &'c dyn Fn() -> Instant,
    at: std::cell::Cell<Option<Instant>>,
}

impl<'c> Now<'c> {
    /// The time from `clock`, read when first asked for.
    pub(crate) fn new(clock: &'c dyn Fn() -> Instant) -> Self {
        Now {
            clock,
            at: std::cell::Cell::new(None),
        }
    }

    /// The transition's instant.
    #[inline]
    pub(crate) fn get(&self) -> Instant {
        match self.at.get() {
            Some(at) => at,
            None => {
                let at = (self.clock)();
                self.at.set(Some(at));
                at
            }
        }
    }
}

/// `from + d`, saturated to a far-future instant when it would overflow (for APIs that
/// need an `Instant`, such as `sleep_until`).
pub(crate) fn saturating_after(from: Instant, d: Duration) -> Instant {
    from.checked_add(d.min(NEVER))
        .or_else(|| from.checked_add(NEVER))
        .unwrap_or(from)
}

/// How long ago a wall-clock stamp was (zero for a stamp in the future: clocks differ).
pub(crate) fn age_of(at: SystemTime) -> Duration {
    SystemTime::now()
        .duration_since(at)
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn duration_max_is_never_and_never_panics() {
        let now = Instant::now();
        assert_eq!(checked_after(now, Duration::MAX), None);
        assert!(saturating_after(now, Duration::MAX) > now + Duration::from_secs(3600 * 24 * 365));
        assert_eq!(
            saturating_after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(
            after(Duration::from_secs(2)),
            Some(now + Duration::from_secs(2))
        );
    }
}
