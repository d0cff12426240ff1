//! `QueryOptions::with_context`: the fetch function gets the key, the attempt number and a
//! cancellation token that fires on `cancel_queries`, on an attempt's timeout and when the
//! entry is removed or reset, and never once the fetch has finished. All on the paused
//! clock: every time below is exact.

mod common;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::settle;
use stackquery::{key, FetchContext, QueryClient, QueryError, QueryKey, QueryOptions};
use tokio::time::Instant;

/// What the fetch functions under test saw, and which of their tokens fired when.
#[derive(Clone)]
struct Probe {
    start: Instant,
    /// (key, attempt, token already fired) per call, in call order.
    seen: Arc<Mutex<Vec<(QueryKey, u32, bool)>>>,
    /// (attempt, time since `start`) per fired token, in firing order.
    fired: Arc<Mutex<Vec<(u32, Duration)>>>,
}

impl Probe {
    fn new() -> Self {
        Probe {
            start: Instant::now(),
            seen: Arc::default(),
            fired: Arc::default(),
        }
    }

    /// Options whose fetch function records its context, has a task of its own wait on
    /// the token (a worker the token stops, as a real fetch would hand it on), then runs
    /// `body(attempt, ctx)`.
    fn options<F, Fut>(&self, key: QueryKey, body: F) -> QueryOptions<u32>
    where
        F: Fn(u32, FetchContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<u32, String>> + Send + 'static,
    {
        let probe = self.clone();
        QueryOptions::with_context(key, move |ctx: FetchContext| {
            probe.watch(&ctx);
            body(ctx.attempt(), ctx)
        })
    }

    fn watch(&self, ctx: &FetchContext) {
        let attempt = ctx.attempt();
        self.seen
            .lock()
            .unwrap()
            .push((ctx.key().clone(), attempt, ctx.is_cancelled()));
        let token = ctx.cancellation().clone();
        let (fired, start) = (self.fired.clone(), self.start);
        tokio::spawn(async move {
            token.cancelled().await;
            fired.lock().unwrap().push((attempt, start.elapsed()));
        });
    }

    fn attempts(&self) -> Vec<u32> {
        self.seen.lock().unwrap().iter().map(|s| s.1).collect()
    }

    fn fired(&self) -> Vec<(u32, Duration)> {
        self.fired.lock().unwrap().clone()
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Starts `fetch_query(opts)` in a task of its own (so the test can act while it runs).
fn fetch_in_background(
    client: &QueryClient,
    opts: &QueryOptions<u32>,
) -> tokio::task::JoinHandle<Result<Arc<u32>, QueryError>> {
    let (client, opts) = (client.clone(), opts.clone());
    tokio::spawn(async move { client.fetch_query(&opts).await })
}

/// The context carries the key and counts attempts from 0 across retries (what a fetch
/// function needs to log or to vary its request); every attempt starts with a live
/// token, and none fires once the fetch has succeeded.
#[tokio::test(start_paused = true)]
async fn the_context_has_the_key_and_counts_attempts_across_retries() {
    let client = QueryClient::new();
    let probe = Probe::new();
    let opts = probe
        .options(key!["user", 7], |attempt, _| async move {
            if attempt < 2 {
                Err(format!("attempt {attempt} failed"))
            } else {
                Ok(attempt * 10)
            }
        })
        .retry(3)
        .retry_delay(|_| Duration::from_millis(10));
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 20);
    let seen = probe.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (key!["user", 7], 0, false),
            (key!["user", 7], 1, false),
            (key!["user", 7], 2, false),
        ]
    );
    tokio::time::sleep(secs(60)).await;
    assert_eq!(probe.fired(), vec![], "no token fires after a success");
}

/// A finished fetch is never told to stop: neither after a success nor after its last
/// failure, not even when its entry is removed afterwards (the tokens belong to the
/// fetch, not to the entry).
#[tokio::test(start_paused = true)]
async fn no_token_fires_once_the_fetch_has_finished() {
    let client = QueryClient::new();
    let probe = Probe::new();
    let ok = probe.options(key!["ok"], |_, _| async {
        tokio::time::sleep(secs(1)).await;
        Ok(1)
    });
    let failing = probe
        .options(key!["failing"], |_, _| async { Err("down".to_string()) })
        .retry(1)
        .retry_delay(|_| secs(1));
    assert_eq!(*client.fetch_query(&ok).await.unwrap(), 1);
    let err = client.fetch_query(&failing).await.unwrap_err();
    assert!(matches!(err, QueryError::Fetch(_)), "{err}");
    assert_eq!(probe.attempts(), vec![0, 0, 1]);
    client.invalidate_queries(key![]).await;
    client.reset_queries(key![]);
    assert_eq!(client.remove_queries(key![]), 2);
    client.clear();
    tokio::time::sleep(secs(60)).await;
    assert_eq!(probe.fired(), vec![]);
}

