//! `QueryOptions::fetch_timeout` (issue 16): a hung upstream ends in `QueryError::Timeout`
//! for every waiter, retries apply, and timed-out fetches leave their entries unpinned.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::scripted;
use stackquery::{key, QueryClient, QueryError, QueryKey, QueryOptions};

fn hung(key: QueryKey) -> (QueryOptions<u32>, common::Calls) {
    scripted(key, |_| async {
        std::future::pending::<()>().await;
        Ok::<u32, String>(0)
    })
}

/// Every waiter of a hung fetch gets the timeout, at the timeout, from one call.
#[tokio::test(start_paused = true)]
async fn every_waiter_of_a_hung_fetch_gets_the_timeout() {
    let client = QueryClient::new();
    let (opts, calls) = hung(key!["hung"]);
    let opts = opts.fetch_timeout(Duration::from_secs(2)).retry(0);
    let start = tokio::time::Instant::now();
    let results = futures::future::join_all((0..100).map(|_| client.fetch_query(&opts))).await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(calls.get(), 1);
    for r in results {
        let err = r.unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(matches!(err, QueryError::Timeout(d) if d == Duration::from_secs(2)));
    }
    let state = client.get_query_state::<u32>(&key!["hung"]).unwrap();
    assert!(state.error.as_ref().is_some_and(QueryError::is_timeout));
}

/// Retries apply: an attempt that times out is retried (after the retry delay) and a
/// later attempt that answers in time wins; each attempt has the whole timeout.
#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_retried() {
    let client = QueryClient::new();
    let (opts, calls) = scripted(key!["flaky"], |n| async move {
        if n == 1 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(900)).await; // under the timeout
        Ok::<u32, String>(n)
    });
    let opts = opts
        .fetch_timeout(Duration::from_secs(1))
        .retry(2)
        .retry_delay(|_| Duration::from_millis(100));
    let start = tokio::time::Instant::now();
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 2);
    assert_eq!(calls.get(), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(1000 + 100 + 900));
}

/// A fetch that answers in time is unaffected, and no timeout means no bound.
#[tokio::test(start_paused = true)]
async fn a_fetch_in_time_or_without_a_timeout_is_unaffected() {
    let client = QueryClient::new();
    let (slow, _) = scripted(key!["slow"], |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<u32, String>(7)
    });
    assert_eq!(
        *client.fetch_query(&slow).await.unwrap(),
        7,
        "no timeout: waits"
    );
    let (quick, _) = scripted(key!["quick"], |_| async { Ok::<u32, String>(8) });
    let quick = quick.fetch_timeout(Duration::from_millis(1));
    assert_eq!(*client.fetch_query(&quick).await.unwrap(), 8);
    let zero = QueryOptions::new(key!["zero"], || async { Ok::<u32, String>(9) })
        .fetch_timeout(Duration::ZERO);
    assert_eq!(
        *client.fetch_query(&zero).await.unwrap(),
        9,
        "zero is no timeout"
    );
}

/// The regression the issue names: 1,000 hung fetches pinned 1,000 entries past
/// `max_queries` until `cancel_queries`. With a timeout they end, and the bound holds again.
#[tokio::test(start_paused = true)]
async fn timed_out_fetches_unpin_their_entries() {
    let client = Arc::new(QueryClient::builder().max_queries(10).build());
    let mut calls = Vec::new();
    for i in 0..1_000_u32 {
        let (opts, c) = hung(key!["pin", i]);
        calls.push(c);
        let opts = opts.fetch_timeout(Duration::from_secs(5)).retry(0);
        let client = client.clone();
        tokio::spawn(async move {
            let _ = client.fetch_query(&opts).await;
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(client.query_count(), 1_000, "in flight: pinned");
    tokio::time::sleep(Duration::from_secs(5)).await;
    client.set_query_data(key!["after"], 1_u32).unwrap();
    assert!(
        client.query_count() <= 10,
        "{} entries",
        client.query_count()
    );
    assert!(calls.iter().all(|c| c.get() == 1));
}
