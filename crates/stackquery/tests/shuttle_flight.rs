//! Concurrency model checking of the in-flight / deduplication / notification machinery
//! with shuttle (a randomized, PCT-capable scheduler for ordinary std-style code).
//!
//! Two layers are checked:
//!
//! 1. **The real code** of the flight's one-shot cell, `src/flight/slot.rs`: this test
//!    compiles that very file (`#[path]`) against a `crate::sync` backed by shuttle, so the
//!    scheduler can preempt at every lock. Properties: exactly one `resolve` wins, every
//!    waiter is woken with that one result, a waiter dropped at any point leaves nothing
//!    registered, no deadlock.
//! 2. **The real entry state machine**, `src/entry/machine/` (with the real
//!    `flight.rs`, `state.rs`, `error.rs` and `deadline.rs` it is built from): its `Cell`
//!    takes the shuttle lock, so every transition — ask, settle, cancel, invalidate, manual
//!    write, attach — can be preempted anywhere. The harness plays the engine's part
//!    (`engine/run.rs`): it runs the returned effects in the engine's order (start the
//!    fetch as a task, notify, wake the waiters), with no lock held. Properties: exactly
//!    one fetch per generation, every caller returns, every flight settles, no deadlock (a
//!    listener reads the entry back, which would deadlock if notification ran under the
//!    lock), a fetch never overwrites a newer manual write, no lost final state (the
//!    observer's last delivered version is the entry's last), and the weight the cache
//!    was told about always adds up to the weight of the data the entry ends with.
//!
//! Fast: a few thousand schedules per check (random + PCT). `STACKQUERY_DEEP=1`: 100,000
//! random and 20,000 PCT schedules per check. `STACKQUERY_SHUTTLE_ITERS=N` overrides.
//! A failure prints the schedule; replay it with `shuttle::replay`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use shuttle::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

/// The shuttle side of the `crate::sync` facade (see `src/sync.rs`): the same API as
/// `parking_lot::Mutex` (a `lock` that cannot be poisoned).
mod sync {
    pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(shuttle::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> shuttle::sync::MutexGuard<'_, T> {
            self.0.lock().expect("not poisoned")
        }
    }
}

// The real modules the entry's state machine is built from, compiled against the
// shuttle-backed `crate::sync` above. Only the query options are a stand-in: the machine
// stores them and compares them (`same_as`), nothing more.
#[allow(dead_code, unreachable_pub)]
#[path = "../src/notify/cow_list.rs"]
mod cow_list;
#[allow(dead_code, unreachable_pub)]
#[path = "../src/deadline.rs"]
mod deadline;
#[allow(dead_code, unreachable_pub)]
#[path = "../src/error.rs"]
mod error;
#[allow(dead_code, unreachable_pub)]
#[path = "../src/flight/mod.rs"]
mod flight;
#[allow(dead_code, unreachable_pub)]
#[path = "../src/host.rs"]
mod host;
#[allow(dead_code, unreachable_pub)]
#[path = "../src/entry/machine/mod.rs"]
mod machine;
#[allow(dead_code, unreachable_pub)]
#[path = "../src/refetch.rs"]
mod refetch;
#[allow(dead_code, unreachable_pub)]
#[path = "../src/state.rs"]
mod state;
/// The part of `src/notify/` the machine uses: its copy-on-write listener list (the real
/// file, above).
mod notify {
    pub(crate) use super::cow_list::{CowList, Snapshot};
}

/// Stand-in for `src/options.rs` (which pulls in retries, keys and storage): the machine
/// only clones the options it is given and compares them with `same_as`.
mod options {
    pub(crate) struct QueryOptions<T>(std::marker::PhantomData<T>);

    impl<T> Clone for QueryOptions<T> {
        fn clone(&self) -> Self {
            QueryOptions(std::marker::PhantomData)
        }
    }

    impl<T> QueryOptions<T> {
        pub(crate) fn new() -> Self {
            QueryOptions(std::marker::PhantomData)
        }
        pub(crate) fn same_as(&self, _: &Self) -> bool {
            true
        }
        /// The harness's fetches take no context: their flights carry no token.
        pub(crate) fn one_off(&self) -> bool {
            false
        }
        pub(crate) fn takes_context(&self) -> bool {
            false
        }
        /// Nor is any of them streamed.
        pub(crate) fn is_streamed(&self) -> bool {
            false
        }
    }
}

