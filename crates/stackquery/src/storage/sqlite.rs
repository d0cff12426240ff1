//! [`SqliteStorage`]: the embedded second tier, one SQLite file.
//!
//! # Threading model
//!
//! A SQLite connection does one thing at a time, so every call on it is serialized
//! anyway. Each `SqliteStorage` therefore owns **one dedicated OS thread** that owns the
//! connection; async callers hand it closures through a **bounded queue** and await the
//! answer on a oneshot channel. We chose this over `spawn_blocking` + `Arc<Mutex<Connection>>`
//! because:
//!
//! - no async worker thread ever blocks, and neither does tokio's blocking pool: with
//!   `spawn_blocking`, a burst of calls (or a disk that hangs) parks one blocking-pool
//!   thread per call on the mutex, up to hundreds of threads. Here a full queue is an
//!   immediate [`StorageError::Backend`], which the client treats as a miss;
//! - the periodic purge of expired rows runs on the same thread between calls
//!   (`recv_timeout`), so it needs no tokio timer task: [`SqliteStorage::open`] works
//!   outside a runtime, and the purge can never race the calls;
//! - shutdown is implicit and orderly: when the last clone of the handle is dropped, the
//!   queue disconnects, the thread finishes the calls already queued (so queued writes are
//!   not lost), closes the connection (checkpointing the WAL) and exits;
//! - prepared statements stay cached on the one connection.
//!
//! Several processes may open the same file: WAL mode lets readers proceed beside a
//! writer, and a busy timeout makes writers wait for each other instead of failing.
//!
//! # Reads on their own connection
//!
//! A storage on a file has a **second thread with a connection of its own for `get`s**.
//! A write waits (up to the busy timeout) while another process holds the file's write
//! lock; with one thread, every read queued behind that write waited too, so each cold
//! fetch took the whole wait even though WAL lets readers proceed beside a writer. Now
//! reads never queue behind writes. They still see every write that has returned: a write
//! is committed before its caller hears back, and each read starts a fresh snapshot. (An
//! in-memory database is private to one connection, so there reads share the one thread.)

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use super::{async_trait, Storage, StorageError};

const TABLE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS stackquery_cache (
        key        TEXT PRIMARY KEY NOT NULL,
        value      BLOB NOT NULL,
        expires_at INTEGER  -- ms since the UNIX epoch; NULL: never expires
    );
    CREATE INDEX IF NOT EXISTS stackquery_cache_expires_at
        ON stackquery_cache (expires_at) WHERE expires_at IS NOT NULL;
";
const GET: &str = "SELECT value FROM stackquery_cache
    WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)";
const SET: &str = "INSERT INTO stackquery_cache (key, value, expires_at) VALUES (?1, ?2, ?3)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at";
const DELETE: &str = "DELETE FROM stackquery_cache WHERE key = ?1";
const SCAN_RANGE: &str = "SELECT key, value FROM stackquery_cache
    WHERE key >= ?1 AND key < ?2 AND (expires_at IS NULL OR expires_at > ?3) ORDER BY key";
const SCAN_FROM: &str = "SELECT key, value FROM stackquery_cache
    WHERE key >= ?1 AND (expires_at IS NULL OR expires_at > ?2) ORDER BY key";
/// Expired rows of a range go first, uncounted; the second statement then counts the live.
const DELETE_EXPIRED_RANGE: &str = "DELETE FROM stackquery_cache
    WHERE key >= ?1 AND key < ?2 AND expires_at IS NOT NULL AND expires_at <= ?3";
const DELETE_RANGE: &str = "DELETE FROM stackquery_cache WHERE key >= ?1 AND key < ?2";
const DELETE_EXPIRED_FROM: &str = "DELETE FROM stackquery_cache
    WHERE key >= ?1 AND expires_at IS NOT NULL AND expires_at <= ?2";
