//! The transactional path on the AWS parts: the web API enqueues on SQS, a supervised queue
//! tree reads SQS and sends through SES v2, and the results land in Postgres. SQS and SES are
//! moto's (`DATAMAILER_TEST_AWS_ENDPOINT`), reached through the real SDK clients.
//!
//! Each test makes its own queues, identities and database, so they run in parallel.

mod support;

use std::sync::Arc;
use std::time::Duration;

use datamailer_actors::{TransactionalHandler, TransactionalSettings};
use datamailer_runtime::db::{Db, PoolSettings};
use datamailer_runtime::mailer::ses::{self, SesMailer};
use datamailer_runtime::mailer::{SendLimiter, Sender};
use datamailer_runtime::source::sqs::{self, SqsQueue};
use datamailer_runtime::{QueueTree, TreeExit, TreeSpec};
use datamailer_testkit::TestDb;
use serde_json::json;
use support::*;

const LIMIT: Duration = Duration::from_secs(20);

/// Everything a test needs from moto and Postgres.
struct Env {
    endpoint: String,
    aws: aws_config::SdkConfig,
    sqs: aws_sdk_sqs::Client,
    ses: aws_sdk_sesv2::Client,
    db: TestDb,
    queues: Queues,
}

async fn env(name: &str) -> Option<Env> {
    let endpoint = datamailer_testkit::aws_endpoint().await?;
    let db = TestDb::create().await?;
    let aws = sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let ses = aws_sdk_sesv2::Client::new(&aws);
    let queues = create_queues(&sqs, &unique(name)).await;
    Some(Env {
        endpoint,
        aws,
        sqs,
        ses,
        db,
        queues,
    })
}

impl Env {
    /// A transactional tree over the SQS queue (1 s long poll), sending through SES on moto.
    async fn start_tree(&self) -> QueueTree {
        let source = SqsQueue::connect(self.sqs.clone(), QUEUE, self.queues.url.clone(), None)
            .await
            .expect("connect the SQS source")
            .with_wait(Duration::from_secs(1));
        // No DLQ URL given: the source found it through the queue's redrive policy.
        assert_eq!(source.dlq_url(), Some(self.queues.dlq_url.as_str()));
        let db = Db::connect(&self.db.url, &PoolSettings::default()).expect("worker pool");
        let mailer = SesMailer::new(ses::client(&self.aws, Duration::from_secs(10)));
        let sender = Sender::new(Arc::new(mailer), SendLimiter::new(None));
        let handler = TransactionalHandler::new(db, sender, TransactionalSettings::default());
        let mut spec = TreeSpec::new(QUEUE, Arc::new(source), Arc::new(handler));
        spec.concurrency = 2;
        QueueTree::start(spec).await.expect("start the tree")
    }

    /// Sends `bodies` to the source queue and runs a tree until that many messages are in the
    /// DLQ.
    async fn dead_letter(&self, bodies: &[&str]) {
        for body in bodies {
            self.sqs
                .send_message()
                .queue_url(&self.queues.url)
                .message_body(*body)
                .send()
                .await
                .expect("SendMessage");
        }
        let tree = self.start_tree().await;
        wait_for("the dead letters", LIMIT, || async {
            (queue_depth(&self.sqs, &self.queues.dlq_url).await.0 == bodies.len() as u64)
                .then_some(())
        })
        .await;
        shutdown(tree).await;
    }

    /// The source queue holds nothing, visible or in flight: every message was deleted.
    async fn assert_queue_empty(&self) {
        assert_eq!(
            queue_depth(&self.sqs, &self.queues.url).await,
            (0, 0),
            "source queue (visible, in flight)"
        );
    }
}

async fn shutdown(tree: QueueTree) {
    assert_eq!(
        tree.shutdown(Duration::from_secs(10)).await,
        TreeExit::Drained
    );
}