/// Stand-in for `src/storage/error.rs`: `error.rs` names it for `QueryError::Storage`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("storage stand-in")]
pub(crate) struct StorageError;

use flight::slot::Slot;

fn deep() -> bool {
    std::env::var("STACKQUERY_DEEP").is_ok_and(|v| v != "0" && !v.is_empty())
}

/// Schedules per check: (random, pct).
fn iterations() -> (usize, usize) {
    if let Some(n) = std::env::var("STACKQUERY_SHUTTLE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return (n, n / 5);
    }
    if deep() {
        (100_000, 20_000)
    } else {
        (2_000, 500)
    }
}

/// Schedules explored by this test binary (printed with `--nocapture`).
static SCHEDULES: AtomicU64 = AtomicU64::new(0);

fn explore(name: &str, f: impl Fn() + Send + Sync + 'static) {
    let (random, pct) = iterations();
    let f = Arc::new(f);
    let g = f.clone();
    shuttle::check_random(move || f(), random);
    // PCT finds bugs that need a few specific preemptions with far fewer schedules.
    shuttle::check_pct(move || g(), pct, 3);
    let n = (random + pct) as u64;
    SCHEDULES.fetch_add(n, Relaxed);
    eprintln!(
        "shuttle {name}: {n} schedules explored ({} so far in this binary)",
        SCHEDULES.load(Relaxed)
    );
}

// ---------------------------------------------------------------------------------------
// 1. The real one-shot cell
// ---------------------------------------------------------------------------------------

/// Two resolvers race; three waiters wait; one waiter is abandoned after its first poll
/// (on its own thread, racing the resolvers). Exactly one result wins, every waiter gets
/// it, and no registration is left behind.
#[test]
fn slot_one_result_for_every_waiter() {
    explore("slot_one_result_for_every_waiter", || {
        let slot = Arc::new(Slot::<u32>::new());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = slot.clone();
                shuttle::future::spawn(async move { s.wait().await })
            })
            .collect();
        let abandoned = {
            let s = slot.clone();
            shuttle::thread::spawn(move || {
                shuttle::future::block_on(async {
                    let mut w = Box::pin(s.wait());
                    let first = futures::poll!(w.as_mut());
                    drop(w);
                    first
                })
            })
        };
        let resolvers: Vec<_> = [1, 2]
            .into_iter()
            .map(|v| {
                let s = slot.clone();
                shuttle::thread::spawn(move || s.resolve(v))
            })
            .collect();
        let won: Vec<bool> = resolvers.into_iter().map(|r| r.join().unwrap()).collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "exactly one resolve wins"
        );
        let winner = if won[0] { 1 } else { 2 };
        for w in waiters {
            assert_eq!(shuttle::future::block_on(w).unwrap(), winner);
        }
        if let std::task::Poll::Ready(v) = abandoned.join().unwrap() {
            assert_eq!(v, winner);
        }
        assert!(slot.is_resolved());
        assert_eq!(slot.waiters(), 0, "no registration left behind");
        // A late waiter gets the result at once.
        assert_eq!(shuttle::future::block_on(slot.wait()), winner);
    });
}

/// Waiters come and go (drop after one poll, re-wait) while the result is published:
/// index reuse in the waiter table never loses or misdirects a wake-up.
#[test]
fn slot_waiters_dropping_and_rejoining_are_never_lost() {
    explore("slot_waiters_dropping_and_rejoining", || {
        let slot = Arc::new(Slot::<u32>::new());
        let churn: Vec<_> = (0..2)
            .map(|_| {
                let s = slot.clone();
                shuttle::future::spawn(async move {
                    // Abandon one wait, then wait for real (reusing the freed index).
                    let mut w = Box::pin(s.wait());
                    if let std::task::Poll::Ready(v) = futures::poll!(w.as_mut()) {
                        return v;
                    }
                    drop(w);
                    shuttle::future::yield_now().await;
                    s.wait().await
                })
            })
            .collect();
        let s = slot.clone();
        let resolver = shuttle::thread::spawn(move || s.resolve(7));
        for c in churn {
            assert_eq!(shuttle::future::block_on(c).unwrap(), 7);
        }
        assert!(resolver.join().unwrap());
        assert_eq!(slot.waiters(), 0);
    });
}

