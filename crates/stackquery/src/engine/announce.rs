//! Writing to the second tier, and then telling the other instances. Everything that does
//! "write, then announce" is here, so the order has one home: a message goes out only
//! once the write (or the delete that replaced it) has landed, and no instance can reload
//! older data as fresh after hearing it.

use std::sync::Arc;

use super::{ErasedEntry, Shared};
use crate::engine::tier::{AfterWrite, Landed, PendingWrite, PersistFns, Tier};
use crate::entry::Entry;
use crate::key::QueryKey;
use crate::scope::{KeyScope, StorageDelete};

/// Which bus message a bulk operation sends once its second-tier work has landed.
#[derive(Clone, Copy)]
pub(crate) enum Announce {
    Invalidate,
    Remove,
}

/// What a bulk operation covered: a whole key scope (a key-only filter), or only the
/// entries it matched (a narrowed filter).
#[derive(Clone, Copy)]
pub(crate) struct Covered<'a> {
    /// `Some`: the filter was by key only, and this is its scope.
    pub(crate) scope: Option<&'a KeyScope>,
    pub(crate) matched: &'a [ErasedEntry],
}

impl Covered<'_> {
    /// The second-tier deletes of the whole scope (none for a narrowed filter, which
    /// deletes the entries it matched).
    fn scope_deletes(&self) -> Vec<StorageDelete> {
        self.scope
            .map(KeyScope::storage_deletes)
            .unwrap_or_default()
    }
}

