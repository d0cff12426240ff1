//! The vocabulary of the entry's state machine: the events it takes, the answers and the
//! effects it gives back, and the small types they carry.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::QueryError;
use crate::flight::{FetchResult, Flight};
use crate::notify::Snapshot;
use crate::options::QueryOptions;
use crate::refetch::RefetchType;

/// Whether the next fetch of an entry reads the shared tier first. (Only the `redis`
/// feature's bus ever asks for a reload.)
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reload {
    No,
    /// Messages may have been lost: take stored data only if it is newer than ours.
    IfNewer,
    /// Another instance announced that the shared tier holds the newest data (clocks of
    /// different machines may disagree, so stamps are not compared).
    Trust,
}

/// Told about changes to an entry, after its lock is released.
pub(crate) trait EntryListener: Send + Sync {
    /// The entry's state changed (its version moved), or its data just turned stale.
    fn changed(&self);
    /// The entry left the cache.
    fn removed(&self);
}

/// One observer of an entry, with the settings the entry decides by for it.
#[derive(Clone)]
pub(crate) struct Watcher {
    pub(crate) listener: Arc<dyn EntryListener>,
    /// Its query is enabled (counts towards `enabled_observers`).
    pub(crate) enabled: bool,
    /// Its own stale time: freshness is judged per observer.
    pub(crate) stale_time: Duration,
}

/// The observers of an entry as they were when a change happened (notified outside the
/// lock: the entry keeps them in the notification primitive's copy-on-write list).
pub(crate) type Listeners = Snapshot<Watcher>;

/// How a typed call treats cached data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Fresh: return. Stale: return and refresh in the background. None: fetch.
    Swr,
    /// Any data: return (no refresh). None: fetch.
    Ensure,
    /// Always fetch (joining a fetch in flight), return the fetched value.
    Force,
    /// Fresh: return. Otherwise (stale, invalidated, none): wait for a fetch, joining the
    /// one in flight only if it began after the latest invalidation and write and will
    /// not settle with a stale stored copy; else start one (it replaces the flight).
    Fresh,
}

/// Where settled data came from.
pub(crate) enum Source {
    /// The entry's own fetch: stamped now, stale if an invalidation came meanwhile.
    Fetch,
    /// The second tier, a peer's result or a snapshot: its stamp and age are kept.
    Stored {
        at: SystemTime,
        invalidated: bool,
        age: Duration,
    },
}

