//! Mutations: writes (create, update, delete) with lifecycle callbacks, retries, scopes
//! and an observable state.
//!
//! A [`MutationOptions`] holds the async mutation function and its callbacks;
//! [`QueryClient::mutation`](crate::QueryClient::mutation) turns it into a [`Mutation`] handle whose
//! [`mutate`](Mutation::mutate) runs one call:
//!
//! 1. the state becomes `Pending` (`submitted_at` is stamped);
//! 2. with a [`scope`](MutationOptions::scope), the call waits for the calls of that scope
//!    made before it;
//! 3. `on_mutate` runs and returns a *context* (typically what is needed to roll an
//!    optimistic cache update back);
//! 4. the mutation function runs, retried per the retry policy (default: no retry);
//! 5. `on_success` or `on_error`, then `on_settled`, receive the outcome, the variables and
//!    the context;
//! 6. the state becomes `Success` or `Error` (`settled_at` is stamped) and the call returns.
//!
//! The classic optimistic update — write the expected result into the cache at once, put
//! the old value back if the server says no:
//!
//! ```
//! use stackquery::{key, MutationOptions, QueryClient, QueryError};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let client = QueryClient::new();
//! client.set_query_data(key!["todos"], vec!["buy milk".to_string()]).unwrap();
//!
//! let (c1, c2) = (client.clone(), client.clone());
//! let add = client.mutation(
//!     MutationOptions::new(|todo: String| async move {
//!         // The server refuses: pretend a POST failed.
//!         Err::<String, _>(format!("cannot add {todo:?}: server down"))
//!     })
//!     .on_mutate(move |todo: &String| {
//!         let previous = c1.get_query_data::<Vec<String>>(&key!["todos"]);
//!         let mut next = previous.as_deref().cloned().unwrap_or_default();
//!         next.push(todo.clone());
//!         c1.set_query_data(key!["todos"], next).unwrap();
//!         previous // the rollback context
//!     })
//!     .on_error(move |_err, _todo, previous| {
//!         if let Some(Some(previous)) = previous {
//!             c2.set_query_data_arc(key!["todos"], previous.clone()).unwrap();
//!         }
//!     }),
//! );
//!
//! let err = add.mutate("walk the dog".to_string()).await.unwrap_err();
//! assert!(matches!(err, QueryError::Fetch(_)));
//! assert!(add.state().is_error());
//! let todos = client.get_query_data::<Vec<String>>(&key!["todos"]).unwrap();
//! assert_eq!(*todos, vec!["buy milk".to_string()]); // rolled back
//! # }
//! ```
//!
//! # Contained user code
//! The mutation function and every callback run under the crate's one panic policy (the
//! same as for fetch functions, predicates and listeners; on a thread that is already
//! unwinding, user code is skipped and counts as a panic). A panicking
//! mutation function or `on_mutate` fails the call with [`QueryError::Panicked`] (a panic
//! is never retried); a panicking `on_success` / `on_error` / `on_settled` or listener is
//! logged (`tracing::warn!`) and changes nothing else: a success stays a success and the
//! mutation function is never run again. A call is never left `Pending`: a call whose
//! future is dropped ends as `Error(QueryError::Cancelled)`, and if `on_mutate` had
//! started, `on_error` and `on_settled` still run (so an optimistic update is rolled back).
//!
//! # Cancelling
//! [`Mutation::cancel`] stops every call of a mutation that has not settled yet, running
//! or queued in its scope, as if each call's future had been dropped: the caller gets
//! [`QueryError::Cancelled`]. To stop one call only, drop its future (or abort the task
//! that awaits it).

pub(crate) mod durable;
mod listeners;
mod run;
mod state;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::engine::Shared;
use crate::error::{BoxError, QueryError};
use crate::retry::{retry_setters, RetryConfig};

use self::listeners::StateCell;
use self::run::execute;
use crate::engine::mutation_scopes::Ticket;

pub use self::durable::{DeadLetter, DurableMutation, DurableMutationOptions};
pub use self::state::{MutationState, MutationStatus};

type MutationFn<V, T> = Arc<dyn Fn(V) -> BoxFuture<'static, Result<T, BoxError>> + Send + Sync>;
type SuccessFn<V, T, C> = Arc<dyn Fn(&T, &V, Option<&C>) + Send + Sync>;
type ErrorFn<V, C> = Arc<dyn Fn(&QueryError, &V, Option<&C>) + Send + Sync>;
type SettledFn<V, T, C> =
    Arc<dyn Fn(Option<&T>, Option<&QueryError>, &V, Option<&C>) + Send + Sync>;
