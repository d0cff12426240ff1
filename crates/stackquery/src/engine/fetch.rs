//! The fetch task of one flight: hydration from the second tier, cluster-wide dedup, the
//! user's fetch function with retries, and settling the entry. The caller that started it
//! runs it until it first has to wait, then it runs as its own tokio task
//! ([`Shared::lead_fetch`]), so a caller that drops its future cancels nothing for the
//! others; a fetch nobody waits for (a background refresh) is a task from the start.

use crate::events::CacheEventKind;
use crate::telemetry::FetchTrace;
use std::future::Future;
use std::sync::Arc;
#[cfg(feature = "redis")]
use std::time::Duration;

#[cfg(feature = "redis")]
use tokio::time::Instant;

#[cfg(feature = "redis")]
use super::cluster::Acquired;
use super::Shared;
use crate::entry::{Entry, Event, Reload, Source};
use crate::error::QueryError;
use crate::flight::{FetchResult, Flight};
use crate::options::QueryOptions;
use crate::retry::{run_with_retries, Step};

/// Settles the flight as cancelled if its task is dropped before finishing (aborted, or
/// the runtime shut down), so no waiter is left hanging.
struct FlightGuard<T: Send + Sync + 'static> {
    shared: Arc<Shared>,
    entry: Arc<Entry<T>>,
    flight: Arc<Flight<T>>,
    /// The fetch's `stackquery.fetch` span and what it records (see `telemetry.rs`);
    /// `None` (one word in the task) unless a subscriber enabled the span.
    trace: Option<Box<FetchTrace>>,
}

impl<T: Send + Sync + 'static> FlightGuard<T> {
    /// Settles the flight (through the entry's state machine, so its effects run in
    /// order: the write when `write`, then notification, then the waiters). `true`: the
    /// entry stored the data. Data is weighed first, by `opts`' weigher, with no lock held.
    /// (Inlined, as it was before it weighed: called once per fill.)
    #[inline]
    fn settle(
        &self,
        result: FetchResult<T>,
        opts: &QueryOptions<T>,
        source: Source,
        write: bool,
    ) -> bool {
        // Equal data keeps the held `Arc` (structural sharing; a pointer check without).
        let result = result.map(|data| Shared::share_structure(&self.entry, opts, data));
        let weight = match &result {
            Ok(data) => self.shared.weigh_for_query(opts, data, &self.entry.key),
            Err(_) => 0,
        };
        let event = Event::Settled {
            flight: &self.flight,
            result,
            weight,
            source,
            write,
        };
        matches!(
            self.shared.dispatch(&self.entry, event),
            crate::entry::Outcome::Yes
        )
    }

    /// Settles the flight with data read from the second tier (or a restored snapshot):
    /// its wall-clock stamp and invalidated flag are kept, and its age counts against the
    /// stale time. Without `keep_invalidated` the flag is dropped (a fresh cluster result).
    fn settle_stored(
        &self,
        envelope: crate::storage::Envelope<T>,
        opts: &QueryOptions<T>,
        keep_invalidated: bool,
    ) {
        let at = envelope.data_updated_at();
        let age = crate::deadline::age_of(at);
        tracing::debug!(key = %self.entry.key, ?age, "settled from the second tier");
        let source = Source::Stored {
            at,
            invalidated: keep_invalidated && envelope.invalidated,
            age,
        };
        self.settle(Ok(Arc::new(envelope.data)), opts, source, false);
    }

    /// Records the fetch's outcome on its span, once.
    fn end(&self, outcome: &'static str) {
        if let Some(trace) = &self.trace {
            trace.end(outcome);
        }
    }
}

impl<T: Send + Sync + 'static> Drop for FlightGuard<T> {
    fn drop(&mut self) {
        if !self.flight.is_resolved() {
            let event = Event::Settled {
                flight: &self.flight,
                result: Err(QueryError::Cancelled),
                weight: 0,
                source: Source::Fetch,
                write: false,
            };
            self.shared.dispatch(&self.entry, event);
        }
        self.end("cancelled");
    }
}

