//! Observers: subscribe, stream, select, placeholder, enabled, pause, polling, removal.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{scripted, settle, slow_counter};
use futures::StreamExt;
use stackquery::{key, FetchStatus, QueryClient, QueryError, QueryState, QueryStatus};

const SEC: Duration = Duration::from_secs(1);

type Log<T> = Arc<Mutex<Vec<QueryState<T>>>>;

fn recorder<T: Send + Sync + 'static>() -> (Log<T>, impl Fn(&QueryState<T>) + Send + Sync + 'static)
{
    let log: Log<T> = Arc::default();
    let l = log.clone();
    (log, move |s: &QueryState<T>| {
        l.lock().unwrap().push(s.clone())
    })
}

fn datas<T: Clone>(log: &Log<T>) -> Vec<Option<T>> {
    log.lock()
        .unwrap()
        .iter()
        .map(|s| s.data.as_deref().cloned())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn first_subscriber_fetches_and_every_observer_is_notified() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], SEC);
    let (log_a, a) = recorder();
    let (log_b, b) = recorder();
    let o1 = client.watch(&opts);
    let o2 = client.watch(&opts);
    let _s1 = o1.subscribe(a);
    let _s2 = o2.subscribe(b);
    assert!(
        log_a.lock().unwrap()[0].is_loading(),
        "first state already shows the fetch"
    );
    tokio::time::sleep(SEC).await;
    settle().await;
    assert_eq!(calls.get(), 1, "two observers, one entry, one fetch");
    assert_eq!(datas(&log_a).last().cloned().flatten(), Some(1));
    assert_eq!(datas(&log_b).last().cloned().flatten(), Some(1));
    assert_eq!(o1.state().status, QueryStatus::Success);
    // Both are active: a manual write reaches both.
    client.set_query_data(key!["k"], 42_u32).unwrap();
    assert_eq!(datas(&log_a).last().cloned().flatten(), Some(42));
    assert_eq!(datas(&log_b).last().cloned().flatten(), Some(42));
}

#[tokio::test(start_paused = true)]
async fn subscription_drop_detaches_and_starts_the_gc_timer() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let opts = opts.gc_time(Duration::from_secs(10));
    let observer = client.watch(&opts);
    let sub = observer.subscribe(|_| {});
    tokio::time::sleep(SEC).await;
    settle().await;
    assert_eq!(
        client.remove_queries(stackquery::QueryFilter::all().active(false)),
        0,
        "observed"
    );
    // Observed entries are not collected, however long we wait.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(client.get_query_data::<u32>(&key!["k"]).is_some());
    sub.unsubscribe();
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(
        client.get_query_data::<u32>(&key!["k"]).is_none(),
        "collected after the last observer left"
    );
}

/// An observer whose subscribers all left, then subscribes again, must be re-attached:
/// it gets later updates, and its entry is not collected under it.
#[tokio::test(start_paused = true)]
async fn an_observer_that_resubscribes_is_reattached() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let opts = opts
        .gc_time(Duration::from_secs(10))
        .stale_time(Duration::MAX);
    let observer = client.watch(&opts);
    drop(observer.subscribe(|_| {}));
    tokio::time::sleep(SEC).await;
    let (log, f) = recorder();
    let _sub = observer.subscribe(f);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        client.get_query_data::<u32>(&key!["k"]).is_some(),
        "not collected while observed"
    );
    client.set_query_data(key!["k"], 7_u32).unwrap();
    assert_eq!(datas(&log).last().cloned().flatten(), Some(7));
}

#[tokio::test(start_paused = true)]
async fn invalidation_refetches_observed_entries_at_once() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["user", 1], SEC);
    let (idle, idle_calls) = slow_counter(key!["user", 2], SEC);
    client.fetch_query(&idle).await.unwrap();
    let observer = client.watch(&opts.stale_time(Duration::MAX));
    let (log, f) = recorder();
    let _sub = observer.subscribe(f);
    tokio::time::sleep(SEC).await;
    client.invalidate_queries(key!["user"]).await;
    assert_eq!(calls.get(), 2, "the observed entry was refetched");
    assert_eq!(idle_calls.get(), 1, "the unobserved one only marked stale");
    assert_eq!(datas(&log).last().cloned().flatten(), Some(2));
    assert!(!observer.state().is_invalidated);
}

