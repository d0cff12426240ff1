//! Observer correctness (issue 10, "core correctness"): disabled queries, per-key settings
//! decided per observer, stale notifications, polling across runtimes, and user code that
//! calls back into the client. Each test tells the story of the bug it guards.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{on_a_fresh_runtime, scripted, settle, slow_counter};
use futures::FutureExt;
use stackquery::{key, QueryClient, QueryFilter, QueryObserver, QueryState};

const SEC: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Bullet 1: a disabled query never fetches by itself
// ---------------------------------------------------------------------------------------

/// `enabled(false)` says "never fetch by yourself", but an observer with a
/// `refetch_interval` started its poll loop regardless: at 100 ms it fetched ten times a
/// second. A disabled query must not poll; an explicit `refetch` still fetches, once.
#[tokio::test(start_paused = true)]
async fn a_disabled_query_with_a_refetch_interval_never_polls() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], Duration::ZERO);
    let opts = opts
        .enabled(false)
        .refetch_interval(Duration::from_millis(100));
    let observer = client.watch(&opts);
    let _sub = observer.subscribe(|_| {});
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        settle().await;
    }
    assert_eq!(calls.get(), 0, "disabled: no poll");
    observer.refetch().await.unwrap();
    assert_eq!(calls.get(), 1, "an explicit refetch still fetches");
    tokio::time::sleep(SEC).await;
    settle().await;
    assert_eq!(calls.get(), 1, "and polling does not start after it");
}

// ---------------------------------------------------------------------------------------
// Bullet 2: bulk operations leave disabled queries alone
// ---------------------------------------------------------------------------------------

/// A query observed only by a disabled observer was treated as active: `invalidate_queries`,
/// `refetch_queries(QueryFilter::all())` and `reset_queries` all ran its fetch function,
/// though the observer asked never to fetch by itself. As in TanStack Query, a disabled
/// query is invalidated (or reset) but not refetched, and `active(true)` means "has at
/// least one *enabled* observer". The disabled observer still pins the entry against the
/// gc, and an explicit `observer.refetch()` still fetches.
#[tokio::test(start_paused = true)]
async fn bulk_operations_invalidate_but_never_refetch_a_disabled_query() {
    let client = QueryClient::builder()
        .gc_time(Duration::from_secs(10))
        .build();
    let (opts, calls) = slow_counter(key!["k"], Duration::ZERO);
    client.fetch_query(&opts).await.unwrap();
    let disabled = client.watch(&opts.clone().enabled(false));
    let _sub = disabled.subscribe(|_| {});

    assert_eq!(client.invalidate_queries(QueryFilter::all()).await, 1);
    settle().await;
    assert!(disabled.state().is_invalidated, "invalidated…");
    assert_eq!(calls.get(), 1, "…but not refetched");
    assert_eq!(client.refetch_queries(QueryFilter::all()).await, 0);
    assert_eq!(client.reset_queries(QueryFilter::all()), 1);
    settle().await;
    assert_eq!(
        calls.get(),
        1,
        "refetch_queries and reset_queries skip it too"
    );
    assert_eq!(
        client
            .refetch_queries(QueryFilter::all().active(true))
            .await,
        0
    );
    assert_eq!(client.is_fetching(QueryFilter::all().active(false)), 0);

    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        client.get_query_state::<u32>(&key!["k"]).is_some(),
        "a disabled observer still pins the entry"
    );
    disabled.refetch().await.unwrap();
    assert_eq!(calls.get(), 2, "an explicit refetch still fetches");

    // One enabled observer makes the entry active again.
    let enabled = client.watch(&opts.stale_time(Duration::MAX));
    let sub = enabled.subscribe(|_| {});
    assert_eq!(
        client
            .invalidate_queries(QueryFilter::all().active(true))
            .await,
        1
    );
    assert_eq!(calls.get(), 3, "active: invalidation refetches");
    drop(sub);
    client.invalidate_queries(QueryFilter::all()).await;
    assert_eq!(
        calls.get(),
        3,
        "inactive again once the enabled observer left"
    );
}

// ---------------------------------------------------------------------------------------
// Bullet 3: per-key settings are not taken from whichever caller came last
// ---------------------------------------------------------------------------------------

/// An observer asked for its data to be kept 60 s after it leaves. A later
/// `refetch_query` of the same key with a 1 s gc time overwrote the entry's gc time, so the
/// entry was collected 1 s after the observer left. As in TanStack Query the largest gc
/// time asked for wins: a short-lived caller never shortens another caller's gc time.
#[tokio::test(start_paused = true)]
async fn a_later_caller_with_a_shorter_gc_time_does_not_shorten_an_observers() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], Duration::ZERO);
    let opts = opts.stale_time(Duration::MAX);
    let observer = client.watch(&opts.clone().gc_time(Duration::from_secs(60)));
    let sub = observer.subscribe(|_| {});
    settle().await;
    let short = opts.gc_time(SEC);
    client.refetch_query(&short).await.unwrap();
    drop(sub);
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert!(
        client.get_query_state::<u32>(&key!["k"]).is_some(),
        "kept for the observer's 60 s"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    settle().await;
    assert!(
        client.get_query_state::<u32>(&key!["k"]).is_none(),
        "then collected"
    );
}

