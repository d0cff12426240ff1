//! Which entries a bulk operation (invalidate, refetch, cancel, remove, reset…) touches.

use std::fmt;
use std::sync::Arc;

use crate::engine::ErasedEntry;
use crate::key::QueryKey;
use crate::scope::KeyScope;

type KeyPredicate = dyn Fn(&QueryKey) -> bool + Send + Sync;

/// Selects entries for bulk operations: a [`KeyScope`] narrowed by state.
///
/// A key (or a [`KeyScope`]) converts into a filter; a key is a prefix filter (`["user"]` matches `["user", 1]`); narrow further
/// by staleness, activity (having enabled observers) or a predicate over the key.
///
/// ```
/// use stackquery::{key, QueryFilter};
/// let f = QueryFilter::from(key!["user"]).stale(true).active(false);
/// let g = QueryFilter::exact(key!["user", 1]);
/// let h = QueryFilter::all().predicate(|k| k.len() > 2);
/// # let _ = (f, g, h);
/// ```
#[derive(Clone)]
pub struct QueryFilter {
    scope: KeyScope,
    stale: Option<bool>,
    active: Option<bool>,
    fetching: Option<bool>,
    predicate: Option<Arc<KeyPredicate>>,
}

impl fmt::Debug for QueryFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryFilter")
            .field("scope", &self.scope)
            .field("stale", &self.stale)
            .field("active", &self.active)
            .field("fetching", &self.fetching)
            .field("predicate", &self.predicate.is_some())
            .finish()
    }
}

impl QueryFilter {
    fn with_scope(scope: KeyScope) -> Self {
        QueryFilter {
            scope,
            stale: None,
            active: None,
            fetching: None,
            predicate: None,
        }
    }

    /// Every entry.
    pub fn all() -> Self {
        Self::with_scope(KeyScope::All)
    }

    /// Every entry whose key starts with `prefix` (the key itself included).
    pub fn prefix(prefix: impl Into<QueryKey>) -> Self {
        Self::with_scope(KeyScope::prefix(prefix))
    }

    /// Only the entry with exactly this key.
    pub fn exact(key: impl Into<QueryKey>) -> Self {
        Self::with_scope(KeyScope::exact(key))
    }

    /// Keep only stale (`true`) or only fresh (`false`) entries. An observed entry is stale
    /// when it is stale for any of its observers (each judges by its own stale time); an
    /// unobserved one is judged by the stale time of its last caller.
    #[must_use]
    pub fn stale(mut self, stale: bool) -> Self {
        self.stale = Some(stale);
        self
    }

    /// Keep only active entries (`true`: at least one *enabled* observer) or inactive ones
    /// (`false`: no observer, or only disabled ones), as in TanStack Query.
    #[must_use]
    pub fn active(mut self, active: bool) -> Self {
        self.active = Some(active);
        self
    }

    /// Keep only entries with (`true`) or without (`false`) a fetch in flight.
    #[must_use]
    pub fn fetching(mut self, fetching: bool) -> Self {
        self.fetching = Some(fetching);
        self
    }

    /// Keep only entries whose key satisfies `f`. A panicking predicate excludes the entry.
    #[must_use]
    pub fn predicate(mut self, f: impl Fn(&QueryKey) -> bool + Send + Sync + 'static) -> Self {
        self.predicate = Some(Arc::new(f));
        self
    }

    /// The keys the filter looks at, before narrowing by state.
    pub fn scope(&self) -> &KeyScope {
        &self.scope
    }

    /// True when nothing narrows the key scope (so it can be applied to the second tier,
    /// which only knows keys).
    pub(crate) fn is_key_only(&self) -> bool {
        self.stale.is_none()
            && self.active.is_none()
            && self.fetching.is_none()
            && self.predicate.is_none()
    }

    /// The narrowing part; called outside every lock (it may run user code).
    pub(crate) fn accepts(&self, e: &ErasedEntry) -> bool {
        if self
            .stale
            .is_some_and(|s| e.is_stale(tokio::time::Instant::now()) != s)
            || self.active.is_some_and(|a| e.is_active() != a)
            || self.fetching.is_some_and(|f| e.is_fetching() != f)
        {
            return false;
        }
        match &self.predicate {
            None => true,
            // A panicking predicate (or one skipped on an unwinding thread) excludes the
            // entry: an action is never applied to an entry nobody said yes to.
            Some(p) => {
                crate::user_code::contain("filter predicate", || p(e.key())).unwrap_or(false)
            }
        }
    }
}

impl From<QueryKey> for QueryFilter {
    fn from(key: QueryKey) -> Self {
        QueryFilter::prefix(key)
    }
}
impl From<&QueryKey> for QueryFilter {
    fn from(key: &QueryKey) -> Self {
        QueryFilter::prefix(key.clone())
    }
}
/// The typed key's key, as a prefix (the data type plays no part in matching).
impl<T> From<&crate::typed_key::TypedKey<T>> for QueryFilter {
    fn from(key: &crate::typed_key::TypedKey<T>) -> Self {
        QueryFilter::prefix(key.key().clone())
    }
}
/// The typed key's key, as a prefix (the data type plays no part in matching).
impl<T> From<crate::typed_key::TypedKey<T>> for QueryFilter {
    fn from(key: crate::typed_key::TypedKey<T>) -> Self {
        QueryFilter::prefix(key.into_key())
    }
}
impl From<KeyScope> for QueryFilter {
    fn from(scope: KeyScope) -> Self {
        QueryFilter::with_scope(scope.normalized())
    }
}
