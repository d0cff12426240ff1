//! Errors for users (issue 16): a `QueryError` leads back to the error the fetch function
//! returned, says what stackquery saw without repeating its source's text, converts from
//! the storage's error, and maps onto an HTTP response.

use std::error::Error as _;
use std::time::Duration;

use stackquery::{key, QueryClient, QueryError, QueryOptions, StorageError};

/// An upstream's own error type, with a cause of its own.
#[derive(Debug, thiserror::Error)]
#[error("upstream answered {status}")]
struct Upstream {
    status: u16,
    #[source]
    cause: std::io::Error,
}

fn failing(status: u16) -> QueryOptions<String> {
    QueryOptions::new(key!["user", u64::from(status)], move || async move {
        Err::<String, _>(Upstream {
            status,
            cause: std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset"),
        })
    })
    .retry(0)
}

/// `source()` was the `FetchError` wrapper, so `err.source()?.downcast_ref::<Upstream>()`
/// found nothing: the wrapper hid the type the user's handler needed to pick a status.
/// The source is now the fetch function's error itself, and `downcast_ref` walks the chain
/// (it also finds the upstream's own cause).
#[tokio::test(start_paused = true)]
async fn a_fetch_error_downcasts_to_the_fetch_functions_own_error() {
    let client = QueryClient::new();
    let err = client.fetch_query(&failing(404)).await.unwrap_err();
    let source = err.source().expect("a fetch error has a source");
    assert_eq!(
        source.downcast_ref::<Upstream>().map(|u| u.status),
        Some(404)
    );
    assert_eq!(err.downcast_ref::<Upstream>().map(|u| u.status), Some(404));
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the upstream's cause");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(err.downcast_ref::<std::fmt::Error>().is_none());
    assert!(QueryError::Cancelled.downcast_ref::<Upstream>().is_none());
}

/// The message was "fetch failed: upstream answered 404" and the source said "upstream
/// answered 404" again, so every reporter that walks sources (anyhow's `{:#}`, tracing's
/// error fields) printed the cause twice. Each text now appears once in the chain.
#[tokio::test(start_paused = true)]
async fn the_message_does_not_repeat_its_sources_text() {
    let client = QueryClient::new();
    let err = client.fetch_query(&failing(503)).await.unwrap_err();
    assert_eq!(err.to_string(), "the fetch function failed");
    let report = err.report().to_string();
    assert_eq!(
        report,
        "the fetch function failed: upstream answered 503: connection reset"
    );
    assert_eq!(report.matches("upstream answered").count(), 1);
    // The same holds for the storage's error inside a query error.
    let storage: QueryError = StorageError::backend("disk full").into();
    assert_eq!(storage.to_string(), "the second tier failed");
    assert_eq!(
        storage.report().to_string(),
        "the second tier failed: the storage backend failed: disk full"
    );
}

/// A handler that both reads queries and restores a snapshot returns one error type:
/// `?` on a `StorageError` gives a `QueryError::Storage` that keeps the original.
#[test]
fn a_storage_error_converts_with_the_question_mark() {
    fn restore() -> Result<(), QueryError> {
        Err(StorageError::Corrupt("truncated".into()))?;
        Ok(())
    }
    let err = restore().unwrap_err();
    let QueryError::Storage(storage) = &err else {
        panic!("not a storage error: {err:?}")
    };
    assert!(matches!(&**storage, StorageError::Corrupt(m) if m == "truncated"));
    assert!(err.downcast_ref::<StorageError>().is_some());
    assert_eq!(
        err.report().to_string(),
        "the second tier failed: corrupt storage entry: truncated"
    );
}

/// Every waiter of one failed fetch can still reach the original error: they share it.
#[tokio::test(start_paused = true)]
async fn every_waiter_of_a_shared_fetch_reaches_the_original_error() {
    let client = QueryClient::new();
    let opts = QueryOptions::new(key!["slow"], || async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Err::<u8, _>(Upstream {
            status: 500,
            cause: std::io::Error::other("boom"),
        })
    })
    .retry(0);
    let (a, b) = tokio::join!(client.fetch_query(&opts), client.fetch_query(&opts));
    for err in [a.unwrap_err(), b.unwrap_err()] {
        assert_eq!(err.downcast_ref::<Upstream>().map(|u| u.status), Some(500));
    }
}

/// The status mapping the docs show (`QueryError`'s "In a web service" section) gives
/// each case the status a client expects.
#[tokio::test(start_paused = true)]
async fn query_errors_map_onto_http_statuses() {
    fn status_of(err: &QueryError) -> u16 {
        if let Some(upstream) = err.downcast_ref::<Upstream>() {
            return if upstream.status == 404 { 404 } else { 502 };
        }
        match err {
            QueryError::Timeout(_) => 504,
            QueryError::Fetch(_) => 502,
            QueryError::Cancelled => 503,
            _ => 500,
        }
    }
    let client = QueryClient::new();
    let hung = QueryOptions::new(key!["hung"], || {
        std::future::pending::<Result<u8, String>>()
    })
    .fetch_timeout(Duration::from_secs(1))
    .retry(0);
    let timeout = client.fetch_query(&hung).await.unwrap_err();
    assert_eq!(status_of(&timeout), 504);
    let missing = client.fetch_query(&failing(404)).await.unwrap_err();
    assert_eq!(status_of(&missing), 404);
    let broken = client.fetch_query(&failing(500)).await.unwrap_err();
    assert_eq!(status_of(&broken), 502);
    assert_eq!(status_of(&QueryError::Cancelled), 503);
}
