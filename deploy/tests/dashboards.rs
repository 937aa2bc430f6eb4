//! The dashboards cannot drift from their source (`datamailer_deploy::dashboards`) nor from the
//! code:
//!
//! * the committed Grafana dashboard, CloudWatch body and the template's `DashboardBody` are
//!   what the source generates (`DATAMAILER_BLESS_DASHBOARDS=1` rewrites them; the template
//!   only where its old body string stood);
//! * every view is in both dashboards or says why not; the grids do not overlap and stay within
//!   CloudWatch's limits;
//! * every metric named by the Grafana dashboard, the CloudWatch body, the template's alarms and
//!   the Prometheus rules is emitted by the code (`EMITTED_METRICS`);
//! * a CloudWatch custom metric is named with exactly the dimensions it is published with (its
//!   labels in Lambda's EMF, the agent's dimension sets on the web host), and the labels the
//!   source assumes are those the code's emit sites write;
//! * `promtool check rules` / `check config` accept dashboards/prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use datamailer_deploy::dashboards::{self, Only};
use datamailer_deploy::validate::{MetricSource, INFRA_METRICS};
use datamailer_runtime::telemetry::EMITTED_METRICS;
use regex::Regex;
use serde_json::Value;

const BLESS: &str = "DATAMAILER_BLESS_DASHBOARDS";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const GRAFANA: &str = "dashboards/grafana/datamailer.json";
const CLOUDWATCH: &str = "dashboards/cloudwatch/dashboard-body.json";
const TEMPLATE: &str = "infra/cloudformation/datamailer-mvp.json";
const ALERTS: &str = "dashboards/prometheus/alerts.yml";
const PROMETHEUS: &str = "dashboards/prometheus/prometheus.yml";

fn blessing() -> bool {
    std::env::var(BLESS).is_ok_and(|v| v == "1" || v == "true")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn template_text() -> String {
    std::fs::read_to_string(repo().join(TEMPLATE)).unwrap()
}

/// The template's `Dashboard` `DashboardBody` `Fn::Sub` string.
fn template_body(text: &str) -> String {
    let t: Value = serde_json::from_str(text).unwrap();
    t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        .as_str()
        .expect("Resources.Dashboard.Properties.DashboardBody is {\"Fn::Sub\": \"...\"}")
        .to_string()
}

#[test]
fn committed_dashboards_are_what_the_source_generates() {
    let bless = blessing();
    let mut stale = vec![];
    for (path, want) in [
        (GRAFANA, dashboards::grafana_json()),
        (CLOUDWATCH, dashboards::cloudwatch_body_pretty()),
    ] {
        let file = repo().join(path);
        let have = std::fs::read_to_string(&file).unwrap_or_default();
        if have != want {
            if bless {
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, &want).unwrap();
                eprintln!("rewrote {path}");
            } else {
                stale.push(path);
            }
        }
    }

    let text = template_text();
    let old = template_body(&text);
    let new = dashboards::cloudwatch_body_json();
    if old != new {
        if bless {
            // Only the body string changes: the rest of the template keeps its formatting.
            let old_escaped = serde_json::to_string(&old).unwrap();
            assert_eq!(
                text.matches(&old_escaped).count(),
                1,
                "{TEMPLATE}: the DashboardBody string is not found exactly once as serde_json escapes it; replace it by hand once"
            );
            let rewritten = text.replacen(&old_escaped, &serde_json::to_string(&new).unwrap(), 1);
            assert_eq!(template_body(&rewritten), new);
            std::fs::write(repo().join(TEMPLATE), rewritten).unwrap();
            eprintln!("rewrote {TEMPLATE} (DashboardBody)");
        } else {
            stale.push(TEMPLATE);
        }
    }
    assert!(
        stale.is_empty(),
        "not what deploy/src/dashboards.rs generates: {stale:?}. Change the source, not the files, then regenerate: {BLESS}=1 cargo test -p datamailer-deploy --test dashboards"
    );
}

