//! The timer driver: the one task that fires the client's timers (see `timers.rs`) — gc
//! of unused entries, stale notices of observed entries, observers' polls. It is the
//! engine's side of the timer queue: the queue only orders deadlines; this knows what
//! firing one does.

use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::engine::Shared;
use crate::timers::{TimerKind, TimerTarget};
use crate::worker::Running;

/// The driver: fires due timers, then sleeps until the next deadline or an earlier arm.
pub(crate) async fn drive(shared: Weak<Shared>, wake: Arc<Notify>, _running: Running) {
    loop {
        let next = {
            let Some(shared) = shared.upgrade() else {
                return; // the client is gone
            };
            let (due, next) = shared.timers.take_due(Instant::now());
            for ((id, kind), target) in due {
                fire(&shared, id, kind, target);
            }
            next
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

fn fire(shared: &Arc<Shared>, id: u64, kind: TimerKind, target: TimerTarget) {
    match (kind, target) {
        (TimerKind::Gc, TimerTarget::Entry(key)) => shared.cache.collect(&key, id),
        (_, TimerTarget::Entry(key)) => {
            let entry = shared
                .cache
                .with(&key, |e| (e.id() == id).then(|| e.clone()))
                .flatten();
            if let Some(entry) = entry {
                entry.on_stale_timer(shared);
            }
        }
        (_, TimerTarget::Hook(hook)) => {
            if let Some(hook) = hook.upgrade() {
                hook.fire();
            }
        }
    }
}
