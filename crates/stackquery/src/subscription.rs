//! [`Subscription`]: the one handle that keeps a listener subscribed — to a query observer
//! or to a mutation. Dropping it (or calling [`unsubscribe`](Subscription::unsubscribe))
//! removes the listener.

use std::fmt;

/// Keeps a listener (or stream) subscribed, to a [`QueryObserver`](crate::QueryObserver) or
/// a [`Mutation`](crate::Mutation); dropping it (or [`unsubscribe`](Self::unsubscribe))
/// removes it. An observer leaves its entry when no subscriber is left.
#[must_use = "dropping a Subscription unsubscribes at once"]
pub struct Subscription {
    cancel: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    /// A subscription whose end runs `cancel` (once).
    pub(crate) fn new(cancel: impl FnOnce() + Send + Sync + 'static) -> Self {
        Subscription {
            cancel: Some(Box::new(cancel)),
        }
    }

    /// Unsubscribes now (same as dropping).
    pub fn unsubscribe(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(f) = self.cancel.take() {
            f();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.end();
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("active", &self.cancel.is_some())
            .finish()
    }
}