const DELETE_FROM: &str = "DELETE FROM stackquery_cache WHERE key >= ?1";
/// Expired rows are purged in batches so no write transaction holds the file for long.
const PURGE_BATCH: &str = "DELETE FROM stackquery_cache WHERE rowid IN (
    SELECT rowid FROM stackquery_cache
    WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT 1000)";
const PURGE_BATCH_SIZE: usize = 1000;

const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_QUEUE_CAPACITY: usize = 4096;
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_PURGE_INTERVAL: Duration = Duration::from_millis(1);

/// Work for the connection thread.
type Job = Box<dyn FnOnce(&Connection) + Send>;

/// A [`Storage`] in one SQLite file: the embedded second tier, for one machine.
///
/// Entries live in the table `stackquery_cache (key TEXT PRIMARY KEY, value BLOB,
/// expires_at INTEGER)`, with `expires_at` in wall-clock milliseconds since the UNIX epoch
/// (so every process sharing the file agrees on it). Expired entries are never returned,
/// and a background purge deletes them every minute by default
/// ([`SqliteStorageBuilder::purge_interval`]). The file is in WAL mode, so other processes
/// can read while one writes.
///
/// All SQLite work runs on threads owned by the storage, never on the async runtime: one
/// for writes and, for a file, one with its own connection for reads, so reads never wait
/// behind a write that waits for another process's lock (see the module's threading
/// model). Cloning is cheap and shares those threads; they stop when the last clone is
/// dropped, after finishing the calls already queued.
///
/// Time to live is measured with the wall clock, not tokio's: a paused test clock does
/// not expire SQLite entries.
///
/// Which SQLite: feature `sqlite` (the default) compiles SQLite from source into the
/// binary (no system library needed, a C build of ~18 s in a clean debug build);
/// `sqlite-system` instead links the system's libsqlite3 (Debian: `libsqlite3-dev`; the
/// upsert it uses needs SQLite 3.24 or later). Both on is not an error: the compiled-in
/// SQLite is used, as features only add.
///
/// ```
/// use std::time::Duration;
/// use stackquery::storage::{SqliteStorage, Storage};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stackquery::StorageError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("cache.sqlite");
/// let store = SqliteStorage::open(&path)?;
/// store.set(r#"["user",1]"#, b"Ada".to_vec(), Some(Duration::from_secs(3600))).await?;
/// store.set(r#"["user",2]"#, b"Grace".to_vec(), None).await?;
/// drop(store);
///
/// let reopened = SqliteStorage::open(&path)?;                  // e.g. after a restart
/// assert_eq!(reopened.get(r#"["user",1]"#).await?, Some(b"Ada".to_vec()));
/// assert_eq!(reopened.delete_prefix(r#"["user","#).await?, 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "sqlite-system"))))]
pub struct SqliteStorage {
    jobs: SyncSender<Job>,
    /// The reader thread's queue (files only): `get`s go there, never behind a write.
    reads: Option<SyncSender<Job>>,
    path: Option<Arc<Path>>,
}

impl fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Options for opening a [`SqliteStorage`], from [`SqliteStorage::builder`] or
/// [`SqliteStorageBuilder::in_memory`].
///
/// ```
/// use std::time::Duration;
/// use stackquery::storage::SqliteStorage;
///
/// # fn main() -> Result<(), stackquery::StorageError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStorage::builder(dir.path().join("cache.sqlite"))
///     .purge_interval(Some(Duration::from_secs(10)))
///     .busy_timeout(Duration::from_secs(1))
///     .open()?;
/// # drop(store); Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "sqlite-system"))))]
pub struct SqliteStorageBuilder {
    path: Option<PathBuf>,
    purge_interval: Option<Duration>,
    queue_capacity: usize,
    busy_timeout: Duration,
}

