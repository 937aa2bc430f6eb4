//! A run's results: one [`RunReport`] per scenario variant, written as `report.json` and
//! `report.md` (tables, targets met or missed by how much, the plots beside it).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::sample::Observed;
use datamailer_testkit::fake_ses::Delivery;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut ms: Vec<f64>) -> Option<Self> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        Some(Self {
            count: ms.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: ms[ms.len() - 1],
        })
    }
}

/// Which way a target goes.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    AtLeast(f64),
    Below(f64),
    AtMost(f64),
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub goal: Goal,
    pub unit: String,
    pub measured: f64,
    pub met: bool,
    /// "met" or how far off, e.g. "missed by 412 emails/s (8.2 %)".
    pub verdict: String,
}

impl Target {
    pub fn new(name: &str, goal: Goal, unit: &str, measured: f64) -> Self {
        let (met, limit) = match goal {
            Goal::AtLeast(x) => (measured >= x, x),
            Goal::Below(x) => (measured < x, x),
            Goal::AtMost(x) => (measured <= x, x),
        };
        let verdict = if met {
            "met".to_string()
        } else {
            let gap = (measured - limit).abs();
            let pct = if limit != 0.0 {
                format!(" ({:.1} %)", gap / limit * 100.0)
            } else {
                String::new()
            };
            format!("missed by {} {unit}{pct}", fmt_num(gap))
        };
        Self {
            name: name.to_string(),
            goal,
            unit: unit.to_string(),
            measured,
            met,
            verdict,
        }
    }
}

/// One scenario variant's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub variant: String,
    pub description: String,
    /// The knobs of this run (mailer, latency, sizes, connection cap...).
    pub config: Vec<(String, String)>,
    /// Emails (or events) completed, and the rate over the measured phase.
    pub emails: u64,
    pub emails_per_s: f64,
    pub latency_ms: Option<Percentiles>,
    pub latency_label: String,
    pub peak_pg_connections: u32,
    pub peak_rss_mib: f64,
    pub cpu_ms_per_1000: f64,
    pub delivery: Delivery,
    /// Other named figures (snapshot time, API rate, throttles seen...).
    pub figures: Vec<(String, String)>,
    pub targets: Vec<Target>,
    pub plots: Vec<String>,
    #[serde(skip)]
    pub observed: Observed,
    /// Latency samples kept for the plot.
    #[serde(skip)]
    pub latencies: Vec<f64>,
}

impl RunReport {
    pub fn new(scenario: &str, variant: &str, description: &str) -> Self {
        Self {
            scenario: scenario.to_string(),
            variant: variant.to_string(),
            description: description.to_string(),
            config: vec![],
            emails: 0,
            emails_per_s: 0.0,
            latency_ms: None,
            latency_label: String::new(),
            peak_pg_connections: 0,
            peak_rss_mib: 0.0,
            cpu_ms_per_1000: 0.0,
            delivery: Delivery::default(),
            figures: vec![],
            targets: vec![],
            plots: vec![],
            observed: Observed::default(),
            latencies: vec![],
        }
    }

    pub fn config(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.config.push((key.to_string(), value.to_string()));
        self
    }

    pub fn figure(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.figures.push((key.to_string(), value.to_string()));
        self
    }

    pub fn target(&mut self, target: Target) -> &mut Self {
        self.targets.push(target);
        self
    }

    /// The exactly-once targets: nothing lost, nothing duplicated.
    pub fn delivery_targets(&mut self) -> &mut Self {
        let (lost, duplicated) = (self.delivery.lost as f64, self.delivery.duplicated as f64);
        self.target(Target::new("lost", Goal::AtMost(0.0), "emails", lost));
        self.target(Target::new(
            "duplicated",
            Goal::AtMost(0.0),
            "emails",
            duplicated,
        ))
    }

    /// Takes the sampler's peaks and CPU, per 1,000 of `emails`.
    pub fn observed(&mut self, observed: Observed) -> &mut Self {
        self.peak_pg_connections = observed.peak_connections;
        self.peak_rss_mib = observed.peak_rss_mib;
        let cpu = (observed.cpu_ms_datamailer + observed.cpu_ms_postgres) as f64;
        if self.emails > 0 {
            self.cpu_ms_per_1000 = cpu / self.emails as f64 * 1000.0;
        }
        self.observed = observed;
        self
    }

    pub fn latencies(&mut self, label: &str, ms: Vec<f64>) -> &mut Self {
        self.latency_label = label.to_string();
        self.latency_ms = Percentiles::of(ms.clone());
        self.latencies = ms;
        self
    }

