//! Hierarchical query keys.
//!
//! A [`QueryKey`] is a sequence of [`KeyPart`]s (strings, integers, booleans). Its hash is
//! computed once, when the key is built, so a cache hit never re-hashes the parts; cloning
//! is one reference-count bump. The hash is keyed with a random per-process seed (see
//! `hash_parts`), so it resists hash flooding.
//!
//! Building a key is one allocation: the parts live in one `Arc<[KeyPart]>` (the hash sits
//! beside the pointer, in the handle), and a string part of up to
//! [`KeyStr::INLINE_CAPACITY`] bytes is stored inside its part, not behind a pointer of
//! its own. `key!["user", id]` built for every call therefore costs one allocation and a
//! short foldhash; comparing it with the stored key compares the two hashes, then the
//! parts (inline strings byte for byte).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

/// One part of a [`QueryKey`]: a string, an integer or a boolean.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// A boolean part. Sorts before integers and strings.
    Bool(bool),
    /// An integer part that fits in an `i64` (every integer type converts into it).
    Int(i64),
    /// An unsigned integer above `i64::MAX`; smaller unsigned values are always `Int`, so
    /// `1_u64` and `1_i64` make the same key.
    UInt(u64),
    /// A string part (short strings are stored inline: see [`KeyStr`]).
    Str(KeyStr),
    /// A null part: what `None` makes (`key!["user", None::<u64>]`); written `null`. Sorts
    /// before every other part.
    Null,
}

impl KeyPart {
    /// The variant's place in the order: null, booleans, integers, large unsigned, strings.
    #[inline]
    fn rank(&self) -> u8 {
        match self {
            KeyPart::Null => 0,
            KeyPart::Bool(_) => 1,
            KeyPart::Int(_) => 2,
            KeyPart::UInt(_) => 3,
            KeyPart::Str(_) => 4,
        }
    }
}

impl PartialOrd for KeyPart {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
/// By variant (in `rank` order), then by value: what `derive(Ord)` gives, written out
/// so that the common case, two parts of one kind, is one match (the cache's ordered index
/// compares parts of ~40 keys per insert).
impl Ord for KeyPart {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (KeyPart::Str(a), KeyPart::Str(b)) => a.cmp(b),
            (KeyPart::Int(a), KeyPart::Int(b)) => a.cmp(b),
            (KeyPart::Bool(a), KeyPart::Bool(b)) => a.cmp(b),
            (KeyPart::UInt(a), KeyPart::UInt(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// The text of a [`KeyPart::Str`]: a string of up to [`INLINE_CAPACITY`](Self::INLINE_CAPACITY)
/// bytes is stored inline (no allocation), a longer one in a shared `Arc<str>`.
///
/// It behaves as its text: it dereferences to `str`, and equality, ordering (byte-wise,
/// like `str`), hashing (the same writes as `str`'s `Hash`), `Display`, `Debug` and serde
/// are those of the text, whichever way it is stored.
///
/// ```
/// use stackquery::{KeyPart, KeyStr};
/// let short = KeyStr::from("user");
/// assert_eq!(short.as_str(), "user");
/// assert_eq!(short, KeyStr::from(String::from("user")));
/// assert!(matches!(KeyPart::from("user"), KeyPart::Str(s) if &*s == "user"));
/// ```
#[derive(Clone)]
pub struct KeyStr(StrRepr);

/// Invariant: a text of up to `INLINE_CAPACITY` bytes is always `Inline` (zero-padded
/// past `len`), a longer one always `Heap`. Each text thus has one representation, so the
/// derived equality (length and padded bytes, or the `Arc`'s text) is the text's.
#[derive(Clone, PartialEq, Eq)]
enum StrRepr {
    Inline {
        len: u8,
        bytes: [u8; KeyStr::INLINE_CAPACITY],
    },
    Heap(Arc<str>),
}

impl KeyStr {
    /// The longest text stored inline, in bytes (UTF-8); a [`KeyPart`] stays three words.
    pub const INLINE_CAPACITY: usize = 22;

    /// `s` stored inline, if it fits.
    #[inline]
    fn inline(s: &str) -> Option<Self> {
        let src = s.as_bytes();
        if src.len() > Self::INLINE_CAPACITY {
            return None;
        }
        let mut bytes = [0_u8; Self::INLINE_CAPACITY];
        bytes[..src.len()].copy_from_slice(src);
        let len = u8::try_from(src.len()).ok()?;
        Some(KeyStr(StrRepr::Inline { len, bytes }))
    }

    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            StrRepr::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)])
                .expect("the inline bytes were copied from a str, at its length"),
            StrRepr::Heap(s) => s,
        }
    }

    /// The text's bytes (no UTF-8 check: what equality, ordering and hashing use).
    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            StrRepr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            StrRepr::Heap(s) => s.as_bytes(),
        }
    }
}

