//! The one notification primitive: how a change of some state reaches the code that
//! listens to it.
//!
//! Three places notify: an entry tells its observers that it changed, an observer hands
//! its state to its listeners, a mutation hands its state to its listeners. They used to
//! carry three hand-written variants of the same protocol; a subtle property fixed in one
//! (a change lost while a listener ran, a listener called under a lock) stayed broken in
//! the others. The protocol is written once, here, out of four small parts:
//!
//! * [`Versioned`]: a value with a version counter that moves with every change. Listeners
//!   remember the last version they received, so "is this news?" is one comparison and
//!   deliveries to one listener only move forward.
//! * [`CowList`]: the copy-on-write list of listeners, kept under its owner's lock. To
//!   notify, the owner clones an `Arc` (a [`Snapshot`]) and releases its lock before any
//!   listener runs, so user code never runs under an internal lock and a listener may
//!   subscribe or unsubscribe (changing the list) from inside its call.
//! * [`Drain`]: latest-value delivery. A change marks the drain *pending*; whoever holds
//!   its delivery slot (an atomic try-lock that nobody waits for) runs rounds until no
//!   change is pending. A change that arrives while a round runs — from another thread, or
//!   re-entrantly from the code the round called — is picked up by the same holder right
//!   after, never lost and never delivered by a nested call.
//! * [`Listener`] and [`deliver`]: one listener's own drain and last seen version. Each
//!   listener is delivered to separately, so a listener is never called concurrently with
//!   itself nor re-entrantly, and a slow listener on one thread does not keep another
//!   thread from delivering to the others.
//!
//! The guarantees, per listener (those of `tokio::sync::watch`): the versions it receives
//! only grow; under concurrent changes it may skip an intermediate value, never the final
//! one; a listener that was unsubscribed is not called again. Listeners run under the
//! crate's panic policy ([`crate::user_code::contain`]): a panicking listener is logged,
//! stays subscribed, and the others still run.
//!
//! The drain loop is lock-free: its flags come from the [`crate::sync`] facade so that a
//! model checker can preempt at each of them.

use std::borrow::Borrow;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use crate::sync::{AtomicBool, AtomicU64};

mod cow_list;

use crate::user_code::contain;
pub(crate) use cow_list::{CowList, Snapshot};

/// A value and its version: the version moves with every change of the value (there is no
/// way to change one without the other), so a listener that saw version `n` has news
/// exactly when the version is past `n`.
#[derive(Debug)]
pub(crate) struct Versioned<V> {
    version: u64,
    value: V,
}

impl<V> Versioned<V> {
    /// The first value is version 1: newer than "nothing seen" (0), so a new listener is
    /// always handed the current value.
    pub(crate) fn new(value: V) -> Self {
        Versioned { version: 1, value }
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    pub(crate) fn get(&self) -> &V {
        &self.value
    }

    /// Replaces the value and moves the version. The old value is returned so that the
    /// caller can drop it after releasing its lock (it may hold user data with a `Drop`).
    pub(crate) fn replace(&mut self, value: V) -> V {
        self.version += 1;
        std::mem::replace(&mut self.value, value)
    }
}

impl<V: Clone> Versioned<V> {
    /// The version and a copy of the value, read together (the `latest` of [`deliver`]).
    pub(crate) fn latest(&self) -> (u64, V) {
        (self.version, self.value.clone())
    }
}

/// Latest-value delivery: a `pending` flag and a delivery slot.
///
/// [`mark`](Self::mark) records "something changed"; [`drain`](Self::drain) takes the slot
/// if it is free and runs rounds while changes are pending. The slot is a flag, not a
/// lock: nobody ever waits for it. A caller that finds it taken returns at once, leaving
/// its mark for the holder, which re-checks `pending` after every round *and* after
/// releasing the slot. That is what makes a re-entrant change (the round's own user code
/// changing the state) safe — it cannot deadlock and is not delivered by a nested call —
/// and what keeps a concurrent change from being lost.
///
/// Every operation is `SeqCst`: "mark, then try the slot" on one side and "release the
/// slot, then check the mark" on the other is a store followed by a load on two locations
/// (the Dekker pattern). With weaker orderings both loads may read the old values (the
/// store still sits in a store buffer, as on x86), the marker sees the slot taken and the
/// holder sees nothing pending, and the last change is never delivered.
pub(crate) struct Drain {
    pending: AtomicBool,
    running: AtomicBool,
}

impl Drain {
    pub(crate) fn new() -> Self {
        Drain {
            pending: AtomicBool::new(false),
            running: AtomicBool::new(false),
        }
    }