/// The fetch task: runs the user's function with retries, then settles the flight.
///
/// The flight hears that its task stopped ([`Flight::stopped`]) once everything the task
/// held is dropped: the token is taken before the task is first polled (a task aborted
/// before it ever ran stops too), and it is the task's outermost local, so it is dropped
/// after the fetch function's future.
///
/// The task runs inside the `stackquery.fetch` span `trace` holds (a child of the span
/// current where the fetch started), or, without it (no subscriber, or one that filters
/// the span out), inside the span current now: either way the fetch function's log lines
/// carry the caller's span, though the task outlives the caller's poll.
pub(crate) fn run_flight<T: Send + Sync + 'static>(
    shared: Arc<Shared>,
    entry: Arc<Entry<T>>,
    flight: Arc<Flight<T>>,
    opts: QueryOptions<T>,
    hydrate: Option<Reload>,
    trace: Option<Box<FetchTrace>>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let running = flight.running();
    // The options live in a box of their own: the task holds one word for them instead
    // of the whole options (their size would be paid in every copy of the task's future,
    // and would push it out of the allocator's fast size classes).
    let opts = Box::new(opts);
    // Boxed: one word in every fetch task instead of a whole `Span` (the task's size
    // decides its allocator class; only a process with a subscriber pays the box).
    let run_in: Option<Box<tracing::Span>> = match &trace {
        Some(trace) => Some(Box::new(trace.span().clone())),
        // With every level off (no subscriber), no span can be current: one atomic load
        // instead of asking the dispatcher.
        None if !tracing::level_enabled!(tracing::Level::ERROR) => None,
        None => Some(tracing::Span::current())
            .filter(|s| !s.is_none())
            .map(Box::new),
    };
    async move {
        let _running = running;
        // Entered around every poll, like `tracing::Instrumented`, but built in place
        // inside this future: a wrapper around it would copy the whole fetch future once
        // more (measured: +136 instructions of `memcpy` per new key in the fill).
        let mut task = std::pin::pin!(fetch_task(shared, entry, flight, opts, hydrate, trace));
        std::future::poll_fn(|cx| {
            let _entered = run_in.as_deref().map(tracing::Span::enter);
            task.as_mut().poll(cx)
        })
        .await;
    }
}

async fn fetch_task<T: Send + Sync + 'static>(
    shared: Arc<Shared>,
    entry: Arc<Entry<T>>,
    flight: Arc<Flight<T>>,
    opts: Box<QueryOptions<T>>,
    hydrate: Option<Reload>,
    trace: Option<Box<FetchTrace>>,
) {
    // Cancelled before the task first ran: the fetch function is never called.
    if flight.is_resolved() {
        if let Some(trace) = trace {
            trace.end("cancelled");
        }
        return;
    }
    let guard = FlightGuard {
        shared,
        entry,
        flight,
        trace,
    };
    if let Some(reload) = hydrate {
        if hydrate_flight(&guard, &opts, reload).await {
            guard.end("hydrated");
            guard
                .shared
                .cache
                .trim_after_store(&guard.entry.key, guard.entry.id);
            guard.shared.send_removals();
            return;
        }
    }
    #[cfg(feature = "redis")]
    let lease = if hydrate == Some(Reload::No) {
        match cluster_step(&guard, &opts).await {
            ClusterStep::Served => {
                guard.end("cluster");
                guard
                    .shared
                    .cache
                    .trim_after_store(&guard.entry.key, guard.entry.id);
                guard.shared.send_removals();
                return;
            }
            ClusterStep::Lease(token) => Some(token),
            ClusterStep::Local => None,
        }
    } else {
        None
    };
    #[cfg(feature = "redis")]
    if let Some(token) = lease {
        // The lease is renewed while the fetch and the shared-tier write run, so a slow
        // fetch never lets another instance take it over and fetch the key again.
        let work = async {
            let result = fetch_with_retries(&guard, &opts).await;
            if guard.settle(result, &opts, Source::Fetch, false) {
                // The others are waiting on the shared tier: write it now, then tell them
                // what landed (a failed write deleted the stored copy instead: they refetch).
                guard.shared.write_now_then_announce(&guard.entry).await;
            }
        };
        guard.shared.cluster.hold_while(&token, work).await;
        guard.shared.cluster.release(&token).await;
        guard
            .shared
            .cache
            .trim_after_store(&guard.entry.key, guard.entry.id);
        guard.shared.send_removals();
        return;
    }
    let result = fetch_with_retries(&guard, &opts).await;
    // The second-tier write is queued before the waiters wake, so a caller that then
    // flushes the storage finds it.
    guard.settle(result, &opts, Source::Fetch, true);
    guard
        .shared
        .cache
        .trim_after_store(&guard.entry.key, guard.entry.id);
    guard.shared.send_removals();
}

