//! The fuzz targets' properties (`/fuzz`: `key_roundtrip`, `envelope_decode`) as proptest
//! tests, so they run in the normal test suite too (cargo-fuzz needs a nightly toolchain).
//!
//! Inputs: arbitrary bytes, JSON-looking text, and well-formed envelopes with damage
//! (truncation, bit flips, spliced bytes). `STACKQUERY_DEEP=1` runs 20× the cases.
//! Crash inputs found by fuzzing are replayed by name in `fuzz_crash_inputs_stay_fixed`.

mod props;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

fn cases() -> u32 {
    let deep = std::env::var("STACKQUERY_DEEP").is_ok_and(|v| v != "0" && !v.is_empty());
    if deep {
        20_000
    } else {
        1_000
    }
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz_props.txt",
        ))),
        ..Config::default()
    }
}

/// Text that is often close to a key: brackets, quotes, escapes, numbers at the limits.
fn keyish_text() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("\\u00e9".to_string()),
        Just("\\ud800".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        Just("-".to_string()),
        Just("1e3".to_string()),
        Just("0.5".to_string()),
        Just(" ".to_string()),
        Just("9223372036854775807".to_string()),
        Just("9223372036854775808".to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-9223372036854775808".to_string()),
        "[a-z0-9]{0,4}",
        any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(atom, 0..24).prop_map(|v| v.concat())
}

/// A valid JSON envelope of some data, then damaged (or not).
fn damaged_envelope() -> impl Strategy<Value = Vec<u8>> {
    let data = prop_oneof![
        Just("[1,2,3]".to_string()),
        Just("\"text\"".to_string()),
        Just("{\"a\":[true,null]}".to_string()),
        Just("1.5e300".to_string()),
        "[0-9]{1,25}",
    ];
    (
        data,
        any::<u64>(),
        any::<bool>(),
        0_u32..3,
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        any::<Option<usize>>(),
    )
        .prop_map(|(data, at, inv, version, flips, cut)| {
            let mut bytes = format!(
                "{{\"version\":{version},\"data\":{data},\"data_updated_at_ms\":{at},\"invalidated\":{inv}}}"
            )
            .into_bytes();
            for (i, b) in flips {
                let n = bytes.len();
                bytes[i % n] ^= b;
            }
            if let Some(c) = cut {
                bytes.truncate(c % (bytes.len() + 1));
            }
            bytes
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn key_text_from_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        props::key_text_roundtrip(&data);
    }

    #[test]
    fn key_text_from_keyish_text(text in keyish_text()) {
        props::key_text_roundtrip(text.as_bytes());
    }

    #[test]
    fn key_parts_round_trip_through_display(data in proptest::collection::vec(any::<u8>(), 0..96)) {
        props::key_parts_roundtrip(&data);
    }

    #[test]
    fn envelope_decode_of_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..128)) {
        props::envelope_decode(&data);
    }

    #[test]
    fn envelope_decode_of_damaged_envelopes(data in damaged_envelope()) {
        props::envelope_decode(&data);
    }
}

/// Inputs that once failed a property (fuzz artifacts from `fuzz/artifacts/…` and shrunk
/// proptest failures), kept by name. cargo-fuzz found none in its runs so far (see
/// RELIABILITY.md).
#[test]
fn fuzz_crash_inputs_stay_fixed() {
    let key_inputs: &[&[u8]] = &[];
    for input in key_inputs {
        props::key_text_roundtrip(input);
        props::key_parts_roundtrip(input);
    }
    let envelope_inputs: &[&[u8]] = &[
        // Deep proptest run: a 20-digit number is an f64 whose JSON round trip drifted by
        // an ulp (regressions.rs: `a_persisted_f64_reads_back_bit_for_bit`).
        br#"{"version":1,"data":92234227410441451520,"data_updated_at_ms":0,"invalidated":false}"#,
    ];
    for input in envelope_inputs {
        props::envelope_decode(input);
    }
}