/// Two observers of one key: `A` counts data stale after 10 s, `B` (subscribed last) after
/// 100 s. The entry remembered only the last caller's stale time, so at 20 s filters said
/// "fresh" although the data was stale for `A`: `refetch_queries(stale(true))` skipped it.
/// Freshness is per observer; for filters an observed entry is stale when it is stale for
/// any of its observers (TanStack Query's rule), an unobserved one by its last caller.
#[tokio::test(start_paused = true)]
async fn an_observed_key_is_stale_for_filters_when_stale_for_any_observer() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], Duration::ZERO);
    let a = client.watch(&opts.clone().stale_time(Duration::from_secs(10)));
    let b = client.watch(&opts.stale_time(Duration::from_secs(100)));
    let _sa = a.subscribe(|_| {});
    settle().await;
    let _sb = b.subscribe(|_| {});
    settle().await;
    assert_eq!(calls.get(), 1);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        a.state().is_stale() && !b.state().is_stale(),
        "each by its own"
    );
    assert!(client
        .get_query_state::<u32>(&key!["k"])
        .unwrap()
        .is_stale());
    assert_eq!(
        client.refetch_queries(QueryFilter::all().stale(true)).await,
        1
    );
    assert_eq!(calls.get(), 2);
}

// ---------------------------------------------------------------------------------------
// Bullet 4: listeners are told when data turns stale
// ---------------------------------------------------------------------------------------

type Log = Arc<Mutex<Vec<QueryState<u32>>>>;

fn record(observer: &QueryObserver<u32>) -> (Log, stackquery::Subscription) {
    let log: Log = Arc::default();
    let l = log.clone();
    let sub = observer.subscribe(move |s: &QueryState<u32>| l.lock().unwrap().push(s.clone()));
    (log, sub)
}

fn last_stale(log: &Log) -> bool {
    log.lock().unwrap().last().expect("told at once").is_stale()
}

/// An observer's state says whether its data is stale, but nothing told its listeners
/// when that changed: the last state they got said "fresh" until something else happened
/// to the entry. Now each observer delivers a new state when its data crosses its own stale
/// time — one timer per entry on the client's timer queue, armed at the earliest observer
/// deadline not yet passed, moved on to the next one when it fires, and re-armed after
/// every data write. `Duration::MAX` means never stale: no notice, ever.
#[tokio::test(start_paused = true)]
async fn listeners_are_told_when_their_data_turns_stale() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], Duration::ZERO);
    let short = client.watch(&opts.clone().stale_time(Duration::from_secs(5)));
    let long = client.watch(&opts.clone().stale_time(Duration::from_secs(20)));
    let never = client.watch(&opts.stale_time(Duration::MAX));
    let (short_log, _s1) = record(&short);
    let (long_log, _s2) = record(&long);
    let (never_log, _s3) = record(&never);
    settle().await;
    assert_eq!(calls.get(), 1);
    assert!(!last_stale(&short_log) && !last_stale(&long_log) && !last_stale(&never_log));

    tokio::time::sleep(Duration::from_secs(4)).await;
    settle().await;
    assert!(!last_stale(&short_log), "4 s: still fresh");
    tokio::time::sleep(SEC).await;
    settle().await;
    assert!(last_stale(&short_log), "5 s: told it is stale");
    assert!(!last_stale(&long_log));
    tokio::time::sleep(Duration::from_secs(15)).await;
    settle().await;
    assert!(last_stale(&long_log), "20 s: the next deadline fired too");

    // A write makes the data fresh again, and the notices are due again from there.
    client.set_query_data(key!["k"], 9_u32).unwrap();
    assert!(!last_stale(&short_log) && !last_stale(&long_log));
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert!(last_stale(&short_log) && !last_stale(&long_log));
    tokio::time::sleep(Duration::from_secs(15)).await;
    settle().await;
    assert!(last_stale(&long_log));

    let told = never_log.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(10 * 365 * 24 * 3600)).await;
    settle().await;
    assert!(!last_stale(&never_log), "Duration::MAX: never stale");
    assert_eq!(
        never_log.lock().unwrap().len(),
        told,
        "and never told anything"
    );
}

// ---------------------------------------------------------------------------------------
// Bullet 6: polling survives its runtime; `Duration::MAX` never polls
// ---------------------------------------------------------------------------------------

