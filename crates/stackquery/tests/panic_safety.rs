//! Panic safety beyond the single-call cases in `fetch.rs`, `observer.rs`, `mutation.rs`,
//! `manual.rs` and `bulk.rs`: panics under concurrency, in updaters racing a fetch, in
//! filter predicates of every bulk operation, in retry predicates and delays, in listeners
//! that call back into the client, in `select` on some values only, in polled fetches and
//! in mutation callbacks running concurrently. After each, the client must be fully usable,
//! and the panic must surface as an error value or a log line (checked with a small
//! capturing `tracing` subscriber).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{scripted, settle, slow_counter};
use stackquery::{
    key, FetchStatus, MutationOptions, QueryClient, QueryError, QueryFilter, QueryOptions,
    QueryState, QueryStatus,
};

const SEC: Duration = Duration::from_secs(1);

/// Records `tracing` events (level and fields) on the current thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    /// Captures events until the guard drops (current-thread runtimes only).
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(self.clone())
    }

    fn any(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl tracing::Subscriber for Logs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(format!("{}", event.metadata().level()));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The client still fetches, writes, invalidates and observes normally.
async fn assert_usable(client: &QueryClient) {
    let (opts, calls) = slow_counter(key!["usable"], SEC);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), calls.get());
    client.set_query_data(key!["usable"], 100_u32).unwrap();
    assert_eq!(client.invalidate_queries(key!["usable"]).await, 1);
    let observer = client.watch(&opts);
    let seen = Arc::new(AtomicU32::new(0));
    let s = seen.clone();
    let sub = observer.subscribe(move |st: &QueryState<u32>| {
        s.store(st.data.as_deref().copied().unwrap_or(0), Ordering::SeqCst)
    });
    client.set_query_data(key!["usable"], 7_u32).unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 7);
    drop(sub);
    assert!(client.remove_queries(key!["usable"]) == 1);
}

/// Many concurrent callers on two worker threads share one fetch that panics after an
/// await: every caller gets the same `Panicked` error, no caller hangs, the entry settles
/// in the error state, other keys fetched meanwhile are unaffected, and the next fetch of
/// the key works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_fetch_that_panics_fails_every_concurrent_caller_alike() {
    let client = QueryClient::new();
    let (bad, calls) = scripted(key!["bad"], |n| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if n == 1 {
            panic!("mid-flight panic");
        }
        Ok::<_, String>(n)
    });
    let (good, _) = scripted(key!["good"], |n| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, String>(n)
    });
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = client.clone();
        let (b, g) = (bad.clone(), good.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                c.fetch_query(&b).await.map(|v| (true, *v))
            } else {
                c.fetch_query(&g).await.map(|v| (false, *v))
            }
        }));
    }
    let results = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(tasks))
        .await
        .expect("no caller hangs");
    for (i, r) in results.into_iter().enumerate() {
        match (i % 2, r.expect("no task panics")) {
            (0, Err(QueryError::Panicked(m))) => assert!(m.contains("mid-flight panic")),
            (1, Ok((false, _))) => {}
            (k, other) => panic!("caller {i} (kind {k}): {other:?}"),
        }
    }
    assert_eq!(
        calls.get(),
        1,
        "one fetch for all, and a panic is not retried"
    );
    let s = client.get_query_state::<u32>(&key!["bad"]).unwrap();
    assert_eq!(s.status, QueryStatus::Error);
    assert_eq!(s.fetch_status, FetchStatus::Idle);
    assert_eq!(*client.fetch_query(&bad).await.unwrap(), 2);
    assert_usable(&client).await;
}

