//! "Data turns stale" notices. An observer's state says whether its data is stale, judged
//! with its own stale time; nothing else changes when that moment passes, so without a
//! notice its listeners would keep a state that says "fresh" forever.
//!
//! Each observed entry has at most one `Stale` timer on the client's shared timer queue (no
//! task per entry or observer): it is armed at the earliest observer deadline
//! (`updated_at + stale_time`) that has not passed yet, re-armed after every data write and
//! every observer change, and when it fires the observers recompute their state (those
//! whose data just turned stale deliver it) and the timer moves to the next deadline.

use std::sync::Arc;

use tokio::time::Instant;

use crate::engine::Shared;
use crate::entry::{Entry, EntryInner};
use crate::timers::{TimerKind, TimerTarget};

impl<T> EntryInner<T> {
    /// The earliest moment after `now` at which the data turns stale for one of the
    /// observers (`None`: no observer, no data, already invalidated, or never).
    fn next_stale_deadline(&self, now: Instant) -> Option<Instant> {
        if self.removed || self.state.is_invalidated || self.state.data.is_none() {
            return None;
        }
        let written = self.updated_at?;
        self.listeners
            .iter()
            .flat_map(|l| l.iter())
            // `Duration::MAX` (or anything past the clock's range) is "never stale".
            .filter_map(|w| crate::deadline::checked_after(written, w.stale_time))
            .filter(|at| *at > now)
            .min()
    }
}

impl<T: Send + Sync + 'static> Entry<T> {
    /// Moves the entry's stale timer to the next observer deadline, or disarms it. Called
    /// after anything that changes the data, its stamp, or the observers. Costs nothing
    /// when the deadline did not move (an unobserved entry never touches the queue).
    pub(crate) fn rearm_stale_timer(&self, g: &mut EntryInner<T>, shared: &Shared) {
        let next = g.next_stale_deadline(Instant::now());
        if next == g.stale_timer_at {
            return;
        }
        g.stale_timer_at = next;
        match next {
            Some(at) => {
                let target = TimerTarget::Entry(self.key.clone());
                shared.timers.arm(self.id, TimerKind::Stale, at, target);
            }
            None => shared.timers.disarm(self.id, TimerKind::Stale),
        }
    }

    /// The stale timer fired: arm the next deadline, then let every observer recompute
    /// (outside the lock: observers run user code).
    pub(crate) fn stale_timer_fired(&self, shared: &Arc<Shared>) {
        let listeners = {
            let mut g = self.inner.lock();
            g.stale_timer_at = None; // the queue no longer holds it
            self.rearm_stale_timer(&mut g, shared);
            g.listeners.clone()
        };
        for w in listeners.iter().flat_map(|l| l.iter()) {
            w.listener.changed();
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
