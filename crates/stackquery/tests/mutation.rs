//! Mutations: states, optimistic updates with rollback, retries, concurrency, scopes,
//! contained panics, subscriptions and reset.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stackquery::{
    key, MutationOptions, MutationState, MutationStatus, QueryClient, QueryError, QueryKey,
};
use tokio::time::Instant;

use MutationStatus::{Error as Failed, Idle, Pending, Success};

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

/// Records every state a listener receives.
#[derive(Clone)]
struct States<T>(Arc<Mutex<Vec<MutationState<T>>>>);

impl<T: Send + Sync + 'static> States<T> {
    fn new() -> Self {
        States(Arc::new(Mutex::new(Vec::new())))
    }
    fn listener(&self) -> impl Fn(&MutationState<T>) + Send + Sync + 'static {
        let s = self.0.clone();
        move |state: &MutationState<T>| s.lock().unwrap().push(state.clone())
    }
    fn statuses(&self) -> Vec<MutationStatus> {
        self.0.lock().unwrap().iter().map(|s| s.status).collect()
    }
    fn all(&self) -> Vec<MutationState<T>> {
        self.0.lock().unwrap().clone()
    }
}

/// Counts calls.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicU32>);

impl Calls {
    fn next(&self) -> u32 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Lets spawned tasks run without moving the paused clock.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn todos() -> QueryKey {
    key!["todos"]
}

/// A mutation over `u32` that logs `start n` / `end n` around a sleep of `n` ms.
fn logged_sleeper(log: &Log) -> MutationOptions<u32, u32> {
    let log = log.clone();
    MutationOptions::new(move |n: u32| {
        let log = log.clone();
        async move {
            log.push(format!("start {n}"));
            tokio::time::sleep(Duration::from_millis(u64::from(n))).await;
            log.push(format!("end {n}"));
            Ok::<_, String>(n)
        }
    })
}

// ---------------------------------------------------------------------------------------
// States
// ---------------------------------------------------------------------------------------

/// A successful call goes `Idle → Pending → Success`; `submitted_at` is stamped when the
/// call starts and kept, `settled_at` only once it is done, and the listener sees each
/// state in order.
#[tokio::test(start_paused = true)]
async fn states_go_idle_pending_success_with_timestamps() {
    let client = QueryClient::new();
    let m = client.mutation(MutationOptions::new(|n: u32| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, String>(n + 1)
    }));
    assert!(m.state().is_idle());
    let states = States::new();
    let _sub = m.subscribe(states.listener());

    let call = tokio::spawn(m.mutate(1));
    settle().await;
    let pending = m.state();
    assert!(pending.is_pending());
    assert!(pending.submitted_at.is_some() && pending.settled_at.is_none());
    assert!(pending.data.is_none() && pending.error.is_none());

    assert_eq!(*call.await.unwrap().unwrap(), 2);
    let done = m.state();
    assert!(done.is_success());
    assert_eq!(done.data.as_deref(), Some(&2));
    assert_eq!(done.submitted_at, pending.submitted_at);
    assert!(done.settled_at >= done.submitted_at);
    assert_eq!(done.failure_count, 0);
    assert_eq!(states.statuses(), [Idle, Pending, Success]);
}

/// A failing call goes `Idle → Pending → Error` with the function's error as
/// `QueryError::Fetch` (downcastable to the original type), `settled_at` stamped and
/// one failure counted.
#[tokio::test(start_paused = true)]
async fn failed_call_ends_in_error_with_settled_at() {
    let client = QueryClient::new();
    let m = client.mutation(MutationOptions::new(|_: ()| async {
        Err::<u32, _>(std::io::Error::other("disk full"))
    }));
    let states = States::new();
    let _sub = m.subscribe(states.listener());
    let err = m.mutate(()).await.unwrap_err();
    let source = err.fetch_source().expect("a fetch error");
    assert!(source.downcast_ref::<std::io::Error>().is_some());
    let s = m.state();
    assert!(s.is_error());
    assert!(s.settled_at.is_some() && s.submitted_at.is_some());
    assert_eq!(s.failure_count, 1);
    assert!(s.failure_reason.is_some() && s.error.is_some() && s.data.is_none());
    assert_eq!(states.statuses(), [Idle, Pending, Failed]);
}