/// The user's fetch function under the retry policy, every failure recorded on the entry.
async fn fetch_with_retries<T: Send + Sync + 'static>(
    guard: &FlightGuard<T>,
    opts: &QueryOptions<T>,
) -> FetchResult<T> {
    if crate::telemetry::TIMED || guard.shared.events.on() {
        // Timed (metrics) and told (events), in a box of its own: the quiet path's future
        // (every fetch's task) keeps its size, and with it the allocator's size class.
        Box::pin(fetch_told(guard, opts)).await
    } else {
        fetch_quietly(guard, opts).await
    }
}

/// [`fetch_quietly`] with its start, duration and outcome on the event stream, and its
/// duration in the metrics.
async fn fetch_told<T: Send + Sync + 'static>(
    guard: &FlightGuard<T>,
    opts: &QueryOptions<T>,
) -> FetchResult<T> {
    let (key, events) = (&guard.entry.key, &guard.shared.events);
    let started = std::time::Instant::now();
    events.emit(|| CacheEventKind::FetchStarted { key: key.clone() });
    let result = fetch_quietly(guard, opts).await;
    let duration = started.elapsed();
    crate::telemetry::time(crate::telemetry::names::FETCH_DURATION, duration);
    match &result {
        Ok(_) => events.emit(|| CacheEventKind::FetchSucceeded {
            key: key.clone(),
            duration,
        }),
        Err(error) => events.emit(|| CacheEventKind::FetchFailed {
            key: key.clone(),
            duration,
            error: error.clone(),
        }),
    }
    result
}

async fn fetch_quietly<T: Send + Sync + 'static>(
    guard: &FlightGuard<T>,
    opts: &QueryOptions<T>,
) -> FetchResult<T> {
    let key = &guard.entry.key;
    let value = match opts.fetcher.as_stream() {
        None => {
            let retry = guard.shared.defaults.retry(opts);
            run_with_retries(
                &guard.shared.runtime,
                "fetch",
                &retry,
                // The attempts made so far: the number of the next (a fetch function that
                // takes a context is told it).
                &mut 0_u32,
                |attempts| {
                    let attempt = *attempts;
                    *attempts += 1;
                    // (A function that takes a context gets the key, the attempt number
                    // and a token, the child of the flight's: `fetcher.rs`.)
                    let key = &guard.entry.key;
                    let previous = guard.flight.previous.data.as_ref();
                    let call =
                        opts.fetcher
                            .call(key, attempt, guard.flight.cancellation(), previous);
                    match guard.shared.defaults.fetch_timeout(opts) {
                        None => call,
                        // Boxed like the plain attempt (one type, and the fetch task's
                        // future keeps its size): the attempt raced against the host's
                        // clock. A timeout drops the attempt, which fires its token.
                        Some(limit) => timed(&guard.shared.runtime, call, limit),
                    }
                },
                |_, error, failures, step| report_attempt(guard, error, failures, step),
            )
            .await
            .map(Arc::new)
        }
        // Boxed: the common fetch task's future keeps its size.
        Some(stream) => {
            Box::pin(super::stream::attempts(
                &guard.shared,
                &guard.entry,
                &guard.flight,
                opts,
                stream,
                |error, failures, step| report_attempt(guard, error, failures, step),
            ))
            .await
        }
    };
    match &value {
        Ok(_) => {
            guard.end("ok");
            tracing::debug!(%key, "fetch success");
        }
        Err(error) if error.is_cancelled() => guard.end("cancelled"),
        Err(_) => {
            guard.shared.counters.errors.incr();
            guard.end("error");
        }
    }
    value
}

/// What a failed attempt of the fetch function leaves: the entry's failure count, the
/// retry counter, the span, the event stream and the log.
fn report_attempt<T: Send + Sync + 'static>(
    guard: &FlightGuard<T>,
    error: &QueryError,
    failures: u32,
    step: Step,
) {
    let key = &guard.entry.key;
    match step {
        Step::Failed => {
            let event = Event::AttemptFailed {
                flight: &guard.flight,
                error: error.clone(),
            };
            guard.shared.dispatch(&guard.entry, event);
        }
        Step::Retry(delay) => {
            guard.shared.counters.retries.incr();
            if let Some(trace) = &guard.trace {
                trace.retried();
            }
            tracing::debug!(%key, error = %crate::error::report(error), failures, ?delay, "fetch retry");
            guard.shared.events.emit(|| CacheEventKind::FetchRetried {
                key: key.clone(),
                failures,
                error: error.clone(),
            });
        }
        // The entry stopped waiting for it (its token fired): no failure to warn of.
        Step::GiveUp if error.is_cancelled() => {
            tracing::debug!(%key, failures, "fetch cancelled");
        }
        Step::GiveUp => {
            tracing::warn!(%key, error = %crate::error::report(error), failures, "fetch failed")
        }
    }
}

