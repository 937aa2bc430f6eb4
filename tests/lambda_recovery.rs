//! Recovery inside Lambda, with the real bootstrap under cargo-lambda's emulator and SQS on
//! moto:
//!
//! * the scheduled maintenance invocation (`DATAMAILER_LAMBDA_JOB=maintenance`, what the
//!   template's EventBridge schedule invokes every minute) finds a row left `sending` with no
//!   message and puts it back on its SQS queue; a second invocation within the minute does
//!   nothing (not due), and the run is recorded;
//! * a queue-worker invocation whose record's row another delivery holds reports the record as
//!   a batch item failure, delays it until the lease ends, and does not dead-letter it;
//! * the same scheduled invocation delivers a pending client webhook (signed, to a receiver the
//!   allow list lets through) and works a recipient-list import job from its URL.

mod support;

use std::time::Duration;

use datamailer_core::contracts::TransactionalEmailV1;
use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use support::*;

/// The `datamailer lambda` function under the emulator, with this test's environment.
fn function(
    emulator_port: u16,
    endpoint: &str,
    db_url: &str,
    queues: &Queues,
    extra: &[(&str, &str)],
) -> Process {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("lambda");
    lambda_function_env(&mut cmd, emulator_port, "recovery-test");
    aws_env(&mut cmd, endpoint);
    cmd.env("DATABASE_URL", db_url)
        .env("DATAMAILER_QUEUE_BACKEND", "sqs")
        .env("DATAMAILER_MAILER", "capture")
        .env("SQS_TRANSACTIONAL_EMAIL_QUEUE_URL", &queues.url)
        .env("SQS_TRANSACTIONAL_EMAIL_DLQ_URL", &queues.dlq_url)
        .env("RUST_LOG", "info")
        .envs(extra.iter().copied());
    Process::spawn("datamailer lambda", cmd)
}

/// A transactional row written through the API (SQS backend), whose message is then lost:
/// received and deleted, as if a duplicate had been acknowledged.
async fn row_without_message(
    db: &TestDb,
    sqs: &aws_sdk_sqs::Client,
    queues: &Queues,
) -> (i64, String) {
    let scope = provision(&db.pool, "support@example.com").await;
    let web = start_web(
        db.pool.clone(),
        sqs_producer(sqs, &queues.url),
        &scope.api_key,
    )
    .await;
    web.put_template("welcome").await;
    let (status, body) = web.send("orphan@example.com", "welcome", "Ada").await;
    assert_eq!(status, 202, "{body}");
    let id = body["message"]["id"].as_i64().unwrap();
    let message = receive_messages(sqs, &queues.url, 1).await.remove(0);
    let body = message.body().unwrap().to_string();
    sqs.delete_message()
        .queue_url(&queues.url)
        .receipt_handle(message.receipt_handle().unwrap())
        .send()
        .await
        .unwrap();
    (id, body)
}