impl SqliteStorageBuilder {
    /// Options for the file at `path`, with the defaults: purge every 60 s, a queue of 4096
    /// calls, a 5 s busy timeout. Public as [`SqliteStorage::builder`].
    fn new(path: impl Into<PathBuf>) -> Self {
        SqliteStorageBuilder {
            path: Some(path.into()),
            purge_interval: Some(DEFAULT_PURGE_INTERVAL),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }

    /// Options for a private in-memory database (for tests): nothing survives the storage,
    /// nothing is shared with other handles than its clones.
    pub fn in_memory() -> Self {
        SqliteStorageBuilder {
            path: None,
            ..Self::new(PathBuf::new())
        }
    }

    /// How often the storage's thread deletes expired rows; `None` turns the background
    /// purge off (expired rows are still never returned, see
    /// [`SqliteStorage::purge_expired`]). Intervals under 1 ms count as 1 ms.
    pub fn purge_interval(mut self, interval: Option<Duration>) -> Self {
        self.purge_interval = interval.map(|d| d.max(MIN_PURGE_INTERVAL));
        self
    }

    /// How many calls may wait for the storage's thread; a call that finds the queue full
    /// fails at once with [`StorageError::Backend`] instead of piling up behind a slow
    /// disk. At least 1.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// How long a write waits for another process holding the file's write lock before
    /// failing (SQLite's `busy_timeout`). SQLite counts it in `i32` milliseconds: longer
    /// timeouts, up to `Duration::MAX`, are clamped to that (about 24.8 days).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        // Clamped here: rusqlite panics ("too big") on a timeout past `i32::MAX` ms, and
        // `open` promises never to panic.
        self.busy_timeout = timeout.min(MAX_BUSY_TIMEOUT);
        self
    }

    /// Opens (creating if needed) the database and its table, and starts the storage's
    /// thread. Missing parent directories are created.
    ///
    /// This blocks while the file is opened (milliseconds); call it at startup, or inside
    /// `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    ///
    /// [`StorageError::Backend`] when the file cannot be created or opened (unwritable or
    /// invalid path, not a SQLite database…) or the thread cannot be started. Never panics.
    pub fn open(self) -> Result<SqliteStorage, StorageError> {
        let conn = match &self.path {
            Some(path) => open_file(path, self.busy_timeout)?,
            None => Connection::open_in_memory().map_err(|e| open_error(None, e))?,
        };
        conn.execute_batch(TABLE_SCHEMA)
            .map_err(|e| open_error(self.path.as_deref(), e))?;

        // The reader opens after the writer made the file, its table and WAL mode.
        let reader = match &self.path {
            Some(path) => Some(open_reader(path, self.busy_timeout)?),
            None => None,
        };
        let spawn_error = |e| StorageError::backend(OpenError::new(self.path.as_deref(), e));
        let (reads, reader_thread) = match reader {
            Some(reader) => {
                let (reads, queue) = mpsc::sync_channel::<Job>(self.queue_capacity);
                let thread = std::thread::Builder::new()
                    .name("stackquery-sqlite-read".into())
                    .spawn(move || run_worker(&reader, &queue, None))
                    .map_err(spawn_error)?;
                (Some(reads), Some(thread))
            }
            None => (None, None),
        };
        let (jobs, queue) = mpsc::sync_channel::<Job>(self.queue_capacity);
        let purge_interval = self.purge_interval;
        std::thread::Builder::new()
            .name("stackquery-sqlite".into())
            .spawn(move || {
                run_worker(&conn, &queue, purge_interval);
                // The writer's connection closes last: the last connection to close is the
                // one that checkpoints and removes the WAL file, and the reader's
                // (`query_only`) cannot.
                if let Some(thread) = reader_thread {
                    let _ = thread.join();
                }
                drop(conn);
            })
            .map_err(spawn_error)?;
        Ok(SqliteStorage {
            jobs,
            reads,
            path: self.path.map(Arc::from),
        })
    }
}

fn open_file(path: &Path, busy_timeout: Duration) -> Result<Connection, StorageError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| StorageError::backend(OpenError::new(Some(path), e)))?;
    }
    // No SQLITE_OPEN_URI: the argument is a file path, never a `file:` URI.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(Some(path), e))?;
    // The busy timeout first: the pragmas below may wait for another process.
    conn.busy_timeout(busy_timeout)
        .map_err(|e| open_error(Some(path), e))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| open_error(Some(path), e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), %mode, "SQLite storage could not switch to WAL mode");
    }
    // Durable against a crash of the process; a power loss may drop the last writes,
    // which a cache can afford.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| open_error(Some(path), e))?;
    Ok(conn)
}

