//! The timer driver: the one task that fires the client's timers (see `timers.rs`) — gc
//! of unused entries, stale notices of observed entries, observers' polls. It is the
//! engine's side of the timer queue: the queue only orders deadlines; this knows what
//! firing one does.

use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Shared;
use crate::timers::{TimerKind, TimerTarget};
use crate::worker::Running;

/// The driver: fires due timers, then sleeps until the next deadline or an earlier arm.
pub(crate) async fn drive(shared: Weak<Shared>, wake: Arc<Notify>, _running: Running) {
    loop {
        let next = {
            let Some(shared) = shared.upgrade() else {
                return; // the client is gone
            };
            let now = shared.runtime.now();
            let (due, next) = shared.timers.take_due(now);
            if !due.is_empty() {
                shared.publish_metrics();
            }
            for (at, (id, kind), target) in due {
                fire(&shared, at, now, id, kind, target);
            }
            next.map(|at| (at, shared.runtime.clone()))
        };
        match next {
            Some((at, runtime)) => {
                // Whichever comes first (`futures`' select: tokio's `select!` would need
                // its `macros` feature, which the library does not force on users).
                let sleep = std::pin::pin!(runtime.sleep_until(at));
                let woken = std::pin::pin!(wake.notified());
                futures::future::select(sleep, woken).await;
            }
            None => wake.notified().await,
        }
    }
}

fn fire(
    shared: &Arc<Shared>,
    at: Instant,
    now: Instant,
    id: u64,
    kind: TimerKind,
    target: TimerTarget,
) {
    match (kind, target) {
        (TimerKind::Gc, TimerTarget::Entry(key)) => {
            shared.cache.collect(&key, id, at, now);
            shared.send_removals();
        }
        (_, TimerTarget::Entry(key)) => {
            let entry = shared
                .cache
                .with(&key, |e| (e.id() == id).then(|| e.clone()))
                .flatten();
            if let Some(entry) = entry {
                entry.on_stale_timer(shared, at);
            }
        }
        (_, TimerTarget::Hook(hook)) => {
            if let Some(hook) = hook.upgrade() {
                hook.fire();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{key, QueryClient, QueryOptions};

    /// Three observers with three stale times share one entry: one `Stale` timer in the
    /// queue (no task or timer per observer), and none once nobody observes the entry.
    #[tokio::test(start_paused = true)]
    async fn an_observed_entry_has_one_stale_timer_whatever_its_observers() {
        let client = QueryClient::new();
        let opts = QueryOptions::new(key!["k"], || async { Ok::<_, String>(2_u32) }).enabled(false);
        let observe = |secs| {
            let o = client.watch(&opts.clone().stale_time(Duration::from_secs(secs)));
            o.subscribe(|_| {})
        };
        let mut subs = vec![observe(5)];
        // No data yet, so no stale timer: whatever is armed now is not about staleness.
        let before = client.shared.timers.len();
        client.set_query_data(key!["k"], 1_u32).unwrap();
        assert_eq!(client.shared.timers.len(), before + 1, "one stale timer");
        subs.push(observe(20));
        subs.push(observe(60));
        assert_eq!(
            client.shared.timers.len(),
            before + 1,
            "not one per observer"
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            client.shared.timers.len(),
            before + 1,
            "moved on to the 60 s deadline"
        );
        drop(subs);
        assert_eq!(
            client.shared.timers.len(),
            1,
            "unobserved: only the gc timer"
        );
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(client.shared.timers.len(), 0);
    }
}