/// `mutate()` only queues the call; until its future is polled nothing runs and the
/// state does not change. Dropping the unpolled future leaves no trace.
#[tokio::test(start_paused = true)]
async fn mutate_future_is_lazy_until_polled() {
    let client = QueryClient::new();
    let calls = Calls::default();
    let c = calls.clone();
    let m = client.mutation(MutationOptions::new(move |_: ()| {
        c.next();
        async { Ok::<_, String>(()) }
    }));
    let fut = m.mutate(());
    settle().await;
    assert!(m.state().is_idle());
    assert_eq!(calls.get(), 0);
    drop(fut);
    assert!(m.state().is_idle());
    m.mutate(()).await.unwrap();
    assert_eq!(calls.get(), 1);
}

// ---------------------------------------------------------------------------------------
// Optimistic updates and callbacks
// ---------------------------------------------------------------------------------------

/// The classic todo list: `on_mutate` appends the new todo to the cached list at once
/// and returns the old list as its context; the server refuses; `on_error` puts the old
/// list back. While the request is in flight the list shows the optimistic todo, and
/// `on_settled` runs last, after the rollback.
#[tokio::test(start_paused = true)]
async fn optimistic_update_is_rolled_back_on_error() {
    let client = QueryClient::new();
    client
        .set_query_data(todos(), vec!["buy milk".to_string()])
        .unwrap();
    let (c1, c2, c3) = (client.clone(), client.clone(), client.clone());
    let log = Log::default();
    let (l1, l2) = (log.clone(), log.clone());
    let add = client.mutation(
        MutationOptions::new(|todo: String| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<String, _>(format!("server refused {todo:?}"))
        })
        .on_mutate(move |todo: &String| {
            let previous = c1.get_query_data::<Vec<String>>(&todos());
            let mut next = previous.as_deref().cloned().unwrap_or_default();
            next.push(todo.clone());
            c1.set_query_data(todos(), next).unwrap();
            previous
        })
        .on_success(|_, _, _| unreachable!("the server refuses"))
        .on_error(move |err, todo, previous| {
            assert!(matches!(err, QueryError::Fetch(_)));
            l1.push(format!("error for {todo}"));
            if let Some(Some(previous)) = previous {
                c2.set_query_data_arc(todos(), previous.clone()).unwrap();
            }
        })
        .on_settled(move |data, err, _, _| {
            assert!(data.is_none() && err.is_some());
            let n = c3.get_query_data::<Vec<String>>(&todos()).unwrap().len();
            l2.push(format!("settled with {n} todo(s)"));
        }),
    );

    let call = tokio::spawn(add.mutate("walk the dog".into()));
    settle().await;
    let during = client.get_query_data::<Vec<String>>(&todos()).unwrap();
    assert_eq!(
        *during,
        ["buy milk", "walk the dog"],
        "optimistic todo shown"
    );

    let err = call.await.unwrap().unwrap_err();
    assert!(err.report().to_string().contains("server refused"));
    let after = client.get_query_data::<Vec<String>>(&todos()).unwrap();
    assert_eq!(*after, ["buy milk"], "rolled back");
    assert_eq!(
        log.lines(),
        ["error for walk the dog", "settled with 1 todo(s)"]
    );
    assert!(add.state().is_error());
}

/// On success the optimistic entry is replaced by the server's answer in `on_success`
/// (which receives the data, the variables and the context). The callbacks run before
/// the state turns `Success`, so a listener sees `Success` only once the cache holds the
/// confirmed list.
#[tokio::test(start_paused = true)]
async fn optimistic_update_is_confirmed_on_success() {
    let client = QueryClient::new();
    client
        .set_query_data(todos(), Vec::<String>::new())
        .unwrap();
    let (c1, c2) = (client.clone(), client.clone());
    let log = Log::default();
    let (l1, l2) = (log.clone(), log.clone());
    let add = client.mutation(
        MutationOptions::new(|todo: String| async move { Ok::<_, String>(format!("{todo} (#1)")) })
            .on_mutate(move |todo: &String| {
                let previous = c1.get_query_data::<Vec<String>>(&todos());
                c1.update_query_data(todos(), |old: Option<&Vec<String>>| {
                    let mut next = old.cloned().unwrap_or_default();
                    next.push(format!("{todo} (saving)"));
                    Some(next)
                })
                .unwrap();
                previous
            })
            .on_success(move |saved: &String, todo: &String, ctx| {
                assert!(matches!(ctx, Some(Some(prev)) if prev.is_empty()));
                c2.update_query_data(todos(), |old: Option<&Vec<String>>| {
                    let mut next = old.cloned().unwrap_or_default();
                    let pending = format!("{todo} (saving)");
                    next.retain(|t| *t != pending);
                    next.push(saved.clone());
                    Some(next)
                })
                .unwrap();
                l1.push("on_success");
            })
            .on_settled(move |data, err, _, _| {
                assert!(data.is_some() && err.is_none());
                l2.push("on_settled");
            }),
    );
    let l3 = log.clone();
    let _sub = add.subscribe(move |s| {
        if s.is_success() {
            l3.push("state Success");
        }
    });
    let saved = add.mutate("write tests".into()).await.unwrap();
    assert_eq!(saved.as_str(), "write tests (#1)");
    let list = client.get_query_data::<Vec<String>>(&todos()).unwrap();
    assert_eq!(*list, ["write tests (#1)"]);
    assert_eq!(log.lines(), ["on_success", "on_settled", "state Success"]);
    assert!(add.state().is_success());
}

