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
//! 2. **A replica of the entry protocol** around it (`entry.rs`: `step` / `begin_flight` /
//!    `settle` / `typed_cancel` / `typed_invalidate` / `set_data`, and `EntryGuard`'s
//!    notify-after-unlock; `observer.rs`: the `deliver` drain loop with its `pending` flag
//!    and `try_lock`ed delivery slot), built on the real cell. Properties: exactly one fetch
//!    per generation, every caller returns, every flight settles, no deadlock (a listener
//!    reads the entry back, which would deadlock if notification ran under the lock), and
//!    no lost final state (the observer's last delivered version is the entry's last).
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

#[allow(dead_code, unreachable_pub)]
#[path = "../src/flight/slot.rs"]
mod slot;

use slot::Slot;

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
// 2. A replica of the entry protocol, on the real cell
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FetchErr {
    Cancelled,
}

type FetchResult = Result<u64, FetchErr>;

struct Flight {
    id: u64,
    slot: Slot<FetchResult>,
    data_gen: u64,
    inval_gen: u64,
}

/// What a bulk operation started a flight for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Caller,
    Invalidate,
}

struct EntryInner {
    data: Option<u64>,
    fetching: bool,
    invalidated: bool,
    flight: Option<Arc<Flight>>,
    data_gen: u64,
    inval_gen: u64,
    /// Bumped on every state change (`EntryInner::apply`).
    version: u64,
    listeners: Vec<Arc<Observer>>,
    next_flight: u64,
    /// Every flight begun: (data_gen, inval_gen, why).
    begun: Vec<(u64, u64, Why)>,
}

struct Entry {
    inner: shuttle::sync::Mutex<EntryInner>,
    /// Times the "fetch function" ran.
    fetch_calls: AtomicUsize,
    /// The fetch tasks, joined before the final checks.
    tasks: shuttle::sync::Mutex<Vec<shuttle::future::JoinHandle<()>>>,
}

enum Step {
    Ready(u64),
    Wait(Arc<Flight>),
}

/// A snapshot as an observer's listener sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    version: u64,
    data: Option<u64>,
    fetching: bool,
}

