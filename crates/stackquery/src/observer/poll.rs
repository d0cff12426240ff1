//! Polling (`refetch_interval`) on the client's shared timer queue.
//!
//! A poll is a `Poll` timer of the observer (keyed by its `poll_id`), not a task of its
//! own: the queue lives in the client and its driver restarts itself on the current
//! runtime, so polling survives the death of the runtime it started on (a client in a
//! `static` shared by several `#[tokio::test]`s, a sync wrapper with a runtime per call).
//!
//! When the timer fires, the driver spawns the refetch (it must not block) and the next
//! poll is armed when that refetch completes, one interval later: a refetch joins a fetch
//! already in flight, so polls never overlap and a slow fetch delays the next poll instead
//! of stacking polls up. If the refetch's task is dropped (its runtime shut down), the
//! next poll is armed all the same, for the next driver to fire.

use std::sync::Weak;
use std::time::Duration;

use crate::entry::Mode;
use crate::observer::{ObserverInner, Subscribers};
use crate::timers::{TimerHook, TimerKind, TimerTarget};

impl<T: Send + Sync + 'static, R: Send + Sync + 'static> TimerHook for ObserverInner<T, R> {
    fn fire(&self) {
        self.poll_now();
    }
}

/// Arms the next poll when dropped: after the refetch completed, or with its task.
struct NextPoll<T: Send + Sync + 'static, R: Send + Sync + 'static>(Weak<ObserverInner<T, R>>);

impl<T, R> Drop for NextPoll<T, R>
where
    T: Send + Sync + 'static,
    R: Send + Sync + 'static,
{
    fn drop(&mut self) {
        if let Some(o) = self.0.upgrade() {
            o.arm_next_poll();
        }
    }
}

impl<T: Send + Sync + 'static, R: Send + Sync + 'static> ObserverInner<T, R> {
    /// The poll interval, if this observer polls: a disabled query never fetches by itself,
    /// so it never polls; a zero interval means no polling.
    fn poll_interval(&self) -> Option<Duration> {
        let opts = self.opts();
        if !opts.enabled {
            return None;
        }
        opts.refetch_interval.filter(|d| !d.is_zero())
    }

    /// Starts polling (the observer has subscribers and an entry): first poll one interval
    /// from now.
    pub(super) fn start_polling(&self) {
        if self.poll_interval().is_none() {
            return;
        }
        let mut subs = self.subs.lock();
        if subs.polling || subs.count() == 0 {
            return;
        }
        subs.polling = true;
        self.arm_poll_locked();
    }

    /// Stops polling (no subscriber left, or the entry was removed), under the same lock as
    /// the caller's decision, so a subscriber arriving meanwhile restarts it. A refetch in
    /// flight finishes, but arms nothing.
    pub(super) fn stop_polling_locked(&self, subs: &mut Subscribers<T, R>) {
        subs.polling = false;
        self.shared
            .timers
            .disarm(self.poll_id, TimerKind::Poll, None);
    }

    /// Arms the next poll one interval from now, if still polling.
    fn arm_next_poll(&self) {
        let subs = self.subs.lock();
        if subs.polling {
            self.arm_poll_locked();
        }
    }

    /// Arms the poll timer (the subscribers' lock is held, so a concurrent stop cannot be
    /// undone by a late arm). `Duration::MAX`, or any interval past the clock's range,
    /// never polls.
    fn arm_poll_locked(&self) {
        let now = self.shared.runtime.now();
        let Some(at) = self
            .poll_interval()
            .and_then(|d| crate::deadline::checked_after(now, d))
        else {
            return;
        };
        let hook: Weak<dyn TimerHook> = self.weak_self.clone();
        self.shared.timers.arm(
            self.poll_id,
            TimerKind::Poll,
            None,
            at,
            TimerTarget::Hook(hook),
        );
    }

    /// The poll timer fired (on the timer driver, which must not block): spawn the refetch.
    /// A paused observer skips the fetch but keeps the beat.
    fn poll_now(&self) {
        if !self.subs.lock().polling {
            return;
        }
        let next = NextPoll(self.weak_self.clone());
        if self.paused.load(std::sync::atomic::Ordering::SeqCst) {
            return; // `next` arms the next poll
        }
        let shared = self.shared.clone();
        let opts = self.opts();
        // On the client's host (tokio by default). Without one, `next` is dropped at once
        // and arms the next poll: the beat goes on, as when the fetch fails.
        let runtime = shared.runtime.clone();
        let _ = runtime.spawn(async move {
            let _next = next;
            // Joins a fetch in flight, so polls never overlap; a failed poll is logged and
            // the next one tries again.
            if let Err(error) = shared.run(&opts, Mode::Force).await {
                tracing::debug!(key = %opts.key, error = %crate::error::report(&error), "poll failed");
            }
        });
    }
}