#[tokio::test(start_paused = true)]
async fn select_transforms_runs_once_per_change_and_skips_equal_values() {
    #[derive(Clone)]
    struct User {
        name: String,
        visits: u32,
    }
    let client = QueryClient::new();
    client
        .set_query_data(
            key!["u"],
            User {
                name: "ada".into(),
                visits: 1,
            },
        )
        .unwrap();
    let (opts, _) = scripted(key!["u"], |_| async {
        Ok::<_, String>(User {
            name: "ada".into(),
            visits: 0,
        })
    });
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let names = client.watch(&opts.enabled(false)).select(move |u: &User| {
        r.fetch_add(1, Ordering::SeqCst);
        u.name.to_uppercase()
    });
    let (log1, f1) = recorder();
    let (log2, f2) = recorder();
    let _s1 = names.subscribe(f1);
    let _s2 = names.subscribe(f2);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "once, not once per listener"
    );
    assert_eq!(datas(&log1), vec![Some("ADA".to_string())]);
    // New raw data, same selected value: no notification.
    client
        .set_query_data(
            key!["u"],
            User {
                name: "ada".into(),
                visits: 2,
            },
        )
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(log1.lock().unwrap().len(), 1);
    client
        .set_query_data(
            key!["u"],
            User {
                name: "grace".into(),
                visits: 2,
            },
        )
        .unwrap();
    assert_eq!(
        datas(&log1).last().cloned().flatten(),
        Some("GRACE".to_string())
    );
    assert_eq!(
        datas(&log2).last().cloned().flatten(),
        Some("GRACE".to_string())
    );
    // The cache keeps the raw type.
    assert_eq!(client.get_query_data::<User>(&key!["u"]).unwrap().visits, 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_select_is_an_error_state_for_that_observer_only() {
    let client = QueryClient::new();
    client.set_query_data(key!["k"], 1_u32).unwrap();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let opts = opts.enabled(false);
    let bad = client
        .watch(&opts)
        .select(|_: &u32| -> u32 { panic!("select bug") });
    let good = client.watch(&opts);
    let (bad_log, f) = recorder();
    let _s = bad.subscribe(f);
    let st = bad_log.lock().unwrap()[0].clone();
    assert_eq!(st.status, QueryStatus::Error);
    assert!(matches!(st.error, Some(QueryError::Panicked(_))));
    assert_eq!(good.state().data.as_deref(), Some(&1));
    assert_eq!(
        client.get_query_state::<u32>(&key!["k"]).unwrap().status,
        QueryStatus::Success
    );
}

#[tokio::test(start_paused = true)]
async fn placeholder_is_shown_while_pending_and_never_cached() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let observer = client.watch(&opts.placeholder_data(0));
    let (log, f) = recorder();
    let _s = observer.subscribe(f);
    let first = log.lock().unwrap()[0].clone();
    assert!(first.is_placeholder_data);
    assert_eq!(first.data.as_deref(), Some(&0));
    assert!(first.is_fetching());
    assert!(
        client.get_query_data::<u32>(&key!["k"]).is_none(),
        "not in the cache"
    );
    tokio::time::sleep(SEC).await;
    settle().await;
    let last = log.lock().unwrap().last().cloned().unwrap();
    assert!(!last.is_placeholder_data);
    assert_eq!(last.data.as_deref(), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn disabled_queries_do_not_fetch_but_refetch_does() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], SEC);
    let observer = client.watch(&opts.enabled(false));
    let _s = observer.subscribe(|_| {});
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(calls.get(), 0);
    assert_eq!(observer.state().status, QueryStatus::Idle);
    let st = observer.refetch().await.unwrap();
    assert_eq!(st.data.as_deref(), Some(&1));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn dependent_query_enabled_by_the_first_result() {
    let client = QueryClient::new();
    let (user, _) = scripted(key!["user"], |_| async { Ok::<u64, String>(7) });
    let id = client.fetch_query(&user).await.unwrap();
    let (posts, calls) = slow_counter(key!["posts", *id], SEC);
    let observer = client.watch(&posts.enabled(*id > 0));
    let _s = observer.subscribe(|_| {});
    tokio::time::sleep(SEC).await;
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn polling_runs_only_while_subscribed_and_survives_failures() {
    let client = QueryClient::new();
    let (opts, calls) = scripted(key!["poll"], |n| async move {
        if n == 2 {
            Err("poll 2 failed".to_string())
        } else {
            Ok(n)
        }
    });
    let opts = opts.refetch_interval(Duration::from_secs(10)).retry(0);
    let observer = client.watch(&opts);
    let sub = observer.subscribe(|_| {});
    settle().await;
    assert_eq!(calls.get(), 1, "initial fetch");
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(calls.get(), 2, "first poll (fails)");
    assert_eq!(observer.state().status, QueryStatus::Error);
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(calls.get(), 3, "a failed poll does not stop polling");
    assert_eq!(observer.state().data.as_deref(), Some(&3));
    drop(sub);
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(calls.get(), 3, "no subscriber, no polling");
    let _sub = observer.subscribe(|_| {});
    settle().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    assert!(calls.get() >= 4, "polling restarts with a subscriber");
}

#[tokio::test(start_paused = true)]
async fn polls_never_overlap_with_a_slow_fetch() {
    let client = QueryClient::new();
    let running = Arc::new(AtomicU32::new(0));
    let max_seen = Arc::new(AtomicU32::new(0));
    let (r, m) = (running.clone(), max_seen.clone());
    let (opts, calls) = scripted(key!["slow"], move |n| {
        let (r, m) = (r.clone(), m.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(25)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, String>(n)
        }
    });
    let observer = client.watch(&opts.refetch_interval(Duration::from_secs(10)));
    let _s = observer.subscribe(|_| {});
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert!(calls.get() >= 3);
    assert_eq!(max_seen.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn pause_stops_polling_and_shows_paused() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], SEC);
    let observer = client.watch(&opts.refetch_interval(Duration::from_secs(10)));
    let _s = observer.subscribe(|_| {});
    tokio::time::sleep(Duration::from_secs(2)).await;
    observer.pause();
    assert_eq!(observer.state().fetch_status, FetchStatus::Paused);
    let before = calls.get();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(calls.get(), before);
    observer.resume(true);
    settle().await;
    assert_eq!(calls.get(), before + 1, "resume(true) refetches stale data");
    assert!(!observer.is_paused());
}

