//! The engine's host on an asyncio loop: the loop's clock, its tasks and its timers.
//!
//! Every call happens on the loop's thread in practice (Python code calls the client
//! there, and the engine's tasks run there). A wake-up from another thread (a storage
//! worker, later) goes through `call_soon_threadsafe`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCFunction;
use stackquery::{Host, HostFuture, TaskHandle};
use tokio::time::Instant;

use crate::awaitable::{RustAwaitable, Wakeup};

static SUPPORT: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `asyncio.get_running_loop()` (the function looked up once: this runs on every call).
pub(crate) fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    GET_RUNNING_LOOP
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("asyncio")?.getattr("get_running_loop")?.unbind())
        })?
        .bind(py)
        .call0()
}

static GET_RUNNING_LOOP_OR_NONE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `asyncio._get_running_loop()`: the running loop of this thread, or `None`.
fn get_running_loop_or_none(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    GET_RUNNING_LOOP_OR_NONE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("asyncio")?.getattr("_get_running_loop")?.unbind())
        })?
        .bind(py)
        .call0()
}

/// `stackquery._support`, imported once.
pub(crate) fn support(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    SUPPORT
        .get_or_try_init(py, || Ok(py.import("stackquery._support")?.unbind()))
        .map(|m| m.bind(py))
}

/// One asyncio loop, as the engine sees it.
pub(crate) struct Loop {
    /// The loop object.
    pub(crate) obj: Py<PyAny>,
    /// Its bound `time` method (looked up once: the hit path reads the clock).
    time: Py<PyAny>,
    /// `time` is asyncio's own (`BaseEventLoop.time`, which is `time.monotonic()`, the
    /// clock of `std::time::Instant`): the engine reads that clock directly, with no call
    /// into Python. Any other `time` (uvloop's, a virtual clock such as `looptime`'s) is
    /// called.
    monotonic: bool,
    thread: ThreadId,
    /// The instant that stands for `loop_start` on the loop's clock.
    base: Instant,
    loop_start: f64,
    /// Task wake-ups waiting for the loop (see [`wake_task`](Self::wake_task)).
    wakes: Arc<Wakes>,
    /// The loop callback that runs them (made at the first wake-up).
    drain: std::sync::OnceLock<Py<PyAny>>,
}

/// Task wake-ups due, run together by one loop callback.
#[derive(Default)]
struct Wakes {
    due: Mutex<WakesDue>,
}

#[derive(Default)]
struct WakesDue {
    /// Each task's wake-up and the object it is called with.
    wakeups: Vec<(Wakeup, Py<PyAny>)>,
    /// A drain is scheduled on the loop and has not taken the list yet.
    scheduled: bool,
}

impl Wakes {
    /// Runs the due wake-ups: each task's step, in its own context, one after another
    /// (each step runs to its next suspension and returns; no task is running around
    /// them, this being a plain loop callback).
    fn drain(&self, py: Python<'_>) {
        let wakeups = {
            let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
            due.scheduled = false;
            std::mem::take(&mut due.wakeups)
        };
        let run = pyo3::intern!(py, "run");
        for ((callback, context), arg) in wakeups {
            let called = match context {
                Some(ctx) => ctx.bind(py).call_method1(run, (callback, arg)),
                None => callback.bind(py).call1((arg,)),
            };
            if let Err(e) = called {
                e.write_unraisable(py, None);
            }
        }
    }
}

impl Loop {
    /// The running loop of the calling thread.
    pub(crate) fn current(py: Python<'_>) -> PyResult<Arc<Loop>> {
        let obj = running_loop(py)?;
        let time = obj.getattr("time")?;
        let loop_start: f64 = time.call0()?.extract()?;
        let asyncio_time = py
            .import("asyncio")?
            .getattr("BaseEventLoop")?
            .getattr("time")?;
        let monotonic = time.getattr("__func__").is_ok_and(|f| f.is(&asyncio_time))
            && py
                .import("time")?
                .getattr("get_clock_info")?
                .call1(("monotonic",))?
                .getattr("implementation")?
                .extract::<String>()
                .is_ok_and(|i| i == "clock_gettime(CLOCK_MONOTONIC)");
        Ok(Arc::new(Loop {
            obj: obj.unbind(),
            time: time.unbind(),
            monotonic,
            thread: std::thread::current().id(),
            base: Instant::now(),
            loop_start,
            wakes: Arc::default(),
            drain: std::sync::OnceLock::new(),
        }))
    }

    /// Wakes an asyncio task (calls `wakeup(arg)` in its context) from any thread. The
    /// wake-ups of one turn run together in one loop callback: waking the 10,000 callers
    /// of a flight costs one loop handle, not one each.
    pub(crate) fn wake_task(&self, py: Python<'_>, wakeup: Wakeup, arg: Py<PyAny>) {
        let first = {
            let mut due = self.wakes.due.lock().unwrap_or_else(|p| p.into_inner());
            due.wakeups.push((wakeup, arg));
            !std::mem::replace(&mut due.scheduled, true)
        };
        if !first {
            return;
        }
        let scheduled = self.drain_fn(py).and_then(|drain| {
            let method = if self.on_loop_thread() {
                pyo3::intern!(py, "call_soon")
            } else {
                pyo3::intern!(py, "call_soon_threadsafe")
            };
            self.obj.bind(py).call_method1(method, (drain,))
        });
        if let Err(e) = scheduled {
            // A closed loop: the tasks will never run again; drop their wake-ups.
            let mut due = self.wakes.due.lock().unwrap_or_else(|p| p.into_inner());
            due.scheduled = false;
            let dropped = std::mem::take(&mut due.wakeups);
            drop(due);
            drop(dropped);
            e.print(py);
        }
    }

