//! Initial data and structural sharing on the engine side: seeding an empty entry with a
//! query's `initial_data` (weighed, and built if lazy, with no lock held), and keeping
//! the held `Arc` when a fetch returns equal data.

use std::sync::Arc;
use std::time::SystemTime;

use super::Shared;
use crate::entry::{Entry, Event};
use crate::options::{stamp_and_age, QueryOptions};
use crate::user_code::contain;

impl Shared {
    /// Seeds `entry` with `opts`' initial data if it has some and the entry holds no
    /// data. A persisted query whose stored copy has not been read yet is left alone:
    /// its first fetch reads the stored copy and falls back on the initial data
    /// (`initial_for_hydration`). One pointer check for queries without initial data.
    #[inline]
    pub(crate) fn seed_initial<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        opts: &QueryOptions<T>,
    ) {
        if let Some((initial, given_at)) = opts.initial() {
            self.seed_initial_slow(entry, opts, initial, given_at);
        }
    }

    #[cold]
    fn seed_initial_slow<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry<T>>,
        opts: &QueryOptions<T>,
        initial: &crate::options::InitialData<T>,
        given_at: Option<SystemTime>,
    ) {
        let Some(hydrated) = entry.seedable() else {
            return; // holds data: initial data is for empty entries only
        };
        if !hydrated && self.may_hydrate(entry, opts) {
            return;
        }
        let Ok(data) = initial.get() else {
            return; // the builder panicked (logged): no initial data
        };
        let weight = self.weigh_for_query(opts, &data, &entry.key);
        let (at, age) = stamp_and_age(given_at);
        self.dispatch(
            entry,
            Event::Seed {
                data,
                weight,
                at,
                age,
            },
        );
    }

    /// Whether a first fetch of `opts` on `entry` would read a stored copy (the same rule
    /// as the fetch task's).
    fn may_hydrate<T: Send + Sync + 'static>(
        &self,
        entry: &Entry<T>,
        opts: &QueryOptions<T>,
    ) -> bool {
        let persisted =
            opts.persist.is_some() || self.persist_rules.find::<T>(&entry.key).is_some();
        persisted && (self.tier.is_some() || !self.restored.is_empty())
    }

    /// Structural sharing: `fetched`, or the data `entry` holds when it is equal to it
    /// (the query's equality, run with no lock held; a panic counts as "changed").
    pub(crate) fn share_structure<T: Send + Sync + 'static>(
        entry: &Entry<T>,
        opts: &QueryOptions<T>,
        fetched: Arc<T>,
    ) -> Arc<T> {
        let Some(eq) = opts.structural_eq() else {
            return fetched;
        };
        let (Some(held), _) = entry.data_and_gen() else {
            return fetched;
        };
        if Arc::ptr_eq(&held, &fetched)
            || contain("structural_sharing", || eq(&held, &fetched)).unwrap_or(false)
        {
            held
        } else {
            fetched
        }
    }
}