/// The poll loop was a task spawned on the runtime of the first subscriber; a client that
/// outlives that runtime (in a `static` shared by several `#[tokio::test]`s, or behind a
/// sync wrapper that builds a runtime per call) lost its polling with it, silently and for
/// good. Polls are now timers on the client's timer queue, whose driver restarts on the
/// current runtime: polling goes on.
#[test]
fn polling_survives_the_death_of_the_runtime_it_started_on() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["poll"], Duration::ZERO);
    let observer = client.watch(&opts.refetch_interval(SEC));
    let sub = on_a_fresh_runtime(async {
        let sub = observer.subscribe(|_| {});
        for _ in 0..3 {
            tokio::time::sleep(SEC).await;
            settle().await;
        }
        sub
    });
    let before = calls.get();
    assert!(before >= 3, "polled on the first runtime ({before})");
    on_a_fresh_runtime(async {
        // The next call of the wrapper: it uses the observer on the new runtime.
        let _ = observer.state();
        for _ in 0..6 {
            tokio::time::sleep(SEC).await;
            settle().await;
        }
        assert!(
            calls.get() >= before + 3,
            "polling went on on the second runtime ({} after {before})",
            calls.get()
        );
    });
    drop(sub);
}

/// Counts panics raised on the calling thread (a current-thread runtime runs its tasks on
/// the test's thread, so a panic inside a spawned task counts too).
fn panics_on_this_thread() -> Arc<AtomicU32> {
    let me = std::thread::current().id();
    let count = Arc::new(AtomicU32::new(0));
    let c = count.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == me {
            c.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    count
}

/// `refetch_interval(Duration::MAX)` made the poll task compute `now + interval`, which
/// overflows: the task died with a panic. Every user-given duration saturates, and an
/// interval past the clock's range means "never poll".
#[tokio::test(start_paused = true)]
async fn a_refetch_interval_of_duration_max_never_polls_and_never_panics() {
    let panics = panics_on_this_thread();
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], Duration::ZERO);
    let observer = client.watch(&opts.refetch_interval(Duration::MAX));
    let _sub = observer.subscribe(|_| {});
    settle().await;
    tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
    settle().await;
    assert_eq!(calls.get(), 1, "the first subscriber's fetch only");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "nothing panicked");
}

// ---------------------------------------------------------------------------------------
// Bullets 5 and 7: user code runs with no internal lock held, under one panic policy
// ---------------------------------------------------------------------------------------

/// Runs `body` on its own thread and runtime (paused clock) and fails if it has not
/// finished within 20 s of real time: a deadlock fails the test instead of hanging it.
fn with_watchdog<F, Fut>(what: &'static str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(body());
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(()) => worker.join().expect("finished"),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("deadlock: {what} did not finish within 20 s")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(worker.join().expect_err("the body panicked"))
        }
    }
}

/// Calls back into the observer and the client from inside a piece of user code, the
/// first time that piece runs (later runs return at once, so a callback that triggers
/// the same user code again cannot recurse forever).
#[derive(Clone)]
struct CallBack {
    client: QueryClient,
    observer: Arc<Mutex<Option<QueryObserver<Sel, u32>>>>,
    /// The pieces of user code that have called back so far.
    done: Arc<Mutex<Vec<&'static str>>>,
}

impl CallBack {
    fn run(&self, what: &'static str) {
        {
            let mut done = self.done.lock().unwrap();
            if done.contains(&what) {
                return;
            }
            done.push(what);
        }
        let observer = self.observer.lock().unwrap().clone();
        let c = &self.client;
        if let Some(o) = observer {
            let _ = o.state();
            drop(o.subscribe(|_| {}));
            let _ = o.refetch().now_or_never();
        }
        let _ = c.get_query_data::<u32>(&key!["k"]);
        let _ = c.get_query_state::<u32>(&key!["k"]);
        c.set_query_data(key!["other", what], 1_u32).unwrap();
        let _ = c.invalidate_queries(key!["other"]).now_or_never();
    }
}

/// The selected type: its `PartialEq` is user code too.
struct Sel {
    value: u32,
    hook: CallBack,
}

impl PartialEq for Sel {
    fn eq(&self, other: &Self) -> bool {
        self.hook.run("PartialEq");
        self.value == other.value
    }
}

