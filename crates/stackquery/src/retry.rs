//! The one retryer, shared by query fetches and mutations: the retry settings
//! ([`RetryConfig`], with the builders' setters generated once by [`retry_setters!`]), how
//! they resolve against their fallbacks ([`Retry`]), and the loop that runs user code under
//! them ([`run_with_retries`]).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{BoxError, QueryError};
use crate::user_code::{contain, contain_async};

type RetryPredicate = dyn Fn(u32, &QueryError) -> bool + Send + Sync;
type DelayFn = dyn Fn(u32) -> Duration + Send + Sync;

/// Retries of a failed fetch when neither the query nor the client says otherwise.
pub(crate) const QUERY_RETRIES: u32 = 3;
/// Retries of a failed mutation function unless asked: writes are not retried by default.
pub(crate) const MUTATION_RETRIES: u32 = 0;

/// Whether a failed attempt is retried.
#[derive(Clone)]
pub(crate) enum RetryPolicy {
    /// Retry up to this many times after the first failure (`0`: never retry).
    Count(u32),
    /// Retry while the predicate returns true. It receives the number of failures so far
    /// (1 after the first failure) and the last error.
    Predicate(Arc<RetryPredicate>),
}

impl RetryPolicy {
    /// Whether to try again after `failure_count` failures, the last being `error`.
    ///
    /// A panic inside a predicate counts as "do not retry", and so does a call on a thread
    /// that is already panicking (the predicate is not run: see the crate's panic policy).
    pub(crate) fn should_retry(&self, failure_count: u32, error: &QueryError) -> bool {
        match self {
            RetryPolicy::Count(n) => failure_count <= *n,
            RetryPolicy::Predicate(p) => {
                contain("retry_if", || p(failure_count, error)).unwrap_or(false)
            }
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryPolicy::Count(n) => write!(f, "Count({n})"),
            RetryPolicy::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// How long to wait before retry number `attempt` (0 for the first retry).
#[derive(Clone)]
pub(crate) struct RetryDelay(Arc<DelayFn>);

impl RetryDelay {
    /// Wraps a delay function.
    pub(crate) fn new(f: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Self {
        RetryDelay(Arc::new(f))
    }

    /// The delay before retry `attempt`; a panicking delay function (or a call on a thread
    /// that is already panicking, where it is not run) falls back to the default.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        contain("retry_delay", || (self.0)(attempt))
            .unwrap_or_else(|_| default_retry_delay(attempt))
    }
}

impl fmt::Debug for RetryDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryDelay(..)")
    }
}

/// The default delay: `min(1s · 2^attempt, 30s)`.
pub fn default_retry_delay(attempt: u32) -> Duration {
    let secs = 1u64.checked_shl(attempt).unwrap_or(u64::MAX).min(30);
    Duration::from_secs(secs)
}

/// The retry knobs of one builder ([`QueryOptions`](crate::QueryOptions),
/// [`MutationOptions`](crate::MutationOptions) or the client's
/// [`QueryClientBuilder`](crate::QueryClientBuilder)).
///
/// Each knob stays unset until its setter is called, and an unset knob falls back (a
/// query's to the client's, the client's and a mutation's to the built-in default), so a
/// knob set to the built-in value still wins over the client's.
#[derive(Clone, Debug, Default)]
pub(crate) struct RetryConfig {
    policy: Option<RetryPolicy>,
    delay: Option<RetryDelay>,
    jitter: Option<bool>,
}

impl RetryConfig {
    /// Backs the public `retry(n)`.
    pub(crate) fn set_count(&mut self, n: u32) {
        self.policy = Some(RetryPolicy::Count(n));
    }

    /// Backs the public `retry_if(f)`.
    pub(crate) fn set_predicate(
        &mut self,
        f: impl Fn(u32, &QueryError) -> bool + Send + Sync + 'static,
    ) {
        self.policy = Some(RetryPolicy::Predicate(Arc::new(f)));
    }

    /// Backs the public `retry_delay(f)`.
    pub(crate) fn set_delay(&mut self, f: impl Fn(u32) -> Duration + Send + Sync + 'static) {
        self.delay = Some(RetryDelay::new(f));
    }

    /// Backs the public `retry_jitter(on)`.
    pub(crate) fn set_jitter(&mut self, on: bool) {
        self.jitter = Some(on);
    }

