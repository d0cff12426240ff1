//! # stackquery
//!
//! Async data fetching and caching for Rust, after TanStack Query: describe *what* to
//! fetch (a [`QueryKey`] and an async function in [`QueryOptions`]) and the
//! [`QueryClient`] handles *how* — caching, deduplication of concurrent requests (N
//! callers, one fetch), retries with exponential backoff, stale-while-revalidate, prefix
//! invalidation of hierarchical keys, manual cache updates, a bounded memory cache with
//! garbage collection of unused entries.
//!
//! ```
//! use stackquery::{key, QueryClient, QueryOptions};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stackquery::QueryError> {
//! let client = QueryClient::new();
//! let opts = QueryOptions::new(key!["user", 1], || async {
//!     Ok::<_, std::io::Error>("Ada".to_string())
//! })
//! .stale_time(Duration::from_secs(60));
//!
//! let user = client.fetch_query(&opts).await?;      // fetched
//! let again = client.fetch_query(&opts).await?;     // fresh: from the cache
//! assert!(std::sync::Arc::ptr_eq(&user, &again));
//!
//! client.invalidate_queries(key!["user"]).await;    // prefix: every ["user", ..] entry
//! assert!(client.get_query_state::<String>(&key!["user", 1]).unwrap().is_invalidated);
//! # Ok(()) }
//! ```
//!
//! Parallel queries of different types are plain Rust (`tokio::try_join!`), and dependent
//! queries are `?` followed by the next `fetch_query`:
//!
//! ```
//! # use stackquery::{key, QueryClient, QueryOptions};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stackquery::QueryError> {
//! let client = QueryClient::new();
//! let user = QueryOptions::new(key!["user", 1], || async { Ok::<_, String>(1_u64) });
//! let flags = QueryOptions::new(key!["flags"], || async { Ok::<_, String>(vec![true]) });
//! let (user_id, flags) = tokio::try_join!(client.fetch_query(&user), client.fetch_query(&flags))?;
//!
//! let id = *user_id;
//! let posts = QueryOptions::new(key!["posts", id], move || async move {
//!     Ok::<_, String>(format!("posts of {id}"))
//! });
//! let posts = client.fetch_query(&posts).await?;
//! assert_eq!(posts.as_str(), "posts of 1");
//! # let _ = flags; Ok(()) }
//! ```
//!
//! # Guides
//!
//! One runnable example per kind of program (`cargo run -p stackquery --example NAME`):
//!
//! - **A web service** (axum): [`web_service`](https://github.com/stackquery/stackquery/blob/main/crates/stackquery/examples/web_service.rs) — one client in the
//!   app state built with [`QueryClientBuilder::server`], errors as HTTP statuses,
//!   timeouts and cancellation.
//! - **A worker or a CLI**: [`worker`](https://github.com/stackquery/stackquery/blob/main/crates/stackquery/examples/worker.rs) — a batch job that warms every key at
//!   once, reads through the cache, persists to SQLite and calls
//!   [`QueryClient::flush_storage`] before it exits; its next run reads SQLite instead of
//!   the upstream.
//! - **Many instances on Redis** (feature `redis`): [`multi_instance`](https://github.com/stackquery/stackquery/blob/main/crates/stackquery/examples/multi_instance.rs)
//!   — `RedisStorage` as the shared tier, `RedisBus` carrying invalidations between
//!   instances.
//!
//! # Features
//!
//! `sqlite` (default: `SqliteStorage`, SQLite compiled in), `sqlite-system` (the same,
//! linked against the system's libsqlite3), `binary-codec`, `redis`, `metrics`, `devtools`,
//! `uuid` (a UUID as a key part), `test-util`. The README lists what each adds and its
//! dependency count. The library turns on only tokio's `rt`, `sync` and `time`: the
//! runtime, `#[tokio::main]` included, is the application's.
//!
//! # Public dependencies
//!
//! These crates' types appear in stackquery's public API, so a semver-incompatible upgrade
//! of one of them is a breaking release of stackquery too:
//!
//! - [`serde`]: `Serialize`/`DeserializeOwned` bound persisted data ([`PersistData`]), and
//!   snapshots and envelopes derive both.
//! - [`serde_json`]: `serde_json::Value` is the data of a [`DehydratedQuery`] (snapshots)
//!   and what a [`storage::JsonConverter`] converts to and from.
//! - [`async_trait`](storage::async_trait), re-exported as `stackquery::storage::async_trait`
//!   for implementing [`Storage`]: use the re-export, not your own version.
//! - [`futures`]' `Stream`: [`EventStream`] and [`ObserverStream`] implement it (and the
//!   bus's subscription converts into one).
//! - [`tokio`]: the client runs on the caller's tokio runtime; `tokio_util`'s
//!   `CancellationToken` is what [`FetchContext`] hands a fetch.
//! - Feature `uuid`: `uuid::Uuid`, a key part.
//!
//! `rusqlite`, `redis`, `postcard`, `axum`, `metrics` and the rest are private: none of
//! their types is in the API (a backend's error reaches you only as the boxed source of a
//! [`StorageError`]).

