//! Typed query keys: `TypedQueryKey` structs, `TypedKey<T>` from `query_keys!` factories,
//! the client's `*_typed` calls and `QueryOptions::typed`.
//!
//! What must not compile is checked by the `compile_fail` doctests on those items
//! (`src/typed_key.rs`, `src/client/typed.rs`, `src/options/typed.rs`). Stable rustdoc
//! does not check a `compile_fail,E0308` block's error code (only nightly does), so each
//! block is written as a passing example with one line changed, and each was checked by
//! hand to fail with exactly the code it names, and to compile once that line is fixed.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::settle;
use stackquery::{
    key, FetchContext, QueryClient, QueryError, QueryKey, QueryOptions, QueryStatus, TypedKey,
    TypedQueryKey,
};

#[derive(Clone, Debug, PartialEq)]
struct User {
    id: u64,
    name: String,
}

fn ada(id: u64) -> User {
    User {
        id,
        name: format!("user {id}"),
    }
}

/// A key factory: `users()` is a prefix of every `user(id)` and `user_posts(id)`.
mod keys {
    use super::User;
    stackquery::query_keys! {
        /// Every user.
        pub users: ["users"] => Vec<User>;
        /// One user.
        pub user(id: u64): ["users", id] => User;
        /// A user's post titles (two arguments, trailing commas).
        pub user_posts(id: u64, page: u32,): ["users", id, "posts", page,] => Vec<String>;
        /// A private entry with an attribute passed through.
        #[allow(dead_code)]
        unused: [] => bool;
    }
}

/// A struct key: the key's type names its data type.
struct UserKey(u64);

impl TypedQueryKey for UserKey {
    type Data = User;
    fn query_key(&self) -> QueryKey {
        key!["users", self.0]
    }
}

/// Another struct key of another data type that builds the *same* keys as `UserKey`:
/// the case the compiler cannot see.
struct UserAgeKey(u64);

impl TypedQueryKey for UserAgeKey {
    type Data = u32;
    fn query_key(&self) -> QueryKey {
        key!["users", self.0]
    }
}

