//! The SES feedback loop through the real binary, on every source:
//!
//! * embedded (`datamailer serve`): a transactional send, then SES's Delivery and a hard
//!   Bounce POSTed to `/webhooks/ses` as SNS would (signature mode `insecure`: the signature
//!   rules have their own tests in web/tests/ses_ingress.rs), and a bare Complaint put on the
//!   queue with `datamailer enqueue`: the row, the contact, the history, the client's webhook
//!   and the next send's refusal all show it;
//! * SQS (`datamailer worker --queue ses-webhooks` on moto): raw SNS envelopes, bare events
//!   and the contract mixed with a duplicate and a poison message; the poison lands in the
//!   DLQ with its reason, the duplicate counts nothing;
//! * Lambda (`datamailer lambda` under the emulator): one mixed batch, only the poison
//!   reported, and a redelivered batch changes nothing;
//! * `datamailer suppression import` from SES's account suppression list (a stand-in SES v2
//!   endpoint below: moto does not implement ListSuppressedDestinations), `list`, `add`,
//!   `remove`; `datamailer reputation [resume]`.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use datamailer_testkit::ses::{self, Mail};
use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use support::*;

const QUEUE: &str = "ses-webhooks";
const AT: &str = "2026-12-04T10:00:03.000Z";

/// A transactional message recorded as sent to `email` with `ses_id`: its id.
async fn sent_message(pool: &sqlx::PgPool, client_id: i64, email: &str, ses_id: &str) -> i64 {
    sqlx::query_scalar(
        "WITH c AS (INSERT INTO contacts (email, normalized_email) VALUES ($2, $2)
                    ON CONFLICT (normalized_email) DO UPDATE SET updated_at = now() RETURNING id),
              t AS (INSERT INTO email_templates (client_id, key, name, subject, text_body)
                    VALUES ($1, 'k-' || $3, 'k', 's', 'b') RETURNING id)
         INSERT INTO transactional_messages (client_id, contact_id, template_id, email, template_key,
                                             subject, status, ses_message_id, sent_at)
         SELECT $1, c.id, t.id, $2, 'k', 's', 'sent', $3, now() FROM c, t RETURNING id",
    )
    .bind(client_id)
    .bind(email)
    .bind(ses_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The SES message id the worker recorded for a message.
async fn ses_message_id(pool: &sqlx::PgPool, id: i64) -> String {
    sqlx::query_scalar("SELECT ses_message_id FROM transactional_messages WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// (status, contact hard-bounced, contact complained, events) of a message.
async fn state(pool: &sqlx::PgPool, id: i64) -> (String, bool, bool, Vec<String>) {
    let (status, bounced, complained): (String, bool, bool) = sqlx::query_as(
        "SELECT m.status, c.hard_bounced_at IS NOT NULL, c.complained_at IS NOT NULL
           FROM transactional_messages m JOIN contacts c ON c.id = m.contact_id WHERE m.id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM email_events WHERE transactional_message_id = $1 AND provider_event_id <> ''
          ORDER BY created_at, id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    (status, bounced, complained, events)
}

#[tokio::test]
async fn serve_applies_feedback_from_the_http_ingress_and_the_embedded_queue() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let scope = provision(&db.pool, "news@example.com").await;
    sqlx::query("UPDATE clients SET cmp_webhook_url = 'https://cmp.example.test/hook', cmp_webhook_token = 't'")
        .execute(&db.pool)
        .await
        .unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("DATAMAILER_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "DATAMAILER_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("DATAMAILER_SNS_SIGNATURE_MODE", "insecure")
        .env("RUST_LOG", "warn");
    let mut serve = Process::spawn("datamailer serve", cmd);
    serve.assert_running();
    wait_for("serve healthy", Duration::from_secs(20), || async {
        reqwest::get(format!("{base}/health/"))
            .await
            .is_ok_and(|r| r.status() == 200)
            .then_some(())
    })
    .await;
    let http = reqwest::Client::new();
    let web = Web {
        base: base.clone(),
        http: http.clone(),
        api_key: scope.api_key.clone(),
    };
    web.put_template("welcome").await;
    let (status, body) = web.send("alice@example.com", "welcome", "Alice").await;
    assert_eq!(status, 202, "{body}");
    let id = body["message"]["id"].as_i64().unwrap();
    let row = wait_terminal(&db.pool, id, Duration::from_secs(20)).await;
    assert_eq!(row.status, "sent");
    let ses_id = ses_message_id(&db.pool, id).await;

    // SES's word, as SNS POSTs it: the delivery, then a hard bounce.
    let mail = Mail::new(&ses_id, "alice@example.com").tagged("transactional", id);
    for (sns_id, event) in [
        ("sns-http-1", ses::event("Delivery", &mail, AT)),
        ("sns-http-2", ses::event("Bounce", &mail, AT)),
    ] {
        let resp = http
            .post(format!("{base}/webhooks/ses"))
            .header("x-amz-sns-message-type", "Notification")
            .body(ses::envelope(&event, sns_id).to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["enqueued"], true);
    }
    let (status, bounced, _, events) =
        wait_for("the bounce applied", Duration::from_secs(20), || async {
            let s = state(&db.pool, id).await;
            (s.0 == "bounced").then_some(s)
        })
        .await;
    assert_eq!(status, "bounced");
    assert!(bounced);
    assert_eq!(events, ["delivered", "bounce"]);
    let callbacks: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM cmp_callbacks WHERE client_id = $1 ORDER BY id")
            .bind(scope.client_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(callbacks, ["message.delivered", "contact.hard_bounced"]);
    // The suppression reaches the API: the next send to her is refused.
    let (status, body) = web.send("alice@example.com", "welcome", "Alice").await;
    assert_eq!(status, 409, "{body}");

    // A bare SES event (raw message delivery on) put on the embedded queue by hand.
    let (status, body) = web.send("bob@example.com", "welcome", "Bob").await;
    assert_eq!(status, 202, "{body}");
    let bob = body["message"]["id"].as_i64().unwrap();
    wait_terminal(&db.pool, bob, Duration::from_secs(20)).await;
    let bob_ses = ses_message_id(&db.pool, bob).await;
    let complaint = ses::event(
        "Complaint",
        &Mail::new(&bob_ses, "bob@example.com").tagged("transactional", bob),
        AT,
    );
    let mut enqueue = Command::new(BIN)
        .args(["enqueue", "--queue", QUEUE])
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(enqueue.stdin.take().unwrap(), "{complaint}").unwrap();
    assert!(enqueue.wait().unwrap().success());
    let (status, _, complained, _) =
        wait_for("the complaint applied", Duration::from_secs(20), || async {
            let s = state(&db.pool, bob).await;
            (s.0 == "complained").then_some(s)
        })
        .await;
    assert_eq!(status, "complained");
    assert!(complained);
    serve.assert_running();
    drop(serve);
    db.drop_db().await;
}

/// Three messages' feedback in every shape, one duplicate and one poison message.
struct Mixed {
    bodies: Vec<String>,
    ids: [i64; 3],
}

async fn mixed(pool: &sqlx::PgPool, client_id: i64, tag: &str) -> Mixed {
    let mut ids = [0; 3];
    for (i, id) in ids.iter_mut().enumerate() {
        *id = sent_message(
            pool,
            client_id,
            &format!("m{i}-{tag}@example.com"),
            &format!("ses-{tag}-{i}"),
        )
        .await;
    }
    let mail = |i: usize| {
        Mail::new(
            &format!("ses-{tag}-{i}"),
            &format!("m{i}-{tag}@example.com"),
        )
    };
    // 0: delivered (raw envelope, by SES message id); 1: hard bounce (bare event, tagged);
    // 2: complaint (the contract).
    let delivery = ses::envelope(
        &ses::event("Delivery", &mail(0), AT),
        &format!("sns-{tag}-0"),
    );
    let bounce = ses::event("Bounce", &mail(1).tagged("transactional", ids[1]), AT);
    let complaint = datamailer_core::ses_events::normalize(
        ses::envelope(
            &ses::event("Complaint", &mail(2), AT),
            &format!("sns-{tag}-2"),
        )
        .as_object()
        .unwrap(),
        "2026-12-04T10:00:06+00:00",
    )
    .unwrap()
    .to_json();
    Mixed {
        bodies: vec![
            delivery.to_string(),
            bounce.to_string(),
            complaint,
            delivery.to_string(),
            "{not json".to_string(),
        ],
        ids,
    }
}

async fn assert_applied(pool: &sqlx::PgPool, m: &Mixed) {
    let s0 = state(pool, m.ids[0]).await;
    assert_eq!(
        (s0.0.as_str(), s0.3.clone()),
        ("sent", vec!["delivered".to_string()])
    );
    let s1 = state(pool, m.ids[1]).await;
    assert_eq!((s1.0.as_str(), s1.1, s1.3.len()), ("bounced", true, 1));
    let s2 = state(pool, m.ids[2]).await;
    assert_eq!((s2.0.as_str(), s2.2, s2.3.len()), ("complained", true, 1));
}

#[tokio::test]
async fn the_sqs_worker_applies_every_shape_and_dead_letters_only_the_poison() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let scope = provision(&db.pool, "news@example.com").await;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&endpoint).await);
    let queues = create_queues(&sqs, &unique("dm-ses-webhooks")).await;
    let m = mixed(&db.pool, scope.client_id, "sqs").await;
    for body in &m.bodies {
        sqs.send_message()
            .queue_url(&queues.url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--queue", QUEUE]);
    aws_env(&mut cmd, &endpoint);
    cmd.env("DATABASE_URL", &db.url)
        .env("DATAMAILER_QUEUE_BACKEND", "sqs")
        .env("SQS_TRANSACTIONAL_EMAIL_QUEUE_URL", &queues.url)
        .env("SQS_SES_WEBHOOKS_QUEUE_URL", &queues.url)
        .env("SQS_SES_WEBHOOKS_DLQ_URL", &queues.dlq_url)
        .env(
            "DATAMAILER_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("RUST_LOG", "warn");
    let mut worker = Process::spawn("datamailer worker", cmd);
    wait_for("the queue drained", Duration::from_secs(30), || async {
        (queue_depth(&sqs, &queues.url).await == (0, 0)
            && queue_depth(&sqs, &queues.dlq_url).await.0 == 1)
            .then_some(())
    })
    .await;
    worker.assert_running();
    assert_applied(&db.pool, &m).await;
    let dead = datamailer_runtime::source::sqs::list_dead_letters(&sqs, &queues.dlq_url)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "{not json");
    assert!(
        dead[0].reason.contains("malformed JSON"),
        "{}",
        dead[0].reason
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM email_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 3, "the duplicate envelope recorded nothing");
    drop(worker);
    db.drop_db().await;
}

#[tokio::test]
async fn the_ses_webhooks_function_applies_a_mixed_batch_and_a_redelivery_changes_nothing() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(cargo_lambda) = find_cargo_lambda() else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let scope = provision(&db.pool, "news@example.com").await;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&endpoint).await);
    let queues = create_queues(&sqs, &unique("dm-lambda-ses")).await;
    let queue_arn = queue_arn(&sqs, &queues.url).await;
    let m = mixed(&db.pool, scope.client_id, "lambda").await;
    for body in &m.bodies {
        sqs.send_message()
            .queue_url(&queues.url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let records = receive_messages(&sqs, &queues.url, m.bodies.len()).await;
    let (mut emulator, port) = start_lambda_emulator(&cargo_lambda).await;
    let mut cmd = Command::new(BIN);
    cmd.arg("lambda");
    lambda_function_env(&mut cmd, port, "ses-webhooks-test");
    aws_env(&mut cmd, &endpoint);
    cmd.env("DATABASE_URL", &db.url)
        .env("DATAMAILER_QUEUE", QUEUE)
        .env("DATAMAILER_QUEUE_BACKEND", "sqs")
        .env("SQS_TRANSACTIONAL_EMAIL_QUEUE_URL", &queues.url)
        .env("SQS_SES_WEBHOOKS_QUEUE_URL", &queues.url)
        .env("SQS_SES_WEBHOOKS_DLQ_URL", &queues.dlq_url)
        .env("RUST_LOG", "info");
    let mut function = Process::spawn("datamailer lambda", cmd);
    let event = sqs_event(&records, &queue_arn);
    for round in 0..2 {
        let (status, answer) =
            invoke_lambda(port, &event, &mut [&mut emulator, &mut function]).await;
        assert_eq!(status, 200, "{answer}");
        // The poison went to the DLQ with its reason (once): nothing is left to retry.
        assert_eq!(
            serde_json::from_str::<Value>(&answer).unwrap(),
            json!({"batchItemFailures": []}),
            "round {round}"
        );
        assert_applied(&db.pool, &m).await;
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM email_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 3, "the redelivered batch recorded nothing");
    let dead = datamailer_runtime::source::sqs::list_dead_letters(&sqs, &queues.dlq_url)
        .await
        .unwrap();
    assert!(
        !dead.is_empty() && dead.iter().all(|d| d.body == "{not json"),
        "{dead:?}"
    );
    db.drop_db().await;
}

/// SES v2's `ListSuppressedDestinations` (two pages) and `DeleteSuppressedDestination`, over
/// HTTP for the real SDK client. A stand-in: moto has neither.
async fn fake_suppression_list() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::extract::{Path, Query};
    use axum::routing::{delete, get};
    let deleted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = deleted.clone();
    let app = axum::Router::new()
        .route(
            "/v2/email/suppression/addresses",
            get(|Query(q): Query<std::collections::HashMap<String, String>>| async move {
                let page = match q.get("NextToken").map(String::as_str) {
                    None => json!({
                        "SuppressedDestinationSummaries": [
                            {"EmailAddress": "Gone@Example.com", "Reason": "BOUNCE", "LastUpdateTime": 1764806400.0},
                            {"EmailAddress": "known@example.com", "Reason": "COMPLAINT", "LastUpdateTime": 1764806400.5}],
                        "NextToken": "page-2"}),
                    Some(_) => json!({
                        "SuppressedDestinationSummaries": [
                            {"EmailAddress": "gone@example.com", "Reason": "COMPLAINT", "LastUpdateTime": 1764806401.0}]}),
                };
                axum::Json(page)
            }),
        )
        .route(
            "/v2/email/suppression/addresses/{email}",
            delete(move |Path(email): Path<String>| async move {
                seen.lock().unwrap().push(email);
                axum::Json(json!({}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), deleted)
}

fn cli(db: &TestDb, endpoint: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    aws_env(&mut cmd, endpoint);
    let out = cmd.env("DATABASE_URL", &db.url).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

// Multi-threaded: the CLI runs as a blocking child process while the stand-in answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppression_import_list_add_and_remove() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    sqlx::query("INSERT INTO contacts (email, normalized_email) VALUES ('known@example.com', 'known@example.com')")
        .execute(&db.pool)
        .await
        .unwrap();
    let (endpoint, deleted) = fake_suppression_list().await;
    let out = cli(&db, &endpoint, &["suppression", "import"]);
    assert!(out.contains("3 entries, 2 addresses"), "{out}");
    assert!(
        out.contains("2 addresses newly suppressed (1 of them new contacts)"),
        "{out}"
    );
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT normalized_email, hard_bounced_at IS NOT NULL, complained_at IS NOT NULL FROM contacts ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("gone@example.com".to_string(), true, true),
            ("known@example.com".to_string(), false, true)
        ]
    );
    // Again: nothing new.
    let out = cli(&db, &endpoint, &["suppression", "import"]);
    assert!(out.contains("0 addresses newly suppressed"), "{out}");

    let out = cli(
        &db,
        &endpoint,
        &[
            "suppression",
            "add",
            "New@Example.com",
            "--reason",
            "bounce",
            "--note",
            "ticket 42",
        ],
    );
    assert_eq!(out.trim(), "new@example.com: suppressed (bounce)");
    let history: Value = sqlx::query_scalar(
        "SELECT e.metadata FROM email_events e JOIN contacts c ON c.id = e.contact_id
          WHERE c.normalized_email = 'new@example.com' AND e.event_type = 'bounce'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        json!({"source": "operator", "reason": "ticket 42"})
    );
    let out = cli(
        &db,
        &endpoint,
        &["suppression", "list", "--reason", "bounce"],
    );
    let listed: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(listed.len(), 2, "{out}");
    assert!(listed.contains(&"gone@example.com") && listed.contains(&"new@example.com"));

    let out = cli(
        &db,
        &endpoint,
        &["suppression", "remove", "gone@example.com", "--ses"],
    );
    assert!(out.contains("no longer suppressed here"), "{out}");
    assert!(
        out.contains("removed from the SES account suppression list"),
        "{out}"
    );
    assert_eq!(
        *deleted.lock().unwrap(),
        vec!["gone@example.com".to_string()]
    );
    let out = cli(&db, &endpoint, &["suppression", "list"]);
    assert!(!out.contains("gone@example.com"), "{out}");
    let bad = Command::new(BIN)
        .args(["suppression", "add", "not-an-address"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("'not-an-address' is not an email address")
    );
    db.drop_db().await;
}
