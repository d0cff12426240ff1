//! A live web panel of a client's cache (feature `devtools`): every query with its status,
//! fetch status, observers, last update, staleness, failures and data; the mutations; the
//! cache statistics; a filter box; the actions refetch, invalidate, reset and remove.
//!
//! ```no_run
//! use stackquery::QueryClient;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), stackquery::devtools::DevtoolsError> {
//! let client = QueryClient::new();
//! // … hand clones of `client` to the application …
//! stackquery::devtools::serve(client, "127.0.0.1:7777".parse().unwrap()).await?;
//! # Ok(()) }
//! ```
//!
//! # How it works
//! A top layer over the public client, nothing more: the page's rows come from
//! [`QueryClient::inspect_queries`] and [`QueryClient::query_info`], its live updates from
//! [`QueryClient::subscribe_events`], its actions are the client's `refetch_queries`,
//! `invalidate_queries`, `reset_queries` and `remove_queries` on one exact key.
//!
//! The page opens one server-sent-events stream (`GET /api/events`). Its first message is a
//! snapshot of the whole cache; after that it carries deltas only: the rows of the keys the
//! event stream named in the last 100 ms, re-read once each however many events they had,
//! and the keys that left the cache. So a cache of 10,000 queries costs one snapshot per
//! page load, and the page draws only the rows in view (a virtualised list). A stream that
//! lags behind the cache's event ring gets a fresh snapshot. Data ages without an event,
//! so the server re-reads the rows it last sent as fresh every 2 s (only those).
//!
//! The cost to the cache: while the panel runs it subscribes to the event stream, so the
//! cache builds its events (one small allocation per change; the hit path emits
//! nothing), and each open page re-reads the rows that changed.
//!
//! Mutations are kept by the panel, not by the client (which keeps no registry of them):
//! from the moment [`Devtools::bind`] runs, a task follows the `MutationAdded` and
//! `MutationUpdated` events and remembers the latest 200 mutations by id, with their status
//! and times. Mutations created before the panel started are not listed.
//!
//! # Security
//! **The panel has no authentication.** Whoever reaches it reads every cached value
//! (tokens, personal data: whatever the application caches) and can refetch, invalidate,
//! reset and remove entries. So [`Devtools::bind`] refuses a non-loopback address unless
//! [`Devtools::allow_remote`] says otherwise, and then only put it behind something that
//! authenticates. On loopback it also refuses requests whose `Host` header is not a
//! loopback name (a web page's DNS-rebinding attack), and actions need a JSON body (a
//! cross-site form cannot send one without a CORS preflight, which the panel never
//! grants). [`Devtools::read_only`] serves the panel with no actions at all.
//!
//! # HTTP API
//! * `GET /` — the page.
//! * `GET /api/snapshot` — `{read_only, queries: [row], mutations: [..], stats: {..}}`.
//! * `GET /api/query?key=["user",1]` — one row with its data (`404` if absent, `400` for a
//!   key that does not parse).
//! * `GET /api/events` — the SSE stream: `snapshot` then `delta` messages
//!   (`{upsert: [row], remove: [key], mutations: [..], stats}`).
//! * `POST /api/action` with `{"action": "refetch"|"invalidate"|"reset"|"remove", "key":
//!   "[\"user\",1]"}` — `403` when read-only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::{
    CacheEventKind, CacheStats, EventStreamItem, MutationStatus, QueryClient, QueryFilter,
    QueryInfo, QueryKey,
};

const PAGE: &str = include_str!("panel.html");
/// Mutations remembered by the panel.
const MUTATION_HISTORY: usize = 200;
/// Events are gathered this long before a delta goes out.
const BATCH: Duration = Duration::from_millis(100);
/// How often rows last sent as fresh are re-read (data ages without an event).
const AGE_CHECK: Duration = Duration::from_secs(2);

