//! Operator commands through the binary: database credentials from Secrets Manager (moto),
//! and pausing/resuming a queue for a rollback.

mod support;

use std::process::{Command, Output};

use datamailer_testkit::TestDb;
use serde_json::json;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_datamailer");

/// Runs the binary with DATABASE_URL unset: the database comes from the secret.
fn run(args: &[&str], endpoint: &str, secret_arn: &str) -> Output {
    run_with(args, endpoint, secret_arn, &[])
}

fn run_with(args: &[&str], endpoint: &str, secret_arn: &str, env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .envs(env.iter().copied())
        .args(args)
        .env_remove("DATABASE_URL")
        .env("DATAMAILER_DATABASE_SECRET_ARN", secret_arn)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run datamailer")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_database_secret_drives_pause_and_resume() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let aws = sdk_config(&endpoint).await;
    let secrets = aws_sdk_secretsmanager::Client::new(&aws);
    // An RDS-style secret; the local server trusts 127.0.0.1, so the password (which needs
    // percent-encoding in a URL) only has to survive the URL round trip.
    let secret = json!({
        "username": "postgres",
        "password": "p@ss:w/rd%?#",
        "host": "127.0.0.1",
        "port": 5432,
        "dbname": db.name,
        "engine": "postgres",
    });
    let arn = secrets
        .create_secret()
        .name(unique("dm-db-secret"))
        .secret_string(secret.to_string())
        .send()
        .await
        .expect("CreateSecret")
        .arn()
        .expect("secret arn")
        .to_string();

    let out = ok(&run(&["migrate"], &endpoint, &arn));
    assert!(out.contains("migrations applied"), "{out}");

    let out = ok(&run(
        &[
            "pause",
            "--queue",
            "campaign-email",
            "--reason",
            "rollback to v1",
        ],
        &endpoint,
        &arn,
    ));
    assert!(out.contains("paused campaign-email"), "{out}");
    let (queue, reason): (String, String) =
        sqlx::query_as("SELECT queue, reason FROM queue_pauses")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (queue.as_str(), reason.as_str()),
        ("campaign-email", "rollback to v1")
    );
    let out = ok(&run(&["pause", "--list"], &endpoint, &arn));
    assert!(
        out.contains("campaign-email") && out.contains("rollback to v1"),
        "{out}"
    );

    let out = ok(&run(
        &["resume", "--queue", "campaign-email"],
        &endpoint,
        &arn,
    ));
    assert!(out.contains("resumed campaign-email"), "{out}");
    let paused: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_pauses")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(paused, 0);

    // A queue name that does not exist is refused; a missing secret is a clear error.
    let bad = run(&["pause", "--queue", "campaigns"], &endpoint, &arn);
    assert!(!bad.status.success());
    let missing = run(
        &["migrate"],
        &endpoint,
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope",
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("DATAMAILER_DATABASE_SECRET_ARN"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // URLs from the secret use TLS (`require` above, against the local server's self-signed
    // certificate); verify-full without the CA that signed it is refused, by both pools.
    for args in [&["migrate"][..], &["pause", "--list"][..]] {
        let unverified = run_with(
            args,
            &endpoint,
            &arn,
            &[("DATAMAILER_DATABASE_SSLMODE", "verify-full")],
        );
        let stderr = String::from_utf8_lossy(&unverified.stderr);
        assert!(!unverified.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.to_lowercase().contains("certificate"),
            "{args:?}: {stderr}"
        );
    }
    db.drop_db().await;
}