    /// The settings in force: each knob of `self`, else `fallback`'s, else the built-in
    /// default (`default_count` retries, [`default_retry_delay`], no jitter).
    pub(crate) fn resolve<'a>(
        &'a self,
        fallback: Option<&'a RetryConfig>,
        default_count: u32,
    ) -> Retry<'a> {
        let policy = self.policy.as_ref().or_else(|| fallback?.policy.as_ref());
        Retry {
            policy: policy.map_or(Cow::Owned(RetryPolicy::Count(default_count)), Cow::Borrowed),
            delay: self.delay.as_ref().or_else(|| fallback?.delay.as_ref()),
            jitter: self.jitter.or_else(|| fallback?.jitter).unwrap_or(false),
        }
    }

    /// Cheap check that `other` is a clone of these settings (functions compared by
    /// pointer: two closures can't be compared otherwise).
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        self.jitter == other.jitter
            && match (&self.policy, &other.policy) {
                (None, None) => true,
                (Some(RetryPolicy::Count(a)), Some(RetryPolicy::Count(b))) => a == b,
                (Some(RetryPolicy::Predicate(a)), Some(RetryPolicy::Predicate(b))) => {
                    Arc::ptr_eq(a, b)
                }
                _ => false,
            }
            && match (&self.delay, &other.delay) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(&a.0, &b.0),
                _ => false,
            }
    }
}

