//! The SVG plot: fresh-hit latency, cold-key dedup overhead and their scaling over 1, 2
//! and 4 threads, as grouped horizontal bars (one group per contender, one bar per variant
//! of the workload).

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{fmt_num, Section};

struct Panel {
    title: &'static str,
    unit: &'static str,
    /// Section id and legend label of each bar of a group.
    series: &'static [(&'static str, &'static str)],
}

const PANELS: [Panel; 4] = [
    Panel {
        title: "Fresh-hit latency (median; lower is better)",
        unit: "ns per operation",
        series: &[
            ("hit_1task", "1 task"),
            ("hit_2threads", "2 OS threads, 8 hot keys (per thread)"),
        ],
    },
    Panel {
        title: "Cold-key dedup overhead per caller, 10 ms fetch (median; lower is better)",
        unit: "ns per caller beyond the fetch",
        series: &[
            ("dedup_1k", "1,000 callers"),
            ("dedup_100k", "100,000 callers"),
        ],
    },
    Panel {
        title: "Hit throughput on 8 hot keys by OS threads, 2 cores (median; higher is better)",
        unit: "M ops/s, all threads together",
        series: &[
            ("scaling_hit_1", "1 thread"),
            ("scaling_hit_2", "2 threads"),
            ("scaling_hit_4", "4 threads"),
        ],
    },
    Panel {
        title:
            "Dedup overhead, 1,000 callers, by worker threads, 2 cores (median; lower is better)",
        unit: "ns per caller beyond the fetch",
        series: &[
            ("scaling_dedup_1", "1 worker"),
            ("scaling_dedup_2", "2 workers"),
            ("scaling_dedup_4", "4 workers"),
        ],
    },
];

/// Writes the plot to `path`; `Ok(false)` when no section to plot was measured.
pub(crate) fn write(path: &Path, sections: &[Section]) -> Result<bool, Box<dyn Error>> {
    let find = |id: &str| sections.iter().find(|s| s.id == id);
    let panels: Vec<&Panel> = PANELS
        .iter()
        .filter(|p| p.series.iter().any(|(id, _)| find(id).is_some()))
        .collect();
    if panels.is_empty() {
        return Ok(false);
    }
    let root = SVGBackend::new(path, (1100, 440 * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, panel) in areas.iter().zip(panels) {
        // Contenders in the order of the first section that has them.
        let mut names: Vec<String> = Vec::new();
        for (id, _) in panel.series {
            for row in find(id).map(|s| s.rows.as_slice()).unwrap_or_default() {
                if row.median().is_some() && !names.contains(&row.contender) {
                    names.push(row.contender.clone());
                }
            }
        }
        let value = |id: &str, name: &str| find(id).and_then(|s| s.median(name));
        let max = panel
            .series
            .iter()
            .flat_map(|(id, _)| names.iter().filter_map(move |n| value(id, n)))
            .fold(0.0_f64, f64::max)
            .max(1.0);
        let n = names.len();
        // Row i (top to bottom) sits at y = n - 1 - i.
        let y_of = |i: usize| (n - 1 - i) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(250)
            .build_cartesian_2d(0.0..max * 1.18, -0.5..(n as f64 - 0.5))?;
        let label = |y: &f64| {
            let r = y.round();
            if (y - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < n {
                names[n - 1 - r as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&label)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc(panel.unit)
            .label_style(("sans-serif", 13))
            .draw()?;
        let value_style =
            TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        // The k bars of a group share 0.76 of a row, the first on top.
        let k = panel.series.len() as f64;
        let half = 0.34 / k;
        for (si, (id, series_label)) in panel.series.iter().enumerate() {
            let color = Palette99::pick(si * 3).to_rgba();
            let offset = 0.38 - (2 * si + 1) as f64 * 0.38 / k;
            let bars: Vec<(f64, f64)> = names
                .iter()
                .enumerate()
                .filter_map(|(i, name)| value(id, name).map(|v| (y_of(i) + offset, v)))
                .collect();
            chart
                .draw_series(bars.iter().map(|&(y, v)| {
                    Rectangle::new([(0.0, y - half), (v, y + half)], color.filled())
                }))?
                .label(*series_label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            chart.draw_series(bars.iter().map(|&(y, v)| {
                Text::new(format!(" {}", fmt_num(v)), (v, y), value_style.clone())
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(true)
}
