//! Unit tests of the storage layer: the public conformance suite
//! ([`testing`](super::testing)) run against every backend (`backends`, `sqlite`), the
//! timeout wrapper, the envelope codecs including a no-panic fuzz loop (`envelope`), and
//! SQLite's background purge, bounded queue and shutdown.

mod backends;
mod envelope;
#[cfg(any(feature = "sqlite", feature = "sqlite-system"))]
mod sqlite;
