//! [`RedisStorage`]: the second tier on a Redis server, shared by many instances.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{async_trait, Storage, StorageError};

/// The default deadline of one call (one round trip to the server).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// The default deadline of a whole [`Storage::delete_prefix`] (many round trips).
const DEFAULT_DELETE_PREFIX_TIMEOUT: Duration = Duration::from_secs(5);
/// The default deadline of the first connection.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default namespace: keys are `stackquery:cache:<key>`.
pub(crate) const DEFAULT_NAMESPACE: &str = "stackquery";
/// The `COUNT` hint of each `SCAN` of a `delete_prefix`.
const DEFAULT_SCAN_COUNT: u32 = 500;
/// Redis refuses an expiry that overflows its clock (`now + PX` past `i64::MAX` ms): longer
/// ttls are clamped to this many milliseconds (about 73 million years).
const MAX_TTL_MS: u64 = 1 << 61;

/// A [`Storage`] on a Redis server (feature `redis`): many instances of a service share one
/// second tier.
///
/// Keys live under a namespace, as `<namespace>:cache:<key>` (`stackquery:cache:["user",1]`
/// by default), so several applications can share a server and
/// [`delete_prefix`](Storage::delete_prefix) never touches another namespace. A ttl becomes
/// a `PX` expiry (milliseconds). `delete_prefix` walks the namespace with `SCAN MATCH` (the
/// prefix's glob characters escaped, so it is matched as plain text) and removes what it
/// finds with pipelined `UNLINK`s.
///
/// # Failures
///
/// Every call is bounded: a call that has not finished within
/// [`timeout`](RedisStorageBuilder::timeout) (500 ms by default) returns
/// [`StorageError::Timeout`]; a refused or dropped connection returns
/// [`StorageError::Backend`]. Nothing panics, and nothing waits for the server to come back.
///
/// The connection is redis' reconnecting `ConnectionManager`, making one connection
/// attempt per failed call rather than a retry schedule of its own: while the server is
/// down calls fail fast, and the store works again by itself as soon as it is back. A
/// `get`, `set` or `delete` that finds its connection dead (the first call after an
/// outage) is sent once more on a fresh connection within the same deadline, so an
/// instance that was idle during the outage sees no failure. A call that timed out may
/// still have been carried out by the server ("unknown", not "not written").
///
/// Cloning is cheap: clones share one multiplexed connection.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use stackquery::storage::{RedisStorage, Storage};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stackquery::StorageError> {
/// let store = RedisStorage::builder("redis://127.0.0.1:6379")
///     .namespace("myapp")
///     .timeout(Duration::from_millis(250))
///     .connect()
///     .await?;
/// store.set(r#"["user",1]"#, b"Ada".to_vec(), Some(Duration::from_secs(60))).await?;
/// assert_eq!(store.get(r#"["user",1]"#).await?, Some(b"Ada".to_vec()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStorage {
    conn: ConnectionManager,
    namespace: String,
    /// `<namespace>:cache:`, put in front of every key.
    key_prefix: String,
    timeout: Duration,
    delete_prefix_timeout: Duration,
    scan_count: u32,
}

/// Settings of a [`RedisStorage`], made by [`RedisStorage::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisStorageBuilder {
    url: String,
    namespace: String,
    timeout: Duration,
    connect_timeout: Duration,
    delete_prefix_timeout: Duration,
    scan_count: u32,
}

impl RedisStorage {
    /// Settings for a store on the server at `url` (`redis://[user:password@]host[:port][/db]`,
    /// or `rediss://` where the redis crate was built with TLS).
    pub fn builder(url: impl Into<String>) -> RedisStorageBuilder {
        RedisStorageBuilder {
            url: url.into(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            delete_prefix_timeout: DEFAULT_DELETE_PREFIX_TIMEOUT,
            scan_count: DEFAULT_SCAN_COUNT,
        }
    }

    /// Connects to the server at `url` with the default settings (namespace `stackquery`,
    /// 500 ms per call).
    ///
    /// # Errors
    ///
    /// As [`RedisStorageBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, StorageError> {
        Self::builder(url).connect().await
    }

