//! The template corpus (tests/fixtures/django_corpus.json: templates × contexts covering the
//! builtin tags and filters, Python value printing, missing variables, errors and the
//! opt-in autoescape) rendered by Django itself (the original's version, through
//! scripts/django-render.py as the original renders) and by our engine, compared byte for
//! byte; a case Django refuses must be refused too.
//!
//! Django comes from `scripts/django-env.sh` (a Python 3.12 venv); `scripts/test.sh` sets
//! `DATAMAILER_TEST_DJANGO_PYTHON`. Without it the test is skipped, except under CI=true, where
//! it fails.

use std::path::PathBuf;
use std::process::Command;

use datamailer_core::render::render_str;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_corpus_renders_byte_for_byte_as_django_renders_it() {
    let corpus_path = repo().join("core/tests/fixtures/django_corpus.json");
    let Some(python) = std::env::var_os("DATAMAILER_TEST_DJANGO_PYTHON") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "DATAMAILER_TEST_DJANGO_PYTHON is required under CI=true (scripts/django-env.sh)"
        );
        eprintln!("skipped: DATAMAILER_TEST_DJANGO_PYTHON not set (scripts/django-env.sh)");
        return;
    };
    let out = Command::new(python)
        .arg(repo().join("scripts/django-render.py"))
        .arg(&corpus_path)
        .output()
        .expect("run Django");
    assert!(
        out.status.success(),
        "django-render.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let django: Value = serde_json::from_slice(&out.stdout).unwrap();
    let corpus: Value =
        serde_json::from_str(&std::fs::read_to_string(&corpus_path).unwrap()).unwrap();
    let cases = corpus["cases"].as_array().unwrap();
    assert!(cases.len() >= 150, "the corpus shrank: {}", cases.len());

    let mut mismatches = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let template = case["template"].as_str().unwrap();
        let autoescape = case["autoescape"].as_bool().unwrap_or(false);
        let context = case.get("context").unwrap_or(&corpus["context"]);
        let ours = render_str(template, context, autoescape);
        let theirs = &django[name];
        // A difference we keep on purpose (docs/api.md): Django renders it, we refuse it.
        if let Some(reason) = case["known_difference"].as_str() {
            assert!(
                theirs.get("output").is_some(),
                "{name}: Django refuses it now"
            );
            assert!(
                ours.is_err(),
                "{name} renders now ({reason}): compare it again"
            );
            continue;
        }
        match (theirs.get("output").and_then(Value::as_str), ours) {
            (Some(expected), Ok(got)) if expected == got => {}
            (None, Err(_)) => {}
            (expected, got) => mismatches.push(format!(
                "{name}: {template:?}\n  django: {}\n  ours:   {}",
                expected.map_or_else(
                    || format!("error {}", theirs["error"]),
                    |e| format!("{e:?}")
                ),
                match got {
                    Ok(g) => format!("{g:?}"),
                    Err(e) => format!("error {e}"),
                }
            )),
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ from Django:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}
