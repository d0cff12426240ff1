//! `Mutation::cancel`: a running call is dropped and rolled back through `on_error` /
//! `on_settled` with `QueryError::Cancelled`; a call queued in a scope leaves the queue and
//! never runs; the scope goes on with the next call; calls made after `cancel` run.
//! All on tokio's paused clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stackquery::{key, MutationOptions, MutationStatus, QueryClient, QueryError};
use tokio::time::Instant;

/// A shared, ordered log of events.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Lets spawned tasks run (the paused clock does not move).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// A mutation function that logs its start and end and takes `n` × 10 ms.
fn sleeper(log: &Log) -> MutationOptions<u32, u32> {
    let l = log.clone();
    MutationOptions::new(move |n: u32| {
        let l = l.clone();
        async move {
            l.push(format!("start {n}"));
            tokio::time::sleep(Duration::from_millis(u64::from(n) * 10)).await;
            l.push(format!("end {n}"));
            Ok::<_, String>(n)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn cancel_drops_a_running_call_and_rolls_the_optimistic_update_back() {
    let client = QueryClient::new();
    client.set_query_data(key!["count"], 1_u32).unwrap();
    let log = Log::default();
    let (c1, c2, l1, l2) = (client.clone(), client.clone(), log.clone(), log.clone());
    let m = client.mutation(
        sleeper(&log)
            .on_mutate(move |n: &u32| {
                let before = *c1.get_query_data::<u32>(&key!["count"]).unwrap();
                c1.set_query_data(key!["count"], before + n).unwrap();
                before
            })
            .on_error(move |err, n, before| {
                l1.push(format!("on_error {n} {err:?} ctx={before:?}"));
                c2.set_query_data(key!["count"], *before.unwrap()).unwrap();
            })
            .on_settled(move |data, err, n, before| {
                l2.push(format!("on_settled {n} {data:?} {err:?} ctx={before:?}"));
            }),
    );
    let started = Instant::now();
    let call = tokio::spawn(m.mutate(100)); // would take 1 s
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(*client.get_query_data::<u32>(&key!["count"]).unwrap(), 101);
    assert!(m.state().is_pending());

    m.cancel();
    let result = call.await.unwrap();
    assert!(matches!(result, Err(QueryError::Cancelled)), "{result:?}");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(50),
        "returned at once"
    );
    assert_eq!(
        *client.get_query_data::<u32>(&key!["count"]).unwrap(),
        1,
        "rolled back"
    );
    assert_eq!(
        log.lines(),
        [
            "start 100",
            "on_error 100 Cancelled ctx=Some(1)",
            "on_settled 100 None Some(Cancelled) ctx=Some(1)",
        ]
    );
    let state = m.state();
    assert_eq!(state.status, MutationStatus::Error);
    assert!(matches!(state.error, Some(QueryError::Cancelled)));

    // The dropped future never resumes: no "end 100", even long after.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!log.lines().iter().any(|l| l == "end 100"));
}

#[tokio::test(start_paused = true)]
async fn cancel_during_a_retry_wait_stops_the_retries() {
    let client = QueryClient::new();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let m = client.mutation(
        MutationOptions::new(move |_: ()| {
            a.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>("down") }
        })
        .retry(5)
        .retry_delay(|_| Duration::from_secs(1)),
    );
    let call = tokio::spawn(m.mutate(()));
    tokio::time::sleep(Duration::from_millis(1500)).await; // 2 attempts so far
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    m.cancel();
    assert!(matches!(call.await.unwrap(), Err(QueryError::Cancelled)));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "no attempt after cancel"
    );
    assert_eq!(m.state().failure_count, 2);
}

#[tokio::test(start_paused = true)]
async fn a_call_queued_in_a_scope_is_removed_and_never_runs() {
    let client = QueryClient::new();
    let log = Log::default();
    let (lm, le) = (log.clone(), log.clone());
    let opts = sleeper(&log)
        .on_mutate(move |n: &u32| lm.push(format!("on_mutate {n}")))
        .on_error(move |err, n, _| le.push(format!("on_error {n} {err:?}")))
        .scope("doc");
    // Two handles of one scope: `first` runs, `queued` waits behind it, `other` after.
    let first = client.mutation(opts.clone());
    let queued = client.mutation(opts.clone());
    let other = client.mutation(opts);
    let a = tokio::spawn(first.mutate(3));
    let b = tokio::spawn(queued.mutate(5));
    let c = tokio::spawn(other.mutate(1));
    settle().await;
    assert!(queued.state().is_pending(), "queued shows Pending");

    let started = Instant::now();
    queued.cancel();
    let b = b.await.unwrap();
    assert!(matches!(b, Err(QueryError::Cancelled)), "{b:?}");
    assert_eq!(started.elapsed(), Duration::ZERO, "left the queue at once");
    assert!(matches!(queued.state().error, Some(QueryError::Cancelled)));

    assert_eq!(
        *a.await.unwrap().unwrap(),
        3,
        "the running call is not touched"
    );
    assert_eq!(*c.await.unwrap().unwrap(), 1, "the queue went on");
    assert_eq!(
        log.lines(),
        [
            "on_mutate 3",
            "start 3",
            "end 3",
            "on_mutate 1",
            "start 1",
            "end 1",
        ],
        "the cancelled call never ran, no callback saw it"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(40),
        "3 then 1, no gap"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_running_head_of_a_scope_starts_the_next_call() {
    let client = QueryClient::new();
    let log = Log::default();
    let head = client.mutation(sleeper(&log).scope("s"));
    let next = client.mutation(sleeper(&log).scope("s"));
    let a = tokio::spawn(head.mutate(100));
    let b = tokio::spawn(next.mutate(2));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let cancelled_at = Instant::now();
    head.cancel();
    assert!(matches!(a.await.unwrap(), Err(QueryError::Cancelled)));
    assert_eq!(*b.await.unwrap().unwrap(), 2);
    assert_eq!(cancelled_at.elapsed(), Duration::from_millis(20));
    assert_eq!(log.lines(), ["start 100", "start 2", "end 2"]);
}

#[tokio::test(start_paused = true)]
async fn cancel_targets_every_unsettled_call_and_not_later_ones() {
    let client = QueryClient::new();
    let log = Log::default();
    let m = client.mutation(sleeper(&log));
    let clone = m.clone();
    let calls: Vec<_> = (1..=3).map(|n| tokio::spawn(m.mutate(n))).collect();
    // Made but not yet polled: cancelled too (it exists before `cancel`).
    let unpolled = m.mutate(4);
    settle().await;
    clone.cancel(); // through a clone: the same mutation
    for call in calls {
        assert!(matches!(call.await.unwrap(), Err(QueryError::Cancelled)));
    }
    assert!(matches!(unpolled.await, Err(QueryError::Cancelled)));
    assert!(!log.lines().iter().any(|l| l.starts_with("end")));
    assert!(!log.lines().iter().any(|l| l == "start 4"), "never started");

    // A call made after `cancel` is not affected.
    assert_eq!(*m.mutate(7).await.unwrap(), 7);
    assert!(m.state().is_success());
}

#[tokio::test(start_paused = true)]
async fn cancel_with_nothing_running_and_after_settling_changes_nothing() {
    let client = QueryClient::new();
    let log = Log::default();
    let m = client.mutation(sleeper(&log));
    m.cancel();
    assert!(m.state().is_idle());
    assert_eq!(*m.mutate(1).await.unwrap(), 1);
    m.cancel();
    assert!(m.state().is_success(), "a settled call stays settled");
}

#[tokio::test(start_paused = true)]
async fn a_spawned_call_outlives_its_dropped_mutation_handle() {
    // Once every handle is gone nobody can cancel; the call must not see that as a cancel.
    let client = QueryClient::new();
    let log = Log::default();
    let m = client.mutation(sleeper(&log));
    let call = tokio::spawn(m.mutate(2));
    drop(m);
    assert_eq!(*call.await.unwrap().unwrap(), 2);
}