/// The async `on_mutate` form: its future's output is the context the later callbacks
/// receive; it runs before the mutation function.
#[tokio::test(start_paused = true)]
async fn async_on_mutate_context_reaches_every_callback() {
    let client = QueryClient::new();
    let log = Log::default();
    let (l0, l1, l2, l3) = (log.clone(), log.clone(), log.clone(), log.clone());
    let m = client.mutation(
        MutationOptions::new(move |n: u32| {
            let l = l0.clone();
            async move {
                l.push(format!("fn {n}"));
                Ok::<_, String>(n * 10)
            }
        })
        .on_mutate_async(move |n: u32| {
            let l = l1.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                l.push(format!("on_mutate {n}"));
                format!("ctx-{n}")
            }
        })
        .on_success(move |data, vars, ctx| {
            l2.push(format!("success {data} {vars} {}", ctx.unwrap()));
        })
        .on_settled(move |data, _, _, ctx| {
            l3.push(format!("settled {:?} {:?}", data, ctx));
        }),
    );
    assert_eq!(*m.mutate(4).await.unwrap(), 40);
    assert_eq!(
        log.lines(),
        [
            "on_mutate 4",
            "fn 4",
            "success 40 4 ctx-4",
            "settled Some(40) Some(\"ctx-4\")"
        ]
    );
}

/// Callbacks registered before `on_mutate` keep working after it changes the context
/// type; without `on_mutate` the context is `None`.
#[tokio::test(start_paused = true)]
async fn callbacks_before_on_mutate_and_without_on_mutate() {
    let client = QueryClient::new();
    let log = Log::default();
    let (l1, l2) = (log.clone(), log.clone());
    let with = client.mutation(
        MutationOptions::new(|n: u8| async move { Ok::<_, String>(n) })
            .on_success(move |_, _, ctx: Option<&()>| l1.push(format!("before: {ctx:?}")))
            .on_mutate(|_: &u8| 7_u64),
    );
    let without = client.mutation(
        MutationOptions::new(|n: u8| async move { Ok::<_, String>(n) })
            .on_success(move |_, _, ctx| l2.push(format!("without: {ctx:?}"))),
    );
    with.mutate(1).await.unwrap();
    without.mutate(1).await.unwrap();
    assert_eq!(log.lines(), ["before: Some(())", "without: None"]);
}

// ---------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------

/// Mutations do not retry by default: one failure, one call.
#[tokio::test(start_paused = true)]
async fn mutations_do_not_retry_by_default() {
    let client = QueryClient::builder().retry(5).build(); // the query default is not used
    let calls = Calls::default();
    let c = calls.clone();
    let m = client.mutation(MutationOptions::new(move |_: ()| {
        c.next();
        async { Err::<(), _>("nope".to_string()) }
    }));
    m.mutate(()).await.unwrap_err();
    assert_eq!(calls.get(), 1);
}