/// The reader thread's connection to the file the writer opened: read-only in effect
/// (`query_only`), so a bug can never make it write outside the writer's thread.
fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, StorageError> {
    // Read-write flags all the same: a WAL reader needs to write the shared-memory index.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(Some(path), e))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| open_error(Some(path), e))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| open_error(Some(path), e))?;
    Ok(conn)
}

impl SqliteStorage {
    /// Opens (creating if needed) the SQLite file at `path` with the default options; see
    /// [`SqliteStorageBuilder::open`].
    ///
    /// # Errors
    ///
    /// [`StorageError::Backend`] when the file cannot be created or opened. Never panics.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        SqliteStorageBuilder::new(path.as_ref()).open()
    }

    /// A private in-memory SQLite database, for tests.
    ///
    /// # Errors
    ///
    /// [`StorageError::Backend`] if SQLite or the thread cannot be started.
    pub fn open_in_memory() -> Result<Self, StorageError> {
        SqliteStorageBuilder::in_memory().open()
    }

    /// Options for opening the file at `path`, with the defaults: purge every 60 s, a
    /// queue of 4096 calls, a 5 s busy timeout.
    pub fn builder(path: impl Into<PathBuf>) -> SqliteStorageBuilder {
        SqliteStorageBuilder::new(path)
    }

    /// The file's path (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Deletes the expired rows now and returns how many; the background purge does the
    /// same periodically.
    ///
    /// # Errors
    ///
    /// [`StorageError::Backend`] from SQLite, or when the queue is full.
    pub async fn purge_expired(&self) -> Result<u64, StorageError> {
        self.call(false, |conn| {
            purge(conn, now_ms()).map_err(StorageError::backend)
        })
        .await
    }

    /// Runs `work` on a connection thread and waits for its answer: the reader's for a
    /// `read_only` call on a file, else the writer's. A `read_only` call whose caller has
    /// given up (timed out) by the time its turn comes is skipped.
    async fn call<R, F>(&self, read_only: bool, work: F) -> Result<R, StorageError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StorageError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            if read_only && reply.is_closed() {
                return;
            }
            // The caller may have left meanwhile; then nobody needs the answer.
            let _ = reply.send(work(conn));
        });
        let queue = match &self.reads {
            Some(reads) if read_only => reads,
            _ => &self.jobs,
        };
        queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => StorageError::backend("SQLite storage queue is full"),
            TrySendError::Disconnected(_) => StorageError::backend("SQLite storage thread stopped"),
        })?;
        answer
            .await
            .map_err(|_| StorageError::backend("SQLite storage thread stopped"))?
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let key = key.to_owned();
        self.call(true, move |conn| {
            let mut stmt = conn.prepare_cached(GET).map_err(StorageError::backend)?;
            stmt.query_row((key, now_ms()), |row| row.get::<_, Vec<u8>>(0))
                .optional()
                .map_err(StorageError::backend)
        })
        .await
    }

    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let key = key.to_owned();
        // The ttl runs from the call, not from when the thread gets to it.
        let expires_at = ttl.map(|ttl| now_ms().saturating_add(ceil_millis(ttl)));
        self.call(false, move |conn| {
            let mut stmt = conn.prepare_cached(SET).map_err(StorageError::backend)?;
            stmt.execute((key, value, expires_at))
                .map_err(StorageError::backend)?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let key = key.to_owned();
        self.call(false, move |conn| {
            let mut stmt = conn.prepare_cached(DELETE).map_err(StorageError::backend)?;
            stmt.execute([key]).map_err(StorageError::backend)?;
            Ok(())
        })
        .await
    }

    /// Deletes the rows whose key lies in `[prefix, upper)`, where `upper` is the least
    /// string greater than every string starting with `prefix`: a range scan of the
    /// primary-key index (no `LIKE`, so `%` and `_` in keys are plain characters).
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        let prefix = prefix.to_owned();
        self.call(false, move |conn| {
            delete_range(conn, &prefix, now_ms()).map_err(StorageError::backend)
        })
        .await
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let prefix = prefix.to_owned();
        self.call(true, move |conn| {
            scan_range(conn, &prefix, now_ms()).map_err(StorageError::backend)
        })
        .await
    }
}

