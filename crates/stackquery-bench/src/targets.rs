//! The targets, checked against this run's medians.

use std::fmt::Write as _;

use crate::report::{fmt_num, Section};
use crate::workloads::memory::{PLAIN_MEMORY, SQ_MEMORY};
use crate::workloads::{HAND, MOKA_GET, SQ_FETCH, SQ_INVALIDATE};

/// One target: its statement, what was measured, and whether it holds.
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) measured: String,
    /// `None`: not measured in this run.
    pub(crate) met: Option<bool>,
}

fn find<'a>(sections: &'a [Section], id: &str) -> Option<&'a Section> {
    sections.iter().find(|s| s.id == id)
}

pub(crate) fn evaluate(sections: &[Section]) -> Vec<Target> {
    let mut out = Vec::new();

    let hit = find(sections, "hit_1task");
    let sq = hit.and_then(|s| s.median(SQ_FETCH));
    let moka = hit.and_then(|s| s.median(MOKA_GET));
    out.push(match (sq, moka) {
        (Some(sq), Some(moka)) => Target {
            name: "Fresh hit ≤ 50 ns and ≥ 3× faster than moka `get` (1 task)",
            measured: format!(
                "fetch_query {} ns/op; moka get {} ns/op ({:.2}×)",
                fmt_num(sq),
                fmt_num(moka),
                moka / sq
            ),
            met: Some(sq <= 50.0 && moka / sq >= 3.0),
        },
        _ => Target {
            name: "Fresh hit ≤ 50 ns and ≥ 3× faster than moka `get` (1 task)",
            measured: "not measured".into(),
            met: None,
        },
    });

    let dd = find(sections, "dedup_100k");
    let sq = dd.and_then(|s| s.row(SQ_FETCH));
    let hand = dd.and_then(|s| s.median(HAND));
    out.push(match (sq, hand) {
        (Some(sq_row), Some(hand)) => {
            let sq = sq_row.median().unwrap_or(f64::NAN);
            let one_fetch = sq_row.note.starts_with("1 fetch in every run");
            Target {
                name: "Dedup overhead per caller at 100,000 callers below the hand-written map's, exactly one fetch",
                measured: format!(
                    "fetch_query {} ns/caller, hand-written {} ns/caller; {}",
                    fmt_num(sq),
                    fmt_num(hand),
                    if one_fetch { "one fetch per run" } else { "NOT one fetch per run" }
                ),
                met: Some(sq < hand && one_fetch),
            }
        }
        _ => Target {
            name: "Dedup overhead per caller at 100,000 callers below the hand-written map's, exactly one fetch",
            measured: "not measured".into(),
            met: None,
        },
    });

    let fill = find(sections, "fill");
    let sq = fill.and_then(|s| s.median(SQ_FETCH));
    let hand = fill.and_then(|s| s.median(HAND));
    out.push(match (sq, hand) {
        (Some(sq), Some(hand)) => Target {
            name: "Fill throughput ≥ the hand-written map's",
            measured: format!(
                "fetch_query {} keys/s, hand-written get_or_fetch {} keys/s ({:.2}×)",
                fmt_num(sq),
                fmt_num(hand),
                sq / hand
            ),
            met: Some(sq >= hand),
        },
        _ => Target {
            name: "Fill throughput ≥ the hand-written map's",
            measured: "not measured".into(),
            met: None,
        },
    });

    let mem = find(sections, "memory");
    let sq = mem.and_then(|s| s.median(SQ_MEMORY));
    let plain = mem.and_then(|s| s.median(PLAIN_MEMORY));
    out.push(match sq {
        Some(sq) => Target {
            name: "Memory per entry ≤ 300 B",
            measured: format!(
                "set_query_data {} B/entry (plain map {} B/entry; {})",
                fmt_num(sq),
                plain.map_or("—".into(), fmt_num),
                mem.map_or("", |s| s.title.as_str())
            ),
            met: Some(sq <= 300.0),
        },
        None => Target {
            name: "Memory per entry ≤ 300 B",
            measured: "not measured".into(),
            met: None,
        },
    });

    let inv = find(sections, "invalidate");
    let sq = inv.and_then(|s| s.median(SQ_INVALIDATE));
    out.push(match sq {
        Some(sq) => Target {
            name: "100 matches among 1,000,000 invalidated in < 200 µs",
            measured: format!(
                "invalidate_queries {} µs ({})",
                fmt_num(sq),
                inv.map_or("", |s| s.title.as_str())
            ),
            met: Some(sq < 200.0),
        },
        None => Target {
            name: "100 matches among 1,000,000 invalidated in < 200 µs",
            measured: "not measured".into(),
            met: None,
        },
    });
    out
}

pub(crate) fn markdown(targets: &[Target]) -> String {
    let mut s = String::from(
        "### Targets (issue 6)\n\n| target | measured (median) | met |\n|---|---|---|\n",
    );
    for t in targets {
        let met = match t.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "—",
        };
        let _ = writeln!(s, "| {} | {} | {} |", t.name, t.measured, met);
    }
    s
}
