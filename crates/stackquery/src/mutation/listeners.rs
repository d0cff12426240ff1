//! The state cell of one `Mutation` and the delivery of its states to listeners.
//!
//! A state change happens under the cell's lock (through the reducer) and moves the
//! state's version; the lock is released and then the listeners are notified with the
//! crate's one notification primitive ([`crate::notify`]): latest-value delivery, each
//! listener called with the cell's *current* state if it is newer than the last one it
//! saw. So a change that arrives while a listener runs (on this thread — a listener that
//! calls `reset()` — or on another) is delivered to it right after, states arrive in
//! order, and under concurrent changes a listener may skip an intermediate state, never
//! the final one. No lock of the cell is held while a listener runs (it may call back into
//! the mutation or the client), and a panicking listener is logged and stays subscribed.

use std::sync::{Arc, Weak};

use super::state::{reduce, Action, MutationState};
use crate::events::{CacheEventKind, Events};
use crate::notify::{deliver, Callback, CowList, Listener, Versioned};
use crate::subscription::Subscription;
use crate::sync::Mutex;

type Listeners<T> = CowList<Arc<Listener<MutationState<T>>>>;

/// The shared state of a `Mutation` and its listeners.
pub(crate) struct StateCell<T> {
    inner: Mutex<Inner<T>>,
    /// The mutation's id and the client's event stream, told of every change.
    events: Option<(u64, Arc<Events>)>,
}

struct Inner<T> {
    state: Versioned<MutationState<T>>,
    /// The call whose state is shown: changes from older calls are ignored.
    shown: u64,
    /// The id the next `mutate` call gets.
    next_call: u64,
    listeners: Listeners<T>,
}

impl<T> StateCell<T> {
    pub(crate) fn new(events: Option<(u64, Arc<Events>)>) -> Self {
        StateCell {
            events,
            inner: Mutex::new(Inner {
                state: Versioned::new(MutationState::default()),
                shown: 0,
                next_call: 0,
                listeners: CowList::default(),
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
        self.inner.lock().state.get().clone()
    }

    fn latest(&self) -> (u64, MutationState<T>) {
        self.inner.lock().state.latest()
    }

    /// Applies `action` from call `call`, unless a newer call (or a reset) has taken over
    /// the displayed state; then notifies the listeners, outside the lock.
    pub(crate) fn apply(&self, call: u64, action: Action<T>) {
        let (listeners, old) = {
            let mut g = self.inner.lock();
            if call < g.shown {
                return;
            }
            g.shown = call;
            let next = reduce(g.state.get(), action);
            let status = next.status;
            (g.listeners.snapshot(), (status, g.state.replace(next)))
        };
        let (status, old) = old;
        drop(old); // user data is dropped outside the lock
        self.tell(status);
        deliver(&listeners, || self.latest());
    }

    /// Back to `Idle`; calls already started no longer change the displayed state.
    pub(crate) fn reset(&self) {
        let (listeners, old) = {
            let mut g = self.inner.lock();
            g.shown = g.next_call;
            let next = reduce(g.state.get(), Action::Reset);
            (g.listeners.snapshot(), g.state.replace(next))
        };
        drop(old);
        self.tell(crate::state::MutationStatus::Idle);
        deliver(&listeners, || self.latest());
    }

    fn tell(&self, status: crate::state::MutationStatus) {
        if let Some((id, events)) = &self.events {
            events.emit(|| CacheEventKind::MutationUpdated { id: *id, status });
        }
    }
}

impl<T: Send + Sync + 'static> StateCell<T> {
    /// Adds a listener and calls it with the current state.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        listener: Callback<MutationState<T>>,
    ) -> Subscription {
        let listener = Listener::new("mutation listener", listener);
        self.inner.lock().listeners.push(listener.clone());
        // Uncontended, this delivers the current state now. If another thread's change
        // is being delivered to the new listener at this moment, that thread delivers it.
        listener.offer(|| self.latest());
        let cell: Weak<Self> = Arc::downgrade(self);
        Subscription::new(move || {
            listener.end();
            if let Some(cell) = cell.upgrade() {
                cell.inner.lock().listeners.remove(&listener);
            }
        })
    }
}
