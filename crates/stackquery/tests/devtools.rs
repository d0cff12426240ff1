//! The devtools panel's server (feature `devtools`): the snapshot endpoint, the SSE stream
//! of deltas, the actions, read-only refusal, the loopback guard.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use stackquery::devtools::{Devtools, DevtoolsError, DevtoolsServer};
use stackquery::{key, MutationOptions, QueryClient, QueryOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const LOOPBACK: &str = "127.0.0.1:0";

async fn start(client: &QueryClient) -> DevtoolsServer {
    Devtools::new(client.clone())
        .bind(LOOPBACK.parse().unwrap())
        .await
        .unwrap()
}

/// A one-shot HTTP/1.1 request; returns the status and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response within 10 s")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = request(addr, "GET", path, "127.0.0.1", None).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn post_action(addr: SocketAddr, action: &str, key: &str) -> (u16, Value) {
    let body = serde_json::json!({ "action": action, "key": key }).to_string();
    let (status, body) = request(addr, "POST", "/api/action", "localhost", Some(&body)).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The SSE stream: `(event name, data)` messages, read as they come.
struct Sse {
    reader: BufReader<TcpStream>,
}

impl Sse {
    async fn open(addr: SocketAddr) -> Sse {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req =
            "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
        s.write_all(req.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if line.starts_with("HTTP/1.1") {
                assert!(line.contains(" 200 "), "{line}");
            }
        }
        Sse { reader }
    }

    /// The next message (chunked framing removed, comments skipped).
    async fn next(&mut self) -> (String, Value) {
        let mut event = String::new();
        let mut data = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                .await
                .expect("an SSE message within 10 s")
                .unwrap();
            assert!(n > 0, "stream ended");
            let l = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = l.strip_prefix("event: ").or(l.strip_prefix("event:")) {
                event = v.to_string();
            } else if let Some(v) = l.strip_prefix("data: ").or(l.strip_prefix("data:")) {
                data.push_str(v);
            } else if l.is_empty() && !data.is_empty() {
                return (event, serde_json::from_str(&data).unwrap());
            }
            // Chunk sizes, keep-alive comments: skipped.
        }
    }

    /// The next `delta` whose `pred` holds (within 10 s).
    async fn delta_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no matching delta within 10 s");
            let (event, data) = self.next().await;
            if event == "delta" && pred(&data) {
                return data;
            }
        }
    }
}

fn row<'a>(snapshot: &'a Value, key: &str) -> Option<&'a Value> {
    snapshot["queries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
}

fn upserted<'a>(delta: &'a Value, key: &str) -> Option<&'a Value> {
    delta["upsert"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
}

