//! The cache's event stream: [`QueryClient::subscribe_events`](crate::QueryClient::subscribe_events).
//!
//! Every change the engine makes is told here as a [`CacheEvent`]: entries added, updated,
//! invalidated, removed, evicted and collected; observers coming and going; mutations;
//! fetches with their duration; second-tier reads and writes; bus traffic. Devtools,
//! metrics and tests read it.
//!
//! **Free when nobody listens.** An event is built only when a subscriber exists: each
//! emitting site first reads one atomic counter, and the hit path emits nothing at all.
//! **Never slowed by a listener.** Events go into a bounded broadcast ring
//! ([`QueryClientBuilder::event_capacity`](crate::QueryClientBuilder::event_capacity),
//! default 4,096); a subscriber that falls behind loses the oldest ones and is told how
//! many ([`EventStreamItem::Lagged`]); the engine never waits for it.
//!
//! Evictions and gc happen inside the cache, under its lock: the cache logs them (only
//! while someone listens) and the engine sends them once the lock is released, so waking a
//! subscriber (whose waker may be anyone's code) never happens under a cache lock.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::broadcast;

use crate::error::QueryError;
use crate::key::QueryKey;
use crate::state::MutationStatus;
use crate::state::{FetchStatus, QueryStatus};

/// Default size of the event ring.
pub(crate) const DEFAULT_CAPACITY: usize = 4096;

/// One thing that happened in the cache, with the wall-clock time it happened at.
#[derive(Clone, Debug)]
pub struct CacheEvent {
    /// When (wall clock).
    pub at: SystemTime,
    /// What.
    pub kind: CacheEventKind,
}

/// What happened.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum CacheEventKind {
    /// A query entry was created.
    QueryAdded {
        /// Its key.
        key: QueryKey,
    },
    /// A query entry's state changed.
    QueryUpdated {
        /// Its key.
        key: QueryKey,
        /// The status now.
        status: QueryStatus,
        /// The fetch status now.
        fetch_status: FetchStatus,
        /// The data's version: it changes exactly when the data is replaced.
        data_version: u64,
        /// When the data held was fetched or written.
        data_updated_at: Option<SystemTime>,
        /// Consecutive failures.
        failure_count: u32,
    },
    /// A query entry was invalidated (its data is stale whatever its age).
    QueryInvalidated {
        /// Its key.
        key: QueryKey,
    },
    /// A query entry was removed (`remove_queries`, `clear`, a removal from another
    /// instance).
    QueryRemoved {
        /// Its key.
        key: QueryKey,
    },
    /// A query entry was evicted to keep the cache within `max_queries` or `max_weight`.
    QueryEvicted {
        /// Its key.
        key: QueryKey,
    },
    /// A query entry was collected by the gc (unobserved past its gc time).
    QueryCollected {
        /// Its key.
        key: QueryKey,
    },
    /// An observer subscribed to a query.
    ObserverAdded {
        /// The query's key.
        key: QueryKey,
    },
    /// An observer's subscription ended.
    ObserverRemoved {
        /// The query's key.
        key: QueryKey,
    },
    /// A mutation was created.
    MutationAdded {
        /// Its id (unique in the process).
        id: u64,
    },
    /// A mutation's state changed.
    MutationUpdated {
        /// Its id.
        id: u64,
        /// The status now.
        status: MutationStatus,
    },
    /// A fetch started.
    FetchStarted {
        /// The query's key.
        key: QueryKey,
    },
    /// A fetch failed and will be tried again.
    FetchRetried {
        /// The query's key.
        key: QueryKey,
        /// Failures so far.
        failures: u32,
        /// The last failure.
        error: QueryError,
    },
    /// A fetch succeeded.
    FetchSucceeded {
        /// The query's key.
        key: QueryKey,
        /// From its start to its result, retries included.
        duration: Duration,
    },
    /// A fetch failed for good (its retries spent), or was cancelled.
    FetchFailed {
        /// The query's key.
        key: QueryKey,
        /// From its start to its result, retries included.
        duration: Duration,
        /// The error.
        error: QueryError,
    },
    /// A second-tier read.
    StorageRead {
        /// The stored key (the query key's text).
        key: String,
        /// Hit, miss or error.
        outcome: StorageOutcome,
        /// How long it took.
        duration: Duration,
    },
    /// A second-tier write or delete landed, or failed.
    StorageWrite {
        /// The stored key, or the prefix of a prefix delete.
        key: String,
        /// Written, deleted or error.
        outcome: StorageOutcome,
    },
    /// A message from another instance arrived on the bus.
    BusIn {
        /// What it said, briefly (`invalidate ["user"]`, …).
        message: String,
    },
    /// A message to the other instances went out on the bus.
    BusOut {
        /// What it said, briefly.
        message: String,
    },
}

/// How a second-tier operation went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageOutcome {
    /// A read found an entry.
    Hit,
    /// A read found nothing (or nothing usable).
    Miss,
    /// A write landed.
    Written,
    /// A delete landed.
    Deleted,
    /// The operation failed (logged and counted).
    Error,
}

/// What an [`EventStream`] yields.
#[derive(Clone, Debug)]
pub enum EventStreamItem {
    /// The next event.
    Event(CacheEvent),
    /// This subscriber fell behind and missed this many events (the oldest ones); the
    /// stream goes on with the oldest event still held.
    Lagged(u64),
}

/// The engine's side of the stream.
pub(crate) struct Events {
    /// Live subscribers: the one load every emitting site makes.
    subscribers: Arc<AtomicUsize>,
    /// The ring, made by the first subscriber (a client nobody watches allocates none).
    tx: std::sync::OnceLock<broadcast::Sender<CacheEvent>>,
    capacity: usize,
}

impl Events {
    pub(crate) fn new(capacity: usize) -> Self {
        Events {
            subscribers: Arc::new(AtomicUsize::new(0)),
            tx: std::sync::OnceLock::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether anyone listens (one atomic load).
    #[inline]
    pub(crate) fn on(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    /// Sends the event `make` builds, if anyone listens. Call with no cache lock held.
    #[inline]
    pub(crate) fn emit(&self, make: impl FnOnce() -> CacheEventKind) {
        if self.on() {
            self.send(make());
        }
    }

    /// The subscriber count, for layers below the engine that log only while someone
    /// listens (the cache's removal log).
    pub(crate) fn subscriber_count(&self) -> Arc<AtomicUsize> {
        self.subscribers.clone()
    }

    fn send(&self, kind: CacheEventKind) {
        let Some(tx) = self.tx.get() else { return };
        let _ = tx.send(CacheEvent {
            at: SystemTime::now(),
            kind,
        });
    }

    /// A new subscriber, from now on.
    pub(crate) fn subscribe(self: &Arc<Self>) -> EventStream {
        let rx = self
            .tx
            .get_or_init(|| broadcast::channel(self.capacity).0)
            .subscribe();
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        let guard = Subscribed(self.subscribers.clone());
        let inner = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            let item = match rx.recv().await {
                Ok(event) => EventStreamItem::Event(event),
                Err(broadcast::error::RecvError::Lagged(n)) => EventStreamItem::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((item, (rx, guard)))
        })
        .boxed();
        EventStream { inner }
    }
}

/// Counts a live subscriber; the count drops with the stream.
struct Subscribed(Arc<AtomicUsize>);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The stream of a client's [`CacheEvent`]s, from the moment it was made. It ends when
/// the client is dropped. Dropping it unsubscribes.
pub struct EventStream {
    inner: BoxStream<'static, EventStreamItem>,
}

impl Stream for EventStream {
    type Item = EventStreamItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}