impl Deref for KeyStr {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for KeyStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for KeyStr {
    #[inline]
    fn from(s: &str) -> Self {
        KeyStr::inline(s).unwrap_or_else(|| KeyStr(StrRepr::Heap(Arc::from(s))))
    }
}
impl From<String> for KeyStr {
    fn from(s: String) -> Self {
        KeyStr::inline(&s).unwrap_or_else(|| KeyStr(StrRepr::Heap(Arc::from(s))))
    }
}
impl From<&String> for KeyStr {
    fn from(s: &String) -> Self {
        KeyStr::from(s.as_str())
    }
}
/// A short text is copied inline (the `Arc` is dropped); a long one keeps the `Arc`.
impl From<Arc<str>> for KeyStr {
    fn from(s: Arc<str>) -> Self {
        KeyStr::inline(&s).unwrap_or(KeyStr(StrRepr::Heap(s)))
    }
}
impl From<KeyStr> for Arc<str> {
    fn from(s: KeyStr) -> Self {
        match s.0 {
            StrRepr::Heap(s) => s,
            StrRepr::Inline { .. } => Arc::from(s.as_str()),
        }
    }
}
impl From<KeyStr> for String {
    fn from(s: KeyStr) -> Self {
        s.as_str().to_owned()
    }
}

impl PartialEq for KeyStr {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        // One representation per text (see `StrRepr`).
        self.0 == other.0
    }
}
impl Eq for KeyStr {}
impl PartialEq<str> for KeyStr {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl PartialEq<&str> for KeyStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialOrd for KeyStr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
/// Byte-wise, which is `str`'s order.
impl Ord for KeyStr {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            // Two inline texts: their zero-padded bytes as big-endian numbers, then their
            // lengths. The padding cannot reorder them: where the shorter text ends, its 0
            // meets the longer text's byte, which is ≥ 0 (and a tie there is settled by
            // the lengths, shorter first, as `str` orders a prefix first).
            (
                StrRepr::Inline { len, bytes },
                StrRepr::Inline {
                    len: other_len,
                    bytes: other_bytes,
                },
            ) => order_words(bytes)
                .cmp(&order_words(other_bytes))
                .then(len.cmp(other_len)),
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}

/// Inline bytes as two big-endian numbers that order as the bytes do (the second
/// overlaps the first by two bytes, which are equal whenever it is consulted).
#[inline]
fn order_words(bytes: &[u8; KeyStr::INLINE_CAPACITY]) -> (u128, u64) {
    (
        bytes.first_chunk().map_or(0, |b| u128::from_be_bytes(*b)),
        bytes.last_chunk().map_or(0, |b| u64::from_be_bytes(*b)),
    )
}

/// The writes of `str`'s `Hash` (the bytes, then `0xff`), so a `KeyStr` hashes as its text.
impl Hash for KeyStr {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

impl fmt::Display for KeyStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}
impl fmt::Debug for KeyStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A string, as `Arc<str>` serialises.
impl serde::Serialize for KeyStr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
/// From a string, as `Arc<str>` deserialises.
impl<'de> serde::Deserialize<'de> for KeyStr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = KeyStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyStr, E> {
                Ok(KeyStr::from(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<KeyStr, E> {
                Ok(KeyStr::from(v))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

macro_rules! int_part {
    ($($t:ty),*) => {$(
        impl From<$t> for KeyPart {
            fn from(v: $t) -> Self {
                // Every value that fits in i64 is stored as Int so equal numbers make equal keys.
                match i64::try_from(v) {
                    Ok(i) => KeyPart::Int(i),
                    Err(_) => KeyPart::UInt(v as u64),
                }
            }
        }
    )*};
}
int_part!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl From<bool> for KeyPart {
    fn from(v: bool) -> Self {
        KeyPart::Bool(v)
    }
}
impl From<&str> for KeyPart {
    #[inline]
    fn from(v: &str) -> Self {
        KeyPart::Str(KeyStr::from(v))
    }
}
impl From<String> for KeyPart {
    fn from(v: String) -> Self {
        KeyPart::Str(KeyStr::from(v))
    }
}
impl From<&String> for KeyPart {
    fn from(v: &String) -> Self {
        KeyPart::Str(KeyStr::from(v.as_str()))
    }
}
impl From<Arc<str>> for KeyPart {
    fn from(v: Arc<str>) -> Self {
        KeyPart::Str(KeyStr::from(v))
    }
}
impl From<KeyStr> for KeyPart {
    fn from(v: KeyStr) -> Self {
        KeyPart::Str(v)
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Null => f.write_str("null"),
            KeyPart::Bool(b) => write!(f, "{b}"),
            KeyPart::Int(i) => write!(f, "{i}"),
            KeyPart::UInt(u) => write!(f, "{u}"),
            // serde_json gives us correct, stable JSON string escaping.
            KeyPart::Str(s) => match serde_json::to_string(s.as_str()) {
                Ok(quoted) => f.write_str(&quoted),
                Err(_) => Err(fmt::Error),
            },
        }
    }
}

/// A hierarchical cache key such as `["user", 123]`.
///
/// Build one with the [`key!`](crate::key!) macro or the `From` conversions. Keys compare
/// part by part; [`starts_with`](QueryKey::starts_with) is the prefix match used by
/// invalidation (`["user", 1]` falls under `["user"]`).
///
/// `Display` writes the key as a JSON array (`["user",123,true]`); that text is stable
/// across processes and versions because it names entries in persistent storage, and
/// [`FromStr`] parses it back.
///
/// ```
/// use stackquery::{key, QueryKey};
/// let k: QueryKey = key!["user", 123];
/// assert!(k.starts_with(&key!["user"]));
/// assert_eq!(k.to_string(), r#"["user",123]"#);
/// assert_eq!(k.to_string().parse::<QueryKey>().unwrap(), k);
/// ```
#[derive(Clone)]
pub struct QueryKey {
    /// Computed once, from the parts (`hash_parts`).
    hash: u64,
    /// The key's one allocation.
    parts: Arc<[KeyPart]>,
}

/// Hashes a key's parts (foldhash, under a random per-process seed: `random::key_hasher`):
/// one seeded folded multiply per number or boolean (its kind in the high half), one
/// foldhash of the bytes per string (the length goes into it too).
///
/// Keys are often built from request input and the cache's maps trust this hash (they look
/// keys up through a pass-through hasher), so a fixed, public seed would let a client craft
/// thousands of colliding keys and turn every lookup into a linear scan (hash flooding).
/// The seed is drawn once per process, not per key, so equal keys always hash equal within
/// the process (on every thread); the hash is never persisted nor sent to another process
/// (storage and the bus name entries by the key's `Display` text), so it need not be
/// stable across them. Equal keys have equal parts (`new` normalises the one part type
/// with two forms), and equal parts write the same bytes, so they hash equal.
#[inline]
fn hash_parts(parts: &[KeyPart]) -> u64 {
    const BOOL: u128 = 1 << 64;
    const INT: u128 = 2 << 64;
    const UINT: u128 = 3 << 64;
    const NULL: u128 = 4 << 64;
    let mut hasher = crate::random::key_hasher();
    for part in parts {
        match part {
            KeyPart::Bool(b) => hasher.write_u128(BOOL | u128::from(*b)),
            KeyPart::Int(i) => hasher.write_u128(INT | u128::from(*i as u64)),
            KeyPart::UInt(u) => hasher.write_u128(UINT | u128::from(*u)),
            KeyPart::Str(s) => hasher.write(s.as_bytes()),
            KeyPart::Null => hasher.write_u128(NULL),
        }
    }
    hasher.finish()
}

/// `KeyPart` is public, so `UInt(5)` can be built directly: it becomes `Int(5)`, or it
/// would be a different key with the same `Display` (the storage name).
///
/// In place, writing only a part it changes: a part that is moved as a whole right after
/// its bytes were written piecemeal (an inline string) stalls the CPU's store forwarding,
/// which made an `array.map(..)` here a third of the cost of building a key.
#[inline]
fn normalize(part: &mut KeyPart) {
    if let KeyPart::UInt(u) = *part {
        if let Ok(i) = i64::try_from(u) {
            *part = KeyPart::Int(i);
        }
    }
}

impl QueryKey {
    /// Builds a key from its parts.
    ///
    /// One allocation when the iterator knows its exact length (arrays, `Vec`s, slices'
    /// cloning iterators); otherwise the parts are collected first. (`key!` goes through
    /// `From<[KeyPart; N]>`, which hashes the parts before moving them.)
    #[inline]
    pub fn new(parts: impl IntoIterator<Item = KeyPart>) -> Self {
        Self::from_arc(
            parts
                .into_iter()
                .map(|mut p| {
                    normalize(&mut p);
                    p
                })
                .collect(),
        )
    }

    #[inline(always)]
    fn from_arc(parts: Arc<[KeyPart]>) -> Self {
        QueryKey {
            hash: hash_parts(&parts),
            parts,
        }
    }

    /// The key's parts, in order.
    pub fn parts(&self) -> &[KeyPart] {
        &self.parts
    }

    /// Number of parts.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// True for the empty key `[]`, which is a prefix of every key.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// True when `prefix`'s parts are the first parts of this key (a key starts with itself).
    pub fn starts_with(&self, prefix: &QueryKey) -> bool {
        self.parts.starts_with(&prefix.parts)
    }

    /// The hash computed when the key was built.
    ///
    /// It is seeded at random once per process (so keys from untrusted input cannot be
    /// crafted to collide): equal keys hash equal within a process, but the value differs
    /// from one process to the next. Never persist it or compare it across processes; use
    /// the key's `Display` text for that.
    #[inline]
    pub fn precomputed_hash(&self) -> u64 {
        self.hash
    }
}

/// The hashes first (keys that differ almost always differ there), then the same
/// allocation, then the parts.
impl PartialEq for QueryKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && (Arc::ptr_eq(&self.parts, &other.parts) || self.parts[..] == other.parts[..])
    }
}
impl Eq for QueryKey {}

impl Hash for QueryKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for QueryKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
/// Lexicographic over parts, so every key under a prefix sits in one contiguous range.
impl Ord for QueryKey {
    fn cmp(&self, other: &Self) -> Ordering {
        if Arc::ptr_eq(&self.parts, &other.parts) {
            return Ordering::Equal;
        }
        self.parts[..].cmp(&other.parts[..])
    }
}

impl fmt::Display for QueryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            fmt::Display::fmt(p, f)?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for QueryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a text could not be parsed as a [`QueryKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid query key text: {0}")]
pub struct ParseKeyError(String);

impl FromStr for QueryKey {
    type Err = ParseKeyError;

    /// Parses the text written by `Display` (a JSON array of strings, integers, booleans).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value: serde_json::Value =
            serde_json::from_str(s).map_err(|e| ParseKeyError(e.to_string()))?;
        let serde_json::Value::Array(items) = value else {
            return Err(ParseKeyError("not an array".into()));
        };
        let mut parts = Vec::with_capacity(items.len());
        for item in items {
            let part = match item {
                serde_json::Value::Null => KeyPart::Null,
                serde_json::Value::Bool(b) => KeyPart::Bool(b),
                serde_json::Value::String(s) => KeyPart::from(s),
                serde_json::Value::Number(n) => {
                    if let Some(i) = n.as_i64() {
                        KeyPart::Int(i)
                    } else if let Some(u) = n.as_u64() {
                        KeyPart::UInt(u)
                    } else {
                        return Err(ParseKeyError(format!("not an integer: {n}")));
                    }
                }
                other => return Err(ParseKeyError(format!("unsupported part: {other}"))),
            };
            parts.push(part);
        }
        Ok(QueryKey::new(parts))
    }
}

impl From<&str> for QueryKey {
    fn from(s: &str) -> Self {
        QueryKey::new([KeyPart::from(s)])
    }
}
impl<const N: usize> From<[&str; N]> for QueryKey {
    fn from(parts: [&str; N]) -> Self {
        QueryKey::new(parts.into_iter().map(KeyPart::from))
    }
}
impl From<Vec<String>> for QueryKey {
    fn from(parts: Vec<String>) -> Self {
        QueryKey::new(parts.into_iter().map(KeyPart::from))
    }
}
/// What `key!` builds with: the array moves into the key's one allocation as it is.
impl<const N: usize> From<[KeyPart; N]> for QueryKey {
    #[inline(always)]
    fn from(mut parts: [KeyPart; N]) -> Self {
        parts.iter_mut().for_each(normalize);
        // Hashed where the parts were just written, before they move to the heap: the
        // move loads them wider than they were stored, which stalls, and the hash need not
        // wait for it.
        QueryKey {
            hash: hash_parts(&parts),
            parts: Arc::new(parts),
        }
    }
}
impl From<Vec<KeyPart>> for QueryKey {
    fn from(parts: Vec<KeyPart>) -> Self {
        QueryKey::new(parts)
    }
}
impl From<&QueryKey> for QueryKey {
    fn from(k: &QueryKey) -> Self {
        k.clone()
    }
}

/// Builds a [`QueryKey`] from parts: anything that is [`IntoKeyPart`](crate::IntoKeyPart)
/// (strings, `char`, integers up to 128 bits, booleans, `Option` of a part, `uuid::Uuid`
/// with feature `uuid`; not floats).
///
/// ```
/// use stackquery::key;
/// let id = 7_u64;
/// let k = key!["user", id, "posts", true];
/// assert_eq!(k.len(), 4);
/// assert!(key![].is_empty());
/// ```
#[macro_export]
macro_rules! key {
    () => { $crate::QueryKey::new(::std::iter::empty()) };
    ($($part:expr),+ $(,)?) => {
        $crate::QueryKey::from([$($crate::IntoKeyPart::into_key_part($part)),+])
    };
}

/// A hasher for maps keyed by [`QueryKey`]: it passes the precomputed hash through.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `QueryKey::hash`; fold anything else for safety.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `BuildHasher` for [`KeyHasher`].
pub(crate) type KeyHashBuilder = std::hash::BuildHasherDefault<KeyHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_equality() {
        let k = key!["user", 1];
        assert!(k.starts_with(&key!["user"]));
        assert!(k.starts_with(&key![]));
        assert!(k.starts_with(&k));
        assert!(!key!["user"].starts_with(&k));
        assert!(!key!["users", 1].starts_with(&key!["user"]));
        assert_eq!(key!["user", 1u8], key!["user", 1i64]);
        assert_ne!(key!["user", "1"], key!["user", 1]);
        assert_eq!(
            key!["user", 1].precomputed_hash(),
            key!["user", 1].precomputed_hash()
        );
    }

    #[test]
    fn display_round_trip_with_escapes() {
        let k = key!["a\"b", -5, u64::MAX, false, "comma,]["];
        let text = k.to_string();
        assert_eq!(text, r#"["a\"b",-5,18446744073709551615,false,"comma,]["]"#);
        assert_eq!(text.parse::<QueryKey>().unwrap(), k);
    }

    #[test]
    fn parse_rejects_bad_text() {
        assert!("not json".parse::<QueryKey>().is_err());
        assert!("{}".parse::<QueryKey>().is_err());
        assert!("[1.5]".parse::<QueryKey>().is_err());
        assert!("[[1]]".parse::<QueryKey>().is_err());
        assert!(r#"[{"a":1}]"#.parse::<QueryKey>().is_err());
        // `null` is a part now (what `None` makes), not bad text.
        assert_eq!(
            "[null]".parse::<QueryKey>().unwrap().parts(),
            [KeyPart::Null]
        );
    }

    #[test]
    fn ordering_keeps_prefix_ranges_contiguous() {
        let mut keys = [
            key!["user", 2],
            key!["users"],
            key!["user"],
            key!["user", 1, "posts"],
            key!["team"],
        ];
        keys.sort();
        let p = key!["user"];
        let first = keys.iter().position(|k| k.starts_with(&p)).unwrap();
        let n = keys.iter().filter(|k| k.starts_with(&p)).count();
        assert!(keys[first..first + n].iter().all(|k| k.starts_with(&p)));
    }

    /// The key before this representation (issue 13): parts in a `Box`, strings in their
    /// own `Arc<str>`, every comparison derived. The new key must agree with it.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum OldPart {
        // `None` sorts first, as `KeyPart::Null` (added after this representation).
        Null,
        Bool(bool),
        Int(i64),
        UInt(u64),
        Str(Arc<str>),
    }

    impl OldPart {
        fn new(p: &KeyPart) -> Self {
            match p {
                KeyPart::Null => OldPart::Null,
                KeyPart::Bool(b) => OldPart::Bool(*b),
                KeyPart::Int(i) => OldPart::Int(*i),
                KeyPart::UInt(u) => i64::try_from(*u).map_or(OldPart::UInt(*u), OldPart::Int),
                KeyPart::Str(s) => OldPart::Str(Arc::from(s.as_str())),
            }
        }
    }

    fn text(len: usize, unit: &str) -> String {
        unit.repeat(len)
    }

    /// Short and long strings on both sides of the inline capacity (in bytes, with
    /// multi-byte characters straddling it), unicode, the empty string, numbers at the
    /// `Int`/`UInt` boundary.
    fn sample_parts() -> Vec<KeyPart> {
        let cap = KeyStr::INLINE_CAPACITY;
        let mut parts = vec![
            KeyPart::Null,
            KeyPart::from(false),
            KeyPart::from(true),
            KeyPart::from(i64::MIN),
            KeyPart::from(-1),
            KeyPart::from(0),
            KeyPart::from(1_u8),
            KeyPart::from(i64::MAX),
            KeyPart::UInt(5),
            KeyPart::from(i64::MAX as u64 + 1),
            KeyPart::from(u64::MAX),
            KeyPart::from(""),
            KeyPart::from("a"),
            KeyPart::from("user"),
            KeyPart::from("users"),
            KeyPart::from("ü"),
            KeyPart::from("日本語"),
            KeyPart::from("🦀 crab"),
            KeyPart::from("a\"b,]["),
        ];
        for len in [cap - 1, cap, cap + 1, 2 * cap] {
            parts.push(KeyPart::from(text(len, "x")));
            parts.push(KeyPart::from(format!("{}y", text(len - 1, "x"))));
        }
        // 'é' is 2 bytes: 20 + 2 = 22 fits inline, 21 + 2 = 23 does not.
        parts.push(KeyPart::from(format!("{}é", text(cap - 2, "x"))));
        parts.push(KeyPart::from(format!("{}é", text(cap - 1, "x"))));
        parts.push(KeyPart::from(text(cap / 3, "€")));
        parts.push(KeyPart::from(text(cap / 3 + 1, "€")));
        parts
    }

    fn hash_with<T: Hash + ?Sized>(v: &T) -> u64 {
        use std::hash::BuildHasher;
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(v)
    }

    /// A part is three words, and so is a key: its hash beside the pointer to its one
    /// allocation (`["user", 1]`: 16 bytes of counts and 48 of parts, an 80-byte malloc
    /// chunk, where the old key took three chunks, 144 bytes, behind a one-word handle).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn sizes() {
        use std::mem::size_of;
        assert_eq!(size_of::<KeyPart>(), 24);
        assert_eq!(size_of::<KeyStr>(), 24);
        assert_eq!(size_of::<QueryKey>(), 24);
    }

    #[test]
    fn key_str_is_inline_up_to_its_capacity_and_behaves_as_its_text() {
        let cap = KeyStr::INLINE_CAPACITY;
        for len in 0..=2 * cap {
            for unit in ["x", "é", "日", "🦀"] {
                let owned: String = text(len, unit).chars().take(len).collect();
                let s = owned.as_str();
                let a = KeyStr::from(s);
                let b = KeyStr::from(owned.clone());
                let c = KeyStr::from(Arc::<str>::from(s));
                assert_eq!(
                    matches!(a.0, StrRepr::Inline { .. }),
                    s.len() <= cap,
                    "{s:?}"
                );
                for k in [&a, &b, &c] {
                    assert_eq!(k.as_str(), s);
                    assert_eq!(&**k, s);
                    assert_eq!(*k, a);
                    assert_eq!(k, &s);
                    assert_eq!(k.to_string(), s);
                    assert_eq!(format!("{k:?}"), format!("{s:?}"));
                    assert_eq!(hash_with(k), hash_with(s), "hashes as its text");
                    assert_eq!(String::from(k.clone()), s);
                    assert_eq!(&*Arc::<str>::from(k.clone()), s);
                }
            }
        }
        // A long `Arc<str>` is kept, not copied.
        let long: Arc<str> = Arc::from(text(cap + 1, "x"));
        let kept = Arc::<str>::from(KeyStr::from(long.clone()));
        assert!(Arc::ptr_eq(&long, &kept));
    }

    #[test]
    fn key_str_orders_as_str() {
        let texts: Vec<String> = sample_parts()
            .into_iter()
            .filter_map(|p| match p {
                KeyPart::Str(s) => Some(s.as_str().to_owned()),
                _ => None,
            })
            .collect();
        for a in &texts {
            for b in &texts {
                let (ka, kb) = (KeyStr::from(a.as_str()), KeyStr::from(b.as_str()));
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(ka == kb, a == b);
            }
        }
    }

    #[test]
    fn key_str_serde_is_a_string() {
        let short = KeyStr::from("user");
        let long = KeyStr::from(text(40, "é"));
        for k in [short, long] {
            let json = serde_json::to_string(&k).unwrap();
            // As the `Arc<str>` it replaced serialized (serde's `rc`): a plain string.
            assert_eq!(json, serde_json::to_string(k.as_str()).unwrap());
            assert_eq!(serde_json::from_str::<KeyStr>(&json).unwrap(), k);
        }
        assert!(serde_json::from_str::<KeyStr>("1").is_err());
    }

    /// Every pair of keys built from the sample parts (one and two parts, in every
    /// combination) compares, orders, prefixes and displays as the old representation did,
    /// and equal keys hash equal.
    #[test]
    fn keys_agree_with_the_old_representation() {
        let parts = sample_parts();
        let mut keys: Vec<Vec<KeyPart>> = vec![vec![]];
        for a in &parts {
            keys.push(vec![a.clone()]);
            for b in parts.iter().step_by(3) {
                keys.push(vec![a.clone(), b.clone()]);
            }
        }
        for a in parts.iter().step_by(5) {
            for b in parts.iter().step_by(7) {
                keys.push(vec![a.clone(), b.clone(), a.clone()]);
                keys.push(vec![a.clone(), b.clone(), a.clone(), b.clone()]);
            }
        }
        let built: Vec<(QueryKey, Vec<OldPart>)> = keys
            .iter()
            .map(|k| {
                (
                    QueryKey::new(k.iter().cloned()),
                    k.iter().map(OldPart::new).collect(),
                )
            })
            .collect();
        for (a, old_a) in &built {
            let old_text = format!(
                "[{}]",
                old_a
                    .iter()
                    .map(|p| match p {
                        OldPart::Null => "null".to_owned(),
                        OldPart::Bool(b) => b.to_string(),
                        OldPart::Int(i) => i.to_string(),
                        OldPart::UInt(u) => u.to_string(),
                        OldPart::Str(s) => serde_json::to_string(&**s).unwrap(),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            );
            assert_eq!(a.to_string(), old_text);
            assert_eq!(old_text.parse::<QueryKey>().unwrap(), *a);
            for (b, old_b) in &built {
                assert_eq!(a == b, old_a == old_b, "{a} == {b}");
                assert_eq!(a.cmp(b), old_a.cmp(old_b), "{a} cmp {b}");
                assert_eq!(
                    a.starts_with(b),
                    old_a.starts_with(old_b),
                    "{a} starts with {b}"
                );
                if a == b {
                    assert_eq!(a.precomputed_hash(), b.precomputed_hash(), "{a}");
                }
            }
        }
        // Distinct keys hash apart (the seeded hash is not degenerate on this set).
        let mut hashes: Vec<u64> = built.iter().map(|(k, _)| k.precomputed_hash()).collect();
        let mut distinct: Vec<&QueryKey> = built.iter().map(|(k, _)| k).collect();
        distinct.sort();
        distinct.dedup();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), distinct.len());
    }

    /// However a key is built (`key!`'s array, `QueryKey::new` from an exact-size or an
    /// unknown-size iterator, a `Vec`, parsed text, on another thread), equal keys are
    /// equal and hash equal.
    #[test]
    fn every_way_of_building_a_key_agrees() {
        let long = text(30, "ü");
        let expected = key!["user", 7_u8, long.as_str(), true];
        let three = key!["user", 7, true];
        assert_eq!(
            QueryKey::new(three.parts().iter().filter(|_| true).cloned()),
            three
        );
        assert_eq!(QueryKey::from(three.parts().to_vec()), three);
        let ways = [
            key!["user", 7_i64, long.clone(), true],
            QueryKey::new([
                KeyPart::from("user"),
                KeyPart::UInt(7),
                KeyPart::from(long.as_str()),
                KeyPart::from(true),
            ]),
            QueryKey::new(expected.parts().iter().filter(|_| true).cloned()),
            QueryKey::from(expected.parts().to_vec()),
            expected.to_string().parse().unwrap(),
            std::thread::spawn({
                let long = long.clone();
                move || key!["user", 7, long, true]
            })
            .join()
            .unwrap(),
        ];
        for k in &ways {
            assert_eq!(*k, expected);
            assert_eq!(k.precomputed_hash(), expected.precomputed_hash());
            assert_eq!(k.parts(), expected.parts());
        }
        assert_eq!(expected.parts()[1], KeyPart::Int(7));
    }

    /// `key!` builds through `From<[KeyPart; N]>`, a second way into a key beside
    /// `QueryKey::new`: it must normalise a small `UInt` built directly to its `Int` form
    /// too (see `tests/regressions.rs`, `a_small_uint_part_built_directly_…`), or
    /// `key![KeyPart::UInt(5)]` would be a different key from `key![5]` with the same
    /// storage name.
    #[test]
    fn key_macro_normalises_a_small_uint_part() {
        let direct = key!["a", KeyPart::UInt(5)];
        assert_eq!(direct.parts()[1], KeyPart::Int(5));
        assert_eq!(direct, key!["a", 5]);
        assert_eq!(direct.precomputed_hash(), key!["a", 5].precomputed_hash());
        let big = key!["a", KeyPart::UInt(u64::MAX)];
        assert_eq!(big.parts()[1], KeyPart::UInt(u64::MAX));
        assert_eq!(big, key!["a", u64::MAX]);
    }

    #[test]
    fn conversions() {
        assert_eq!(QueryKey::from("a"), key!["a"]);
        assert_eq!(QueryKey::from(["a", "b"]), key!["a", "b"]);
        assert_eq!(
            QueryKey::from(vec!["a".to_string(), "b".to_string()]),
            key!["a", "b"]
        );
    }
}
