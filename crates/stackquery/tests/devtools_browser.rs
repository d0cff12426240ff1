//! The devtools panel in a real headless Chromium, driven through chromedriver
//! (fantoccini): the rows match the cache, a cache change reaches the open page without a
//! reload, the "Invalidate" button invalidates the entry in the client, a read-only panel
//! shows no actions.
//!
//! Needs Debian's `chromium` and `chromium-driver` packages (or `CHROMIUM` and
//! `CHROMEDRIVER` pointing at the binaries). Without them the test is skipped with a
//! message, unless `STACKQUERY_REQUIRE_BROWSER=1` (as `.ci/run` sets), which makes it fail.
//! With `STACKQUERY_UPDATE_SCREENSHOT=1` it also writes the panel's screenshot to
//! `docs/devtools.png` (always to `target/devtools.png`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use stackquery::devtools::Devtools;
use stackquery::{key, MutationOptions, QueryClient, QueryFilter, QueryOptions};

/// Generous: a shared 2-core machine, a cold browser.
const PATIENCE: Duration = Duration::from_secs(30);

fn find_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn browser_required() -> bool {
    std::env::var("STACKQUERY_REQUIRE_BROWSER").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// chromedriver, started by the test on a free port and killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_driver(chromedriver: &Path) -> Driver {
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
    let driver = Driver { child, port };
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver
}

async fn open_browser(driver: &Driver, chromium: &Path) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium.to_string_lossy(),
            "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,860", "--force-device-scale-factor=1"
            ]
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a chromedriver session")
}

/// Polls `f` until it returns `Some`, within [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rows the page draws: key → (status, fetch status, observers, stale, invalidated,
/// failures).
async fn page_rows(b: &Client) -> Vec<Value> {
    let v = b
        .execute(
            "return [...document.querySelectorAll('.row')].map(r => ({
                key: r.dataset.key, status: r.dataset.status,
                fetch_status: r.dataset.fetchStatus, stale: r.dataset.stale === 'true',
                invalidated: r.dataset.invalidated === 'true',
                observers: Number(r.children[3].textContent),
                failures: Number(r.children[6].textContent) }));",
            vec![],
        )
        .await
        .unwrap();
    v.as_array().cloned().unwrap_or_default()
}

fn cache_rows(client: &QueryClient) -> Vec<Value> {
    client
        .inspect_queries(QueryFilter::all())
        .iter()
        .map(|i| {
            json!({
                "key": i.key.to_string(),
                "status": format!("{:?}", i.status).to_lowercase(),
                "fetch_status": format!("{:?}", i.fetch_status).to_lowercase(),
                "stale": i.stale, "invalidated": i.invalidated,
                "observers": i.observers, "failures": i.failure_count,
            })
        })
        .collect()
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|r| r["key"].as_str().unwrap_or("").to_string());
    v
}

async fn row_attr(b: &Client, key: &str, attr: &str) -> Option<String> {
    let el = b
        .find(Locator::Css(&format!(".row[data-key='{key}']")))
        .await
        .ok()?;
    el.attr(attr).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panel_in_headless_chromium() {
    let chromium = find_binary(
        "CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let chromedriver = find_binary("CHROMEDRIVER", &["chromedriver"]);
    let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
        assert!(
            !browser_required(),
            "STACKQUERY_REQUIRE_BROWSER is set but chromium or chromedriver is missing \
             (apt-get install -y chromium chromium-driver, or set CHROMIUM / CHROMEDRIVER)"
        );
        eprintln!(
            "SKIPPED devtools_browser: chromium or chromedriver not found (apt-get install \
             chromium chromium-driver; STACKQUERY_REQUIRE_BROWSER=1 makes this a failure)"
        );
        return;
    };

    // A cache with a bit of everything.
    let client = QueryClient::new();
    for i in 1..=5 {
        client
            .set_query_data(key!["todos", i], format!("todo {i}"))
            .unwrap();
    }
    let failing = QueryOptions::new(key!["flaky"], || async {
        Err::<String, _>("503".to_string())
    })
    .retry(0);
    let _ = client.fetch_query(&failing).await;
    let down = QueryOptions::new(key!["search", "rust"], || async {
        Err::<Vec<String>, _>("search backend: connection refused".to_string())
    })
    .retry(2)
    .retry_delay(|_| Duration::from_millis(1));
    let _ = client.fetch_query(&down).await;
    let persisted = QueryOptions::new(key!["user", 1], || async {
        Ok::<_, String>(json!({"name": "Ada"}))
    })
    .persist()
    .stale_time(Duration::from_secs(3600));
    client.fetch_query(&persisted).await.unwrap();
    let observed = QueryOptions::new(key!["clock"], || async { Ok::<_, String>(42_u64) })
        .stale_time(Duration::from_secs(3600));
    let observer = client.watch(&observed);
    let _sub = observer.subscribe(|_| {});
    let save = client.mutation(MutationOptions::new(
        |n: u32| async move { Ok::<_, String>(n) },
    ));

    let server = Devtools::new(client.clone())
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let save_done = save.mutate(7).await;
    assert!(save_done.is_ok());

    let driver = start_driver(&chromedriver).await;
    let b = open_browser(&driver, &chromium).await;
    let result = guarded(drive(&b, &client, &server.url())).await;
    if let (Ok(()), Ok(png)) = (&result, b.screenshot().await) {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/devtools.png");
        let _ = std::fs::write(&target, &png);
        if std::env::var("STACKQUERY_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/devtools.png");
            std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
            std::fs::write(&docs, &png).unwrap();
        }
    }

    // The same cache through a read-only panel: no actions on the page.
    let ro = Devtools::new(client.clone())
        .read_only(true)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ro_result = guarded(drive_read_only(&b, &ro.url())).await;

    // 10,000 queries: one snapshot, a virtualised list.
    let big = QueryClient::new();
    for i in 0..10_000_u32 {
        big.set_query_data(key!["item", i], i).unwrap();
    }
    let big_server = Devtools::new(big.clone())
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let big_result = guarded(drive_ten_thousand(&b, &big, &big_server.url())).await;
    let _ = b.close().await;
    for (part, r) in [
        ("the panel", result),
        ("the read-only panel", ro_result),
        ("10,000 queries", big_result),
    ] {
        if let Err(e) = r {
            panic!("{part}: {e}");
        }
    }
}