    fn drain_fn<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyAny>> {
        if let Some(f) = self.drain.get() {
            return Ok(f.bind(py));
        }
        let wakes = self.wakes.clone();
        let f = PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
            wakes.drain(args.py());
        })?;
        Ok(self.drain.get_or_init(|| f.into_any().unbind()).bind(py))
    }

    pub(crate) fn on_loop_thread(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    /// The loop's `time()` as an engine instant.
    pub(crate) fn now(&self, py: Python<'_>) -> Instant {
        if self.monotonic {
            return Instant::from_std(std::time::Instant::now());
        }
        let t: f64 = self
            .time
            .bind(py)
            .call0()
            .and_then(|t| t.extract())
            .unwrap_or(self.loop_start);
        self.base + Duration::from_secs_f64((t - self.loop_start).max(0.0))
    }

    /// Calls `f(arg)` on the loop soon (from any thread).
    pub(crate) fn call_soon<'py>(
        &self,
        py: Python<'py>,
        f: &Bound<'py, PyAny>,
        arg: Bound<'py, PyAny>,
    ) -> PyResult<()> {
        let method = if self.on_loop_thread() {
            "call_soon"
        } else {
            "call_soon_threadsafe"
        };
        let _ = py;
        self.obj.bind(py).call_method1(method, (f, arg))?;
        Ok(())
    }
}

/// The [`Host`] of one client: the loop it was first used on.
pub(crate) struct PyHost {
    pub(crate) lp: Arc<Loop>,
}

impl Host for PyHost {
    fn now(&self) -> Instant {
        if self.lp.monotonic {
            return Instant::from_std(std::time::Instant::now());
        }
        Python::attach(|py| self.lp.now(py))
    }

    fn spawn(&self, task: HostFuture) -> Option<TaskHandle> {
        Python::attach(|py| -> PyResult<TaskHandle> {
            let awaitable = RustAwaitable::new(
                self.lp.clone(),
                Box::pin(async move {
                    task.await;
                    Ok(Python::attach(|py| py.None()))
                }),
            );
            let coro = support(py)?.call_method1("drive", (awaitable,))?;
            // `create_task` is for the loop's own thread; the storage runtime (a bus
            // message, a write that landed) spawns through `call_soon_threadsafe`.
            let task = if self.lp.on_loop_thread() {
                self.lp.obj.bind(py).call_method1("create_task", (coro,))?
            } else {
                support(py)?.call_method1("spawn_threadsafe", (self.lp.obj.bind(py), coro))?
            };
            let task = task.unbind();
            let lp = self.lp.clone();
            Ok(TaskHandle::new(move || {
                Python::attach(|py| {
                    let task = task.bind(py);
                    let _ = if lp.on_loop_thread() {
                        task.call_method0("cancel")
                    } else {
                        task.getattr("cancel").and_then(|cancel| {
                            lp.obj
                                .bind(py)
                                .call_method1("call_soon_threadsafe", (cancel,))
                        })
                    };
                })
            }))
        })
        .map_err(|e| Python::attach(|py| e.print(py)))
        .ok()
    }

    fn can_spawn(&self) -> bool {
        Python::attach(|py| {
            // Called from the loop it runs on (every miss): open. One C call, where
            // `is_closed` is a Python method.
            if get_running_loop_or_none(py).is_ok_and(|l| l.is(self.lp.obj.bind(py))) {
                return true;
            }
            self.lp
                .obj
                .bind(py)
                .call_method0("is_closed")
                .and_then(|c| c.extract::<bool>())
                .map(|closed| !closed)
                .unwrap_or(false)
        })
    }

    fn sleep_until(&self, deadline: Instant) -> HostFuture {
        Box::pin(Sleep {
            lp: self.lp.clone(),
            deadline,
            timer: None,
        })
    }
}

/// A wait until `deadline` on the loop's clock (`loop.call_later`).
struct Sleep {
    lp: Arc<Loop>,
    deadline: Instant,
    timer: Option<Py<PyAny>>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Python::attach(|py| {
            let now = self.lp.now(py);
            if now >= self.deadline {
                return Poll::Ready(());
            }
            if let Some(timer) = self.timer.take() {
                let _ = timer.bind(py).call_method0("cancel");
            }
            let delay = (self.deadline - now).as_secs_f64();
            let waker = cx.waker().clone();
            if !self.lp.on_loop_thread() {
                // `call_later` is for the loop's own thread: have the loop arm it (that
                // timer cannot be cancelled; waking a finished wait is harmless).
                let lp = self.lp.obj.bind(py);
                return match waker_callback(py, waker).and_then(|cb| {
                    lp.call_method1(
                        "call_soon_threadsafe",
                        (lp.getattr("call_later")?, delay, cb),
                    )
                }) {
                    Ok(_) => Poll::Pending,
                    Err(_) => Poll::Ready(()),
                };
            }
            let timer = waker_callback(py, waker)
                .and_then(|cb| self.lp.obj.bind(py).call_method1("call_later", (delay, cb)));
            match timer {
                Ok(timer) => {
                    self.timer = Some(timer.unbind());
                    Poll::Pending
                }
                // A closed loop: nothing will ever fire; end the wait rather than hang.
                Err(_) => Poll::Ready(()),
            }
        })
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            Python::attach(|py| {
                let _ = timer.bind(py).call_method0("cancel");
            });
        }
    }
}

/// A Python callable that wakes `waker` (whatever arguments it gets).
pub(crate) fn waker_callback(py: Python<'_>, waker: Waker) -> PyResult<Bound<'_, PyCFunction>> {
    let waker = Mutex::new(Some(waker));
    PyCFunction::new_closure(py, None, None, move |_args, _kwargs| {
        if let Some(w) = waker.lock().ok().and_then(|mut w| w.take()) {
            w.wake();
        }
    })
}
