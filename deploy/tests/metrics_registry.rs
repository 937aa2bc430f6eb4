//! The metric registry cannot lie: `datamailer_runtime::telemetry::EMITTED_METRICS` (what
//! validate-infra lets alarms use) equals the set of `datamailer_*` names the workspace's Rust
//! sources pass to `metrics::counter!` / `gauge!` / `histogram!`, either as a literal or as a
//! `const NAME: &str = "datamailer_..."`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            // Build output, the Python venv, test suites and this crate (whose sources mention
            // the macros in text) are not emitters.
            if !matches!(
                name.as_str(),
                "target" | ".venv" | ".git" | "tests" | "deploy" | "load-tests" | "benches"
            ) && !name.starts_with('.')
            {
                rust_sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn emitted_metrics_equals_the_names_the_code_emits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = vec![];
    rust_sources(root, &mut files);
    assert!(files.len() > 20, "found only {} Rust files", files.len());

    let konst = Regex::new(
        r#"const\s+([A-Z][A-Z0-9_]*)\s*:\s*&(?:'static\s+)?str\s*=\s*"(datamailer_[a-z0-9_]+)""#,
    )
    .unwrap();
    let call = Regex::new(
        r#"\b(?:counter|gauge|histogram)!\(\s*(?:"(datamailer_[a-z0-9_]+)"|([A-Za-z_][A-Za-z0-9_:]*))"#,
    )
    .unwrap();

    let sources: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    let mut consts = BTreeMap::new();
    for (_, text) in &sources {
        for c in konst.captures_iter(text) {
            consts.insert(c[1].to_string(), c[2].to_string());
        }
    }
    let mut emitted = BTreeSet::new();
    let mut unresolved = vec![];
    for (path, text) in &sources {
        for c in call.captures_iter(text) {
            if let Some(lit) = c.get(1) {
                emitted.insert(lit.as_str().to_string());
            } else {
                let ident = c[2].rsplit("::").next().unwrap().to_string();
                match consts.get(&ident) {
                    Some(name) => {
                        emitted.insert(name.clone());
                    }
                    None => unresolved.push(format!("{}: {}", path.display(), &c[0])),
                }
            }
        }
    }
    assert!(
        unresolved.is_empty(),
        "metric names the test cannot resolve (use a literal or a `const NAME: &str = \"datamailer_...\"`):\n{}",
        unresolved.join("\n")
    );

    let registry: Vec<&str> = datamailer_runtime::telemetry::EMITTED_METRICS.to_vec();
    let registered: BTreeSet<String> = registry.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        registered.len(),
        registry.len(),
        "EMITTED_METRICS lists a name twice"
    );
    let missing: Vec<_> = emitted.difference(&registered).collect();
    let stale: Vec<_> = registered.difference(&emitted).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "runtime/src/telemetry.rs EMITTED_METRICS is out of date.\n  emitted by the code but not listed: {missing:?}\n  listed but emitted nowhere: {stale:?}"
    );
}