/// `select` ran under the observer's memo lock and the selected type's `PartialEq` under
/// its last-state lock, so a `select` (or an equality) that called `observer.state()`
/// deadlocked on the spot. No user code may run with an internal lock held: here every
/// piece of user code — select, PartialEq, listener, filter predicate, fetch function,
/// retry_if, and the updater of `update_query_data` — calls back into the observer
/// (`state`, `subscribe`, `refetch`) and the client (`get_query_data`, `set_query_data`,
/// `invalidate_queries` …). A watchdog turns a deadlock into a failure.
#[test]
fn every_piece_of_user_code_may_call_back_into_the_client_and_the_observer() {
    with_watchdog("user code calling back", || async {
        let client = QueryClient::new();
        let hook = CallBack {
            client: client.clone(),
            observer: Arc::default(),
            done: Arc::default(),
        };
        let h = hook.clone();
        let (opts, _) = scripted(key!["k"], move |n| {
            h.run("fetch function");
            async move {
                if n == 1 {
                    Err("first attempt fails".to_string())
                } else {
                    Ok(n)
                }
            }
        });
        let h = hook.clone();
        let opts = opts
            .retry_if(move |_, _| {
                h.run("retry_if");
                true
            })
            .retry_delay(|_| Duration::ZERO);
        let h = hook.clone();
        let observer = client.watch(&opts).select(move |v: &u32| Sel {
            value: *v,
            hook: h.clone(),
        });
        *hook.observer.lock().unwrap() = Some(observer.clone());
        let h = hook.clone();
        let _sub = observer.subscribe(move |_: &QueryState<Sel>| h.run("listener"));
        for _ in 0..5 {
            tokio::time::sleep(SEC).await;
            settle().await;
        }
        client.set_query_data(key!["k"], 40_u32).unwrap();
        client.set_query_data(key!["k"], 41_u32).unwrap();
        let h = hook.clone();
        client
            .update_query_data(key!["k"], move |old: Option<&u32>| {
                h.run("updater");
                old.map(|v| v + 1)
            })
            .unwrap();
        let h = hook.clone();
        client
            .refetch_queries(QueryFilter::all().predicate(move |_| {
                h.run("predicate");
                true
            }))
            .await;
        settle().await;
        let mut done = hook.done.lock().unwrap().clone();
        done.sort_unstable();
        // `select` is the closure building `Sel`: it ran whenever `PartialEq` did.
        assert_eq!(
            done,
            [
                "PartialEq",
                "fetch function",
                "listener",
                "predicate",
                "retry_if",
                "updater"
            ]
        );
    });
}

/// A `select` that calls `observer.state()` on its own observer (the shape of the original
/// report): it deadlocked on the memo lock. Now it runs select again for the inner call
/// (no lock is held), and both calls see the selected value.
#[test]
fn a_select_that_reads_its_own_observer_does_not_deadlock() {
    with_watchdog("select calling state()", || async {
        let client = QueryClient::new();
        client.set_query_data(key!["k"], 1_u32).unwrap();
        let (opts, _) = slow_counter(key!["k"], SEC);
        let me: Arc<Mutex<Option<QueryObserver<u32, u32>>>> = Arc::default();
        let inside = Arc::new(AtomicBool::new(false));
        let (m, i) = (me.clone(), inside.clone());
        let observer = client.watch(&opts.enabled(false)).select(move |v: &u32| {
            if !i.swap(true, Ordering::SeqCst) {
                let o = m.lock().unwrap().clone();
                if let Some(o) = o {
                    assert_eq!(o.state().data.as_deref(), Some(&(v * 10)));
                }
            }
            v * 10
        });
        *me.lock().unwrap() = Some(observer.clone());
        assert_eq!(observer.state().data.as_deref(), Some(&10));
        assert!(inside.load(Ordering::SeqCst));
    });
}

/// Bullet 7. The selected type's `PartialEq` ran with no panic guard: a panicking equality
/// unwound out of the delivery, through the entry's notification, into whoever wrote the
/// data — `set_query_data` itself panicked. Every piece of user code in the observer now
/// runs under the crate's one panic policy: the panic is contained and logged, and the
/// comparison counts as "changed", so listeners still get the new state.
#[tokio::test(start_paused = true)]
async fn a_panicking_equality_is_contained_and_counts_as_changed() {
    #[derive(Debug)]
    struct Touchy(u32);
    impl PartialEq for Touchy {
        fn eq(&self, _: &Self) -> bool {
            panic!("equality bug")
        }
    }
    let client = QueryClient::new();
    client.set_query_data(key!["k"], 1_u32).unwrap();
    let (opts, _) = slow_counter(key!["k"], SEC);
    let observer = client
        .watch(&opts.enabled(false))
        .select(|v: &u32| Touchy(*v));
    let seen = Arc::new(AtomicU32::new(0));
    let s = seen.clone();
    let _sub = observer.subscribe(move |st: &QueryState<Touchy>| {
        if let Some(t) = &st.data {
            s.store(t.0, Ordering::SeqCst);
        }
    });
    let write = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        client.set_query_data(key!["k"], 2_u32)
    }));
    assert!(
        matches!(write, Ok(Ok(()))),
        "the writer is not hit by the panic"
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the new state was delivered"
    );
}
