//! The copy-on-write listener list of the notification primitive (see `notify/mod.rs`).
//! On its own, without dependencies, so the shuttle test compiles it with the entry's
//! state machine, which keeps its observers in one.

use std::ops::Deref;
use std::sync::Arc;

/// A copy-on-write list, kept under its owner's lock.
///
/// Notifying takes a [`Snapshot`] (one `Arc` clone, no allocation) and runs the listeners
/// after the owner's lock is released. Changing the list while a snapshot is out copies
/// it, so a notification in progress keeps the list it started with, and a listener may
/// change the list from inside its call. Empty, it holds no allocation at all: most lists
/// (an entry's observers) stay empty.
pub(crate) struct CowList<L> {
    items: Option<Arc<Vec<L>>>,
}

impl<L> Default for CowList<L> {
    fn default() -> Self {
        CowList { items: None }
    }
}

impl<L> CowList<L> {
    /// Holds no allocation (the unit tests check that an emptied list frees it).
    #[cfg(test)]
    pub(crate) fn is_unallocated(&self) -> bool {
        self.items.is_none()
    }

    /// The list as it is now; later changes to the list do not show in it.
    pub(crate) fn snapshot(&self) -> Snapshot<L> {
        Snapshot(self.items.clone())
    }
}

impl<L: Clone> CowList<L> {
    pub(crate) fn push(&mut self, item: L) {
        Arc::make_mut(self.items.get_or_insert_with(Default::default)).push(item);
    }

    /// Removes the first item `is` picks and returns it. The list is copied only if a
    /// snapshot is out *and* something is removed.
    pub(crate) fn remove_where(&mut self, is: impl FnMut(&L) -> bool) -> Option<L> {
        let list = self.items.as_mut()?;
        let i = list.iter().position(is)?;
        let removed = Arc::make_mut(list).remove(i);
        if list.is_empty() {
            self.items = None;
        }
        Some(removed)
    }
}

impl<T: ?Sized> CowList<Arc<T>> {
    /// Removes `item` by identity (the same allocation), not by equality: two listeners
    /// that compare equal are still two subscriptions.
    pub(crate) fn remove(&mut self, item: &Arc<T>) -> bool {
        self.remove_where(|x| Arc::ptr_eq(x, item)).is_some()
    }
}

impl<L> Deref for CowList<L> {
    type Target = [L];
    fn deref(&self) -> &[L] {
        self.items.as_deref().map_or(&[], Vec::as_slice)
    }
}

/// A [`CowList`] as it was when the snapshot was taken.
pub(crate) struct Snapshot<L>(Option<Arc<Vec<L>>>);

impl<L> Deref for Snapshot<L> {
    type Target = [L];
    fn deref(&self) -> &[L] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}
