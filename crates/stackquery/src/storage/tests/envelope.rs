//! The versioned envelope and its codecs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::super::*;

// ---------------------------------------------------------------------------------------
// Envelope and codecs.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Role {
    Admin,
    Member { since: u32 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Sample {
    name: String,
    tags: Vec<String>,
    score: Option<i64>,
    attrs: BTreeMap<String, i32>,
    role: Role,
    bytes: Vec<u8>,
}

fn sample() -> Sample {
    Sample {
        name: "Ada \"Lovelace\" ✓".into(),
        tags: vec!["math".into(), String::new()],
        score: Some(-42),
        attrs: BTreeMap::from([("a".to_string(), 1), ("b".to_string(), -2)]),
        role: Role::Member { since: 1843 },
        bytes: vec![0, 255, 7],
    }
}

fn all_codecs() -> Vec<Codec> {
    #[allow(unused_mut)]
    let mut codecs = vec![Codec::Json];
    #[cfg(feature = "binary-codec")]
    codecs.push(Codec::Binary);
    codecs
}

fn stamp() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
}

#[test]
fn envelope_roundtrips_with_every_codec() {
    for codec in all_codecs() {
        for invalidated in [false, true] {
            let env = Envelope::new(sample(), stamp(), invalidated);
            let bytes = encode(&env, codec).unwrap();
            assert_eq!(Codec::detect(&bytes).unwrap(), Some(codec));
            let back: Envelope<Sample> = decode(&bytes).unwrap();
            assert_eq!(back, env, "{codec:?}");
            assert_eq!(back.version, ENVELOPE_VERSION);
            assert_eq!(back.data_updated_at(), stamp());
        }
    }
}

#[test]
fn json_envelope_is_inspectable_text() {
    let bytes = encode(&Envelope::new("hi", stamp(), true), Codec::Json).unwrap();
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        r#"{"version":1,"data":"hi","data_updated_at_ms":1700000000123,"invalidated":true}"#
    );
    assert_eq!(Codec::default(), Codec::Json);
}

#[test]
fn envelope_of_a_reference_decodes_as_owned() {
    let data = Arc::new(sample());
    let bytes = encode(&Envelope::new(&*data, stamp(), false), Codec::Json).unwrap();
    let back: Envelope<Sample> = decode(&bytes).unwrap();
    assert_eq!(back.data, *data);
}

#[test]
fn envelope_times_outside_the_range_do_not_panic() {
    let before_epoch = UNIX_EPOCH - Duration::from_secs(10);
    assert_eq!(Envelope::new((), before_epoch, false).data_updated_at_ms, 0);
    let far = Envelope {
        version: ENVELOPE_VERSION,
        data: (),
        data_updated_at_ms: u64::MAX,
        invalidated: false,
    };
    assert!(far.data_updated_at() > stamp());
}

#[test]
fn json_with_leading_whitespace_is_accepted() {
    let bytes = b" \n{\"version\":1,\"data\":5,\"data_updated_at_ms\":7,\"invalidated\":false}";
    let env: Envelope<u32> = decode(bytes).unwrap();
    assert_eq!((env.data, env.data_updated_at_ms), (5, 7));
}

#[test]
fn json_extra_fields_are_ignored_but_missing_ones_are_corrupt() {
    let extra = br#"{"version":1,"data":5,"data_updated_at_ms":7,"invalidated":false,"x":1}"#;
    assert_eq!(decode::<u32>(extra).unwrap().data, 5);
    let missing = br#"{"version":1,"data":5,"data_updated_at_ms":7}"#;
    assert!(decode::<u32>(missing).unwrap_err().is_corrupt());
}

