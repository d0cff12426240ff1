//! Garbage collection of unused entries: one `DelayQueue` for the whole cache, driven by
//! one task, so a million entries cost no task or timer each.
//!
//! Entries send `Arm` when they become unused; re-arming replaces the previous deadline.
//! A timer that fires is only a hint: the cache removes the entry only if it is the same
//! entry (by id), still unused, and its own recorded deadline has passed — so a stale
//! timer can never delete a newer entry or one that was used again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::time::{delay_queue, DelayQueue};

use crate::client::Shared;
use crate::key::QueryKey;

enum GcMsg {
    Arm { id: u64, key: QueryKey, at: Instant },
}

pub(crate) struct Gc {
    tx: mpsc::UnboundedSender<GcMsg>,
    /// The receiver waits here until a runtime is available to run the gc task.
    rx: Mutex<Option<mpsc::UnboundedReceiver<GcMsg>>>,
    started: AtomicBool,
}

impl Gc {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Gc {
            tx,
            rx: Mutex::new(Some(rx)),
            started: AtomicBool::new(false),
        }
    }

    /// Schedules a collection check for entry `id` at `at`.
    pub(crate) fn arm(&self, id: u64, key: QueryKey, at: Instant) {
        let _ = self.tx.send(GcMsg::Arm { id, key, at });
    }

    /// Starts the gc task on the current runtime, once. Without a runtime, messages wait.
    pub(crate) fn start(&self, shared: &Arc<Shared>) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(rx) = self.rx.lock().take() else {
            return;
        };
        self.started.store(true, Ordering::Release);
        handle.spawn(run(rx, Arc::downgrade(shared)));
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<GcMsg>, shared: Weak<Shared>) {
    let mut queue: DelayQueue<(u64, QueryKey)> = DelayQueue::new();
    let mut slots: HashMap<u64, delay_queue::Key> = HashMap::new();
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                // The client is gone: nothing left to collect.
                None => return,
                Some(GcMsg::Arm { id, key, at }) => match slots.get(&id) {
                    Some(slot) => queue.reset_at(slot, at),
                    None => {
                        let slot = queue.insert_at((id, key), at);
                        slots.insert(id, slot);
                    }
                },
            },
            Some(expired) = queue.next(), if !queue.is_empty() => {
                let (id, key) = expired.into_inner();
                slots.remove(&id);
                let Some(shared) = shared.upgrade() else { return };
                shared.cache.collect(&shared, &key, id);
            }
        }
    }
}