/// `retry(2)` with a custom delay: three attempts at 0, 100 and 300 ms on the paused
/// clock; while it retries the state stays `Pending` with a growing `failure_count`;
/// the third attempt succeeds and the count goes back to 0.
#[tokio::test(start_paused = true)]
async fn retries_count_and_delay_on_paused_clock() {
    let client = QueryClient::new();
    let start = Instant::now();
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let s = stamps.clone();
    let calls = Calls::default();
    let c = calls.clone();
    let m = client.mutation(
        MutationOptions::new(move |_: ()| {
            let n = c.next();
            s.lock().unwrap().push(start.elapsed().as_millis());
            async move {
                if n < 3 {
                    Err(format!("attempt {n} failed"))
                } else {
                    Ok(n)
                }
            }
        })
        .retry(2)
        .retry_delay(|attempt| Duration::from_millis(100 << attempt)),
    );
    let states = States::new();
    let _sub = m.subscribe(states.listener());
    assert_eq!(*m.mutate(()).await.unwrap(), 3);
    assert_eq!(*stamps.lock().unwrap(), [0, 100, 300]);
    let counts: Vec<(MutationStatus, u32)> = states
        .all()
        .iter()
        .map(|s| (s.status, s.failure_count))
        .collect();
    assert_eq!(
        counts,
        [
            (Idle, 0),
            (Pending, 0),
            (Pending, 1),
            (Pending, 2),
            (Success, 0)
        ]
    );
    assert!(states.all()[3]
        .failure_reason
        .as_ref()
        .is_some_and(|e| e.report().to_string().contains("attempt 2")));
}

/// Retries spent: the call fails with the last error, `failure_count` = attempts, and
/// the default delays (1 s, 2 s) apply when none is given.
#[tokio::test(start_paused = true)]
async fn retries_spent_use_default_delays_and_report_the_last_error() {
    let client = QueryClient::new();
    let start = Instant::now();
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let s = stamps.clone();
    let calls = Calls::default();
    let c = calls.clone();
    let m = client.mutation(
        MutationOptions::new(move |_: ()| {
            let n = c.next();
            s.lock().unwrap().push(start.elapsed().as_secs());
            async move { Err::<(), _>(format!("fail {n}")) }
        })
        .retry(2),
    );
    let err = m.mutate(()).await.unwrap_err();
    assert!(err.report().to_string().contains("fail 3"));
    assert_eq!(*stamps.lock().unwrap(), [0, 1, 3]);
    let s = m.state();
    assert!(s.is_error());
    assert_eq!(s.failure_count, 3);
}

/// `retry_if`: the predicate sees the failure count and the error; here it retries
/// only "transient" errors.
#[tokio::test(start_paused = true)]
async fn retry_if_predicate_decides() {
    let client = QueryClient::new();
    let calls = Calls::default();
    let c = calls.clone();
    let m = client.mutation(
        MutationOptions::new(move |_: ()| {
            let n = c.next();
            async move { Err::<(), _>(if n == 1 { "transient" } else { "fatal" }.to_string()) }
        })
        .retry_if(|count, err| count < 10 && err.report().to_string().contains("transient"))
        .retry_delay(|_| Duration::from_millis(1)),
    );
    let err = m.mutate(()).await.unwrap_err();
    assert!(err.report().to_string().contains("fatal"));
    assert_eq!(calls.get(), 2);
}

// ---------------------------------------------------------------------------------------
// Concurrency and scopes
// ---------------------------------------------------------------------------------------

/// Three unscoped calls at once all run, overlapping (all start before any ends).
#[tokio::test(start_paused = true)]
async fn concurrent_unscoped_calls_all_run() {
    let client = QueryClient::new();
    let log = Log::default();
    let m = client.mutation(logged_sleeper(&log));
    let (a, b, c) = tokio::join!(m.mutate(30), m.mutate(20), m.mutate(10));
    assert_eq!((*a.unwrap(), *b.unwrap(), *c.unwrap()), (30, 20, 10));
    let lines = log.lines();
    assert_eq!(&lines[..3], ["start 30", "start 20", "start 10"]);
    assert_eq!(&lines[3..], ["end 10", "end 20", "end 30"]);
}

/// The state follows the latest `mutate` call: an older call that finishes after it
/// (here the slow first call) does not overwrite its state; each caller still gets its
/// own result.
#[tokio::test(start_paused = true)]
async fn state_follows_the_latest_call_even_if_an_older_one_finishes_last() {
    let client = QueryClient::new();
    let m = client.mutation(logged_sleeper(&Log::default()));
    let slow = tokio::spawn(m.mutate(200));
    let fast = tokio::spawn(m.mutate(10));
    assert_eq!(*fast.await.unwrap().unwrap(), 10);
    assert_eq!(m.state().data.as_deref(), Some(&10));
    assert_eq!(*slow.await.unwrap().unwrap(), 200);
    let s = m.state();
    assert!(s.is_success());
    assert_eq!(
        s.data.as_deref(),
        Some(&10),
        "the older call does not take over"
    );
}

