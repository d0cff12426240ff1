//! Manual cache access: get / set / update / state.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{settle, slow_counter};
use stackquery::{key, QueryClient, QueryError, QueryStatus};

#[tokio::test(start_paused = true)]
async fn set_creates_the_entry_and_counts_as_fresh_data() {
    let client = QueryClient::new();
    assert!(client.get_query_data::<u32>(&key!["k"]).is_none());
    assert!(client.get_query_state::<u32>(&key!["k"]).is_none());
    client.set_query_data(key!["k"], 7_u32).unwrap();
    assert_eq!(*client.get_query_data::<u32>(&key!["k"]).unwrap(), 7);
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert_eq!(s.status, QueryStatus::Success);
    assert!(s.data_updated_at.is_some());
    let (opts, calls) = slow_counter(key!["k"], Duration::from_secs(1));
    let opts = opts.stale_time(Duration::from_secs(60));
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 7);
    settle().await;
    assert_eq!(calls.get(), 0, "manual data is fresh");
}

#[tokio::test(start_paused = true)]
async fn update_sees_the_old_value() {
    let client = QueryClient::new();
    let out = client
        .update_query_data(key!["list"], |old: Option<&Vec<u32>>| {
            assert!(old.is_none());
            Some(vec![1])
        })
        .unwrap();
    assert_eq!(*out.unwrap(), vec![1]);
    let out = client
        .update_query_data(key!["list"], |old: Option<&Vec<u32>>| {
            let mut v = old.cloned().unwrap_or_default();
            v.push(2);
            Some(v)
        })
        .unwrap();
    assert_eq!(*out.unwrap(), vec![1, 2]);
    // None leaves the entry alone.
    let before = client.get_query_data::<Vec<u32>>(&key!["list"]).unwrap();
    let out = client
        .update_query_data(key!["list"], |_: Option<&Vec<u32>>| None)
        .unwrap();
    assert!(Arc::ptr_eq(&out.unwrap(), &before));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_updater_is_an_error_and_writes_nothing() {
    let client = QueryClient::new();
    client.set_query_data(key!["k"], 1_u32).unwrap();
    let r = client.update_query_data(key!["k"], |_: Option<&u32>| -> Option<u32> {
        panic!("bad updater")
    });
    assert!(matches!(r, Err(QueryError::Panicked(_))));
    assert_eq!(*client.get_query_data::<u32>(&key!["k"]).unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_updater_may_call_back_into_the_client() {
    let client = QueryClient::new();
    client.set_query_data(key!["a"], 1_u32).unwrap();
    client.set_query_data(key!["b"], 10_u32).unwrap();
    let c = client.clone();
    let out = client
        .update_query_data(key!["a"], move |old: Option<&u32>| {
            let b = c.get_query_data::<u32>(&key!["b"]).map_or(0, |b| *b);
            // Reading the key being updated does not deadlock either.
            let a_now = c.get_query_data::<u32>(&key!["a"]).map_or(0, |a| *a);
            Some(old.copied().unwrap_or(0) + b + a_now)
        })
        .unwrap();
    assert_eq!(*out.unwrap(), 12);
}

#[tokio::test(start_paused = true)]
async fn state_helpers_follow_the_entry() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], Duration::from_secs(1));
    let c = client.clone();
    let o = opts.clone();
    let t = tokio::spawn(async move { c.fetch_query(&o).await });
    settle().await;
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert!(s.is_loading() && s.is_fetching() && !s.has_data() && s.is_stale());
    t.await.unwrap().unwrap();
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert!(s.is_success() && s.has_data() && !s.is_fetching());
    assert!(s.is_stale(), "default stale time is 0");
}