#[tokio::test]
async fn the_page_and_the_snapshot_match_the_cache() {
    let client = QueryClient::new();
    client
        .set_query_data(key!["user", 1], "Ada".to_string())
        .unwrap();
    client
        .set_query_data(key!["user", 2], "Grace".to_string())
        .unwrap();
    let server = start(&client).await;
    let addr = server.local_addr();

    let (status, page) = request(addr, "GET", "/", "localhost", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("stackquery devtools"));

    let (status, snap) = get_json(addr, "/api/snapshot").await;
    assert_eq!(status, 200);
    assert_eq!(snap["read_only"], false);
    assert_eq!(snap["queries"].as_array().unwrap().len(), 2);
    let r = row(&snap, r#"["user",1]"#).unwrap();
    assert_eq!(r["status"], "success");
    assert_eq!(r["fetch_status"], "idle");
    assert_eq!(r["observers"], 0);
    assert_eq!(r["failure_count"], 0);
    assert!(r["updated_at"].as_u64().is_some());
    assert_eq!(r["type"], std::any::type_name::<String>());
    assert_eq!(snap["stats"]["entries"], 2);
    server.shutdown().await;
}

#[tokio::test]
async fn one_query_with_its_data() {
    let client = QueryClient::new();
    let persisted =
        QueryOptions::new(key!["p"], || async { Ok::<_, String>(vec![1, 2, 3]) }).persist();
    client.fetch_query(&persisted).await.unwrap();
    client
        .set_query_data(key!["shown"], vec!["a".to_string()])
        .unwrap();
    client.set_query_data(key!["opaque"], 5_u16).unwrap();
    let server = Devtools::new(client.clone())
        .show_json::<Vec<String>>()
        .bind(LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();

    let (status, q) = get_json(addr, "/api/query?key=%5B%22p%22%5D").await;
    assert_eq!(status, 200);
    assert_eq!(q["data"], serde_json::json!([1, 2, 3]));
    let (_, q) = get_json(addr, "/api/query?key=%5B%22shown%22%5D").await;
    assert_eq!(q["data"], serde_json::json!(["a"]));
    let (_, q) = get_json(addr, "/api/query?key=%5B%22opaque%22%5D").await;
    assert!(q.get("data").is_none());
    assert_eq!(
        (q["type"].as_str(), q["size"].as_u64()),
        (Some("u16"), Some(2))
    );

    let (status, q) = get_json(addr, "/api/query?key=%5B%22nope%22%5D").await;
    assert_eq!(status, 404, "{q}");
    let (status, q) = get_json(addr, "/api/query?key=not-a-key").await;
    assert_eq!(status, 400);
    assert!(
        q["error"].as_str().unwrap().contains("does not parse"),
        "{q}"
    );
}

#[tokio::test]
async fn the_stream_sends_a_snapshot_then_deltas() {
    let client = QueryClient::new();
    client.set_query_data(key!["a"], 1_u32).unwrap();
    let server = start(&client).await;
    let mut sse = Sse::open(server.local_addr()).await;

    let (event, snap) = sse.next().await;
    assert_eq!(event, "snapshot");
    assert_eq!(snap["queries"].as_array().unwrap().len(), 1);

    client.set_query_data(key!["b"], 2_u32).unwrap();
    let d = sse.delta_where(|d| upserted(d, r#"["b"]"#).is_some()).await;
    assert_eq!(upserted(&d, r#"["b"]"#).unwrap()["status"], "success");
    assert_eq!(d["stats"]["entries"], 2);

    client.invalidate_queries(key!["a"]).await;
    sse.delta_where(|d| upserted(d, r#"["a"]"#).is_some_and(|r| r["invalidated"] == true))
        .await;

    client.remove_queries(key!["a"]);
    sse.delta_where(|d| {
        d["remove"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == r#"["a"]"#)
    })
    .await;

    let m = client.mutation(MutationOptions::new(|n: u32| async move {
        Ok::<_, String>(n + 1)
    }));
    m.mutate(1).await.unwrap();
    sse.delta_where(|d| {
        d["mutations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["status"] == "success")
    })
    .await;
    // The panel remembers it for later pages.
    let (_, snap) = get_json(server.local_addr(), "/api/snapshot").await;
    assert!(snap["mutations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["status"] == "success"));
}

#[tokio::test]
async fn ten_thousand_queries_one_snapshot_then_small_deltas() {
    let client = QueryClient::new();
    for i in 0..10_000_u32 {
        client.set_query_data(key!["item", i], i).unwrap();
    }
    let server = start(&client).await;
    let mut sse = Sse::open(server.local_addr()).await;
    let (event, snap) = sse.next().await;
    assert_eq!(event, "snapshot");
    assert_eq!(snap["queries"].as_array().unwrap().len(), 10_000);

    client.set_query_data(key!["item", 5_u32], 55_u32).unwrap();
    let d = sse
        .delta_where(|d| upserted(d, r#"["item",5]"#).is_some())
        .await;
    assert_eq!(
        d["upsert"].as_array().unwrap().len(),
        1,
        "only the changed row"
    );
}

#[tokio::test]
async fn actions_change_the_cache() {
    let client = QueryClient::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let opts = QueryOptions::new(key!["f"], move || {
        let c = c.clone();
        async move { Ok::<_, String>(c.fetch_add(1, Ordering::SeqCst)) }
    })
    .stale_time(Duration::from_secs(600));
    client.fetch_query(&opts).await.unwrap();
    let server = start(&client).await;
    let addr = server.local_addr();

    let (status, out) = post_action(addr, "invalidate", r#"["f"]"#).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["matched"], 1);
    assert!(
        client
            .get_query_state::<u32>(&key!["f"])
            .unwrap()
            .is_invalidated
    );

    let (status, _) = post_action(addr, "refetch", r#"["f"]"#).await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "refetch did not run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (status, _) = post_action(addr, "reset", r#"["f"]"#).await;
    assert_eq!(status, 200);
    assert!(client.get_query_data::<u32>(&key!["f"]).is_none());

    let (status, _) = post_action(addr, "remove", r#"["f"]"#).await;
    assert_eq!(status, 200);
    assert_eq!(client.query_count(), 0);

    // Bad input: clear errors, no panic.
    let (status, out) = post_action(addr, "explode", r#"["f"]"#).await;
    assert_eq!(status, 400);
    assert!(out["error"].as_str().unwrap().contains("unknown action"));
    let (status, out) = post_action(addr, "remove", "[unclosed").await;
    assert_eq!(status, 400, "{out}");
    let (status, _) = request(addr, "POST", "/api/action", "localhost", Some("{nope")).await;
    assert_eq!(status, 400);

    // A cross-site form can only send `text/plain` or form bodies: refused.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = r#"{"action":"remove","key":"[\"g\"]"}"#;
    client.set_query_data(key!["g"], 1_u8).unwrap();
    let req = format!(
        "POST /api/action HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(client.query_count(), 1, "nothing removed");
}

#[tokio::test]
async fn a_read_only_panel_refuses_actions() {
    let client = QueryClient::new();
    client.set_query_data(key!["k"], 1_u8).unwrap();
    let server = Devtools::new(client.clone())
        .read_only(true)
        .bind(LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let (_, snap) = get_json(addr, "/api/snapshot").await;
    assert_eq!(snap["read_only"], true);
    for action in ["refetch", "invalidate", "reset", "remove"] {
        let (status, out) = post_action(addr, action, r#"["k"]"#).await;
        assert_eq!(status, 403, "{action}: {out}");
        assert!(out["error"].as_str().unwrap().contains("read-only"));
    }
    let state = client.get_query_state::<u8>(&key!["k"]).unwrap();
    assert!(!state.is_invalidated);
    assert_eq!(state.data.as_deref(), Some(&1));
}

#[tokio::test]
async fn only_loopback_unless_allowed() {
    let client = QueryClient::new();
    let err = Devtools::new(client.clone())
        .bind("0.0.0.0:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, DevtoolsError::NotLoopback(_)));
    assert!(err.to_string().contains("allow_remote"), "{err}");
    let err = stackquery::devtools::serve(client.clone(), "0.0.0.0:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, DevtoolsError::NotLoopback(_)));

    // Opted in: binds.
    let server = Devtools::new(client.clone())
        .allow_remote(true)
        .bind("0.0.0.0:0".parse().unwrap())
        .await
        .unwrap();
    drop(server);

    // On loopback, a foreign Host name (DNS rebinding) is refused.
    let server = start(&client).await;
    let (status, _) = request(
        server.local_addr(),
        "GET",
        "/api/snapshot",
        "evil.example",
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = request(
        server.local_addr(),
        "GET",
        "/api/snapshot",
        "localhost:1",
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn stopping_the_server_ends_open_streams_and_stops_accepting() {
    let client = QueryClient::new();
    client.set_query_data(key!["k"], 1_u8).unwrap();
    let server = start(&client).await;
    let mut sse = Sse::open(server.local_addr()).await;
    assert_eq!(sse.next().await.0, "snapshot");

    let started = Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown waited for the stream"
    );
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sse.reader.read_to_end(&mut rest))
        .await
        .expect("the stream ends")
        .unwrap();

    // Dropping a server (no shutdown call) stops it as well.
    let server = start(&client).await;
    let addr = server.local_addr();
    let mut sse = Sse::open(addr).await;
    assert_eq!(sse.next().await.0, "snapshot");
    drop(server);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sse.reader.read_to_end(&mut rest))
        .await
        .expect("the stream ends")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rows_that_age_into_stale_are_sent_without_an_event() {
    let client = QueryClient::new();
    let opts = QueryOptions::new(key!["ages"], || async { Ok::<_, String>(1_u8) })
        .stale_time(Duration::from_millis(500));
    client.fetch_query(&opts).await.unwrap();
    client.set_query_data(key!["stays"], 2_u8).unwrap();
    let server = start(&client).await;
    let mut sse = Sse::open(server.local_addr()).await;
    let (_, snap) = sse.next().await;
    assert_eq!(row(&snap, r#"["ages"]"#).unwrap()["stale"], false);
    let d = sse
        .delta_where(|d| upserted(d, r#"["ages"]"#).is_some_and(|r| r["stale"] == true))
        .await;
    // Only what changed: the row already stale is not sent again.
    assert!(upserted(&d, r#"["stays"]"#).is_none());
}
