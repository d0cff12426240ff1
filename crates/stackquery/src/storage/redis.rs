//! [`RedisStorage`]: the second tier on a Redis server, shared by many instances.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::Script;

use super::{async_trait, Storage, StorageError};
use crate::storage::redis_conn::{
    backend, bounded, connection_manager, ttl_millis, with_retry, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_NAMESPACE, DEFAULT_TIMEOUT,
};

/// How many index members one round trip of a `delete_prefix` handles.
const DEFAULT_BATCH_SIZE: u32 = 500;
/// Every this many `set`s on a store (and its clones), one sweep step runs in the
/// background…
const SWEEP_EVERY: u32 = 16;
/// …and looks at this many index members: two per `set` on average, so the sweep outpaces
/// the index's growth and a member whose key expired is pruned within a few passes.
const SWEEP_BATCH: u32 = 32;

/// One step of the index sweep: looks at up to `ARGV[3]` members after `ARGV[2]` (a
/// `ZRANGEBYLEX` bound) and removes those whose key (`ARGV[1]` .. member) is gone (expired).
/// Atomic, so a key written meanwhile keeps its member. Returns `{pruned, last member}`,
/// with an empty last member once the end of the index was reached.
const SWEEP: &str = r"
local count = tonumber(ARGV[3])
local members = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], '+', 'LIMIT', 0, count)
local pruned = 0
for _, member in ipairs(members) do
    if redis.call('EXISTS', ARGV[1] .. member) == 0 then
        redis.call('ZREM', KEYS[1], member)
        pruned = pruned + 1
    end
end
if #members < count then
    return {pruned, ''}