/// `cancel_queries` fires the running attempt's token at once: a worker the fetch
/// function handed it to stops, and every caller gets `Cancelled`.
#[tokio::test(start_paused = true)]
async fn cancel_queries_fires_the_token() {
    let client = QueryClient::new();
    let probe = Probe::new();
    let opts = probe.options(key!["slow"], |_, _| async {
        tokio::time::sleep(secs(60)).await;
        Ok(1)
    });
    let fetch = fetch_in_background(&client, &opts);
    tokio::time::sleep(secs(1)).await;
    assert_eq!(probe.fired(), vec![], "live while it runs");
    assert_eq!(client.cancel_queries(key!["slow"]).await, 1);
    settle().await;
    assert_eq!(probe.fired(), vec![(0, secs(1))]);
    assert!(matches!(fetch.await.unwrap(), Err(QueryError::Cancelled)));
}

/// A timeout drops the attempt, which fires that attempt's token (at the timeout); the
/// retry gets a token of its own, live while it runs, so it is not stopped by its
/// predecessor's timeout.
#[tokio::test(start_paused = true)]
async fn a_timeout_fires_its_attempts_token_and_the_retry_gets_a_live_one() {
    let client = QueryClient::new();
    let probe = Probe::new();
    let live_at_end = Arc::new(Mutex::new(Vec::new()));
    let l = live_at_end.clone();
    let opts = probe
        .options(key!["flaky"], move |attempt, ctx| {
            let l = l.clone();
            async move {
                if attempt == 0 {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                l.lock().unwrap().push(!ctx.is_cancelled());
                Ok(attempt)
            }
        })
        .fetch_timeout(secs(1))
        .retry(1)
        .retry_delay(|_| Duration::from_millis(100));
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 1);
    assert_eq!(probe.attempts(), vec![0, 1]);
    assert_eq!(*live_at_end.lock().unwrap(), vec![true]);
    tokio::time::sleep(secs(60)).await;
    assert_eq!(
        probe.fired(),
        vec![(0, secs(1))],
        "only the timed-out attempt"
    );
}

/// `remove_queries` fires the token without stopping the fetch: a fetch function that
/// ignores it still delivers to its own callers (and writes nothing back).
#[tokio::test(start_paused = true)]
async fn remove_queries_fires_the_token_and_the_fetch_still_delivers() {
    let client = QueryClient::new();
    let probe = Probe::new();
    let opts = probe.options(key!["gone"], |_, _| async {
        tokio::time::sleep(secs(5)).await;
        Ok(7)
    });
    let fetch = fetch_in_background(&client, &opts);
    tokio::time::sleep(secs(1)).await;
    assert_eq!(client.remove_queries(key!["gone"]), 1);
    settle().await;
    assert_eq!(probe.fired(), vec![(0, secs(1))]);
    assert_eq!(*fetch.await.unwrap().unwrap(), 7);
    assert_eq!(probe.start.elapsed(), secs(5));
    assert_eq!(client.get_query_data::<u32>(&key!["gone"]), None);
}

/// A fetch function that stops when its token fires after a removal ends the fetch as
/// `Cancelled` for its callers, whatever error it returns, and is not retried.
#[tokio::test(start_paused = true)]
async fn a_fetch_that_stops_on_removal_ends_cancelled_without_retries() {
    let client = QueryClient::new();
    let probe = Probe::new();
    let opts = probe
        .options(key!["gone"], |_, ctx| async move {
            tokio::select! {
                _ = ctx.cancelled() => Err("stopped".to_string()),
                _ = tokio::time::sleep(secs(5)) => Ok(7),
            }
        })
        .retry(3)
        .retry_delay(|_| Duration::ZERO);
    let fetch = fetch_in_background(&client, &opts);
    tokio::time::sleep(secs(1)).await;
    client.remove_queries(key!["gone"]);
    assert!(matches!(fetch.await.unwrap(), Err(QueryError::Cancelled)));
    assert_eq!(probe.start.elapsed(), secs(1), "at the removal");
    assert_eq!(probe.attempts(), vec![0], "no retry");
}

