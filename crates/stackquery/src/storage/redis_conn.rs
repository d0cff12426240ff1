//! The Redis connection plumbing shared by `RedisStorage`, the bus (`RedisBus`) and the
//! leases (`RedisLeases`): opening a reconnecting connection, bounding
//! a call by its deadline, sending a repeatable request once more on a fresh connection,
//! mapping redis errors, and the default settings.
//!
//! Private and below all three, so that none of them imports another for its plumbing.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::StorageError;

/// The default deadline of one call (one round trip to the server).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// The default deadline of the first connection.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default namespace: keys are `stackquery:cache:<key>`.
pub(crate) const DEFAULT_NAMESPACE: &str = "stackquery";
/// Redis refuses an expiry that overflows its clock (`now + PX` past `i64::MAX` ms): longer
/// ttls are clamped to this many milliseconds (about 73 million years).
const MAX_TTL_MS: u64 = 1 << 61;

/// Opens a reconnecting connection to `url`, failing fast.
///
/// The manager makes a single attempt per reconnection (no retry schedule of its own): a
/// failed reconnection fails the calls waiting for it, and the next call starts another, so
/// the connection comes back at the first call after the server does.
pub(crate) async fn connection_manager(
    url: &str,
    connect_timeout: Duration,
) -> Result<ConnectionManager, StorageError> {
    let client = redis::Client::open(url).map_err(backend)?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_max_delay(100)
        .set_connection_timeout(connect_timeout);
    bounded(connect_timeout, async {
        ConnectionManager::new_with_config(client, config)
            .await
            .map_err(backend)
    })
    .await
}

/// Runs `attempt` — a request that is safe to repeat — within `limit`, once more when
/// the first try finds the connection gone.
///
/// That is typically the first call after an outage, on the connection from before it:
/// the failure makes the manager reconnect, and the second try goes out on the new
/// connection within the same deadline, so an instance that was idle during the outage
/// sees no spurious failure.
pub(crate) async fn with_retry<R, F, Fut>(
    limit: Duration,
    mut attempt: F,
) -> Result<R, StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<R>>,
{
    bounded(limit, async {
        match attempt().await {
            Err(err) if connection_lost(&err) => attempt().await.map_err(backend),
            other => other.map_err(backend),
        }
    })
    .await
}

/// Bounds `call` by `limit`.
pub(crate) async fn bounded<R>(
    limit: Duration,
    call: impl Future<Output = Result<R, StorageError>>,
) -> Result<R, StorageError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_elapsed) => Err(StorageError::Timeout(limit)),
    }
}

/// Whether `err` says the connection is gone (dropped, refused, reset…), as opposed to an
/// error reply from a live server.
fn connection_lost(err: &redis::RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal()
}

/// A redis error as a storage error.
pub(crate) fn backend(err: redis::RedisError) -> StorageError {
    StorageError::backend(err)
}

/// The `PX` argument for `ttl`: whole milliseconds rounded up (a 1 µs ttl is 1 ms), clamped
/// to what Redis accepts. `None` for a zero ttl (already expired).
pub(crate) fn ttl_millis(ttl: Duration) -> Option<u64> {
    if ttl.is_zero() {
        return None;
    }
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    Some(u64::try_from(ms).unwrap_or(u64::MAX).min(MAX_TTL_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_rounded_up_to_the_millisecond_and_clamped() {
        assert_eq!(ttl_millis(Duration::ZERO), None);
        assert_eq!(ttl_millis(Duration::from_nanos(1)), Some(1));
        assert_eq!(ttl_millis(Duration::from_millis(500)), Some(500));
        assert_eq!(ttl_millis(Duration::from_micros(1500)), Some(2));
        assert_eq!(ttl_millis(Duration::MAX), Some(MAX_TTL_MS));
    }
}