// ---------------------------------------------------------------------------------------
// 2. The real entry state machine
// ---------------------------------------------------------------------------------------

use machine::{
    Ask, Cell, EntryListener, Event, Machine, Mode, Outcome, Source, Step, Timer, TimerSink,
    Watcher,
};
use std::time::Duration;

/// The harness has no timer queue (timer changes are checked by the unit tests); it sums
/// the weight changes the cell reports, as the cache's total would.
#[derive(Default)]
struct Weights(std::sync::atomic::AtomicI64);

impl TimerSink for Weights {
    fn arm(&self, _: Timer, _: Option<tokio::time::Instant>, _: tokio::time::Instant) {}
    fn disarm(&self, _: Timer, _: tokio::time::Instant) {}
    fn add_weight(&self, delta: i64) {
        self.0.fetch_add(delta, Relaxed);
    }
}

type Value = u64;

/// The weight of a value, as a weigher would give it (values are small: no truncation).
fn weight_of(v: Value) -> u32 {
    v as u32
}

/// What the fetch of the flight begun at step `seq` of the history returns: the final
/// data tells which flight produced it, and when that flight began.
fn fetched_value(seq: u64) -> Value {
    1000 + seq
}

/// The order in which transitions took effect. Recorded under a harness lock held around
/// the cell's transition (which is atomic under the cell's own lock anyway), so the
/// recorded order is the machine's.
#[derive(Default)]
struct History {
    steps: u64,
    /// The step of the manual write, if one ran.
    write_at: Option<u64>,
    /// The step of the last invalidation, if one ran.
    invalidated_at: Option<u64>,
    /// (step, data_gen, inval_gen) of every flight begun.
    begun: Vec<(u64, u64, u64)>,
}

/// One entry and the engine's part around it.
struct Harness {
    cell: Cell<Value>,
    opts: options::QueryOptions<Value>,
    /// Times the "fetch function" ran.
    fetch_calls: AtomicUsize,
    history: shuttle::sync::Mutex<History>,
    /// The fetch tasks, joined before the final checks.
    tasks: shuttle::sync::Mutex<Vec<shuttle::future::JoinHandle<()>>>,
    /// The weight total the cell's transitions reported.
    weights: Weights,
}

impl Harness {
    fn new() -> Arc<Self> {
        Arc::new(Harness {
            cell: Cell::new(Machine::new(Duration::MAX, Duration::MAX)),
            opts: options::QueryOptions::new(),
            fetch_calls: AtomicUsize::new(0),
            history: shuttle::sync::Mutex::new(History::default()),
            tasks: shuttle::sync::Mutex::new(Vec::new()),
            weights: Weights::default(),
        })
    }

    /// `Shared::dispatch`: the transition under the cell's lock, then its effects in the
    /// engine's order with no lock held.
    fn dispatch(self: &Arc<Self>, event: Event<'_, Value>) -> Outcome<Value> {
        let is_write = matches!(event, Event::Write { .. });
        let is_invalidation = matches!(event, Event::Invalidate { .. });
        let (fx, outcome, seq) = {
            let mut history = self.history.lock().unwrap();
            let mut fx = machine::Effects::default();
            let clock = tokio::time::Instant::now;
            let now = deadline::Now::new(&clock);
            let outcome = self.cell.transition(event, &now, &mut fx, &self.weights);
            let seq = history.steps;
            history.steps += 1;
            if is_write {
                history.write_at = Some(seq);
            }
            if is_invalidation {
                history.invalidated_at = Some(seq);
            }
            if let Some(start) = &fx.fetch {
                let f = &start.flight;
                history.begun.push((seq, f.data_gen(), f.inval_gen));
            }
            (fx, outcome, seq)
        };
        if let Some(start) = fx.fetch {
            let f = start.flight;
            // `run_flight` as its own task.
            let h = self.clone();
            let task = shuttle::future::spawn(async move {
                if f.is_resolved() {
                    return; // cancelled before it ran
                }
                h.fetch_calls.fetch_add(1, SeqCst);
                shuttle::future::yield_now().await;
                let event = Event::Settled {
                    flight: &f,
                    result: Ok(Arc::new(fetched_value(seq))),
                    weight: weight_of(fetched_value(seq)),
                    source: Source::Fetch,
                    write: false,
                };
                h.dispatch(event);
            });
            self.tasks.lock().unwrap().push(task);
        }
        for w in fx.notify.iter().flat_map(|l| l.iter()) {
            w.listener.changed();
        }
        if let Some((flight, result)) = fx.resolve {
            flight.resolve(result);
        }
        outcome
    }