#[tokio::test(start_paused = true)]
async fn listeners_may_call_back_into_the_client_without_deadlock() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let observer = client.watch(&opts.enabled(false));
    let c = client.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let _s = observer.subscribe(move |state: &QueryState<u32>| {
        s2.lock().unwrap().push(state.data.as_deref().copied());
        // Read, write (the same key!) and invalidate from inside a listener.
        let _ = c.get_query_data::<u32>(&key!["k"]);
        if state.data.as_deref() == Some(&1) {
            c.set_query_data(key!["k"], 2_u32).unwrap();
        }
        let _ = c.get_query_state::<u32>(&key!["k"]);
    });
    client.set_query_data(key!["k"], 1_u32).unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![None, Some(1), Some(2)],
        "in order, final state delivered"
    );
    client.invalidate_queries(key!["k"]).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_listener_is_contained_and_others_still_run() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let observer = client.watch(&opts.enabled(false));
    let _bad = observer.subscribe(|s: &QueryState<u32>| {
        if s.has_data() {
            panic!("listener bug")
        }
    });
    let (log, f) = recorder();
    let _good = observer.subscribe(f);
    client.set_query_data(key!["k"], 5_u32).unwrap();
    assert_eq!(datas(&log).last().cloned().flatten(), Some(5));
}

