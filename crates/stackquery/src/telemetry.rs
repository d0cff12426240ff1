//! Traces and metrics: what stackquery tells a `tracing` subscriber and (feature
//! `metrics`) a [`metrics`](https://docs.rs/metrics) recorder.
//!
//! # Spans
//! Every fetch runs inside a span named `stackquery.fetch` (level INFO, target
//! `stackquery`), whose parent is the span that was current where the fetch started: the
//! caller of `fetch_query` or `refetch_query`, the observer that asked, or the call whose
//! stale hit started a background refresh. So the log lines of the fetch function (an
//! upstream HTTP call, a database query) carry the request that caused them, even though
//! the fetch runs in a task of its own. Its fields:
//! `key` (the query key), and, recorded when it ends, `duration_ms` (from its start to its
//! result, retries included), `retries` (attempts tried again) and `outcome` (`ok`,
//! `error`, `cancelled`, `hydrated`: served by the second tier, or `cluster`: served by
//! another instance's fetch). A fresh hit makes no span. When a subscriber disables the
//! span (its level is filtered out), the fetch still runs inside the caller's span.
//!
//! # Metrics
//! With the `metrics` feature, the client records into whatever recorder the process
//! installed (Prometheus, StatsD, …); without a recorder, nothing is recorded. The names:
//!
//! | name | kind | what |
//! |---|---|---|
//! | `stackquery_hits_total` | counter | calls answered with fresh data (published in batches, see below) |
//! | `stackquery_stale_hits_total` | counter | calls answered with stale data |
//! | `stackquery_misses_total` | counter | calls that waited for a fetch |
//! | `stackquery_fetches_total` | counter | fetches started |
//! | `stackquery_dedup_joins_total` | counter | calls that joined a fetch in flight |
//! | `stackquery_retries_total` | counter | failed attempts tried again |
//! | `stackquery_errors_total` | counter | fetches that failed for good |
//! | `stackquery_evictions_total` | counter | entries evicted for `max_queries` or `max_weight` |
//! | `stackquery_gc_total` | counter | entries collected by the gc |
//! | `stackquery_l2_hits_total`, `_l2_misses_total`, `_l2_errors_total`, `_l2_writes_total` | counter | second-tier reads, failures and writes |
//! | `stackquery_bus_in_total`, `stackquery_bus_out_total` | counter | invalidation-bus messages |
//! | `stackquery_fetch_duration_seconds` | histogram | a fetch, retries included |
//! | `stackquery_hydration_duration_seconds` | histogram | a second-tier read that hydrates a cold key |
//! | `stackquery_entries` | gauge | entries in memory |
//! | `stackquery_observers` | gauge | observers subscribed |
//!
//! Fresh hits are the one hot path: it adds one relaxed increment to a per-thread stripe
//! of the client's own counter, feature or not, and never calls the recorder. Hits reach
//! the recorder as a delta of that counter (and `stackquery_entries` is set) whenever the
//! client starts a fetch, fires a timer (gc, stale notices, polls), answers
//! [`stats`](crate::QueryClient::stats), or is asked to with
//! [`flush_metrics`](crate::QueryClient::flush_metrics) (call it before rendering an
//! export, for exact figures). Everything else is recorded as it happens.
//!
//! Metrics carry no labels: two clients in one process add up.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// The metric names (see the [module documentation](self)).
pub mod names {
    /// Calls answered with fresh data.
    pub const HITS: &str = "stackquery_hits_total";
    /// Calls answered with stale data.
    pub const STALE_HITS: &str = "stackquery_stale_hits_total";
    /// Calls that waited for a fetch.
    pub const MISSES: &str = "stackquery_misses_total";
    /// Fetches started.
    pub const FETCHES: &str = "stackquery_fetches_total";
    /// Calls that joined a fetch in flight.
    pub const DEDUP_JOINS: &str = "stackquery_dedup_joins_total";
    /// Failed attempts tried again.
    pub const RETRIES: &str = "stackquery_retries_total";
    /// Fetches that failed for good.
    pub const ERRORS: &str = "stackquery_errors_total";
    /// Entries evicted for `max_queries` or `max_weight`.
    pub const EVICTIONS: &str = "stackquery_evictions_total";
    /// Entries collected by the gc.
    pub const GC: &str = "stackquery_gc_total";
    /// Second-tier reads that found a usable entry.
    pub const L2_HITS: &str = "stackquery_l2_hits_total";
    /// Second-tier reads that found nothing.
    pub const L2_MISSES: &str = "stackquery_l2_misses_total";
    /// Second-tier failures.
    pub const L2_ERRORS: &str = "stackquery_l2_errors_total";
    /// Second-tier writes.
    pub const L2_WRITES: &str = "stackquery_l2_writes_total";
    /// Invalidation-bus messages received.
    pub const BUS_IN: &str = "stackquery_bus_in_total";
    /// Invalidation-bus messages sent.
    pub const BUS_OUT: &str = "stackquery_bus_out_total";
    /// Histogram: a fetch's duration in seconds, retries included.
    pub const FETCH_DURATION: &str = "stackquery_fetch_duration_seconds";
    /// Histogram: a hydrating second-tier read's duration in seconds.
    pub const HYDRATION_DURATION: &str = "stackquery_hydration_duration_seconds";
    /// Gauge: entries in memory.
    pub const ENTRIES: &str = "stackquery_entries";
    /// Gauge: observers subscribed.
    pub const OBSERVERS: &str = "stackquery_observers";
}

