//! Deadlines from user-given durations. Every user-given `Duration` saturates: adding it to
//! an `Instant` never panics, and `Duration::MAX` (or anything past the clock's range)
//! means "never".

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// How far ahead "never" is put when a caller needs a concrete `Instant` (about 30 years:
/// far past any process's life, and well inside every platform's `Instant` range).
#[allow(dead_code)]
const NEVER: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// `from + d`, or `None` when that is past the clock's range ("never").
pub(crate) fn checked_after(from: Instant, d: Duration) -> Option<Instant> {
    from.checked_add(d)
}

/// `now + d`, or `None` when that is past the clock's range ("never").
pub(crate) fn after(d: Duration) -> Option<Instant> {
    checked_after(Instant::now(), d)
}

// Not used on this branch yet (the observer's poll task is its first user); kept so every
// caller needing a concrete `Instant` saturates the same way.
#[allow(dead_code)]
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
