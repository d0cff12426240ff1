//! The prefix index: which keys lie under a prefix, at a cost that grows with the matches.
//!
//! Every key of `n` parts is filed under each of its proper prefixes (its first `1..n`
//! parts), in a set found by the prefix's hash. A key under the prefix itself is looked up
//! in the cache's map, so it needs no entry here; a one-part key is filed nowhere.
//!
//! An ordered set of all keys (a `BTreeSet`) answered the same question, but inserting
//! into it cost about 17 levels of part-by-part key comparisons (~4,900 instructions per
//! new key at 100,000 keys); here an insert hashes the prefix parts once per proper prefix
//! and stores one pointer per set. Two prefixes whose hashes collide share a set; lookups
//! filter with `starts_with`, so a collision costs time, never a wrong answer.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use crate::key::{KeyHashBuilder, KeyPart, QueryKey};

type Keys = HashSet<QueryKey, KeyHashBuilder>;

#[derive(Default)]
pub(crate) struct PrefixIndex {
    /// Keys by the hash of one of their proper prefixes.
    by_prefix: HashMap<u64, Keys, KeyHashBuilder>,
}

/// The hash a prefix is filed under (seeded per process, like the keys' own hashes).
fn prefix_hash(parts: &[KeyPart]) -> u64 {
    crate::random::process_seed().hash_one(parts)
}

impl PrefixIndex {
    pub(crate) fn insert(&mut self, key: &QueryKey) {
        let parts = key.parts();
        for n in 1..parts.len() {
            self.by_prefix
                .entry(prefix_hash(&parts[..n]))
                .or_default()
                .insert(key.clone());
        }
    }

    pub(crate) fn remove(&mut self, key: &QueryKey) {
        let parts = key.parts();
        for n in 1..parts.len() {
            let h = prefix_hash(&parts[..n]);
            if let Some(set) = self.by_prefix.get_mut(&h) {
                set.remove(key);
                if set.is_empty() {
                    self.by_prefix.remove(&h);
                }
            }
        }
    }

    /// Keys strictly longer than `prefix` that start with it (a key equal to the prefix is
    /// the caller's to look up). Any order.
    pub(crate) fn longer_than<'a>(
        &'a self,
        prefix: &'a QueryKey,
    ) -> impl Iterator<Item = &'a QueryKey> + 'a {
        let set = if prefix.is_empty() {
            None
        } else {
            self.by_prefix.get(&prefix_hash(prefix.parts()))
        };
        set.into_iter()
            .flatten()
            .filter(move |k| k.len() > prefix.len() && k.starts_with(prefix))
    }

    /// Prefixes filed (for the tests: nothing is kept for keys that are gone).
    #[cfg(test)]
    pub(crate) fn prefixes(&self) -> usize {
        self.by_prefix.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key;

    fn sorted<'a>(it: impl Iterator<Item = &'a QueryKey>) -> Vec<QueryKey> {
        let mut v: Vec<QueryKey> = it.cloned().collect();
        v.sort();
        v
    }

    #[test]
    fn finds_the_keys_under_a_prefix_and_only_those() {
        let mut ix = PrefixIndex::default();
        for k in [
            key!["user", 1],
            key!["user", 2, "posts"],
            key!["users", 1],
            key!["user"],
            key!["post", 1],
        ] {
            ix.insert(&k);
        }
        assert_eq!(
            sorted(ix.longer_than(&key!["user"])),
            vec![key!["user", 1], key!["user", 2, "posts"]]
        );
        assert_eq!(
            sorted(ix.longer_than(&key!["user", 2])),
            vec![key!["user", 2, "posts"]]
        );
        assert!(ix.longer_than(&key!["user", 1]).next().is_none());
        assert!(ix.longer_than(&key!["nobody"]).next().is_none());
    }

    /// Removing every key leaves no prefix set behind: the index follows the live keys.
    #[test]
    fn removal_leaves_nothing_behind() {
        let mut ix = PrefixIndex::default();
        let keys: Vec<_> = (0..100).map(|i| key!["a", i % 7, i]).collect();
        for k in &keys {
            ix.insert(k);
        }
        assert_eq!(ix.longer_than(&key!["a"]).count(), 100);
        for k in &keys {
            ix.remove(k);
        }
        assert_eq!(ix.prefixes(), 0);
    }
}