/// An updater panics while a fetch of the same key is in flight and while other threads
/// update the key: the panic is an error value, nothing is written by it, no lock is
/// poisoned, the fetch still lands, and the other updates all apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updater_panic_racing_a_fetch_and_other_updates_leaves_the_entry_consistent() {
    let client = QueryClient::new();
    client.set_query_data(key!["n"], 0_u32).unwrap();
    let (opts, _) = scripted(key!["n"], |_| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, String>(1_000_u32)
    });
    let fetch = {
        let c = client.clone();
        let o = opts.clone();
        tokio::spawn(async move { c.refetch_query(&o).await })
    };
    let updaters: Vec<_> = (0..100)
        .map(|i| {
            let c = client.clone();
            tokio::task::spawn_blocking(move || {
                c.update_query_data(key!["n"], move |old: Option<&u32>| {
                    if i % 10 == 0 {
                        panic!("updater bug {i}");
                    }
                    old.map(|v| v + 1)
                })
            })
        })
        .collect();
    let mut panicked = 0;
    for u in updaters {
        match u.await.expect("the panic never escapes") {
            Err(QueryError::Panicked(m)) => {
                assert!(m.starts_with("updater bug"));
                panicked += 1;
            }
            Ok(Some(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(panicked, 10);
    assert_eq!(*fetch.await.unwrap().unwrap(), 1_000);
    let s = client.get_query_state::<u32>(&key!["n"]).unwrap();
    assert!(!s.is_fetching());
    // The 90 good updates all applied, before or after the fetch's value landed (a fetch
    // that started before a manual write never overwrites it).
    let v = *s.data.unwrap();
    assert!(v == 90 || (1_000..=1_090).contains(&v), "{v}");
    assert_usable(&client).await;
}

/// A panicking filter predicate excludes its entries from every bulk operation — not only
/// `remove_queries` (see bulk.rs) — and never crashes or changes anything.
#[tokio::test(start_paused = true)]
async fn a_panicking_filter_predicate_is_contained_in_every_bulk_operation() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k", 1], SEC);
    client.fetch_query(&opts).await.unwrap();
    let boom = || QueryFilter::all().predicate(|_| panic!("predicate bug"));
    assert_eq!(client.invalidate_queries(boom()).await, 0);
    assert_eq!(client.refetch_queries(boom()).await, 0);
    assert_eq!(client.cancel_queries(boom()).await, 0);
    assert_eq!(client.reset_queries(boom()), 0);
    assert_eq!(client.remove_queries(boom()), 0);
    assert_eq!(client.is_fetching(boom()), 0);
    let s = client.get_query_state::<u32>(&key!["k", 1]).unwrap();
    assert!(!s.is_invalidated && s.has_data());
    assert_eq!(calls.get(), 1);
    // A predicate that panics for some keys only: the others are still matched.
    client.set_query_data(key!["k", 2], 2_u32).unwrap();
    let some = QueryFilter::prefix(key!["k"]).predicate(|k| {
        if k == &key!["k", 1] {
            panic!("only for k1");
        }
        true
    });
    assert_eq!(client.invalidate_queries(some).await, 1);
    assert!(
        client
            .get_query_state::<u32>(&key!["k", 2])
            .unwrap()
            .is_invalidated
    );
    assert_usable(&client).await;
}

/// A retry predicate that panics means "do not retry": the fetch fails with the fetch
/// function's own error (not a panic), once, and the key fetches normally afterwards.
#[tokio::test(start_paused = true)]
async fn a_panicking_retry_predicate_stops_retrying_and_keeps_the_real_error() {
    let client = QueryClient::new();
    let (opts, calls) = scripted(key!["r"], |n| async move {
        if n == 1 {
            Err("first attempt fails".to_string())
        } else {
            Ok(n)
        }
    });
    let opts = opts.retry_if(|_, _| panic!("retry predicate bug"));
    let err = client.fetch_query(&opts).await.unwrap_err();
    assert!(
        matches!(&err, QueryError::Fetch(e) if e.to_string().contains("first attempt fails")),
        "{err:?}"
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 2);
    assert_usable(&client).await;
}

/// A retry delay function that panics falls back to the default delay (1 s for the first
/// retry): the retry still happens, on time, and succeeds.
#[tokio::test(start_paused = true)]
async fn a_panicking_retry_delay_falls_back_to_the_default_delay() {
    let client = QueryClient::new();
    let (opts, calls) = scripted(key!["d"], |n| async move {
        if n == 1 {
            Err("transient".to_string())
        } else {
            Ok(n)
        }
    });
    let opts = opts.retry(1).retry_delay(|_| panic!("delay bug"));
    let c = client.clone();
    let o = opts.clone();
    let t = tokio::spawn(async move { c.fetch_query(&o).await });
    settle().await;
    assert_eq!(calls.get(), 1);
    tokio::time::advance(Duration::from_millis(999)).await;
    settle().await;
    assert_eq!(calls.get(), 1, "not before the default 1 s");
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(calls.get(), 2);
    assert_eq!(*t.await.unwrap().unwrap(), 2);
    assert_usable(&client).await;
}

/// A listener that calls back into the client (writes another key, reads its own) and
/// then panics, on every change, from changes made on two threads at once: nothing
/// deadlocks, every panic is a log line, other listeners get the final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reentrant_panicking_listener_under_concurrent_changes() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["obs"], Duration::from_millis(1));
    let observer = client.watch(&opts.stale_time(Duration::from_secs(3600)));
    let c = client.clone();
    let panics = Arc::new(AtomicU32::new(0));
    let p = panics.clone();
    let _bad = observer.subscribe(move |s: &QueryState<u32>| {
        let _ = c.get_query_state::<u32>(&key!["obs"]);
        let _ = c.set_query_data(key!["side"], s.data.as_deref().copied().unwrap_or(0));
        p.fetch_add(1, Ordering::SeqCst);
        panic!("listener bug");
    });
    let last = Arc::new(AtomicU32::new(0));
    let l = last.clone();
    let _good = observer.subscribe(move |s: &QueryState<u32>| {
        if let Some(d) = s.data.as_deref() {
            l.store(*d, Ordering::SeqCst);
        }
    });
    let writers: Vec<_> = (0..2_u32)
        .map(|w| {
            let c = client.clone();
            tokio::task::spawn_blocking(move || {
                for i in 0..200_u32 {
                    c.set_query_data(key!["obs"], w * 1_000 + i + 1).unwrap();
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(writers))
        .await
        .expect("no deadlock");
    // The first subscriber's fetch (1 ms) may settle on a worker thread while the last
    // write below is made; its delivery loop then carries the final state, on that thread,
    // a moment after `set_query_data` returns here. Let it finish first, so the final
    // write is delivered by this very call (what the assertion below reads).
    while client.is_fetching(stackquery::QueryFilter::all()) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // (Its notification runs just after the flight is cleared: give it a moment.)
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.set_query_data(key!["obs"], 5_000_u32).unwrap();
    assert_eq!(last.load(Ordering::SeqCst), 5_000, "final state delivered");
    assert!(panics.load(Ordering::SeqCst) >= 1);
    assert_eq!(observer.state().data.as_deref(), Some(&5_000));
    assert_usable(&client).await;
}

/// Listener panics are reported as a log line (warn level, with the panic message).
#[tokio::test(start_paused = true)]
async fn listener_and_select_panics_are_logged() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["l"], SEC);
    let observer = client.watch(&opts);
    let _sub = observer.subscribe(|_| panic!("logged listener bug"));
    let selected = observer.select(|v: &u32| -> u32 {
        if *v == 13 {
            panic!("logged select bug");
        }
        *v
    });
    let _sub2 = selected.subscribe(|_| {});
    client.set_query_data(key!["l"], 13_u32).unwrap();
    assert!(logs.any("WARN") && logs.any("logged listener bug"));
    assert!(logs.any("logged select bug"));
    assert!(
        selected.state().is_error(),
        "a select panic is an error state"
    );
    // `select` recovers on the next value: its memo keys on the raw data.
    client.set_query_data(key!["l"], 14_u32).unwrap();
    let s = selected.state();
    assert!(s.is_success());
    assert_eq!(s.data.as_deref(), Some(&14));
    assert_usable(&client).await;
}

/// A polled query whose fetch panics on some polls keeps polling: the panic is an error
/// state (and a log line), the next poll succeeds, the observer sees it.
#[tokio::test(start_paused = true)]
async fn polling_survives_a_panicking_fetch() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let client = QueryClient::new();
    let (opts, calls) = scripted(key!["poll"], |n| async move {
        if n == 2 {
            panic!("poll bug");
        }
        Ok::<_, String>(n)
    });
    let opts = opts.refetch_interval(SEC);
    let observer = client.watch(&opts);
    let states: Arc<Mutex<Vec<QueryStatus>>> = Arc::default();
    let s = states.clone();
    let _sub = observer.subscribe(move |st: &QueryState<u32>| s.lock().unwrap().push(st.status));
    settle().await;
    for _ in 0..3 {
        tokio::time::sleep(SEC).await;
        settle().await;
    }
    assert!(calls.get() >= 3, "polling went on after the panic");
    assert!(states.lock().unwrap().contains(&QueryStatus::Error));
    assert!(observer.state().is_success());
    assert!(observer.state().data.as_deref() >= Some(&3));
    assert!(logs.any("poll bug"));
    drop(_sub);
    assert_usable(&client).await;
}

/// Mutations with panicking callbacks run concurrently with queries of the keys they
/// touch: every call settles as the function decided, callbacks' panics are logged, and
/// both the mutations and the client stay usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mutations_with_panicking_callbacks() {
    let client = QueryClient::new();
    let c = client.clone();
    let m = client.mutation(
        MutationOptions::new(|n: u32| async move {
            tokio::task::yield_now().await;
            if n % 3 == 0 {
                Err(format!("refused {n}"))
            } else {
                Ok::<_, String>(n)
            }
        })
        .on_success(move |v: &u32, _, _| {
            c.set_query_data(key!["m", *v % 4], *v).unwrap();
            if v % 2 == 0 {
                panic!("on_success bug");
            }
        })
        .on_error(|_, _, _| panic!("on_error bug"))
        .on_settled(|_, _, _, _| panic!("on_settled bug")),
    );
    let (opts, _) = slow_counter(key!["m", 0], Duration::from_millis(1));
    let calls: Vec<_> = (1..=60_u32)
        .map(|n| {
            let m = m.clone();
            let c = client.clone();
            let o = opts.clone();
            tokio::spawn(async move {
                let _ = c.fetch_query(&o).await;
                (n, m.mutate(n).await)
            })
        })
        .collect();
    for t in calls {
        let (n, r) = t.await.expect("no task panics");
        match r {
            Ok(v) => assert_eq!(*v, n),
            Err(QueryError::Fetch(e)) => assert_eq!(e.to_string(), format!("refused {n}")),
            Err(other) => panic!("{n}: {other:?}"),
        }
    }
    assert_eq!(*m.mutate(1).await.unwrap(), 1);
    assert_usable(&client).await;
}

/// Options built with a fetch function that panics for one key only, used through the
/// bulk refetch path (`refetch_queries`, which runs the stored options): the panic is an
/// error state of that entry, the other entries refetch normally.
#[tokio::test(start_paused = true)]
async fn a_panicking_fetch_in_a_bulk_refetch_fails_only_its_entry() {
    let client = QueryClient::new();
    let mut all = Vec::new();
    for i in 0..5_u32 {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let opts = QueryOptions::new(key!["bulk", i], move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if i == 2 && n == 2 {
                    panic!("bulk refetch bug");
                }
                Ok::<_, String>(i * 10 + n)
            }
        });
        client.fetch_query(&opts).await.unwrap();
        all.push(opts);
    }
    assert_eq!(client.refetch_queries(key!["bulk"]).await, 5);
    for i in 0..5_u32 {
        let s = client.get_query_state::<u32>(&key!["bulk", i]).unwrap();
        if i == 2 {
            assert_eq!(s.status, QueryStatus::Error);
            assert!(matches!(s.error, Some(QueryError::Panicked(_))));
            assert_eq!(s.data.as_deref(), Some(&21), "old data kept");
        } else {
            assert_eq!(s.data.as_deref(), Some(&(i * 10 + 2)));
        }
    }
    assert_eq!(*client.refetch_query(&all[2]).await.unwrap(), 23);
    assert_usable(&client).await;
}