/// The public retry setters (`retry`, `retry_if`, `retry_delay`, `retry_jitter`) of a
/// builder whose [`RetryConfig`] is at `config` (a field path from `self`), docs included.
///
/// The builder gives what is retried (`retried`, "a failed fetch"), its default count
/// (`count`), a `note` closing each doc (how its settings fall back), and attributes for
/// all four methods (`each`: `#[must_use]` where the builder type is not already).
///
/// A macro rather than a trait: trait methods would need the trait imported at every call
/// site, which would break `QueryOptions::new(..).retry(2)` for users.
macro_rules! retry_setters {
    (
        config: $($config:ident).+;
        retried: $retried:literal;
        count: $count:literal;
        note: $note:literal;
        each: $(#[$each:meta])*;
    ) => {
        #[doc = concat!("Retry ", $retried, " up to `n` times (", $count, ").")]
        #[doc = "A panicking function is never retried."]
        #[doc = ""]
        #[doc = $note]
        $(#[$each])*
        pub fn retry(mut self, n: u32) -> Self {
            self.$($config).+.set_count(n);
            self
        }

        #[doc = concat!("Retry ", $retried, " while `f(failure_count, &error)` returns true")]
        #[doc = "(`failure_count` is 1 after the first failure). A panicking predicate means"]
        #[doc = "\"do not retry\"."]
        #[doc = ""]
        #[doc = $note]
        $(#[$each])*
        pub fn retry_if(
            mut self,
            f: impl Fn(u32, &$crate::QueryError) -> bool + Send + Sync + 'static,
        ) -> Self {
            self.$($config).+.set_predicate(f);
            self
        }

        #[doc = concat!("The delay before retry `attempt` (0-based) of ", $retried, ".")]
        #[doc = "Default [`default_retry_delay`](crate::default_retry_delay):"]
        #[doc = "`min(1s·2^attempt, 30s)`, which a panicking delay function falls back to."]
        #[doc = ""]
        #[doc = $note]
        $(#[$each])*
        pub fn retry_delay(
            mut self,
            f: impl Fn(u32) -> ::std::time::Duration + Send + Sync + 'static,
        ) -> Self {
            self.$($config).+.set_delay(f);
            self
        }

        #[doc = concat!("Equal jitter on the retry delays of ", $retried, " (default off):")]
        #[doc = "each delay becomes a uniformly random duration between half of it and all"]
        #[doc = "of it, so that clients which failed together do not retry together."]
        #[doc = ""]
        #[doc = $note]
        $(#[$each])*
        pub fn retry_jitter(mut self, on: bool) -> Self {
            self.$($config).+.set_jitter(on);
            self
        }
    };
}
pub(crate) use retry_setters;

/// Retry settings resolved for one fetch or one mutation call.
#[derive(Debug)]
pub(crate) struct Retry<'a> {
    policy: Cow<'a, RetryPolicy>,
    delay: Option<&'a RetryDelay>,
    jitter: bool,
}

impl Retry<'_> {
    /// The wait before retry `attempt` (0-based), jittered when enabled.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let base = match self.delay {
            Some(f) => f.delay(attempt),
            None => default_retry_delay(attempt),
        };
        if self.jitter {
            crate::random::jittered(base)
        } else {
            base
        }
    }
}

impl<'a> Retry<'a> {
    /// These settings, except that no attempt is retried once `stop` says so (a stream
    /// that failed after its first item).
    pub(crate) fn unless(self, stop: impl Fn() -> bool + Send + Sync + 'static) -> Retry<'a> {
        let policy = self.policy.into_owned();
        Retry {
            policy: Cow::Owned(RetryPolicy::Predicate(Arc::new(move |failures, error| {
                !stop() && policy.should_retry(failures, error)
            }))),
            delay: self.delay,
            jitter: self.jitter,
        }
    }
}

/// What [`run_with_retries`] reports after a failed attempt, in this order: `Failed`, then
/// `Retry` or `GiveUp`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    /// An attempt failed; reported before the policy is asked.
    Failed,
    /// The policy asked for another attempt, after this wait.
    Retry(Duration),
    /// No more attempts: the error is the result.
    GiveUp,
}

/// Runs the user's `attempt` until it succeeds or `retry` says stop, waiting between
/// attempts; returns the value, or the last error.
///
/// `attempt` and `report` both receive `ctx`, the caller's state (handed over rather than
/// captured so that both may use it, and so that the future needs `ctx: Send`, not
/// `Sync`). Each attempt runs under the crate's panic policy (`what` names it in the log);
/// `report` does the caller's bookkeeping and logging for each failure (see [`Step`]).
/// A panic is never retried: it is a bug in the user's function, not a transient failure.
/// Nor is a cancelled attempt (its callers asked to stop), nor anything where the host
/// cannot time the wait (tokio: off a runtime).
pub(crate) async fn run_with_retries<C, T, Fut>(
    runtime: &crate::host::Runtime,
    what: &'static str,
    retry: &Retry<'_>,
    ctx: &mut C,
    mut attempt: impl FnMut(&mut C) -> Fut,
    mut report: impl FnMut(&mut C, &QueryError, u32, Step),
) -> Result<T, QueryError>
where
    Fut: Future<Output = Result<T, BoxError>>,
{
    let mut failures: u32 = 0;
    loop {
        let error = match contain_async(what, || attempt(ctx)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => QueryError::fetch(e),
            Err(panicked) => panicked,
        };
        failures = failures.saturating_add(1);
        report(ctx, &error, failures, Step::Failed);
        // The one place for "a panic is never retried": a panic is a bug in the user's
        // function, not a transient failure. A cancelled attempt's callers asked to stop.
        let again = !matches!(error, QueryError::Panicked(_) | QueryError::Cancelled)
            && retry.policy.should_retry(failures, &error);
        if again && !runtime.can_spawn() {
            tracing::warn!(what, error = %crate::error::report(&error), "not retried: no runtime to time the delay");
        } else if again {
            let delay = retry.delay(failures - 1);
            report(ctx, &error, failures, Step::Retry(delay));
            runtime.sleep(delay).await;
            continue;
        }
        report(ctx, &error, failures, Step::GiveUp);
        return Err(error);
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;

    #[test]
    fn default_delay_doubles_then_caps() {
        assert_eq!(default_retry_delay(0), Duration::from_secs(1));
        assert_eq!(default_retry_delay(1), Duration::from_secs(2));
        assert_eq!(default_retry_delay(4), Duration::from_secs(16));
        assert_eq!(default_retry_delay(5), Duration::from_secs(30));
        assert_eq!(default_retry_delay(200), Duration::from_secs(30));
    }

    #[test]
    fn count_policy() {
        let p = RetryPolicy::Count(2);
        assert!(p.should_retry(1, &QueryError::Cancelled));
        assert!(p.should_retry(2, &QueryError::Cancelled));
        assert!(!p.should_retry(3, &QueryError::Cancelled));
        assert!(!RetryPolicy::Count(0).should_retry(1, &QueryError::Cancelled));
    }

    #[test]
    fn panicking_predicate_means_no_retry() {
        let p = RetryPolicy::Predicate(Arc::new(|_, _| panic!("boom")));
        assert!(!p.should_retry(1, &QueryError::Cancelled));
    }

    #[test]
    fn unset_knobs_fall_back_then_default() {
        let unset = RetryConfig::default();
        let r = unset.resolve(None, QUERY_RETRIES);
        assert!(r.policy.should_retry(3, &QueryError::Cancelled));
        assert!(!r.policy.should_retry(4, &QueryError::Cancelled));
        assert_eq!(r.delay(2), Duration::from_secs(4));

        let mut client = RetryConfig::default();
        client.set_count(0);
        client.set_delay(|_| Duration::from_millis(5));
        let r = unset.resolve(Some(&client), QUERY_RETRIES);
        assert!(!r.policy.should_retry(1, &QueryError::Cancelled));
        assert_eq!(r.delay(7), Duration::from_millis(5));

        // Set to the built-in value, still wins over the fallback.
        let mut query = RetryConfig::default();
        query.set_count(QUERY_RETRIES);
        let r = query.resolve(Some(&client), QUERY_RETRIES);
        assert!(r.policy.should_retry(3, &QueryError::Cancelled));
        let r = unset.resolve(None, MUTATION_RETRIES);
        assert!(!r.policy.should_retry(1, &QueryError::Cancelled));
    }

    #[tokio::test(start_paused = true)]
    async fn panics_are_never_retried_and_steps_come_in_order() {
        let mut always = RetryConfig::default();
        always.set_predicate(|_, _| true);
        always.set_delay(|_| Duration::from_millis(1));
        let retry = always.resolve(None, 0);
        let calls = AtomicU32::new(0);
        let mut steps = Vec::new();
        let result: Result<(), _> = run_with_retries(
            &crate::host::Runtime::Tokio,
            "test",
            &retry,
            &mut steps,
            |_| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err(BoxError::from("transient"))
                    } else {
                        panic!("bug")
                    }
                }
            },
            |steps, _, failures, step| steps.push((failures, format!("{step:?}"))),
        )
        .await;
        assert!(matches!(result, Err(QueryError::Panicked(m)) if &*m == "bug"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let expected = [
            (1, "Failed"),
            (1, "Retry(1ms)"),
            (2, "Failed"),
            (2, "Retry(1ms)"),
            (3, "Failed"),
            (3, "GiveUp"),
        ];
        let steps: Vec<_> = steps.iter().map(|(n, s)| (*n, s.as_str())).collect();
        assert_eq!(steps, expected);
    }

    #[test]
    fn off_a_runtime_nothing_is_retried() {
        let mut config = RetryConfig::default();
        config.set_count(5);
        let retry = config.resolve(None, 0);
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = futures::executor::block_on(run_with_retries(
            &crate::host::Runtime::Tokio,
            "test",
            &retry,
            &mut (),
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(BoxError::from("down")) }
            },
            |_, _, _, _| {},
        ));
        assert!(matches!(result, Err(QueryError::Fetch(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    // Moved here from `tests/bad_input.rs` (issue 10, K) when `RetryPolicy` and
    // `RetryDelay` became private: the same assertions, on the same internals.

    /// Runs `f` from a `Drop` while the thread unwinds from another panic (what happens
    /// when a guard in user code calls into the client during a panic), and returns its
    /// result.
    fn while_unwinding<R>(f: impl FnOnce() -> R) -> R {
        struct CallOnDrop<'a>(Option<Box<dyn FnOnce() + 'a>>);
        impl Drop for CallOnDrop<'_> {
            fn drop(&mut self) {
                assert!(
                    std::thread::panicking(),
                    "the test must run this while unwinding"
                );
                (self.0.take().unwrap())();
            }
        }
        let mut out = None;
        let slot = &mut out;
        let outer = catch_unwind(AssertUnwindSafe(move || {
            let _guard = CallOnDrop(Some(Box::new(move || *slot = Some(f()))));
            panic!("outer panic (expected by the test)");
        }));
        assert!(outer.is_err());
        out.expect("the drop guard ran")
    }

    /// A closure that records whether it ran.
    #[derive(Clone, Default)]
    struct Ran(Arc<AtomicBool>);

    impl Ran {
        fn mark(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
        fn get(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// `retry_if` used to be wrapped in a bare `catch_unwind`: called from a `Drop` during a
    /// panic it ran anyway (and a panic inside it would have aborted the process). Under the
    /// one policy a panicking predicate and a predicate on an unwinding thread both mean "do
    /// not retry", and on the unwinding thread the predicate is not even run.
    #[test]
    fn k_retry_if_panics_are_contained_and_skipped_while_unwinding() {
        let panicking = RetryPolicy::Predicate(Arc::new(|_, _| panic!("retry_if boom")));
        assert!(!panicking.should_retry(1, &QueryError::Cancelled));

        let ran = Ran::default();
        let r = ran.clone();
        let always = RetryPolicy::Predicate(Arc::new(move |_, _| {
            r.mark();
            true
        }));
        assert!(always.should_retry(1, &QueryError::Cancelled));
        ran.0.store(false, Ordering::SeqCst);
        let retried = while_unwinding(|| always.should_retry(1, &QueryError::Cancelled));
        assert!(
            !retried,
            "on an unwinding thread the fallback is \"do not retry\""
        );
        assert!(
            !ran.get(),
            "the predicate must not run on an unwinding thread"
        );
    }

    /// A retry delay function: a panic falls back to the default delay, and so does a call
    /// on an unwinding thread, where the function is not run (it used to be).
    #[test]
    fn k_retry_delay_panics_fall_back_to_the_default_and_are_skipped_while_unwinding() {
        let panicking = RetryDelay::new(|_| panic!("delay boom"));
        assert_eq!(panicking.delay(2), default_retry_delay(2));

        let ran = Ran::default();
        let r = ran.clone();
        let custom = RetryDelay::new(move |_| {
            r.mark();
            Duration::from_millis(5)
        });
        assert_eq!(custom.delay(0), Duration::from_millis(5));
        ran.0.store(false, Ordering::SeqCst);
        assert_eq!(while_unwinding(|| custom.delay(3)), default_retry_delay(3));
        assert!(
            !ran.get(),
            "the delay function must not run on an unwinding thread"
        );
    }
}