#[cfg(feature = "redis")]
enum ClusterStep {
    /// Another instance's result was read from the shared tier.
    Served,
    /// This instance holds the fetch lease.
    Lease(crate::bus::LeaseToken),
    /// No cluster dedup (or the wait ran out): fetch locally.
    Local,
}

/// Cluster-wide dedup for a cold persisted key: take the lease, or wait for its holder's
/// result (woken by its `Set` message, re-checking every 50 ms so an expired lease is taken
/// over), or give up after `max_wait` and fetch locally (`Duration::MAX`: never give up).
#[cfg(feature = "redis")]
async fn cluster_step<T: Send + Sync + 'static>(
    guard: &FlightGuard<T>,
    opts: &QueryOptions<T>,
) -> ClusterStep {
    let shared = &guard.shared;
    let cluster = &shared.cluster;
    let (Some(dedup), Some(fns), Some(tier)) = (&cluster.dedup, opts.persist, shared.tier.clone())
    else {
        return ClusterStep::Local;
    };
    let key = guard.entry.key.to_string();
    // `max_wait` is user-given: `Duration::MAX` (or anything past the clock's range) means
    // "wait for the holder however long it takes", never an overflow panic.
    let deadline = crate::deadline::after(dedup.max_wait);
    let notify = cluster.waiter(&key);
    let serve = |envelope: crate::storage::Envelope<T>| guard.settle_stored(envelope, opts, false);
    // The holder's result, never an invalidated copy; and for a flight that must deliver
    // fresh data, never one older than the stale time either (it fetches instead).
    let stale_time = shared.defaults.stale_time(opts);
    let usable = |envelope: &crate::storage::Envelope<T>| {
        !envelope.invalidated && (!guard.flight.fresh_only || fresh_copy(envelope, stale_time))
    };
    let step = loop {
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // The holder's result first: a lease released after its write is no invitation
        // to fetch again.
        if let Some(envelope) = tier.read(&shared.counters, &key, fns).await {
            if usable(&envelope) {
                serve(envelope);
                break ClusterStep::Served;
            }
        }
        match cluster.acquire(&key).await {
            Acquired::Held(token) => {
                // Re-check: the holder may have written and released between our read
                // and our acquire.
                match tier.read(&shared.counters, &key, fns).await {
                    Some(envelope) if usable(&envelope) => {
                        cluster.release(&token).await;
                        serve(envelope);
                        break ClusterStep::Served;
                    }
                    _ => break ClusterStep::Lease(token),
                }
            }
            // Nobody can coordinate while Redis is unreachable: waiting for a holder that
            // may not exist would cost the whole `max_wait`.
            Acquired::Unreachable => break ClusterStep::Local,
            Acquired::Busy => {}
        }
        let mut tick = Duration::from_millis(50);
        if let Some(deadline) = deadline {
            let now = Instant::now();
            if now >= deadline {
                tracing::debug!(%key, "cluster dedup: waited long enough, fetching locally");
                break ClusterStep::Local;
            }
            tick = tick.min(deadline - now);
        }
        let _ = tokio::time::timeout(tick, woken).await;
    };
    cluster.forget_waiter(&key, &notify);
    step
}