async fn drive_ten_thousand(b: &Client, client: &QueryClient, url: &str) -> Checked {
    let started = Instant::now();
    b.goto(url).await.map_err(|e| e.to_string())?;
    eventually("10,000 queries counted", || async {
        let t = b.find(Locator::Id("count")).await.ok()?.text().await.ok()?;
        (t == "10000 queries").then_some(())
    })
    .await;
    eprintln!("10,000 queries on the page in {:?}", started.elapsed());
    let drawn = page_rows(b).await.len();
    assert!(
        (1..200).contains(&drawn),
        "only the rows in view are drawn, not {drawn}"
    );
    // The keyboard reaches the end of the list; the last row is drawn and selected.
    let list = b
        .find(Locator::Id("list"))
        .await
        .map_err(|e| e.to_string())?;
    list.click().await.map_err(|e| e.to_string())?;
    list.send_keys("\u{E010}") // End
        .await
        .map_err(|e| e.to_string())?;
    let last = r#"["item",9999]"#;
    eventually("the last row selected", || async {
        let v = row_attr(b, last, "aria-selected").await?;
        (v == "true").then_some(())
    })
    .await;
    // A change far down the list reaches it.
    client
        .set_query_data(key!["item", 9999_u32], 0_u32)
        .unwrap();
    client.invalidate_queries(key!["item", 9999_u32]).await;
    eventually("the last row to show the invalidation", || async {
        let v = row_attr(b, last, "data-invalidated").await?;
        (v == "true").then_some(())
    })
    .await;
    Ok(())
}

type Checked = Result<(), String>;

/// Runs a part of the test, turning its panic into an error, so the browser session is
/// always closed (a killed chromedriver could leave its Chromium behind).
async fn guarded(part: impl std::future::Future<Output = Checked>) -> Checked {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(part).catch_unwind().await {
        Ok(r) => r,
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())),
    }
}