type Exec<V, T> =
    Arc<dyn Fn(Call<V, T>) -> BoxFuture<'static, Result<Arc<T>, QueryError>> + Send + Sync>;

enum OnMutate<V, C> {
    Sync(Arc<dyn Fn(&V) -> C + Send + Sync>),
    Async(Arc<dyn Fn(V) -> BoxFuture<'static, C> + Send + Sync>),
}

impl<V, C> Clone for OnMutate<V, C> {
    fn clone(&self) -> Self {
        match self {
            OnMutate::Sync(f) => OnMutate::Sync(f.clone()),
            OnMutate::Async(f) => OnMutate::Async(f.clone()),
        }
    }
}

/// What a [`Mutation`] does: an async mutation function over variables `V` producing `T`,
/// lifecycle callbacks sharing a context `C` (made by [`on_mutate`](Self::on_mutate)),
/// a retry policy and an optional scope.
///
/// The variables must be `Clone` to make a [`Mutation`] (each attempt of the mutation
/// function takes its own copy; the callbacks see the original). Cloning the options is
/// cheap (reference-count bumps).
///
/// ```
/// use stackquery::MutationOptions;
/// use std::time::Duration;
///
/// #[derive(Clone)]
/// struct NewUser { name: String }
///
/// let opts = MutationOptions::new(|new: NewUser| async move {
///     Ok::<_, std::io::Error>(format!("created {}", new.name))
/// })
/// .on_success(|created: &String, _vars: &NewUser, _ctx: Option<&()>| println!("{created}"))
/// .retry(2)
/// .retry_delay(|attempt| Duration::from_millis(100 << attempt))
/// .scope("users");
/// # let _ = opts;
/// ```
pub struct MutationOptions<V, T, C = ()> {
    mutation_fn: MutationFn<V, T>,
    on_mutate: Option<OnMutate<V, C>>,
    on_success: Option<SuccessFn<V, T, C>>,
    on_error: Option<ErrorFn<V, C>>,
    on_settled: Option<SettledFn<V, T, C>>,
    retry: RetryConfig,
    scope: Option<Arc<str>>,
}

impl<V, T, C> Clone for MutationOptions<V, T, C> {
    fn clone(&self) -> Self {
        MutationOptions {
            mutation_fn: self.mutation_fn.clone(),
            on_mutate: self.on_mutate.clone(),
            on_success: self.on_success.clone(),
            on_error: self.on_error.clone(),
            on_settled: self.on_settled.clone(),
            retry: self.retry.clone(),
            scope: self.scope.clone(),
        }
    }
}

impl<V, T, C> fmt::Debug for MutationOptions<V, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutationOptions")
            .field("on_mutate", &self.on_mutate.is_some())
            .field("on_success", &self.on_success.is_some())
            .field("on_error", &self.on_error.is_some())
            .field("on_settled", &self.on_settled.is_some())
            .field("retry", &self.retry)
            .field("scope", &self.scope)
            .finish()
    }
}

