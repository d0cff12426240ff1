//! The persistence envelope decoder: arbitrary bytes never panic, whatever the target
//! type, and what decodes re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/stackquery/tests/props/mod.rs"]
mod props;

fuzz_target!(|data: &[u8]| {
    props::envelope_decode(data);
});