/// Why the panel could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevtoolsError {
    /// The address is not a loopback one and [`Devtools::allow_remote`] was not set.
    #[error(
        "devtools: refusing to bind {0}: not a loopback address (the panel has no \
         authentication and exposes cache data and destructive actions; use 127.0.0.1 or \
         [::1], or opt in with Devtools::allow_remote(true) behind an authenticating proxy)"
    )]
    NotLoopback(SocketAddr),
    /// The socket could not be bound or served.
    #[error("devtools: cannot serve on {addr}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Serves the panel for `client` on `addr` (loopback only, with actions) until the
/// process ends. See [`Devtools`] for the options.
///
/// # Errors
/// [`DevtoolsError::NotLoopback`] for a non-loopback `addr`; [`DevtoolsError::Io`] when
/// the address cannot be bound.
pub async fn serve(client: QueryClient, addr: SocketAddr) -> Result<(), DevtoolsError> {
    Devtools::new(client).serve(addr).await
}

type JsonHook = fn(&QueryClient, &QueryKey) -> Option<Result<Value, String>>;

/// The panel's options: read-only, remote binding, extra JSON types.
///
/// ```no_run
/// use stackquery::devtools::Devtools;
/// use stackquery::QueryClient;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), stackquery::devtools::DevtoolsError> {
/// let client = QueryClient::new();
/// let server = Devtools::new(client)
///     .read_only(true) // a view: no refetch / invalidate / reset / remove
///     .show_json::<Vec<String>>() // not persisted, but shown as JSON
///     .bind("127.0.0.1:0".parse().unwrap())
///     .await?;
/// println!("devtools on http://{}", server.local_addr());
/// # Ok(()) }
/// ```
#[must_use]
pub struct Devtools {
    client: QueryClient,
    read_only: bool,
    allow_remote: bool,
    json: HashMap<&'static str, JsonHook>,
}

impl std::fmt::Debug for Devtools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devtools")
            .field("read_only", &self.read_only)
            .field("allow_remote", &self.allow_remote)
            .finish_non_exhaustive()
    }
}

impl Devtools {
    /// The panel of `client`, with actions, loopback only.
    pub fn new(client: QueryClient) -> Self {
        Devtools {
            client,
            read_only: false,
            allow_remote: false,
            json: HashMap::new(),
        }
    }

