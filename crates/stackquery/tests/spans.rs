//! The `stackquery.fetch` span: the fetch runs inside it, it is a child of the span current
//! where the fetch started, and it records its duration, retries and outcome. So an
//! upstream call's log lines (events inside the user's fetch function) carry the request
//! that caused them, whether the fetch ran inline, moved to a task at its first wait, or
//! was a background refresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stackquery::{key, QueryClient, QueryOptions};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Instrument, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Clone, Debug)]
struct SpanRec {
    name: &'static str,
    parent: Option<u64>,
    fields: HashMap<String, String>,
}

#[derive(Clone, Debug)]
struct EventRec {
    message: String,
    /// The ids of the spans the event happened in, leaf first.
    scope: Vec<u64>,
}

/// A layer that records every span (name, parent, fields as they are recorded) and every
/// event with its span scope.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<HashMap<u64, SpanRec>>>,
    events: Arc<Mutex<Vec<EventRec>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let rec = SpanRec {
            name: attrs.metadata().name(),
            parent,
            fields,
        };
        self.spans.lock().unwrap().insert(id.into_u64(), rec);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some(rec) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut rec.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let scope = ctx
            .event_scope(event)
            .map(|s| s.map(|span| span.id().into_u64()).collect())
            .unwrap_or_default();
        self.events.lock().unwrap().push(EventRec {
            message: fields.remove("message").unwrap_or_default(),
            scope,
        });
    }
}

impl Recorder {
    /// The spans each event with `message` happened in, leaf first: (name, fields).
    fn scopes_of(&self, message: &str) -> Vec<Vec<(&'static str, HashMap<String, String>)>> {
        let spans = self.spans.lock().unwrap();
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.message == message)
            .map(|e| {
                e.scope
                    .iter()
                    .map(|id| (spans[id].name, spans[id].fields.clone()))
                    .collect()
            })
            .collect()
    }

    fn fetch_spans(&self) -> Vec<SpanRec> {
        let mut v: Vec<_> = self
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.name == "stackquery.fetch")
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v.into_iter().map(|(_, s)| s).collect()
    }

    fn span(&self, id: u64) -> SpanRec {
        self.spans.lock().unwrap()[&id].clone()
    }
}

fn install() -> (Recorder, tracing::subscriber::DefaultGuard) {
    let rec = Recorder::default();
    let sub = tracing_subscriber::registry().with(rec.clone());
    (rec, tracing::subscriber::set_default(sub))
}

