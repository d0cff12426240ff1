//! `stackquery-bench`: stackquery against the caches a Rust user would pick instead, side
//! by side in one run.
//!
//! ```text
//! cargo run --release -p stackquery-bench -- --quick     # under a minute
//! cargo run --release -p stackquery-bench                # full mode
//! cargo run --release -p stackquery-bench -- --only hit  # one workload (hit, dedup,
//!                                                        # fill, zipf, invalidate, memory,
//!                                                        # hydration, scaling)
//! ```
//!
//! Prints a markdown comparison table, and writes it with an SVG plot of hit latency,
//! dedup overhead and their scaling over 1, 2 and 4 threads to `crates/stackquery-bench/results/` (or `--out DIR`). Memory is
//! measured in child processes of this binary (`--memory <contender> --entries N`), one
//! per contender, so resident-set deltas never mix. `--profile <loop>` runs one of
//! stackquery's loops alone, for `perf` or `callgrind`.

use std::path::PathBuf;
use std::time::Instant;

mod plot;
mod profile;
mod report;
mod targets;
mod workloads;

use report::Section;

/// Sizes and repetition counts of one run.
#[derive(Clone, Debug)]
pub(crate) struct Cfg {
    pub(crate) quick: bool,
    pub(crate) hit_reps: usize,
    pub(crate) hit_batch: usize,
    pub(crate) dedup_small_reps: usize,
    pub(crate) dedup_large_reps: usize,
    pub(crate) fill_keys: usize,
    pub(crate) fill_reps: usize,
    pub(crate) zipf_universe: usize,
    pub(crate) zipf_bound: usize,
    pub(crate) zipf_ops: usize,
    pub(crate) zipf_reps: usize,
    pub(crate) zipf_s: f64,
    pub(crate) inval_groups: usize,
    pub(crate) inval_per_group: usize,
    pub(crate) inval_reps: usize,
    pub(crate) mem_entries: usize,
    pub(crate) mem_runs: usize,
}

impl Cfg {
    fn full() -> Self {
        Cfg {
            quick: false,
            hit_reps: 31,
            hit_batch: 200_000,
            dedup_small_reps: 21,
            dedup_large_reps: 7,
            fill_keys: 100_000,
            fill_reps: 9,
            zipf_universe: 1_000_000,
            zipf_bound: 100_000,
            zipf_ops: 2_000_000,
            zipf_reps: 5,
            zipf_s: 1.0,
            inval_groups: 10_000,
            inval_per_group: 100,
            inval_reps: 21,
            mem_entries: 1_000_000,
            mem_runs: 3,
        }
    }

    fn quick() -> Self {
        Cfg {
            quick: true,
            hit_reps: 9,
            hit_batch: 50_000,
            dedup_small_reps: 5,
            dedup_large_reps: 3,
            fill_reps: 3,
            zipf_ops: 200_000,
            zipf_reps: 3,
            // Smaller than the issue's 1,000,000 keys and 1,000,000 entries, to stay
            // well under a minute; the section titles show the sizes used.
            inval_groups: 2_000,
            inval_reps: 7,
            mem_entries: 250_000,
            mem_runs: 1,
            ..Cfg::full()
        }
    }
}

struct Args {
    quick: bool,
    only: Option<String>,
    out: PathBuf,
    memory: Option<String>,
    entries: Option<usize>,
    profile: Option<String>,
    ops: Option<usize>,
}

