//! The client's calls on [`TypedQueryKey`]s: the data type comes from the key.
//!
//! Each is the untyped call of the same name without `_typed`, on the key's
//! [`QueryKey`](crate::QueryKey) and its `Data` type: same behaviour, same cost (a
//! [`TypedKey`](crate::TypedKey) lends its key, so a typed read adds nothing).

use std::sync::Arc;

use super::QueryClient;
use crate::error::QueryError;
use crate::state::QueryState;
use crate::typed_key::TypedQueryKey;

impl QueryClient {
    /// [`get_query_data`](Self::get_query_data) with the type taken from the key: the
    /// cached data, fresh or stale; `None` when there is none, or when an untyped call
    /// (or another key type building the same key) stored another type there.
    ///
    /// ```
    /// use stackquery::{key, QueryClient, TypedKey};
    ///
    /// let client = QueryClient::new();
    /// let name = TypedKey::<String>::new(key!["name"]);
    /// assert!(client.get_query_data_typed(&name).is_none());
    /// client.set_query_data_typed(&name, "Ada".to_string())?;
    /// assert_eq!(client.get_query_data_typed(&name).unwrap().as_str(), "Ada");
    /// # Ok::<(), stackquery::QueryError>(())
    /// ```
    pub fn get_query_data_typed<K: TypedQueryKey>(&self, key: K) -> Option<Arc<K::Data>> {
        self.get_query_data::<K::Data>(&key.as_query_key())
    }

    /// [`get_query_state`](Self::get_query_state) with the type taken from the key.
    pub fn get_query_state_typed<K: TypedQueryKey>(&self, key: K) -> Option<QueryState<K::Data>> {
        self.get_query_state::<K::Data>(&key.as_query_key())
    }

    /// [`set_query_data`](Self::set_query_data) with the type taken from the key: `data`
    /// must be the key's data type, or the call does not compile.
    ///
    /// # Errors
    /// [`QueryError::TypeMismatch`] when the entry holds another type all the same: an
    /// untyped call, or another key type building the same key, stored it.
    ///
    /// ```compile_fail,E0308
    /// use stackquery::{key, QueryClient, TypedKey};
    ///
    /// let client = QueryClient::new();
    /// let visits = TypedKey::<u32>::new(key!["visits"]);
    /// // Guards E0308 (mismatched types): `visits` holds a `u32`, not a `&str`.
    /// client.set_query_data_typed(&visits, "many")?;
    /// # Ok::<(), stackquery::QueryError>(())
    /// ```
    pub fn set_query_data_typed<K: TypedQueryKey>(
        &self,
        key: K,
        data: K::Data,
    ) -> Result<(), QueryError> {
        self.set_query_data_arc(key.as_query_key().into_owned(), Arc::new(data))
    }

    /// [`set_query_data_arc`](Self::set_query_data_arc) with the type taken from the key.
    ///
    /// # Errors
    /// As [`set_query_data_typed`](Self::set_query_data_typed).
    pub fn set_query_data_arc_typed<K: TypedQueryKey>(
        &self,
        key: K,
        data: Arc<K::Data>,
    ) -> Result<(), QueryError> {
        self.set_query_data_arc(key.as_query_key().into_owned(), data)
    }

    /// [`update_query_data`](Self::update_query_data) with the type taken from the key:
    /// the updater is given and returns the key's data type (its closure parameter needs
    /// no annotation).
    ///
    /// # Errors
    /// As [`update_query_data`](Self::update_query_data): [`QueryError::TypeMismatch`]
    /// (see [`set_query_data_typed`](Self::set_query_data_typed)) or
    /// [`QueryError::Panicked`].
    ///
    /// ```
    /// use stackquery::{key, QueryClient, TypedKey};
    ///
    /// let client = QueryClient::new();
    /// let tags = TypedKey::<Vec<String>>::new(key!["tags"]);
    /// let now = client.update_query_data_typed(&tags, |old| {
    ///     let mut tags = old.cloned().unwrap_or_default();
    ///     tags.push("rust".to_string());
    ///     Some(tags)
    /// })?;
    /// assert_eq!(*now.unwrap(), ["rust"]);
    /// # Ok::<(), stackquery::QueryError>(())
    /// ```
    ///
    /// ```compile_fail,E0308
    /// use stackquery::{key, QueryClient, TypedKey};
    ///
    /// let client = QueryClient::new();
    /// let tags = TypedKey::<Vec<String>>::new(key!["tags"]);
    /// // Guards E0308 (mismatched types): the updater must return the key's `Vec<String>`.
    /// client.update_query_data_typed(&tags, |_| Some(3_u32))?;
    /// # Ok::<(), stackquery::QueryError>(())
    /// ```
    pub fn update_query_data_typed<K, F>(
        &self,
        key: K,
        updater: F,
    ) -> Result<Option<Arc<K::Data>>, QueryError>
    where
        K: TypedQueryKey,
        F: Fn(Option<&K::Data>) -> Option<K::Data>,
    {
        self.update_query_data(key.as_query_key().into_owned(), updater)
    }
}