    /// Records a change for the next (or current) round.
    pub(crate) fn mark(&self) {
        self.pending.store(true, SeqCst);
    }

    /// Runs `round` until no change is pending, unless someone else holds the slot (it
    /// will see the pending change). `round` should read the *latest* state when it runs:
    /// several changes may be folded into one round.
    pub(crate) fn drain(&self, mut round: impl FnMut()) {
        loop {
            if self
                .running
                .compare_exchange(false, true, SeqCst, SeqCst)
                .is_err()
            {
                return; // the holder re-checks `pending` after releasing the slot
            }
            let slot = Running(&self.running);
            while self.pending.swap(false, SeqCst) {
                round();
            }
            drop(slot);
            // A change marked after the last round's `swap` but before the release found
            // the slot taken and left: deliver it ourselves.
            if !self.pending.load(SeqCst) {
                return;
            }
        }
    }

    /// [`mark`](Self::mark), then [`drain`](Self::drain).
    pub(crate) fn run(&self, round: impl FnMut()) {
        self.mark();
        self.drain(round);
    }
}

/// The held delivery slot; released on drop, so even a round that unwinds (internal code
/// only: user code is contained) does not leave the drain stuck.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, SeqCst);
    }
}

/// The user's function a [`Listener`] calls.
pub(crate) type Callback<V> = Box<dyn Fn(&V) + Send + Sync>;

/// One subscribed listener of values of type `V`: the user's function, the last version
/// it received, and its own [`Drain`].
pub(crate) struct Listener<V> {
    call: Callback<V>,
    /// Names the listener in the panic log ("listener", "mutation listener").
    what: &'static str,
    /// The last version delivered. Written only by the holder of `drain`'s slot.
    seen: AtomicU64,
    /// Cleared by [`end`](Self::end): no call starts after that.
    active: AtomicBool,
    drain: Drain,
}

impl<V> Listener<V> {
    pub(crate) fn new(what: &'static str, call: Callback<V>) -> Arc<Self> {
        Arc::new(Listener {
            call,
            what,
            seen: AtomicU64::new(0),
            active: AtomicBool::new(true),
            drain: Drain::new(),
        })
    }

    /// Unsubscribes: no call starts after this (a call already running on another thread
    /// finishes). The owner also removes the listener from its [`CowList`]; ending it
    /// first covers the deliveries that already hold a snapshot with it.
    pub(crate) fn end(&self) {
        self.active.store(false, SeqCst);
    }

    /// Delivers the latest value to this one listener (a new subscriber's "current state
    /// at once"). See [`deliver`] for `latest`.
    pub(crate) fn offer<S: Borrow<V>>(&self, latest: impl FnMut() -> (u64, S)) {
        self.drain.mark();
        self.pump(latest);
    }

    fn pump<S: Borrow<V>>(&self, mut latest: impl FnMut() -> (u64, S)) {
        // On a thread that is already unwinding the panic policy would skip the call;
        // leaving before the round (rather than letting `contain` skip it) keeps the mark
        // and `seen` untouched, so the next delivery on a healthy thread still brings
        // this value.
        if std::thread::panicking() {
            return;
        }
        self.drain.drain(|| {
            if !self.active.load(SeqCst) {
                return;
            }
            let (version, value) = latest();
            if version > self.seen.load(SeqCst) {
                self.seen.store(version, SeqCst);
                // A panicking listener is logged by the policy and stays subscribed.
                let _ = contain(self.what, || (self.call)(value.borrow()));
            }
        });
    }
}