#[test]
fn every_view_is_in_both_dashboards_or_says_why_not() {
    let mut titles = BTreeSet::new();
    for row in dashboards::rows() {
        assert!(!row.views.is_empty(), "row {} has no views", row.title);
        for v in &row.views {
            assert!(
                titles.insert(v.title.clone()),
                "two views are titled {}",
                v.title
            );
            let (prom, cw) = (!v.prometheus.is_empty(), !v.cloudwatch.is_empty());
            match v.only {
                Only::Both => assert!(
                    prom && cw,
                    "{}: Only::Both needs PromQL and CloudWatch metrics",
                    v.title
                ),
                Only::Prometheus(why) => assert!(
                    prom && !cw && !why.is_empty(),
                    "{}: a Prometheus-only view has PromQL, no CloudWatch metrics and a reason",
                    v.title
                ),
                Only::CloudWatch(why) => assert!(
                    cw && !prom && !why.is_empty(),
                    "{}: a CloudWatch-only view has CloudWatch metrics, no PromQL and a reason",
                    v.title
                ),
            }
        }
    }
}

/// (x, y, w, h) of each item; they must not overlap and must fit 24 columns.
fn check_grid(what: &str, items: &[(i64, i64, i64, i64, String)]) {
    for (i, a) in items.iter().enumerate() {
        assert!(
            a.0 >= 0 && a.0 + a.2 <= 24,
            "{what}: {} is off the grid",
            a.4
        );
        for b in &items[i + 1..] {
            let apart =
                a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
            assert!(apart, "{what}: {} overlaps {}", a.4, b.4);
        }
    }
}

#[test]
fn the_grids_do_not_overlap_and_cloudwatch_limits_hold() {
    let g = dashboards::grafana();
    let panels: Vec<_> = g["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let gp = &p["gridPos"];
            (
                gp["x"].as_i64().unwrap(),
                gp["y"].as_i64().unwrap(),
                gp["w"].as_i64().unwrap(),
                gp["h"].as_i64().unwrap(),
                p["title"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    check_grid("Grafana", &panels);
    let ids: BTreeSet<_> = g["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), panels.len(), "Grafana panel ids are unique");

    let body = dashboards::cloudwatch_body();
    let widgets = body["widgets"].as_array().unwrap();
    let items: Vec<_> = widgets
        .iter()
        .map(|w| {
            (
                w["x"].as_i64().unwrap(),
                w["y"].as_i64().unwrap(),
                w["width"].as_i64().unwrap(),
                w["height"].as_i64().unwrap(),
                w["properties"]["title"]
                    .as_str()
                    .or(w["properties"]["markdown"].as_str())
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    check_grid("CloudWatch", &items);
    // CloudWatch: at most 500 metrics per widget (100 in a graph is already hard to read) and a
    // body of at most 1 MB (placeholders grow a little when substituted).
    for w in widgets {
        let n = w["properties"]["metrics"]
            .as_array()
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(n <= 100, "{}: {n} metrics", w["properties"]["title"]);
    }
    let size = dashboards::cloudwatch_body_json().len();
    assert!(size < 500_000, "the CloudWatch body is {size} bytes");
}

/// `datamailer_*` names in `text`, with a histogram's `_bucket`/`_sum`/`_count` series named by
/// the histogram.
fn metric_names(text: &str) -> BTreeSet<String> {
    let emitted: BTreeSet<&str> = EMITTED_METRICS.iter().copied().collect();
    let re = Regex::new(r"datamailer_[a-z0-9_]*[a-z0-9]").unwrap();
    re.find_iter(text)
        .map(|m| {
            let name = m.as_str();
            if emitted.contains(name) {
                return name.to_string();
            }
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    if emitted.contains(base) {
                        return base.to_string();
                    }
                }
            }
            name.to_string()
        })
        .collect()
}

#[test]
fn every_metric_named_by_a_dashboard_alarm_or_rule_is_emitted() {
    let emitted: BTreeSet<String> = EMITTED_METRICS.iter().map(|s| s.to_string()).collect();
    let mut used: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut note = |names: BTreeSet<String>, from: &'static str| {
        for n in names {
            used.entry(n).or_default().insert(from);
        }
    };

    // Grafana: the PromQL of every panel and variable.
    let g = dashboards::grafana();
    let mut promql = String::new();
    for p in g["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            promql.push_str(t["expr"].as_str().unwrap());
            promql.push('\n');
        }
    }
    for v in g["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            promql.push_str(q);
        }
    }
    let grafana_names = metric_names(&promql);
    assert!(grafana_names.len() > 20, "{grafana_names:?}");
    note(grafana_names, "Grafana");

    // CloudWatch: the committed body's metric rows, and the template's alarms.
    let body: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join(CLOUDWATCH)).unwrap()).unwrap();
    let mut cw = BTreeSet::new();
    for w in body["widgets"].as_array().unwrap() {
        for row in w["properties"]["metrics"].as_array().into_iter().flatten() {
            let items = row.as_array().unwrap();
            if let (Some("Datamailer"), Some(name)) = (
                items.first().and_then(Value::as_str),
                items.get(1).and_then(Value::as_str),
            ) {
                cw.insert(name.to_string());
            }
        }
    }
    assert!(cw.len() > 20, "{cw:?}");
    note(cw, "CloudWatch body");
    let t: Value = serde_json::from_str(&template_text()).unwrap();
    let mut alarms = BTreeSet::new();
    for (_, r) in t["Resources"].as_object().unwrap() {
        if r["Type"] == "AWS::CloudWatch::Alarm" && r["Properties"]["Namespace"] == "Datamailer" {
            alarms.insert(r["Properties"]["MetricName"].as_str().unwrap().to_string());
        }
    }
    assert!(!alarms.is_empty());
    note(alarms, "alarms");

    // The Prometheus rules (and scrape config).
    for path in [ALERTS, PROMETHEUS] {
        let text = std::fs::read_to_string(repo().join(path)).unwrap();
        note(metric_names(&text), "Prometheus rules");
    }

    let unknown: Vec<String> = used
        .iter()
        .filter(|(n, _)| !emitted.contains(*n))
        .map(|(n, from)| format!("{n} (in {from:?})"))
        .collect();
    assert!(
        unknown.is_empty(),
        "named but not emitted by the code (runtime/src/telemetry.rs EMITTED_METRICS): {unknown:?}"
    );
    let uncatalogued: Vec<&String> = used
        .keys()
        .filter(|n| dashboards::labels(n).is_none())
        .collect();
    assert!(
        uncatalogued.is_empty(),
        "used by a dashboard or rule but not in dashboards::METRIC_LABELS: {uncatalogued:?}"
    );
}

