//! What a lagging subscriber may have missed.
//!
//! A [`BusSubscription`](super::BusSubscription) that falls more than the channel's capacity
//! behind loses the oldest events it had not read yet (the channel is a bounded ring shared
//! by every subscriber: a stuck subscriber must not hold memory without bound). Those events
//! are gone, but *which keys they concerned* is cheap to remember, and that is all a cache
//! needs to stay correct: everything those events might have changed is treated as stale,
//! everything else stays fresh.
//!
//! So the listener numbers every event it emits (a local sequence, not sent on the wire) and
//! records each event's scope here before sending it. A subscriber remembers the number of
//! the last event it read; when it lags, it asks the digest for every scope touched after
//! that number. That is a superset of what it missed (it also includes scopes of events it
//! has yet to read, which it will apply again: harmless, every change is idempotent), so
//! nothing another instance invalidated is ever kept as fresh.
//!
//! The digest is bounded, with three levels of precision:
//!
//! 1. **Exact scopes** (the key or prefix a message named), in two generations of at most
//!    [`SCOPES_PER_GENERATION`] distinct scopes each: a full generation becomes the old one
//!    and the one before is dropped. This covers at least the last
//!    `SCOPES_PER_GENERATION` distinct scopes, however many messages repeated them.
//! 2. **Roots** (a key's first part, e.g. `["user"]` for `["user", 7]`), at most
//!    [`MAX_ROOTS`] of them, for a subscriber that fell behind further than the exact level
//!    reaches: everything under the roots touched since is stale. Apps name keys by kind
//!    first, so this still spares the kinds nobody touched.
//! 3. **Everything**, when the roots overflowed too, or a missed event concerned
//!    everything (an invalidation of the empty key, a reconnection).
//!
//! Memory: a scope costs a map slot (about 40 bytes) plus a share of its key, which the
//! event holds anyway; at most `2 × SCOPES_PER_GENERATION + MAX_ROOTS` slots, under 1.5 MB.

use std::collections::HashMap;
use std::mem;

use super::{BusEvent, BusMessageKind};
use crate::{KeyScope, QueryKey};

/// Distinct exact scopes per generation (two generations are kept).
pub(crate) const SCOPES_PER_GENERATION: usize = 16_384;
/// Distinct roots remembered before the digest stops narrowing at all.
pub(crate) const MAX_ROOTS: usize = 1_024;

/// What a lagging subscriber may have missed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lost {
    /// Anything at all: every entry may be stale.
    Everything,
    /// Only entries in these scopes may be stale.
    Scopes(Vec<KeyScope>),
}

/// The scopes of recent events, by the sequence number of the last event that touched
/// each (see the module docs).
#[derive(Default)]
pub(crate) struct Digest {
    /// The number of the last event recorded (0: none yet; the first is 1).
    seq: u64,
    /// The number of the last event that concerned everything (0: none).
    everything: u64,
    /// The current generation of exact scopes…
    current: HashMap<KeyScope, u64>,
    /// …and the previous one.
    previous: HashMap<KeyScope, u64>,
    /// The exact level knows every event numbered above this.
    exact_floor: u64,
    /// Where the current generation began (its events are numbered above this).
    current_floor: u64,
    roots: HashMap<KeyScope, u64>,
    /// The root level knows every event numbered above this.
    roots_floor: u64,
}

impl Digest {
    /// The number of the last event recorded: a new subscriber has read up to here.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Numbers `event` and records its scope; returns its number.
    pub(crate) fn record(&mut self, event: &BusEvent) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        match scope_of(event) {
            None => self.everything = seq,
            Some(scope) => {
                if self.current.len() >= SCOPES_PER_GENERATION && !self.current.contains_key(&scope)
                {
                    // The previous generation is forgotten: the exact level now starts
                    // where the current one began.
                    self.previous = mem::take(&mut self.current);
                    self.exact_floor = self.current_floor;
                    self.current_floor = seq - 1;
                }
                let root = root_of(&scope);
                self.current.insert(scope, seq);
                if self.roots.len() >= MAX_ROOTS && !self.roots.contains_key(&root) {
                    // Too many kinds of keys to tell apart: events up to here are only
                    // covered by "everything".
                    self.roots.clear();
                    self.roots_floor = seq - 1;
                }
                self.roots.insert(root, seq);
            }
        }
        seq
    }

    /// Everything that events numbered above `after` may have changed.
    pub(crate) fn since(&self, after: u64) -> Lost {
        if self.everything > after {
            return Lost::Everything;
        }
        let newer = |map: &HashMap<KeyScope, u64>| {
            map.iter()
                .filter(|(_, seq)| **seq > after)
                .map(|(scope, _)| scope.clone())
                .collect::<Vec<_>>()
        };
        if after >= self.exact_floor {
            let mut scopes = newer(&self.current);
            if after < self.current_floor {
                // A scope in both generations is listed once (a duplicate would only cost
                // a second lookup).
                scopes.extend(
                    newer(&self.previous)
                        .into_iter()
                        .filter(|s| !self.current.contains_key(s)),
                );
            }
            Lost::Scopes(scopes)
        } else if after >= self.roots_floor {
            Lost::Scopes(newer(&self.roots))
        } else {
            Lost::Everything
        }
    }
}

