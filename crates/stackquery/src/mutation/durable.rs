//! Durable mutations: calls written to the second tier before they run, so that they
//! survive a restart and resume in order.
//!
//! A queue has a name. Each [`DurableMutation::enqueue`] writes one record under
//! `stackquery:mutations:<name>:<seq>` (`seq` zero-padded to 20 digits, so the keys sort
//! in call order) and then hands the call to the queue's one worker task, which runs the
//! calls one at a time, in order. A call that succeeds has its record deleted; a call
//! whose retries are spent moves to `stackquery:mutations-dead:<name>:<seq>` (the dead
//! letters) and the queue goes on. Registering the name again after a restart
//! ([`QueryClient::durable_mutation`](crate::QueryClient::durable_mutation)) reads the
//! records left behind ([`Storage::scan_prefix`]) and runs them first, in order.
//!
//! Delivery is at least once: a process that dies after a call ran but before its record
//! was deleted runs that call again after the restart.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::error::{BoxError, QueryError};
use crate::host::Runtime;
use crate::retry::{retry_setters, run_with_retries, RetryConfig, Step, MUTATION_RETRIES};
use crate::storage::{Storage, StorageError};
use crate::worker::{Running, Worker};

type DurableFn<V> = Arc<dyn Fn(V) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// The names of the durable queues registered on one client (one worker per queue).
pub(crate) type Registry = Arc<Mutex<HashSet<Arc<str>>>>;

/// The record format's version, in every record (`"v"`).
const RECORD_VERSION: u32 = 1;

/// What a [`DurableMutation`] does: a named queue, the async function that carries out
/// one call with its variables `V`, a retry policy, and optionally its own storage.
///
/// `V` is written to the second tier as JSON (serde), so it must round-trip through
/// `serde_json`. The function's output is dropped: a call resumed after a restart has no
/// caller left to receive it.
///
/// ```
/// use stackquery::DurableMutationOptions;
/// use std::time::Duration;
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Email { to: String, body: String }
///
/// let opts = DurableMutationOptions::new("send_email", |email: Email| async move {
///     // POST it to the mail service…
///     Ok::<_, std::io::Error>(())
/// })
/// .retry(5)
/// .retry_delay(|attempt| Duration::from_secs(1 << attempt.min(6)));
/// # let _ = opts;
/// ```
pub struct DurableMutationOptions<V> {
    name: Arc<str>,
    run: DurableFn<V>,
    retry: RetryConfig,
    storage: Option<Arc<dyn Storage>>,
}

impl<V> Clone for DurableMutationOptions<V> {
    fn clone(&self) -> Self {
        DurableMutationOptions {
            name: self.name.clone(),
            run: self.run.clone(),
            retry: self.retry.clone(),
            storage: self.storage.clone(),
        }
    }
}

impl<V> fmt::Debug for DurableMutationOptions<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableMutationOptions")
            .field("name", &self.name)
            .field("retry", &self.retry)
            .field("storage", &self.storage.is_some())
            .finish_non_exhaustive()
    }
}

impl<V: Send + 'static> DurableMutationOptions<V> {
    /// A durable queue named `name` (non-empty, without `:`; one queue per name on a
    /// storage), whose calls run `mutate`.
    pub fn new<F, Fut, T, E>(name: impl Into<Arc<str>>, mutate: F) -> Self
    where
        F: Fn(V) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let run: DurableFn<V> = Arc::new(move |vars| {
            mutate(vars)
                .map(|r| r.map(drop).map_err(Into::into))
                .boxed()
        });
        DurableMutationOptions {
            name: name.into(),
            run,
            retry: RetryConfig::default(),
            storage: None,
        }
    }

    /// Keeps the queue in `storage` instead of the client's second tier (for a client
    /// without one, or to keep the queue apart from the cache). The storage must support
    /// [`Storage::scan_prefix`] (memory, SQLite and Redis do).
    #[must_use]
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Some(Arc::new(storage));
        self
    }

    retry_setters! {
        config: retry;
        retried: "a failed call";
        count: "default 0: a failed call goes to the dead letters at once";
        note: "Durable mutations do not use the client's retry defaults.";
        each: #[must_use];
    }
}

