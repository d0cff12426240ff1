//! A one-shot broadcast cell: one result, written once, handed to every waiter.
//!
//! This is the synchronisation core of a [`Flight`](super::Flight) (the deduplication
//! point): `resolve` stores the first result and wakes every registered waiter; `wait`
//! registers its waker and checks the result *under the same lock*, so a wake-up can never
//! be lost between the check and the wait; a waiter dropped before the result arrives
//! unregisters itself (its slot is reused), so abandoned callers leave nothing behind.
//! Wakers are called after the lock is released.
//!
//! This file uses only `std` and `crate::sync`: `tests/shuttle_flight.rs` compiles it
//! against shuttle's primitives and explores its interleavings (every waiter woken, one
//! result for all, no deadlock).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::sync::Mutex;

/// The cell. `R` is cloned once per waiter, so it should be cheap to clone (an `Arc`).
pub(crate) struct Slot<R> {
    inner: Mutex<Inner<R>>,
}

struct Inner<R> {
    result: Option<R>,
    /// Registered waiters by index; `None` is a slot freed by a dropped waiter.
    waiters: Vec<Option<Waker>>,
    /// Freed indices, reused by the next waiters.
    free: Vec<usize>,
}

impl<R: Clone> Slot<R> {
    /// An empty cell.
    pub(crate) fn new() -> Self {
        Slot {
            inner: Mutex::new(Inner {
                result: None,
                waiters: Vec::new(),
                free: Vec::new(),
            }),
        }
    }

    /// Stores `result` unless a result is already stored, then wakes every waiter.
    /// Returns whether this call stored it (the first one wins).
    pub(crate) fn resolve(&self, result: R) -> bool {
        let wakers = {
            let mut g = self.inner.lock();
            if g.result.is_some() {
                return false;
            }
            g.result = Some(result);
            g.free = Vec::new();
            std::mem::take(&mut g.waiters)
        };
        // Outside the lock: a woken task may poll (and lock) at once on another thread.
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
        true
    }

    /// True once a result is stored.
    pub(crate) fn is_resolved(&self) -> bool {
        self.inner.lock().result.is_some()
    }

    /// Waits for the result. Dropping the future unregisters the waiter.
    pub(crate) fn wait(&self) -> Wait<'_, R> {
        Wait {
            slot: self,
            index: None,
        }
    }

    /// How many waiters are registered now (for tests).
    #[cfg(test)]
    pub(crate) fn waiters(&self) -> usize {
        let g = self.inner.lock();
        g.waiters.iter().filter(|w| w.is_some()).count()
    }
}

/// The future returned by [`Slot::wait`].
pub(crate) struct Wait<'a, R> {
    slot: &'a Slot<R>,
    /// Where this waiter's waker is registered.
    index: Option<usize>,
}

impl<R: Clone> Future for Wait<'_, R> {
    type Output = R;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        let this = self.get_mut();
        let mut g = this.slot.inner.lock();
        if let Some(r) = &g.result {
            // `resolve` took the registration with the wakers.
            this.index = None;
            return Poll::Ready(r.clone());
        }
        match this.index {
            Some(i) => match &mut g.waiters[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let waker = Some(cx.waker().clone());
                let i = match g.free.pop() {
                    Some(i) => {
                        g.waiters[i] = waker;
                        i
                    }
                    None => {
                        g.waiters.push(waker);
                        g.waiters.len() - 1
                    }
                };
                this.index = Some(i);
            }
        }
        Poll::Pending
    }
}

impl<R> Drop for Wait<'_, R> {
    fn drop(&mut self) {
        if let Some(i) = self.index.take() {
            let mut g = self.slot.inner.lock();
            // After `resolve` the registrations are gone (and indices never reused).
            if g.result.is_none() {
                g.waiters[i] = None;
                g.free.push(i);
            }
        }
    }
}
