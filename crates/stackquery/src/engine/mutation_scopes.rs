//! Scope queues: mutations that share a scope id on one client run one after another,
//! in the order `mutate()` was called.
//!
//! Each call takes a [`Ticket`] synchronously inside `Mutation::mutate` (before its future
//! is first polled), which appends it to its scope's FIFO. A call runs when its ticket is
//! at the head. Dropping a ticket — the call finished, or its future was dropped while
//! queued or running — removes it wherever it is and, if it was the head, wakes the next
//! one, so an abandoned call never blocks the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

type Queues = Mutex<HashMap<Arc<str>, VecDeque<(u64, Arc<Notify>)>>>;

/// Per-client registry of mutation scopes (mutations of one scope run one after another).
#[derive(Default)]
pub(crate) struct Scopes {
    queues: Arc<Queues>,
    next_ticket: AtomicU64,
}

impl Scopes {
    /// Appends a call to `scope`'s queue.
    pub(crate) fn enqueue(&self, scope: Arc<str>) -> Ticket {
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.queues
            .lock()
            .entry(scope.clone())
            .or_default()
            .push_back((id, notify.clone()));
        Ticket {
            queues: self.queues.clone(),
            scope,
            id,
            notify,
        }
    }

    /// Number of calls queued or running in `scope` (tests).
    #[cfg(test)]
    fn len(&self, scope: &str) -> usize {
        self.queues.lock().get(scope).map_or(0, VecDeque::len)
    }
}

/// A place in a scope's queue; leaves the queue on drop.
pub(crate) struct Ticket {
    queues: Arc<Queues>,
    scope: Arc<str>,
    id: u64,
    notify: Arc<Notify>,
}

impl Ticket {
    fn is_head(&self) -> bool {
        self.queues
            .lock()
            .get(&self.scope)
            .and_then(VecDeque::front)
            .is_some_and(|(id, _)| *id == self.id)
    }

    /// Waits until every call queued before this one has finished (or was dropped).
    pub(crate) async fn wait_turn(&self) {
        // `notify_one` stores a permit when nobody waits yet, so a wake-up that lands
        // between the check and `notified()` is not lost.
        while !self.is_head() {
            self.notify.notified().await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(&self.scope) else {
            return;
        };
        if let Some(pos) = queue.iter().position(|(id, _)| *id == self.id) {
            queue.remove(pos);
            if pos == 0 {
                if let Some((_, next)) = queue.front() {
                    next.notify_one();
                }
            }
        }
        if queue.is_empty() {
            queues.remove(&self.scope);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_ticket_is_head_and_drop_passes_the_turn() {
        let scopes = Scopes::default();
        let a = scopes.enqueue("s".into());
        let b = scopes.enqueue("s".into());
        let other = scopes.enqueue("t".into());
        assert!(a.is_head() && !b.is_head() && other.is_head());
        drop(a);
        assert!(b.is_head());
        drop(b);
        assert_eq!(scopes.len("s"), 0);
        assert!(
            scopes.queues.lock().get("s").is_none(),
            "empty queues are removed"
        );
        drop(other);
    }

    #[test]
    fn dropping_a_queued_ticket_keeps_the_order_of_the_rest() {
        let scopes = Scopes::default();
        let a = scopes.enqueue("s".into());
        let b = scopes.enqueue("s".into());
        let c = scopes.enqueue("s".into());
        drop(b);
        assert!(a.is_head());
        drop(a);
        assert!(c.is_head());
    }
}