end
return {pruned, members[#members]}
";

/// A [`Storage`] on a Redis server (feature `redis`): many instances of a service share one
/// second tier.
///
/// Keys live under a namespace, as `<namespace>:cache:<key>` (`stackquery:cache:["user",1]`
/// by default), so several applications can share a server and
/// [`delete_prefix`](Storage::delete_prefix) never touches another namespace. A ttl becomes
/// a `PX` expiry (milliseconds).
///
/// # The key index
///
/// Beside the entries, each namespace keeps an index: the sorted set `<namespace>:idx`,
/// whose members are the stored keys (without the namespace), all with score 0 so that
/// they sort byte-wise. `delete_prefix` reads the matching members with `ZRANGEBYLEX`
/// and removes them and their entries in batches, so its cost grows with the number of
/// matching entries (`O(log n + m)`), never with the size of the database: walking the
/// database with `SCAN` cost time in proportion to every key on the server, and on a
/// server shared with a big application a prefix delete ran out of time half done.
///
/// The index is kept exact for live entries: each `set` writes the entry and its member in
/// one `MULTI`/`EXEC`, each `delete` removes both in one, and so does each batch of a
/// prefix delete — at no moment is a live entry missing from the index, whatever other
/// instances do at the same time. Entries that expire by their ttl leave a stale member
/// behind, which is harmless (a prefix delete counts only entries it actually removed) and
/// pruned: by the prefix delete that meets it, and by a sweep that runs in the background
/// every few `set`s (a Lua script that removes, atomically, the members whose entry is
/// gone), so the index stays about as large as the live entries.
/// [`prune_index`](RedisStorage::prune_index) runs a whole pass on demand.
///
/// Entries written without a member (by hand, or by a build of this crate from before the
/// index, which was never released) are invisible to `delete_prefix`; they still expire
/// by their ttl.
///
/// # Failures
///
/// Every round trip is bounded: one that has not finished within
/// [`timeout`](RedisStorageBuilder::timeout) (500 ms by default) returns
/// [`StorageError::Timeout`]. A `delete_prefix` takes one round trip per batch of matching
/// entries, each bounded so; the deadline of the whole prefix delete belongs to the
/// [`TimeoutStorage`](super::TimeoutStorage) around the store (the client's
/// [`storage_delete_prefix_timeout`](crate::QueryClientBuilder::storage_delete_prefix_timeout),
/// 5 s by default), so there is one place that sets it; a refused or dropped connection returns
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
    /// `<namespace>:idx`: the sorted set of the stored keys.
    index_key: String,
    timeout: Duration,
    batch_size: u32,
    sweep: Arc<Sweep>,
}

/// The background sweep of index members whose entries expired, shared by clones.
struct Sweep {
    /// `set`s since the store was made: every [`SWEEP_EVERY`]th starts a sweep step.
    sets: AtomicU32,
    /// The last member the previous step looked at (empty: start at the beginning).
    cursor: Mutex<Vec<u8>>,
    script: Script,
}

/// Settings of a [`RedisStorage`], made by [`RedisStorage::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisStorageBuilder {
    url: String,
    namespace: String,
    timeout: Duration,
    connect_timeout: Duration,
    batch_size: u32,
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
            batch_size: DEFAULT_BATCH_SIZE,
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

    /// Connects to the server at `url` under `namespace`, with the default settings
    /// otherwise: the same arguments as [`RedisBus::connect_namespaced`](crate::RedisBus::connect_namespaced),
    /// so a store and a bus that work together are made alike.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::StorageError> {
    /// let url = "redis://127.0.0.1:6379";
    /// let store = stackquery::RedisStorage::connect_namespaced(url, "myapp").await?;
    /// let bus = stackquery::RedisBus::connect_namespaced(url, "myapp").await?;
    /// assert_eq!(store.namespace(), "myapp");
    /// assert_eq!(bus.channel(), "myapp:bus");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RedisStorageBuilder::connect`].
    pub async fn connect_namespaced(
        url: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Result<Self, StorageError> {
        Self::builder(url).namespace(namespace).connect().await
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

    /// The shared connection (for the lease helper, which lives beside the store).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The Redis key of the index of this store's namespace: `<namespace>:idx`, a sorted
    /// set of the stored keys (see [the key index](RedisStorage#the-key-index)).
    pub fn index_key(&self) -> &str {
        &self.index_key
    }

    /// Runs one whole pass of the index sweep now: removes the index members whose entry
    /// is gone (expired), and returns how many. The same sweep runs by itself, a little
    /// at a time, in the background of `set`s; this is for tests and maintenance.
    ///
    /// # Errors
    ///
    /// [`StorageError::Timeout`] or [`StorageError::Backend`] from a round trip.
    pub async fn prune_index(&self) -> Result<u64, StorageError> {
        let mut after = Vec::new();
        let mut pruned = 0;
        loop {
            let (n, last) = self.sweep_step(&after, DEFAULT_BATCH_SIZE).await?;
            pruned += n;
            if last.is_empty() {
                return Ok(pruned);
            }
            after = last;
        }
    }

    /// `<namespace>:cache:<member>` for an index member (bytes: a member is whatever was
    /// stored, read back from the server).
    fn entry_key(&self, member: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.key_prefix.len() + member.len());
        full.extend_from_slice(self.key_prefix.as_bytes());
        full.extend_from_slice(member);
        full
    }

    /// Removes the matching entries batch by batch: each round trip removes the members
    /// read by the previous one, with their entries, in one `MULTI`/`EXEC`, and reads the
    /// next batch after the last of them (so entries written meanwhile cannot keep it
    /// going forever). A member whose entry already expired is removed too, uncounted.
    async fn delete_prefix_inner(&self, prefix: &str) -> Result<u64, StorageError> {
        let (min, max) = member_range(prefix);
        let batch = self.batch_size;
        let read = |from: &[u8]| {
            redis::cmd("ZRANGEBYLEX")
                .arg(&self.index_key)
                .arg(from)
                .arg(&max)
                .arg("LIMIT")
                .arg(0)
                .arg(batch)
                .clone()
        };
        // The first read alone is safe to repeat (e.g. on the first call after an outage).
        let mut pending: Vec<Vec<u8>> = self.send(&read(&min)).await?;
        let mut removed: u64 = 0;
        while !pending.is_empty() {
            let more = pending.len() >= batch as usize;
            let entries: Vec<Vec<u8>> = pending.iter().map(|m| self.entry_key(m)).collect();
            // A plain pipeline, not MULTI: at maxmemory Redis refuses every command queued
            // in a transaction, but still runs a plain UNLINK / ZREM — and a delete is what
            // must get through then. Entry first: an index member left without its entry
            // is harmless (never counted), the reverse would hide the entry.
            let mut pipe = redis::pipe();
            pipe.cmd("UNLINK")
                .arg(&entries)
                .cmd("ZREM")
                .arg(&self.index_key)
                .arg(&pending)
                .ignore();
            let mut conn = self.conn.clone();
            // Not repeated: a repeated UNLINK would count 0 for entries the lost reply had
            // removed.
            if more {
                let mut after = Vec::with_capacity(1 + pending.last().map_or(0, Vec::len));
                after.push(b'(');
                after.extend_from_slice(pending.last().map_or(&[][..], Vec::as_slice));
                pipe.add_command(read(&after));
                let (n, next): (u64, Vec<Vec<u8>>) =
                    self.round_trip(pipe.query_async(&mut conn)).await?;
                removed += n;
                pending = next;
            } else {
                let (n,): (u64,) = self.round_trip(pipe.query_async(&mut conn)).await?;
                removed += n;
                pending = Vec::new();
            }
        }
        Ok(removed)
    }

    /// One step of the index sweep over up to `count` members after `after` (from the
    /// beginning when empty): `(pruned, last member looked at)`, the last empty at the end.
    async fn sweep_step(&self, after: &[u8], count: u32) -> Result<(u64, Vec<u8>), StorageError> {
        let from = if after.is_empty() {
            b"-".to_vec()
        } else {
            let mut from = Vec::with_capacity(after.len() + 1);
            from.push(b'(');
            from.extend_from_slice(after);
            from
        };
        let mut call = self.sweep.script.key(&self.index_key);
        call.arg(&self.key_prefix).arg(from).arg(count);
        let call = &call;
        with_retry(self.timeout, || {
            let mut conn = self.conn.clone();
            async move { call.invoke_async(&mut conn).await }
        })
        .await
    }

    /// Counts a `set`, and every [`SWEEP_EVERY`]th time starts a sweep step in the
    /// background (on the current tokio runtime, off the caller's path and deadline).
    fn count_set(&self) {
        let n = self.sweep.sets.fetch_add(1, Ordering::Relaxed);
        if n % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            let after = store.sweep.cursor.lock().clone();
            match store.sweep_step(&after, SWEEP_BATCH).await {
                Ok((pruned, last)) => {
                    if pruned > 0 {
                        tracing::debug!(
                            pruned,
                            "Redis storage pruned index members of expired entries"
                        );
                    }
                    *store.sweep.cursor.lock() = last;
                }
                // The next step tries again from the same place.
                Err(error) => tracing::debug!(error = %crate::error::report(&error), "Redis storage index sweep failed"),
            }
        });
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

    /// Sends a pipeline (a `MULTI`/`EXEC` transaction) that is safe to repeat, like
    /// [`send`](Self::send).
    async fn send_pipe(&self, pipe: &redis::Pipeline) -> Result<(), StorageError> {
        with_retry(self.timeout, || {
            let mut conn = self.conn.clone();
            async move { pipe.query_async(&mut conn).await }
        })
        .await
    }
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("batch_size", &self.batch_size)
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
    /// 500 ms). A zero deadline is raised to one millisecond. The whole `delete_prefix` is
    /// bounded by the [`TimeoutStorage`](super::TimeoutStorage) around the store.
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

    /// How many entries one round trip of a [`delete_prefix`](Storage::delete_prefix)
    /// removes (default 500; at least 1).
    pub fn batch_size(mut self, size: u32) -> Self {
        self.batch_size = size.max(1);
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
        let index_key = format!("{}:idx", self.namespace);
        Ok(RedisStorage {
            conn,
            namespace: self.namespace,
            key_prefix,
            index_key,
            timeout: self.timeout,
            batch_size: self.batch_size,
            sweep: Arc::new(Sweep {
                sets: AtomicU32::new(0),
                cursor: Mutex::new(Vec::new()),
                script: Script::new(SWEEP),
            }),
        })
    }
}