/// The CloudWatch agent's dimension sets for a web-host metric.
fn agent_dimensions(metric: &str) -> Vec<BTreeSet<String>> {
    let agent: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("infra/host/amazon-cloudwatch-agent.json")).unwrap(),
    )
    .unwrap();
    let decls = agent["logs"]["metrics_collected"]["prometheus"]["emf_processor"]
        ["metric_declaration"]
        .as_array()
        .unwrap();
    let mut out = vec![];
    for d in decls {
        let selected = d["metric_selectors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| Regex::new(s.as_str().unwrap()).unwrap().is_match(metric));
        if selected {
            for set in d["dimensions"].as_array().unwrap() {
                out.push(
                    set.as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect(),
                );
            }
        }
    }
    out
}

#[test]
fn cloudwatch_metrics_are_named_with_exactly_their_dimensions() {
    let percentile = Regex::new(r"^p\d{1,2}(\.\d+)?$").unwrap();
    for m in dashboards::cloudwatch_metrics() {
        if m.namespace != dashboards::NAMESPACE {
            assert!(m.namespace.starts_with("AWS/"), "{m:?}");
            continue;
        }
        let dims: BTreeSet<String> = m.dimensions.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            dims.len(),
            m.dimensions.len(),
            "{}: a dimension twice",
            m.name
        );
        let source = INFRA_METRICS
            .iter()
            .find(|(n, _)| *n == m.name)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("{} is not in INFRA_METRICS", m.name));
        match source {
            MetricSource::LambdaEmf => {
                let labels: BTreeSet<String> = dashboards::labels(&m.name)
                    .unwrap_or_else(|| panic!("{} is not in METRIC_LABELS", m.name))
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                assert_eq!(
                    dims, labels,
                    "{}: EMF publishes it with its labels as dimensions",
                    m.name
                );
            }
            MetricSource::WebHostScrape => {
                let sets = agent_dimensions(&m.name);
                assert!(
                    sets.contains(&dims),
                    "{}: the CloudWatch agent publishes it with dimensions {sets:?}, not {dims:?}",
                    m.name
                );
            }
        }
        assert!(
            ["Sum", "Average", "Minimum", "Maximum", "SampleCount"].contains(&m.stat.as_str())
                || percentile.is_match(&m.stat),
            "{}: stat {}",
            m.name,
            m.stat
        );
        if m.name.ends_with("_total") {
            assert_eq!(m.stat, "Sum", "{}: a counter arrives as increments", m.name);
        }
    }
}