/// Something that happens to an entry.
pub(crate) enum Event<'a, T> {
    /// A new entry: born unused, so born collectable. `hydrated`: there is nothing
    /// stored to read for it (no second tier, no snapshot item waiting), so its first
    /// fetch goes straight to the fetch function.
    Born { hydrated: bool },
    /// A typed call (`fetch_query` and friends, an observer's first fetch) asks for data.
    Ask(Ask<'a, T>),
    /// A background refresh after a stale hydration (unless a fetch is in flight). Sent
    /// only where a fetch can be spawned.
    Refresh { opts: &'a QueryOptions<T> },
    /// An observer joins.
    Attach {
        watcher: Watcher,
        opts: &'a QueryOptions<T>,
        gc_time: Duration,
    },
    /// An observer leaves.
    Detach {
        listener: &'a Arc<dyn EntryListener>,
    },
    /// One attempt of `flight` failed (a retry may follow).
    AttemptFailed {
        flight: &'a Arc<Flight<T>>,
        error: QueryError,
    },
    /// `flight` ended with `result`, from `source`; stored data is written behind when
    /// `write` (a fetch's own result; the cluster's lease holder writes it itself).
    /// `weight`: the weight of the data in `result` (weighed before, with no lock held).
    Settled {
        flight: &'a Arc<Flight<T>>,
        result: FetchResult<T>,
        weight: u32,
        source: Source,
        write: bool,
    },
    /// An item of `flight`'s stream arrived (a streamed query, `stream.rs`): the entry
    /// shows `data` now, while the fetch goes on. `None`: the stream restarts from
    /// nothing (refetch mode reset): the data is cleared and the query is pending again.
    /// Taken only while `flight` is the entry's and no manual write came since it began
    /// (`Yes`); otherwise `No`, and the stream stops. Never written behind: the fetch's
    /// settled result is.
    Streamed {
        flight: &'a Arc<Flight<T>>,
        data: Option<Arc<T>>,
        weight: u32,
    },
    /// A manual write; with `expect`, only if the entry still holds that data at that data
    /// generation (a compare-and-write).
    Write {
        data: Arc<T>,
        weight: u32,
        expect: Option<(Option<&'a Arc<T>>, u64)>,
    },
    /// Initial data (`QueryOptions::initial_data`), stamped `at`, `age` old: taken only
    /// by an entry that holds no data. It does not supersede a fetch in flight.
    Seed {
        data: Arc<T>,
        weight: u32,
        at: SystemTime,
        age: Duration,
    },
    /// A snapshot item: taken only if newer than the data held.
    Restore {
        data: Arc<T>,
        weight: u32,
        at: SystemTime,
        invalidated: bool,
    },
    /// `invalidate_queries`: stale now; the entries `refetch` covers refetch (a fetch in
    /// flight is replaced: it began before the invalidation).
    Invalidate {
        can_spawn: bool,
        refetch: RefetchType,
    },
    /// `refetch_queries`: refetch unless disabled (joining a fetch in flight).
    Refetch { can_spawn: bool },
    /// `cancel_queries`: the fetch in flight ends as cancelled.
    Cancel,
    /// `reset_queries`: back to the initial state. The fetch in flight, if any, is
    /// detached: its cancellation token goes into `cancel`, for the caller to fire.
    Reset {
        cancel: &'a mut Option<CancellationToken>,
    },
    /// The entry left the cache: nothing writes into it or schedules work for it again.
    /// (Called under the cache's lock: it tells nobody.) The fetch in flight, if any, is
    /// detached: its cancellation token goes into `cancel`, for the cache to fire once
    /// its lock is released.
    ///
    /// (The token comes back through the event rather than in the answer or the effects:
    /// a field there would grow what every transition writes.)
    Remove {
        cancel: &'a mut Option<CancellationToken>,
    },
    /// After `Remove`, with no lock held: the observers hear that the entry is gone.
    TellRemoved,
    /// Another instance changed the key: stale, maybe reload from the shared tier, and an
    /// active idle entry refetches now (`refetch_now`) or is reported for a later refetch.
    RemoteChange {
        reload: Reload,
        refetch_now: bool,
        can_spawn: bool,
    },
    /// The stale timer fired: observers recompute, the timer moves on.
    StaleTimerFired { at: Instant },
    /// The gc timer fired at `now`.
    GcTimerFired { fired_at: Instant, now: Instant },
}

/// What a typed call asks of an entry.
pub(crate) struct Ask<'a, T> {
    pub(crate) opts: &'a QueryOptions<T>,
    pub(crate) stale_time: Duration,
    pub(crate) gc_time: Duration,
    pub(crate) mode: Mode,
    /// Go on even if the entry left the cache (the caller gave up looking it up again).
    pub(crate) even_if_removed: bool,
    /// A fetch can be spawned (a runtime is present).
    pub(crate) can_spawn: bool,
}

/// What a typed call got.
pub(crate) enum Step<T> {
    /// Data from the cache: `fresh` is false for a stale hit.
    Ready { data: Arc<T>, fresh: bool },
    /// Wait for a flight (`joined`: one already in flight).
    Wait {
        flight: Arc<Flight<T>>,
        joined: bool,
    },
}

/// What the gc does when an entry's timer fires.
pub(crate) enum GcVerdict {
    Collect,
    Rearm(Instant),
    Keep,
}

/// The answer of a transition to its caller (the effects are separate).
pub(crate) enum Outcome<T> {
    /// Nothing to report.
    Done,
    /// The entry has left the cache (an `Ask` without `even_if_removed`).
    Removed,
    Step(Step<T>),
    /// A fetch could not start: `Ask` fails with it.
    Failed(QueryError),
    /// A flight to wait on (`Invalidate`, `Refetch`, `Cancel`). After `Cancel`, the caller
    /// fires its cancellation token (see `FetchContext`) and stops its task.
    Flight(Arc<Flight<T>>),
    /// `Attach`: joined; `Write`: written; `Settled`: data stored; `RemoteChange` without
    /// `refetch_now`: the entry should refetch later.
    Yes,
    /// The opposite of `Yes`.
    No,
    Gc(GcVerdict),
    /// `Remove`: the timers the entry had armed (the caller drops them from the queue)
    /// and the weight the cache counted for it (the caller takes it off the total).
    Deadlines {
        gc: Option<Instant>,
        stale: Option<Instant>,
        weight: u32,
    },
}

/// A fetch to start (the engine spawns its task).
pub(crate) struct StartFetch<T> {
    pub(crate) flight: Arc<Flight<T>>,
    pub(crate) opts: QueryOptions<T>,
    /// The token of the streamed fetch this one replaced (a refetch restarts a stream):
    /// the engine fires it, with no lock held, so the old stream stops. (In the boxed
    /// fetch effect: transitions that start no fetch do not carry it.)
    pub(crate) replaced: Option<CancellationToken>,
    /// Read the second tier first, with this reload rule, if the query is persisted and
    /// something can be read (`None`: go straight to the fetch function).
    pub(crate) hydrate: Option<Reload>,
}

/// An entry's deadline timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// When the gc may collect the entry.
    Gc,
    /// When its data turns stale for one of its observers.
    Stale,
}

