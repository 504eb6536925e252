//! Benchmark rows, their ratios to a reference row measured in the same run, and the report
//! in Markdown, JSON and one SVG chart. Adding a row is one `Report::add` call.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub section: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// Name of the row (same section) this one is compared with.
    pub reference: Option<String>,
    pub ratio: Option<f64>,
    pub note: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Default, Serialize, Deserialize)]
pub struct Report {
    pub meta: BTreeMap<String, String>,
    pub rows: Vec<Row>,
    pub targets: Vec<Target>,
}

impl Report {
    pub fn add(&mut self, section: &str, name: &str, value: f64, unit: &str, reference: Option<&str>, note: &str) {
        let ratio = reference.and_then(|r| self.get(section, r)).filter(|v| *v != 0.0).map(|r| value / r);
        self.rows.push(Row {
            section: section.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            reference: reference.map(Into::into),
            ratio,
            note: note.into(),
        });
    }

    pub fn get(&self, section: &str, name: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.section == section && r.name == name).map(|r| r.value)
    }

    pub fn target(&mut self, what: &str, goal: &str, measured: String, met: bool) {
        self.targets.push(Target { what: what.into(), goal: goal.into(), measured, met });
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from("# Benchmark report\n\n");
        for (k, v) in &self.meta {
            let _ = writeln!(s, "- {k}: {v}");
        }
        let mut sections: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !sections.contains(&r.section.as_str()) {
                sections.push(&r.section);
            }
        }
        for sec in sections {
            let _ = writeln!(
                s,
                "\n## {sec}\n\n| row | value | unit | ratio to reference | note |\n| --- | ---: | --- | --- | --- |"
            );
            for r in self.rows.iter().filter(|r| r.section == sec) {
                let ratio = match (&r.reference, r.ratio) {
                    (Some(n), Some(x)) => format!("{x:.2}x {n}"),
                    _ => "reference".into(),
                };
                let _ = writeln!(s, "| {} | {} | {} | {} | {} |", r.name, fmt_value(r.value), r.unit, ratio, r.note);
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(s, "\n## Targets\n\n| target | goal | measured | met |\n| --- | --- | --- | --- |");
            for t in &self.targets {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    t.what,
                    t.goal,
                    t.measured,
                    if t.met { "yes" } else { "**no**" }
                );
            }
        }
        s
    }

    /// Grouped bars: each metric of `section`, each datapath normalised to the reference row
    /// of that metric (1.0 = the reference), under `title`.
    pub fn svg(&self, section: &str, title: &str, metrics: &[(&str, &str)], datapaths: &[&str]) -> String {
        let (w, h, left, top, bottom) = (860.0, 380.0, 60.0, 40.0, 70.0);
        let plot_h = h - top - bottom;
        let colors = ["#8c8c8c", "#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
        let mut max: f64 = 1.2;
        let mut bars = Vec::new();
        for (mi, (metric, label)) in metrics.iter().enumerate() {
            for (di, dp) in datapaths.iter().enumerate() {
                let name = format!("{dp}: {metric}");
                let row = self.rows.iter().find(|r| r.section == section && r.name == name);
                let v = row.and_then(|r| r.ratio).or_else(|| row.map(|_| 1.0)).unwrap_or(0.0);
                max = max.max(v);
                bars.push((mi, di, v, *label));
            }
        }
        let group_w = (w - left - 20.0) / metrics.len() as f64;
        let bar_w = group_w * 0.8 / datapaths.len() as f64;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
             <text x=\"{left}\" y=\"22\" font-size=\"15\">{title}</text>"
        );
        for i in 0..=4 {
            let v = max * i as f64 / 4.0;
            let y = top + plot_h - plot_h * v / max;
            let _ = write!(s, "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>", w - 20.0, left - 6.0, y + 4.0);
        }
        for (mi, di, v, label) in &bars {
            let x = left + *mi as f64 * group_w + group_w * 0.1 + *di as f64 * bar_w;
            let bh = plot_h * v / max;
            let _ = write!(s, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{v:.2}</text>",
                top + plot_h - bh, bar_w - 2.0, colors[*di % colors.len()], x + bar_w / 2.0, top + plot_h - bh - 3.0);
            if *di == 0 {
                let _ = write!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
                    left + *mi as f64 * group_w + group_w / 2.0,
                    top + plot_h + 18.0
                );
            }
        }
        for (di, dp) in datapaths.iter().enumerate() {
            let x = left + di as f64 * 170.0;
            let _ = write!(
                s,
                "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{dp}</text>",
                h - 28.0,
                colors[di % colors.len()],
                x + 16.0,
                h - 18.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

pub fn fmt_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
