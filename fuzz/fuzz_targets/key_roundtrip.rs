//! `QueryKey` text: parsing arbitrary text never panics and is canonicalised by `Display`;
//! keys built from arbitrary parts survive `Display` → parse unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/stackquery/tests/props/mod.rs"]
mod props;

fuzz_target!(|data: &[u8]| {
    props::key_text_roundtrip(data);
    props::key_parts_roundtrip(data);
});
