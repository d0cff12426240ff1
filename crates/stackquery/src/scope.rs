//! [`KeyScope`]: which keys an operation concerns — every key, a key and everything under
//! it, or one key. One type for the filters, the cache, the second tier's deletes and the
//! bus, so the "does this key fall in it" and "the empty prefix is everything" rules live
//! in one place.

use crate::key::QueryKey;

/// Which keys an operation concerns: every key, a key and every key under it, or one key.
///
/// A [`QueryFilter`](crate::QueryFilter) is a scope narrowed further by state; the bus
/// (`stackquery::bus::BusMessageKind`, feature `redis`) carries scopes
/// between instances.
///
/// The empty key is a prefix of every key, so `Prefix(key![])` is the same scope as
/// `All`: [`KeyScope::prefix`] builds `All` for it, [`normalized`](Self::normalized)
/// turns one into the other, and every operation treats them alike. `Exact(key![])` is
/// only the entry whose key is `[]`.
///
/// ```
/// use stackquery::{key, KeyScope};
/// let users = KeyScope::prefix(key!["user"]);
/// assert!(users.contains(&key!["user"]));
/// assert!(users.contains(&key!["user", 1]));
/// assert!(!users.contains(&key!["users"]));
/// assert!(!KeyScope::Exact(key!["user"]).contains(&key!["user", 1]));
/// assert_eq!(KeyScope::prefix(key![]), KeyScope::All);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyScope {
    /// Every key.
    All,
    /// The key and every key that starts with it (`["user"]` holds `["user", 1]`).
    Prefix(QueryKey),
    /// Only this key.
    Exact(QueryKey),
}

/// One second-tier delete (storage keys are key texts, see [`crate::storage`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StorageDelete {
    /// `Storage::delete` of this text.
    Key(String),
    /// `Storage::delete_prefix` of this text.
    Prefix(String),
}

impl KeyScope {
    /// `key` and every key under it; [`All`](Self::All) for the empty key.
    pub fn prefix(key: impl Into<QueryKey>) -> Self {
        KeyScope::Prefix(key.into()).normalized()
    }

    /// Only `key`.
    pub fn exact(key: impl Into<QueryKey>) -> Self {
        KeyScope::Exact(key.into())
    }

    /// The same scope, with `Prefix` of the empty key written `All`.
    #[must_use]
    pub fn normalized(self) -> Self {
        match self {
            KeyScope::Prefix(k) if k.is_empty() => KeyScope::All,
            other => other,
        }
    }

    /// True when this scope is every key (`All`, or `Prefix` of the empty key).
    pub fn is_all(&self) -> bool {
        match self {
            KeyScope::All => true,
            KeyScope::Prefix(k) => k.is_empty(),
            KeyScope::Exact(_) => false,
        }
    }

    /// The key named by the scope: `None` for `All`.
    pub fn key(&self) -> Option<&QueryKey> {
        match self {
            KeyScope::All => None,
            KeyScope::Prefix(k) | KeyScope::Exact(k) => Some(k),
        }
    }

    /// True when `key` falls in this scope.
    pub fn contains(&self, key: &QueryKey) -> bool {
        match self {
            KeyScope::All => true,
            KeyScope::Prefix(p) => key.starts_with(p),
            KeyScope::Exact(k) => key == k,
        }
    }

    /// The second-tier deletes that remove every stored entry in this scope: one `delete`
    /// of an exact key; for a prefix, a `delete` of the key and a `delete_prefix` of its
    /// [`children_prefix`](crate::storage::children_prefix); everything is one
    /// `delete_prefix("[")`.
    pub(crate) fn storage_deletes(&self) -> Vec<StorageDelete> {
        match self {
            KeyScope::Exact(k) => vec![StorageDelete::Key(k.to_string())],
            KeyScope::Prefix(p) if !p.is_empty() => vec![
                StorageDelete::Key(p.to_string()),
                StorageDelete::Prefix(crate::storage::children_prefix(p)),
            ],
            // Every key text starts with `[`, the empty key's `[]` included.
            KeyScope::All | KeyScope::Prefix(_) => vec![StorageDelete::Prefix("[".to_owned())],
        }
    }
}

impl From<QueryKey> for KeyScope {
    /// A key converts into a prefix scope, as into a [`QueryFilter`](crate::QueryFilter).
    fn from(key: QueryKey) -> Self {
        KeyScope::prefix(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key;

    #[test]
    fn the_empty_prefix_is_everything() {
        assert_eq!(KeyScope::prefix(key![]), KeyScope::All);
        assert!(KeyScope::Prefix(key![]).is_all());
        assert_eq!(KeyScope::Prefix(key![]).normalized(), KeyScope::All);
        assert!(!KeyScope::Exact(key![]).is_all());
        assert!(KeyScope::Prefix(key![]).contains(&key!["x", 1]));
        assert!(!KeyScope::Exact(key![]).contains(&key!["x"]));
        assert!(KeyScope::Exact(key![]).contains(&key![]));
        assert_eq!(
            KeyScope::Prefix(key![]).storage_deletes(),
            KeyScope::All.storage_deletes()
        );
    }

    #[test]
    fn storage_deletes_cover_the_scope_and_nothing_else() {
        use StorageDelete::{Key, Prefix};
        assert_eq!(KeyScope::All.storage_deletes(), vec![Prefix("[".into())]);
        assert_eq!(
            KeyScope::exact(key!["user", 1]).storage_deletes(),
            vec![Key(r#"["user",1]"#.into())]
        );
        assert_eq!(
            KeyScope::prefix(key!["user"]).storage_deletes(),
            vec![Key(r#"["user"]"#.into()), Prefix(r#"["user","#.into())]
        );
        // Whatever the deletes remove is in the scope, and the reverse.
        let scope = KeyScope::prefix(key!["user"]);
        for k in [
            key!["user"],
            key!["user", 1],
            key!["users"],
            key!["use"],
            key![],
        ] {
            let text = k.to_string();
            let removed = scope.storage_deletes().iter().any(|d| match d {
                Key(t) => *t == text,
                Prefix(p) => text.starts_with(p.as_str()),
            });
            assert_eq!(removed, scope.contains(&k), "{k}");
        }
    }
}
