//! Options built from a [`TypedQueryKey`], and the typed key of existing options
//! (TanStack Query's `queryOptions()`: the options' key carries their data type).

use std::future::Future;

use super::QueryOptions;
use crate::context::FetchContext;
use crate::error::BoxError;
use crate::typed_key::{TypedKey, TypedQueryKey};

impl<T: Send + Sync + 'static> QueryOptions<T> {
    /// [`new`](Self::new) for a typed key: the fetch function must return the key's data
    /// type, or the call does not compile.
    ///
    /// ```
    /// use stackquery::{key, QueryClient, QueryOptions, TypedKey};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// let client = QueryClient::new();
    /// let visits = TypedKey::<u32>::new(key!["visits"]);
    /// let opts = QueryOptions::typed(&visits, || async { Ok::<_, std::io::Error>(3) });
    /// assert_eq!(*client.fetch_query(&opts).await?, 3);
    /// assert_eq!(*client.get_query_data_typed(&visits).unwrap(), 3);
    /// # Ok(()) }
    /// ```
    ///
    /// ```compile_fail,E0271
    /// use stackquery::{key, QueryOptions, TypedKey};
    ///
    /// let visits = TypedKey::<u32>::new(key!["visits"]);
    /// // Guards E0271 (type mismatch resolving the future's output): `visits` holds a
    /// // `u32`, and this fetch returns a `String`.
    /// let opts = QueryOptions::typed(&visits, || async {
    ///     Ok::<_, std::io::Error>(String::from("many"))
    /// });
    /// ```
    pub fn typed<K, F, Fut, E>(key: K, fetch: F) -> Self
    where
        K: TypedQueryKey<Data = T>,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self::new(key.as_query_key().into_owned(), fetch)
    }

    /// [`with_context`](Self::with_context) for a typed key: the fetch function is given a
    /// [`FetchContext`] and must return the key's data type.
    ///
    /// ```
    /// use stackquery::{key, FetchContext, QueryOptions, TypedKey};
    ///
    /// let report = TypedKey::<String>::new(key!["report", 7]);
    /// let opts = QueryOptions::typed_with_context(&report, |ctx: FetchContext| async move {
    ///     Ok::<_, std::io::Error>(format!("report {}", ctx.key()))
    /// });
    /// assert_eq!(opts.key(), report.key());
    /// ```
    pub fn typed_with_context<K, F, Fut, E>(key: K, fetch: F) -> Self
    where
        K: TypedQueryKey<Data = T>,
        F: Fn(FetchContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self::with_context(key.as_query_key().into_owned(), fetch)
    }
}

impl<T> QueryOptions<T> {
    /// The options' key tagged with their data type, for the client's `*_typed` calls
    /// (TanStack Query's `queryOptions(..).queryKey`): a key and its type travel together
    /// even for options made with an untyped [`new`](Self::new).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stackquery::{key, QueryClient, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// let client = QueryClient::new();
    /// let opts = QueryOptions::new(key!["flags"], || async { Ok::<_, String>(vec![true]) });
    /// client.fetch_query(&opts).await?;
    /// let flags: Arc<Vec<bool>> = client.get_query_data_typed(&opts.typed_key()).unwrap();
    /// assert_eq!(*flags, [true]);
    /// # Ok(()) }
    /// ```
    pub fn typed_key(&self) -> TypedKey<T> {
        TypedKey::new(self.key.clone())
    }
}