/// A call whose retries were spent: its variables, the error's report and how many
/// attempts failed. Kept in the storage until
/// [`requeue_dead_letters`](DurableMutation::requeue_dead_letters) puts them back.
#[derive(Clone, Debug)]
pub struct DeadLetter<V> {
    /// The call's sequence number in its queue.
    pub seq: u64,
    /// The call's variables.
    pub vars: V,
    /// The last error, with its causes (`QueryError::report`).
    pub error: String,
    /// How many attempts failed.
    pub failures: u32,
}

#[derive(Serialize, Deserialize)]
struct Record<V> {
    v: u32,
    vars: V,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default)]
    failures: u32,
}

/// A handle on a durable mutation queue made by
/// [`QueryClient::durable_mutation`](crate::QueryClient::durable_mutation). Cloning is
/// cheap; the queue's worker stops once every handle is gone.
pub struct DurableMutation<V> {
    queue: Arc<Queue<V>>,
}

impl<V> Clone for DurableMutation<V> {
    fn clone(&self) -> Self {
        DurableMutation {
            queue: self.queue.clone(),
        }
    }
}

impl<V> fmt::Debug for DurableMutation<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableMutation")
            .field("name", &self.queue.name)
            .field("pending", &*self.queue.outstanding.borrow())
            .finish_non_exhaustive()
    }
}

struct Queue<V> {
    name: Arc<str>,
    storage: Arc<dyn Storage>,
    run: DurableFn<V>,
    retry: RetryConfig,
    runtime: Runtime,
    /// The calls of this process not finished yet, in order; the head is the one running.
    items: Mutex<VecDeque<(u64, V)>>,
    /// The next sequence number; behind an async lock held across the record's write, so
    /// that records are written, and queued, in the order of their numbers.
    next_seq: tokio::sync::Mutex<u64>,
    /// Wakes the worker when a call is queued (or the queue is dropped).
    wake: Arc<Notify>,
    /// Calls queued or running, for `pending` and `wait_idle`.
    outstanding: watch::Sender<usize>,
    worker: Worker,
    registry: Registry,
}

impl<V> Drop for Queue<V> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.name);
        // The worker waits on `wake` holding no handle: let it see the queue is gone.
        self.wake.notify_one();
    }
}

fn pending_prefix(name: &str) -> String {
    format!("stackquery:mutations:{name}:")
}

fn dead_prefix(name: &str) -> String {
    format!("stackquery:mutations-dead:{name}:")
}

/// The sequence number at the end of a record key (after the prefix).
fn seq_of(key: &str, prefix: &str) -> Option<u64> {
    key.strip_prefix(prefix)?.parse().ok()
}

fn bad_name() -> StorageError {
    StorageError::Unsupported("a durable mutation name must be non-empty and contain no ':'")
}

