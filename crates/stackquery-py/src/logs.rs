//! The engine's log events (`tracing`) as Python `logging` records, on the logger
//! `stackquery` (and children named after the Rust module, e.g. `stackquery.engine.tier`).
//!
//! A storage that raises or hangs, a value that cannot be stored, a corrupt stored entry:
//! the engine carries on from memory and logs a warning. A Python user expects to see
//! that in `logging`, so the module installs, at import, a `tracing` subscriber that hands
//! warnings and errors to one thread of its own. That thread calls `logging` with the GIL
//! and no engine lock held (a logging handler is user code); events are queued, so a
//! burst costs the engine no Python work. If the process already has a global `tracing`
//! subscriber (an embedding Rust program), that one is kept.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Queued events beyond this are dropped (and counted in the next record's text).
const QUEUE: usize = 1024;

struct Record {
    level: Level,
    target: String,
    message: String,
}

static SENDER: OnceLock<SyncSender<Record>> = OnceLock::new();
static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Installs the bridge (once per process).
pub(crate) fn install() {
    if SENDER.get().is_some() {
        return;
    }
    let (tx, rx) = sync_channel::<Record>(QUEUE);
    let spawned = std::thread::Builder::new()
        .name("stackquery-log".into())
        .spawn(move || {
            for record in rx {
                Python::attach(|py| {
                    if let Err(e) = emit(py, &record) {
                        e.print(py);
                    }
                });
            }
        });
    if spawned.is_err() || SENDER.set(tx).is_err() {
        return;
    }
    let subscriber = tracing_subscriber::registry().with(ToPython);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

fn emit(py: Python<'_>, record: &Record) -> PyResult<()> {
    let logging = py.import("logging")?;
    // `stackquery::engine::tier` → `stackquery.engine.tier`.
    let name = record.target.replace("::", ".");
    let logger = logging.call_method1("getLogger", (name,))?;
    let level = match record.level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        _ => 10,
    };
    let dropped = DROPPED.swap(0, std::sync::atomic::Ordering::Relaxed);
    let message = if dropped > 0 {
        format!(
            "{} ({dropped} earlier log events were dropped)",
            record.message
        )
    } else {
        record.message.clone()
    };
    logger.call_method1("log", (level, "%s", message))?;
    Ok(())
}

/// The layer that queues events for the logging thread.
struct ToPython;

impl<S: Subscriber> Layer<S> for ToPython {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        *metadata.level() <= Level::WARN
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(tx) = SENDER.get() else { return };
        let mut text = Text(String::new());
        event.record(&mut text);
        let record = Record {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            message: text.0,
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(record) {
            DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The event's message, then its fields as `name=value`.
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            if !rest.is_empty() {
                self.0.push(' ');
                self.0.push_str(&rest);
            }
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }
}