/// Delivers the latest value to every listener of `listeners` (a [`Snapshot`], taken
/// under the owner's lock, which must be released by now).
///
/// `latest` returns the current version and value (a value, or anything that borrows as
/// one). It runs once per listener round, and a round may also be on behalf of a change
/// made meanwhile by another thread (or re-entrantly) that found the listener busy here
/// and left it to us. So it must read the state as it is when called — or the caller must
/// guarantee that any later change is delivered by a later call (the observer passes the
/// value of its current round: its own drain runs another round for any change).
///
/// Every listener is marked first, then each is delivered to in turn: a listener that is
/// busy (on another thread, or up the stack of this one) is left to its holder, which
/// delivers right after its current call returns.
pub(crate) fn deliver<V, S: Borrow<V>>(
    listeners: &[Arc<Listener<V>>],
    mut latest: impl FnMut() -> (u64, S),
) {
    for l in listeners {
        l.drain.mark();
    }
    for l in listeners {
        l.pump(&mut latest);
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::sync::Mutex;

    /// A source of values, as an owner keeps it: a versioned value and a list of
    /// listeners under one lock.
    struct Source {
        state: Mutex<(Versioned<u32>, Listeners)>,
    }

    type Listeners = CowList<Arc<Listener<u32>>>;

    impl Source {
        fn new(value: u32) -> Arc<Self> {
            Arc::new(Source {
                state: Mutex::new((Versioned::new(value), CowList::default())),
            })
        }

        fn latest(&self) -> (u64, u32) {
            self.state.lock().0.latest()
        }

        fn subscribe(&self, f: impl Fn(&u32) + Send + Sync + 'static) -> Arc<Listener<u32>> {
            let l = Listener::new("test listener", Box::new(f));
            self.state.lock().1.push(l.clone());
            l.offer(|| self.latest());
            l
        }

        fn unsubscribe(&self, l: &Arc<Listener<u32>>) {
            l.end();
            self.state.lock().1.remove(l);
        }

        /// A change, then delivery outside the lock (what `Mutation::reset` does).
        fn set(&self, value: u32) {
            let listeners = {
                let mut g = self.state.lock();
                g.0.replace(value);
                g.1.snapshot()
            };
            deliver(&listeners, || self.latest());
        }
    }

    /// Records what a listener received.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<u32>>>);

    impl Seen {
        fn listener(&self) -> impl Fn(&u32) + Send + Sync + 'static {
            let seen = self.clone();
            move |v| seen.0.lock().push(*v)
        }
        fn get(&self) -> Vec<u32> {
            self.0.lock().clone()
        }
    }

    /// A new listener is handed the current value at once, then every change.
    #[test]
    fn a_listener_gets_the_current_value_then_each_change() {
        let source = Source::new(1);
        let seen = Seen::default();
        let _l = source.subscribe(seen.listener());
        source.set(2);
        source.set(3);
        assert_eq!(seen.get(), [1, 2, 3]);
    }

    /// The property the drain exists for: a listener that changes the state from inside
    /// its call (a listener calling `reset()`) is not called again re-entrantly, in the
    /// middle of its own call; the new value comes right after the call returns. A second
    /// listener, free at that moment, gets the new value at once and is not handed the
    /// older one afterwards (versions only grow).
    #[test]
    fn a_reentrant_change_is_delivered_after_the_running_listener_returns() {
        let source = Source::new(0);
        let events = Arc::new(Mutex::new(Vec::new()));
        let (s, e) = (Arc::downgrade(&source), events.clone());
        let _first = source.subscribe(move |v| {
            e.lock().push(format!("enter {v}"));
            if *v == 1 {
                s.upgrade().unwrap().set(2);
            }
            e.lock().push(format!("exit {v}"));
        });
        let second = Seen::default();
        let _second = source.subscribe(second.listener());
        source.set(1);
        assert_eq!(
            *events.lock(),
            ["enter 0", "exit 0", "enter 1", "exit 1", "enter 2", "exit 2"]
        );
        assert_eq!(second.get(), [0, 2], "skips 1: it was already stale");
    }

    /// Latest-value delivery under real concurrency: several threads change the value and
    /// deliver at the same time, with listeners of different speeds. Afterwards every
    /// listener's last value is the final one (never lost: a delivery that found a listener
    /// busy left it to the holder), each listener's values strictly grow (intermediate ones
    /// may be skipped), and no listener was ever called concurrently with itself.
    #[test]
    fn the_final_value_is_never_lost_under_concurrent_changes() {
        const THREADS: u32 = 4;
        const CHANGES: u32 = 400;
        let source = Source::new(0);
        let next = Arc::new(AtomicU64::new(1));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let recorders: Vec<(Seen, Arc<Listener<u32>>)> = (0..3)
            .map(|i| {
                let seen = Seen::default();
                let (rec, busy, overlaps) = (
                    seen.listener(),
                    Arc::new(AtomicBool::new(false)),
                    overlaps.clone(),
                );
                let l = source.subscribe(move |v| {
                    if busy.swap(true, SeqCst) {
                        overlaps.fetch_add(1, SeqCst);
                    }
                    rec(v);
                    for _ in 0..i * 50 {
                        std::hint::spin_loop(); // listeners of different speeds
                    }
                    if i == 2 {
                        std::thread::yield_now();
                    }
                    busy.store(false, SeqCst);
                });
                (seen, l)
            })
            .collect();
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (source, next) = (source.clone(), next.clone());
                std::thread::spawn(move || {
                    for _ in 0..CHANGES {
                        // Values increase with versions: each value is set under the lock.
                        let listeners = {
                            let mut g = source.state.lock();
                            let v = u32::try_from(next.fetch_add(1, SeqCst)).unwrap();
                            g.0.replace(v);
                            g.1.snapshot()
                        };
                        deliver(&listeners, || source.latest());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (_, last) = source.latest();
        assert_eq!(last, THREADS * CHANGES);
        assert_eq!(
            overlaps.load(SeqCst),
            0,
            "a listener ran concurrently with itself"
        );
        for (seen, _) in &recorders {
            let seen = seen.get();
            assert_eq!(seen.last(), Some(&last), "final value lost");
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "went backwards");
        }
    }

    /// The panic policy: a panicking listener is contained, the listeners after it still
    /// run, and it stays subscribed (it is called again on the next change).
    #[test]
    fn a_panicking_listener_stays_subscribed_and_others_still_run() {
        let source = Source::new(0);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let _bad = source.subscribe(move |_| {
            c.fetch_add(1, SeqCst);
            panic!("listener bug");
        });
        let good = Seen::default();
        let _good = source.subscribe(good.listener());
        source.set(1);
        source.set(2);
        assert_eq!(calls.load(SeqCst), 3, "at once, then each change");
        assert_eq!(good.get(), [0, 1, 2]);
    }

    /// An unsubscribed listener is never called again — including by a delivery that is
    /// already running with a snapshot of the list that still holds it (here the first
    /// listener unsubscribes the second from inside its call).
    #[test]
    fn an_unsubscribed_listener_is_never_called_again() {
        let source = Source::new(0);
        let victim_slot: Arc<Mutex<Option<Arc<Listener<u32>>>>> = Arc::default();
        let (s, slot) = (Arc::downgrade(&source), victim_slot.clone());
        let _killer = source.subscribe(move |v| {
            if *v == 1 {
                let victim = slot.lock().take().unwrap();
                s.upgrade().unwrap().unsubscribe(&victim);
            }
        });
        let victim = Seen::default();
        *victim_slot.lock() = Some(source.subscribe(victim.listener()));
        source.set(1);
        source.set(2);
        assert_eq!(victim.get(), [0]);
        assert_eq!(source.state.lock().1.len(), 1, "removed from the list");
    }

    /// On a thread that is already unwinding (a drop guard changing the state during a
    /// panic) no listener runs — a second panic would abort — but the value is not marked
    /// as delivered either: the next delivery on a healthy thread brings it, even with no
    /// further change.
    #[test]
    fn a_value_offered_while_unwinding_is_delivered_by_the_next_delivery() {
        struct SetOnDrop(Arc<Source>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                assert!(std::thread::panicking());
                self.0.set(7);
            }
        }
        let source = Source::new(0);
        let seen = Seen::default();
        let _l = source.subscribe(seen.listener());
        let guard = SetOnDrop(source.clone());
        let r = catch_unwind(AssertUnwindSafe(move || {
            let _guard = guard;
            panic!("user bug");
        }));
        assert!(r.is_err());
        assert_eq!(seen.get(), [0], "not called while unwinding");
        let listeners = source.state.lock().1.snapshot();
        deliver(&listeners, || source.latest());
        assert_eq!(seen.get(), [0, 7]);
    }

    /// A change marked during a round (re-entrantly, by the round itself) does not run a
    /// nested round — the nested call returns at once — but one more round after the
    /// current one.
    #[test]
    fn a_change_during_a_round_runs_one_more_round_not_a_nested_one() {
        let drain = Drain::new();
        let rounds = AtomicUsize::new(0);
        let depth = AtomicUsize::new(0);
        drain.run(|| {
            assert_eq!(depth.fetch_add(1, SeqCst), 0, "nested round");
            if rounds.fetch_add(1, SeqCst) == 0 {
                drain.run(|| unreachable!("the slot is taken"));
            }
            depth.fetch_sub(1, SeqCst);
        });
        assert_eq!(rounds.load(SeqCst), 2);
    }

    /// No lost wake-up: threads mark and drain at the same moment, again and again, and
    /// once they are all back the last round has seen every change. (This is the race the
    /// re-check after releasing the slot, and the `SeqCst` orderings of [`Drain`], close: a
    /// marker finding the slot taken just as its holder is releasing it.) The threads start
    /// each step together so that they collide often; a lost wake-up shows up as a step
    /// that ends with a change no round saw.
    #[test]
    fn every_change_is_seen_by_a_later_round() {
        const THREADS: usize = 3;
        const STEPS: usize = 20_000;
        let drain = Arc::new(Drain::new());
        let produced = Arc::new(AtomicU64::new(0));
        let consumed = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(std::sync::Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (drain, produced, consumed, lost, start) = (
                    drain.clone(),
                    produced.clone(),
                    consumed.clone(),
                    lost.clone(),
                    start.clone(),
                );
                std::thread::spawn(move || {
                    for _ in 0..STEPS {
                        start.wait();
                        produced.fetch_add(1, SeqCst);
                        drain.run(|| {
                            consumed.fetch_max(produced.load(SeqCst), SeqCst);
                        });
                        // Everyone is back from `run`: nothing may be left undelivered.
                        if start.wait().is_leader() {
                            let (p, c) = (produced.load(SeqCst), consumed.load(SeqCst));
                            if p != c {
                                lost.fetch_add(1, SeqCst);
                                // Deliver it, so the next steps are checked afresh.
                                drain.run(|| consumed.store(p, SeqCst));
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            lost.load(SeqCst),
            0,
            "steps that ended with a change unseen"
        );
    }

    /// Copy-on-write: a snapshot keeps the list as it was (a delivery in progress is not
    /// disturbed by a listener subscribing or unsubscribing), removal is by identity, and
    /// an emptied list holds no allocation.
    #[test]
    fn cow_list_snapshots_are_stable_and_removal_is_by_identity() {
        let (a, b, a_twin) = (Arc::new(1), Arc::new(2), Arc::new(1));
        let mut list = CowList::default();
        assert!(list.snapshot().is_empty());
        list.push(a.clone());
        list.push(b.clone());
        let before = list.snapshot();
        assert!(!list.remove(&a_twin), "equal is not the same subscription");
        assert!(list.remove(&a));
        list.push(a_twin.clone());
        assert_eq!(before.iter().map(|x| **x).collect::<Vec<_>>(), [1, 2]);
        assert!(Arc::ptr_eq(&before[0], &a));
        assert_eq!(list.len(), 2);
        assert!(list.remove(&b) && list.remove(&a_twin));
        assert!(list.is_empty() && list.is_unallocated());
    }

    /// The version moves with every change, starting past "nothing seen".
    #[test]
    fn versions_start_past_nothing_seen_and_move_with_each_change() {
        let mut v = Versioned::new("a");
        assert_eq!(v.latest(), (1, "a"));
        assert_eq!(v.replace("b"), "a");
        assert_eq!((v.version(), *v.get()), (2, "b"));
    }
}