impl Entry {
    fn new() -> Arc<Self> {
        Arc::new(Entry {
            inner: shuttle::sync::Mutex::new(EntryInner {
                data: None,
                fetching: false,
                invalidated: false,
                flight: None,
                data_gen: 0,
                inval_gen: 0,
                version: 0,
                listeners: Vec::new(),
                next_flight: 1,
                begun: Vec::new(),
            }),
            fetch_calls: AtomicUsize::new(0),
            tasks: shuttle::sync::Mutex::new(Vec::new()),
        })
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

    /// `Entry::lock` + `EntryGuard`: change under the lock; if the version moved, release
    /// the lock first and then tell every listener.
    fn with<R>(self: &Arc<Self>, f: impl FnOnce(&Arc<Self>, &mut EntryInner) -> R) -> R {
        let (r, listeners) = {
            let mut g = self.inner.lock().unwrap();
            let before = g.version;
            let r = f(self, &mut g);
            let listeners = if g.version != before {
                g.listeners.clone()
            } else {
                Vec::new()
            };
            (r, listeners)
        };
        for l in listeners {
            l.changed(self);
        }
        r
    }

    fn snapshot(&self) -> Seen {
        let g = self.inner.lock().unwrap();
        Seen {
            version: g.version,
            data: g.data,
            fetching: g.fetching,
        }
    }

    /// `begin_flight`, under the entry lock: the only place a fetch starts.
    fn begin(self: &Arc<Self>, g: &mut EntryInner, why: Why) -> Arc<Flight> {
        if let Some(current) = &g.flight {
            // A second fetch while one is current only for a newer invalidation.
            assert_eq!(why, Why::Invalidate, "a caller started a second fetch");
            assert!(
                current.inval_gen < g.inval_gen,
                "same generation fetched twice"
            );
        }
        let flight = Arc::new(Flight {
            id: g.next_flight,
            slot: Slot::new(),
            data_gen: g.data_gen,
            inval_gen: g.inval_gen,
        });
        g.next_flight += 1;
        g.begun.push((g.data_gen, g.inval_gen, why));
        g.fetching = true;
        g.flight = Some(flight.clone());
        g.version += 1;
        // `run_flight` as its own task; the guard settles it as cancelled if dropped.
        let entry = self.clone();
        let f = flight.clone();
        let task = shuttle::future::spawn(async move {
            entry.fetch_calls.fetch_add(1, SeqCst);
            shuttle::future::yield_now().await;
            entry.settle(&f, Ok(f.id * 100));
        });
        self.tasks.lock().unwrap().push(task);
        flight
    }

    /// `settle`: update the entry only if the flight is still current, then wake waiters.
    fn settle(self: &Arc<Self>, flight: &Arc<Flight>, result: FetchResult) {
        self.with(|_, g| {
            let current = g.flight.as_ref().is_some_and(|f| Arc::ptr_eq(f, flight));
            if !current {
                return;
            }
            g.flight = None;
            g.fetching = false;
            match result {
                Ok(v) if g.data_gen == flight.data_gen => {
                    g.data = Some(v);
                    g.invalidated = g.inval_gen != flight.inval_gen;
                }
                Ok(_) | Err(FetchErr::Cancelled) => {}
            }
            g.version += 1;
        });
        flight.slot.resolve(result);
    }

    /// `fetch_query` (stale-while-revalidate, no clock: fresh = not invalidated).
    async fn fetch(self: &Arc<Self>) -> FetchResult {
        let step = self.with(|e, g| {
            if let Some(d) = g.data {
                if g.invalidated && g.flight.is_none() {
                    e.begin(g, Why::Caller);
                }
                return Step::Ready(d);
            }
            match &g.flight {
                Some(f) => Step::Wait(f.clone()),
                None => Step::Wait(e.begin(g, Why::Caller)),
            }
        });
        match step {
            Step::Ready(d) => Ok(d),
            Step::Wait(f) => f.slot.wait().await,
        }
    }

    /// `typed_cancel`.
    fn cancel(self: &Arc<Self>) {
        let flight = self.inner.lock().unwrap().flight.clone();
        if let Some(f) = flight {
            self.settle(&f, Err(FetchErr::Cancelled));
        }
    }

    /// `typed_invalidate` of an observed entry: a new fetch replaces the current one.
    async fn invalidate(self: &Arc<Self>) {
        let f = self.with(|e, g| {
            g.inval_gen += 1;
            g.invalidated = true;
            g.version += 1;
            e.begin(g, Why::Invalidate)
        });
        let _ = f.slot.wait().await;
    }

    /// `set_data`: a manual write wins over fetches that began before it.
    fn set(self: &Arc<Self>, v: u64) {
        self.with(|_, g| {
            g.data_gen += 1;
            g.data = Some(v);
            g.invalidated = false;
            g.version += 1;
        });
    }
}

/// `ObserverInner::deliver`: whoever holds the delivery slot drains `pending`; a change
/// that arrives meanwhile is picked up by the same loop before the slot is released.
struct Observer {
    pending: AtomicBool,
    delivering: shuttle::sync::Mutex<()>,
    last: shuttle::sync::Mutex<Option<Seen>>,
    deliveries: AtomicUsize,
}

impl Observer {
    fn new() -> Arc<Self> {
        Arc::new(Observer {
            pending: AtomicBool::new(false),
            delivering: shuttle::sync::Mutex::new(()),
            last: shuttle::sync::Mutex::new(None),
            deliveries: AtomicUsize::new(0),
        })
    }