impl<V> DurableMutation<V>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Registers the queue and resumes the calls its storage still holds (see
    /// [`QueryClient::durable_mutation`](crate::QueryClient::durable_mutation)).
    pub(crate) async fn open(
        opts: DurableMutationOptions<V>,
        tier: Option<Arc<dyn Storage>>,
        runtime: Runtime,
        registry: Registry,
    ) -> Result<Self, StorageError> {
        if opts.name.is_empty() || opts.name.contains(':') {
            return Err(bad_name());
        }
        let Some(storage) = opts.storage.or(tier) else {
            return Err(StorageError::Unsupported(
                "durable mutations need a storage (QueryClientBuilder::storage or DurableMutationOptions::storage)",
            ));
        };
        if !registry.lock().insert(opts.name.clone()) {
            return Err(StorageError::Unsupported(
                "this durable mutation name is already registered on this client",
            ));
        }
        // From here on, dropping `queue` (on an error) unregisters the name.
        let queue = Arc::new(Queue {
            name: opts.name,
            storage,
            run: opts.run,
            retry: opts.retry,
            runtime,
            items: Mutex::new(VecDeque::new()),
            next_seq: tokio::sync::Mutex::new(0),
            wake: Arc::new(Notify::new()),
            outstanding: watch::Sender::new(0),
            worker: Worker::default(),
            registry,
        });
        queue.load().await?;
        let handle = DurableMutation { queue };
        handle.queue.ensure_worker();
        Ok(handle)
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.queue.name
    }

    /// Writes a call with `vars` to the storage, then queues it behind the calls made
    /// before it; returns its sequence number once the record is written (the call runs
    /// later, on the queue's worker task: [`wait_idle`](Self::wait_idle) waits for it).
    ///
    /// # Errors
    /// [`StorageError::Encode`] if `vars` cannot be written as JSON; whatever the storage
    /// reports for the write. Either way nothing was queued.
    pub async fn enqueue(&self, vars: V) -> Result<u64, StorageError> {
        let queue = &self.queue;
        let record = Record {
            v: RECORD_VERSION,
            vars: &vars,
            error: None,
            failures: 0,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| StorageError::Encode(e.to_string()))?;
        let mut next = queue.next_seq.lock().await;
        let seq = *next;
        queue.storage.set(&queue.key(seq), bytes, None).await?;
        *next = seq + 1;
        queue.items.lock().push_back((seq, vars));
        queue.outstanding.send_modify(|n| *n += 1);
        drop(next);
        queue.wake.notify_one();
        queue.ensure_worker();
        Ok(seq)
    }

    /// Calls queued or running in this process (resumed ones included).
    pub fn pending(&self) -> usize {
        *self.queue.outstanding.borrow()
    }

    /// Waits until every call queued so far has finished (succeeded, or moved to the dead
    /// letters).
    pub async fn wait_idle(&self) {
        self.queue.ensure_worker();
        let mut rx = self.queue.outstanding.subscribe();
        // The sender lives in the queue, which `self` keeps alive: no error.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// The calls whose retries were spent, in order.
    ///
    /// # Errors
    /// Whatever the storage reports; [`StorageError::Corrupt`] for a record that does not
    /// decode as `V`.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter<V>>, StorageError> {
        let prefix = dead_prefix(&self.queue.name);
        let rows = self.queue.storage.scan_prefix(&prefix).await?;
        rows.into_iter()
            .filter_map(|(key, bytes)| Some((seq_of(&key, &prefix)?, bytes)))
            .map(|(seq, bytes)| {
                let record: Record<V> = decode(&bytes)?;
                Ok(DeadLetter {
                    seq,
                    vars: record.vars,
                    error: record.error.unwrap_or_default(),
                    failures: record.failures,
                })
            })
            .collect()
    }

    /// Puts every dead letter back at the end of the queue (with a new sequence number),
    /// in order, and returns how many.
    ///
    /// # Errors
    /// As [`dead_letters`](Self::dead_letters) and [`enqueue`](Self::enqueue); the dead
    /// letters requeued before the error are gone from the dead letters.
    pub async fn requeue_dead_letters(&self) -> Result<usize, StorageError> {
        let letters = self.dead_letters().await?;
        let prefix = dead_prefix(&self.queue.name);
        for letter in &letters {
            // Queued first, deleted after: a crash in between runs the call twice
            // rather than never (at least once, as everywhere in the queue).
            self.enqueue(letter.vars.clone()).await?;
            self.queue
                .storage
                .delete(&format!("{prefix}{:020}", letter.seq))
                .await?;
        }
        Ok(letters.len())
    }
}

fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<Record<V>, StorageError> {
    let record: Record<V> =
        serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    if record.v != RECORD_VERSION {
        return Err(StorageError::Corrupt(format!(
            "durable mutation record version {} (this build reads {RECORD_VERSION})",
            record.v
        )));
    }
    Ok(record)
}

