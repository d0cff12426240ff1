//! Instruction counts of stackquery's hit, join and fill paths under callgrind, through
//! [gungraun](https://docs.rs/gungraun) (the successor of iai-callgrind).
//!
//! ```text
//! apt-get install valgrind                           # callgrind (Debian's 3.19 works)
//! cargo install gungraun-runner --version 0.18.2     # must match the gungraun library
//! cargo bench -p stackquery-bench --bench instructions
//! ```
//!
//! Every path runs twice, with `n` and `2n` operations, each in its own process under
//! callgrind. gungraun counts only the benchmark function: building the client, the keys
//! and the runtime (setup) and the checks and drops after it (teardown) are not counted.
//! The figure per operation is `(I(2n) − I(n)) / n`, which also cancels what the function
//! pays once whatever `n` is (entering the runtime, starting or settling the shared fetch
//! of the join): this binary prints it after gungraun's own report.
//!
//! Without `--bench` (`cargo test --all-targets`) it runs every path once natively, with
//! small `n` and the same checks, as a smoke test; with `--bench` but without valgrind or
//! `gungraun-runner` it says so and exits successfully.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use stackquery::{key, QueryClient, QueryKey, QueryOptions};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

/// The gungraun library version; `gungraun-runner` must be the same version.
const RUNNER_VERSION: &str = "0.18.2";
/// Data stays fresh for the whole run.
const FRESH_FOR: Duration = Duration::from_secs(3600);
/// Keys primed for the hit loops (read round-robin, like the comparison harness).
const HIT_KEYS: usize = 1024;

/// The paths, with the `n` of their smaller run (the larger runs `2n`).
const PATHS: &[(&str, usize)] = &[
    ("hit_fetch_query", HIT_N),
    ("hit_get_query_data", HIT_N),
    ("join_fetch_query", JOIN_N),
    ("fill_fetch_query", FILL_N),
    ("fill_set_query_data", FILL_N),
];
const HIT_N: usize = 10_000;
const JOIN_N: usize = 1_000;
const FILL_N: usize = 5_000;

type Never = std::convert::Infallible;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The fixtures, the measured loops and their checks, shared by the gungraun benches and
/// the smoke run. Every loop runs on a current-thread runtime, so the fetch tasks and the
/// client's timer driver run on the measured thread and are counted.
mod paths {
    use super::*;

    /// A client whose [`HIT_KEYS`] keys were fetched (so each entry holds its options)
    /// and are fresh.
    pub(super) struct Hit {
        rt: Runtime,
        client: QueryClient,
        keys: Vec<QueryKey>,
        opts: Vec<QueryOptions<String>>,
        n: usize,
        hits_before: u64,
        fetches_before: u64,
    }

    /// The [`Hit`] fixture for a loop of `n` reads.
    pub(super) fn hit_setup(n: usize) -> Hit {
        let rt = runtime();
        let client = QueryClient::new();
        let keys: Vec<QueryKey> = (0..HIT_KEYS).map(|i| key!["user", i]).collect();
        let opts: Vec<QueryOptions<String>> = keys
            .iter()
            .map(|k| {
                QueryOptions::new(k.clone(), || async {
                    Ok::<_, Never>("a user record".to_string())
                })
                .stale_time(FRESH_FOR)
            })
            .collect();
        rt.block_on(async {
            for o in &opts {
                client.fetch_query(o).await.expect("prime");
            }
            // Warm up: first-use costs (thread-locals, lazy statics) stay out of the count.
            for o in &opts {
                client.fetch_query(o).await.expect("hit");
            }
        });
        for k in &keys {
            client.get_query_data::<String>(k).expect("warm");
        }
        let st = client.stats();
        Hit {
            rt,
            client,
            keys,
            opts,
            n,
            hits_before: st.hits,
            fetches_before: st.fetches,
        }
    }

    /// `n` fresh hits through `fetch_query`.
    pub(super) fn hit_fetch(fx: Hit) -> Hit {
        fx.rt.block_on(async {
            for i in 0..fx.n {
                let o = &fx.opts[i % HIT_KEYS];
                black_box(fx.client.fetch_query(black_box(o)).await.expect("hit"));
            }
        });
        fx
    }

    /// `n` reads through `get_query_data`.
    pub(super) fn hit_get(fx: Hit) -> Hit {
        fx.rt.block_on(async {
            for i in 0..fx.n {
                let k = &fx.keys[i % HIT_KEYS];
                black_box(
                    fx.client
                        .get_query_data::<String>(black_box(k))
                        .expect("hit"),
                );
            }
        });
        fx
    }

    /// Every `fetch_query` was a hit (`get_query_data` counts none), none fetched.
    pub(super) fn hit_check(fx: Hit) {
        let st = fx.client.stats();
        assert_eq!(st.fetches, fx.fetches_before, "a hit loop fetched");
        let hits = st.hits - fx.hits_before;
        assert!(
            hits == 0 || hits == fx.n as u64,
            "{hits} hits counted for {} calls",
            fx.n
        );
    }