    pub fn slug(&self) -> String {
        format!("{}-{}", self.scenario, self.variant)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub started_at: String,
    pub machine: Vec<(String, String)>,
    pub binary: String,
    pub runs: Vec<RunReport>,
}

impl Report {
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# datamailer load test, {}\n", self.started_at);
        let _ = writeln!(md, "Binary: `{}`\n", self.binary);
        for (k, v) in &self.machine {
            let _ = writeln!(md, "- {k}: {v}");
        }
        let _ = writeln!(md, "\n## Summary\n");
        let _ = writeln!(
            md,
            "| Scenario | emails/s | latency p50 / p95 / p99 (ms) | peak pg conns | peak RSS (MiB) | CPU ms / 1,000 | lost | dup |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for r in &self.runs {
            let lat = r
                .latency_ms
                .map(|p| format!("{:.1} / {:.1} / {:.1}", p.p50, p.p95, p.p99))
                .unwrap_or_else(|| "–".into());
            let (lost, dup) = if r.delivery.expected == 0 {
                ("–".to_string(), "–".to_string())
            } else {
                (
                    r.delivery.lost.to_string(),
                    r.delivery.duplicated.to_string(),
                )
            };
            let _ = writeln!(
                md,
                "| {} {} | {} | {} | {} | {:.1} | {:.0} | {} | {} |",
                r.scenario,
                r.variant,
                fmt_num(r.emails_per_s),
                lat,
                r.peak_pg_connections,
                r.peak_rss_mib,
                r.cpu_ms_per_1000,
                lost,
                dup
            );
        }
        let _ = writeln!(md, "\n## Targets\n");
        let _ = writeln!(md, "| Scenario | Target | Goal | Measured | Verdict |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for r in &self.runs {
            for t in &r.targets {
                let goal = match t.goal {
                    Goal::AtLeast(x) => format!("≥ {} {}", fmt_num(x), t.unit),
                    Goal::Below(x) => format!("< {} {}", fmt_num(x), t.unit),
                    Goal::AtMost(x) => format!("≤ {} {}", fmt_num(x), t.unit),
                };
                let mark = if t.met { "✅ met" } else { "❌" };
                let verdict = if t.met {
                    mark.to_string()
                } else {
                    format!("{mark} {}", t.verdict)
                };
                let _ = writeln!(
                    md,
                    "| {} {} | {} | {} | {} {} | {} |",
                    r.scenario,
                    r.variant,
                    t.name,
                    goal,
                    fmt_num(t.measured),
                    t.unit,
                    verdict
                );
            }
        }
        for r in &self.runs {
            let _ = writeln!(
                md,
                "\n## {} {}\n\n{}\n",
                r.scenario, r.variant, r.description
            );
            let cfg: Vec<String> = r.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(md, "Config: `{}`\n", cfg.join(" "));
            let _ = writeln!(md, "| Figure | Value |\n|---|---|");
            let _ = writeln!(md, "| emails (or events) | {} |", r.emails);
            let _ = writeln!(md, "| rate | {}/s |", fmt_num(r.emails_per_s));
            if let Some(p) = r.latency_ms {
                let _ = writeln!(
                    md,
                    "| {} p50 / p95 / p99 / max (ms), n={} | {:.1} / {:.1} / {:.1} / {:.1} |",
                    r.latency_label, p.count, p.p50, p.p95, p.p99, p.max
                );
            }
            let d = &r.delivery;
            if d.expected > 0 {
                let _ = writeln!(
                    md,
                    "| expected / delivered / lost / duplicated | {} / {} / {} / {} |",
                    d.expected, d.delivered, d.lost, d.duplicated
                );
            }
            let _ = writeln!(
                md,
                "| peak Postgres connections | {} |",
                r.peak_pg_connections
            );
            let _ = writeln!(md, "| peak RSS (MiB) | {:.1} |", r.peak_rss_mib);
            let _ = writeln!(
                md,
                "| CPU datamailer / its Postgres backends (ms) | {} / {} |",
                r.observed.cpu_ms_datamailer, r.observed.cpu_ms_postgres
            );
            for (k, v) in &r.figures {
                let _ = writeln!(md, "| {k} | {v} |");
            }
            for p in &r.plots {
                let _ = writeln!(md, "\n![{p}]({p})");
            }
        }
        md
    }
}

/// 1234.5 -> "1,234.5"; large numbers without decimals.
pub fn fmt_num(x: f64) -> String {
    let (whole, frac) = if x.abs() >= 100.0 {
        (format!("{:.0}", x), String::new())
    } else {
        let s = format!("{:.2}", x);
        let (w, f) = s.split_once('.').unwrap_or((&s, ""));
        (w.to_string(), format!(".{f}"))
    };
    let neg = whole.starts_with('-');
    let digits: Vec<char> = whole.trim_start_matches('-').chars().collect();
    let mut out = String::new();
    for (i, c) in digits.iter().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(*c);
    }
    format!("{}{out}{frac}", if neg { "-" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let p = Percentiles::of((1..=100).map(|x| x as f64).collect()).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert!(Percentiles::of(vec![]).is_none());
    }

    #[test]
    fn a_missed_target_says_by_how_much() {
        let t = Target::new("fan-out", Goal::AtLeast(5000.0), "emails/s", 4500.0);
        assert!(!t.met);
        assert_eq!(t.verdict, "missed by 500 emails/s (10.0 %)");
        assert!(Target::new("p99", Goal::Below(250.0), "ms", 120.0).met);
        assert!(!Target::new("p99", Goal::Below(250.0), "ms", 250.0).met);
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(fmt_num(1234567.0), "1,234,567");
        assert_eq!(fmt_num(12.345), "12.35");
        assert_eq!(fmt_num(-4500.0), "-4,500");
    }
}