/// A removal during the wait before a retry: the retry is not made (nobody will take its
/// result), and the callers get `Cancelled` when it was due.
#[tokio::test(start_paused = true)]
async fn no_retry_after_a_removal() {
    let client = QueryClient::new();
    let probe = Probe::new();
    let opts = probe
        .options(key!["gone"], |_, _| async { Err("down".to_string()) })
        .retry(3)
        .retry_delay(|_| secs(5));
    let fetch = fetch_in_background(&client, &opts);
    tokio::time::sleep(secs(1)).await;
    client.remove_queries(key!["gone"]);
    assert!(matches!(fetch.await.unwrap(), Err(QueryError::Cancelled)));
    assert_eq!(probe.start.elapsed(), secs(5));
    assert_eq!(probe.attempts(), vec![0]);
}

/// `reset_queries` and `clear` drop the entry's fetch like a removal: its token fires,
/// the fetch still delivers to its callers, and the reset entry stays empty.
#[tokio::test(start_paused = true)]
async fn reset_and_clear_fire_the_token() {
    let client = QueryClient::new();
    let probe = Probe::new();
    let slow = |_: u32, _: FetchContext| async {
        tokio::time::sleep(secs(5)).await;
        Ok(7)
    };
    let reset = probe.options(key!["reset"], slow);
    let cleared = probe.options(key!["cleared"], slow);
    let reset_fetch = fetch_in_background(&client, &reset);
    let cleared_fetch = fetch_in_background(&client, &cleared);
    tokio::time::sleep(secs(1)).await;
    assert_eq!(client.reset_queries(key!["reset"]), 1);
    tokio::time::sleep(secs(1)).await;
    client.clear();
    settle().await;
    assert_eq!(probe.fired(), vec![(0, secs(1)), (0, secs(2))]);
    assert_eq!(*reset_fetch.await.unwrap().unwrap(), 7);
    assert_eq!(*cleared_fetch.await.unwrap().unwrap(), 7);
    assert_eq!(client.get_query_data::<u32>(&key!["reset"]), None);
}

/// Dropping the last handle of the client clears it: a fetch in flight hears it (here
/// an observer's, since an observer holds no handle that keeps the client alive).
#[tokio::test(start_paused = true)]
async fn dropping_the_client_fires_the_token() {
    let client = QueryClient::new();
    let probe = Probe::new();
    let opts = probe.options(key!["k"], |_, _| async {
        tokio::time::sleep(secs(5)).await;
        Ok(7)
    });
    let observer = client.watch(&opts);
    let _sub = observer.subscribe(|_| {});
    tokio::time::sleep(secs(1)).await;
    assert_eq!(probe.attempts(), vec![0]);
    assert_eq!(probe.fired(), vec![]);
    drop(client);
    settle().await;
    assert_eq!(probe.fired(), vec![(0, secs(1))]);
}

/// A fetch that a newer one replaces (an invalidation refetching an observed query) is
/// not cancelled: its callers still wait for its result, so it runs to the end.
#[tokio::test(start_paused = true)]
async fn a_fetch_replaced_by_a_refetch_is_not_cancelled() {
    let client = QueryClient::new();
    let probe = Probe::new();
    let opts = probe.options(key!["observed"], |_, _| async {
        tokio::time::sleep(secs(5)).await;
        Ok(7)
    });
    let observer = client.watch(&opts);
    let _sub = observer.subscribe(|_| {});
    tokio::time::sleep(secs(1)).await;
    assert_eq!(probe.attempts(), vec![0], "the observer's fetch");
    let first = fetch_in_background(&client, &opts);
    settle().await;
    client.invalidate_queries(key!["observed"]).await;
    assert_eq!(
        probe.attempts(),
        vec![0, 0],
        "a second fetch replaced the first"
    );
    assert_eq!(*first.await.unwrap().unwrap(), 7);
    tokio::time::sleep(secs(60)).await;
    assert_eq!(probe.fired(), vec![]);
}

/// The zero-argument shape and the context shape are the same options otherwise: a
/// context function can be called outside the client with a context of the test's own.
#[tokio::test(start_paused = true)]
async fn a_context_function_can_be_called_with_a_hand_made_context() {
    let fetch = |ctx: FetchContext| async move {
        if ctx.is_cancelled() {
            Err("cancelled")
        } else {
            Ok(ctx.attempt())
        }
    };
    let token = tokio_util::sync::CancellationToken::new();
    let ctx = FetchContext::new(key!["k"], 3, token.clone());
    assert_eq!(fetch(ctx.clone()).await, Ok(3));
    token.cancel();
    assert_eq!(fetch(ctx).await, Err("cancelled"));
    let client = QueryClient::new();
    let opts = QueryOptions::with_context(key!["k"], fetch);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 0);
}
