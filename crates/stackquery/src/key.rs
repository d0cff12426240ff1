//! Hierarchical query keys.
//!
//! A [`QueryKey`] is a sequence of [`KeyPart`]s (strings, integers, booleans). Its hash is
//! computed once, when the key is built, so a cache hit never re-hashes the parts; cloning
//! is one reference-count bump. The hash is keyed with a random per-process seed (see
//! `hash_parts`), so it resists hash flooding.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

/// One part of a [`QueryKey`]: a string, an integer or a boolean.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPart {
    /// A boolean part. Sorts before integers and strings.
    Bool(bool),
    /// An integer part that fits in an `i64` (every integer type converts into it).
    Int(i64),
    /// An unsigned integer above `i64::MAX`; smaller unsigned values are always `Int`, so
    /// `1_u64` and `1_i64` make the same key.
    UInt(u64),
    /// A string part.
    Str(Arc<str>),
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
    fn from(v: &str) -> Self {
        KeyPart::Str(Arc::from(v))
    }
}
impl From<String> for KeyPart {
    fn from(v: String) -> Self {
        KeyPart::Str(Arc::from(v))
    }
}
impl From<&String> for KeyPart {
    fn from(v: &String) -> Self {
        KeyPart::Str(Arc::from(v.as_str()))
    }
}
impl From<Arc<str>> for KeyPart {
    fn from(v: Arc<str>) -> Self {
        KeyPart::Str(v)
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Bool(b) => write!(f, "{b}"),
            KeyPart::Int(i) => write!(f, "{i}"),
            KeyPart::UInt(u) => write!(f, "{u}"),
            // serde_json gives us correct, stable JSON string escaping.
            KeyPart::Str(s) => match serde_json::to_string(&**s) {
                Ok(quoted) => f.write_str(&quoted),
                Err(_) => Err(fmt::Error),
            },
        }
    }
}

struct KeyInner {
    hash: u64,
    parts: Box<[KeyPart]>,
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
pub struct QueryKey(Arc<KeyInner>);

/// Hashes a key's parts with SipHash-1-3 under a random per-process seed.
///
/// Keys are often built from request input and the cache's maps trust this hash (they look
/// keys up through a pass-through hasher), so a fixed, public seed would let a client craft
/// thousands of colliding keys and turn every lookup into a linear scan (hash flooding).
/// The seed is drawn once per process, not per key, so equal keys always hash equal within
/// the process; the hash is never persisted nor sent to another process (storage and the
/// bus name entries by the key's `Display` text), so it need not be stable across them.
fn hash_parts(parts: &[KeyPart]) -> u64 {
    crate::random::process_seed().hash_one(parts)
}

impl QueryKey {
    /// Builds a key from its parts.
    pub fn new(parts: impl IntoIterator<Item = KeyPart>) -> Self {
        // `KeyPart` is public, so `UInt(5)` can be built directly: normalise it to `Int(5)`,
        // or it would be a different key with the same `Display` (the storage name).
        let parts: Box<[KeyPart]> = parts
            .into_iter()
            .map(|p| match p {
                KeyPart::UInt(u) => i64::try_from(u).map_or(KeyPart::UInt(u), KeyPart::Int),
                other => other,
            })
            .collect();
        let hash = hash_parts(&parts);
        QueryKey(Arc::new(KeyInner { hash, parts }))
    }

    /// The key's parts, in order.
    pub fn parts(&self) -> &[KeyPart] {
        &self.0.parts
    }

    /// Number of parts.
    pub fn len(&self) -> usize {
        self.0.parts.len()
    }

    /// True for the empty key `[]`, which is a prefix of every key.
    pub fn is_empty(&self) -> bool {
        self.0.parts.is_empty()
    }

    /// True when `prefix`'s parts are the first parts of this key (a key starts with itself).
    pub fn starts_with(&self, prefix: &QueryKey) -> bool {
        self.0.parts.starts_with(&prefix.0.parts)
    }

    /// The hash computed when the key was built.
    ///
    /// It is seeded at random once per process (so keys from untrusted input cannot be
    /// crafted to collide): equal keys hash equal within a process, but the value differs
    /// from one process to the next. Never persist it or compare it across processes; use
    /// the key's `Display` text for that.
    pub fn precomputed_hash(&self) -> u64 {
        self.0.hash
    }
}

impl PartialEq for QueryKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.parts == other.0.parts)
    }
}
impl Eq for QueryKey {}

impl Hash for QueryKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
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
        self.0.parts.cmp(&other.0.parts)
    }
}

impl fmt::Display for QueryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, p) in self.0.parts.iter().enumerate() {
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

/// Builds a [`QueryKey`] from parts: strings, integers and booleans.
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
        $crate::QueryKey::new([$($crate::KeyPart::from($part)),+])
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
        assert!("[null]".parse::<QueryKey>().is_err());
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
