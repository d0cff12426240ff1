//! `QueryClient::builder().server()` (issue 16): defaults under which a request handler
//! answers in bounded time whatever its upstream does. On tokio's paused clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stackquery::{key, QueryClient, QueryError, QueryKey, QueryOptions};
use tokio::time::Instant;

/// Options whose fetch counts its calls and then runs `body`.
fn counted<F, Fut>(key: QueryKey, body: F) -> (QueryOptions<u32>, Arc<AtomicU32>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u32, std::io::Error>> + Send + 'static,
{
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let opts = QueryOptions::new(key, move || {
        seen.fetch_add(1, Ordering::SeqCst);
        body()
    });
    (opts, calls)
}

async fn refused() -> Result<u32, std::io::Error> {
    Err(std::io::Error::other("connection refused"))
}

/// With the built-in defaults a dead upstream costs each request three retries after 1 s,
/// 2 s and 4 s (~7 s). The server profile retries once, 125–250 ms later.
#[tokio::test(start_paused = true)]
async fn a_dead_upstream_costs_one_quick_retry_not_seven_seconds() {
    let server = QueryClient::builder().server().build();
    let (opts, calls) = counted(key!["down"], refused);
    let started = Instant::now();
    let err = server.fetch_query(&opts).await.unwrap_err();
    let spent = started.elapsed();
    assert!(matches!(err, QueryError::Fetch(_)), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        spent >= Duration::from_millis(125) && spent <= Duration::from_millis(250),
        "{spent:?}"
    );

    // The built-in defaults, side by side: the ~7 s the profile exists to avoid.
    let plain = QueryClient::new();
    let (opts, calls) = counted(key!["down"], refused);
    let started = Instant::now();
    plain.fetch_query(&opts).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(started.elapsed(), Duration::from_secs(7));
}

/// A hung upstream held the request (and every waiter of its key) until someone called
/// `cancel_queries`. The profile bounds each attempt at 5 s and does not retry a timeout,
/// so the request fails with `Timeout` after exactly 5 s, one call made.
#[tokio::test(start_paused = true)]
async fn a_hung_upstream_times_out_after_five_seconds_without_a_retry() {
    let server = QueryClient::builder().server().build();
    let (opts, calls) = counted(key!["hung"], std::future::pending);
    let started = Instant::now();
    let err = server.fetch_query(&opts).await.unwrap_err();
    assert!(matches!(err, QueryError::Timeout(d) if d == Duration::from_secs(5)));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Keys built from request input (one per user id) grew the cache without bound; the
/// profile keeps at most 10,000 entries.
#[tokio::test(start_paused = true)]
async fn the_profile_bounds_the_cache_at_ten_thousand_entries() {
    let server = QueryClient::builder().server().build();
    for id in 0..10_050u64 {
        server.set_query_data(key!["user", id], id).unwrap();
    }
    assert_eq!(server.query_count(), 10_000);
    // The newest key is among the survivors (least recently used first out).
    assert_eq!(
        server
            .get_query_data::<u64>(&key!["user", 10_049u64])
            .as_deref(),
        Some(&10_049)
    );
}

/// The profile is a set of defaults: a query's own settings win (`retry(2)` retries
/// twice; `fetch_timeout(ZERO)` turns the bound off), and setters after `server()`
/// override it.
#[tokio::test(start_paused = true)]
async fn a_querys_own_settings_and_later_setters_win_over_the_profile() {
    let server = QueryClient::builder().server().build();
    let (opts, calls) = counted(key!["down"], refused);
    server.fetch_query(&opts.retry(2)).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let (opts, calls) = counted(key!["hung"], std::future::pending);
    let unbounded = opts.fetch_timeout(Duration::ZERO);
    let pending = tokio::time::timeout(Duration::from_secs(60), server.fetch_query(&unbounded));
    assert!(pending.await.is_err(), "still waiting after 60 s: no bound");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let custom = QueryClient::builder()
        .server()
        .fetch_timeout(Duration::from_secs(1))
        .build();
    let (opts, _) = counted(key!["hung"], std::future::pending);
    let started = Instant::now();
    let err = custom.fetch_query(&opts).await.unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

/// `QueryClientBuilder::fetch_timeout` on its own: every query without a bound of its own
/// gets the client's, and each retry attempt has the whole bound.
#[tokio::test(start_paused = true)]
async fn the_clients_fetch_timeout_bounds_every_query_without_its_own() {
    let client = QueryClient::builder()
        .fetch_timeout(Duration::from_secs(2))
        .retry(1)
        .retry_delay(|_| Duration::from_millis(100))
        .build();
    let (opts, calls) = counted(key!["hung"], std::future::pending);
    let started = Instant::now();
    let err = client.fetch_query(&opts).await.unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(started.elapsed(), Duration::from_millis(4_100));
    // A query's own bound wins over the client's.
    let (opts, _) = counted(key!["hung2"], std::future::pending);
    let started = Instant::now();
    let err = client
        .fetch_query(&opts.fetch_timeout(Duration::from_millis(300)).retry(0))
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::Timeout(d) if d == Duration::from_millis(300)));
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}