// docs.rs builds with `--cfg docsrs` on nightly: each feature-gated item gets a badge naming
// its feature. `doc(cfg)` is unstable, so `.ci/run` checks this build with RUSTC_BOOTSTRAP=1.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod bus;
mod cache;
mod client;
mod context;
mod deadline;
#[cfg(feature = "devtools")]
#[cfg_attr(docsrs, doc(cfg(feature = "devtools")))]
pub mod devtools;
mod engine;
mod entry;
mod error;
mod events;
mod fetcher;
mod filter;
mod flight;
#[cfg(test)]
#[path = "flight/tests.rs"]
mod flight_tests;
mod host;
mod infinite;
mod inspect;
mod key;
mod key_parts;
#[cfg(feature = "redis")]
mod lease;
mod mutation;
mod notify;
mod observer;
mod options;
mod persist_rules;
mod random;
mod refetch;
mod retry;
mod scope;
mod snapshot;
mod state;
mod stats;
pub mod storage;
mod stream;
mod subscription;
mod sync;
pub mod telemetry;
mod timers;
mod typed_key;
mod user_code;
mod weight;
mod worker;

pub use builder::QueryClientBuilder;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use bus::RedisBus;
pub use client::QueryClient;
pub use context::FetchContext;
pub use error::{BoxError, FetchError, QueryError, Report, TypeMismatch};
pub use events::{CacheEvent, CacheEventKind, EventStream, EventStreamItem, StorageOutcome};
pub use filter::QueryFilter;
pub use host::{Host, HostFuture, TaskHandle};
pub use infinite::{InfiniteData, InfiniteQueryObserver, InfiniteQueryOptions};
pub use inspect::{DataDescription, QueryInfo};
pub use key::{KeyPart, KeyStr, ParseKeyError, QueryKey};
pub use key_parts::IntoKeyPart;
pub use mutation::{
    DeadLetter, DurableMutation, DurableMutationOptions, Mutation, MutationOptions, MutationState,
    MutationStatus,
};
pub use observer::{ObserverStream, QueryObserver};
pub use options::{PersistData, QueryOptions};
pub use refetch::RefetchType;
pub use retry::default_retry_delay;
pub use scope::KeyScope;
pub use snapshot::{DehydratedQuery, DehydratedState};
pub use state::{FetchStatus, QueryState, QueryStatus};
pub use stats::CacheStats;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use storage::RedisStorage;
#[cfg(any(feature = "sqlite", feature = "sqlite-system"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "sqlite-system"))))]
pub use storage::SqliteStorage;
pub use storage::{Codec, MemoryStorage, Storage, StorageError};
pub use stream::{EmptyStream, RefetchMode, StreamedQuery};
pub use subscription::Subscription;
pub use typed_key::{TypedKey, TypedQueryKey};

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
