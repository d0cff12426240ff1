//! [`RedisLeases`]: cluster-wide leases for deduplicating a fetch across instances.
//!
//! Beside the cluster code that uses them (`engine/cluster.rs`), public as
//! `stackquery::bus::RedisLeases`. Built on a [`RedisStorage`]'s connection and namespace,
//! through the shared plumbing in `redis_conn`: the storage layer knows nothing of leases.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use crate::storage::redis_conn::{ttl_millis, with_retry};
use crate::storage::RedisStorage;
use crate::StorageError;

/// Deletes the lease only if it still holds the caller's token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Extends the lease only if it still holds the caller's token.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Cluster-wide leases on a Redis server (feature `redis`): at most one holder per key at a
/// time, across every instance sharing the namespace.
///
/// A lease is `SET <namespace>:lease:<key> <random token> NX PX <ttl>`: the first caller
/// gets a [`LeaseToken`], the others get `None` until it is
/// [released](Self::release) or its ttl runs out — so a holder that dies (crash, aborted
/// task, lost connection) blocks the others for at most the ttl. Releasing and renewing go
/// through a Lua script that compares the token first, so a holder whose lease already
/// expired (and was taken by someone else) cannot remove or extend the new holder's.
///
/// A holder whose work may outlast the ttl keeps the lease with
/// [`hold_while`](Self::hold_while), which [renews](Self::renew) it every third of the ttl
/// while the work runs: the ttl then only bounds how long a *dead* holder blocks the
/// others, not how long a live one may work.
///
/// # Held elsewhere or unreachable
///
/// [`try_acquire`](Self::try_acquire) tells the two apart: `Ok(None)` means the server
/// answered and someone else holds the lease (wait for their result); `Err(_)` means the
/// server could not be asked (nobody can tell who holds it: fetch without the lease rather
/// than wait).
///
/// Every call is bounded by the store's timeout. Made from a [`RedisStorage`], whose
/// connection and namespace it shares; cloning is cheap.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use stackquery::bus::RedisLeases;
/// use stackquery::storage::RedisStorage;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stackquery::StorageError> {
/// let store = RedisStorage::builder("redis://127.0.0.1:6379").namespace("myapp").connect().await?;
/// let leases = RedisLeases::new(&store);
/// let key = r#"["report",2024]"#;
/// if let Some(token) = leases.try_acquire(key, Duration::from_secs(10)).await? {
///     // … fetch, write the shared tier, publish on the bus …
///     leases.release(&token).await?;
/// } else {
///     // someone else is fetching: wait for the bus, then read the shared tier
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLeases {
    conn: ConnectionManager,
    key_prefix: String,
    timeout: Duration,
    scripts: Arc<Scripts>,
}

struct Scripts {
    release: Script,
    renew: Script,
}

/// Proof of holding a lease, from [`RedisLeases::try_acquire`]: the key and a random token.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseToken {
    key: String,
    redis_key: String,
    token: String,
}

impl LeaseToken {
    /// The key the lease is on, as given to `try_acquire`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The random token stored in the lease.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseToken")
            .field("key", &self.key)
            .field("token", &self.token)
            .finish()
    }
}

impl RedisStorage {
    /// Cluster-wide leases on this store's server and namespace (same as
    /// [`RedisLeases::new`]).
    pub fn leases(&self) -> RedisLeases {
        RedisLeases::new(self)
    }
}

impl RedisLeases {
    /// Leases on the server and namespace of `storage`, bounded by its timeout.
    pub fn new(storage: &RedisStorage) -> Self {
        RedisLeases {
            conn: storage.connection(),
            key_prefix: format!("{}:lease:", storage.namespace()),
            timeout: storage.timeout(),
            scripts: Arc::new(Scripts {
                release: Script::new(RELEASE),
                renew: Script::new(RENEW),
            }),
        }
    }

    fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    /// Takes the lease on `key` for `ttl` if nobody holds it (a zero ttl counts as 1 ms).
    ///
    /// Three outcomes, which the caller must not confuse:
    ///
    /// * `Ok(Some(token))`: this caller holds the lease now;
    /// * `Ok(None)`: the server answered, and **someone else holds the lease** — their
    ///   result is on its way, waiting for it is right;
    /// * `Err(_)`: see below — the server did not answer, which says nothing about who
    ///   holds the lease.
    ///
    /// # Errors
    ///
    /// [`StorageError::Timeout`] or [`StorageError::Backend`] when the server cannot be
    /// reached; then nobody can tell who holds the lease, and the caller should fetch on
    /// its own at once (waiting for a holder that may not exist only adds latency).
    pub async fn try_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseToken>, StorageError> {
        let token = LeaseToken {
            key: key.to_owned(),
            redis_key: self.redis_key(key),
            token: format!("{:032x}", crate::random::u128()),
        };
        let set = redis::cmd("SET")
            .arg(&token.redis_key)
            .arg(&token.token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_millis(ttl).unwrap_or(1))
            .clone();
        let get = redis::cmd("GET").arg(&token.redis_key).clone();
        let conn = &self.conn;
        let mut tries = 0_u32;
        let held: bool = with_retry(self.timeout, || {
            tries += 1;
            let (mut conn, set, get, token) = (conn.clone(), &set, &get, &token.token);
            let retry = tries > 1;
            async move {
                // `OK` when set, nil when the key exists.
                let done: Option<String> = set.query_async(&mut conn).await?;
                if done.is_some() || !retry {
                    return Ok(done.is_some());
                }
                // A repeat after a lost connection: the first SET may have gone through
                // before the reply was lost, in which case the lease holds our token.
                let value: Option<String> = get.query_async(&mut conn).await?;
                Ok(value.as_deref() == Some(token.as_str()))
            }
        })
        .await?;
        Ok(held.then_some(token))
    }