/// With a scope, calls run one after another in the order `mutate()` was called, even
/// when their futures are polled in the opposite order; the scope is per client and
/// spans different mutations; a queued call shows `Pending` while it waits.
#[tokio::test(start_paused = true)]
async fn scope_serialises_calls_in_call_order() {
    let client = QueryClient::new();
    let log = Log::default();
    let m1 = client.mutation(logged_sleeper(&log).scope("todos"));
    let m2 = client.mutation(logged_sleeper(&log).scope("todos"));
    let first = m1.mutate(30);
    let second = m2.mutate(10);
    let third = m1.mutate(20);
    let start = Instant::now();
    // Poll in reverse: the queue order was fixed by the `mutate()` calls.
    let waiting = tokio::spawn(async move { tokio::join!(third, second, first) });
    settle().await;
    assert!(m2.state().is_pending(), "queued counts as pending");
    let (c, b, a) = waiting.await.unwrap();
    assert_eq!((*a.unwrap(), *b.unwrap(), *c.unwrap()), (30, 10, 20));
    assert_eq!(
        log.lines(),
        ["start 30", "end 30", "start 10", "end 10", "start 20", "end 20"]
    );
    assert_eq!(start.elapsed(), Duration::from_millis(60), "no overlap");
}

/// Different scopes (and unscoped calls) do not wait for each other.
#[tokio::test(start_paused = true)]
async fn different_scopes_run_concurrently() {
    let client = QueryClient::new();
    let log = Log::default();
    let a = client.mutation(logged_sleeper(&log).scope("a"));
    let b = client.mutation(logged_sleeper(&log).scope("b"));
    let free = client.mutation(logged_sleeper(&log));
    let start = Instant::now();
    let (x, y, z) = tokio::join!(a.mutate(50), b.mutate(50), free.mutate(50));
    assert!(x.is_ok() && y.is_ok() && z.is_ok());
    assert_eq!(start.elapsed(), Duration::from_millis(50));
}

/// A scope belongs to one client: the same scope id on two clients does not serialise.
#[tokio::test(start_paused = true)]
async fn scopes_are_per_client() {
    let (c1, c2) = (QueryClient::new(), QueryClient::new());
    let log = Log::default();
    let a = c1.mutation(logged_sleeper(&log).scope("s"));
    let b = c2.mutation(logged_sleeper(&log).scope("s"));
    let start = Instant::now();
    let (x, y) = tokio::join!(a.mutate(40), b.mutate(40));
    assert!(x.is_ok() && y.is_ok());
    assert_eq!(start.elapsed(), Duration::from_millis(40));
}

/// Call A of a scope is running when its task is aborted; B, queued behind it, runs at
/// once. A's `on_error` / `on_settled` still run (with `Cancelled` and A's context), so
/// its optimistic update is rolled back.
#[tokio::test(start_paused = true)]
async fn aborted_scoped_mutate_does_not_block_the_next() {
    let client = QueryClient::new();
    let log = Log::default();
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    let m = client.mutation(
        logged_sleeper(&log)
            .scope("s")
            .on_mutate(move |n: &u32| {
                l1.push(format!("on_mutate {n}"));
                *n
            })
            .on_error(move |err, n, ctx| {
                assert!(err.is_cancelled());
                l2.push(format!("on_error {n} ctx {ctx:?}"));
            })
            .on_settled(move |_, err, n, _| {
                l3.push(format!("on_settled {n} cancelled={}", err.is_some()));
            }),
    );
    let a = tokio::spawn(m.mutate(1000));
    let b = tokio::spawn(m.mutate(10));
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    a.abort();
    assert!(a.await.unwrap_err().is_cancelled());
    assert_eq!(*b.await.unwrap().unwrap(), 10);
    assert_eq!(start.elapsed(), Duration::from_millis(15));
    assert_eq!(
        log.lines(),
        [
            "on_mutate 1000",
            "start 1000",
            "on_error 1000 ctx Some(1000)",
            "on_settled 1000 cancelled=true",
            "on_mutate 10",
            "start 10",
            "end 10",
            "on_settled 10 cancelled=false"
        ]
    );
    assert!(m.state().is_success());
}