/// The scope of an upstream log line: the fetch span right above it, the caller's
/// request span above that.
fn assert_fetch_under_request(
    scope: &[(&'static str, HashMap<String, String>)],
    key: &str,
    req: &str,
) {
    let names: Vec<_> = scope.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["stackquery.fetch", "request"], "{scope:?}");
    assert_eq!(scope[0].1["key"], key);
    assert_eq!(scope[1].1["req"], req);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_ready_at_once_runs_in_a_child_of_the_callers_span() {
    let (rec, _guard) = install();
    let client = QueryClient::new();
    let opts = QueryOptions::new(key!["user", 1], || async {
        tracing::info!("upstream call");
        Ok::<_, String>(7_u32)
    })
    .stale_time(Duration::from_secs(60));
    let got = client
        .fetch_query(&opts)
        .instrument(tracing::info_span!("request", req = 1))
        .await
        .unwrap();
    assert_eq!(*got, 7);
    let scopes = rec.scopes_of("upstream call");
    assert_eq!(scopes.len(), 1);
    assert_fetch_under_request(&scopes[0], r#"["user",1]"#, "1");
    let fetches = rec.fetch_spans();
    assert_eq!(fetches.len(), 1);
    let f = &fetches[0].fields;
    assert_eq!(f["outcome"], "ok");
    assert_eq!(f["retries"], "0");
    assert!(f["duration_ms"].parse::<f64>().unwrap() >= 0.0, "{f:?}");
    let parent = rec.span(fetches[0].parent.expect("a parent"));
    assert_eq!(
        (parent.name, parent.fields["req"].as_str()),
        ("request", "1")
    );

    // A fresh hit makes no span.
    for _ in 0..10 {
        client.fetch_query(&opts).await.unwrap();
    }
    assert_eq!(rec.fetch_spans().len(), 1, "no span on a hit");
    assert_eq!(client.stats().hits, 10);
}

/// The fetch waits (a timer), so its caller hands it to a task of its own at that first
/// wait (`lead_fetch`): the lines it logs after the wait, on that task, still carry the
/// caller's span. A failed attempt is retried, and the span counts it.
#[tokio::test(start_paused = true)]
async fn a_fetch_moved_to_its_own_task_keeps_the_callers_span() {
    let (rec, _guard) = install();
    let client = QueryClient::new();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let opts = QueryOptions::new(key!["slow"], move || {
        let a = a.clone();
        async move {
            tracing::info!("before the wait");
            tokio::time::sleep(Duration::from_millis(50)).await;
            tracing::info!("after the wait");
            if a.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err("flaky".to_string());
            }
            Ok::<_, String>("done")
        }
    })
    .retry(1)
    .retry_delay(|_| Duration::from_millis(10));
    let got = client
        .fetch_query(&opts)
        .instrument(tracing::info_span!("request", req = 2))
        .await
        .unwrap();
    assert_eq!(*got, "done");
    for message in ["before the wait", "after the wait"] {
        let scopes = rec.scopes_of(message);
        assert_eq!(scopes.len(), 2, "two attempts log {message:?}");
        for scope in &scopes {
            assert_fetch_under_request(scope, r#"["slow"]"#, "2");
        }
    }
    let fetches = rec.fetch_spans();
    assert_eq!(fetches.len(), 1, "one fetch, retried inside its span");
    let f = &fetches[0].fields;
    assert_eq!((f["outcome"].as_str(), f["retries"].as_str()), ("ok", "1"));
    let ms: f64 = f["duration_ms"].parse().unwrap();
    assert!(ms >= 0.0, "{f:?}");
}

/// A stale hit starts a background refresh in a task nobody waits for: its parent is the
/// span of the call whose stale hit started it, not the one that first fetched.
#[tokio::test(start_paused = true)]
async fn a_background_refresh_is_a_child_of_the_call_that_started_it() {
    let (rec, _guard) = install();
    let client = QueryClient::new();
    let opts = QueryOptions::new(key!["feed"], || async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        tracing::info!("upstream call");
        Ok::<_, String>(1_u8)
    })
    .stale_time(Duration::ZERO);
    client
        .fetch_query(&opts)
        .instrument(tracing::info_span!("request", req = 1))
        .await
        .unwrap();
    // Stale: served at once, refreshed behind.
    client
        .fetch_query(&opts)
        .instrument(tracing::info_span!("request", req = 2))
        .await
        .unwrap();
    assert_eq!(
        rec.scopes_of("upstream call").len(),
        1,
        "refresh not done yet"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let scopes = rec.scopes_of("upstream call");
    assert_eq!(scopes.len(), 2);
    assert_fetch_under_request(&scopes[0], r#"["feed"]"#, "1");
    assert_fetch_under_request(&scopes[1], r#"["feed"]"#, "2");
    let outcomes: Vec<_> = rec
        .fetch_spans()
        .iter()
        .map(|s| s.fields["outcome"].clone())
        .collect();
    assert_eq!(outcomes, ["ok", "ok"]);
    assert_eq!(client.stats().stale_hits, 1);
}

/// An observer's first subscriber starts the fetch: the span current at `subscribe` is
/// the parent. A fetch that fails for good records `error`.
#[tokio::test(start_paused = true)]
async fn an_observers_fetch_is_a_child_of_the_span_that_subscribed() {
    let (rec, _guard) = install();
    let client = QueryClient::new();
    let opts = QueryOptions::new(key!["down"], || async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        tracing::info!("upstream call");
        Err::<u8, _>("unavailable".to_string())
    })
    .retry(0);
    let observer = client.watch(&opts);
    let sub = {
        let _in = tracing::info_span!("request", req = 3).entered();
        observer.subscribe(|_| {})
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let scopes = rec.scopes_of("upstream call");
    assert_eq!(scopes.len(), 1);
    assert_fetch_under_request(&scopes[0], r#"["down"]"#, "3");
    let f = &rec.fetch_spans()[0].fields;
    assert_eq!(
        (f["outcome"].as_str(), f["retries"].as_str()),
        ("error", "0")
    );
    drop(sub);
}

/// A subscriber that filters the fetch span out (its level or target) still sees the
/// fetch's lines inside the caller's span: the task then runs in the caller's span.
#[tokio::test(start_paused = true)]
async fn with_the_fetch_span_filtered_out_the_callers_span_remains() {
    let rec = Recorder::default();
    let filter = tracing_subscriber::filter::filter_fn(|m| m.target() != "stackquery");
    // A global filter: the span is disabled for the whole subscriber.
    let sub = tracing_subscriber::registry()
        .with(filter)
        .with(rec.clone());
    let _guard = tracing::subscriber::set_default(sub);
    let client = QueryClient::new();
    let opts = QueryOptions::new(key!["quiet"], || async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        tracing::info!("upstream call");
        Ok::<_, String>(0_u8)
    });
    client
        .fetch_query(&opts)
        .instrument(tracing::info_span!("request", req = 4))
        .await
        .unwrap();
    let scopes = rec.scopes_of("upstream call");
    assert_eq!(scopes.len(), 1);
    let names: Vec<_> = scopes[0].iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["request"]);
    assert_eq!(scopes[0][0].1["req"], "4");
    assert!(rec.fetch_spans().is_empty());
}
