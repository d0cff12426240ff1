//! Building blocks of the stackquery comparison harness (the `stackquery-bench` binary and
//! the criterion bench in `benches/`): the hand-written contenders, a deterministic Zipf
//! sampler, and the timing and statistics helpers.
//!
//! Every contender is keyed by the same [`stackquery::QueryKey`] values, so the
//! comparison measures the cache and not the key type: the floor and the hand-written map
//! hash the key's precomputed `u64` with the standard library's SipHash (`RandomState`),
//! moka with its own `RandomState`, and [`FloorPrehashed`] passes the precomputed hash
//! straight through.

pub mod contenders;
pub mod stats;
pub mod zipf;