#[tokio::test]
async fn the_scheduled_maintenance_invocation_puts_an_orphaned_row_back_on_its_queue() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(cargo_lambda) = find_cargo_lambda() else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let aws = sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queues = create_queues(&sqs, &unique("dm-maint")).await;
    let (id, _) = row_without_message(&db, &sqs, &queues).await;
    // Its worker died mid-send long ago: `sending`, lease over.
    sqlx::query("UPDATE transactional_messages SET status = 'sending', send_attempts = send_attempts + 1, lease_expires_at = now() - interval '1 minute', updated_at = now() - interval '30 minutes' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();

    let (mut emulator, port) = start_lambda_emulator(&cargo_lambda).await;
    let mut maintenance = function(
        port,
        &endpoint,
        &db.url,
        &queues,
        &[("DATAMAILER_LAMBDA_JOB", "maintenance")],
    );
    // What EventBridge Scheduler delivers (the template's schedule has no input of its own).
    let scheduled =
        json!({"source": "aws.scheduler", "detail-type": "Scheduled Event", "detail": {}});
    let (status, answer) =
        invoke_lambda(port, &scheduled, &mut [&mut emulator, &mut maintenance]).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let task = &answer["report"]["tasks"][0];
    assert_eq!(task["task"], "transactional-stale-rows", "{answer}");
    assert_eq!(task["ok"], true, "{answer}");
    assert_eq!(task["acted_on"], 1, "{answer}");

    let back = receive_messages(&sqs, &queues.url, 1).await;
    let payload = TransactionalEmailV1::parse(back[0].body().unwrap()).unwrap();
    assert_eq!(payload.transactional_message_id, id);

    // Within the minute nothing is due: the next scheduled invocation does nothing.
    let (status, answer) =
        invoke_lambda(port, &scheduled, &mut [&mut emulator, &mut maintenance]).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    // Only routine tasks (the webhook dispatcher runs every tick) may appear; none acts.
    let tasks = answer["report"]["tasks"].as_array().unwrap();
    assert!(
        tasks
            .iter()
            .all(|t| t["task"] != "transactional-stale-rows" && t["acted_on"] == 0),
        "{answer}"
    );
    let (ok, runs): (bool, i64) = sqlx::query_as(
        "SELECT last_ok, runs_total FROM maintenance_runs WHERE task = 'transactional-stale-rows'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(ok);
    assert_eq!(runs, 1);
    db.drop_db().await;
}

#[tokio::test]
async fn a_record_whose_row_another_delivery_holds_waits_for_the_lease_in_lambda() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(cargo_lambda) = find_cargo_lambda() else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let aws = sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queues = create_queues(&sqs, &unique("dm-lambda-lease")).await;
    let queue_arn = queue_arn(&sqs, &queues.url).await;
    let (id, body) = row_without_message(&db, &sqs, &queues).await;
    // Another delivery holds the row for 10 more minutes.
    sqlx::query("UPDATE transactional_messages SET status = 'sending', send_attempts = send_attempts + 1, lease_expires_at = now() + interval '10 minutes' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    sqs.send_message()
        .queue_url(&queues.url)
        .message_body(&body)
        .send()
        .await
        .unwrap();
    let messages = receive_messages(&sqs, &queues.url, 1).await;
    let record_id = messages[0].message_id().unwrap().to_string();

    let (mut emulator, port) = start_lambda_emulator(&cargo_lambda).await;
    let mut worker = function(
        port,
        &endpoint,
        &db.url,
        &queues,
        &[("DATAMAILER_QUEUE", QUEUE)],
    );
    let (status, answer) = invoke_lambda(
        port,
        &sqs_event(&messages, &queue_arn),
        &mut [&mut emulator, &mut worker],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer,
        json!({"batchItemFailures": [{"itemIdentifier": record_id}]})
    );
    // Hidden until the lease ends (not back at once), not in the DLQ, the row untouched.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(queue_depth(&sqs, &queues.url).await, (0, 1));
    assert_eq!(queue_depth(&sqs, &queues.dlq_url).await, (0, 0));
    assert_eq!(message_row(&db.pool, id).await.status, "sending");
    db.drop_db().await;
}

/// What the receiver saw: (authorization, signature header, body) of each webhook POST.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>>;

/// A loopback HTTP server: `POST /hook` records the webhook, `GET /members.jsonl` serves an
/// import's members.
async fn receiver() -> (std::net::SocketAddr, Seen) {
    use axum::http::HeaderMap;
    let seen: Seen = Default::default();
    let record = seen.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let record = record.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    record.lock().unwrap().push((
                        header("authorization"),
                        header("x-datamailer-signature"),
                        serde_json::from_str(&body).unwrap_or(Value::Null),
                    ));
                    "ok"
                }
            }),
        )
        .route(
            "/members.jsonl",
            axum::routing::get(|| async {
                "{\"source_object_key\":\"m-1\",\"email\":\"m1@example.com\"}\n\
                 {\"source_object_key\":\"m-2\",\"email\":\"m2@example.com\"}\n"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test]
async fn the_scheduled_maintenance_invocation_delivers_client_webhooks_and_works_import_jobs() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(cargo_lambda) = find_cargo_lambda() else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let aws = sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queues = create_queues(&sqs, &unique("dm-egress")).await;
    let scope = provision(&db.pool, "support@example.com").await;
    let (addr, seen) = receiver().await;

    // The client's webhook, and an event that owes it a callback (written by the trigger in
    // the event's transaction).
    sqlx::query(
        "UPDATE clients SET cmp_webhook_url = $1, cmp_webhook_token = 'hook-token' WHERE id = $2",
    )
    .bind(format!("http://{addr}/hook"))
    .bind(scope.client_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let contact: i64 = sqlx::query_scalar(
        "INSERT INTO contacts (email, normalized_email) VALUES ('o@example.com', 'o@example.com') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO email_events (contact_id, client_id, event_type) VALUES ($1, $2, 'open')",
    )
    .bind(contact)
    .bind(scope.client_id)
    .execute(&db.pool)
    .await
    .unwrap();
    // An import job, as `POST /api/recipient-lists/imported/imports` writes it.
    sqlx::query(
        "INSERT INTO recipient_list_import_jobs (client_id, audience_id, list_key, source_url)
         SELECT $1, a.id, 'imported', $2 FROM audiences a WHERE a.slug = 'news'",
    )
    .bind(scope.client_id)
    .bind(format!("http://{addr}/members.jsonl"))
    .execute(&db.pool)
    .await
    .unwrap();

    let (mut emulator, port) = start_lambda_emulator(&cargo_lambda).await;
    let mut maintenance = function(
        port,
        &endpoint,
        &db.url,
        &queues,
        &[
            ("DATAMAILER_LAMBDA_JOB", "maintenance"),
            // The template's OutboundAllowHosts: the receiver is on a loopback address.
            ("DATAMAILER_OUTBOUND_ALLOW_HOSTS", "127.0.0.1"),
            ("CMP_WEBHOOK_TIMEOUT_SECONDS", "5"),
        ],
    );
    let scheduled =
        json!({"source": "aws.scheduler", "detail-type": "Scheduled Event", "detail": {}});
    let (status, answer) =
        invoke_lambda(port, &scheduled, &mut [&mut emulator, &mut maintenance]).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let tasks = answer["report"]["tasks"].as_array().unwrap();
    assert!(tasks.iter().all(|t| t["ok"] == true), "{answer}");

    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{answer}");
    let (authorization, signature, body) = &got[0];
    assert_eq!(authorization, "Bearer hook-token");
    assert!(
        signature.starts_with("t=") && signature.contains(",v1="),
        "{signature}"
    );
    assert_eq!(body["event_type"], "message.opened", "{body}");
    let (status, code): (String, Option<i32>) =
        sqlx::query_as("SELECT status, response_status FROM cmp_callbacks")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), code), ("delivered", Some(200)));

    let (job, rows): (String, i32) = sqlx::query_as(
        "SELECT status, row_count FROM recipient_list_import_jobs WHERE list_key = 'imported'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((job.as_str(), rows), ("succeeded", 2), "{answer}");
    let members: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recipient_list_members m JOIN recipient_lists l ON l.id = m.recipient_list_id
         WHERE l.key = 'imported' AND m.active",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(members, 2);
}
