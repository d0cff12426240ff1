//! Running one `mutate` call: scope wait, `on_mutate`, the mutation function with
//! retries, the callbacks, the final state — and a drop guard that settles the call if
//! its future is dropped half-way.

use std::sync::Arc;
use std::time::SystemTime;

use super::listeners::StateCell;
use super::state::Action;
use super::{Call, MutationOptions, OnMutate};
use crate::error::QueryError;
use crate::retry::{run_with_retries, Step, MUTATION_RETRIES};
use crate::user_code::{contain, contain_async};

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

/// Runs a user callback (`on_success`, `on_error`, `on_settled`) under the crate's panic
/// policy. A callback's outcome is only ever logged: a panicking callback (or one skipped
/// on an unwinding thread) changes nothing about the call's result.
fn callback(what: &'static str, f: impl FnOnce()) {
    let _ = contain(what, f);
}

impl<V, T, C> Run<V, T, C> {
    fn succeed(&mut self, data: Arc<T>) -> Result<Arc<T>, QueryError> {
        self.phase = Phase::Done;
        let ctx = self.ctx.as_ref();
        if let Some(f) = &self.opts.on_success {
            callback("on_success", || f(&data, &self.vars, ctx));
        }
        if let Some(f) = &self.opts.on_settled {
            callback("on_settled", || f(Some(&data), None, &self.vars, ctx));
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
                callback("on_error", || f(&error, &self.vars, ctx));
            }
            if let Some(f) = &self.opts.on_settled {
                callback("on_settled", || f(None, Some(&error), &self.vars, ctx));
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

/// Runs one call until it settles or [`Mutation::cancel`](super::Mutation::cancel) is
/// called, whichever comes first. A cancelled call's work is dropped here, exactly as if
/// the caller had dropped the future: its drop guard settles it (callbacks owed, state)
/// and its ticket passes the scope's turn on.
pub(crate) async fn execute<V, T, C>(
    runtime: crate::host::Runtime,
    opts: Arc<MutationOptions<V, T, C>>,
    call: Call<V, T>,
) -> Result<Arc<T>, QueryError>
where
    V: Clone + Send + 'static,
    T: Send + Sync + 'static,
    C: Send + 'static,
{
    let mut cancel = call.cancel.clone();
    let outcome = {
        let cancelled = std::pin::pin!(async move {
            // The sender lives as long as the `Mutation`: once every handle is gone
            // nobody can cancel, and the call runs to its end.
            if cancel.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        let work = std::pin::pin!(run_call(runtime, opts, call));
        // `select` polls the cancellation first, so a cancel wins a tie with the end.
        match futures::future::select(cancelled, work).await {
            futures::future::Either::Left(_) => None,
            futures::future::Either::Right((result, _)) => Some(result),
        }
        // `work` is dropped here, before the caller hears of the cancellation.
    };
    outcome.unwrap_or(Err(QueryError::Cancelled))
}

async fn run_call<V, T, C>(
    runtime: crate::host::Runtime,
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
        cancel: _,
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
            OnMutate::Sync(f) => contain("on_mutate", || f(&run.vars)),
            OnMutate::Async(f) => {
                // Cloned before: a closure borrowing `run` would be held across the await
                // (and make the future need `V: Sync`).
                let vars = run.vars.clone();
                contain_async("on_mutate", move || f(vars)).await
            }
        };
        match ctx {
            Ok(ctx) => run.ctx = Some(ctx),
            Err(panicked) => return run.fail(panicked),
        }
    }

    let retry = opts.retry.resolve(None, MUTATION_RETRIES);
    let result = run_with_retries(
        &runtime,
        "mutation_fn",
        &retry,
        &mut run,
        |run| (run.opts.mutation_fn)(run.vars.clone()),
        |run, error, failures, step| match step {
            // Counted at once: a call dropped during the wait reports its failures.
            Step::Failed => run.failures = failures,
            Step::Retry(delay) => {
                tracing::debug!(error = %crate::error::report(error), failures, ?delay, "mutation retry");
                run.cell.apply(
                    run.id,
                    Action::Failed {
                        count: failures,
                        reason: error.clone(),
                    },
                );
            }
            Step::GiveUp => tracing::warn!(error = %crate::error::report(error), failures, "mutation failed"),
        },
    )
    .await;
    match result {
        Ok(data) => run.succeed(Arc::new(data)),
        Err(error) => run.fail(error),
    }
}
