//! `datamailer smoke` against a real `datamailer serve` on the SQS backend (moto) and an
//! SES/SNS/CloudFormation setup on moto: the probe round trip goes through the live queue,
//! the worker records it without handling it, and smoke reads it back over HTTP.
//!
//! moto 5.2 has no SES v2 `GetAccount` nor `GetConfigurationSetEventDestinations`, and its
//! identities are never `VerifiedForSendingStatus`: those checks are asserted to FAIL here
//! (showing they run and name the problem); the destination logic is unit-tested in
//! `deploy/src/smoke.rs`.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use datamailer_testkit::TestDb;
use serde_json::json;
use support::*;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `(status, check) -> detail` of smoke's output lines.
fn lines(stdout: &str) -> HashMap<(String, String), String> {
    stdout
        .lines()
        .filter_map(|l| {
            let (status, rest) = l.split_once(": ")?;
            let (check, detail) = rest.split_once(": ")?;
            Some(((status.to_string(), check.to_string()), detail.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn smoke_checks_a_served_stack_on_moto() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let aws = sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let name = unique("dm-smoke");
    let transactional = create_queues(&sqs, &name).await;
    let webhooks = create_queues(&sqs, &format!("{name}-webhooks")).await;
    let webhooks_arn = queue_arn(&sqs, &webhooks.url).await;

    // SES: a domain identity with DKIM, a configuration set; SNS: the events topic, subscribed
    // to the ses-webhooks queue.
    let ses = aws_sdk_sesv2::Client::new(&aws);
    let domain = format!("{name}.example.com");
    // No bring-your-own DKIM key: moto 5 answers that with a key timestamp the SDK cannot
    // parse. The identity stays unverified with DKIM NOT_STARTED, which smoke must report.
    ses.create_email_identity()
        .email_identity(&domain)
        .send()
        .await
        .expect("CreateEmailIdentity");
    ses.create_configuration_set()
        .configuration_set_name(&name)
        .send()
        .await
        .expect("CreateConfigurationSet");
    let sns = aws_sdk_sns::Client::new(&aws);
    let topic = sns
        .create_topic()
        .name(&name)
        .send()
        .await
        .expect("CreateTopic")
        .topic_arn()
        .expect("topic arn")
        .to_string();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&webhooks_arn)
        .send()
        .await
        .expect("Subscribe");

    // The stack whose outputs smoke reads.
    let template = json!({
        "Resources": {"Marker": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": format!("{name}-marker")}}},
        "Outputs": {
            "TransactionalEmailQueueUrl": {"Value": transactional.url},
            "SesIdentity": {"Value": domain},
            "SesConfigurationSetName": {"Value": name},
            "SesEventsTopicArn": {"Value": topic},
            "SesWebhooksQueueArn": {"Value": webhooks_arn},
        }
    });
    let cfn = aws_sdk_cloudformation::Client::new(&aws);
    cfn.create_stack()
        .stack_name(&name)
        .template_body(template.to_string())
        .send()
        .await
        .expect("CreateStack");

    // The product, on the SQS backend.
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("DATAMAILER_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "DATAMAILER_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("DATAMAILER_QUEUE_BACKEND", "sqs")
        .env("SQS_TRANSACTIONAL_EMAIL_QUEUE_URL", &transactional.url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    aws_env(&mut cmd, &endpoint);
    let _serve = Serve(cmd.spawn().expect("serve"));
    let base = format!("http://127.0.0.1:{port}");
    wait_for("serve to be healthy", Duration::from_secs(20), || async {
        reqwest::get(format!("{base}/health/"))
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;

    let mut smoke = Command::new(BIN);
    smoke
        .args(["smoke", "--base-url", &base, "--stack-name", &name])
        .args(["--probe-wait", "30"])
        .env_remove("SQS_TRANSACTIONAL_EMAIL_QUEUE_URL")
        .env("RUST_LOG", "warn");
    aws_env(&mut smoke, &endpoint);
    let out = tokio::task::spawn_blocking(move || smoke.output().expect("smoke"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("datamailer smoke said:\n{stdout}");
    let got = lines(&stdout);
    let has = |status: &str, check: &str| got.contains_key(&(status.into(), check.into()));
    for check in [
        "web health",
        "stack outputs",
        "queue round trip",
        "SNS subscription",
    ] {
        assert!(has("PASS", check), "PASS {check} missing:\n{stdout}");
    }
    // Where moto falls short (see the module doc), smoke says so, naming the API.
    assert!(has("FAIL", "SES account"), "{stdout}");
    assert!(
        got[&("FAIL".into(), "SES account".into())].contains("GetAccount: HTTP 404"),
        "{stdout}"
    );
    assert!(has("FAIL", "SES event destination"), "{stdout}");
    assert!(has("FAIL", "SES identity"), "{stdout}");
    assert!(has("FAIL", "SES DKIM"), "{stdout}");
    assert!(stdout.contains("NOT_STARTED"), "{stdout}");
    for human in [
        "DNS records",
        "SES sandbox exit",
        "alarm routing",
        "restore drill",
        "lambda concurrency quota",
    ] {
        assert!(has("HUMAN", human), "HUMAN {human} missing:\n{stdout}");
    }
    let quota = &got[&("HUMAN".into(), "lambda concurrency quota".into())];
    assert!(
        quota.starts_with("the template reserves ")
            && quota.contains("the account quota must be >= "),
        "{quota}"
    );
    assert_eq!(out.status.code(), Some(1), "a FAIL makes the exit code 1");

    // The worker consumed the probe: recorded, deleted from the queue, nothing emailed or
    // dead-lettered.
    let probe: (String, String) = sqlx::query_as("SELECT probe_id, queue FROM queue_probes")
        .fetch_one(&db.pool)
        .await
        .expect("one probe recorded");
    assert!(probe.0.starts_with("smoke-"), "{probe:?}");
    assert_eq!(probe.1, "transactional-email");
    assert!(got[&("PASS".into(), "queue round trip".into())].contains(&probe.0));
    assert_eq!(queue_depth(&sqs, &transactional.url).await, (0, 0));
    assert_eq!(queue_depth(&sqs, &transactional.dlq_url).await, (0, 0));
    let captured: i64 = sqlx::query_scalar("SELECT count(*) FROM captured_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(captured, 0);
    drop(_serve);
    db.drop_db().await;
}

#[tokio::test]
async fn smoke_fails_when_the_web_is_down_and_skips_what_it_cannot_reach() {
    let out = Command::new(BIN)
        .args([
            "smoke",
            "--base-url",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .env_remove("SQS_TRANSACTIONAL_EMAIL_QUEUE_URL")
        .output()
        .expect("smoke");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .next()
            .unwrap()
            .starts_with("FAIL: web health: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("HUMAN: queue round trip: skipped"),
        "{stdout}"
    );
    assert!(stdout.contains("HUMAN: SES and SNS: skipped"), "{stdout}");
    // The quota check is printed whatever else could run.
    assert!(
        stdout.contains("HUMAN: lambda concurrency quota: the template reserves "),
        "{stdout}"
    );
    assert_eq!(out.status.code(), Some(1));
}