    /// A key whose fetch is in flight: a first caller (a task) started it and the fetch
    /// waits for `gate`.
    pub(super) struct Join {
        rt: Runtime,
        client: QueryClient,
        opts: QueryOptions<String>,
        gate: Arc<Notify>,
        leader: tokio::task::JoinHandle<()>,
        n: usize,
    }

    /// The [`Join`] fixture for `n` joining callers.
    pub(super) fn join_setup(n: usize) -> Join {
        let rt = runtime();
        let client = QueryClient::new();
        let gate = Arc::new(Notify::new());
        let g = gate.clone();
        let opts = QueryOptions::new(key!["cold", 1], move || {
            let g = g.clone();
            async move {
                g.notified().await;
                Ok::<_, Never>("a user record".to_string())
            }
        })
        .stale_time(FRESH_FOR);
        // Warm up on another client: first-use costs stay out of the count.
        rt.block_on(async {
            let warm = QueryClient::new();
            let o = QueryOptions::new(key!["warm"], || async { Ok::<_, Never>(String::new()) });
            warm.fetch_query(&o).await.expect("warm");
        });
        let leader = {
            let _in_rt = rt.enter();
            let (c, o) = (client.clone(), opts.clone());
            tokio::spawn(async move {
                c.fetch_query(&o).await.expect("leader");
            })
        };
        rt.block_on(async {
            while client.stats().fetches == 0 {
                tokio::task::yield_now().await;
            }
            // Once more, so the fetch task is parked on the gate.
            tokio::task::yield_now().await;
        });
        Join {
            rt,
            client,
            opts,
            gate,
            leader,
            n,
        }
    }

    /// `n` callers of the key join the flight (each polled once), then the fetch is
    /// released and every caller gets the value.
    pub(super) fn join(fx: Join) -> Join {
        fx.rt.block_on(async {
            let callers =
                futures::future::join_all((0..fx.n).map(|_| fx.client.fetch_query(&fx.opts)));
            let release = async { fx.gate.notify_one() };
            let (values, ()) = futures::join!(callers, release);
            for v in values {
                black_box(v.expect("join"));
            }
        });
        fx
    }

    /// One fetch, and every caller joined it.
    pub(super) fn join_check(fx: Join) {
        fx.rt.block_on(fx.leader).expect("leader");
        let st = fx.client.stats();
        assert_eq!(st.fetches, 1, "the callers did not share one fetch");
        assert_eq!(
            st.dedup_joins, fx.n as u64,
            "not every caller joined the flight"
        );
    }

    /// An empty client and `n` new keys whose fetch is ready at once.
    pub(super) struct Fill {
        rt: Runtime,
        client: QueryClient,
        keys: Vec<QueryKey>,
        opts: Vec<QueryOptions<u64>>,
        warm: usize,
    }

    /// The [`Fill`] fixture for `n` new keys.
    pub(super) fn fill_setup(n: usize) -> Fill {
        const WARM: usize = 100;
        let rt = runtime();
        let client = QueryClient::new();
        let make = |prefix: &'static str, i: usize| {
            QueryOptions::new(
                key![prefix, i],
                move || async move { Ok::<_, Never>(i as u64) },
            )
            .stale_time(FRESH_FOR)
        };
        // Warm up on other keys of the same client (its timer driver starts here).
        rt.block_on(async {
            for i in 0..WARM {
                client.fetch_query(&make("warm", i)).await.expect("warm");
            }
        });
        let opts: Vec<QueryOptions<u64>> = (0..n).map(|i| make("fill", i)).collect();
        let keys = opts.iter().map(|o| o.key().clone()).collect();
        Fill {
            rt,
            client,
            keys,
            opts,
            warm: WARM,
        }
    }

    /// `fetch_query` on each new key (a miss: the fetch, ready at once, runs in the caller's task).
    pub(super) fn fill_fetch(fx: Fill) -> Fill {
        fx.rt.block_on(async {
            for o in &fx.opts {
                black_box(fx.client.fetch_query(black_box(o)).await.expect("fill"));
            }
        });
        fx
    }

    /// `set_query_data` of each new key (inside the runtime, as in an application).
    pub(super) fn fill_set(fx: Fill) -> Fill {
        fx.rt.block_on(async {
            for (i, k) in fx.keys.iter().enumerate() {
                fx.client
                    .set_query_data(black_box(k.clone()), i as u64)
                    .expect("set");
            }
        });
        fx
    }

    /// Every key is cached.
    pub(super) fn fill_check(fx: Fill) {
        assert_eq!(fx.client.stats().entries, fx.warm + fx.keys.len());
    }
}

/// The gungraun benchmarks: each path at `n` and `2n`.
mod counted {
    use gungraun::{library_benchmark, library_benchmark_group, main};

    use super::paths::*;
    use super::{FILL_N, HIT_N, JOIN_N};