impl<V, T> MutationOptions<V, T, ()>
where
    V: Send + 'static,
    T: Send + Sync + 'static,
{
    /// Options for the mutation function `mutate`, which receives the variables of each
    /// call by value.
    ///
    /// Its error type only needs to convert into a boxed error, so `std::io::Error`,
    /// `anyhow::Error`, `reqwest::Error`, `String` all work; it reaches the caller as
    /// [`QueryError::Fetch`].
    pub fn new<F, Fut, E>(mutate: F) -> Self
    where
        F: Fn(V) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let mutation_fn: MutationFn<V, T> =
            Arc::new(move |vars| mutate(vars).map(|r| r.map_err(Into::into)).boxed());
        MutationOptions {
            mutation_fn,
            on_mutate: None,
            on_success: None,
            on_error: None,
            on_settled: None,
            retry: RetryConfig::default(),
            scope: None,
        }
    }

    /// Runs `f` before the mutation function; what it returns is the *context* that
    /// `on_success`, `on_error` and `on_settled` receive (`Some(&ctx)`). Use it for
    /// optimistic updates: write the expected result into the cache and return what is
    /// needed to roll it back.
    ///
    /// Callbacks registered before this call keep working (they receive `Some(&())`).
    /// A panic in `f` fails the call with [`QueryError::Panicked`] without running the
    /// mutation function; `on_error` and `on_settled` then receive `None` as context.
    #[must_use]
    pub fn on_mutate<C, F>(self, f: F) -> MutationOptions<V, T, C>
    where
        F: Fn(&V) -> C + Send + Sync + 'static,
        C: Send + 'static,
    {
        self.with_on_mutate(OnMutate::Sync(Arc::new(f)))
    }

    /// The async form of [`on_mutate`](Self::on_mutate): `f` receives a clone of the
    /// variables and its future's output is the context (for example after
    /// [`cancel_queries`](crate::QueryClient::cancel_queries), so an in-flight fetch does
    /// not overwrite the optimistic data).
    #[must_use]
    pub fn on_mutate_async<C, F, Fut>(self, f: F) -> MutationOptions<V, T, C>
    where
        F: Fn(V) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = C> + Send + 'static,
        C: Send + 'static,
    {
        self.with_on_mutate(OnMutate::Async(Arc::new(move |vars| f(vars).boxed())))
    }

    fn with_on_mutate<C: Send + 'static>(self, hook: OnMutate<V, C>) -> MutationOptions<V, T, C> {
        fn unit<C>(ctx: Option<&C>) -> Option<&'static ()> {
            ctx.map(|_| &())
        }
        MutationOptions {
            mutation_fn: self.mutation_fn,
            on_mutate: Some(hook),
            on_success: self.on_success.map(|f| -> SuccessFn<V, T, C> {
                Arc::new(move |data, vars, ctx| f(data, vars, unit(ctx)))
            }),
            on_error: self.on_error.map(|f| -> ErrorFn<V, C> {
                Arc::new(move |err, vars, ctx| f(err, vars, unit(ctx)))
            }),
            on_settled: self.on_settled.map(|f| -> SettledFn<V, T, C> {
                Arc::new(move |data, err, vars, ctx| f(data, err, vars, unit(ctx)))
            }),
            retry: self.retry,
            scope: self.scope,
        }
    }
}

impl<V, T, C> MutationOptions<V, T, C> {
    /// Called with the data, the variables and the context when a call succeeds, before
    /// the state becomes `Success`. A panic here is logged; the call still succeeds.
    /// Replaces an earlier `on_success`.
    #[must_use]
    pub fn on_success<F>(mut self, f: F) -> Self
    where
        F: Fn(&T, &V, Option<&C>) + Send + Sync + 'static,
    {
        self.on_success = Some(Arc::new(f));
        self
    }

    /// Called with the error, the variables and the context when a call fails (after its
    /// retries, or because it was dropped: [`QueryError::Cancelled`]), before the state
    /// becomes `Error`. The place to roll an optimistic update back. A panic here is
    /// logged. Replaces an earlier `on_error`.
    #[must_use]
    pub fn on_error<F>(mut self, f: F) -> Self
    where
        F: Fn(&QueryError, &V, Option<&C>) + Send + Sync + 'static,
    {
        self.on_error = Some(Arc::new(f));
        self
    }

    /// Called after `on_success` or `on_error` with the outcome, the variables and the
    /// context. A panic here is logged. Replaces an earlier `on_settled`.
    #[must_use]
    pub fn on_settled<F>(mut self, f: F) -> Self
    where
        F: Fn(Option<&T>, Option<&QueryError>, &V, Option<&C>) + Send + Sync + 'static,
    {
        self.on_settled = Some(Arc::new(f));
        self
    }

    retry_setters! {
        config: retry;
        retried: "a failed mutation function";
        count: "default 0: writes are not retried unless asked";
        note: "Mutations do not use the client's retry defaults.";
        each: #[must_use];
    }

    /// Puts the mutation in scope `id`: on one client, calls of mutations of the same
    /// scope run one after another, in the order [`Mutation::mutate`] was called (even
    /// across different `Mutation` handles). Calls without a scope run concurrently.
    #[must_use]
    pub fn scope(mut self, id: impl Into<Arc<str>>) -> Self {
        self.scope = Some(id.into());
        self
    }
}

/// A handle on a mutation made by [`QueryClient::mutation`](crate::QueryClient::mutation): run it with
/// [`mutate`](Self::mutate), watch its state with [`state`](Self::state) and
/// [`subscribe`](Self::subscribe).
///
/// Cloning is cheap (one `Arc`); clones share the state and the listeners.
pub struct Mutation<V, T> {
    inner: Arc<Inner<V, T>>,
}

struct Inner<V, T> {
    shared: Arc<Shared>,
    cell: Arc<StateCell<T>>,
    exec: Exec<V, T>,
    scope: Option<Arc<str>>,
    /// Bumped by [`Mutation::cancel`]; every unsettled call watches it (one `Arc`).
    cancel: tokio::sync::watch::Sender<u64>,
}

