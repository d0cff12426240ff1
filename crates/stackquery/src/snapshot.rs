//! Serializable snapshots of persisted queries ([`QueryClient::dehydrate`] /
//! [`QueryClient::hydrate`]): for restarts and hand-offs between processes.
//!
//! [`QueryClient::dehydrate`]: crate::QueryClient::dehydrate
//! [`QueryClient::hydrate`]: crate::QueryClient::hydrate

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::storage::typed::PersistFns;
use crate::storage::{Envelope, StorageError, ENVELOPE_VERSION};

/// A snapshot of every persisted query in memory (JSON-friendly: data is a JSON value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DehydratedState {
    /// Snapshot format version (the envelope version). [`hydrate`] refuses a snapshot
    /// of any other version with an error, and restores nothing from it.
    ///
    /// [`hydrate`]: crate::QueryClient::hydrate
    pub version: u32,
    /// One item per persisted query that had data.
    pub queries: Vec<DehydratedQuery>,
}

/// An empty snapshot of the current format version.
impl Default for DehydratedState {
    fn default() -> Self {
        DehydratedState::new(Vec::new())
    }
}

impl DehydratedState {
    pub(crate) fn new(queries: Vec<DehydratedQuery>) -> Self {
        DehydratedState {
            version: ENVELOPE_VERSION,
            queries,
        }
    }
}

/// One query in a [`DehydratedState`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DehydratedQuery {
    /// The key's `Display` text, e.g. `["user",1]`.
    pub key: String,
    /// The data, as JSON.
    pub data: serde_json::Value,
    /// When the data was fetched or set (milliseconds since the UNIX epoch).
    pub data_updated_at_ms: u64,
    /// Whether it had been invalidated.
    pub invalidated: bool,
}

impl DehydratedQuery {
    pub(crate) fn decode<T>(self, fns: PersistFns<T>) -> Result<Envelope<T>, StorageError> {
        Ok(Envelope {
            version: ENVELOPE_VERSION,
            data: (fns.from_json)(self.data)?,
            data_updated_at_ms: self.data_updated_at_ms,
            invalidated: self.invalidated,
        })
    }
}

/// Snapshot items restored by `hydrate` for keys not in memory yet, kept until a persisted
/// query of the key claims them.
///
/// Bounded: an item nobody claims within the client's default gc time is dropped (an entry
/// holding it would have been collected by then), at most `max_queries` items are kept
/// (the oldest data goes first), and the map gives its memory back as it empties.
pub(crate) struct Restored {
    items: parking_lot::Mutex<HashMap<String, (DehydratedQuery, Instant)>>,
    /// Lets the miss path skip the lock when nothing is restored (the common case).
    empty: AtomicBool,
}

impl Restored {
    pub(crate) fn new() -> Self {
        Restored {
            items: parking_lot::Mutex::new(HashMap::new()),
            empty: AtomicBool::new(true),
        }
    }

    /// True when no item waits (one atomic load).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.empty.load(Ordering::Acquire)
    }

    /// Keeps `q` unless an item at least as new is kept for its key; then drops what has
    /// waited longer than `keep_for` and trims to `max` items. Returns whether `q` is kept.
    pub(crate) fn offer(&self, q: DehydratedQuery, keep_for: Duration, max: Option<usize>) -> bool {
        let now = Instant::now();
        let mut items = self.items.lock();
        let newer = match items.get(&q.key) {
            Some((old, _)) => old.data_updated_at_ms < q.data_updated_at_ms,
            None => true,
        };
        if newer {
            items.insert(q.key.clone(), (q, now));
        }
        Self::trim(&mut items, now, keep_for, max);
        self.empty.store(items.is_empty(), Ordering::Release);
        newer
    }

    /// Takes the item for `key`, if one is kept and has not outstayed `keep_for`.
    pub(crate) fn take(&self, key: &str, keep_for: Duration) -> Option<DehydratedQuery> {
        if self.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut items = self.items.lock();
        let item = items.remove(key);
        Self::trim(&mut items, now, keep_for, None);
        self.empty.store(items.is_empty(), Ordering::Release);
        let (q, at) = item?;
        crate::deadline::checked_after(at, keep_for)
            .is_none_or(|until| now < until)
            .then_some(q)
    }

    fn trim(
        items: &mut HashMap<String, (DehydratedQuery, Instant)>,
        now: Instant,
        keep_for: Duration,
        max: Option<usize>,
    ) {
        items.retain(|_, (_, at)| {
            crate::deadline::checked_after(*at, keep_for).is_none_or(|u| now < u)
        });
        if let Some(max) = max {
            if items.len() > max {
                let mut by_age: Vec<(u64, String)> = items
                    .iter()
                    .map(|(k, (q, _))| (q.data_updated_at_ms, k.clone()))
                    .collect();
                by_age.sort_unstable();
                for (_, k) in by_age.into_iter().take(items.len() - max) {
                    items.remove(&k);
                }
            }
        }
        // Give memory back once the map is mostly empty (a large snapshot was claimed).
        if items.capacity() > 64 && items.len() < items.capacity() / 4 {
            items.shrink_to_fit();
        }
    }
}