fn scan_range(
    conn: &Connection,
    prefix: &str,
    now: i64,
) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
    let row = |row: &rusqlite::Row<'_>| Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?));
    match prefix_upper_bound(prefix) {
        Some(upper) => conn
            .prepare_cached(SCAN_RANGE)?
            .query_map((prefix, &upper, now), row)?
            .collect(),
        None => conn
            .prepare_cached(SCAN_FROM)?
            .query_map((prefix, now), row)?
            .collect(),
    }
}

fn delete_range(conn: &Connection, prefix: &str, now: i64) -> rusqlite::Result<u64> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let live = match prefix_upper_bound(prefix) {
        Some(upper) => {
            tx.prepare_cached(DELETE_EXPIRED_RANGE)?
                .execute((prefix, &upper, now))?;
            tx.prepare_cached(DELETE_RANGE)?.execute((prefix, &upper))?
        }
        None => {
            tx.prepare_cached(DELETE_EXPIRED_FROM)?
                .execute((prefix, now))?;
            tx.prepare_cached(DELETE_FROM)?.execute([prefix])?
        }
    };
    tx.commit()?;
    Ok(live as u64)
}

fn purge(conn: &Connection, now: i64) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(PURGE_BATCH)?;
    let mut total = 0_u64;
    loop {
        let n = stmt.execute([now])?;
        total += n as u64;
        if n < PURGE_BATCH_SIZE {
            return Ok(total);
        }
    }
}