/// Reads the key from a restored snapshot or the second tier. On a hit the flight settles
/// with that data (`true`); stale data also starts a background refresh.
async fn hydrate_flight<T: Send + Sync + 'static>(
    guard: &FlightGuard<T>,
    opts: &QueryOptions<T>,
    reload: Reload,
) -> bool {
    let Some(fns) = opts.persist else {
        return false;
    };
    let key = guard.entry.key.to_string();
    let restored = guard
        .shared
        .restored
        .take(&key, guard.shared.defaults.gc_time);
    let envelope = match restored.map(|q| q.decode(fns)) {
        Some(Ok(envelope)) => Some(envelope),
        Some(Err(error)) => {
            tracing::warn!(%key, error = %crate::error::report(&error), "unusable snapshot entry: ignored");
            None
        }
        None => None,
    };
    let envelope = match (envelope, &guard.shared.tier) {
        (Some(e), _) => Some(e),
        (None, Some(tier)) => {
            let started = crate::telemetry::TIMED.then(std::time::Instant::now);
            let read = tier.read(&guard.shared.counters, &key, fns).await;
            if let Some(started) = started {
                let name = crate::telemetry::names::HYDRATION_DURATION;
                crate::telemetry::time(name, started.elapsed());
            }
            read
        }
        (None, None) => None,
    };
    let stale_time = guard.shared.defaults.stale_time(opts);
    // Initial data stands in for a stored copy that is missing, or older than it.
    if let Some((data, at, age)) = initial_instead(guard, opts, envelope.as_ref()) {
        if guard.flight.fresh_only && age >= stale_time {
            return false; // stale: the fetch function must deliver
        }
        let source = Source::Stored {
            at,
            invalidated: false,
            age,
        };
        guard.settle(Ok(data), opts, source, false);
        if !guard
            .entry
            .is_fresh_for(stale_time, guard.shared.runtime.now())
        {
            guard.shared.refresh(&guard.entry, opts);
        }
        return true;
    }
    let Some(envelope) = envelope else {
        return false;
    };
    // A flight that must deliver fresh data (a caller refusing stale data waits on it, or
    // an invalidation's refetch) never settles with a stale or invalidated copy: it
    // fetches instead.
    if guard.flight.fresh_only && !fresh_copy(&envelope, stale_time) {
        return false;
    }
    let at = envelope.data_updated_at();
    // A reload never takes invalidated data, and after lost messages only newer data;
    // otherwise fetch.
    // A reload never clears an invalidation: after lost messages (`IfNewer`) only data
    // strictly newer than ours is taken — an equal stamp is the very copy this or another
    // instance invalidated, and taking it would serve invalidated data as fresh.
    let current = guard.entry.data_updated_at();
    let not_newer = current.is_some_and(|c| c >= at);
    if current.is_some() && (envelope.invalidated || (reload == Reload::IfNewer && not_newer)) {
        return false;
    }
    guard.settle_stored(envelope, opts, true);
    let stale = !guard
        .entry
        .is_fresh_for(stale_time, guard.shared.runtime.now());
    if stale {
        guard.shared.refresh(&guard.entry, opts);
    }
    true
}

/// The query's initial data (with its stamp and age), when it wins over `stored`: the
/// entry holds no data, and there is no stored copy, or the initial data has a stamp
/// (`initial_data_updated_at`) newer than the copy's. (Unstamped initial data is a
/// fallback: any stored copy wins.) Built, if lazy, with no lock held.
fn initial_instead<T: Send + Sync + 'static>(
    guard: &FlightGuard<T>,
    opts: &QueryOptions<T>,
    stored: Option<&crate::storage::Envelope<T>>,
) -> Option<(Arc<T>, std::time::SystemTime, std::time::Duration)> {
    let (initial, given_at) = opts.initial()?;
    let wins = match (stored, given_at) {
        (None, _) => true,
        (Some(stored), Some(at)) => at > stored.data_updated_at(),
        (Some(_), None) => false,
    };
    if !wins || guard.entry.seedable().is_none() {
        return None;
    }
    let data = initial.get().ok()?;
    let (at, age) = crate::options::stamp_and_age(given_at);
    Some((data, at, age))
}

/// Whether a stored copy is fresh: not invalidated, and younger than `stale_time` (its
/// age by the wall clock, as hydration counts it).
fn fresh_copy<T>(envelope: &crate::storage::Envelope<T>, stale_time: std::time::Duration) -> bool {
    !envelope.invalidated && crate::deadline::age_of(envelope.data_updated_at()) < stale_time
}

/// An attempt of the fetch function bounded by `limit` on the host's clock: past it the
/// attempt is dropped and fails with a `TimedOut` (turned into
/// [`QueryError::Timeout`](crate::QueryError::Timeout) by `QueryError::fetch`).
fn timed<T: Send + 'static>(
    runtime: &crate::host::Runtime,
    attempt: futures::future::BoxFuture<'static, Result<T, crate::error::BoxError>>,
    limit: std::time::Duration,
) -> futures::future::BoxFuture<'static, Result<T, crate::error::BoxError>> {
    let sleep = runtime.sleep(limit);
    Box::pin(async move {
        match futures::future::select(attempt, sleep).await {
            futures::future::Either::Left((result, _)) => result,
            futures::future::Either::Right(((), _)) => {
                Err(Box::new(crate::error::TimedOut(limit)) as _)
            }
        }
    })
}