    /// `fetch_query`: stale-while-revalidate (with an infinite stale time, fresh means
    /// "not invalidated").
    async fn fetch(self: &Arc<Self>) -> Result<Value, error::QueryError> {
        self.ask(Mode::Swr).await
    }

    /// `fetch_query_fresh`: fresh data, else a fetch that began after the invalidation.
    async fn fetch_fresh(self: &Arc<Self>) -> Result<Value, error::QueryError> {
        self.ask(Mode::Fresh).await
    }

    async fn ask(self: &Arc<Self>, mode: Mode) -> Result<Value, error::QueryError> {
        let event = Event::Ask(Ask {
            opts: &self.opts,
            stale_time: Duration::MAX,
            gc_time: Duration::MAX,
            mode,
            even_if_removed: false,
            can_spawn: true,
        });
        match self.dispatch(event) {
            Outcome::Step(Step::Ready { data, .. }) => Ok(*data),
            Outcome::Step(Step::Wait { flight, .. }) => flight.wait().await.map(|v| *v),
            _ => panic!("unexpected outcome of a fetch"),
        }
    }

    fn cancel(self: &Arc<Self>) {
        self.dispatch(Event::Cancel);
    }

    /// `invalidate_queries` of an observed entry: it refetches; waits for that fetch.
    async fn invalidate(self: &Arc<Self>) {
        self.invalidate_with(refetch::RefetchType::Active).await;
    }

    /// `invalidate_queries_with`: refetches if `refetch` covers the entry; waits for that.
    async fn invalidate_with(self: &Arc<Self>, refetch: refetch::RefetchType) {
        let event = Event::Invalidate {
            can_spawn: true,
            refetch,
        };
        if let Outcome::Flight(f) = self.dispatch(event) {
            let _ = f.wait().await;
        }
    }

    fn set(self: &Arc<Self>, v: Value) {
        let event = Event::Write {
            data: Arc::new(v),
            weight: weight_of(v),
            expect: None,
        };
        self.dispatch(event);
    }

    /// Waits for every fetch task (including ones started while waiting) to finish its
    /// settle *and* the notification after it.
    fn join_tasks(&self) {
        loop {
            let task = self.tasks.lock().unwrap().pop();
            match task {
                Some(t) => shuttle::future::block_on(t).unwrap(),
                None => return,
            }
        }
    }

    fn seen(&self) -> Seen {
        self.cell.read(|m| {
            let s = m.snapshot(None, tokio::time::Instant::now());
            Seen {
                version: m.version(),
                data: s.data.as_deref().copied(),
                fetching: s.is_fetching(),
            }
        })
    }
}

/// A snapshot as an observer's listener sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    version: u64,
    data: Option<Value>,
    fetching: bool,
}

/// An observer: whoever holds the delivery slot drains `pending`; a change that arrives
/// meanwhile is picked up by the same loop before the slot is released. Its "listener"
/// reads the entry back, as user code may.
struct Observer {
    harness: std::sync::Weak<Harness>,
    pending: AtomicBool,
    delivering: shuttle::sync::Mutex<()>,
    last: shuttle::sync::Mutex<Option<Seen>>,
    deliveries: AtomicUsize,
}

impl EntryListener for Observer {
    fn changed(&self) {
        let Some(h) = self.harness.upgrade() else {
            return;
        };
        self.pending.store(true, SeqCst);
        loop {
            let Ok(slot) = self.delivering.try_lock() else {
                return; // the holder will see `pending`
            };
            while self.pending.swap(false, SeqCst) {
                // Would deadlock if notification ran under the entry's lock.
                let seen = h.seen();
                let mut last = self.last.lock().unwrap();
                if let Some(prev) = *last {
                    assert!(
                        prev.version <= seen.version,
                        "states delivered out of order"
                    );
                }
                *last = Some(seen);
                self.deliveries.fetch_add(1, SeqCst);
            }
            drop(slot);
            if !self.pending.load(SeqCst) {
                return;
            }
        }
    }
    fn removed(&self) {}
}

