//! stackquery in a web service: an axum API in front of a slow, sometimes failing upstream.
//!
//! - `QueryClient::builder().server()`: one quick retry, a bounded attempt, a bounded cache;
//! - a fetch function that takes a [`FetchContext`]: the upstream call stops when its
//!   token fires (the query is cancelled, times out, or its entry is removed);
//! - read-your-writes: `PUT` invalidates without a background refetch, then reads with
//!   `fetch_query_fresh`, which never answers with the data the write replaced;
//! - a memory bound by weight (the serialised size of each user);
//! - the second tier on SQLite, with per-query expiry and jitter;
//! - `QueryError` to an HTTP response, the upstream's own error found by `downcast_ref`.
//!
//! Run: `cargo run -p stackquery --example web_service` serves on an ephemeral port, calls
//! itself (every case above, with the statuses it gets), and exits; `-- --serve` keeps
//! serving on 127.0.0.1:3000.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use stackquery::{
    key, FetchContext, QueryClient, QueryError, QueryOptions, RefetchType, SqliteStorage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// The upstream's own error: what the API maps to a status.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("no user {0}")]
    NotFound(u64),
    #[error("upstream unavailable")]
    Unavailable,
}

/// How the pretend upstream behaves.
const HEALTHY: u8 = 0;
const DOWN: u8 = 1;
const HUNG: u8 = 2;

/// A pretend user service: 50 ms per call; down (fails at once) or hung (never answers)
/// on demand.
#[derive(Default)]
struct Upstream {
    users: Mutex<HashMap<u64, String>>,
    mode: AtomicU8,
}

impl Upstream {
    async fn get(&self, id: u64, ctx: &FetchContext) -> Result<User, UpstreamError> {
        match self.mode.load(Ordering::SeqCst) {
            DOWN => return Err(UpstreamError::Unavailable),
            HUNG => {
                // A real client's request lives on in a connection task: the token tells
                // it nobody will take the answer (here: the attempt timed out).
                let token = ctx.cancellation().clone();
                let (key, attempt) = (ctx.key().clone(), ctx.attempt());
                tokio::spawn(async move {
                    token.cancelled().await;
                    println!("  (upstream) {key}, attempt {attempt}: abandoned, its token fired");
                });
                std::future::pending::<()>().await;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        let users = self.users.lock().unwrap();
        let name = users.get(&id).ok_or(UpstreamError::NotFound(id))?;
        Ok(User {
            id,
            name: name.clone(),
        })
    }

    async fn put(&self, id: u64, name: String) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.users.lock().unwrap().insert(id, name);
    }
}

#[derive(Clone)]
struct App {
    client: QueryClient,
    upstream: Arc<Upstream>,
}

/// The query of one user: its key, how to fetch it, how to weigh and store it.
fn user_query(app: &App, id: u64) -> QueryOptions<User> {
    let upstream = app.upstream.clone();
    QueryOptions::with_context(key!["user", id], move |ctx: FetchContext| {
        let upstream = upstream.clone();
        async move { upstream.get(id, &ctx).await }
    })
    .weigh_serialized()
    .persist()
    .storage_ttl(Duration::from_secs(3600))
}

async fn get_user(State(app): State<App>, Path(id): Path<u64>) -> Result<Json<User>, ApiError> {
    let user = app.client.fetch_query(&user_query(&app, id)).await?;
    Ok(Json((*user).clone()))
}

#[derive(Deserialize)]
struct Rename {
    name: String,
}

async fn put_user(
    State(app): State<App>,
    Path(id): Path<u64>,
    Json(body): Json<Rename>,
) -> Result<Json<User>, ApiError> {
    app.upstream.put(id, body.name).await;
    // No background refetch: the read below fetches, and refuses the replaced data.
    app.client
        .invalidate_queries_with(key!["user", id], RefetchType::None)
        .await;
    let user = app.client.fetch_query_fresh(&user_query(&app, id)).await?;
    Ok(Json((*user).clone()))
}

/// A query's failure as the API's response.
struct ApiError(QueryError);

impl From<QueryError> for ApiError {
    fn from(err: QueryError) -> Self {
        ApiError(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let err = self.0;
        let status = match err.downcast_ref::<UpstreamError>() {
            Some(UpstreamError::NotFound(_)) => StatusCode::NOT_FOUND,
            Some(_) => StatusCode::BAD_GATEWAY,
            None => match err {
                QueryError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                QueryError::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        // The whole chain goes to the log; the client gets no internals.
        eprintln!("  (log) {status}: {}", err.report());
        let body = Json(serde_json::json!({ "error": status.canonical_reason() }));
        (status, body).into_response()
    }
}

/// One HTTP/1.1 request to `addr`; returns the status line's code and the body.
async fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let code = response[9..12].parse().expect("a status code");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile_dir();
    let client = QueryClient::builder()
        .server()
        // Shorter than the profile's 5 s so the demo's hung call ends quickly.
        .fetch_timeout(Duration::from_millis(500))
        .stale_time(Duration::from_secs(30))
        .max_weight(1 << 20)
        .storage(SqliteStorage::open(dir.join("cache.sqlite"))?)
        .storage_ttl_jitter(0.1)
        .build();
    let upstream = Arc::new(Upstream::default());
    upstream.users.lock().unwrap().insert(1, "Ada".into());
    upstream.users.lock().unwrap().insert(2, "Grace".into());
    let app = App {
        client: client.clone(),
        upstream: upstream.clone(),
    };
    let router = Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .with_state(app);

    if std::env::args().any(|a| a == "--serve") {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
        println!("serving on http://{}/users/1", listener.local_addr()?);
        axum::serve(listener, router).await?;
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });

    let show = |what: &str, (code, body): (u16, String)| println!("{what:<44} {code} {body}");
    show(
        "GET /users/1 (cold: fetched)",
        call(addr, "GET", "/users/1", "").await,
    );
    show(
        "GET /users/1 (fresh: from memory)",
        call(addr, "GET", "/users/1", "").await,
    );
    let rename = r#"{"name":"Ada Lovelace"}"#;
    show(
        "PUT /users/1 (write, then a fresh read)",
        call(addr, "PUT", "/users/1", rename).await,
    );
    show(
        "GET /users/404 (the upstream's 404)",
        call(addr, "GET", "/users/404", "").await,
    );
    upstream.mode.store(DOWN, Ordering::SeqCst);
    show(
        "GET /users/2 (upstream down: 1 retry)",
        call(addr, "GET", "/users/2", "").await,
    );
    upstream.mode.store(HUNG, Ordering::SeqCst);
    show(
        "GET /users/2 (upstream hung: timeout)",
        call(addr, "GET", "/users/2", "").await,
    );
    upstream.mode.store(HEALTHY, Ordering::SeqCst);
    show(
        "GET /users/2 (upstream back: fetched)",
        call(addr, "GET", "/users/2", "").await,
    );
    let stats = client.stats();
    println!(
        "cache: {} entries, weight {} bytes",
        client.query_count(),
        stats.total_weight
    );
    client.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A fresh folder for this run's SQLite file.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stackquery-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    dir
}
