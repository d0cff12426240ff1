//! The engine on a host other than tokio (`QueryClientBuilder::host`).
//!
//! The Python package (issue 14) runs the engine inside an asyncio loop: the loop's clock,
//! tasks and timers, no tokio runtime. These tests stand in for it with a small manual
//! executor and a clock that moves only when the test says so. There is no tokio runtime
//! anywhere in this file: if any part of the fetch, dedup, cache, retry or gc paths still
//! reached for tokio, a call would fail with `NoRuntime`, or never finish.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::task::ArcWake;
use stackquery::{key, Host, HostFuture, QueryClient, QueryOptions, TaskHandle};
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);

/// A clock that moves only when told to, with the sleepers waiting on it.
struct Clock {
    start: Instant,
    elapsed: Mutex<Duration>,
    sleepers: Mutex<Vec<(Instant, Waker)>>,
}

impl Clock {
    fn now(&self) -> Instant {
        self.start + *self.elapsed.lock().unwrap()
    }
}

/// A single-threaded executor on a [`Clock`].
struct ManualHost {
    clock: Arc<Clock>,
    ready: mpsc::Sender<Arc<Task>>,
    queue: Mutex<mpsc::Receiver<Arc<Task>>>,
    spawned: AtomicU32,
}

struct Task {
    future: Mutex<Option<HostFuture>>,
    ready: mpsc::Sender<Arc<Task>>,
}

impl ArcWake for Task {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        let _ = arc_self.ready.send(arc_self.clone());
    }
}

impl ManualHost {
    fn new() -> Arc<ManualHost> {
        let (ready, queue) = mpsc::channel();
        Arc::new(ManualHost {
            clock: Arc::new(Clock {
                start: Instant::now(),
                elapsed: Mutex::default(),
                sleepers: Mutex::default(),
            }),
            ready,
            queue: Mutex::new(queue),
            spawned: AtomicU32::new(0),
        })
    }

    /// Polls every task that is ready until none is.
    fn run(&self) {
        loop {
            let next = self.queue.lock().unwrap().try_recv();
            let Ok(task) = next else { return };
            let mut slot = task.future.lock().unwrap();
            if let Some(mut future) = slot.take() {
                let waker = futures::task::waker(task.clone());
                if future
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
                {
                    *slot = Some(future);
                }
            }
        }
    }

    /// Moves the clock on, wakes the sleepers that are due, and runs.
    fn advance(&self, d: Duration) {
        *self.clock.elapsed.lock().unwrap() += d;
        let now = self.clock.now();
        let due: Vec<Waker> = {
            let mut sleepers = self.clock.sleepers.lock().unwrap();
            let (due, later): (Vec<_>, Vec<_>) = sleepers.drain(..).partition(|(at, _)| *at <= now);
            *sleepers = later;
            due.into_iter().map(|(_, w)| w).collect()
        };
        due.into_iter().for_each(Waker::wake);
        self.run();
    }

    /// Runs `future` as a task of this host; its output lands in the returned slot.
    fn start<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Arc<Mutex<Option<T>>> {
        let out = Arc::new(Mutex::new(None));
        let slot = out.clone();
        let _ = self.spawn(Box::pin(async move {
            let value = future.await;
            *slot.lock().unwrap() = Some(value);
        }));
        self.run();
        out
    }
}

impl Host for ManualHost {
    fn now(&self) -> Instant {
        self.clock.now()
    }
    fn spawn(&self, task: HostFuture) -> Option<TaskHandle> {
        self.spawned.fetch_add(1, Ordering::SeqCst);
        let task = Arc::new(Task {
            future: Mutex::new(Some(task)),
            ready: self.ready.clone(),
        });
        let handle = {
            let task = task.clone();
            TaskHandle::new(move || drop(task.future.lock().unwrap().take()))
        };
        let _ = self.ready.send(task);
        Some(handle)
    }
    fn can_spawn(&self) -> bool {
        true
    }
    fn sleep_until(&self, deadline: Instant) -> HostFuture {
        let clock = self.clock.clone();
        Box::pin(std::future::poll_fn(move |cx| {
            if clock.now() >= deadline {
                Poll::Ready(())
            } else {
                clock
                    .sleepers
                    .lock()
                    .unwrap()
                    .push((deadline, cx.waker().clone()));
                Poll::Pending
            }
        }))
    }
}

/// The fetches waiting for the test to release them, oldest first.
type Gates = Arc<Mutex<Vec<futures::channel::oneshot::Sender<u32>>>>;