// ---------------------------------------------------------------- labels at the emit sites

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(
                name.as_str(),
                "target" | "tests" | "deploy" | "load-tests" | "benches"
            ) && !name.starts_with('.')
            {
                rust_sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The text of the macro call whose `(` is at `open`, up to its matching `)`.
fn call_text(text: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    &text[open..]
}

#[test]
fn metric_labels_are_the_labels_the_code_emits() {
    let mut files = vec![];
    rust_sources(&repo(), &mut files);
    let sources: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            (p, t)
        })
        .collect();
    let konst = Regex::new(
        r#"const\s+([A-Z][A-Z0-9_]*)\s*:\s*&(?:'static\s+)?str\s*=\s*"(datamailer_[a-z0-9_]+)""#,
    )
    .unwrap();
    let mut consts = BTreeMap::new();
    for (_, text) in &sources {
        for c in konst.captures_iter(text) {
            consts.insert(c[1].to_string(), c[2].to_string());
        }
    }
    let call = Regex::new(r"\b(?:counter|gauge|histogram)!\(").unwrap();
    let first =
        Regex::new(r#"^\s*(?:"(datamailer_[a-z0-9_]+)"|([A-Za-z_][A-Za-z0-9_:]*))"#).unwrap();
    let label = Regex::new(r#""([a-z_]+)"\s*=>"#).unwrap();
    // metric → label sets seen at its emit sites (with where).
    let mut seen: BTreeMap<String, Vec<(BTreeSet<String>, String)>> = BTreeMap::new();
    for (path, text) in &sources {
        for m in call.find_iter(text) {
            let args = call_text(text, m.end() - 1);
            let Some(c) = first.captures(args) else {
                continue;
            };
            let name = match (c.get(1), c.get(2)) {
                (Some(lit), _) => lit.as_str().to_string(),
                (None, Some(ident)) => {
                    let ident = ident.as_str().rsplit("::").next().unwrap();
                    match consts.get(ident) {
                        Some(n) => n.clone(),
                        None => continue,
                    }
                }
                _ => continue,
            };
            let labels: BTreeSet<String> = label
                .captures_iter(args)
                .map(|c| c[1].to_string())
                .collect();
            let line = text[..m.start()].lines().count();
            seen.entry(name)
                .or_default()
                .push((labels, format!("{}:{line}", path.display())));
        }
    }
    let mut wrong = vec![];
    for (metric, want) in dashboards::METRIC_LABELS {
        assert!(
            EMITTED_METRICS.contains(metric),
            "METRIC_LABELS: {metric} is not emitted"
        );
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let sites = seen
            .get(*metric)
            .unwrap_or_else(|| panic!("no emit site found for {metric}"));
        for (labels, at) in sites {
            if *labels != want {
                wrong.push(format!(
                    "{metric} at {at}: labels {labels:?}, METRIC_LABELS says {want:?}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the dashboards assume other labels than the code writes (a CloudWatch EMF metric is named by all its labels):\n{}",
        wrong.join("\n")
    );
}

// --------------------------------------------------------------------------------- promtool

fn promtool() -> Option<PathBuf> {
    let found = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        let why = "promtool not found (apt-get install -y prometheus; scripts/test-env.sh does it)";
        assert!(!in_ci(), "{why}; required under CI=true");
        eprintln!("SKIPPED: {why}");
    }
    found
}

#[test]
fn promtool_accepts_the_rules_and_the_scrape_config() {
    let Some(promtool) = promtool() else {
        return;
    };
    for args in [
        vec!["check", "rules", ALERTS],
        vec!["check", "config", PROMETHEUS],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
