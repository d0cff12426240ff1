//! What `key!` accepts beyond strings, 64-bit integers and booleans: `u128`/`i128`, `char`,
//! `Option<T>` (`None` is a null part) and `uuid::Uuid` (feature `uuid`). Each key's text
//! (its storage name) parses back to an equal key. Floats and `.persist()` on a non-serde
//! type are compile errors with their own messages: see the `compile_fail` doctests on
//! `IntoKeyPart` and `PersistData`.

use stackquery::{key, KeyPart, QueryKey};

/// Equal keys, and the text parses back to the same key.
fn roundtrip(k: &QueryKey) {
    let back: QueryKey = k.to_string().parse().expect("a key's text parses");
    assert_eq!(&back, k, "{k}");
}

#[test]
fn u128_and_i128_in_range_are_the_same_parts_as_smaller_integers() {
    assert_eq!(key![5_u128], key![5_i32]);
    assert_eq!(key![-5_i128], key![-5_i64]);
    assert_eq!(key![u128::from(u64::MAX)], key![u64::MAX]);
    assert_eq!(key![i128::from(u64::MAX)], key![u64::MAX]);
    for k in [key![5_u128], key![-5_i128], key![u128::from(u64::MAX)]] {
        roundtrip(&k);
    }
}

#[test]
fn u128_and_i128_beyond_64_bits_are_their_decimal_text() {
    let big = key!["id", u128::MAX];
    assert_eq!(
        big.to_string(),
        r#"["id","340282366920938463463374607431768211455"]"#
    );
    assert_eq!(big, key!["id", "340282366920938463463374607431768211455"]);
    assert_ne!(big, key!["id", u64::MAX]);
    let low = key![i128::MIN];
    assert_eq!(low, key![i128::MIN.to_string()]);
    roundtrip(&big);
    roundtrip(&low);
}

#[test]
fn char_is_a_one_character_string() {
    assert_eq!(key!['a'], key!["a"]);
    assert_eq!(key!['é', '😀'].to_string(), r#"["é","😀"]"#);
    roundtrip(&key!['"']);
}

#[test]
fn option_is_its_value_or_a_null_part() {
    assert_eq!(key!["user", Some(1_u64)], key!["user", 1]);
    assert_eq!(key![Some("a")], key!["a"]);
    let none = key!["user", None::<u64>];
    assert_eq!(none.parts()[1], KeyPart::Null);
    assert_eq!(none.to_string(), r#"["user",null]"#);
    roundtrip(&none);
    // Null is its own part: not 0, not false, not the string "null".
    assert_ne!(none, key!["user", 0]);
    assert_ne!(none, key!["user", false]);
    assert_ne!(none, key!["user", "null"]);
    // And a prefix like any other.
    assert!(key!["user", None::<u64>, "posts"].starts_with(&none));
    // Null sorts before every other part.
    assert!(KeyPart::Null < KeyPart::Bool(false));
    assert!(none < key!["user", false]);
}

#[test]
fn null_parts_of_one_key_hash_and_compare_equal() {
    use std::collections::HashSet;
    let set: HashSet<QueryKey> = [key![None::<u8>], key![None::<&str>]].into_iter().collect();
    assert_eq!(set.len(), 1, "None of any type is the same null part");
}

#[cfg(feature = "uuid")]
#[test]
fn uuid_is_its_hyphenated_lowercase_text() {
    let id = uuid::Uuid::from_u128(0x67e5_5044_10b1_426f_9247_bb68_0e5f_e0c8);
    let k = key!["order", id];
    assert_eq!(k, key!["order", "67e55044-10b1-426f-9247-bb680e5fe0c8"]);
    assert_eq!(k, key!["order", id.to_string()]);
    roundtrip(&k);
}