/// One `mutate` call, handed to the type-erased executor.
pub(crate) struct Call<V, T> {
    id: u64,
    vars: V,
    ticket: Option<Ticket>,
    cell: Arc<StateCell<T>>,
    /// Changes when [`Mutation::cancel`] is called after this call was made.
    cancel: tokio::sync::watch::Receiver<u64>,
}

impl<V, T> Clone for Mutation<V, T> {
    fn clone(&self) -> Self {
        Mutation {
            inner: self.inner.clone(),
        }
    }
}

impl<V, T> fmt::Debug for Mutation<V, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutation")
            .field("status", &self.inner.cell.snapshot().status)
            .field("scope", &self.inner.scope)
            .finish_non_exhaustive()
    }
}

impl<V, T> Mutation<V, T>
where
    V: Clone + Send + 'static,
    T: Send + Sync + 'static,
{
    /// A mutation running `opts` on the engine `shared` (see [`QueryClient::mutation`](crate::QueryClient::mutation)).
    pub(crate) fn new<C: Send + 'static>(
        shared: Arc<Shared>,
        opts: MutationOptions<V, T, C>,
    ) -> Self {
        let scope = opts.scope.clone();
        let opts = Arc::new(opts);
        let id = shared.fresh_id();
        shared
            .events
            .emit(|| crate::events::CacheEventKind::MutationAdded { id });
        let events = Some((id, shared.events.clone()));
        let runtime = shared.runtime.clone();
        let exec: Exec<V, T> =
            Arc::new(move |call| execute(runtime.clone(), opts.clone(), call).boxed());
        Mutation {
            inner: Arc::new(Inner {
                shared,
                cell: Arc::new(StateCell::new(events)),
                exec,
                scope,
                cancel: tokio::sync::watch::Sender::new(0),
            }),
        }
    }
}