fn usage() -> ! {
    eprintln!(
        "usage: stackquery-bench [--quick] [--only hit|dedup|fill|zipf|invalidate|memory|hydration|scaling] [--out DIR]\n\
         \x20      stackquery-bench --memory <contender> [--entries N]   (child process)\n\
         \x20      stackquery-bench --profile <loop> [--ops N]   (stackquery alone, for perf/callgrind; loops: {})",
        profile::LOOPS.join(", ")
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        quick: false,
        only: None,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
        memory: None,
        entries: None,
        profile: None,
        ops: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--only" => args.only = Some(it.next().unwrap_or_else(|| usage())),
            "--out" => args.out = PathBuf::from(it.next().unwrap_or_else(|| usage())),
            "--memory" => args.memory = Some(it.next().unwrap_or_else(|| usage())),
            "--entries" => {
                args.entries = Some(
                    it.next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--profile" => args.profile = Some(it.next().unwrap_or_else(|| usage())),
            "--ops" => {
                args.ops = Some(
                    it.next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    args
}

/// The first three fields of `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let args = parse_args();
    if let Some(contender) = &args.memory {
        let entries = args.entries.unwrap_or(Cfg::full().mem_entries);
        workloads::memory::child(contender, entries);
        return;
    }
    if let Some(what) = &args.profile {
        profile::run(what, args.ops);
        return;
    }
    let cfg = if args.quick {
        Cfg::quick()
    } else {
        Cfg::full()
    };
    let wants = |w: &str| args.only.as_deref().is_none_or(|o| o == w);
    let started = Instant::now();
    let load_start = loadavg();
    let mode = if cfg.quick { "quick" } else { "full" };
    eprintln!("stackquery-bench: {mode} mode");

    let mut sections: Vec<Section> = Vec::new();
    let mut step = |name: &str, f: &mut dyn FnMut() -> Vec<Section>| {
        let t = Instant::now();
        eprint!("  {name} … ");
        let s = f();
        eprintln!("{:.1} s", t.elapsed().as_secs_f64());
        sections.extend(s);
    };
    if wants("hit") {
        step("fresh-hit latency", &mut || workloads::hit::run(&cfg));
    }
    if wants("dedup") {
        step("cold-key dedup", &mut || workloads::dedup::run(&cfg));
    }
    if wants("fill") {
        step("fill", &mut || vec![workloads::fill::run(&cfg)]);
    }
    if wants("zipf") {
        step("zipf read mix", &mut || {
            vec![workloads::zipf_mix::run(&cfg)]
        });
    }
    if wants("invalidate") {
        step("invalidation", &mut || {
            vec![workloads::invalidate::run(&cfg)]
        });
    }
    if wants("memory") {
        step("memory (child processes)", &mut || {
            vec![workloads::memory::run(&cfg)]
        });
    }
    if wants("hydration") {
        step("cold hydration from SQLite", &mut || {
            vec![workloads::hydration::run(&cfg)]
        });
    }
    if wants("scaling") {
        step("scaling over 1, 2, 4 threads", &mut || {
            let mut s = workloads::hit::scaling(&cfg);
            s.extend(workloads::dedup::scaling(&cfg));
            s
        });
    }

    let targets = targets::evaluate(&sections);
    let mut md = String::new();
    md.push_str(&format!(
        "## stackquery-bench results ({mode} mode, {:.0} s)\n\n\
         Load average (1, 5, 15 min) at the start: {load_start}; at the end: {}. On this \
         2-core machine a load above ~2 means other processes shared the cores during the \
         run: compare rows of one run only.\n\n",
        started.elapsed().as_secs_f64(),
        loadavg()
    ));
    for s in &sections {
        md.push_str(&s.markdown());
        md.push('\n');
    }
    md.push_str(&targets::markdown(&targets));
    println!("{md}");

    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("cannot create {}: {e}", args.out.display());
        std::process::exit(1);
    }
    let table = args.out.join(format!("results-{mode}.md"));
    if let Err(e) = std::fs::write(&table, &md) {
        eprintln!("cannot write {}: {e}", table.display());
        std::process::exit(1);
    }
    let svg = args.out.join(format!("latency-{mode}.svg"));
    match plot::write(&svg, &sections) {
        Ok(true) => eprintln!("wrote {} and {}", table.display(), svg.display()),
        Ok(false) => eprintln!("wrote {} (no hit/dedup data to plot)", table.display()),
        Err(e) => {
            eprintln!("cannot write {}: {e}", svg.display());
            std::process::exit(1);
        }
    }
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
}