    /// The namespace the keys live under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The Redis key that holds the entry stored under `key`: `<namespace>:cache:<key>`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), stackquery::StorageError> {
    /// let store = stackquery::storage::RedisStorage::builder("redis://127.0.0.1")
    ///     .namespace("myapp")
    ///     .connect()
    ///     .await?;
    /// assert_eq!(store.redis_key(r#"["user",1]"#), r#"myapp:cache:["user",1]"#);
    /// # Ok(()) }
    /// ```
    pub fn redis_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.key_prefix.len() + key.len());
        full.push_str(&self.key_prefix);
        full.push_str(key);
        full
    }

    /// Cluster-wide leases on this store's server and namespace (same as
    /// [`RedisLeases::new`](crate::bus::RedisLeases::new)).
    pub fn leases(&self) -> crate::bus::RedisLeases {
        crate::bus::RedisLeases::new(self)
    }

    /// The shared connection (for the lease helper, which lives beside the store).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn delete_prefix_inner(&self, prefix: &str) -> Result<u64, StorageError> {
        let pattern = format!("{}*", escape_glob(&self.redis_key(prefix)));
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let mut removed: u64 = 0;
        loop {
            // One round trip: remove what the last SCAN found, and SCAN on.
            let mut pipe = redis::pipe();
            if !pending.is_empty() {
                pipe.cmd("UNLINK").arg(&pending);
            }
            pipe.cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(self.scan_count);
            let (unlinked, (next, keys)) = if pending.is_empty() {
                // A SCAN alone is safe to repeat (e.g. on the first call after an outage).
                let pipe = &pipe;
                let ((next, keys),): ((u64, Vec<Vec<u8>>),) = with_retry(self.timeout, || {
                    let mut conn = self.conn.clone();
                    async move { pipe.query_async(&mut conn).await }
                })
                .await?;
                (0, (next, keys))
            } else {
                // Not repeated: a repeated UNLINK would count 0 for keys the lost reply
                // had removed.
                let (n, (next, keys)): (u64, (u64, Vec<Vec<u8>>)) =
                    self.round_trip(pipe.query_async(&mut conn)).await?;
                (n, (next, keys))
            };
            removed += unlinked;
            pending = keys;
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if !pending.is_empty() {
            let n: u64 = self
                .round_trip(redis::cmd("UNLINK").arg(&pending).query_async(&mut conn))
                .await?;
            removed += n;
        }
        Ok(removed)
    }

    /// One request of a longer call: bounded by the per-call deadline.
    async fn round_trip<R>(
        &self,
        call: impl Future<Output = redis::RedisResult<R>>,
    ) -> Result<R, StorageError> {
        bounded(self.timeout, async { call.await.map_err(backend) }).await
    }

    /// Sends a command that is safe to repeat (GET, SET, UNLINK), bounded by the per-call
    /// deadline; see [`with_retry`].
    async fn send<R: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<R, StorageError> {
        with_retry(self.timeout, || {
            let mut conn = self.conn.clone();
            async move { cmd.query_async(&mut conn).await }
        })
        .await
    }
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("delete_prefix_timeout", &self.delete_prefix_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStorageBuilder {
    /// The namespace the keys live under (default `stackquery`): keys are
    /// `<namespace>:cache:<key>`. Instances that share a cache use the same namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The deadline of each call, or of each round trip of a `delete_prefix` (default
    /// 500 ms). A zero deadline is raised to one millisecond.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The deadline of the first connection in [`connect`](Self::connect), and of each
    /// reconnection attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The deadline of a whole [`delete_prefix`](Storage::delete_prefix), which takes one
    /// round trip per `SCAN` batch (default 5 s).
    pub fn delete_prefix_timeout(mut self, timeout: Duration) -> Self {
        self.delete_prefix_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The `COUNT` hint of each `SCAN` in a `delete_prefix` (default 500; at least 1).
    pub fn scan_count(mut self, count: u32) -> Self {
        self.scan_count = count.max(1);
        self
    }

    /// Connects to the server.
    ///
    /// # Errors
    ///
    /// [`StorageError::Backend`] for a malformed url or a server that refuses the
    /// connection (or the `AUTH`/`SELECT` in the url); [`StorageError::Timeout`] when the
    /// connection is not made within the [connect timeout](Self::connect_timeout).
    pub async fn connect(self) -> Result<RedisStorage, StorageError> {
        let conn = connection_manager(&self.url, self.connect_timeout).await?;
        let key_prefix = format!("{}:cache:", self.namespace);
        Ok(RedisStorage {
            conn,
            namespace: self.namespace,
            key_prefix,
            timeout: self.timeout,
            delete_prefix_timeout: self.delete_prefix_timeout,
            scan_count: self.scan_count,
        })
    }
}

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
pub(crate) fn connection_lost(err: &redis::RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal()
}

/// A redis error as a storage error.
pub(crate) fn backend(err: redis::RedisError) -> StorageError {
    StorageError::backend(err)
}

/// `text` as a Redis glob pattern that matches exactly `text`: `*`, `?`, `[`, `]` and `\`
/// are escaped with a backslash.
pub(crate) fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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

#[async_trait]
impl Storage for RedisStorage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.send(redis::cmd("GET").arg(self.redis_key(key))).await
    }

    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let full = self.redis_key(key);
        let cmd = match ttl {
            // An entry that is already expired: what was there is replaced by nothing.
            Some(ttl) if ttl.is_zero() => {
                let mut cmd = redis::cmd("UNLINK");
                cmd.arg(full);
                cmd
            }
            _ => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(full).arg(value);
                if let Some(ms) = ttl.and_then(ttl_millis) {
                    cmd.arg("PX").arg(ms);
                }
                cmd
            }
        };
        self.send(&cmd).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.send(redis::cmd("UNLINK").arg(self.redis_key(key)))
            .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        bounded(self.delete_prefix_timeout, self.delete_prefix_inner(prefix)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob(r#"ns:cache:["user","#), r#"ns:cache:\["user","#);
        assert_eq!(escape_glob(r"a*b?c]d\e"), r"a\*b\?c\]d\\e");
        assert_eq!(escape_glob("é%_"), "é%_");
    }

    #[test]
    fn ttl_is_rounded_up_to_the_millisecond_and_clamped() {
        assert_eq!(ttl_millis(Duration::ZERO), None);
        assert_eq!(ttl_millis(Duration::from_nanos(1)), Some(1));
        assert_eq!(ttl_millis(Duration::from_millis(500)), Some(500));
        assert_eq!(ttl_millis(Duration::from_micros(1500)), Some(2));
        assert_eq!(ttl_millis(Duration::MAX), Some(MAX_TTL_MS));
    }
}