/// Adds one to the counter `name` (nothing without the feature).
#[inline]
pub(crate) fn count(name: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(name).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = name;
}

/// Records `d` in the histogram `name`, in seconds (nothing without the feature).
#[inline]
pub(crate) fn time(name: &'static str, d: std::time::Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(name).record(d.as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = (name, d);
}

/// Moves the gauge `name` by `by` (nothing without the feature).
#[inline]
pub(crate) fn gauge_add(name: &'static str, by: f64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(name).increment(by);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, by);
}

/// Whether the fetch's clock must be read for the metrics.
pub(crate) const TIMED: bool = cfg!(feature = "metrics");

/// The hits published to the recorder so far (feature `metrics`).
#[derive(Default)]
pub(crate) struct Published {
    #[cfg(feature = "metrics")]
    hits: std::sync::atomic::AtomicU64,
}

impl Published {
    /// Publishes the fresh hits counted since the last call (`hits`: the client's total so
    /// far), and sets the entries gauge. Nothing without the feature.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn flush(&self, hits: u64, entries: usize) {
        #[cfg(feature = "metrics")]
        {
            use std::sync::atomic::Ordering;
            let now = hits;
            // `fetch_max`: two flushes racing never publish a hit twice (the counter only
            // grows).
            let before = self.hits.fetch_max(now, Ordering::Relaxed);
            if now > before {
                metrics::counter!(names::HITS).increment(now - before);
            }
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(names::ENTRIES).set(entries as f64);
        }
    }
}

/// A fetch's `stackquery.fetch` span and what it records when the fetch ends. Boxed
/// and made only when a subscriber enables the span, so a fetch without one carries a
/// single word for it (the fetch future is moved several times; its size is paid in
/// copies).
pub(crate) struct FetchTrace {
    span: tracing::Span,
    started: std::time::Instant,
    retries: AtomicU32,
    ended: AtomicBool,
}

impl FetchTrace {
    /// The span of a fetch of `key`, child of the current span; `None` if disabled.
    #[inline]
    pub(crate) fn start(key: &crate::key::QueryKey) -> Option<Box<FetchTrace>> {
        let span = tracing::info_span!(
            target: "stackquery",
            "stackquery.fetch",
            key = %key,
            duration_ms = tracing::field::Empty,
            retries = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        if span.is_disabled() {
            return None;
        }
        Some(Box::new(FetchTrace {
            span,
            started: std::time::Instant::now(),
            retries: AtomicU32::new(0),
            ended: AtomicBool::new(false),
        }))
    }

    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// One more attempt tried again.
    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how the fetch ended (once: later calls do nothing).
    pub(crate) fn end(&self, outcome: &'static str) {
        if self.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.span.record("duration_ms", ms);
        self.span
            .record("retries", self.retries.load(Ordering::Relaxed));
        self.span.record("outcome", outcome);
    }
}