#[test]
fn unknown_versions_are_corrupt() {
    let same_shape = br#"{"version":2,"data":5,"data_updated_at_ms":7,"invalidated":false}"#;
    let other_shape = br#"{"version":3,"payload":{"x":1}}"#;
    for (bytes, v) in [(&same_shape[..], 2), (&other_shape[..], 3)] {
        match decode::<u32>(bytes) {
            Err(StorageError::Corrupt(msg)) => {
                assert!(msg.contains(&format!("version {v}")), "{msg}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    #[cfg(feature = "binary-codec")]
    {
        let mut bytes = encode(&Envelope::new(5_u32, stamp(), false), Codec::Binary).unwrap();
        assert_eq!(
            bytes[1], 1,
            "postcard writes the version right after the tag"
        );
        bytes[1] = 2;
        match decode::<u32>(&bytes) {
            Err(StorageError::Corrupt(msg)) => assert!(msg.contains("version 2"), "{msg}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn encoding_a_foreign_version_or_unrepresentable_data_is_an_encode_error() {
    let mut env = Envelope::new(1_u8, stamp(), false);
    env.version = 2;
    for codec in all_codecs() {
        assert!(matches!(encode(&env, codec), Err(StorageError::Encode(_))));
    }
    // JSON map keys must be strings.
    let map: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
    assert!(matches!(
        encode(&Envelope::new(map, stamp(), false), Codec::Json),
        Err(StorageError::Encode(_))
    ));
}

#[test]
fn data_of_the_wrong_type_is_corrupt() {
    let bytes = encode(&Envelope::new("text", stamp(), false), Codec::Json).unwrap();
    assert!(decode::<Vec<u64>>(&bytes).unwrap_err().is_corrupt());
    // Binary is not self-describing: it notices a mismatch only when the shapes differ
    // (here a string's bytes are left over after a u8).
    #[cfg(feature = "binary-codec")]
    {
        let bytes = encode(&Envelope::new("text", stamp(), false), Codec::Binary).unwrap();
        assert!(decode::<u8>(&bytes).unwrap_err().is_corrupt());
    }
}

#[test]
fn trailing_bytes_are_corrupt() {
    for codec in all_codecs() {
        let mut bytes = encode(&Envelope::new(9_u16, stamp(), false), codec).unwrap();
        bytes.push(b'x');
        assert!(decode::<u16>(&bytes).unwrap_err().is_corrupt(), "{codec:?}");
    }
}

#[test]
fn non_envelopes_are_corrupt() {
    for bytes in [&b""[..], b"null", b"[1,2]", b"   ", b"\x00\x01", b"hello"] {
        assert!(decode::<u32>(bytes).unwrap_err().is_corrupt(), "{bytes:?}");
    }
}

#[cfg(not(feature = "binary-codec"))]
#[test]
fn binary_entries_need_the_feature() {
    assert!(matches!(
        decode::<u32>(&[codec::BINARY_TAG, 1, 5, 7, 0]),
        Err(StorageError::Unsupported(_))
    ));
}

#[cfg(feature = "binary-codec")]
#[test]
fn binary_is_smaller_than_json_and_tagged() {
    let env = Envelope::new(sample(), stamp(), false);
    let json = encode(&env, Codec::Json).unwrap();
    let bin = encode(&env, Codec::Binary).unwrap();
    assert_eq!(bin[0], codec::BINARY_TAG);
    assert!(
        bin.len() * 2 < json.len(),
        "{} vs {}",
        bin.len(),
        json.len()
    );
}

#[cfg(feature = "binary-codec")]
#[test]
fn binary_huge_length_claims_do_not_allocate_or_panic() {
    // tag, version 1, then a varint length of ~2^35 for the Vec, and nothing after it.
    let bytes = [codec::BINARY_TAG, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
    assert!(decode::<Vec<u8>>(&bytes).unwrap_err().is_corrupt());
    assert!(decode::<String>(&bytes).unwrap_err().is_corrupt());
    assert!(decode::<Vec<Sample>>(&bytes).unwrap_err().is_corrupt());
}

/// A small deterministic generator (xorshift64*), so the fuzz loop needs no dependency and
/// a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Decoding may fail, but only as a decode failure: never a panic, never another kind.
fn assert_decode_fails_cleanly(bytes: &[u8]) {
    fn check<T: serde::de::DeserializeOwned>(bytes: &[u8]) {
        match decode::<T>(bytes) {
            Ok(_) | Err(StorageError::Corrupt(_)) | Err(StorageError::Unsupported(_)) => {}
            Err(other) => panic!("decoding {bytes:?} gave {other:?}"),
        }
    }
    check::<Sample>(bytes);
    check::<serde_json::Value>(bytes);
    check::<Vec<String>>(bytes);
    check::<HashMap<String, Vec<u64>>>(bytes);
    check::<(u8, bool, Option<f64>)>(bytes);
}

#[test]
fn decoding_arbitrary_bytes_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let alphabet = b"{}[]\":,0123456789.-eEtrufalsn \\u\xff\x00\x01\x80version data";
    for round in 0..20_000 {
        let len = rng.below(80);
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| {
                if round % 2 == 0 {
                    rng.byte()
                } else {
                    alphabet[rng.below(alphabet.len())]
                }
            })
            .collect();
        // Steer half of the inputs past codec detection.
        match round % 4 {
            0 if !bytes.is_empty() => bytes[0] = b'{',
            1 if !bytes.is_empty() => bytes[0] = codec::BINARY_TAG,
            _ => {}
        }
        assert_decode_fails_cleanly(&bytes);
    }
}

#[test]
fn truncated_and_damaged_envelopes_are_corrupt_never_a_panic() {
    let mut rng = Rng(42);
    for codec in all_codecs() {
        let env = Envelope::new(sample(), stamp(), true);
        let full = encode(&env, codec).unwrap();
        for cut in 0..full.len() {
            let truncated = &full[..cut];
            assert!(
                decode::<Sample>(truncated).unwrap_err().is_corrupt()
                    || matches!(
                        decode::<Sample>(truncated),
                        Err(StorageError::Unsupported(_))
                    ),
                "{codec:?} cut at {cut}"
            );
            assert_decode_fails_cleanly(truncated);
        }
        for pos in 0..full.len() {
            for _ in 0..8 {
                let mut damaged = full.clone();
                damaged[pos] = rng.byte();
                assert_decode_fails_cleanly(&damaged);
            }
        }
    }
}