/// A call queued behind a running one is dropped (never polled, or polled and then
/// dropped while waiting): it leaves the queue without running any callback, and the
/// call after it runs as soon as the running one ends. A dropped call that was shown
/// as `Pending` ends as `Error(Cancelled)`.
#[tokio::test(start_paused = true)]
async fn dropped_queued_calls_leave_the_queue() {
    let client = QueryClient::new();
    let log = Log::default();
    let m = client.mutation(logged_sleeper(&log).scope("s"));
    let waiter = client.mutation(logged_sleeper(&log).scope("s"));
    let running = tokio::spawn(m.mutate(50));
    let never_polled = m.mutate(1);
    let polled_then_dropped = tokio::spawn(waiter.mutate(2));
    let last = tokio::spawn(m.mutate(30));
    settle().await;
    assert!(waiter.state().is_pending());
    drop(never_polled);
    polled_then_dropped.abort();
    settle().await;
    let s = waiter.state();
    assert!(s.is_error() && s.error.as_ref().is_some_and(QueryError::is_cancelled));
    let start = Instant::now();
    running.await.unwrap().unwrap();
    last.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(80));
    assert_eq!(log.lines(), ["start 50", "end 50", "start 30", "end 30"]);
}

// ---------------------------------------------------------------------------------------
// Contained panics
// ---------------------------------------------------------------------------------------

/// A mutation function that panics (before or inside its future) fails the call with
/// `Panicked` — never retried — and the mutation stays usable.
#[tokio::test(start_paused = true)]
async fn panicking_mutation_fn_becomes_an_error() {
    let client = QueryClient::new();
    let calls = Calls::default();
    let c = calls.clone();
    let m = client.mutation(
        MutationOptions::new(move |mode: u8| {
            c.next();
            if mode == 0 {
                panic!("panic while building the future");
            }
            async move {
                if mode == 1 {
                    panic!("panic inside the future");
                }
                Ok::<_, String>(mode)
            }
        })
        .retry(3),
    );
    for mode in [0, 1] {
        let err = m.mutate(mode).await.unwrap_err();
        assert!(matches!(err, QueryError::Panicked(_)), "{err}");
        let s = m.state();
        assert!(s.is_error());
        assert_eq!(s.failure_count, 1);
    }
    assert_eq!(calls.get(), 2, "a panic is not retried");
    assert_eq!(*m.mutate(2).await.unwrap(), 2);
    assert!(m.state().is_success());
}

/// A panicking `on_mutate` (sync or async) fails the call with `Panicked` without
/// running the mutation function; `on_error` / `on_settled` run with no context.
#[tokio::test(start_paused = true)]
async fn panicking_on_mutate_fails_the_call_without_running_the_function() {
    let client = QueryClient::new();
    let calls = Calls::default();
    let log = Log::default();
    let make = |calls: &Calls, log: &Log| {
        let c = calls.clone();
        let l = log.clone();
        MutationOptions::new(move |n: u8| {
            c.next();
            async move { Ok::<_, String>(n) }
        })
        .on_settled(move |_, err, _, _| l.push(format!("settled: {}", err.unwrap())))
    };
    let l = log.clone();
    let sync = client.mutation(
        make(&calls, &log)
            .on_mutate(|n: &u8| -> u8 {
                if *n == 0 {
                    panic!("sync on_mutate");
                }
                *n
            })
            .on_error(move |_, _, ctx| l.push(format!("on_error ctx {ctx:?}"))),
    );
    let asynchronous = client.mutation(make(&calls, &log).on_mutate_async(|n: u8| async move {
        tokio::task::yield_now().await;
        if n == 0 {
            panic!("async on_mutate");
        }
        n
    }));
    for m in [&sync, &asynchronous] {
        let err = m.mutate(0).await.unwrap_err();
        assert!(matches!(err, QueryError::Panicked(_)));
        assert!(m.state().is_error());
    }
    assert_eq!(calls.get(), 0);
    assert_eq!(
        log.lines(),
        [
            "on_error ctx None",
            "settled: user code panicked: sync on_mutate",
            "settled: user code panicked: async on_mutate"
        ]
    );
    assert_eq!(*sync.mutate(5).await.unwrap(), 5, "still usable");
}