#[test]
fn the_factory_builds_the_keys_it_declares() {
    assert_eq!(keys::users().key(), &key!["users"]);
    assert_eq!(keys::user(7).key(), &key!["users", 7]);
    assert_eq!(keys::user_posts(7, 2).key(), &key!["users", 7, "posts", 2]);
    assert!(keys::user(7).key().starts_with(keys::users().key()));
    // A typed key is equal, hashes and displays as its key; its `query_key` is the key.
    assert_eq!(keys::user(7), keys::user(7));
    assert_ne!(keys::user(7), keys::user(8));
    let set: HashSet<TypedKey<User>> = [keys::user(1), keys::user(1), keys::user(2)].into();
    assert_eq!(set.len(), 2);
    assert_eq!(keys::user(7).to_string(), r#"["users",7]"#);
    assert_eq!(keys::user(7).query_key(), key!["users", 7]);
    assert_eq!(keys::user(7).clone().into_key(), key!["users", 7]);
    let debug = format!("{:?}", keys::user(7));
    assert!(
        debug.starts_with("TypedKey<") && debug.contains("User>"),
        "{debug}"
    );
    assert!(debug.ends_with(r#"(["users",7])"#), "{debug}");
}

/// The tag costs nothing: a typed key is a `QueryKey` in size, and `Send + Sync` even
/// for a data type that is neither (it never holds the data).
#[test]
fn a_typed_key_is_a_query_key_in_size_and_always_send_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TypedKey<std::rc::Rc<u8>>>();
    assert_eq!(
        std::mem::size_of::<TypedKey<User>>(),
        std::mem::size_of::<QueryKey>()
    );
}

#[tokio::test(start_paused = true)]
async fn factory_keys_write_and_read_without_a_turbofish() {
    let client = QueryClient::new();
    assert!(client.get_query_data_typed(&keys::user(1)).is_none());
    assert!(client.get_query_state_typed(keys::user(1)).is_none());

    client.set_query_data_typed(keys::user(1), ada(1)).unwrap();
    let user: Arc<User> = client.get_query_data_typed(&keys::user(1)).unwrap();
    assert_eq!(*user, ada(1));
    let state = client.get_query_state_typed(&keys::user(1)).unwrap();
    assert_eq!(state.status, QueryStatus::Success);
    assert_eq!(state.data.as_deref(), Some(&ada(1)));

    // The same entry as the untyped key, both ways.
    assert_eq!(
        client.get_query_data::<User>(&key!["users", 1]).as_deref(),
        Some(&ada(1))
    );
    client.set_query_data(key!["users", 2], ada(2)).unwrap();
    assert_eq!(
        client.get_query_data_typed(keys::user(2)).as_deref(),
        Some(&ada(2))
    );

    // `set_query_data_arc_typed` stores the very `Arc`.
    let list = Arc::new(vec![ada(1), ada(2)]);
    client
        .set_query_data_arc_typed(keys::users(), list.clone())
        .unwrap();
    assert!(Arc::ptr_eq(
        &client.get_query_data_typed(keys::users()).unwrap(),
        &list
    ));
}

#[tokio::test(start_paused = true)]
async fn update_typed_sees_the_old_value_of_the_keys_type() {
    let client = QueryClient::new();
    let key = keys::user_posts(1, 0);
    let first = client
        .update_query_data_typed(&key, |old| {
            assert!(old.is_none());
            Some(vec!["hello".to_string()])
        })
        .unwrap();
    assert_eq!(*first.unwrap(), ["hello"]);
    let second = client
        .update_query_data_typed(&key, |old| {
            let mut posts = old.cloned().unwrap_or_default();
            posts.push("again".into());
            Some(posts)
        })
        .unwrap();
    assert_eq!(*second.unwrap(), ["hello", "again"]);
    // `None` leaves the entry as it is and returns what is stored.
    let kept = client.update_query_data_typed(&key, |_| None).unwrap();
    assert_eq!(*kept.unwrap(), ["hello", "again"]);
}

#[tokio::test(start_paused = true)]
async fn a_struct_key_works_like_a_factory_key() {
    let client = QueryClient::new();
    client.set_query_data_typed(UserKey(3), ada(3)).unwrap();
    assert_eq!(
        client.get_query_data_typed(&UserKey(3)).as_deref(),
        Some(&ada(3))
    );
    // Its values and the factory's build the same keys: one entry.
    assert_eq!(
        client.get_query_data_typed(keys::user(3)).as_deref(),
        Some(&ada(3))
    );
    let renamed = client
        .update_query_data_typed(UserKey(3), |old| {
            old.map(|u| User {
                name: "Grace".into(),
                ..u.clone()
            })
        })
        .unwrap();
    assert_eq!(renamed.unwrap().name, "Grace");

    // `QueryOptions::typed` takes struct keys too.
    let opts = QueryOptions::typed(UserKey(4), || async { Ok::<_, String>(ada(4)) });
    assert_eq!(opts.key(), &key!["users", 4]);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), ada(4));
}

/// Typed options cache and refetch exactly as untyped ones: one fetch while fresh, a
/// background refetch once the stale time has passed on the (paused) clock.
#[tokio::test(start_paused = true)]
async fn typed_options_follow_the_stale_time() {
    let client = QueryClient::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let opts = QueryOptions::typed(keys::user(9), move || {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(User {
                id: 9,
                name: format!("fetch {n}"),
            })
        }
    })
    .stale_time(Duration::from_secs(60));

    assert_eq!(client.fetch_query(&opts).await.unwrap().name, "fetch 1");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(client.fetch_query(&opts).await.unwrap().name, "fetch 1");
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "fresh: from the cache");

    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(client
        .get_query_state_typed(keys::user(9))
        .unwrap()
        .is_stale());
    // Stale: the cached value now, one background refetch.
    assert_eq!(client.fetch_query(&opts).await.unwrap().name, "fetch 1");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        client.get_query_data_typed(keys::user(9)).unwrap().name,
        "fetch 2"
    );
}