#[tokio::test]
async fn api_to_sqs_to_ses_marks_the_row_sent_and_deletes_the_message() {
    let Some(env) = env("dm-send").await else {
        return;
    };
    let suffix = unique("s");
    let sender = format!("support-{suffix}@example.com");
    let recipient = format!("ada-{suffix}@example.com");
    verify_identity(&env.ses, &sender).await;
    let scope = provision(&env.db.pool, &sender).await;
    let web = start_web(
        env.db.pool.clone(),
        sqs_producer(&env.sqs, &env.queues.url),
        &scope.api_key,
    )
    .await;
    web.put_template("welcome").await;

    let (status, body) = web.send(&recipient, "welcome", "Ada").await;
    assert_eq!(status, 202, "send: {body}");
    assert_eq!(body["enqueued"], json!(true), "send: {body}");
    assert_eq!(body["message"]["status"], json!("queued"));
    let id = body["message"]["id"].as_i64().expect("message id");
    // The API put exactly one message on SQS (after its commit).
    assert_eq!(queue_depth(&env.sqs, &env.queues.url).await, (1, 0));

    let tree = env.start_tree().await;
    let row = wait_terminal(&env.db.pool, id, LIMIT).await;
    shutdown(tree).await;

    assert_eq!(row.status, "sent", "row: {row:?}");
    assert_eq!(row.last_error, "");
    assert!(!row.ses_message_id.is_empty());
    let sent = moto_sent_messages(&env.endpoint).await;
    let mail = sent
        .iter()
        .find(|m| m["id"] == json!(row.ses_message_id))
        .unwrap_or_else(|| panic!("SES has no message {}", row.ses_message_id));
    assert_eq!(mail["subject"], json!("Hello Ada"));
    assert_eq!(mail["source"], json!(format!("Support <{sender}>")));
    assert_eq!(mail["destinations"]["ToAddresses"], json!([recipient]));
    assert_eq!(mail["body"], json!("<p>Welcome, Ada!</p>"));

    let events = events(&env.db.pool, id).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["queued", "sent"]);
    assert_eq!(events[1].1["ses_message_id"], json!(row.ses_message_id));

    env.assert_queue_empty().await;
    assert_eq!(queue_depth(&env.sqs, &env.queues.dlq_url).await, (0, 0));
    env.db.drop_db().await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_on_first_receive_and_can_be_redriven() {
    let Some(env) = env("dm-poison").await else {
        return;
    };
    let not_json = "this is not JSON";
    let wrong_contract = json!({"contract": "campaign-email", "version": 1}).to_string();
    env.dead_letter(&[not_json, wrong_contract.as_str()]).await;
    env.assert_queue_empty().await;

    // Moved by us on the first receive (the redrive policy would need five), with the reason
    // and the provenance as message attributes.
    let out = env
        .sqs
        .receive_message()
        .queue_url(&env.queues.dlq_url)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .visibility_timeout(0)
        .send()
        .await
        .expect("ReceiveMessage on the DLQ");
    assert_eq!(out.messages().len(), 2);
    for m in out.messages() {
        let attrs = m.message_attributes().expect("message attributes");
        let attr = |k: &str| attrs.get(k).and_then(|v| v.string_value()).unwrap_or("");
        assert_eq!(attr("ReceiveCount"), "1", "{m:?}");
        assert_eq!(attr("SourceQueue"), QUEUE);
        assert!(!attr("OriginalMessageId").is_empty());
        assert!(attr("DeadLetterReason").starts_with("invalid transactional-email message: "));
    }

    let mut letters = sqs::list_dead_letters(&env.sqs, &env.queues.dlq_url)
        .await
        .expect("list dead letters");
    letters.sort_by(|a, b| a.body.cmp(&b.body));
    let found: Vec<(&str, &str)> = letters
        .iter()
        .map(|l| (l.body.as_str(), l.reason.as_str()))
        .collect();
    let mut expected = vec![
        (
            not_json,
            "invalid transactional-email message: body is not valid JSON",
        ),
        (
            wrong_contract.as_str(),
            "invalid transactional-email message: contract must be 'transactional-email'",
        ),
    ];
    expected.sort();
    assert_eq!(found.len(), 2, "{letters:?}");
    for ((body, reason), (want_body, want_reason)) in found.iter().zip(&expected) {
        assert_eq!(body, want_body);
        assert!(
            reason.starts_with(want_reason),
            "reason {reason:?} should start with {want_reason:?}"
        );
    }
    // Listing does not consume: the letters are visible again at once.
    assert_eq!(queue_depth(&env.sqs, &env.queues.dlq_url).await, (2, 0));

    let moved = sqs::redrive(&env.sqs, &env.queues.dlq_url, &env.queues.url)
        .await
        .expect("redrive");
    assert_eq!(moved, 2);
    assert_eq!(queue_depth(&env.sqs, &env.queues.dlq_url).await, (0, 0));
    assert_eq!(queue_depth(&env.sqs, &env.queues.url).await, (2, 0));
    let out = env
        .sqs
        .receive_message()
        .queue_url(&env.queues.url)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("ReceiveMessage");
    let mut bodies: Vec<&str> = out.messages().iter().filter_map(|m| m.body()).collect();
    bodies.sort();
    let mut want = vec![not_json, wrong_contract.as_str()];
    want.sort();
    assert_eq!(bodies, want);
    env.db.drop_db().await;
}

