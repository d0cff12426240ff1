//! The state cell of one `Mutation` and the delivery of its states to listeners.
//!
//! A state change happens under the cell's lock (through the reducer) and bumps a version
//! counter; the lock is released and then each listener is "pumped": it is called with
//! the cell's *current* state if that is newer than the last version it saw. Each
//! listener has its own delivery lock (taken with `try_lock`) and a `pending` flag:
//!
//! - a state change sets `pending` on every listener, then tries to deliver;
//! - whoever holds a listener's delivery lock re-checks `pending` after releasing it, so a
//!   change that arrived while the listener was running (on this thread — a listener that
//!   calls `reset()` — or on another) is delivered right after, never lost;
//! - versions delivered to one listener only grow, so states arrive in order. Under
//!   concurrent changes a listener may skip an intermediate state, never the final one
//!   (latest-value semantics, like `tokio::sync::watch`).
//!
//! No lock of the cell is held while a listener runs, so a listener may call back into
//! the mutation or the client. A listener runs under the crate's panic policy
//! ([`crate::user_code`]): a panicking listener is logged and stays subscribed; the others
//! still run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::state::{reduce, Action, MutationState};
use crate::subscription::Subscription;
use crate::user_code::contain;

type Listener<T> = dyn Fn(&MutationState<T>) + Send + Sync;

/// The shared state of a `Mutation` and its listeners.
pub(crate) struct StateCell<T> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    state: MutationState<T>,
    /// Bumped on every change; listeners remember the last one they saw.
    version: u64,
    /// The call whose state is shown: changes from older calls are ignored.
    shown: u64,
    /// The id the next `mutate` call gets.
    next_call: u64,
    listeners: Vec<Arc<Slot<T>>>,
}

struct Slot<T> {
    listener: Box<Listener<T>>,
    /// The delivery lock, holding the last version delivered.
    seen: Mutex<u64>,
    /// A change may not have been delivered yet.
    pending: AtomicBool,
    /// Cleared by unsubscribe: no further calls.
    active: AtomicBool,
}

impl<T> StateCell<T> {
    pub(crate) fn new() -> Self {
        StateCell {
            inner: Mutex::new(Inner {
                state: MutationState::default(),
                version: 1,
                shown: 0,
                next_call: 0,
                listeners: Vec::new(),
            }),
        }
    }

    /// A new call id; later calls win the displayed state.
    pub(crate) fn begin_call(&self) -> u64 {
        let mut g = self.inner.lock();
        let id = g.next_call;
        g.next_call += 1;
        id
    }

    pub(crate) fn snapshot(&self) -> MutationState<T> {
        self.inner.lock().state.clone()
    }

    fn current(&self) -> (MutationState<T>, u64) {
        let g = self.inner.lock();
        (g.state.clone(), g.version)
    }

    /// Applies `action` from call `call`, unless a newer call (or a reset) has taken over
    /// the displayed state; then notifies the listeners, outside the lock.
    pub(crate) fn apply(&self, call: u64, action: Action<T>) {
        let listeners = {
            let mut g = self.inner.lock();
            if call < g.shown {
                return;
            }
            g.shown = call;
            g.state = reduce(&g.state, action);
            g.version += 1;
            g.listeners.clone()
        };
        self.notify(&listeners);
    }

    /// Back to `Idle`; calls already started no longer change the displayed state.
    pub(crate) fn reset(&self) {
        let listeners = {
            let mut g = self.inner.lock();
            g.shown = g.next_call;
            g.state = reduce(&g.state, Action::Reset);
            g.version += 1;
            g.listeners.clone()
        };
        self.notify(&listeners);
    }

    fn notify(&self, listeners: &[Arc<Slot<T>>]) {
        for slot in listeners {
            slot.pending.store(true, Ordering::SeqCst);
        }
        for slot in listeners {
            slot.pump(self);
        }
    }
}

impl<T: Send + Sync + 'static> StateCell<T> {
    /// Adds a listener and calls it with the current state.
    pub(crate) fn subscribe(self: &Arc<Self>, listener: Box<Listener<T>>) -> Subscription {
        let slot = Arc::new(Slot {
            listener,
            seen: Mutex::new(0),
            pending: AtomicBool::new(true),
            active: AtomicBool::new(true),
        });
        self.inner.lock().listeners.push(slot.clone());
        // Uncontended, this delivers the current state now. If another thread's change
        // is being delivered to the new slot at this moment, that thread delivers it.
        slot.pump(self);
        let cell: Weak<Self> = Arc::downgrade(self);
        Subscription::new(move || {
            slot.active.store(false, Ordering::SeqCst);
            if let Some(cell) = cell.upgrade() {
                cell.inner
                    .lock()
                    .listeners
                    .retain(|s| !Arc::ptr_eq(s, &slot));
            }
        })
    }
}

impl<T> Slot<T> {
    fn pump(&self, cell: &StateCell<T>) {
        // On a thread that is already unwinding the panic policy skips user code; checking
        // here first (rather than letting `contain` skip the call) also leaves `pending`
        // set and `seen` untouched, so the next change still delivers this state.
        while self.pending.load(Ordering::SeqCst) && !std::thread::panicking() {
            let Some(mut seen) = self.seen.try_lock() else {
                // The holder re-checks `pending` after releasing the lock.
                return;
            };
            self.pending.store(false, Ordering::SeqCst);
            if !self.active.load(Ordering::SeqCst) {
                return;
            }
            let (state, version) = cell.current();
            if version > *seen {
                *seen = version;
                // A panicking listener is logged by the policy and stays subscribed.
                let _ = contain("mutation listener", || (self.listener)(&state));
            }
        }
    }
}
