//! The synchronisation primitives of the engine's model-checked state machines.
//!
//! Code that is checked under a concurrency model checker imports its locks from here
//! (`crate::sync::Mutex`), never from `parking_lot` or `std` directly. Normally this is
//! `parking_lot`; the shuttle test (`tests/shuttle_flight.rs`) compiles the same source
//! files (`#[path]`) inside a crate whose `crate::sync` is a shuttle-backed module with the
//! same API, so the scheduler can preempt at every lock. (The shape follows tokio's
//! `src/loom` facade; the swap happens per test crate, not with a `cfg`, so the fast
//! configuration runs in the ordinary `cargo test`.)
//!
//! The API the checked code may use, which both sides provide:
//! `Mutex::new(value)` and `Mutex::lock(&self) -> guard` (no poisoning); `AtomicBool` and
//! `AtomicU64` with `new`, `load`, `store`, `swap` and `compare_exchange` (orderings from
//! `std::sync::atomic::Ordering`, which shuttle's atomics take too). Lock-free code such as
//! the drain loop of `notify.rs` takes its atomics from here for the same reason: a model
//! checker only preempts at the operations it provides.

pub(crate) use parking_lot::Mutex;
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64};