    /// Gives the lease back; `Ok(false)` when it was no longer held by `token` (it expired,
    /// and maybe someone else holds it now — which is left alone). Releasing twice is
    /// harmless.
    ///
    /// # Errors
    ///
    /// [`StorageError::Timeout`] or [`StorageError::Backend`]: the lease then ends by
    /// itself when its ttl runs out.
    pub async fn release(&self, token: &LeaseToken) -> Result<bool, StorageError> {
        let mut call = self.scripts.release.key(&token.redis_key);
        call.arg(&token.token);
        let call = &call;
        let deleted: i64 = with_retry(self.timeout, || {
            let mut conn = self.conn.clone();
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        Ok(deleted == 1)
    }

    /// Extends the lease to `ttl` from now, for a fetch that takes longer than planned;
    /// `Ok(false)` when it was no longer held by `token`.
    ///
    /// # Errors
    ///
    /// [`StorageError::Timeout`] or [`StorageError::Backend`].
    pub async fn renew(&self, token: &LeaseToken, ttl: Duration) -> Result<bool, StorageError> {
        let mut call = self.scripts.renew.key(&token.redis_key);
        call.arg(&token.token).arg(ttl_millis(ttl).unwrap_or(1));
        let call = &call;
        let renewed: i64 = with_retry(self.timeout, || {
            let mut conn = self.conn.clone();
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        Ok(renewed == 1)
    }

    /// Runs `work` while keeping the lease of `token` alive: every third of `ttl` (at
    /// least every millisecond) the lease is [renewed](Self::renew) to `ttl` from then, so
    /// a holder whose work takes longer than `ttl` keeps it, and nobody else takes it over
    /// and runs the same work meanwhile. Renewing stops as soon as `work` ends — the lease
    /// is not released here: call [`release`](Self::release) after (or let it expire,
    /// `ttl` after the last renewal).
    ///
    /// `ttl` saturates: `Duration::MAX` or anything past the clock's range never panics
    /// (renewals are then as good as never needed). A renewal that fails (server
    /// unreachable) is retried at the next tick, while the lease may still be alive; a
    /// renewal that finds the lease held by another token (it expired in between) stops
    /// renewing, and `work` runs on regardless — its result is still worth having.
    pub async fn hold_while<F: Future>(
        &self,
        token: &LeaseToken,
        ttl: Duration,
        work: F,
    ) -> F::Output {
        let work = std::pin::pin!(work);
        let renewals = std::pin::pin!(self.keep_alive(token, ttl));
        match futures::future::select(work, renewals).await {
            futures::future::Either::Left((output, _renewals)) => output,
            // The lease was lost: finish the work without it.
            futures::future::Either::Right(((), work)) => work.await,
        }
    }

    /// Renews the lease every third of `ttl`, on a fixed schedule (a slow renewal does
    /// not push the next one back), until a renewal finds it held by another token.
    async fn keep_alive(&self, token: &LeaseToken, ttl: Duration) {
        let period = (ttl / 3).max(Duration::from_millis(1));
        let mut next = crate::deadline::saturating_after(tokio::time::Instant::now(), period);
        loop {
            tokio::time::sleep_until(next).await;
            match self.renew(token, ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        key = token.key(),
                        "lease lost before the work ended: no longer renewed"
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(key = token.key(), error = %crate::error::report(&error), "lease renewal failed (retried at the next tick)");
                }
            }
            // After a stall longer than a period (a slow renewal, a busy runtime) the next
            // renewal goes out at once, but only one: no burst of catch-up renewals.
            next = crate::deadline::saturating_after(next, period).max(tokio::time::Instant::now());
        }
    }

    /// Whether anyone holds the lease on `key` now.
    ///
    /// # Errors
    ///
    /// [`StorageError::Timeout`] or [`StorageError::Backend`].
    pub async fn is_held(&self, key: &str) -> Result<bool, StorageError> {
        let cmd = redis::cmd("EXISTS").arg(self.redis_key(key)).clone();
        let cmd = &cmd;
        let n: u64 = with_retry(self.timeout, || {
            let mut conn = self.conn.clone();
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        Ok(n > 0)
    }
}

impl fmt::Debug for RedisLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLeases")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
