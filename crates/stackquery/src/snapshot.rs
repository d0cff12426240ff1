//! Serializable snapshots of persisted queries ([`QueryClient::dehydrate`] /
//! [`QueryClient::hydrate`]): for restarts and hand-offs between processes.
//!
//! [`QueryClient::dehydrate`]: crate::QueryClient::dehydrate
//! [`QueryClient::hydrate`]: crate::QueryClient::hydrate

use serde::{Deserialize, Serialize};

use crate::storage::tiered::PersistFns;
use crate::storage::{Envelope, StorageError, ENVELOPE_VERSION};

/// A snapshot of every persisted query in memory (JSON-friendly: data is a JSON value).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DehydratedState {
    /// Snapshot format version (the envelope version).
    pub version: u32,
    /// One item per persisted query that had data.
    pub queries: Vec<DehydratedQuery>,
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