/// The scope an event may change; `None`: every entry.
fn scope_of(event: &BusEvent) -> Option<KeyScope> {
    let BusEvent::Message(msg) = event else {
        // A reconnection (or a lag, never sent through the channel): anything.
        return None;
    };
    let scope = match &msg.kind {
        BusMessageKind::Invalidate { scope } | BusMessageKind::Remove { scope } => {
            scope.clone().normalized()
        }
        BusMessageKind::Set { key } => KeyScope::Exact(key.clone()),
    };
    (!scope.is_all()).then_some(scope)
}

/// The widest scope that holds `scope`: every key that shares its key's first part.
fn root_of(scope: &KeyScope) -> KeyScope {
    let first = scope.key().and_then(|k| k.parts().first().cloned());
    KeyScope::prefix(QueryKey::new(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{BusMessage, InstanceId};
    use crate::key;

    fn invalidate(key: QueryKey, exact: bool) -> BusEvent {
        let scope = if exact {
            KeyScope::Exact(key)
        } else {
            KeyScope::prefix(key)
        };
        BusEvent::Message(BusMessage::new(
            InstanceId::from(1),
            BusMessageKind::Invalidate { scope },
        ))
    }

    /// A scope as (key, is a prefix).
    fn pair(scope: KeyScope) -> (QueryKey, bool) {
        match scope {
            KeyScope::Exact(key) => (key, false),
            KeyScope::Prefix(key) => (key, true),
            KeyScope::All => panic!("`All` is `Lost::Everything`"),
        }
    }

    fn scopes(lost: Lost) -> Vec<(QueryKey, bool)> {
        let Lost::Scopes(scopes) = lost else {
            panic!("{lost:?}")
        };
        let mut out: Vec<_> = scopes.into_iter().map(pair).collect();
        out.sort_by_key(|(k, p)| (k.to_string(), *p));
        out
    }

    #[test]
    fn a_lag_names_exactly_the_scopes_touched_since() {
        let mut d = Digest::default();
        d.record(&invalidate(key!["a", 1], true));
        let read = d.record(&invalidate(key!["b", 1], true));
        d.record(&invalidate(key!["c"], false));
        d.record(&invalidate(key!["a", 1], true));
        assert_eq!(
            scopes(d.since(read)),
            vec![(key!["a", 1], false), (key!["c"], true)]
        );
        assert_eq!(scopes(d.since(d.seq())), vec![]);
        d.record(&BusEvent::Reconnected);
        assert_eq!(d.since(read), Lost::Everything);
    }

    #[test]
    fn an_invalidation_of_everything_is_everything() {
        let mut d = Digest::default();
        d.record(&invalidate(key![], false));
        assert_eq!(d.since(0), Lost::Everything);
        // The empty key alone is an exact scope like any other.
        let read = d.seq();
        d.record(&invalidate(key![], true));
        assert_eq!(scopes(d.since(read)), vec![(key![], false)]);
    }

    #[test]
    fn past_the_exact_generations_roots_then_everything() {
        let mut d = Digest::default();
        let start = d.seq();
        d.record(&invalidate(key!["b", 7], true));
        for i in 0..(2 * SCOPES_PER_GENERATION + 1) {
            d.record(&invalidate(key!["other", i], true));
        }
        // Too far back for the exact level: the roots.
        assert_eq!(
            scopes(d.since(start)),
            vec![(key!["b"], true), (key!["other"], true)]
        );
        // Recent enough: exact, both generations.
        let recent = d.seq() - SCOPES_PER_GENERATION as u64;
        let Lost::Scopes(exact) = d.since(recent) else {
            panic!()
        };
        assert_eq!(exact.len(), SCOPES_PER_GENERATION);
        assert!(exact.into_iter().all(|s| !pair(s).1));
        for i in 0..=MAX_ROOTS {
            d.record(&invalidate(key![format!("kind{i}"), 1], true));
        }
        assert_eq!(d.since(start), Lost::Everything);
    }
}
