//! Properties shared by the fuzz targets (`/fuzz`, cargo-fuzz) and their proptest twins
//! (`tests/fuzz_props.rs`, part of the normal test run). Each takes arbitrary bytes and
//! panics if the property does not hold.
#![allow(dead_code, unreachable_pub)]

use stackquery::storage::{decode, encode, Codec, Envelope};
use stackquery::{KeyPart, QueryKey};

/// Parsing arbitrary text never panics; text that parses is canonicalised by `Display`:
/// `parse(display(parse(t))) == parse(t)`, and `display` is a fixed point.
pub fn key_text_roundtrip(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(key) = text.parse::<QueryKey>() {
        let shown = key.to_string();
        let again: QueryKey = shown
            .parse()
            .unwrap_or_else(|e| panic!("display of a parsed key does not parse: {shown}: {e}"));
        assert_eq!(again, key, "text {text:?} → {shown}");
        assert_eq!(again.to_string(), shown);
        assert_eq!(again.precomputed_hash(), key.precomputed_hash());
    }
}

/// Decodes bytes into key parts, built the way users build them (the `From` conversions,
/// `key!`, and the public `KeyPart` variants), then checks `parse(display(k)) == k`, equal hashes, and that prefixes of
/// `k` are prefixes of the parsed key too.
pub fn key_parts_roundtrip(data: &[u8]) {
    let key = QueryKey::new(parts_from_bytes(data));
    let shown = key.to_string();
    let back: QueryKey = shown
        .parse()
        .unwrap_or_else(|e| panic!("key {shown} does not parse back: {e}"));
    assert_eq!(back, key, "{shown}");
    assert_eq!(back.precomputed_hash(), key.precomputed_hash(), "{shown}");
    assert_eq!(back.to_string(), shown);
    for n in 0..=key.len() {
        let prefix = QueryKey::new(key.parts()[..n].iter().cloned());
        assert!(back.starts_with(&prefix));
    }
}

/// Parts from bytes: a tag byte picks the kind, the following bytes the value.
pub fn parts_from_bytes(data: &[u8]) -> Vec<KeyPart> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        let mut take = |n: usize| {
            let n = n.min(rest.len());
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        };
        let word = |b: &[u8]| {
            let mut w = [0_u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let part = match tag % 6 {
            0 => KeyPart::from(tag & 0x80 != 0),
            1 => KeyPart::from(word(take(8)) as i64),
            2 => KeyPart::from(word(take(8))),
            3 => KeyPart::from(word(take(1)) as u8),
            // Built directly, small values included (regressions.rs:
            // `a_small_uint_part_built_directly_is_the_same_key_as_its_int_form`).
            4 => KeyPart::UInt(word(take(8)) >> (tag % 64)),
            _ => {
                let len = usize::from(tag / 6) % 24;
                KeyPart::from(String::from_utf8_lossy(take(len)).into_owned())
            }
        };
        parts.push(part);
    }
    parts
}

/// Decoding arbitrary bytes as an envelope never panics, whatever the target type; an
/// envelope that decodes re-encodes (with each codec) to bytes that decode to itself.
pub fn envelope_decode(data: &[u8]) {
    if let Ok(env) = decode::<Vec<u32>>(data) {
        for codec in [
            Codec::Json,
            Codec::detect(data).ok().flatten().unwrap_or_default(),
        ] {
            let bytes = encode(&env, codec).expect("a decoded Vec<u32> encodes");
            let back: Envelope<Vec<u32>> = decode(&bytes).expect("and decodes back");
            assert_eq!(back, env, "{codec:?}");
        }
    }
    let _ = decode::<String>(data);
    let _ = decode::<(bool, Option<i64>)>(data);
    if let Ok(env) = decode::<serde_json::Value>(data) {
        // JSON only: `serde_json::Value` needs a self-describing format, which the binary
        // codec is not (it encodes a `Value` but cannot decode one: documented).
        let bytes = encode(&env, Codec::Json).expect("a decoded JSON value encodes");
        let back: Envelope<serde_json::Value> =
            decode(&bytes).unwrap_or_else(|e| panic!("re-encoding does not decode: {e}"));
        assert_eq!(
            (back.version, back.data_updated_at_ms, back.invalidated),
            (env.version, env.data_updated_at_ms, env.invalidated)
        );
        assert!(
            same_json(&back.data, &env.data),
            "{} came back as {}",
            env.data,
            back.data
        );
    }
}

/// Exact JSON equality, floats bit for bit (stackquery enables serde_json's
/// `float_roundtrip`; see regressions.rs: `a_persisted_f64_reads_back_bit_for_bit`).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x.to_bits() == y.to_bits(),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}