    fn changed(&self, entry: &Entry) {
        self.pending.store(true, SeqCst);
        loop {
            let Ok(slot) = self.delivering.try_lock() else {
                return; // the holder will see `pending`
            };
            while self.pending.swap(false, SeqCst) {
                // The "listener" reads the entry back (user code may call the client):
                // this would deadlock if we were still under the entry lock.
                let seen = entry.snapshot();
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
}

fn observed_entry() -> (Arc<Entry>, Arc<Observer>) {
    let entry = Entry::new();
    let observer = Observer::new();
    entry.inner.lock().unwrap().listeners.push(observer.clone());
    (entry, observer)
}

/// After everything has run: no fetch is current, and the observer was told the final
/// state.
fn assert_quiescent(entry: &Entry, observer: &Observer) {
    let g = entry.inner.lock().unwrap();
    assert!(g.flight.is_none(), "a flight never settled");
    assert!(!g.fetching);
    let last = observer.last.lock().unwrap().expect("observer told");
    assert_eq!(last.version, g.version, "lost final state");
    assert_eq!(last.data, g.data);
    assert_eq!(last.fetching, g.fetching);
}

/// Three callers on two threads and a task race on a cold key: exactly one fetch, one
/// value for all, the observer ends on the final state.
#[test]
fn entry_concurrent_callers_share_one_fetch() {
    explore("entry_concurrent_callers_share_one_fetch", || {
        let (entry, observer) = observed_entry();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let e = entry.clone();
                shuttle::thread::spawn(move || shuttle::future::block_on(e.fetch()))
            })
            .collect();
        let e = entry.clone();
        let task = shuttle::future::spawn(async move { e.fetch().await });
        let mut results: Vec<FetchResult> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        results.push(shuttle::future::block_on(task).unwrap());
        // The fetch task may still be notifying (callers return once the cell resolves).
        entry.join_tasks();
        assert_eq!(entry.fetch_calls.load(SeqCst), 1, "exactly one fetch");
        assert!(results.iter().all(|r| *r == Ok(100)), "{results:?}");
        assert_quiescent(&entry, &observer);
    });
}

/// Callers race a cancel: every caller returns (the value of the flight it joined, or
/// `Cancelled`), at most one fetch per flight the cancel did not see, and nothing hangs.
#[test]
fn entry_cancel_races_callers() {
    explore("entry_cancel_races_callers", || {
        let (entry, observer) = observed_entry();
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let e = entry.clone();
                shuttle::thread::spawn(move || shuttle::future::block_on(e.fetch()))
            })
            .collect();
        let e = entry.clone();
        let canceller = shuttle::thread::spawn(move || e.cancel());
        canceller.join().unwrap();
        let results: Vec<FetchResult> = callers.into_iter().map(|t| t.join().unwrap()).collect();
        entry.join_tasks();
        assert_eq!(
            entry.fetch_calls.load(SeqCst),
            entry.inner.lock().unwrap().begun.len(),
            "every flight begun ran its fetch once"
        );
        let begun = entry.inner.lock().unwrap().begun.clone();
        // One cancel can end at most one flight early, so at most two begin.
        assert!(begun.len() <= 2, "{begun:?}");
        for r in &results {
            match r {
                Ok(v) => assert!(*v == 100 || *v == 200, "{r:?}"),
                Err(FetchErr::Cancelled) => {}
            }
        }
        assert_quiescent(&entry, &observer);
    });
}

/// A caller, an invalidation (observed entry: it refetches, replacing the flight) and a
/// manual write race. Exactly one fetch per invalidation generation; a fetch that began
/// before the manual write never overwrites it; the final state reaches the observer.
#[test]
fn entry_invalidate_and_manual_write_race_a_caller() {
    explore("entry_invalidate_and_manual_write_race_a_caller", || {
        let (entry, observer) = observed_entry();
        let e = entry.clone();
        let caller = shuttle::thread::spawn(move || shuttle::future::block_on(e.fetch()));
        let e = entry.clone();
        let invalidator = shuttle::future::spawn(async move { e.invalidate().await });
        let e = entry.clone();
        let writer = shuttle::thread::spawn(move || e.set(7));
        let got = caller.join().unwrap();
        shuttle::future::block_on(invalidator).unwrap();
        writer.join().unwrap();
        entry.join_tasks();
        let g = entry.inner.lock().unwrap();
        let mut gens: Vec<u64> = g.begun.iter().map(|b| b.1).collect();
        let n = gens.len();
        gens.dedup();
        assert_eq!(
            gens.len(),
            n,
            "two fetches of one generation: {:?}",
            g.begun
        );
        assert!(matches!(got, Ok(7 | 100 | 200)), "{got:?}");
        // The newest data: the write, or a fetch that began after it.
        let data = g.data.expect("data");
        if data != 7 {
            let id = data / 100;
            let (data_gen, _, _) = g.begun[(id - 1) as usize];
            assert_eq!(
                data_gen, g.data_gen,
                "an older fetch overwrote the manual write"
            );
        }
        drop(g);
        assert_quiescent(&entry, &observer);
    });
}

/// Notifications from many threads at once: the drain loop never loses the last one and
/// never delivers out of order.
#[test]
fn observer_drain_loop_never_loses_the_last_change() {
    explore("observer_drain_loop_never_loses_the_last_change", || {
        let (entry, observer) = observed_entry();
        let writers: Vec<_> = (0..3)
            .map(|i| {
                let e = entry.clone();
                shuttle::thread::spawn(move || {
                    e.set(i);
                    e.set(i + 10);
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_quiescent(&entry, &observer);
        assert!(observer.deliveries.load(SeqCst) >= 1);
    });
}