/// A timer moved: (which, armed before at, armed now at); `None` now disarms.
pub(super) type TimerChange = (Timer, Option<Instant>, Option<Instant>);

/// Where a cell applies its timer changes (the client's timer queue, keyed by entry).
///
/// Each call names the deadline the timer was armed at before (`previous`): the machine
/// records it, so the queue needs no map from timer to deadline to move or drop it.
pub(crate) trait TimerSink {
    fn arm(&self, timer: Timer, previous: Option<Instant>, at: Instant);
    fn disarm(&self, timer: Timer, previous: Instant);
    /// The weight the cache counts for the entry changed by `delta` (the cache's total
    /// follows). Applied under the entry's lock like the timers, so the entry's removal,
    /// which takes its whole weight off the total, always comes after every change it
    /// counted: the total never dips below what the entries in memory weigh.
    fn add_weight(&self, delta: i64);
}

/// What the engine runs after a transition, in this order: start the fetch, write behind,
/// announce, notify, wake the settled flight's waiters.
pub(crate) struct Effects<T> {
    /// Timer changes (applied by [`Cell::transition`] under the lock).
    pub(super) timers: [Option<TimerChange>; 2],
    /// Boxed: most transitions start no fetch, and the effects are moved around.
    pub(crate) fetch: Option<Box<StartFetch<T>>>,
    /// Write the entry's state to the second tier.
    pub(crate) write: bool,
    /// Tell the other instances what the write did (a manual write: `Set`).
    pub(crate) announce: bool,
    /// Observers to tell that the state changed.
    pub(crate) notify: Option<Listeners>,
    /// Observers to tell that the entry left the cache.
    pub(crate) removed: Option<Listeners>,
    /// Wake the waiters of a settled (or cancelled) flight with its result.
    pub(crate) resolve: Option<(Arc<Flight<T>>, FetchResult<T>)>,
    /// The entry's data was used (a read or an overwrite): a second chance for eviction.
    pub(crate) used: bool,
    /// The gc deadline restarts if nothing uses the entry (internal to the transition).
    pub(super) arm_gc: bool,
    /// Change of the weight the cache counts for the entry (applied by
    /// [`Cell::transition`] under the lock; 0 on a client without a weight bound).
    pub(super) weight_delta: i64,
}

impl<T> Default for Effects<T> {
    fn default() -> Self {
        Effects {
            timers: [None, None],
            fetch: None,
            write: false,
            announce: false,
            notify: None,
            removed: None,
            resolve: None,
            used: false,
            arm_gc: false,
            weight_delta: 0,
        }
    }
}

/// What a persisted write of the entry carries (read by the engine after a transition).
pub(crate) struct Persisted<T> {
    pub(crate) data: Arc<T>,
    pub(crate) at: SystemTime,
    pub(crate) invalidated: bool,
    pub(crate) gc_time: Duration,
}