impl<V, T> Mutation<V, T>
where
    V: Send + 'static,
    T: Send + Sync + 'static,
{
    /// Runs the mutation with `vars` and returns its data.
    ///
    /// The call takes its place in the scope queue (if any) *now*, when `mutate` is
    /// called; nothing else happens until the returned future is polled. The future is
    /// `'static` and `Send`: it can be spawned.
    ///
    /// # Examples
    /// Two concurrent calls in one scope run one after another, in call order:
    ///
    /// ```
    /// use stackquery::{MutationOptions, QueryClient};
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stackquery::QueryError> {
    /// let client = QueryClient::new();
    /// let log = Arc::new(Mutex::new(Vec::new()));
    /// let l = log.clone();
    /// let save = client.mutation(
    ///     MutationOptions::new(move |v: &'static str| {
    ///         let l = l.clone();
    ///         async move {
    ///             l.lock().unwrap().push(format!("start {v}"));
    ///             tokio::time::sleep(Duration::from_millis(if v == "a" { 20 } else { 1 })).await;
    ///             l.lock().unwrap().push(format!("end {v}"));
    ///             Ok::<_, std::io::Error>(v.len())
    ///         }
    ///     })
    ///     .scope("document-1"),
    /// );
    /// let (a, b) = tokio::join!(save.mutate("a"), save.mutate("bb"));
    /// assert_eq!((*a?, *b?), (1, 2));
    /// assert_eq!(*log.lock().unwrap(), ["start a", "end a", "start bb", "end bb"]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Concurrent calls
    /// Calls without a scope run concurrently, each to its end; the mutation's
    /// [`state`](Self::state) follows the latest call (by the order of the `mutate`
    /// calls): updates from an older call are ignored once a newer one has reported.
    /// Calls with a scope run one at a time, in call order; a queued call shows as
    /// `Pending` while it waits.
    ///
    /// # Cancellation
    /// Dropping the future stops the call. If it had not started (it was queued), it
    /// leaves the queue and the next call runs; if it had started, `on_error` and
    /// `on_settled` run with [`QueryError::Cancelled`]. Either way the state ends as
    /// `Error(Cancelled)` (if this call is the one shown) and the scope moves on.
    ///
    /// # Errors
    /// [`QueryError::Fetch`] with the mutation function's error after the retries are
    /// spent; [`QueryError::Panicked`] if the mutation function or `on_mutate` panicked.
    ///
    /// # Panics
    /// Never because of user code: panics in callbacks and listeners are contained.
    pub fn mutate(
        &self,
        vars: V,
    ) -> impl Future<Output = Result<Arc<T>, QueryError>> + Send + 'static {
        let inner = &self.inner;
        let id = inner.cell.begin_call();
        let ticket = inner
            .scope
            .as_ref()
            .map(|scope| inner.shared.mutation_scopes.enqueue(scope.clone()));
        (inner.exec)(Call {
            id,
            vars,
            ticket,
            cell: inner.cell.clone(),
            cancel: inner.cancel.subscribe(),
        })
    }

    /// Cancels every call of this mutation (made through this handle or a clone of it)
    /// that has not settled yet. Calls made after `cancel` returns are not affected.
    ///
    /// Each cancelled call ends as if its future had been dropped, and its caller gets
    /// [`QueryError::Cancelled`]:
    /// * a call that is **running** (its `on_mutate` has started) has its future dropped
    ///   (the mutation function's future, or the wait before a retry); then `on_error`
    ///   and `on_settled` run with `QueryError::Cancelled` and the context, so an
    ///   optimistic update is rolled back — as TanStack Query reports a cancelled
    ///   mutation (its `CancelledError` reaches `onError` / `onSettled`);
    /// * a call **queued** in its scope behind another one leaves the queue and never
    ///   runs: no callback runs (`on_mutate` never did), and the next call of the scope
    ///   goes on.
    ///
    /// The state shows `Error(Cancelled)` if a cancelled call is the one shown. A call
    /// stops when its future is next polled (at once for a call being awaited or
    /// spawned); work the mutation function already sent to a server is not undone.
    ///
    /// ```
    /// use stackquery::{key, MutationOptions, QueryClient, QueryError};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let client = QueryClient::new();
    /// client.set_query_data(key!["likes"], 10_u32).unwrap();
    /// let (c1, c2) = (client.clone(), client.clone());
    /// let like = client.mutation(
    ///     MutationOptions::new(|_: ()| async {
    ///         tokio::time::sleep(Duration::from_secs(60)).await; // a slow server
    ///         Ok::<_, String>(())
    ///     })
    ///     .on_mutate(move |_| {
    ///         let before = *c1.get_query_data::<u32>(&key!["likes"]).unwrap();
    ///         c1.set_query_data(key!["likes"], before + 1).unwrap(); // optimistic
    ///         before
    ///     })
    ///     .on_error(move |_err, _, before| {
    ///         c2.set_query_data(key!["likes"], *before.unwrap()).unwrap(); // rollback
    ///     }),
    /// );
    /// let call = tokio::spawn(like.mutate(()));
    /// tokio::time::sleep(Duration::from_millis(10)).await;
    /// assert_eq!(*client.get_query_data::<u32>(&key!["likes"]).unwrap(), 11);
    ///
    /// like.cancel();
    /// assert!(matches!(call.await.unwrap(), Err(QueryError::Cancelled)));
    /// assert_eq!(*client.get_query_data::<u32>(&key!["likes"]).unwrap(), 10);
    /// # }
    /// ```
    pub fn cancel(&self) {
        self.inner.cancel.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A snapshot of the state of the latest call.
    pub fn state(&self) -> MutationState<T> {
        self.inner.cell.snapshot()
    }

    /// Calls `listener` with the current state at once, then on every change, until the
    /// returned subscription is dropped or [`unsubscribe`](crate::Subscription::unsubscribe)d.
    ///
    /// Listeners run with no lock of the mutation held: a listener may call back into the
    /// mutation or the client. States arrive in order; if changes come faster than a
    /// listener runs (from other threads), it may skip intermediate states but always
    /// receives the latest. A panicking listener is logged and stays subscribed; the other
    /// listeners still run.
    ///
    /// ```
    /// use stackquery::{MutationOptions, MutationStatus, QueryClient};
    /// use std::sync::{Arc, Mutex};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let client = QueryClient::new();
    /// let m = client.mutation(MutationOptions::new(|n: u8| async move { Ok::<_, String>(n) }));
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let s = seen.clone();
    /// let sub = m.subscribe(move |state| s.lock().unwrap().push(state.status));
    /// m.mutate(1).await.unwrap();
    /// drop(sub);
    /// m.reset(); // not seen: unsubscribed
    /// use MutationStatus::*;
    /// assert_eq!(*seen.lock().unwrap(), [Idle, Pending, Success]);
    /// # }
    /// ```
    pub fn subscribe<F>(&self, listener: F) -> crate::Subscription
    where
        F: Fn(&MutationState<T>) + Send + Sync + 'static,
    {
        self.inner.cell.subscribe(Box::new(listener))
    }

    /// Back to `Idle`, clearing data and error. Calls still running go on (their callers
    /// get their results) but no longer change this mutation's state.
    pub fn reset(&self) {
        self.inner.cell.reset();
    }
}