/// Regression guard from the issue: a panicking `on_success` never re-runs the mutation
/// function (no duplicate write, even with retries on) and never turns the success into
/// an error; `on_settled` still runs.
#[tokio::test(start_paused = true)]
async fn panicking_on_success_keeps_the_success_and_does_not_rerun() {
    let client = QueryClient::new();
    let calls = Calls::default();
    let c = calls.clone();
    let settled = Calls::default();
    let s = settled.clone();
    let m = client.mutation(
        MutationOptions::new(move |n: u32| {
            c.next();
            async move { Ok::<_, String>(n) }
        })
        .retry(3)
        .on_success(|_, _, _| panic!("bug in on_success"))
        .on_settled(move |data, err, _, _| {
            assert!(data.is_some() && err.is_none());
            s.next();
        }),
    );
    assert_eq!(*m.mutate(9).await.unwrap(), 9);
    assert_eq!(calls.get(), 1);
    assert_eq!(settled.get(), 1);
    assert!(m.state().is_success());
}

/// Panicking `on_error` and `on_settled` are logged only: the call fails with its own
/// error, not a panic, and the state settles.
#[tokio::test(start_paused = true)]
async fn panicking_on_error_and_on_settled_are_contained() {
    let client = QueryClient::new();
    let m = client.mutation(
        MutationOptions::new(|_: ()| async { Err::<(), _>("real error".to_string()) })
            .on_error(|_, _, _| panic!("bug in on_error"))
            .on_settled(|_, _, _, _| panic!("bug in on_settled")),
    );
    let err = m.mutate(()).await.unwrap_err();
    assert!(matches!(err, QueryError::Fetch(_)));
    assert!(m.state().is_error());
}

/// A listener that panics — on its immediate first call and on every change — is
/// contained: the other listeners get every state, the mutation completes, and the
/// panicking listener's subscription is still a clean handle that unsubscribes.
#[tokio::test(start_paused = true)]
async fn panicking_listener_is_contained_and_others_still_run() {
    let client = QueryClient::new();
    let m = client.mutation(MutationOptions::new(
        |n: u8| async move { Ok::<_, String>(n) },
    ));
    let panics = Calls::default();
    let p = panics.clone();
    let bad = m.subscribe(move |_| {
        p.next();
        panic!("listener bug");
    });
    assert_eq!(panics.get(), 1, "called at once");
    let good = States::new();
    let _good_sub = m.subscribe(good.listener());
    assert_eq!(*m.mutate(1).await.unwrap(), 1);
    assert_eq!(good.statuses(), [Idle, Pending, Success]);
    assert_eq!(panics.get(), 3, "still subscribed after panicking");
    bad.unsubscribe();
    m.reset();
    assert_eq!(panics.get(), 3);
    assert_eq!(good.statuses(), [Idle, Pending, Success, Idle]);
}

// ---------------------------------------------------------------------------------------
// Subscriptions and reset
// ---------------------------------------------------------------------------------------

/// `subscribe` calls the listener at once with the current state, then on each change;
/// `unsubscribe()` and dropping the subscription both stop the calls.
#[tokio::test(start_paused = true)]
async fn subscribe_and_unsubscribe() {
    let client = QueryClient::new();
    let m = client.mutation(MutationOptions::new(
        |n: u8| async move { Ok::<_, String>(n) },
    ));
    m.mutate(1).await.unwrap();
    let a = States::new();
    let b = States::new();
    let sub_a = m.subscribe(a.listener());
    let sub_b = m.subscribe(b.listener());
    assert_eq!(a.statuses(), [Success], "current state at once");
    sub_a.unsubscribe();
    m.mutate(2).await.unwrap();
    drop(sub_b);
    m.reset();
    assert_eq!(a.statuses(), [Success]);
    assert_eq!(b.statuses(), [Success, Pending, Success]);
    assert_eq!(b.all()[2].data.as_deref(), Some(&2));
}