async fn drive(b: &Client, client: &QueryClient, url: &str) -> Checked {
    b.goto(url).await.map_err(|e| e.to_string())?;
    b.wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("#conn.live"))
        .await
        .map_err(|e| format!("never live: {e}"))?;
    // A marker that a reload would wipe.
    b.execute("window.__noReload = true; return 1;", vec![])
        .await
        .map_err(|e| e.to_string())?;

    // 1. The rows match the cache.
    let want = sorted(cache_rows(client));
    assert_eq!(want.len(), 9);
    let got = eventually("the rows to match the cache", || async {
        let rows = sorted(page_rows(b).await);
        (rows == want).then_some(rows)
    })
    .await;
    assert_eq!(got.len(), 9);
    assert!(got
        .iter()
        .any(|r| r["status"] == "error" && r["failures"] == 3));
    // Stats are shown, and the mutation.
    let stats = b
        .find(Locator::Id("stats"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(stats.contains("entries 9"), "{stats}");
    let muts = b
        .find(Locator::Id("mutlist"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(muts.contains("success"), "{muts}");

    // Selecting a persisted query shows its data as JSON.
    click_row(b, r#"["user",1]"#).await?;
    let data = eventually("the data pane", || async {
        let el = b.find(Locator::Id("data")).await.ok()?;
        el.text().await.ok()
    })
    .await;
    assert!(data.contains("\"Ada\""), "{data}");

    // 2. A cache change reaches the page without a reload.
    client
        .set_query_data(key!["flaky"], "recovered".to_string())
        .unwrap();
    eventually("the flaky row to turn success", || async {
        let status = row_attr(b, r#"["flaky"]"#, "data-status").await?;
        (status == "success").then_some(())
    })
    .await;
    client
        .set_query_data(key!["user", 1], json!({"name": "Grace"}))
        .unwrap();
    eventually("the data pane to show the new data", || async {
        let el = b.find(Locator::Id("data")).await.ok()?;
        el.text().await.ok()?.contains("Grace").then_some(())
    })
    .await;
    client.set_query_data(key!["new"], 1_u8).unwrap();
    eventually("a new row", || async {
        row_attr(b, r#"["new"]"#, "data-status").await.map(|_| ())
    })
    .await;
    let still = b
        .execute("return window.__noReload === true;", vec![])
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(still, json!(true), "the page was reloaded");

    // 3. The Invalidate button invalidates the entry in the client.
    let target = r#"["todos",2]"#;
    assert!(
        !client
            .get_query_state::<String>(&key!["todos", 2])
            .unwrap()
            .is_invalidated
    );
    click_row(b, target).await?;
    let button = b
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Id("action-invalidate"))
        .await
        .map_err(|e| e.to_string())?;
    // The detail pane is for the row just clicked.
    eventually("the detail pane for the clicked row", || async {
        let k = b
            .find(Locator::Id("detail-key"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (k == target).then_some(())
    })
    .await;
    let button = b
        .find(Locator::Id("action-invalidate"))
        .await
        .unwrap_or(button);
    button.click().await.map_err(|e| e.to_string())?;
    eventually("the entry to be invalidated in the client", || async {
        client
            .get_query_state::<String>(&key!["todos", 2])
            .filter(|s| s.is_invalidated)
            .map(|_| ())
    })
    .await;
    eventually("the row to show it", || async {
        let v = row_attr(b, target, "data-invalidated").await?;
        (v == "true").then_some(())
    })
    .await;

    // 4. The keyboard: "/" focuses the filter, typing narrows the list.
    b.find(Locator::Id("list"))
        .await
        .map_err(|e| e.to_string())?
        .send_keys("/")
        .await
        .map_err(|e| e.to_string())?;
    let focused = b
        .execute("return document.activeElement.id;", vec![])
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(focused, json!("filter"));
    b.find(Locator::Id("filter"))
        .await
        .map_err(|e| e.to_string())?
        .send_keys("todos")
        .await
        .map_err(|e| e.to_string())?;
    eventually("the filter to narrow the list", || async {
        let n = page_rows(b).await.len();
        (n == 5).then_some(())
    })
    .await;
    // Clear the filter for the screenshot, keep the selection.
    b.execute(
        "const f = document.getElementById('filter'); f.value = '';
         f.dispatchEvent(new Event('input')); return 1;",
        vec![],
    )
    .await
    .map_err(|e| e.to_string())?;
    eventually("the full list again", || async {
        (page_rows(b).await.len() == 10).then_some(())
    })
    .await;
    // The screenshot shows a persisted query's data.
    click_row(b, r#"["user",1]"#).await?;
    eventually("the data pane", || async {
        b.find(Locator::Id("data")).await.ok().map(|_| ())
    })
    .await;
    Ok(())
}

async fn click_row(b: &Client, key: &str) -> Checked {
    let sel = format!(".row[data-key='{key}'] .key");
    let el = b
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(&sel))
        .await
        .map_err(|e| format!("no row {key}: {e}"))?;
    el.click().await.map_err(|e| e.to_string())
}

async fn drive_read_only(b: &Client, url: &str) -> Checked {
    b.goto(url).await.map_err(|e| e.to_string())?;
    b.wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("body.read-only #conn.live"))
        .await
        .map_err(|e| format!("read-only page never live: {e}"))?;
    click_row(b, r#"["todos",1]"#).await?;
    let button = eventually("the detail pane", || async {
        b.find(Locator::Id("action-invalidate")).await.ok()
    })
    .await;
    let shown = button.is_displayed().await.map_err(|e| e.to_string())?;
    assert!(!shown, "a read-only panel shows no actions");
    Ok(())
}