/// An entry with one enabled observer attached through the machine (`Event::Attach`).
fn observed_entry() -> (Arc<Harness>, Arc<Observer>) {
    let h = Harness::new();
    let observer = Arc::new(Observer {
        harness: Arc::downgrade(&h),
        pending: AtomicBool::new(false),
        delivering: shuttle::sync::Mutex::new(()),
        last: shuttle::sync::Mutex::new(None),
        deliveries: AtomicUsize::new(0),
    });
    let watcher = Watcher {
        listener: observer.clone(),
        enabled: true,
        stale_time: Duration::MAX,
    };
    let opts = h.opts.clone();
    let attached = h.dispatch(Event::Attach {
        watcher,
        opts: &opts,
        gc_time: Duration::MAX,
    });
    assert!(matches!(attached, Outcome::Yes));
    (h, observer)
}

/// After everything has run: no fetch is current, and the observer was told the final
/// state.
fn assert_quiescent(h: &Harness, observer: &Observer) {
    let now = h.seen();
    assert!(!now.fetching, "a flight never settled");
    let last = observer.last.lock().unwrap().expect("observer told");
    assert_eq!(last, now, "lost final state");
    // Whichever store won, the weight reported for it replaced every earlier one.
    let counted = h.weights.0.load(Relaxed);
    assert_eq!(
        counted,
        i64::from(now.data.map_or(0, weight_of)),
        "weight total drifted"
    );
}

/// Three callers on two threads and a task race on a cold key: exactly one fetch, one
/// value for all, the observer ends on the final state.
#[test]
fn entry_concurrent_callers_share_one_fetch() {
    explore("entry_concurrent_callers_share_one_fetch", || {
        let (h, observer) = observed_entry();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                shuttle::thread::spawn(move || shuttle::future::block_on(h.fetch()))
            })
            .collect();
        let h2 = h.clone();
        let task = shuttle::future::spawn(async move { h2.fetch().await });
        let mut results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        results.push(shuttle::future::block_on(task).unwrap());
        // The fetch task may still be notifying (callers return once the cell resolves).
        h.join_tasks();
        assert_eq!(h.fetch_calls.load(SeqCst), 1, "exactly one fetch");
        let (seq, _, _) = h.history.lock().unwrap().begun[0];
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(v) if *v == fetched_value(seq))),
            "{results:?}"
        );
        assert_quiescent(&h, &observer);
    });
}

/// Callers race a cancel: every caller returns (the value of the flight it joined, or
/// `Cancelled`), every flight that ran its fetch ran it once, and nothing hangs.
#[test]
fn entry_cancel_races_callers() {
    explore("entry_cancel_races_callers", || {
        let (h, observer) = observed_entry();
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                shuttle::thread::spawn(move || shuttle::future::block_on(h.fetch()))
            })
            .collect();
        let h2 = h.clone();
        let canceller = shuttle::thread::spawn(move || h2.cancel());
        canceller.join().unwrap();
        let results: Vec<_> = callers.into_iter().map(|t| t.join().unwrap()).collect();
        h.join_tasks();
        let begun = h.history.lock().unwrap().begun.clone();
        assert!(
            h.fetch_calls.load(SeqCst) <= begun.len(),
            "a fetch ran twice"
        );
        // One cancel can end at most one flight early, so at most two begin.
        assert!(begun.len() <= 2, "{begun:?}");
        for r in &results {
            match r {
                Ok(v) => assert!(
                    begun.iter().any(|b| fetched_value(b.0) == *v),
                    "{r:?} is no flight's value"
                ),
                Err(error::QueryError::Cancelled) => {}
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        assert_quiescent(&h, &observer);
    });
}