/// A listener may call back into the mutation (read its state, reset it) and the
/// client without deadlock; the reset it triggers from inside is delivered right after
/// the state it was reacting to. (A listener registered *after* the resetting one may
/// see `Idle` without the `Success` before it: delivery is latest-value, like
/// `tokio::sync::watch`. The recorder here is registered first, so it sees both.)
#[tokio::test(start_paused = true)]
async fn listener_may_call_back_into_the_mutation_and_client() {
    let client = QueryClient::new();
    let m = client.mutation(MutationOptions::new(
        |n: u8| async move { Ok::<_, String>(n) },
    ));
    let states = States::new();
    let _rec = m.subscribe(states.listener());
    let handle = m.clone();
    let c = client.clone();
    let _resetter = m.subscribe(move |s| {
        if s.is_success() {
            assert!(handle.state().is_success() || handle.state().is_idle());
            c.set_query_data(key!["last"], *s.data.as_deref().unwrap())
                .unwrap();
            handle.reset();
        }
    });
    m.mutate(3).await.unwrap();
    assert_eq!(states.statuses(), [Idle, Pending, Success, Idle]);
    assert!(m.state().is_idle());
    assert_eq!(
        client.get_query_data::<u8>(&key!["last"]).as_deref(),
        Some(&3)
    );
}

/// A listener that subscribes another listener from inside its call (the new one gets
/// the current state at once), and later drops that subscription from inside its call
/// (the dropped one is not called with the state being delivered): no deadlock.
#[tokio::test(start_paused = true)]
async fn listener_may_subscribe_and_unsubscribe_from_inside() {
    let client = QueryClient::new();
    let m = client.mutation(MutationOptions::new(
        |n: u8| async move { Ok::<_, String>(n) },
    ));
    let inner = States::new();
    let slot: Arc<Mutex<Vec<stackquery::Subscription>>> = Arc::default();
    let (h, i, sl) = (m.clone(), inner.clone(), slot.clone());
    let outer = m.subscribe(move |s| {
        if s.is_pending() {
            let sub = h.subscribe(i.listener());
            sl.lock().unwrap().push(sub);
        }
        if s.is_idle() {
            sl.lock().unwrap().clear(); // drops the inner subscription from inside
        }
    });
    m.mutate(1).await.unwrap();
    m.reset();
    assert_eq!(inner.statuses(), [Pending, Success]);
    drop(outer);
}

/// `reset()` puts an idle state back at once; the call that was running completes for
/// its caller but no longer changes the state.
#[tokio::test(start_paused = true)]
async fn reset_returns_to_idle_and_ignores_the_running_call() {
    let client = QueryClient::new();
    let m = client.mutation(logged_sleeper(&Log::default()));
    m.mutate(5).await.unwrap();
    m.reset();
    let s = m.state();
    assert!(s.is_idle() && s.data.is_none() && s.submitted_at.is_none());

    let running = tokio::spawn(m.mutate(50));
    settle().await;
    assert!(m.state().is_pending());
    m.reset();
    assert!(m.state().is_idle());
    assert_eq!(*running.await.unwrap().unwrap(), 50);
    assert!(m.state().is_idle(), "the reset call does not come back");
    m.mutate(7).await.unwrap();
    assert_eq!(m.state().data.as_deref(), Some(&7), "new calls show again");
}

/// Many calls from many threads with a listener each: every call settles, nothing is
/// left pending, and the last state every listener received is the mutation's final
/// state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn final_state_reaches_every_listener_under_concurrency() {
    let client = QueryClient::new();
    let m = client.mutation(MutationOptions::new(|n: u32| async move {
        tokio::task::yield_now().await;
        Ok::<_, String>(n)
    }));
    let recorders: Vec<States<u32>> = (0..4).map(|_| States::new()).collect();
    let _subs: Vec<_> = recorders
        .iter()
        .map(|r| m.subscribe(r.listener()))
        .collect();
    let tasks: Vec<_> = (0..200).map(|n| tokio::spawn(m.mutate(n))).collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let last = m.state();
    assert!(last.is_success());
    assert_eq!(last.data.as_deref(), Some(&199), "the latest call is shown");
    for r in &recorders {
        let seen = r.all();
        let final_seen = seen.last().unwrap();
        assert_eq!(final_seen.status, last.status);
        assert_eq!(final_seen.data, last.data);
        assert_eq!(final_seen.settled_at, last.settled_at);
    }
}

/// The handle is cheap to clone and clones share state; `mutate` futures are `Send`
/// and `'static`, so they can be spawned.
#[tokio::test(start_paused = true)]
async fn clones_share_state() {
    let client = QueryClient::new();
    let m = client.mutation(MutationOptions::new(
        |n: u8| async move { Ok::<_, String>(n) },
    ));
    let clone = m.clone();
    tokio::spawn(clone.mutate(4)).await.unwrap().unwrap();
    assert_eq!(m.state().data.as_deref(), Some(&4));
}
