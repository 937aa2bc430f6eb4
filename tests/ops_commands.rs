//! Operator commands through the binary: database credentials from Secrets Manager (moto),
//! and pausing/resuming a queue for a rollback.

mod support;

use std::process::{Command, Output};

use datamailer_testkit::TestDb;
use serde_json::json;
use support::*;

/// Runs the binary with DATABASE_URL unset: the database comes from the secret.
fn run(args: &[&str], endpoint: &str, secret_arn: &str) -> Output {
    run_with(args, endpoint, secret_arn, &[])
}

fn run_with(args: &[&str], endpoint: &str, secret_arn: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.envs(env.iter().copied())
        .args(args)
        .env_remove("DATABASE_URL")
        .env("DATAMAILER_DATABASE_SECRET_ARN", secret_arn)
        .env("RUST_LOG", "warn");
    aws_env(&mut cmd, endpoint);
    cmd.output().expect("run datamailer")
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
    // The password needs percent-encoding in a URL.
    let arn = database_secret(&aws, "127.0.0.1", &db.name, "p@ss:w/rd%?#").await;

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

/// Creates a Lambda function on moto and an SQS event source mapping to it; returns its UUID.
async fn mapping(aws: &aws_config::SdkConfig, role_arn: &str, enabled: bool) -> String {
    let lambda = aws_sdk_lambda::Client::new(aws);
    let sqs = aws_sdk_sqs::Client::new(aws);
    let name = unique("dm-worker");
    // An empty zip archive: moto stores the code, it never runs it here.
    let empty_zip = [&b"PK\x05\x06"[..], &[0u8; 18]].concat();
    lambda
        .create_function()
        .function_name(&name)
        .runtime(aws_sdk_lambda::types::Runtime::Providedal2023)
        .handler("bootstrap")
        .role(role_arn)
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(empty_zip.into())
                .build(),
        )
        .send()
        .await
        .expect("CreateFunction");
    let queue_arn = queue_arn(&sqs, &create_queues(&sqs, &name).await.url).await;
    lambda
        .create_event_source_mapping()
        .function_name(&name)
        .event_source_arn(queue_arn)
        .enabled(enabled)
        .send()
        .await
        .expect("CreateEventSourceMapping")
        .uuid()
        .expect("mapping uuid")
        .to_string()
}

async fn mapping_state(aws: &aws_config::SdkConfig, uuid: &str) -> String {
    aws_sdk_lambda::Client::new(aws)
        .get_event_source_mapping()
        .uuid(uuid)
        .send()
        .await
        .expect("GetEventSourceMapping")
        .state()
        .unwrap_or_default()
        .to_string()
}

/// On AWS, pause also disables the queue's Lambda event source mapping (so records are not
/// handed back until they dead-letter) and resume enables it again, but only the mapping the
/// pause disabled: one that was disabled before (email-events at launch) stays disabled.
#[tokio::test]
async fn pause_and_resume_switch_the_lambda_event_source_mapping() {
    // Its own moto: Lambda functions would break the shared server's data.json (see PrivateMoto).
    let Some(moto) = PrivateMoto::start().await else {
        return;
    };
    let endpoint = moto.endpoint.clone();
    let Some(db) = TestDb::create().await else {
        return;
    };
    let aws = sdk_config(&endpoint).await;
    let role_arn = aws_sdk_iam::Client::new(&aws)
        .create_role()
        .role_name(unique("dm-worker-role"))
        .assume_role_policy_document(
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
            .to_string(),
        )
        .send()
        .await
        .expect("CreateRole")
        .role()
        .expect("role")
        .arn()
        .to_string();
    let campaign = mapping(&aws, &role_arn, true).await;
    let events = mapping(&aws, &role_arn, false).await;
    assert_eq!(mapping_state(&aws, &campaign).await, "Enabled");

    let cli = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("DATABASE_URL", &db.url)
            .env("DATAMAILER_CAMPAIGN_EMAIL_EVENT_SOURCE_MAPPING", &campaign)
            .env("DATAMAILER_EMAIL_EVENTS_EVENT_SOURCE_MAPPING", &events)
            .env(
                "DATAMAILER_TRANSACTIONAL_EMAIL_EVENT_SOURCE_MAPPING",
                "00000000-0000-0000-0000-000000000000",
            )
            .env("RUST_LOG", "warn");
        aws_env(&mut cmd, &endpoint);
        cmd.output().expect("run datamailer")
    };

    let out = ok(&cli(&["pause", "--queue", "campaign-email"]));
    assert!(
        out.contains(&format!(
            "disabled the Lambda event source mapping {campaign}"
        )),
        "{out}"
    );
    assert_eq!(mapping_state(&aws, &campaign).await, "Disabled");
    // Pausing again changes nothing, and resume still knows the pause disabled it.
    let out = ok(&cli(&["pause", "--queue", "campaign-email"]));
    assert!(out.contains("already disabled"), "{out}");
    let out = ok(&cli(&["resume", "--queue", "campaign-email"]));
    assert!(
        out.contains(&format!(
            "enabled the Lambda event source mapping {campaign}"
        )),
        "{out}"
    );
    assert_eq!(mapping_state(&aws, &campaign).await, "Enabled");

    let out = ok(&cli(&["pause", "--queue", "email-events"]));
    assert!(out.contains("already disabled"), "{out}");
    let out = ok(&cli(&["resume", "--queue", "email-events"]));
    assert!(!out.contains("enabled the Lambda"), "{out}");
    assert_eq!(mapping_state(&aws, &events).await, "Disabled");

    // A mapping that cannot be switched fails the command with the manual step, while the
    // pause itself holds.
    let failed = cli(&["pause", "--queue", "transactional-email"]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(
        stderr.contains("still enabled") && stderr.contains("update-event-source-mapping"),
        "{stderr}"
    );
    let paused: Vec<String> = sqlx::query_scalar("SELECT queue FROM queue_pauses")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(paused, ["transactional-email"]);
    db.drop_db().await;
}