/// A caller, an invalidation (observed entry: it refetches, replacing the flight) and a
/// manual write race. Exactly one fetch per invalidation generation; a fetch that began
/// before the manual write never overwrites it; the final state reaches the observer.
#[test]
fn entry_invalidate_and_manual_write_race_a_caller() {
    explore("entry_invalidate_and_manual_write_race_a_caller", || {
        let (h, observer) = observed_entry();
        let h2 = h.clone();
        let caller = shuttle::thread::spawn(move || shuttle::future::block_on(h2.fetch()));
        let h2 = h.clone();
        let invalidator = shuttle::future::spawn(async move { h2.invalidate().await });
        let h2 = h.clone();
        let writer = shuttle::thread::spawn(move || h2.set(7));
        let got = caller.join().unwrap();
        shuttle::future::block_on(invalidator).unwrap();
        writer.join().unwrap();
        h.join_tasks();
        let history = h.history.lock().unwrap();
        let begun = history.begun.clone();
        let write_at = history.write_at.expect("the write ran");
        drop(history);
        let mut gens: Vec<u64> = begun.iter().map(|b| b.2).collect();
        let n = gens.len();
        gens.sort_unstable();
        gens.dedup();
        assert_eq!(gens.len(), n, "two fetches of one generation: {begun:?}");
        assert!(got.is_ok(), "{got:?}");
        // The newest data: the write, or a fetch that began after it.
        let data = *h.cell.read(|m| m.data().cloned()).expect("data");
        if data != 7 {
            assert!(
                data - 1000 > write_at,
                "a fetch begun before the manual write overwrote it"
            );
        }
        assert_quiescent(&h, &observer);
    });
}

/// Read-your-writes after an invalidation, on an entry nobody observes: a fetch begins
/// (a cold read), an invalidation that refetches nothing races it, and a fresh read
/// follows the invalidation on the same thread while another fresh read races both. The
/// read made after the invalidation returned never gets a value fetched before it (it does
/// not join the older flight), fresh reads that follow the invalidation share one fetch,
/// and every caller returns.
#[test]
fn entry_fresh_read_after_an_invalidation_never_gets_older_data() {
    explore("entry_fresh_read_after_an_invalidation", || {
        let h = Harness::new();
        // A client with no second tier: every flight delivers fetched data.
        h.dispatch(Event::Born { hydrated: true });
        let h2 = h.clone();
        let cold = shuttle::thread::spawn(move || shuttle::future::block_on(h2.fetch()));
        let h2 = h.clone();
        let racer = shuttle::thread::spawn(move || shuttle::future::block_on(h2.fetch_fresh()));
        let h2 = h.clone();
        let after = shuttle::thread::spawn(move || {
            shuttle::future::block_on(async {
                h2.invalidate_with(refetch::RefetchType::None).await;
                h2.fetch_fresh().await
            })
        });
        let got = after.join().unwrap().expect("fetched");
        assert!(cold.join().unwrap().is_ok());
        assert!(racer.join().unwrap().is_ok());
        h.join_tasks();
        let history = h.history.lock().unwrap();
        let invalidated_at = history.invalidated_at.expect("the invalidation ran");
        assert!(
            got - 1000 > invalidated_at,
            "the fresh read got {got}, fetched before the invalidation at step {invalidated_at}"
        );
        // At most: the cold fetch, one begun by the racer before the invalidation, and one
        // after it (shared by every fresh read that follows the invalidation).
        let after_it = history
            .begun
            .iter()
            .filter(|b| b.0 > invalidated_at)
            .count();
        assert_eq!(after_it, 1, "{:?}", history.begun);
        drop(history);
        assert_eq!(
            h.fetch_calls.load(SeqCst),
            h.history.lock().unwrap().begun.len()
        );
    });
}

/// Writes from many threads at once: the observer is never told states out of order and
/// always ends on the last one.
#[test]
fn observer_drain_loop_never_loses_the_last_change() {
    explore("observer_drain_loop_never_loses_the_last_change", || {
        let (h, observer) = observed_entry();
        let writers: Vec<_> = (0..3)
            .map(|i| {
                let h = h.clone();
                shuttle::thread::spawn(move || {
                    h.set(i);
                    h.set(i + 10);
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_quiescent(&h, &observer);
        assert!(observer.deliveries.load(SeqCst) >= 1);
    });
}