#[tokio::test(start_paused = true)]
async fn typed_with_context_gives_the_fetch_its_key() {
    let client = QueryClient::new();
    let opts = QueryOptions::typed_with_context(keys::user_posts(5, 1), |ctx: FetchContext| {
        let key = ctx.key().to_string();
        async move { Ok::<_, String>(vec![key]) }
    });
    let posts = client.fetch_query(&opts).await.unwrap();
    assert_eq!(*posts, [r#"["users",5,"posts",1]"#]);
}

/// `typed_key` of options made with the untyped `new` carries their data type.
#[tokio::test(start_paused = true)]
async fn the_options_typed_key_reads_their_data() {
    let client = QueryClient::new();
    let opts = QueryOptions::new(key!["flags"], || async {
        Ok::<_, String>(vec![true, false])
    });
    let flags = opts.typed_key();
    assert_eq!(flags.key(), &key!["flags"]);
    assert!(client.get_query_data_typed(&flags).is_none());
    client.fetch_query(&opts).await.unwrap();
    assert_eq!(*client.get_query_data_typed(&flags).unwrap(), [true, false]);
}

/// A typed key is a filter: its key, as a prefix.
#[tokio::test(start_paused = true)]
async fn a_typed_key_filters_by_prefix() {
    let client = QueryClient::new();
    client.set_query_data_typed(keys::user(1), ada(1)).unwrap();
    client.set_query_data_typed(keys::user(2), ada(2)).unwrap();
    client
        .set_query_data_typed(keys::user_posts(1, 0), vec![])
        .unwrap();
    client.set_query_data(key!["teams", 1], 1_u8).unwrap();

    assert_eq!(client.invalidate_queries(&keys::user(1)).await, 2);
    assert!(
        client
            .get_query_state_typed(keys::user(1))
            .unwrap()
            .is_invalidated
    );
    assert!(
        client
            .get_query_state_typed(keys::user_posts(1, 0))
            .unwrap()
            .is_invalidated
    );
    assert!(
        !client
            .get_query_state_typed(keys::user(2))
            .unwrap()
            .is_invalidated
    );
    assert_eq!(client.remove_queries(keys::users()), 3);
    assert!(client.get_query_data_typed(keys::user(2)).is_none());
    assert_eq!(
        client.query_count(),
        1,
        "[\"teams\", 1] is not under [\"users\"]"
    );
}

/// Two key types of different data types building the same key, and typed calls mixed
/// with untyped ones: the compiler cannot see these, and the runtime check still guards
/// them (a typed write fails with `TypeMismatch` naming both types, a typed read is
/// `None`), exactly as for untyped keys.
#[tokio::test(start_paused = true)]
async fn one_key_value_under_two_key_types_meets_the_runtime_guard() {
    let client = QueryClient::new();
    client.set_query_data_typed(UserKey(1), ada(1)).unwrap();

    let err = client.set_query_data_typed(UserAgeKey(1), 36).unwrap_err();
    let QueryError::TypeMismatch(m) = &err else {
        panic!("expected TypeMismatch, got {err:?}");
    };
    assert_eq!(m.key, r#"["users",1]"#);
    assert!(m.stored.ends_with("User"), "{}", m.stored);
    assert_eq!(m.requested, "u32");
    assert!(client.get_query_data_typed(UserAgeKey(1)).is_none());
    assert!(client.get_query_state_typed(UserAgeKey(1)).is_none());
    assert!(matches!(
        client.update_query_data_typed(UserAgeKey(1), |_| Some(1)),
        Err(QueryError::TypeMismatch(_))
    ));
    let opts = QueryOptions::typed(UserAgeKey(1), || async { Ok::<_, String>(36) });
    assert!(matches!(
        client.fetch_query(&opts).await,
        Err(QueryError::TypeMismatch(_))
    ));
    // The stored user is untouched.
    assert_eq!(
        client.get_query_data_typed(UserKey(1)).as_deref(),
        Some(&ada(1))
    );

    // An untyped write of another type, then a typed one.
    client.set_query_data(key!["users", 2], "two").unwrap();
    assert!(matches!(
        client.set_query_data_typed(keys::user(2), ada(2)),
        Err(QueryError::TypeMismatch(_))
    ));
    assert!(client.get_query_data_typed(keys::user(2)).is_none());
}
