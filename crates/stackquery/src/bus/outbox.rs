//! What this instance still has to tell the others: bus messages are queued here and sent
//! in order by one task, which retries (with backoff) until the bus takes each one. So a
//! change made while this instance is cut off from Redis reaches the others once it can
//! reach Redis again, instead of being lost by a fire-and-forget publish.
//!
//! Bounded: an identical message already queued is not queued twice, and past
//! [`OUTBOX_MAX`] messages the whole queue collapses into one "invalidate everything"
//! (every receiver then refetches: costly, but nothing stale is served as fresh).

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{BusMessageKind, RedisBus};
use crate::worker::{Running, Worker};

/// The most messages kept while the bus is unreachable.
pub(crate) const OUTBOX_MAX: usize = 10_000;
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The queue and its sender task.
pub(crate) struct Outbox {
    state: Arc<State>,
    wake: Arc<Notify>,
    sender: Worker,
}

struct State {
    bus: RedisBus,
    queue: Mutex<VecDeque<BusMessageKind>>,
}

impl Outbox {
    pub(crate) fn new(bus: RedisBus) -> Self {
        Outbox {
            state: Arc::new(State {
                bus,
                queue: Mutex::new(VecDeque::new()),
            }),
            wake: Arc::new(Notify::new()),
            sender: Worker::default(),
        }
    }

    /// Queues `kind` for every other instance.
    pub(crate) fn send(&self, kind: BusMessageKind) {
        {
            let mut q = self.state.queue.lock();
            if !q.contains(&kind) {
                if q.len() >= OUTBOX_MAX {
                    tracing::warn!(
                        queued = q.len(),
                        "bus outbox full: collapsing it into one invalidation of everything"
                    );
                    q.clear();
                    q.push_back(BusMessageKind::Invalidate {
                        scope: crate::KeyScope::All,
                    });
                } else {
                    q.push_back(kind);
                }
            }
        }
        self.wake.notify_one();
        self.ensure_sender();
    }

    /// Messages not sent yet.
    pub(crate) fn len(&self) -> usize {
        self.state.queue.lock().len()
    }

    /// Starts the sender on the current runtime unless it runs.
    pub(crate) fn ensure_sender(&self) {
        let (state, wake) = (Arc::downgrade(&self.state), self.wake.clone());
        self.sender
            .ensure(move |running| sender(state, wake, running));
    }

    /// Waits until every queued message was sent, or `limit` passes. Returns whether all
    /// were sent.
    pub(crate) async fn drain(&self, limit: Duration) -> bool {
        self.ensure_sender();
        let deadline = crate::deadline::saturating_after(tokio::time::Instant::now(), limit);
        loop {
            if self.len() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            self.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

/// Sends the queue's head until the bus takes it, then the next.
async fn sender(state: Weak<State>, wake: Arc<Notify>, _running: Running) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(s) = state.upgrade() else { return };
        let head = s.queue.lock().front().cloned();
        let Some(kind) = head else {
            drop(s);
            notified.await;
            continue;
        };
        match s.bus.publish(kind.clone()).await {
            Ok(()) => {
                backoff = FIRST_BACKOFF;
                let mut q = s.queue.lock();
                // Only if it is still the head (a collapse may have replaced the queue).
                if q.front() == Some(&kind) {
                    q.pop_front();
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::error::report(&error), ?kind, "bus publish failed: will retry");
                drop(s);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
