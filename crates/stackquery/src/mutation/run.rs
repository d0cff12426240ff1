//! Running one `mutate` call: scope wait, `on_mutate`, the mutation function with
//! retries, the callbacks, the final state — and a drop guard that settles the call if
//! its future is dropped half-way.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::SystemTime;

use futures::FutureExt;

use super::listeners::StateCell;
use super::state::Action;
use super::{Call, MutationOptions, OnMutate};
use crate::error::{panic_message, QueryError};

/// Where a call is, for its drop guard.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `Pending` reported, possibly still queued: no callback has run.
    Submitted,
    /// `on_mutate` has been entered: `on_error` / `on_settled` are owed.
    Started,
    /// Settled (callbacks run, final state reported).
    Done,
}

/// One running call. Settles the call when dropped before it finished, so a dropped
/// future never leaves the state `Pending` nor skips the rollback callbacks.
struct Run<V, T, C> {
    opts: Arc<MutationOptions<V, T, C>>,
    cell: Arc<StateCell<T>>,
    id: u64,
    vars: V,
    ctx: Option<C>,
    failures: u32,
    phase: Phase,
}

/// Runs a user callback; a panic is logged, never propagated.
fn contain(callback: &'static str, f: impl FnOnce()) {
    if std::thread::panicking() {
        // A panic inside a callback now would abort the process.
        tracing::warn!(
            callback,
            "mutation callback skipped: the thread is unwinding"
        );
        return;
    }
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        tracing::warn!(
            callback,
            panic = %panic_message(&*payload),
            "a mutation callback panicked; the call's outcome is unchanged"
        );
    }
}

impl<V, T, C> Run<V, T, C> {
    fn succeed(&mut self, data: Arc<T>) -> Result<Arc<T>, QueryError> {
        self.phase = Phase::Done;
        let ctx = self.ctx.as_ref();
        if let Some(f) = &self.opts.on_success {
            contain("on_success", || f(&data, &self.vars, ctx));
        }
        if let Some(f) = &self.opts.on_settled {
            contain("on_settled", || f(Some(&data), None, &self.vars, ctx));
        }
        self.cell.apply(
            self.id,
            Action::Success {
                data: data.clone(),
                at: SystemTime::now(),
            },
        );
        Ok(data)
    }

    fn fail(&mut self, error: QueryError) -> Result<Arc<T>, QueryError> {
        let started = self.phase == Phase::Started;
        self.phase = Phase::Done;
        if started {
            let ctx = self.ctx.as_ref();
            if let Some(f) = &self.opts.on_error {
                contain("on_error", || f(&error, &self.vars, ctx));
            }
            if let Some(f) = &self.opts.on_settled {
                contain("on_settled", || f(None, Some(&error), &self.vars, ctx));
            }
        }
        self.cell.apply(
            self.id,
            Action::Error {
                error: error.clone(),
                count: self.failures,
                at: SystemTime::now(),
            },
        );
        Err(error)
    }
}

impl<V, T, C> Drop for Run<V, T, C> {
    fn drop(&mut self) {
        if self.phase != Phase::Done {
            tracing::debug!(call = self.id, "mutation call dropped before it settled");
            let _ = self.fail(QueryError::Cancelled);
        }
    }
}

pub(crate) async fn execute<V, T, C>(
    opts: Arc<MutationOptions<V, T, C>>,
    call: Call<V, T>,
) -> Result<Arc<T>, QueryError>
where
    V: Clone + Send + 'static,
    T: Send + Sync + 'static,
    C: Send + 'static,
{
    // `ticket` is declared before `run`, so it is dropped after it: the next call of the
    // scope starts only once this one has settled (even when this future is dropped).
    let Call {
        id,
        vars,
        ticket,
        cell,
    } = call;
    let mut run = Run {
        opts: opts.clone(),
        cell,
        id,
        vars,
        ctx: None,
        failures: 0,
        phase: Phase::Submitted,
    };
    run.cell.apply(
        id,
        Action::Submit {
            at: SystemTime::now(),
        },
    );
    if let Some(ticket) = &ticket {
        ticket.wait_turn().await;
    }

    run.phase = Phase::Started;
    if let Some(on_mutate) = &opts.on_mutate {
        let ctx = match on_mutate {
            OnMutate::Sync(f) => catch_unwind(AssertUnwindSafe(|| f(&run.vars))),
            OnMutate::Async(f) => match catch_unwind(AssertUnwindSafe(|| f(run.vars.clone()))) {
                Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
                Err(payload) => Err(payload),
            },
        };
        match ctx {
            Ok(ctx) => run.ctx = Some(ctx),
            Err(payload) => return run.fail(QueryError::Panicked(panic_message(&*payload))),
        }
    }

    loop {
        let outcome = match catch_unwind(AssertUnwindSafe(|| (opts.mutation_fn)(run.vars.clone())))
        {
            Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
            Err(payload) => Err(payload),
        };
        let error = match outcome {
            Ok(Ok(data)) => return run.succeed(Arc::new(data)),
            Ok(Err(e)) => QueryError::fetch(e),
            Err(payload) => QueryError::Panicked(panic_message(&*payload)),
        };
        run.failures = run.failures.saturating_add(1);
        // A panic is a bug in the mutation function, not a transient failure: no retry.
        let retry = !matches!(error, QueryError::Panicked(_))
            && opts.retry.should_retry(run.failures, &error);
        if !retry {
            tracing::warn!(%error, failures = run.failures, "mutation failed");
            return run.fail(error);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(%error, "mutation not retried: no tokio runtime to time the delay");
            return run.fail(error);
        }
        let delay = opts.delay(run.failures - 1);
        tracing::debug!(%error, failures = run.failures, ?delay, "mutation retry");
        run.cell.apply(
            id,
            Action::Failed {
                count: run.failures,
                reason: error,
            },
        );
        tokio::time::sleep(delay).await;
    }
}