/// A fetch function that counts its calls and waits for the test to release each one.
fn gated(key: stackquery::QueryKey) -> (QueryOptions<u32>, Arc<AtomicU32>, Gates) {
    let calls = Arc::new(AtomicU32::new(0));
    let gates: Gates = Arc::default();
    let (c, g) = (calls.clone(), gates.clone());
    let opts = QueryOptions::new(key, move || {
        c.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = futures::channel::oneshot::channel();
        g.lock().unwrap().push(tx);
        async move { rx.await.map_err(|_| "gate dropped".to_string()) }
    });
    (opts, calls, gates)
}

fn release(gates: &Mutex<Vec<futures::channel::oneshot::Sender<u32>>>, value: u32) {
    let gate = gates.lock().unwrap().remove(0);
    gate.send(value).unwrap();
}

/// Callers of a cold key share one fetch, which the host runs; the value is then a fresh
/// hit until the host's clock says it is stale, and a stale read refreshes in a task of
/// the host. No tokio runtime exists: the host is the only place work can run.
#[test]
fn dedup_freshness_and_refresh_run_on_the_hosts_tasks_and_clock() {
    let host = ManualHost::new();
    let client = QueryClient::builder().host(host.clone()).build();
    let (opts, calls, gates) = gated(key!["user", 1]);
    let opts = opts.stale_time(10 * SEC);

    let a = host.start({
        let (client, opts) = (client.clone(), opts.clone());
        async move { client.fetch_query(&opts).await }
    });
    let b = host.start({
        let (client, opts) = (client.clone(), opts.clone());
        async move { client.fetch_query(&opts).await }
    });
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one fetch for both callers"
    );
    assert!(a.lock().unwrap().is_none() && b.lock().unwrap().is_none());
    release(&gates, 7);
    host.run();
    assert_eq!(*a.lock().unwrap().take().unwrap().unwrap(), 7);
    assert_eq!(*b.lock().unwrap().take().unwrap().unwrap(), 7);

    // Fresh by the host's clock: 9 s later (the real clock has not moved).
    host.advance(9 * SEC);
    let c = host.start({
        let (client, opts) = (client.clone(), opts.clone());
        async move { client.fetch_query(&opts).await }
    });
    assert_eq!(*c.lock().unwrap().take().unwrap().unwrap(), 7);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a fresh hit");

    // Stale at 11 s: the stale value at once, and one refresh in a task of the host.
    host.advance(2 * SEC);
    let d = host.start({
        let (client, opts) = (client.clone(), opts.clone());
        async move { client.fetch_query(&opts).await }
    });
    assert_eq!(*d.lock().unwrap().take().unwrap().unwrap(), 7);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one background refresh");
    release(&gates, 8);
    host.run();
    assert_eq!(*client.get_query_data::<u32>(&key!["user", 1]).unwrap(), 8);
}

/// A fetch that is ready at once runs in its caller's task: the host is asked for no
/// task at all (the timer driver aside, which the first entry starts).
#[test]
fn a_ready_fetch_asks_the_host_for_no_task() {
    let host = ManualHost::new();
    let client = QueryClient::builder().host(host.clone()).build();
    let opts = QueryOptions::new(key!["ready"], || async { Ok::<_, String>(5u32) });
    let out = host.start({
        let client = client.clone();
        async move { client.fetch_query(&opts).await }
    });
    assert_eq!(*out.lock().unwrap().take().unwrap().unwrap(), 5);
    // The caller's own task and the timer driver.
    assert_eq!(host.spawned.load(Ordering::SeqCst), 2);
}

/// Gc and retry delays are timed by the host's clock: an unused entry is collected when
/// the host's clock passes its gc time, and a failed attempt is retried after the delay
/// on the host's clock, not before.
#[test]
fn gc_and_retry_delays_follow_the_hosts_clock() {
    let host = ManualHost::new();
    let client = QueryClient::builder().host(host.clone()).build();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let opts = QueryOptions::new(key!["flaky"], move || {
        let n = a.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err("down".to_string())
            } else {
                Ok(n)
            }
        }
    })
    .retry(1)
    .retry_delay(|_| Duration::from_secs(3))
    .gc_time(Duration::from_secs(60));

    let out = host.start({
        let client = client.clone();
        async move { client.fetch_query(&opts).await }
    });
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    host.advance(Duration::from_millis(2_999));
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "still waiting for the retry delay"
    );
    host.advance(Duration::from_millis(1));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(*out.lock().unwrap().take().unwrap().unwrap(), 1);

    host.advance(59 * SEC);
    assert!(client.get_query_data::<u32>(&key!["flaky"]).is_some());
    host.advance(2 * SEC);
    assert!(
        client.get_query_data::<u32>(&key!["flaky"]).is_none(),
        "collected once the host's clock passed the gc time"
    );
}