#[tokio::test]
async fn unverified_sender_fails_the_row_permanently_and_acknowledges_the_message() {
    let Some(env) = env("dm-reject").await else {
        return;
    };
    let suffix = unique("u");
    // Never verified with SES: moto answers MessageRejected.
    let sender = format!("unverified-{suffix}@example.com");
    let scope = provision(&env.db.pool, &sender).await;
    let web = start_web(
        env.db.pool.clone(),
        sqs_producer(&env.sqs, &env.queues.url),
        &scope.api_key,
    )
    .await;
    web.put_template("welcome").await;
    let (status, body) = web
        .send(&format!("bob-{suffix}@example.com"), "welcome", "Bob")
        .await;
    assert_eq!(status, 202, "send: {body}");
    let id = body["message"]["id"].as_i64().expect("message id");

    let tree = env.start_tree().await;
    let row = wait_terminal(&env.db.pool, id, LIMIT).await;
    shutdown(tree).await;

    assert_eq!(row.status, "failed", "row: {row:?}");
    assert!(
        row.last_error.starts_with("MessageRejected"),
        "last_error: {:?}",
        row.last_error
    );
    assert_eq!(row.ses_message_id, "");
    let events = events(&env.db.pool, id).await;
    let (kind, meta) = events.last().expect("events");
    assert_eq!(kind, "failed");
    assert_eq!(meta["reason"], json!("ses_permanent_failure"));
    assert!(meta["error"]
        .as_str()
        .unwrap_or("")
        .starts_with("MessageRejected"));
    // Acknowledged: neither retried nor dead-lettered.
    env.assert_queue_empty().await;
    assert_eq!(queue_depth(&env.sqs, &env.queues.dlq_url).await, (0, 0));
    env.db.drop_db().await;
}

/// Runs the built binary with only the given environment (plus PATH) on a blocking thread,
/// returning (success, stdout, stderr).
async fn run_cli(args: &[&str], vars: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_datamailer"));
    cmd.args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(vars.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run datamailer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_lists_and_redrives_sqs_dead_letters() {
    let Some(env) = env("dm-cli").await else {
        return;
    };
    let poison = r#"{"contract":"transactional-email","version":1}"#;
    env.dead_letter(&[poison]).await;

    // Only the source queue URL: the CLI finds the DLQ through the redrive policy.
    let vars = [
        ("DATAMAILER_QUEUE_BACKEND", "sqs"),
        ("AWS_ENDPOINT_URL", env.endpoint.as_str()),
        ("SQS_TRANSACTIONAL_EMAIL_QUEUE_URL", env.queues.url.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("DATABASE_URL", env.db.url.as_str()),
    ];
    let (ok, stdout, stderr) = run_cli(&["dlq", "list", "--queue", QUEUE], &vars).await;
    assert!(ok, "dlq list failed:\n{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(lines[0]["body"], json!(poison));
    assert_eq!(
        lines[0]["reason"],
        json!("invalid transactional-email message: missing required field 'transactional_message_id'")
    );
    assert!(stderr.contains("1 dead-lettered message(s) on transactional-email"));

    let (ok, stdout, stderr) = run_cli(&["dlq", "redrive", "--queue", QUEUE], &vars).await;
    assert!(ok, "dlq redrive failed:\n{stderr}");
    assert_eq!(stdout.trim(), "redrove 1 message(s) to transactional-email");
    assert_eq!(queue_depth(&env.sqs, &env.queues.dlq_url).await, (0, 0));
    assert_eq!(queue_depth(&env.sqs, &env.queues.url).await, (1, 0));
    env.db.drop_db().await;
}
