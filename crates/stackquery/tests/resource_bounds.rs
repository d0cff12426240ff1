//! What the cache keeps must be bounded: entries nobody uses are collected, `max_queries`
//! is a real bound, and restored snapshots neither pile up nor load a format they do not
//! know. Each test tells the story of the defect it pins down.

mod common;

use std::time::Duration;

use common::settle;
use serde::{Deserialize, Serialize};
use stackquery::{key, DehydratedQuery, DehydratedState, QueryClient, QueryError, QueryOptions};

const SEC: Duration = Duration::from_secs(1);

/// The story: `update_query_data` on a key that did not exist creates its entry first;
/// when the updater panicked, the call returned the panic as an error but left the empty
/// entry behind with no gc timer, so it stayed in memory forever. Every new entry is now
/// armed for the gc when it is made.
#[tokio::test(start_paused = true)]
async fn a_panicking_updater_on_a_new_key_leaves_nothing_behind() {
    let client = QueryClient::builder().gc_time(SEC).build();
    let r = client.update_query_data::<u32, _>(key!["never", "written"], |_| panic!("updater bug"));
    assert!(matches!(r, Err(QueryError::Panicked(_))));
    tokio::time::sleep(2 * SEC).await;
    settle().await;
    assert_eq!(client.stats().entries, 0, "the empty entry was collected");
}

/// The story: `max_queries(0)` is documented as "keeps nothing", but a manual write stayed
/// in memory until the next insertion made room. The bound now applies after every write.
#[tokio::test(start_paused = true)]
async fn max_queries_zero_keeps_no_manual_write() {
    let client = QueryClient::builder().max_queries(0).build();
    client.set_query_data(key!["a"], 1_u32).unwrap();
    assert_eq!(client.stats().entries, 0);
    assert_eq!(client.get_query_data::<u32>(&key!["a"]), None);
    client
        .update_query_data::<u32, _>(key!["b"], |_| Some(2))
        .unwrap();
    assert_eq!(client.stats().entries, 0);
}

/// The bound holds under churn with a gc time far longer than the run: 20,000 distinct
/// keys through `max_queries(100)` leave 100 entries (their timers go with them: see the
/// `timers` unit test, and `benches/churn_rss.rs` for the RSS at 10M keys).
#[tokio::test(start_paused = true)]
async fn max_queries_holds_under_churn_with_a_long_gc_time() {
    let client = QueryClient::builder()
        .max_queries(100)
        .gc_time(Duration::from_secs(3600))
        .build();
    for i in 0..20_000_u32 {
        let opts = QueryOptions::new(key!["churn", i], move || async move { Ok::<_, String>(i) });
        assert_eq!(*client.fetch_query(&opts).await.unwrap(), i);
    }
    assert!(client.stats().entries <= 100);
    assert!(client.stats().evictions >= 19_900);
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Doc(String);

fn item(key: &str, text: &str, at_ms: u64) -> DehydratedQuery {
    DehydratedQuery {
        key: key.to_string(),
        data: serde_json::json!(text),
        data_updated_at_ms: at_ms,
        invalidated: false,
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The story: `hydrate` never looked at the snapshot's format version, so a snapshot
/// written by another format was decoded as if it were this one. It is now refused with an
/// error value, and nothing from it is restored.
#[tokio::test(start_paused = true)]
async fn hydrate_refuses_a_snapshot_of_another_format_version() {
    let client = QueryClient::new();
    let current = serde_json::to_value(client.dehydrate()).unwrap();
    let version = current["version"].as_u64().unwrap_or(0);
    let mut future: DehydratedState = serde_json::from_value(serde_json::json!({
        "version": version + 1,
        "queries": [],
    }))
    .unwrap();
    future
        .queries
        .push(item(r#"["doc",1]"#, "from the future", now_ms()));
    let err = client.hydrate(future).unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");

    let opts = QueryOptions::new(key!["doc", 1], || async {
        Ok::<_, String>(Doc("fetched".into()))
    })
    .persist();
    assert_eq!(client.fetch_query(&opts).await.unwrap().0, "fetched");
}

/// The story: items restored for keys not in memory were kept in a map that only ever
/// grew: an item no query claimed stayed forever, and the map kept its peak size after its
/// items were used. Unclaimed items now go after the client's gc time, and at most
/// `max_queries` wait.
#[tokio::test(start_paused = true)]
async fn restored_snapshot_items_are_claimed_once_and_never_pile_up() {
    let client = QueryClient::builder()
        .gc_time(10 * SEC)
        .max_queries(50)
        .build();
    let mut snapshot = QueryClient::new().dehydrate();
    let at = now_ms();
    for i in 0..200_u64 {
        snapshot.queries.push(item(
            &key!["doc", i].to_string(),
            &format!("doc {i}"),
            at + i,
        ));
    }
    let kept = client.hydrate(snapshot.clone()).unwrap();
    assert_eq!(kept, 200, "every item was offered");

    // The newest 50 wait (the bound); an old one was dropped, so it is fetched.
    let query = |i: u64| {
        QueryOptions::new(key!["doc", i], move || async move {
            Ok::<_, String>(Doc(format!("fetched {i}")))
        })
        .persist()
        .stale_time(Duration::MAX)
    };
    assert_eq!(client.fetch_query(&query(199)).await.unwrap().0, "doc 199");
    assert_eq!(client.fetch_query(&query(0)).await.unwrap().0, "fetched 0");
    // Claimed once: removing the entry does not bring the snapshot item back.
    client.remove_queries(key!["doc", 199]);
    assert_eq!(
        client.fetch_query(&query(199)).await.unwrap().0,
        "fetched 199"
    );

    // An item nobody claims within the gc time is gone.
    tokio::time::sleep(11 * SEC).await;
    assert_eq!(
        client.fetch_query(&query(198)).await.unwrap().0,
        "fetched 198"
    );
}