/// A listener that panics on its very first (immediate) call must still leave a clean
/// subscription: dropping it brings the entry's observer count back to zero.
/// (The observer is enabled — only enabled observers make an entry active — and its data
/// is fresh, so it starts no fetch.)
#[tokio::test(start_paused = true)]
async fn a_listener_panicking_on_its_first_call_leaves_a_clean_subscription() {
    let client = QueryClient::new();
    client.set_query_data(key!["k"], 1_u32).unwrap();
    let (opts, calls) = slow_counter(key!["k"], SEC);
    let observer = client.watch(&opts.stale_time(Duration::MAX));
    let sub = observer.subscribe(|_: &QueryState<u32>| panic!("first call"));
    // Observed: an "inactive only" removal leaves it alone.
    assert_eq!(
        client.remove_queries(stackquery::QueryFilter::all().active(false)),
        0
    );
    drop(sub);
    assert_eq!(
        client.remove_queries(stackquery::QueryFilter::all().active(false)),
        1,
        "observer count back to 0"
    );
    assert_eq!(calls.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn stream_yields_latest_values_and_ends_on_removal() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let observer = client.watch(&opts.enabled(false));
    let mut stream = observer.stream();
    assert!(!stream.next().await.unwrap().has_data());
    for i in 1..=5_u32 {
        client.set_query_data(key!["k"], i).unwrap();
    }
    // A slow consumer skips intermediate states but gets the newest.
    assert_eq!(stream.next().await.unwrap().data.as_deref(), Some(&5));
    client.remove_queries(key!["k"]);
    let mut rest = Vec::new();
    while let Some(s) = stream.next().await {
        rest.push(s);
    }
    assert!(rest
        .iter()
        .all(|s| !s.has_data() || s.data.as_deref() == Some(&5)));
}

#[tokio::test(start_paused = true)]
async fn stream_ends_when_the_client_is_dropped() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let observer = client.watch(&opts.enabled(false));
    let mut stream = observer.stream();
    stream.next().await.unwrap();
    drop(client);
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while stream.next().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the stream ended");
}

/// `remove_queries` on an observed entry: listeners get one last, empty state, streams
/// end, the observer is detached; a refetch attaches it to a new entry for the key.
#[tokio::test(start_paused = true)]
async fn removing_an_observed_entry_has_a_defined_outcome() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], SEC);
    let observer = client.watch(&opts);
    let (log, f) = recorder();
    let _s = observer.subscribe(f);
    tokio::time::sleep(SEC).await;
    settle().await;
    assert_eq!(client.remove_queries(key!["k"]), 1);
    let last = log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.status, QueryStatus::Idle);
    assert!(!last.has_data());
    assert!(
        client.get_query_state::<u32>(&key!["k"]).is_none(),
        "really removed"
    );
    let st = observer.refetch().await.unwrap();
    assert_eq!(st.data.as_deref(), Some(&2));
    assert_eq!(calls.get(), 2);
    client.set_query_data(key!["k"], 9_u32).unwrap();
    assert_eq!(
        datas(&log).last().cloned().flatten(),
        Some(9),
        "re-attached: gets later updates"
    );
}

#[tokio::test(start_paused = true)]
async fn watching_a_key_of_another_type_shows_a_type_mismatch() {
    let client = QueryClient::new();
    client
        .set_query_data(key!["k"], "text".to_string())
        .unwrap();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let observer = client.watch(&opts);
    let (log, f) = recorder();
    let _s = observer.subscribe(f);
    let st = log.lock().unwrap()[0].clone();
    assert!(matches!(st.error, Some(QueryError::TypeMismatch(_))));
}

#[tokio::test(start_paused = true)]
async fn the_final_state_of_a_fetch_is_never_lost() {
    let client = QueryClient::new();
    let (opts, _) = scripted(key!["k"], |_| async { Err::<u32, _>("x".to_string()) });
    let opts = opts.retry(2).retry_delay(|_| Duration::from_millis(10));
    let observer = client.watch(&opts);
    let (log, f) = recorder();
    let _s = observer.subscribe(f);
    tokio::time::sleep(SEC).await;
    settle().await;
    let log = log.lock().unwrap();
    let last = log.last().unwrap();
    assert_eq!(last.status, QueryStatus::Error);
    assert_eq!(last.fetch_status, FetchStatus::Idle);
    assert_eq!(last.failure_count, 3);
    // Failure counts were seen in order.
    let counts: Vec<u32> = log.iter().map(|s| s.failure_count).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
}