/// The least string greater than every string that starts with `prefix`, or `None` when
/// there is none (an empty prefix, or one made only of `char::MAX`).
///
/// SQLite compares TEXT with memcmp, and UTF-8 byte order is code point order, so this is
/// `prefix` cut after its last char that can be incremented, with that char incremented.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            // Surrogates are not chars: the successor of U+D7FF is U+E000.
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The connection thread: runs jobs in order, purges between them, and returns when every
/// handle is gone and the queue is drained.
fn run_worker(conn: &Connection, queue: &mpsc::Receiver<Job>, purge_interval: Option<Duration>) {
    let next_after = |now: Instant| purge_interval.and_then(|d| now.checked_add(d));
    let mut next_purge = next_after(Instant::now());
    loop {
        let job = match next_purge {
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Some(at) => {
                let now = Instant::now();
                if now >= at {
                    match purge(conn, now_ms()) {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(purged = n, "SQLite storage purged expired rows"),
                        Err(err) => {
                            tracing::warn!(error = %crate::error::report(&err), "SQLite storage purge failed")
                        }
                    }
                    next_purge = next_after(Instant::now());
                    continue;
                }
                match queue.recv_timeout(at - now) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        // A panic inside SQLite code must not stop the thread for every later call; the
        // panicking call's caller sees its reply channel closed.
        if catch_unwind(AssertUnwindSafe(|| job(conn))).is_err() {
            tracing::error!("SQLite storage call panicked");
        }
    }
}

/// The longest busy timeout SQLite can take (`i32::MAX` milliseconds).
const MAX_BUSY_TIMEOUT: Duration = Duration::from_millis(2_147_483_647);

/// Wall-clock milliseconds since the UNIX epoch (0 before it).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `ttl` in whole milliseconds, rounded up so that a ttl under 1 ms is not 0.
fn ceil_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

fn open_error(path: Option<&Path>, err: rusqlite::Error) -> StorageError {
    StorageError::backend(OpenError::new(path, err))
}

/// Why a SQLite file could not be opened, naming the file.
#[derive(Debug)]
struct OpenError {
    path: Option<PathBuf>,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl OpenError {
    fn new(
        path: Option<&Path>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        OpenError {
            path: path.map(Path::to_path_buf),
            source: source.into(),
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(
                f,
                "cannot open SQLite storage at {}: {}",
                path.display(),
                self.source
            ),
            None => write!(f, "cannot open in-memory SQLite storage: {}", self.source),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11, SQLite. The story: reads queued behind writes on the storage's single
    /// thread, so while another process held the file's write lock, a write-behind `set`
    /// sat waiting for it (busy timeout) and every cold fetch's `get` waited behind that
    /// `set` — a second or more each, though WAL lets readers proceed beside a writer.
    ///
    /// Here another connection (another process, in effect) holds a write transaction
    /// (`BEGIN IMMEDIATE`) for 2 s, a `set` is queued and waits for it, and a `get` still
    /// answers within 300 ms; the `set` goes through once the lock is released.
    #[tokio::test(flavor = "multi_thread")]
    async fn reads_do_not_wait_behind_a_write_blocked_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let store = SqliteStorage::open(&path).unwrap();
        store.set("k", b"v".to_vec(), None).await.unwrap();

        let (locked, is_locked) = std::sync::mpsc::channel();
        let other_process = std::thread::spawn(move || {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            conn.execute(
                "UPDATE stackquery_cache SET value = x'00' WHERE key = 'nothing'",
                [],
            )
            .unwrap();
            locked.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(2));
            conn.execute_batch("COMMIT").unwrap();
        });
        is_locked.recv().unwrap();
        let locked_at = Instant::now();

        // A write-behind set: it waits for the write lock (5 s busy timeout).
        let write = tokio::spawn({
            let store = store.clone();
            async move { store.set("k2", b"w".to_vec(), None).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;

        let started = Instant::now();
        let read = store.get("k").await.unwrap();
        let took = started.elapsed();
        assert_eq!(read, Some(b"v".to_vec()));
        assert!(
            took < Duration::from_millis(300),
            "a get waited {took:?} behind a write blocked by another process"
        );
        assert!(
            locked_at.elapsed() < Duration::from_secs(2),
            "the lock was still held during the get"
        );

        other_process.join().unwrap();
        write.await.unwrap().unwrap();
        assert_eq!(store.get("k2").await.unwrap(), Some(b"w".to_vec()));
    }

    /// Reads on the reader's connection see every write that has returned.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_reader_sees_every_returned_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStorage::open(dir.path().join("c.sqlite")).unwrap();
        for i in 0..200_u32 {
            let k = format!("k{i}");
            store.set(&k, i.to_le_bytes().to_vec(), None).await.unwrap();
            assert_eq!(store.get(&k).await.unwrap(), Some(i.to_le_bytes().to_vec()));
            if i % 3 == 0 {
                store.delete(&k).await.unwrap();
                assert_eq!(store.get(&k).await.unwrap(), None);
            }
        }
        assert_eq!(store.delete_prefix("k").await.unwrap(), 133);
        assert_eq!(store.get("k1").await.unwrap(), None);
    }

    #[test]
    fn upper_bound_is_the_least_string_above_the_prefix_range() {
        assert_eq!(
            prefix_upper_bound(r#"["user","#).as_deref(),
            Some(r#"["user"-"#)
        );
        assert_eq!(prefix_upper_bound("a").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound(""), None);
        // Every string with the prefix sorts below the bound, byte-wise as SQLite compares.
        let upper = prefix_upper_bound("é").unwrap_or_default();
        for s in ["é", "é\u{10FFFF}", "é\u{10FFFF}\u{10FFFF}zz"] {
            assert!(s.as_bytes() < upper.as_bytes(), "{s:?}");
        }
        assert!("ê".as_bytes() >= upper.as_bytes());
    }
}