impl<V> Queue<V>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn key(&self, seq: u64) -> String {
        format!("{}{seq:020}", pending_prefix(&self.name))
    }

    /// Reads the records a previous process left (queued calls and dead letters): the
    /// queued ones are queued again, in order, and the next sequence number goes past
    /// every number in use. A record that does not decode is left where it is and logged.
    async fn load(&self) -> Result<(), StorageError> {
        let prefix = pending_prefix(&self.name);
        let rows = self.storage.scan_prefix(&prefix).await?;
        let dead = dead_prefix(&self.name);
        let dead_rows = self.storage.scan_prefix(&dead).await?;
        let mut next = 0;
        let mut items = VecDeque::with_capacity(rows.len());
        for (key, bytes) in rows {
            let Some(seq) = seq_of(&key, &prefix) else {
                continue;
            };
            next = next.max(seq + 1);
            match decode::<V>(&bytes) {
                Ok(record) => items.push_back((seq, record.vars)),
                Err(e) => tracing::warn!(key, error = %e, "durable mutation record skipped"),
            }
        }
        for (key, _) in dead_rows {
            if let Some(seq) = seq_of(&key, &dead) {
                next = next.max(seq + 1);
            }
        }
        if !items.is_empty() {
            tracing::info!(queue = %self.name, calls = items.len(), "resuming durable mutations");
        }
        *self.next_seq.lock().await = next;
        let n = items.len();
        *self.items.lock() = items;
        self.outstanding.send_replace(n);
        Ok(())
    }

    /// Starts the worker task on the client's host unless it runs (restarts it if its
    /// runtime died: the calls live in `items`, not in the task).
    fn ensure_worker(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let wake = self.wake.clone();
        self.worker
            .ensure_on(&self.runtime, move |running| drive(weak, wake, running));
    }

    /// Runs one call to its end: success deletes its record; spent retries move it to the
    /// dead letters.
    async fn process(&self, seq: u64, vars: V) {
        let retry = self.retry.resolve(None, MUTATION_RETRIES);
        let name = &self.name;
        let mut failures = 0;
        let result = run_with_retries(
            &self.runtime,
            "durable mutation",
            &retry,
            &mut failures,
            |_| (self.run)(vars.clone()),
            |count, error, n, step| {
                *count = n;
                match step {
                    Step::Failed => {}
                    Step::Retry(delay) => tracing::debug!(queue = %name, seq, error = %crate::error::report(error), ?delay, "durable mutation retry"),
                    Step::GiveUp => tracing::warn!(queue = %name, seq, error = %crate::error::report(error), "durable mutation failed: moved to the dead letters"),
                }
            },
        )
        .await;
        if let Err(error) = result {
            if !self.bury(seq, vars, &error, failures).await {
                // Not lost: the record stays queued and runs again after a restart.
                return;
            }
        }
        if let Err(e) = self.storage.delete(&self.key(seq)).await {
            // The call ran (or was buried); its record stays and runs again after a
            // restart: at least once.
            tracing::warn!(queue = %name, seq, error = %e, "durable mutation record not deleted");
        }
    }

    /// Writes the dead letter of call `seq`; false if it could not be written.
    async fn bury(&self, seq: u64, vars: V, error: &QueryError, failures: u32) -> bool {
        let record = Record {
            v: RECORD_VERSION,
            vars,
            error: Some(crate::error::report(error).to_string()),
            failures,
        };
        let key = format!("{}{seq:020}", dead_prefix(&self.name));
        let written = match serde_json::to_vec(&record) {
            Ok(bytes) => self.storage.set(&key, bytes, None).await,
            Err(e) => Err(StorageError::Encode(e.to_string())),
        };
        match written {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(queue = %self.name, seq, error = %e, "dead letter not written");
                false
            }
        }
    }
}

/// The worker: runs the head of the queue, removes it, repeats; sleeps when empty. Holds
/// the queue weakly while it sleeps, so dropping every handle ends it.
async fn drive<V>(queue: Weak<Queue<V>>, wake: Arc<Notify>, _running: Running)
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    loop {
        let Some(q) = queue.upgrade() else { return };
        let head = q.items.lock().front().cloned();
        match head {
            Some((seq, vars)) => {
                q.process(seq, vars).await;
                q.items.lock().pop_front();
                q.outstanding.send_modify(|n| *n = n.saturating_sub(1));
            }
            None => {
                drop(q);
                // `notify_one` keeps a permit: a call queued before this wait is not missed.
                wake.notified().await;
            }
        }
    }
}
