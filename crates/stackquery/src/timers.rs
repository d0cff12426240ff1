//! Every timer of a client — gc of unused entries, "data turns stale" notices for observed
//! entries, observers' polls — in one queue driven by one task, so a million entries cost no
//! task each.
//!
//! * The queue lives in the client, not in the task: arming and disarming are synchronous
//!   (no channel that can fall behind), and a timer lives exactly as long as its owner (an
//!   entry's timers are disarmed when it leaves the cache), so memory stays bounded by the
//!   live entries whatever the key churn.
//! * The driver is a [`Worker`]: if the runtime it runs on shuts down, the next arm starts
//!   it again on the current runtime, and it finds every timer still armed.
//! * A timer that fires is only a hint: the gc removes an entry only if it is still the same
//!   entry (by id), unused, and past its own recorded deadline.
//! * Nothing here runs user code under the queue lock: due timers are taken out first and
//!   fired after the lock is released.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::key::QueryKey;
use crate::worker::{Running, Worker};

/// What a timer is for. An owner has at most one timer of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    /// Collect the entry if it is still unused.
    Gc,
    /// The entry's data crosses an observer's stale time: tell its observers.
    Stale,
    /// An observer's next poll.
    Poll,
}

/// Something other than an entry that a timer calls (an observer's poll).
pub(crate) trait TimerHook: Send + Sync {
    /// Called on the driver task; must not block (spawn longer work).
    fn fire(&self);
}

/// Whom a timer concerns.
pub(crate) enum TimerTarget {
    /// The entry with the timer's id, at this key.
    Entry(QueryKey),
    /// A hook, held weakly: a dropped owner's timer fires into nothing.
    Hook(Weak<dyn TimerHook>),
}

type TimerId = (u64, TimerKind);

#[derive(Default)]
struct Queue {
    /// Deadline of each armed hook timer (an observer's poll). An entry's timers are not
    /// in it: the entry's state machine records their deadlines and names the previous one
    /// on every change, so a million entries cost no map slot each.
    hooks: HashMap<TimerId, Instant>,
    /// Armed timers in deadline order.
    order: BTreeMap<(Instant, TimerId), TimerTarget>,
    /// What the driver sleeps until (`None`: no timer, or it is not sleeping on one): an
    /// earlier timer must wake it.
    driver_wakes_at: Option<Instant>,
}

/// Makes the driver task (given the wake-up notifier and the worker's guard). The queue
/// does not know what firing a timer does: the engine (`engine/timer_driver.rs`) does.
pub(crate) type MakeDriver =
    Box<dyn Fn(Arc<Notify>, Running) -> BoxFuture<'static, ()> + Send + Sync>;

/// The client's timer queue and its driver.
pub(crate) struct Timers {
    queue: Mutex<Queue>,
    wake: Arc<Notify>,
    driver: Worker,
    make_driver: MakeDriver,
    /// Where the driver runs (the client's host).
    runtime: crate::host::Runtime,
}

impl Timers {
    pub(crate) fn new(make_driver: MakeDriver, runtime: crate::host::Runtime) -> Self {
        Timers {
            queue: Mutex::new(Queue::default()),
            wake: Arc::new(Notify::new()),
            driver: Worker::default(),
            make_driver,
            runtime,
        }
    }

    /// Arms (or re-arms) timer `(id, kind)` at `at`. `previous`: the deadline it is armed at
    /// now, if any, which this replaces (for a hook, the queue looks it up itself).
    pub(crate) fn arm(
        &self,
        id: u64,
        kind: TimerKind,
        previous: Option<Instant>,
        at: Instant,
        target: TimerTarget,
    ) {
        let wake = {
            let mut q = self.queue.lock();
            let previous = match target {
                TimerTarget::Hook(_) => q.hooks.insert((id, kind), at),
                TimerTarget::Entry(_) => previous,
            };
            if let Some(old) = previous {
                q.order.remove(&(old, (id, kind)));
            }
            q.order.insert((at, (id, kind)), target);
            let earlier = q.driver_wakes_at.is_none_or(|w| at < w);
            if earlier {
                q.driver_wakes_at = Some(at);
            }
            earlier
        };
        if wake {
            self.wake.notify_one();
        }
        self.ensure_driver();
    }

    /// Disarms timer `(id, kind)`, armed at `previous` (`None`: a hook's, looked up here).
    pub(crate) fn disarm(&self, id: u64, kind: TimerKind, previous: Option<Instant>) {
        let mut q = self.queue.lock();
        let previous = previous.or_else(|| q.hooks.remove(&(id, kind)));
        if let Some(at) = previous {
            q.order.remove(&(at, (id, kind)));
        }
    }

    /// Disarms the timers of entry `id`, armed at `gc` and `stale` (it left the cache).
    pub(crate) fn disarm_entry(&self, id: u64, gc: Option<Instant>, stale: Option<Instant>) {
        let mut q = self.queue.lock();
        for (kind, at) in [(TimerKind::Gc, gc), (TimerKind::Stale, stale)] {
            if let Some(at) = at {
                q.order.remove(&(at, (id, kind)));
            }
        }
    }

    /// How many timers are armed (for tests and memory checks).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.lock().order.len()
    }

    /// Starts the driver on the current runtime if it is not running (first use, or its
    /// runtime died). One atomic load when it runs.
    pub(crate) fn ensure_driver(&self) {
        let wake = self.wake.clone();
        self.driver.ensure_on(&self.runtime, move |running| {
            (self.make_driver)(wake, running)
        });
    }

    /// Takes the timers due at `now` out of the queue, and records what the driver will
    /// sleep until next.
    /// Each due timer comes with the deadline it was armed at (an entry's machine forgets
    /// its recorded deadline only if it is the one that fired).
    #[allow(clippy::type_complexity)]
    pub(crate) fn take_due(
        &self,
        now: Instant,
    ) -> (Vec<(Instant, TimerId, TimerTarget)>, Option<Instant>) {
        let mut q = self.queue.lock();
        let mut due = Vec::new();
        while let Some(entry) = q.order.first_entry() {
            let (at, id) = *entry.key();
            if at > now {
                break;
            }
            let target = entry.remove();
            if matches!(target, TimerTarget::Hook(_)) {
                q.hooks.remove(&id);
            }
            due.push((at, id, target));
        }
        let next = q.order.keys().next().map(|(at, _)| *at);
        q.driver_wakes_at = next;
        (due, next)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{key, QueryClient, QueryOptions};

    /// The story: the gc kept a timer and a key for every entry it was ever told about,
    /// evicted or not, in an unbounded channel plus a timer queue (about 240 B per evicted
    /// key: 2.6 GiB after 10M keys through `max_queries(100_000)`). An entry's timers now
    /// leave the queue with it, so the queue never holds more than the live entries.
    #[tokio::test(start_paused = true)]
    async fn evicted_entries_leave_no_timer_behind() {
        let client = QueryClient::builder()
            .max_queries(100)
            .gc_time(Duration::from_secs(3600))
            .build();
        for i in 0..10_000_u32 {
            let opts = QueryOptions::new(key!["k", i], move || async move { Ok::<_, String>(i) });
            client.fetch_query(&opts).await.unwrap();
            client.set_query_data(key!["manual", i], i).unwrap();
        }
        let live = client.shared.cache.len();
        assert!(live <= 100);
        assert!(
            client.shared.timers.len() <= live,
            "{} timers for {live} entries",
            client.shared.timers.len()
        );
        client.clear();
        assert_eq!(client.shared.timers.len(), 0);
    }
}
