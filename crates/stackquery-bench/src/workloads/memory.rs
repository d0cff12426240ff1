//! Memory per entry for 1,000,000 small entries (key `["item", i]`, value a `u64`): the
//! resident-set growth (from `/proc/self/statm`) while the structure is built, divided by
//! the number of entries. Each contender is measured in its own child process of this
//! binary (`--memory <contender>`), so one contender's freed-but-retained heap never
//! counts for another. Keys are built inside the measured window: they are part of what
//! each structure holds.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache as MokaCache;
use stackquery::{key, QueryClient, QueryKey, QueryOptions};
use stackquery_bench::contenders::{Floor, SingleFlight};

use super::{multi_thread, on_worker, Never, FRESH_FOR};
use crate::report::{fmt_num, Better, Row, Section};
use crate::Cfg;

/// (child argument, row name, note, diagnostic only: skipped in quick mode)
const CONTENDERS: &[(&str, &str, &str, bool)] = &[
    (
        "stackquery-set",
        "stackquery set_query_data",
        "default client (gc armed for each entry)",
        false,
    ),
    (
        "stackquery-set-nogc",
        "stackquery set_query_data, gc_time = MAX",
        "diagnostic: no gc timer per entry",
        true,
    ),
    (
        "stackquery-fetch",
        "stackquery fetch_query",
        "diagnostic: entries also keep their QueryOptions",
        true,
    ),
    ("moka", "moka insert", "unbounded future::Cache", false),
    (
        "hand",
        "hand-written single-flight",
        "a completed `Shared<BoxFuture>` per key",
        false,
    ),
    ("floor", "plain `HashMap<QueryKey, Arc<u64>>`", "", false),
];

pub(crate) const SQ_MEMORY: &str = "stackquery set_query_data";
pub(crate) const PLAIN_MEMORY: &str = "plain `HashMap<QueryKey, Arc<u64>>`";

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let resident: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    // x86-64 Linux pages are 4 KiB.
    resident * 4096
}

/// Waits until the resident set stops moving (background tasks have settled).
fn settled_rss() -> u64 {
    let mut last = rss_bytes();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(150));
        let now = rss_bytes();
        if now.abs_diff(last) * 500 < last {
            return now;
        }
        last = now;
    }
    last
}

/// The child process: builds `entries` entries of one contender and prints the delta.
pub(crate) fn child(contender: &str, entries: usize) {
    let rt = multi_thread();
    // Let the runtime's threads start before the baseline.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    let before = settled_rss();
    let keep: Box<dyn std::any::Any> = match contender {
        "floor" => {
            let map: Floor<QueryKey, Arc<u64>> = Floor::new();
            for i in 0..entries {
                map.insert(key!["item", i], Arc::new(i as u64));
            }
            Box::new(map)
        }
        "hand" => {
            let map: SingleFlight<QueryKey, Arc<u64>> = SingleFlight::new();
            for i in 0..entries {
                map.insert(key!["item", i], Arc::new(i as u64));
            }
            Box::new(map)
        }
        "moka" => {
            let cache: MokaCache<QueryKey, Arc<u64>> = MokaCache::builder().build();
            rt.block_on(async {
                for i in 0..entries {
                    cache.insert(key!["item", i], Arc::new(i as u64)).await;
                }
                cache.run_pending_tasks().await;
            });
            Box::new(cache)
        }
        "stackquery-set" | "stackquery-set-nogc" => {
            let client = if contender == "stackquery-set" {
                QueryClient::new()
            } else {
                QueryClient::builder().gc_time(Duration::MAX).build()
            };
            rt.block_on(async {
                for i in 0..entries {
                    client
                        .set_query_data(key!["item", i], i as u64)
                        .expect("set");
                }
            });
            Box::new(client)
        }
        "stackquery-fetch" => {
            let client = QueryClient::new();
            let c = client.clone();
            // The loop runs as a task on a worker, so each fetch task's wake-up is local.
            on_worker(&rt, async move {
                for i in 0..entries {
                    let opts = QueryOptions::new(key!["item", i], move || async move {
                        Ok::<_, Never>(i as u64)
                    })
                    .stale_time(FRESH_FOR);
                    c.fetch_query(&opts).await.expect("fetch");
                }
            });
            Box::new(client)
        }
        other => {
            eprintln!("unknown memory contender {other:?}");
            std::process::exit(2);
        }
    };
    // Background work (gc bookkeeping, moka's housekeeping) runs on the runtime's
    // workers; wait for the resident set to settle.
    let after = settled_rss();
    let per_entry = after.saturating_sub(before) as f64 / entries as f64;
    println!("MEMORY per_entry={per_entry:.1} before={before} after={after}");
    // Skip the teardown of a million entries.
    std::mem::forget(keep);
    std::process::exit(0);
}

fn measure_in_child(arg: &str, entries: usize) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args(["--memory", arg, "--entries", &entries.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("child failed ({}): {first}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("MEMORY per_entry="))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no MEMORY line in {text:?}"))
}

pub(crate) fn run(cfg: &Cfg) -> Section {
    let n = cfg.mem_entries;
    let mut s = Section::new(
        "memory",
        format!(
            "Memory per entry, {} small entries (RSS delta, one child process each)",
            fmt_num(n as f64)
        ),
        "B/entry",
        Better::Lower,
    );
    s.reference(SQ_MEMORY);
    for (arg, name, note, diagnostic) in CONTENDERS {
        if *diagnostic && cfg.quick {
            continue;
        }
        let mut samples = Vec::new();
        let mut err = None;
        for _ in 0..cfg.mem_runs {
            match measure_in_child(arg, n) {
                Ok(v) => samples.push(v),
                Err(e) => err = Some(e),
            }
        }
        let note = match err {
            Some(e) => format!("{note} — error: {e}"),
            None => note.to_string(),
        };
        s.push(Row::new(*name, samples).note(note));
    }
    s.note(format!(
        "Key `[\"item\", i]`, value a `u64` (behind the `Arc` each library stores). RSS \
         counts whole pages, including allocator slack and the map's spare capacity; \
         glibc malloc. {} run(s) per contender.",
        cfg.mem_runs
    ));
    s.note(format!(
        "Sizes of stackquery's public per-entry types (`size_of`, this build): \
         `QueryState<u64>` {} B, `QueryOptions<u64>` {} B, `QueryError` {} B, \
         `Option<QueryError>` {} B, `QueryKey` {} B.",
        std::mem::size_of::<stackquery::QueryState<u64>>(),
        std::mem::size_of::<QueryOptions<u64>>(),
        std::mem::size_of::<stackquery::QueryError>(),
        std::mem::size_of::<Option<stackquery::QueryError>>(),
        std::mem::size_of::<QueryKey>(),
    ));
    s
}
