//! Type-erased inspection of the cache's entries: [`QueryInfo`], what
//! [`QueryClient::inspect_queries`](crate::QueryClient::inspect_queries) and
//! [`QueryClient::query_info`](crate::QueryClient::query_info) return. Tools that do not
//! know an entry's data type (the devtools panel, logs, admin endpoints) read entries
//! through it.

use std::time::SystemTime;

use crate::key::QueryKey;
use crate::state::{FetchStatus, QueryStatus};

/// One query as an inspector sees it, whatever its data type: a point-in-time copy (it
/// does not follow later changes).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QueryInfo {
    /// The key.
    pub key: QueryKey,
    /// The data type the entry holds (`std::any::type_name`).
    pub type_name: &'static str,
    /// Data / error / neither.
    pub status: QueryStatus,
    /// Fetch in flight or not.
    pub fetch_status: FetchStatus,
    /// Observers subscribed to the key.
    pub observers: u32,
    /// Of those, the enabled ones (the entry is "active" when there is one).
    pub enabled_observers: u32,
    /// When the data held was fetched or written (wall clock).
    pub data_updated_at: Option<SystemTime>,
    /// Stale now: no data, invalidated, or older than the stale time of one of its
    /// observers (of its last caller when it has none) — as
    /// [`QueryState::is_stale`](crate::QueryState::is_stale).
    pub stale: bool,
    /// Marked stale by an invalidation, and not fetched since.
    pub invalidated: bool,
    /// Failed attempts of the current (or last) fetch.
    pub failure_count: u32,
    /// The last fetch's error, as text.
    pub error: Option<String>,
    /// Whether the query is persisted (its options or a client rule give its encoding).
    pub persisted: bool,
    /// The data held (`None`: no data).
    pub data: Option<DataDescription>,
}

/// The data an entry holds, described without knowing its type.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DataDescription {
    /// The data's type (`std::any::type_name`).
    pub type_name: &'static str,
    /// Its shallow size in bytes (`std::mem::size_of_val`: heap memory it owns, such as a
    /// `Vec`'s items, is not counted).
    pub size: usize,
    /// The data as JSON: present for persisted queries (their encoding is known) when the
    /// call asked for data — [`query_info`](crate::QueryClient::query_info) does,
    /// [`inspect_queries`](crate::QueryClient::inspect_queries) does not. `Err` holds the
    /// encoding error (a `Serialize` impl that failed or panicked).
    pub json: Option<Result<serde_json::Value, String>>,
}

impl QueryInfo {
    /// True when an enabled observer watches the key.
    pub fn is_active(&self) -> bool {
        self.enabled_observers > 0
    }
}
