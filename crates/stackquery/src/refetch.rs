//! [`RefetchType`]: which of the entries an invalidation marks stale are refetched at once
//! (pure data; the entry's state machine applies it).

/// Which invalidated entries [`QueryClient::invalidate_queries_with`] refetches at once,
/// as TanStack Query's `refetchType`. Every matching entry is marked stale whatever the
/// choice; this only says which of them also start a fetch (and are waited for).
///
/// Two kinds of entries are never refetched, whatever the choice:
/// * a *disabled* query (observed only by observers whose query has
///   [`enabled(false)`](crate::QueryOptions::enabled)): it waits for an explicit fetch;
/// * an entry whose fetch function is unknown (only ever written by hand with
///   [`set_query_data`](crate::QueryClient::set_query_data) and never read or observed
///   with a query's options): there is nothing to run.
///
/// ```
/// use stackquery::{key, QueryClient, QueryOptions, RefetchType};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stackquery::QueryError> {
/// let client = QueryClient::new();
/// let opts = QueryOptions::new(key!["todos"], || async { Ok::<_, std::io::Error>(3_u32) });
/// client.fetch_query(&opts).await?; // cached, nobody observes it: inactive
///
/// // The default (`Active`) would only mark it stale; `All` refetches it now too.
/// assert_eq!(client.invalidate_queries_with(key!["todos"], RefetchType::All).await, 1);
/// assert!(!client.get_query_state::<u32>(&key!["todos"]).unwrap().is_invalidated);
/// # Ok(()) }
/// ```
///
/// [`QueryClient::invalidate_queries_with`]: crate::QueryClient::invalidate_queries_with
// Not `#[non_exhaustive]`: the four choices are TanStack's whole vocabulary, and a caller
// mapping its own setting (a config string, a Python argument) onto them should be able
// to match all four without a catch-all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RefetchType {
    /// Entries with at least one enabled observer (what
    /// [`invalidate_queries`](crate::QueryClient::invalidate_queries) does).
    #[default]
    Active,
    /// Entries nobody observes: a server's cache, read with `fetch_query` and friends.
    Inactive,
    /// Both: every entry that can be refetched.
    All,
    /// None: every entry is only marked stale. The next
    /// [`fetch_query_fresh`](crate::QueryClient::fetch_query_fresh) waits for a fetch; the
    /// next [`fetch_query`](crate::QueryClient::fetch_query) serves the stale data and
    /// refreshes it in the background.
    None,
}

impl RefetchType {
    /// Whether an entry with `observers` observers, `enabled` of them with an enabled
    /// query, is refetched. An entry observed only by disabled queries never is.
    pub(crate) fn covers(self, observers: u32, enabled: u32) -> bool {
        let active = enabled > 0;
        let inactive = observers == 0;
        match self {
            RefetchType::Active => active,
            RefetchType::Inactive => inactive,
            RefetchType::All => active || inactive,
            RefetchType::None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RefetchType::{self, *};

    /// The rule behind every bulk invalidation: (observers, enabled ones) → refetched.
    /// A disabled query (observers, none enabled) is refetched by no choice.
    #[test]
    fn each_choice_covers_exactly_its_entries() {
        let cases: [(RefetchType, [bool; 3]); 4] = [
            // (unobserved, active, disabled)
            (Active, [false, true, false]),
            (Inactive, [true, false, false]),
            (All, [true, true, false]),
            (None, [false, false, false]),
        ];
        for (choice, [unobserved, active, disabled]) in cases {
            assert_eq!(choice.covers(0, 0), unobserved, "{choice:?}, unobserved");
            assert_eq!(choice.covers(2, 1), active, "{choice:?}, active");
            assert_eq!(choice.covers(2, 0), disabled, "{choice:?}, disabled");
        }
        assert_eq!(RefetchType::default(), Active);
    }
}