    /// A read-only panel: no action buttons, and `POST /api/action` answers `403`.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Allows a non-loopback address (and any `Host` header). **Risky**: the panel has no
    /// authentication, and shows every cached value and (unless read-only) destroys
    /// entries for whoever reaches it. Only behind an authenticating proxy.
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// Shows the data of entries holding a `T` as JSON even when their query is not
    /// persisted (a persisted query's data is always shown: its encoding is known).
    pub fn show_json<T: serde::Serialize + Send + Sync + 'static>(mut self) -> Self {
        fn hook<T: serde::Serialize + Send + Sync + 'static>(
            client: &QueryClient,
            key: &QueryKey,
        ) -> Option<Result<Value, String>> {
            let data = client.get_query_data::<T>(key)?;
            // User code (the `Serialize` impl): contained, no lock held.
            Some(
                crate::user_code::contain("serialize", || serde_json::to_value(&*data))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string())),
            )
        }
        self.json.insert(std::any::type_name::<T>(), hook::<T>);
        self
    }

    /// Binds `addr` (port 0: any free port) and serves the panel in a task of the current
    /// tokio runtime until the returned handle is dropped or shut down.
    ///
    /// # Errors
    /// [`DevtoolsError::NotLoopback`] for a non-loopback `addr` without
    /// [`allow_remote`](Self::allow_remote); [`DevtoolsError::Io`] when it cannot be bound.
    pub async fn bind(self, addr: SocketAddr) -> Result<DevtoolsServer, DevtoolsError> {
        if !addr.ip().is_loopback() && !self.allow_remote {
            return Err(DevtoolsError::NotLoopback(addr));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DevtoolsError::Io { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| DevtoolsError::Io { addr, source })?;
        let app = App::new(self);
        let stopping = app.stopping.clone();
        let tracker = tokio::spawn(track_mutations(
            app.client.subscribe_events(),
            app.mutations.clone(),
        ));
        let router = router(app);
        let stop = stopping.clone();
        let task = tokio::spawn(async move {
            // Stopping ends the event streams too (they would hold the shutdown forever).
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            tracker.abort();
            served
        });
        tracing::info!(addr = %local, "devtools panel serving");
        Ok(DevtoolsServer {
            addr: local,
            stopping,
            task: Some(task),
        })
    }

    /// [`bind`](Self::bind), then serves until the server fails (normally never).
    ///
    /// # Errors
    /// As [`bind`](Self::bind), or [`DevtoolsError::Io`] if serving fails.
    pub async fn serve(self, addr: SocketAddr) -> Result<(), DevtoolsError> {
        let mut server = self.bind(addr).await?;
        let task = server.task.take();
        let served = match task {
            Some(task) => task.await,
            None => return Ok(()),
        };
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(DevtoolsError::Io { addr, source }),
            Err(join) => Err(DevtoolsError::Io {
                addr,
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }
}

/// A running panel ([`Devtools::bind`]). Dropping it stops the server.
///
/// The panel holds a handle of its client: while it runs, the cache lives.
#[derive(Debug)]
pub struct DevtoolsServer {
    addr: SocketAddr,
    stopping: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl DevtoolsServer {
    /// The address it listens on (with the port chosen, if `0` was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL (`http://addr/`).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops accepting connections and waits for the server task to end (open event
    /// streams are closed).
    pub async fn shutdown(mut self) {
        self.stopping.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for DevtoolsServer {
    fn drop(&mut self) {
        // The server stops accepting, the open event streams end, their connections
        // close; then the server task ends and lets go of the client.
        self.stopping.cancel();
    }
}

/// One mutation as the panel remembers it.
#[derive(Clone, Debug)]
struct MutationRecord {
    id: u64,
    status: MutationStatus,
    added_at: SystemTime,
    updated_at: SystemTime,
}

impl MutationRecord {
    /// The record a mutation event describes (its `added_at` is the event's time: the
    /// page keeps the one it saw first).
    fn from_event(kind: &CacheEventKind, at: SystemTime) -> Option<MutationRecord> {
        let (id, status) = match kind {
            CacheEventKind::MutationAdded { id } => (*id, MutationStatus::Idle),
            CacheEventKind::MutationUpdated { id, status } => (*id, *status),
            _ => return None,
        };
        Some(MutationRecord {
            id,
            status,
            added_at: at,
            updated_at: at,
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "status": lower(&self.status),
            "added_at": ms(Some(self.added_at)),
            "updated_at": ms(Some(self.updated_at)),
        })
    }
}

/// The latest mutations by id (oldest dropped first).
#[derive(Default)]
struct MutationLog {
    order: VecDeque<u64>,
    by_id: HashMap<u64, MutationRecord>,
}

impl MutationLog {
    /// Applies a mutation event; returns the record it changed.
    fn apply(&mut self, kind: &CacheEventKind, at: SystemTime) -> Option<MutationRecord> {
        let new = MutationRecord::from_event(kind, at)?;
        let rec = self.by_id.entry(new.id).or_insert_with(|| {
            self.order.push_back(new.id);
            new.clone()
        });
        rec.status = new.status;
        rec.updated_at = at;
        let rec = rec.clone();
        while self.order.len() > MUTATION_HISTORY {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
        Some(rec)
    }

    fn to_json(&self) -> Vec<Value> {
        self.order
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .map(MutationRecord::to_json)
            .collect()
    }
}

async fn track_mutations(mut events: crate::EventStream, log: Arc<Mutex<MutationLog>>) {
    while let Some(item) = events.next().await {
        if let EventStreamItem::Event(e) = item {
            log.lock().apply(&e.kind, e.at);
        }
    }
}

struct App {
    client: QueryClient,
    read_only: bool,
    allow_remote: bool,
    json: HashMap<&'static str, JsonHook>,
    mutations: Arc<Mutex<MutationLog>>,
    /// Cancelled when the server stops.
    stopping: CancellationToken,
}

impl App {
    fn new(d: Devtools) -> Arc<App> {
        Arc::new(App {
            client: d.client,
            read_only: d.read_only,
            allow_remote: d.allow_remote,
            json: d.json,
            mutations: Arc::default(),
            stopping: CancellationToken::new(),
        })
    }

    fn snapshot(&self) -> Value {
        self.snapshot_noting_fresh(&mut HashSet::new())
    }

    /// The snapshot; `fresh` is set to the keys it shows as fresh.
    fn snapshot_noting_fresh(&self, fresh: &mut HashSet<QueryKey>) -> Value {
        let infos = self.client.inspect_queries(QueryFilter::all());
        let queries: Vec<Value> = infos.iter().map(row).collect();
        fresh.clear();
        fresh.extend(infos.into_iter().filter(|i| !i.stale).map(|i| i.key));
        let mutations = self.mutations.lock().to_json();
        json!({
            "read_only": self.read_only,
            "queries": queries,
            "mutations": mutations,
            "stats": stats_json(&self.client.stats()),
        })
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/snapshot", get(snapshot))
        .route("/api/query", get(query))
        .route("/api/events", get(events))
        .route("/api/action", post(action))
        .layer(middleware::from_fn_with_state(app.clone(), check_host))
        .with_state(app)
}

/// On loopback, only loopback `Host` names (DNS rebinding).
async fn check_host(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if !app.allow_remote {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !is_loopback_host(host) {
            return (
                StatusCode::FORBIDDEN,
                "devtools: this panel only answers loopback host names",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// `localhost`, `127.x.y.z`, `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

async fn snapshot(State(app): State<Arc<App>>) -> Json<Value> {
    Json(app.snapshot())
}

#[derive(serde::Deserialize)]
struct KeyParam {
    key: String,
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response()
}

fn parse_key(text: &str) -> Result<QueryKey, String> {
    text.parse::<QueryKey>()
        .map_err(|e| format!("key {text:?} does not parse: {e}"))
}

async fn query(State(app): State<Arc<App>>, Query(p): Query<KeyParam>) -> Response {
    let key = match parse_key(&p.key) {
        Ok(k) => k,
        Err(e) => return bad_request(e),
    };
    let Some(info) = app.client.query_info(&key) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no entry for {key}") })),
        )
            .into_response();
    };
    let mut out = row(&info);
    let json = match info.data.as_ref().and_then(|d| d.json.clone()) {
        Some(j) => Some(j),
        None => app
            .json
            .get(info.type_name)
            .and_then(|hook| hook(&app.client, &key)),
    };
    match json {
        Some(Ok(v)) => out["data"] = v,
        Some(Err(e)) => out["data_error"] = Value::String(e),
        None => {}
    }
    Json(out).into_response()
}

#[derive(serde::Deserialize)]
struct ActionBody {
    action: String,
    key: String,
}

async fn action(
    State(app): State<Arc<App>>,
    body: Result<Json<ActionBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if app.read_only {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": "this devtools panel is read-only" })),
        )
            .into_response();
    }
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad_request(format!("bad action request: {e}")),
    };
    let key = match parse_key(&body.key) {
        Ok(k) => k,
        Err(e) => return bad_request(e),
    };
    let client = app.client.clone();
    let exact = QueryFilter::exact(key.clone());
    let matched = client.query_keys(QueryFilter::exact(key.clone())).len();
    match body.action.as_str() {
        // These two wait for the refetches they start: the answer does not (the rows
        // show them). The invalidation itself is done before the answer.
        "refetch" => {
            tokio::spawn(async move { client.refetch_queries(exact).await });
        }
        "invalidate" => {
            let (marked_tx, marked_rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let fut = client.invalidate_queries(exact);
                tokio::pin!(fut);
                // The first poll marks the entries; then the refetches are awaited.
                if futures::poll!(fut.as_mut()).is_ready() {
                    let _ = marked_tx.send(());
                    return;
                }
                let _ = marked_tx.send(());
                fut.await;
            });
            let _ = marked_rx.await;
        }
        "reset" => {
            client.reset_queries(exact);
        }
        "remove" => {
            client.remove_queries(exact);
        }
        other => {
            return bad_request(format!(
                "unknown action {other:?} (refetch, invalidate, reset or remove)"
            ))
        }
    }
    Json(json!({ "action": body.action, "key": key.to_string(), "matched": matched }))
        .into_response()
}

async fn events(State(app): State<Arc<App>>) -> impl IntoResponse {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    // Subscribed before the snapshot is read: nothing falls between them.
    let events = app.client.subscribe_events();
    tokio::spawn(stream_deltas(app, events, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn sse(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// One connection's stream: a snapshot, then deltas until the page goes away.
async fn stream_deltas(
    app: Arc<App>,
    mut events: crate::EventStream,
    tx: tokio::sync::mpsc::Sender<Event>,
) {
    // The keys last sent as fresh: they may turn stale with no event.
    let mut fresh: HashSet<QueryKey> = HashSet::new();
    let send_snapshot =
        |fresh: &mut HashSet<QueryKey>| sse("snapshot", &app.snapshot_noting_fresh(fresh));
    if tx.send(send_snapshot(&mut fresh)).await.is_err() {
        return;
    }
    let mut age_check = tokio::time::interval(AGE_CHECK);
    age_check.tick().await;
    loop {
        // Wait for the first event (or the age check), then gather for BATCH.
        let mut dirty: HashSet<QueryKey> = HashSet::new();
        let mut mutations: Vec<MutationRecord> = Vec::new();
        let mut lagged = false;
        let mut ended = false;
        let note = |item: Option<EventStreamItem>,
                    dirty: &mut HashSet<QueryKey>,
                    mutations: &mut Vec<MutationRecord>,
                    lagged: &mut bool,
                    ended: &mut bool| match item {
            None => *ended = true,
            Some(EventStreamItem::Lagged(_)) => *lagged = true,
            Some(EventStreamItem::Event(e)) => {
                if let Some(key) = event_key(&e.kind) {
                    dirty.insert(key.clone());
                } else if let Some(rec) = MutationRecord::from_event(&e.kind, e.at) {
                    mutations.push(rec);
                }
            }
        };
        tokio::select! {
            item = events.next() => note(item, &mut dirty, &mut mutations, &mut lagged, &mut ended),
            _ = age_check.tick() => {
                // Only those that turned stale (or left) are sent.
                dirty.extend(fresh.iter().filter(|k| {
                    app.client
                        .inspect_queries(QueryFilter::exact((*k).clone()))
                        .pop()
                        .is_none_or(|i| i.stale)
                }).cloned());
            }
            () = tx.closed() => return,
            () = app.stopping.cancelled() => return,
        }
        let quiet = dirty.is_empty() && mutations.is_empty();
        if !(ended || lagged || quiet) {
            let until = tokio::time::sleep(BATCH);
            tokio::pin!(until);
            loop {
                tokio::select! {
                    item = events.next() => {
                        note(item, &mut dirty, &mut mutations, &mut lagged, &mut ended);
                        if ended || lagged { break; }
                    }
                    () = &mut until => break,
                }
            }
        }
        if lagged {
            if tx.send(send_snapshot(&mut fresh)).await.is_err() {
                return;
            }
            continue;
        }
        if dirty.is_empty() && mutations.is_empty() {
            if ended {
                return;
            }
            continue;
        }
        let mut upsert = Vec::new();
        let mut remove = Vec::new();
        for key in dirty {
            match app
                .client
                .inspect_queries(QueryFilter::exact(key.clone()))
                .pop()
            {
                Some(info) => {
                    if info.stale {
                        fresh.remove(&key);
                    } else {
                        fresh.insert(key);
                    }
                    upsert.push(row(&info));
                }
                None => {
                    remove.push(Value::String(key.to_string()));
                    fresh.remove(&key);
                }
            }
        }
        let delta = json!({
            "upsert": upsert,
            "remove": remove,
            "mutations": mutations.iter().map(MutationRecord::to_json).collect::<Vec<_>>(),
            "stats": stats_json(&app.client.stats()),
        });
        if tx.send(sse("delta", &delta)).await.is_err() || ended {
            return;
        }
    }
}

/// The query key an event is about, if any.
fn event_key(kind: &CacheEventKind) -> Option<&QueryKey> {
    match kind {
        CacheEventKind::QueryAdded { key }
        | CacheEventKind::QueryUpdated { key, .. }
        | CacheEventKind::QueryInvalidated { key }
        | CacheEventKind::QueryRemoved { key }
        | CacheEventKind::QueryEvicted { key }
        | CacheEventKind::QueryCollected { key }
        | CacheEventKind::ObserverAdded { key }
        | CacheEventKind::ObserverRemoved { key }
        | CacheEventKind::FetchStarted { key }
        | CacheEventKind::FetchRetried { key, .. }
        | CacheEventKind::FetchSucceeded { key, .. }
        | CacheEventKind::FetchFailed { key, .. } => Some(key),
        _ => None,
    }
}

/// `Success` → `"success"`.
fn lower(v: &impl std::fmt::Debug) -> String {
    format!("{v:?}").to_lowercase()
}

fn ms(t: Option<SystemTime>) -> Value {
    match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => Value::Null,
    }
}

/// A query as the page shows it (no data: that is `/api/query`).
fn row(info: &QueryInfo) -> Value {
    json!({
        "key": info.key.to_string(),
        "type": info.type_name,
        "status": lower(&info.status),
        "fetch_status": lower(&info.fetch_status),
        "observers": info.observers,
        "active": info.is_active(),
        "updated_at": ms(info.data_updated_at),
        "stale": info.stale,
        "invalidated": info.invalidated,
        "failure_count": info.failure_count,
        "error": info.error,
        "persisted": info.persisted,
        "size": info.data.as_ref().map(|d| d.size),
    })
}

fn stats_json(s: &CacheStats) -> Value {
    json!({
        "entries": s.entries,
        "hits": s.hits,
        "stale_hits": s.stale_hits,
        "misses": s.misses,
        "fetches": s.fetches,
        "dedup_joins": s.dedup_joins,
        "evictions": s.evictions,
        "gc_collections": s.gc_collections,
        "l2_hits": s.l2_hits,
        "l2_misses": s.l2_misses,
        "l2_errors": s.l2_errors,
        "l2_writes": s.l2_writes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_host_names() {
        for ok in [
            "localhost",
            "localhost:80",
            "127.0.0.1:9",
            "127.3.2.1",
            "[::1]:7",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.com",
            "evil.com:80",
            "10.0.0.1:80",
            "[::2]:1",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn mutation_log_keeps_the_latest() {
        let mut log = MutationLog::default();
        let now = SystemTime::now();
        for id in 0..(MUTATION_HISTORY as u64 + 10) {
            log.apply(&CacheEventKind::MutationAdded { id }, now);
        }
        let rec = log
            .apply(
                &CacheEventKind::MutationUpdated {
                    id: 50,
                    status: MutationStatus::Success,
                },
                now,
            )
            .unwrap();
        assert_eq!(rec.status, MutationStatus::Success);
        assert_eq!(log.order.len(), MUTATION_HISTORY);
        assert_eq!(log.by_id.len(), MUTATION_HISTORY);
        assert_eq!(log.order.front(), Some(&10));
    }
}