/// The `ZRANGEBYLEX` bounds of the index members that start with `prefix`: from
/// `[prefix` (inclusive) to `(prefix\xff` (exclusive) — no UTF-8 text contains the byte
/// `0xff`, so every key with the prefix sorts below it. All of the index for `""`.
fn member_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (b"-".to_vec(), b"+".to_vec());
    }
    let mut min = Vec::with_capacity(prefix.len() + 1);
    min.push(b'[');
    min.extend_from_slice(prefix.as_bytes());
    let mut max = Vec::with_capacity(prefix.len() + 2);
    max.push(b'(');
    max.extend_from_slice(prefix.as_bytes());
    max.push(0xff);
    (min, max)
}

#[async_trait]
impl Storage for RedisStorage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.send(redis::cmd("GET").arg(self.redis_key(key))).await
    }

    /// Writes the entry and its index member in one transaction.
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let full = self.redis_key(key);
        let mut pipe = redis::pipe();
        pipe.atomic();
        match ttl {
            // An entry that is already expired: what was there is replaced by nothing.
            Some(ttl) if ttl.is_zero() => {
                pipe.cmd("ZREM").arg(&self.index_key).arg(key).ignore();
                pipe.cmd("UNLINK").arg(full).ignore();
            }
            _ => {
                pipe.cmd("SET").arg(full).arg(value);
                if let Some(ms) = ttl.and_then(ttl_millis) {
                    pipe.arg("PX").arg(ms);
                }
                pipe.ignore();
                pipe.cmd("ZADD")
                    .arg(&self.index_key)
                    .arg(0)
                    .arg(key)
                    .ignore();
            }
        }
        self.send_pipe(&pipe).await?;
        self.count_set();
        Ok(())
    }

    /// Removes the entry and its index member in one transaction.
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        // A plain pipeline, not MULTI: at maxmemory Redis refuses every command queued in
        // a transaction, and a delete is exactly what must get through then (it replaces
        // a write that failed). Entry first, then its index member.
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK")
            .arg(self.redis_key(key))
            .ignore()
            .cmd("ZREM")
            .arg(&self.index_key)
            .arg(key)
            .ignore();
        self.send_pipe(&pipe).await
    }

    /// Removes the entries whose key starts with `prefix`, found through the namespace's
    /// index (see [the key index](RedisStorage#the-key-index)): one round trip per batch
    /// of matching entries, each bounded by the per-call timeout. The whole call has no
    /// deadline of its own: the [`TimeoutStorage`](super::TimeoutStorage) around the store
    /// sets it.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        self.delete_prefix_inner(prefix).await
    }

    /// Reads the matching keys from the namespace's index (`ZRANGEBYLEX`, already in
    /// byte order), then their entries in one `MGET`: two round trips, each bounded by the
    /// per-call timeout. Members whose entry has expired are skipped.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let (min, max) = member_range(prefix);
        let members: Vec<Vec<u8>> = self
            .send(
                redis::cmd("ZRANGEBYLEX")
                    .arg(&self.index_key)
                    .arg(min)
                    .arg(max),
            )
            .await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let entries: Vec<Vec<u8>> = members.iter().map(|m| self.entry_key(m)).collect();
        let values: Vec<Option<Vec<u8>>> = self.send(redis::cmd("MGET").arg(entries)).await?;
        Ok(members
            .into_iter()
            .zip(values)
            .filter_map(|(member, value)| Some((String::from_utf8(member).ok()?, value?)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_range_covers_exactly_the_keys_with_the_prefix() {
        let (min, max) = member_range(r#"["user","#);
        assert_eq!(min, br#"[["user","#);
        assert_eq!(max, b"([\"user\",\xff");
        assert_eq!(member_range(""), (b"-".to_vec(), b"+".to_vec()));
        // Byte order (as ZRANGEBYLEX compares) of keys against the exclusive bound.
        let upper = &max[1..];
        for key in [r#"["user",1]"#, "[\"user\",\u{10FFFF}"] {
            assert!(key.as_bytes() < upper, "{key}");
        }
        // The key itself and its siblings are outside.
        for key in [r#"["user"]"#, r#"["users",1]"#] {
            assert!(key.as_bytes() > upper, "{key}");
        }
        assert!(br#"["user""#.as_slice() < &min[1..]);
    }
}
