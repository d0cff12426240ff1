//! Result tables: one section per workload, rendered as markdown with medians, spreads
//! and ratios of stackquery to each contender.

use std::fmt::Write as _;

use stackquery_bench::stats;

/// Which direction is better for a section's unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Better {
    Lower,
    Higher,
}

/// One contender's samples in one workload.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) contender: String,
    /// One value per repetition; empty for a placeholder row.
    pub(crate) samples: Vec<f64>,
    pub(crate) note: String,
}

impl Row {
    pub(crate) fn new(contender: impl Into<String>, samples: Vec<f64>) -> Self {
        Row {
            contender: contender.into(),
            samples,
            note: String::new(),
        }
    }

    #[must_use]
    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    pub(crate) fn median(&self) -> Option<f64> {
        (!self.samples.is_empty()).then(|| stats::median(&self.samples))
    }
}

/// One workload: its rows and the stackquery row the ratios are taken against.
#[derive(Clone, Debug)]
pub(crate) struct Section {
    pub(crate) id: &'static str,
    pub(crate) title: String,
    pub(crate) unit: &'static str,
    pub(crate) better: Better,
    pub(crate) rows: Vec<Row>,
    /// Contender name of the stackquery row the ratio column compares with.
    pub(crate) reference: Option<String>,
    pub(crate) notes: Vec<String>,
}

impl Section {
    pub(crate) fn new(
        id: &'static str,
        title: impl Into<String>,
        unit: &'static str,
        better: Better,
    ) -> Self {
        Section {
            id,
            title: title.into(),
            unit,
            better,
            rows: Vec::new(),
            reference: None,
            notes: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub(crate) fn reference(&mut self, contender: &str) {
        self.reference = Some(contender.to_string());
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub(crate) fn row(&self, contender: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.contender == contender)
    }

    pub(crate) fn median(&self, contender: &str) -> Option<f64> {
        self.row(contender).and_then(Row::median)
    }

    /// "stackquery 2.10× faster" style text for `row` against the reference row.
    fn ratio_text(&self, row: &Row) -> String {
        let Some(reference) = &self.reference else {
            return String::new();
        };
        if &row.contender == reference {
            return "reference".into();
        }
        let (Some(sq), Some(other)) = (self.median(reference), row.median()) else {
            return "—".into();
        };
        if sq <= 0.0 || other <= 0.0 {
            return "—".into();
        }
        // > 1 means stackquery is better.
        let gain = match self.better {
            Better::Lower => other / sq,
            Better::Higher => sq / other,
        };
        let (good, bad) = match self.unit {
            "B/entry" => ("smaller", "larger"),
            _ => ("faster", "slower"),
        };
        if gain >= 1.0 {
            format!("{gain:.2}× {good}")
        } else {
            format!("{:.2}× {bad}", 1.0 / gain)
        }
    }

    pub(crate) fn markdown(&self) -> String {
        let mut s = String::new();
        let better = match self.better {
            Better::Lower => "lower is better",
            Better::Higher => "higher is better",
        };
        let _ = writeln!(s, "### {}\n", self.title);
        let _ = writeln!(s, "Unit: {} ({better}).", self.unit);
        if let Some(r) = &self.reference {
            let _ = writeln!(
                s,
                "Ratio column: the `{r}` row against each contender's median."
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| contender | median | min – max | runs | stackquery vs this | notes |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---|---|");
        for row in &self.rows {
            let (median, spread) = match row.median() {
                Some(m) => (
                    fmt_num(m),
                    format!(
                        "{} – {}",
                        fmt_num(stats::min(&row.samples)),
                        fmt_num(stats::max(&row.samples))
                    ),
                ),
                None => ("—".to_string(), "—".to_string()),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                row.contender,
                median,
                spread,
                row.samples.len(),
                self.ratio_text(row),
                row.note
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "\n{n}");
        }
        s
    }
}

/// One workload measured at several settings (thread counts, say), one section each: a
/// markdown table with a row per contender (in the first section's order), the median of
/// each section under its label, and the last median over the first.
pub(crate) fn curve(sections: &[Section], labels: &[String]) -> String {
    let mut s = String::new();
    let (Some(first), Some(last)) = (labels.first(), labels.last()) else {
        return s;
    };
    let _ = writeln!(
        s,
        "| contender | {} | {last} ÷ {first} |",
        labels.join(" | ")
    );
    let _ = writeln!(s, "|---|{}---:|", "---:|".repeat(labels.len()));
    for row in sections
        .first()
        .map(|x| x.rows.as_slice())
        .unwrap_or_default()
    {
        let medians: Vec<Option<f64>> = sections.iter().map(|x| x.median(&row.contender)).collect();
        let cells: Vec<String> = medians
            .iter()
            .map(|m| m.map_or_else(|| "—".to_string(), fmt_num))
            .collect();
        let ratio = match (medians.first(), medians.last()) {
            (Some(Some(a)), Some(Some(b))) if *a > 0.0 => format!("{:.2}", b / a),
            _ => "—".to_string(),
        };
        let _ = writeln!(s, "| {} | {} | {ratio} |", row.contender, cells.join(" | "));
    }
    s
}

/// Compact number formatting: 3 significant digits below 100, thousands separators
/// above, and `M` for millions.
pub(crate) fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if a >= 100.0 {
        thousands(v.round() as i64)
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// An integer count with thousands separators.
pub(crate) fn fmt_count(v: f64) -> String {
    thousands(v.round() as i64)
}

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(1052.4), "1,052");
        assert_eq!(fmt_num(2_400_000.0), "2.40 M");
        assert_eq!(fmt_num(49.04), "49.0");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(421_000.0), "421,000");
    }

    #[test]
    fn curve_has_a_column_per_section() {
        let mut one = Section::new("a", "a", "M ops/s", Better::Higher);
        one.push(Row::new("sq", vec![10.0]));
        let mut four = Section::new("b", "b", "M ops/s", Better::Higher);
        four.push(Row::new("sq", vec![15.0]));
        let t = curve(&[one, four], &["1".into(), "4".into()]);
        assert!(t.contains("| contender | 1 | 4 | 4 ÷ 1 |"), "{t}");
        assert!(t.contains("| sq | 10.0 | 15.0 | 1.50 |"), "{t}");
    }

    #[test]
    fn ratios_follow_the_direction() {
        let mut s = Section::new("t", "t", "ns/op", Better::Lower);
        s.push(Row::new("sq", vec![10.0]));
        s.push(Row::new("other", vec![30.0]));
        s.reference("sq");
        assert_eq!(s.ratio_text(&s.rows[1]), "3.00× faster");
        let mut h = Section::new("t", "t", "keys/s", Better::Higher);
        h.push(Row::new("sq", vec![10.0]));
        h.push(Row::new("other", vec![30.0]));
        h.reference("sq");
        assert_eq!(h.ratio_text(&h.rows[1]), "3.00× slower");
    }
}
