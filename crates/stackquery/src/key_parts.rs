//! What a [`key!`](crate::key) accepts as a part: [`IntoKeyPart`], and the conversions
//! into [`KeyPart`] beyond strings, 64-bit integers and booleans (`key.rs`).
//!
//! Floats are refused on purpose (a compile error that says so): `NaN != NaN`, `-0.0 ==
//! 0.0` and `0.1 + 0.2 != 0.3` would make keys that look equal and never match, or the
//! reverse. Use an integer (cents, a fixed-point value, `f64::to_bits`) or a string.

use std::sync::Arc;

use crate::key::{KeyPart, KeyStr};

/// A value that can be a part of a [`QueryKey`](crate::QueryKey) in [`key!`](crate::key):
/// strings (`&str`, `String`, `Arc<str>`, [`KeyStr`]), `char` (a one-character string),
/// every integer type up to `i128`/`u128`, `bool`, `Option<T>` of any of these (`None` is
/// [`KeyPart::Null`]), `uuid::Uuid` (feature `uuid`), and [`KeyPart`] itself.
///
/// Not floats: see the error below. A type of your own becomes a key part by implementing
/// this trait (or `From<YourType> for KeyPart`, which [`key!`](crate::key) does not use).
///
/// ```
/// use stackquery::{key, KeyPart};
/// let k = key!["user", 'x', u128::MAX, Some(7_u8), None::<u8>];
/// assert_eq!(k.to_string(), r#"["user","x","340282366920938463463374607431768211455",7,null]"#);
/// assert_eq!(key![Some("a")], key!["a"]);
/// assert_eq!(key![1_u128], key![1_i32]);
/// ```
///
/// ```compile_fail
/// // error: `f64` cannot be a query key part (floats are refused: ...)
/// let k = stackquery::key!["price", 9.99_f64];
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a query key part",
    label = "not a key part",
    note = "key parts are strings, `char`, integers (up to 128 bits), `bool`, `Option` of a part, `uuid::Uuid` (feature `uuid`), or a type that implements `IntoKeyPart`",
    note = "floats are refused on purpose: NaN != NaN and 0.1 + 0.2 != 0.3 would make keys that never match; use an integer (cents, `f64::to_bits`) or a string"
)]
pub trait IntoKeyPart {
    /// The part.
    fn into_key_part(self) -> KeyPart;
}

/// Types with a `From` conversion into [`KeyPart`] (listed, not a blanket impl: a blanket
/// impl would make a float's error name `From<f64>` instead of the message above).
macro_rules! via_from {
    ($($t:ty),*) => {$(
        impl IntoKeyPart for $t {
            #[inline]
            fn into_key_part(self) -> KeyPart {
                KeyPart::from(self)
            }
        }
    )*};
}
via_from!(
    i8,
    i16,
    i32,
    i64,
    isize,
    i128,
    u8,
    u16,
    u32,
    u64,
    usize,
    u128,
    bool,
    char,
    String,
    &String,
    Arc<str>,
    KeyStr,
    KeyPart
);

impl IntoKeyPart for &str {
    #[inline]
    fn into_key_part(self) -> KeyPart {
        KeyPart::from(self)
    }
}

impl IntoKeyPart for &KeyPart {
    fn into_key_part(self) -> KeyPart {
        self.clone()
    }
}

/// `None` is [`KeyPart::Null`]; `Some(v)` is `v`'s part (so `key![Some(1)] == key![1]`).
impl<T: IntoKeyPart> IntoKeyPart for Option<T> {
    fn into_key_part(self) -> KeyPart {
        self.map_or(KeyPart::Null, IntoKeyPart::into_key_part)
    }
}

/// A `u128`/`i128` in `i64` or `u64` range is the same part as the same number of any
/// other integer type. One beyond is its decimal text, a string part: the key's text
/// (`Display`, the storage name) must parse back, and JSON readers do not keep integers
/// of more than 64 bits. Such a number therefore equals the string of its digits.
impl From<u128> for KeyPart {
    fn from(v: u128) -> Self {
        match u64::try_from(v) {
            Ok(u) => KeyPart::from(u),
            Err(_) => KeyPart::Str(KeyStr::from(v.to_string())),
        }
    }
}

/// As for `u128`.
impl From<i128> for KeyPart {
    fn from(v: i128) -> Self {
        if let Ok(i) = i64::try_from(v) {
            KeyPart::Int(i)
        } else if let Ok(u) = u64::try_from(v) {
            KeyPart::UInt(u)
        } else {
            KeyPart::Str(KeyStr::from(v.to_string()))
        }
    }
}

/// A one-character string part: `key!['a'] == key!["a"]`.
impl From<char> for KeyPart {
    fn from(c: char) -> Self {
        let mut buf = [0; 4];
        KeyPart::Str(KeyStr::from(&*c.encode_utf8(&mut buf)))
    }
}

/// `None` is [`KeyPart::Null`].
impl<T: Into<KeyPart>> From<Option<T>> for KeyPart {
    fn from(v: Option<T>) -> Self {
        v.map_or(KeyPart::Null, Into::into)
    }
}

/// A UUID is its hyphenated lowercase text (as serde writes it in JSON), a string part.
#[cfg(feature = "uuid")]
#[cfg_attr(docsrs, doc(cfg(feature = "uuid")))]
impl From<uuid::Uuid> for KeyPart {
    fn from(id: uuid::Uuid) -> Self {
        let mut buf = [0; uuid::fmt::Hyphenated::LENGTH];
        KeyPart::Str(KeyStr::from(&*id.hyphenated().encode_lower(&mut buf)))
    }
}

#[cfg(feature = "uuid")]
via_from!(uuid::Uuid);