    #[library_benchmark]
    #[bench::n(args = (HIT_N), setup = hit_setup, teardown = hit_check)]
    #[bench::n2(args = (2 * HIT_N), setup = hit_setup, teardown = hit_check)]
    fn hit_fetch_query(fx: Hit) -> Hit {
        hit_fetch(fx)
    }

    #[library_benchmark]
    #[bench::n(args = (HIT_N), setup = hit_setup, teardown = hit_check)]
    #[bench::n2(args = (2 * HIT_N), setup = hit_setup, teardown = hit_check)]
    fn hit_get_query_data(fx: Hit) -> Hit {
        hit_get(fx)
    }

    #[library_benchmark]
    #[bench::n(args = (JOIN_N), setup = join_setup, teardown = join_check)]
    #[bench::n2(args = (2 * JOIN_N), setup = join_setup, teardown = join_check)]
    fn join_fetch_query(fx: Join) -> Join {
        join(fx)
    }

    #[library_benchmark]
    #[bench::n(args = (FILL_N), setup = fill_setup, teardown = fill_check)]
    #[bench::n2(args = (2 * FILL_N), setup = fill_setup, teardown = fill_check)]
    fn fill_fetch_query(fx: Fill) -> Fill {
        fill_fetch(fx)
    }

    #[library_benchmark]
    #[bench::n(args = (FILL_N), setup = fill_setup, teardown = fill_check)]
    #[bench::n2(args = (2 * FILL_N), setup = fill_setup, teardown = fill_check)]
    fn fill_set_query_data(fx: Fill) -> Fill {
        fill_set(fx)
    }

    library_benchmark_group!(
        name = paths,
        benchmarks = [
            hit_fetch_query,
            hit_get_query_data,
            join_fetch_query,
            fill_fetch_query,
            fill_set_query_data
        ]
    );

    main!(library_benchmark_groups = paths);

    /// gungraun's generated `main`: runs the groups under `gungraun-runner`, or (invoked
    /// by the runner with `--gungraun-run`) one benchmark.
    pub(super) fn run() {
        main();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--gungraun-run") {
        // The runner runs this binary under valgrind, one benchmark at a time.
        counted::run();
    } else if !has("--bench") {
        smoke();
    } else if let Some(missing) = missing_tool() {
        eprintln!(
            "instructions: skipped, {missing} not found (apt-get install valgrind; \
             cargo install gungraun-runner --version {RUNNER_VERSION})"
        );
    } else {
        counted::run();
        per_op();
    }
}

/// Every path once, natively and with small `n`: `cargo test --all-targets` checks that
/// the bench still works without valgrind.
fn smoke() {
    use paths::*;
    hit_check(hit_fetch(hit_setup(100)));
    hit_check(hit_get(hit_setup(100)));
    join_check(join(join_setup(100)));
    fill_check(fill_fetch(fill_setup(100)));
    fill_check(fill_set(fill_setup(100)));
    println!("instructions: smoke run of {} paths passed", PATHS.len());
}

/// `valgrind` or `gungraun-runner`, if one cannot be found. gungraun takes the runner
/// from `GUNGRAUN_RUNNER` at build time, else from `PATH`.
fn missing_tool() -> Option<&'static str> {
    if which("valgrind").is_none() {
        return Some("valgrind");
    }
    let runner = match option_env!("GUNGRAUN_RUNNER") {
        Some(path) => Path::new(path).is_file(),
        None => which("gungraun-runner").is_some(),
    };
    (!runner).then_some("gungraun-runner")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Reads the total instruction count of each run from callgrind's output files and prints
/// `(I(2n) − I(n)) / n` per path.
fn per_op() {
    // Where gungraun-runner writes: `GUNGRAUN_HOME`, else `$CARGO_TARGET_DIR/gungraun`,
    // else the workspace's `target/gungraun`.
    let home = std::env::var_os("GUNGRAUN_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("gungraun")))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/gungraun"));
    let dir = home.join("stackquery-bench/instructions/counted/paths");
    println!("\nInstructions per operation, (I(2n) - I(n)) / n:");
    for (name, n) in PATHS {
        let counts: Option<Vec<u64>> = ["n", "n2"]
            .iter()
            .map(|id| total_ir(&dir, name, id))
            .collect();
        match counts.as_deref() {
            Some(&[one, two]) => println!(
                "  {name:<20} {:>10.1}   (n = {n}: {one} instructions; 2n: {two})",
                (two as f64 - one as f64) / *n as f64
            ),
            _ => println!(
                "  {name:<20} no callgrind output found under {}",
                dir.display()
            ),
        }
    }
}

/// The `totals:` (or `summary:`) line of the callgrind output of benchmark `name`, id `id`.
fn total_ir(dir: &Path, name: &str, id: &str) -> Option<u64> {
    let file = dir
        .join(format!("{name}.{id}"))
        .join(format!("callgrind.{name}.{id}.out"));
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
