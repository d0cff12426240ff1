//! Client-level persistence rules: which keys are persisted, known without having seen a
//! query for them. A manual write (`set_query_data`, an optimistic update) on a key that
//! no `fetch_query` has used yet then still reaches the second tier, so a restart never
//! serves the older stored value; reads of the key hydrate from the tier like a query
//! marked `.persist()`. Like TanStack's persister, the decision is per query: here, by
//! key prefix and data type.

use std::any::Any;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::key::QueryKey;
use crate::storage::typed::PersistFns;

/// The rules, in the order they were added (the first match wins).
#[derive(Default)]
pub(crate) struct PersistRules {
    rules: Vec<Rule>,
}

struct Rule {
    prefix: QueryKey,
    /// A `PersistFns<T>` for the rule's data type.
    fns: Box<dyn Any + Send + Sync>,
}

impl PersistRules {
    /// Persists data of type `T` under `prefix`.
    pub(crate) fn add<T>(&mut self, prefix: QueryKey)
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.rules.push(Rule {
            prefix,
            fns: Box::new(PersistFns::<T>::new()),
        });
    }

    /// Persists data of type `T` under `prefix`, converted by `C`.
    pub(crate) fn add_with<T, C>(&mut self, prefix: QueryKey)
    where
        T: Send + Sync + 'static,
        C: crate::storage::JsonConverter<T>,
    {
        self.rules.push(Rule {
            prefix,
            fns: Box::new(PersistFns::<T>::via::<C>()),
        });
    }

    /// The encode/decode functions for `key` holding a `T`, if a rule covers it.
    pub(crate) fn find<T: 'static>(&self, key: &QueryKey) -> Option<PersistFns<T>> {
        if self.rules.is_empty() {
            return None;
        }
        self.rules
            .iter()
            .filter(|r| key.starts_with(&r.prefix))
            .find_map(|r| r.fns.downcast_ref::<PersistFns<T>>().copied())
    }
}

impl std::fmt::Debug for PersistRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| r.prefix.to_string()))
            .finish()
    }
}