impl Shared {
    /// How the entry's data is persisted: as its query's options say, else as a client
    /// rule for its key and type says (`None`: not persisted).
    pub(crate) fn persist_fns<T: Send + Sync + 'static>(
        &self,
        entry: &Entry<T>,
    ) -> Option<PersistFns<T>> {
        entry
            .persist_option()
            .or_else(|| self.persist_rules.find::<T>(&entry.key))
    }

    /// The entry's current state as a second-tier write, if persisted and holding data.
    fn pending_write<T: Send + Sync + 'static>(
        &self,
        entry: &Entry<T>,
        after: Option<AfterWrite>,
    ) -> Result<PendingWrite<T>, Option<AfterWrite>> {
        // As `persist_fns`, with the query's ttl from the same read of the entry.
        let (own_fns, own_ttl) = entry.persist_settings();
        let Some(fns) = own_fns.or_else(|| self.persist_rules.find::<T>(&entry.key)) else {
            return Err(after);
        };
        let Some(p) = entry.persisted() else {
            return Err(after);
        };
        let ttl = own_ttl.or_else(|| {
            self.tier
                .as_ref()
                .and_then(|tier| tier.ttl_rule(&entry.key))
        });
        Ok(PendingWrite {
            key: entry.key.to_string(),
            fns,
            data: p.data,
            at: p.at,
            invalidated: p.invalidated,
            gc_time: p.gc_time,
            ttl,
            after,
        })
    }

    /// Queues a second-tier write of the entry's current state; `after` runs once it has
    /// landed. `Err` gives `after` back when nothing was queued (no storage, not
    /// persisted, or no data).
    pub(crate) fn write_behind<T: Send + Sync + 'static>(
        &self,
        entry: &Entry<T>,
        after: Option<AfterWrite>,
    ) -> Result<(), Option<AfterWrite>> {
        let Some(tier) = &self.tier else {
            return Err(after);
        };
        let write = self.pending_write(entry, after)?;
        tier.write(&self.counters, write);
        Ok(())
    }

    /// The write effect of a transition: the entry's state goes behind; with `announce`
    /// (a manual write) the other instances are told `Set` once the shared tier holds
    /// it, or `Invalidate` when it could not be written (the stored copy was deleted
    /// instead) or the key is not persisted here (an older stored copy is deleted first).
    pub(crate) fn write_and_announce<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Entry<T>,
        announce: bool,
    ) {
        let bus = announce && self.cluster.has_bus();
        let key = entry.key.clone();
        let hook = bus.then(|| self.publish_when_landed(key.clone()));
        let Err(hook) = self.write_behind(entry, hook) else {
            return;
        };
        if !announce {
            return;
        }
        match &self.tier {
            Some(tier) => tier.delete(&self.counters, key.to_string(), hook),
            None if bus => self.cluster.publish_invalidate(KeyScope::Exact(key)),
            None => {}
        }
    }

    /// A hook that announces how a write of `key` landed.
    fn publish_when_landed(self: &Arc<Self>, key: QueryKey) -> AfterWrite {
        let weak = Arc::downgrade(self);
        Box::new(move |landed| {
            if let Some(shared) = weak.upgrade() {
                shared.publish_landed(key, landed);
            }
        })
    }

    fn publish_landed(&self, key: QueryKey, landed: Landed) {
        match landed {
            Landed::Written => self.cluster.publish_set(key),
            Landed::Deleted => self.cluster.publish_invalidate(KeyScope::Exact(key)),
        }
    }

    /// The cluster's lease holder writes its result to the shared tier now (the others
    /// wait on it), then tells them what landed.
    #[cfg(feature = "redis")]
    pub(crate) async fn write_now_then_announce<T: Send + Sync + 'static>(&self, entry: &Entry<T>) {
        let Some(tier) = self.tier.as_ref() else {
            return;
        };
        let Ok(write) = self.pending_write(entry, None) else {
            return;
        };
        if let Some(landed) = tier.write_now(&self.counters, &write).await {
            self.publish_landed(entry.key.clone(), landed);
        }
    }

    /// The invalidation reaches the second tier before the other instances hear of it:
    /// copies of what this instance holds are rewritten with the invalidated flag (kept
    /// for stale-while-revalidate), other stored copies under a key-only filter are
    /// deleted (no instance can read them back as fresh); then the bus message goes out.
    pub(crate) fn invalidate_in_storage(self: &Arc<Self>, covered: Covered<'_>) {
        let Some(tier) = &self.tier else {
            drop(self.announce_after(0, covered, Announce::Invalidate));
            return;
        };
        let persisted: Vec<&ErasedEntry> = covered
            .matched
            .iter()
            .filter(|e| e.is_persisted(self))
            .collect();
        let deletes = covered.scope_deletes();
        let mut hooks = self
            .announce_after(
                deletes.len() + persisted.len(),
                covered,
                Announce::Invalidate,
            )
            .into_iter();
        self.delete_scope(tier, deletes, &mut hooks);
        for e in persisted {
            let hook = hooks.next().flatten();
            if let Err(hook) = e.write_state_behind(self, hook) {
                // No data to flag: make sure no stored copy is read back as fresh.
                tier.delete(&self.counters, e.key().to_string(), hook);
            }
        }
    }

    /// Removed or reset data must not come back from the second tier: delete the whole key
    /// tree when the filter is by key only, else the matched persisted entries. With
    /// `announce`, the other instances hear of the removal once the deletes have landed.
    pub(crate) fn forget_in_storage(self: &Arc<Self>, covered: Covered<'_>, announce: bool) {
        let persisted: Vec<&ErasedEntry> = if covered.scope.is_some() {
            Vec::new()
        } else {
            covered
                .matched
                .iter()
                .filter(|e| e.is_persisted(self))
                .collect()
        };
        let Some(tier) = &self.tier else {
            if announce {
                drop(self.announce_after(0, covered, Announce::Remove));
            }
            return;
        };
        let deletes = covered.scope_deletes();
        let n = deletes.len() + persisted.len();
        let mut hooks = if announce {
            self.announce_after(n, covered, Announce::Remove)
        } else {
            (0..n).map(|_| None).collect()
        }
        .into_iter();
        self.delete_scope(tier, deletes, &mut hooks);
        for e in persisted {
            tier.delete(&self.counters, e.key().to_string(), hooks.next().flatten());
        }
    }

    /// Queues the second-tier `deletes`, one hook each.
    fn delete_scope(
        &self,
        tier: &Tier,
        deletes: Vec<StorageDelete>,
        hooks: &mut impl Iterator<Item = Option<AfterWrite>>,
    ) {
        for delete in deletes {
            let hook = hooks.next().flatten();
            match delete {
                StorageDelete::Key(text) => tier.delete(&self.counters, text, hook),
                StorageDelete::Prefix(text) => tier.delete_prefix(&self.counters, text, hook),
            }
        }
    }

    /// Hooks that publish what was covered (one message for a key scope, else one per
    /// matched key) once all `n` second-tier operations they are attached to have landed.
    /// With no bus: `n` empty hooks.
    fn announce_after(
        self: &Arc<Self>,
        n: usize,
        covered: Covered<'_>,
        announce: Announce,
    ) -> Vec<Option<AfterWrite>> {
        if !self.cluster.has_bus() {
            return (0..n).map(|_| None).collect();
        }
        let messages: Vec<KeyScope> = match covered.scope {
            Some(scope) => vec![scope.clone()],
            None => covered
                .matched
                .iter()
                .map(|e| KeyScope::Exact(e.key().clone()))
                .collect(),
        };
        let weak = Arc::downgrade(self);
        let send = move || {
            if let Some(shared) = weak.upgrade() {
                for scope in messages {
                    match announce {
                        Announce::Invalidate => shared.cluster.publish_invalidate(scope),
                        Announce::Remove => shared.cluster.publish_remove(scope),
                    }
                }
            }
        };
        if n == 0 {
            send();
            return Vec::new();
        }
        crate::engine::tier::write_queue::after_all(n, send)
            .into_iter()
            .map(Some)
            .collect()
    }
}
