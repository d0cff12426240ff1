//! Retries: counts, default exponential delays, predicates, failure bookkeeping.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{scripted, settle};
use stackquery::{key, QueryClient, QueryError, QueryStatus};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn default_policy_retries_three_times_with_doubling_delays() {
    let client = QueryClient::new();
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let s = stamps.clone();
    let start = Instant::now();
    let (opts, calls) = scripted(key!["k"], move |_| {
        s.lock().unwrap().push(start.elapsed());
        async { Err::<u32, _>("down".to_string()) }
    });
    let err = client.fetch_query(&opts).await.unwrap_err();
    assert!(matches!(err, QueryError::Fetch(_)));
    assert_eq!(calls.get(), 4, "1 try + 3 retries");
    let secs: Vec<u64> = stamps.lock().unwrap().iter().map(|d| d.as_secs()).collect();
    assert_eq!(secs, vec![0, 1, 3, 7], "waits of 1 s, 2 s, 4 s");
    let state = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert_eq!(state.status, QueryStatus::Error);
    assert_eq!(state.failure_count, 4);
    assert!(state.failure_reason.is_some());
}

#[tokio::test(start_paused = true)]
async fn failure_count_updates_on_each_attempt_and_resets_on_success() {
    let client = QueryClient::new();
    let (opts, _) = scripted(key!["k"], |n| async move {
        if n < 3 {
            Err(format!("fail {n}"))
        } else {
            Ok(n)
        }
    });
    let opts = opts.retry_delay(|_| Duration::from_secs(10));
    let c = client.clone();
    let o = opts.clone();
    let task = tokio::spawn(async move { c.fetch_query(&o).await });
    settle().await;
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert_eq!(s.failure_count, 1);
    assert!(s
        .failure_reason
        .as_ref()
        .unwrap()
        .report()
        .to_string()
        .contains("fail 1"));
    assert!(s.is_loading());
    tokio::time::advance(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(
        client
            .get_query_state::<u32>(&key!["k"])
            .unwrap()
            .failure_count,
        2
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(*task.await.unwrap().unwrap(), 3);
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert_eq!(s.failure_count, 0);
    assert!(s.failure_reason.is_none());
    assert!(s.is_success());
}

#[tokio::test(start_paused = true)]
async fn retry_if_predicate_decides_per_error() {
    let client = QueryClient::new();
    let (opts, calls) = scripted(key!["k"], |n| async move {
        Err::<u32, _>(if n < 2 {
            "transient".to_string()
        } else {
            "fatal".to_string()
        })
    });
    let opts = opts
        .retry_if(|count, err| count < 10 && err.report().to_string().contains("transient"))
        .retry_delay(|_| Duration::from_millis(1));
    let err = client.fetch_query(&opts).await.unwrap_err();
    assert!(err.report().to_string().contains("fatal"));
    assert_eq!(calls.get(), 2, "the fatal error is not retried");
}

#[tokio::test(start_paused = true)]
async fn client_default_retry_and_query_override() {
    let client = QueryClient::builder()
        .retry(0)
        .retry_delay(|_| Duration::from_millis(5))
        .build();
    let (opts, calls) = scripted(key!["a"], |_| async { Err::<u32, _>("x".to_string()) });
    client.fetch_query(&opts).await.unwrap_err();
    assert_eq!(calls.get(), 1);
    let (opts, calls) = scripted(key!["b"], |_| async { Err::<u32, _>("x".to_string()) });
    let start = Instant::now();
    client.fetch_query(&opts.retry(2)).await.unwrap_err();
    assert_eq!(calls.get(), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn jitter_keeps_delays_within_half_to_full() {
    let client = QueryClient::new();
    let (opts, calls) = scripted(key!["k"], |_| async { Err::<u32, _>("x".to_string()) });
    let opts = opts
        .retry(1)
        .retry_delay(|_| Duration::from_secs(100))
        .retry_jitter(true);
    let start = Instant::now();
    client.fetch_query(&opts).await.unwrap_err();
    let waited = start.elapsed();
    assert_eq!(calls.get(), 2);
    assert!(
        waited >= Duration::from_secs(50) && waited <= Duration::from_secs(100),
        "{waited:?}"
    );
}
