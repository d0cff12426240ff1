//! The engine's side of a streamed query (`stream.rs` is the stream's): each item reaches
//! the entry as an `Event::Streamed` while the flight goes on, and the attempts run under
//! the query's retry settings until the first item arrives, never after it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::Shared;
use crate::entry::{Entry, Event, Outcome};
use crate::error::QueryError;
use crate::flight::{FetchResult, Flight};
use crate::options::QueryOptions;
use crate::retry::{run_with_retries, Step};
use crate::stream::{StreamFetch, StreamSink};
use crate::weight::Weigher;

/// Where one flight's stream shows its items: the entry, through its state machine.
struct EntrySink<T> {
    shared: Arc<Shared>,
    entry: Arc<Entry<T>>,
    flight: Arc<Flight<T>>,
    /// The query's weigher (items are weighed like fetched data, with no lock held).
    weigher: Option<Arc<Weigher<T>>>,
    /// An item arrived: a failure after it is not retried (a new stream would start the
    /// data over, and TanStack Query does not retry mid-stream either).
    arrived: AtomicBool,
}

impl<T: Send + Sync + 'static> StreamSink<T> for EntrySink<T> {
    fn current(&self) -> Option<Arc<T>> {
        self.entry.data()
    }

    fn publish(&self, data: Option<Arc<T>>) -> bool {
        let weight = match (&data, self.shared.cache.weight_bound()) {
            (Some(data), Some(bound)) => {
                crate::weight::weigh(bound, self.weigher.as_deref(), data, &self.entry.key)
            }
            _ => 0,
        };
        let event = Event::Streamed {
            flight: &self.flight,
            data,
            weight,
        };
        let taken = matches!(self.shared.dispatch(&self.entry, event), Outcome::Yes);
        if taken && weight != 0 {
            // A stream that grows its data keeps the cache within its weight bound as it
            // goes, not only when it ends.
            let entry = &self.entry;
            self.shared.cache.trim_after_store(&entry.key, entry.id);
            self.shared.send_removals();
        }
        taken
    }

    fn arrived(&self) {
        self.arrived.store(true, Ordering::Relaxed);
    }
}

/// The attempts of a streamed fetch: a new stream per attempt, retried (under the query's
/// settings) only while no item has arrived; each attempt's wait for an item is bounded
/// by the query's fetch timeout. `report` is told of each failure, as for any fetch.
pub(super) async fn attempts<T: Send + Sync + 'static>(
    shared: &Arc<Shared>,
    entry: &Arc<Entry<T>>,
    flight: &Arc<Flight<T>>,
    opts: &QueryOptions<T>,
    stream: &dyn StreamFetch<T>,
    mut report: impl FnMut(&QueryError, u32, Step),
) -> FetchResult<T> {
    let sink = Arc::new(EntrySink {
        shared: shared.clone(),
        entry: entry.clone(),
        flight: flight.clone(),
        weigher: opts.weigher_fn().cloned(),
        arrived: AtomicBool::new(false),
    });
    let heard = sink.clone();
    let retry = shared
        .defaults
        .retry(opts)
        .unless(move || heard.arrived.load(Ordering::Relaxed));
    let idle = shared
        .defaults
        .fetch_timeout(opts)
        .map(|limit| (limit, shared.runtime.clone()));
    run_with_retries(
        &shared.runtime,
        "fetch",
        &retry,
        &mut (),
        |()| {
            let sink: Arc<dyn StreamSink<T>> = sink.clone();
            stream.start(sink, flight.cancellation().cloned(), idle.clone())
        },
        |(), error, failures, step| report(error, failures, step),
    )
    .await
}
