//! Client webhooks against real Postgres and a real HTTP receiver (axum on loopback): the
//! email_events trigger writes the callback in the event's transaction, and the dispatcher
//! (the outbox tree of `datamailer_actors::webhooks`) signs, sends, records, retries on the
//! original's table and fails after the last attempt; two dispatchers never send one twice.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use datamailer_actors::webhooks::{self, DispatchWebhooks, WebhookSettings, NOT_CONFIGURED};
use datamailer_core::webhooks::{verify, SIGNATURE_HEADER};
use datamailer_runtime::db::{Db, PoolSettings};
use datamailer_runtime::maintenance::MaintenanceTask;
use datamailer_runtime::outbound::{OutboundClient, OutboundPolicy};
use datamailer_runtime::HandlerContext;
use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use sqlx::{PgPool, Row};

const TOKEN: &str = "whsec-test-token";

/// What the receiver saw and how it answers.
#[derive(Default)]
struct Receiver {
    /// Statuses to answer, in order; 200 once they run out.
    script: Mutex<VecDeque<u16>>,
    /// Every request whose signature and Bearer token were right, by event_id.
    seen: Mutex<HashMap<String, u32>>,
    /// The raw bodies, in order.
    bodies: Mutex<Vec<Bytes>>,
    /// Requests refused for a bad signature or token.
    bad: Mutex<u32>,
    /// Which token it expects.
    token: Mutex<String>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let token = r.token.lock().unwrap().clone();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "application/json");
    let now = chrono::Utc::now().timestamp();
    if bearer != format!("Bearer {token}")
        || !json_type
        || verify(&token, signature, &body, now, 300).is_err()
    {
        *r.bad.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let payload: Value = serde_json::from_slice(&body).unwrap();
    let event_id = payload["event_id"].as_str().unwrap().to_string();
    *r.seen.lock().unwrap().entry(event_id).or_default() += 1;
    r.bodies.lock().unwrap().push(body);
    let status = r.script.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

async fn start_receiver(script: &[u16]) -> (Arc<Receiver>, SocketAddr) {
    let r = Arc::new(Receiver::default());
    *r.token.lock().unwrap() = TOKEN.into();
    r.script.lock().unwrap().extend(script.iter().copied());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, addr)
}

struct Fixture {
    test_db: TestDb,
    db: Db,
    client_id: i64,
    audience_id: i64,
    contact_id: i64,
}

impl Fixture {
    fn pool(&self) -> &PgPool {
        &self.test_db.pool
    }

    async fn set_client_webhook(&self, url: &str, token: &str) {
        sqlx::query(
            "UPDATE clients SET cmp_webhook_url = $2, cmp_webhook_token = $3 WHERE id = $1",
        )
        .bind(self.client_id)
        .bind(url)
        .bind(token)
        .execute(self.pool())
        .await
        .unwrap();
    }

    async fn set_fallback(&self, url: &str, token: &str) {
        sqlx::query(
            "INSERT INTO client_webhook_fallback (url, token) VALUES ($1, $2)
             ON CONFLICT (singleton) DO UPDATE SET url = EXCLUDED.url, token = EXCLUDED.token",
        )
        .bind(url)
        .bind(token)
        .execute(self.pool())
        .await
        .unwrap();
    }

    /// An event for the fixture's contact, client and audience; returns its id.
    async fn event(&self, event_type: &str, metadata: Value) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO email_events (contact_id, client_id, audience_id, event_type, metadata)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(self.contact_id)
        .bind(self.client_id)
        .bind(self.audience_id)
        .bind(event_type)
        .bind(metadata)
        .fetch_one(self.pool())
        .await
        .unwrap()
    }

    async fn callbacks_for(&self, event_id: i64) -> Vec<sqlx::postgres::PgRow> {
        sqlx::query("SELECT * FROM cmp_callbacks WHERE email_event_id = $1")
            .bind(event_id)
            .fetch_all(self.pool())
            .await
            .unwrap()
    }

    async fn callback(&self, id: i64) -> sqlx::postgres::PgRow {
        sqlx::query(
            "SELECT status, attempt_count, response_status, last_error, delivered_at,
                    last_attempt_at, callback_url, payload,
                    extract(epoch FROM next_attempt_at - now())::float8 AS due_in
             FROM cmp_callbacks WHERE id = $1",
        )
        .bind(id)
        .fetch_one(self.pool())
        .await
        .unwrap()
    }

    async fn callback_id(&self, event_id: i64) -> i64 {
        self.callbacks_for(event_id).await[0].get("id")
    }

    /// Makes a pending callback due now (instead of waiting out its backoff).
    async fn make_due(&self, id: i64) {
        sqlx::query(
            "UPDATE cmp_callbacks SET next_attempt_at = now() - interval '1 second' WHERE id = $1",
        )
        .bind(id)
        .execute(self.pool())
        .await
        .unwrap();
    }
}

async fn fixture() -> Option<Fixture> {
    let test_db = TestDb::create().await?;
    let pool = &test_db.pool;
    let org: i64 =
        sqlx::query_scalar("INSERT INTO organizations (name, slug) VALUES ('o', 'o') RETURNING id")
            .fetch_one(pool)
            .await
            .unwrap();
    let audience_id: i64 = sqlx::query_scalar(
        "INSERT INTO audiences (organization_id, name, slug) VALUES ($1, 'News', 'news') RETURNING id",
    )
    .bind(org)
    .fetch_one(pool)
    .await
    .unwrap();
    let client_id: i64 = sqlx::query_scalar(
        "INSERT INTO clients (organization_id, name, slug) VALUES ($1, 'Shop', 'shop') RETURNING id",
    )
    .bind(org)
    .fetch_one(pool)
    .await
    .unwrap();
    let contact_id: i64 = sqlx::query_scalar(
        "INSERT INTO contacts (email, normalized_email) VALUES ('Ada@Example.com', 'ada@example.com') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let db = Db::connect(
        &test_db.url,
        &PoolSettings {
            max_connections: 4,
            ..Default::default()
        },
    )
    .unwrap();
    Some(Fixture {
        test_db,
        db,
        client_id,
        audience_id,
        contact_id,
    })
}

/// Dispatcher settings whose SSRF allow list names the loopback receiver.
fn settings(allow: &str) -> WebhookSettings {
    let mut s =
        WebhookSettings::new(OutboundClient::new(OutboundPolicy::from_allow_list(allow)).unwrap());
    s.timeout = Duration::from_secs(3);
    s
}

fn ctx() -> HandlerContext {
    HandlerContext::unbounded(1)
}

#[tokio::test]
async fn the_trigger_writes_one_callback_per_mapped_event_in_the_events_transaction() {
    let Some(f) = fixture().await else { return };
    f.set_client_webhook("https://hooks.example.com/dm", "tok")
        .await;

    for (event_type, callback_type) in [
        ("subscribe", "subscription.resubscribed"),
        ("unsubscribe", "subscription.unsubscribed"),
        ("bounce", "contact.hard_bounced"),
        ("complaint", "contact.complained"),
        ("delivered", "message.delivered"),
        ("open", "message.opened"),
        ("click", "message.clicked"),
    ] {
        let id = f.event(event_type, json!({})).await;
        let rows = f.callbacks_for(id).await;
        assert_eq!(rows.len(), 1, "{event_type}");
        assert_eq!(rows[0].get::<String, _>("event_type"), callback_type);
        assert_eq!(rows[0].get::<String, _>("status"), "pending");
        assert_eq!(rows[0].get::<i32, _>("max_attempts"), 8);
        assert_eq!(
            rows[0].get::<String, _>("event_id"),
            format!("datamailer-email-event:{id}")
        );
        assert_eq!(
            rows[0].get::<String, _>("callback_url"),
            "https://hooks.example.com/dm"
        );
    }
    // Unmapped types, and skipped/failed outside a transactional message, make none.
    for event_type in ["queued", "sent", "skipped", "failed"] {
        let id = f.event(event_type, json!({})).await;
        assert!(f.callbacks_for(id).await.is_empty(), "{event_type}");
    }

    // Transactional skipped/failed do, with the message's metadata under the event's.
    let template: i64 = sqlx::query_scalar(
        "INSERT INTO email_templates (client_id, key, name, subject) VALUES ($1, 'k', 'K', 's') RETURNING id",
    )
    .bind(f.client_id)
    .fetch_one(f.pool())
    .await
    .unwrap();
    let message: i64 = sqlx::query_scalar(
        "INSERT INTO transactional_messages (client_id, contact_id, template_id, email, template_key, subject, metadata)
         VALUES ($1, $2, $3, 'ada@example.com', 'k', 's', $4) RETURNING id",
    )
    .bind(f.client_id)
    .bind(f.contact_id)
    .bind(template)
    .bind(json!({"order": "A-1", "reason": "from-message", "cmp_preference_key": "orders"}))
    .fetch_one(f.pool())
    .await
    .unwrap();
    for (event_type, callback_type) in [
        ("skipped", "transactional.skipped"),
        ("failed", "transactional.failed"),
    ] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO email_events (transactional_message_id, contact_id, client_id, event_type, metadata, provider_event_id)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(message)
        .bind(f.contact_id)
        .bind(f.client_id)
        .bind(event_type)
        .bind(json!({"reason": "suppressed", "audience": "from-metadata"}))
        .bind(format!("sns-{event_type}"))
        .fetch_one(f.pool())
        .await
        .unwrap();
        let rows = f.callbacks_for(id).await;
        assert_eq!(rows.len(), 1, "{event_type}");
        let payload: Value = rows[0].get("payload");
        let created: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT created_at FROM email_events WHERE id = $1")
                .bind(id)
                .fetch_one(f.pool())
                .await
                .unwrap();
        assert_eq!(
            payload,
            json!({
                "event_id": format!("datamailer-email-event:{id}"),
                "event_type": callback_type,
                "email": "ada@example.com",
                "occurred_at": created.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string(),
                "contact_id": f.contact_id,
                "email_event_id": id,
                // No audience on the event: the metadata's.
                "audience": "from-metadata",
                "client": "shop",
                "metadata": {
                    "order": "A-1",
                    "reason": "suppressed",
                    "audience": "from-metadata",
                    "cmp_preference_key": "orders",
                    "transactional_message_id": message,
                    "provider_event_id": format!("sns-{event_type}"),
                },
                "preference_key": "orders",
            })
        );
    }

    // An event with an audience names its slug; preference_key wins over cmp_preference_key.
    let id = f
        .event(
            "unsubscribe",
            json!({"scope": "audience", "preference_key": "weekly", "cmp_preference_key": "x"}),
        )
        .await;
    let payload: Value = f.callbacks_for(id).await[0].get("payload");
    assert_eq!(payload["audience"], "news");
    assert_eq!(payload["preference_key"], "weekly");
    assert_eq!(
        payload["metadata"],
        json!({"scope": "audience", "preference_key": "weekly", "cmp_preference_key": "x"})
    );

    // Same transaction: the callback exists before commit, and a rollback takes it along.
    let mut tx = f.pool().begin().await.unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO email_events (contact_id, client_id, event_type) VALUES ($1, $2, 'open') RETURNING id",
    )
    .bind(f.contact_id)
    .bind(f.client_id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let inside: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cmp_callbacks WHERE email_event_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(inside, 1);
    tx.rollback().await.unwrap();
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM cmp_callbacks WHERE event_id = $1")
        .bind(format!("datamailer-email-event:{id}"))
        .fetch_one(f.pool())
        .await
        .unwrap();
    assert_eq!(after, 0);

    // One callback per event, enforced.
    let id = f.event("click", json!({})).await;
    let dup = sqlx::query(
        "INSERT INTO cmp_callbacks (email_event_id, event_id, event_type, callback_url, payload)
         VALUES ($1, 'other', 'message.clicked', 'https://x.example', '{}')",
    )
    .bind(id)
    .execute(f.pool())
    .await;
    assert!(
        dup.is_err(),
        "a second callback for one event must be refused"
    );
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn no_callback_without_a_contact_or_a_configuration_and_the_global_fallback_applies() {
    let Some(f) = fixture().await else { return };
    // Nothing configured anywhere: no row.
    let id = f.event("bounce", json!({})).await;
    assert!(f.callbacks_for(id).await.is_empty());
    // A URL without a token is not a configuration either.
    f.set_client_webhook("https://hooks.example.com/only-url", "")
        .await;
    let id = f.event("bounce", json!({})).await;
    assert!(f.callbacks_for(id).await.is_empty());

    // The global fallback covers the client.
    f.set_fallback("https://global.example.com/hook", "global-token")
        .await;
    let id = f.event("bounce", json!({})).await;
    let rows = f.callbacks_for(id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].get::<String, _>("callback_url"),
        "https://global.example.com/hook"
    );
    // An event of no client: the fallback too, with client "".
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO email_events (contact_id, event_type) VALUES ($1, 'complaint') RETURNING id",
    )
    .bind(f.contact_id)
    .fetch_one(f.pool())
    .await
    .unwrap();
    let payload: Value = f.callbacks_for(id).await[0].get("payload");
    assert_eq!(payload["client"], "");
    assert_eq!(payload["audience"], "");

    // The client's own configuration wins once complete.
    f.set_client_webhook(" https://hooks.example.com/own ", "own-token")
        .await;
    let id = f.event("delivered", json!({})).await;
    assert_eq!(
        f.callbacks_for(id).await[0].get::<String, _>("callback_url"),
        "https://hooks.example.com/own"
    );

    // No contact: never a callback, configured or not.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO email_events (client_id, event_type) VALUES ($1, 'open') RETURNING id",
    )
    .bind(f.client_id)
    .fetch_one(f.pool())
    .await
    .unwrap();
    assert!(f.callbacks_for(id).await.is_empty());
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_callback_on_the_third_attempt_after_the_backoff() {
    let Some(f) = fixture().await else { return };
    datamailer_runtime::telemetry::install_prometheus();
    let (receiver, addr) = start_receiver(&[500, 500]).await;
    f.set_client_webhook(&format!("http://{addr}/hook"), TOKEN)
        .await;
    let event = f.event("unsubscribe", json!({"scope": "audience"})).await;
    let id = f.callback_id(event).await;
    let s = settings("127.0.0.1");

    // Attempt 1: 500, pending, back in 60 s.
    let counts = webhooks::dispatch_due(&f.db, &s, &ctx()).await.unwrap();
    assert_eq!((counts.delivered(), counts.retried()), (0, 1));
    let row = f.callback(id).await;
    assert_eq!(row.get::<String, _>("status"), "pending");
    assert_eq!(row.get::<i32, _>("attempt_count"), 1);
    assert_eq!(row.get::<Option<i32>, _>("response_status"), Some(500));
    assert!(row.get::<String, _>("last_error").starts_with("HTTP 500"));
    assert!(row
        .get::<Option<chrono::DateTime<chrono::Utc>>, _>("last_attempt_at")
        .is_some());
    let due_in: f64 = row.get("due_in");
    assert!((55.0..=60.5).contains(&due_in), "due in {due_in} s");
    // Not due: a second run sends nothing.
    let counts = webhooks::dispatch_due(&f.db, &s, &ctx()).await.unwrap();
    assert_eq!(counts.retried() + counts.delivered(), 0);

    // Attempt 2: 500 again, back in 300 s.
    f.make_due(id).await;
    webhooks::dispatch_due(&f.db, &s, &ctx()).await.unwrap();
    let row = f.callback(id).await;
    assert_eq!(row.get::<i32, _>("attempt_count"), 2);
    assert_eq!(row.get::<Option<i32>, _>("response_status"), Some(500));
    let due_in: f64 = row.get("due_in");
    assert!((295.0..=300.5).contains(&due_in), "due in {due_in} s");

    // Attempt 3: delivered.
    f.make_due(id).await;
    let counts = webhooks::dispatch_due(&f.db, &s, &ctx()).await.unwrap();
    assert_eq!(counts.delivered(), 1);
    let row = f.callback(id).await;
    assert_eq!(row.get::<String, _>("status"), "delivered");
    assert_eq!(row.get::<i32, _>("attempt_count"), 3);
    assert_eq!(row.get::<Option<i32>, _>("response_status"), Some(200));
    assert_eq!(row.get::<String, _>("last_error"), "");
    assert!(row
        .get::<Option<chrono::DateTime<chrono::Utc>>, _>("delivered_at")
        .is_some());

    // Every request was signed over the exact body with the client's token; the body is the
    // stored payload.
    assert_eq!(*receiver.bad.lock().unwrap(), 0);
    assert_eq!(
        receiver.seen.lock().unwrap()[&format!("datamailer-email-event:{event}")],
        3
    );
    let payload: Value = row.get("payload");
    for body in receiver.bodies.lock().unwrap().iter() {
        assert_eq!(serde_json::from_slice::<Value>(body).unwrap(), payload);
    }
    // Delivered is terminal.
    f.make_due(id).await;
    let counts = webhooks::dispatch_due(&f.db, &s, &ctx()).await.unwrap();
    assert_eq!(counts.delivered(), 0);

    let metrics = datamailer_runtime::telemetry::render_prometheus();
    assert!(
        metrics.contains("datamailer_client_webhooks_total{outcome=\"delivered\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("datamailer_client_webhooks_total{outcome=\"retried\"}"));
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_500_on_the_last_attempt_fails_the_callback_with_its_status() {
    let Some(f) = fixture().await else { return };
    let (receiver, addr) = start_receiver(&[500]).await;
    f.set_client_webhook(&format!("http://{addr}/hook"), TOKEN)
        .await;
    let id = f.callback_id(f.event("delivered", json!({})).await).await;
    sqlx::query("UPDATE cmp_callbacks SET max_attempts = 1 WHERE id = $1")
        .bind(id)
        .execute(f.pool())
        .await
        .unwrap();
    let counts = webhooks::dispatch_due(&f.db, &settings("127.0.0.1"), &ctx())
        .await
        .unwrap();
    assert_eq!(counts.failed(), 1);
    let row = f.callback(id).await;
    assert_eq!(row.get::<String, _>("status"), "failed");
    assert_eq!(row.get::<i32, _>("attempt_count"), 1);
    assert_eq!(row.get::<Option<i32>, _>("response_status"), Some(500));
    assert!(row.get::<String, _>("last_error").starts_with("HTTP 500"));
    assert!(row
        .get::<Option<chrono::DateTime<chrono::Utc>>, _>("delivered_at")
        .is_none());
    assert_eq!(receiver.seen.lock().unwrap().values().sum::<u32>(), 1);
    // Failed is terminal.
    f.make_due(id).await;
    let counts = webhooks::dispatch_due(&f.db, &settings("127.0.0.1"), &ctx())
        .await
        .unwrap();
    assert_eq!(counts.failed() + counts.retried() + counts.delivered(), 0);
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_callback_whose_configuration_is_gone_fails_its_attempt_with_the_originals_message() {
    let Some(f) = fixture().await else { return };
    let (receiver, addr) = start_receiver(&[]).await;
    f.set_client_webhook(&format!("http://{addr}/hook"), TOKEN)
        .await;
    let id = f.callback_id(f.event("open", json!({})).await).await;
    f.set_client_webhook("", "").await;
    webhooks::dispatch_due(&f.db, &settings("127.0.0.1"), &ctx())
        .await
        .unwrap();
    let row = f.callback(id).await;
    assert_eq!(row.get::<String, _>("status"), "pending");
    assert_eq!(row.get::<i32, _>("attempt_count"), 1);
    assert_eq!(row.get::<Option<i32>, _>("response_status"), None);
    assert_eq!(row.get::<String, _>("last_error"), NOT_CONFIGURED);
    assert!(receiver.seen.lock().unwrap().is_empty());

    // The global fallback, once there, is where the next attempt goes (and is recorded).
    let (fallback, faddr) = start_receiver(&[]).await;
    f.set_fallback(&format!("http://{faddr}/hook"), TOKEN).await;
    f.make_due(id).await;
    webhooks::dispatch_due(&f.db, &settings("127.0.0.1"), &ctx())
        .await
        .unwrap();
    let row = f.callback(id).await;
    assert_eq!(row.get::<String, _>("status"), "delivered");
    assert_eq!(
        row.get::<String, _>("callback_url"),
        format!("http://{faddr}/hook")
    );
    assert_eq!(fallback.seen.lock().unwrap().values().sum::<u32>(), 1);
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_loopback_callback_url_is_refused_unless_its_host_is_allowed() {
    let Some(f) = fixture().await else { return };
    let (receiver, addr) = start_receiver(&[]).await;
    f.set_client_webhook(&format!("http://{addr}/hook"), TOKEN)
        .await;
    let id = f.callback_id(f.event("click", json!({})).await).await;

    // No allow list: refused before any connection.
    webhooks::dispatch_due(&f.db, &settings(""), &ctx())
        .await
        .unwrap();
    let row = f.callback(id).await;
    assert_eq!(row.get::<String, _>("status"), "pending");
    let error: String = row.get("last_error");
    assert!(
        error.contains("refused") && error.contains("loopback"),
        "{error}"
    );
    assert!(receiver.seen.lock().unwrap().is_empty());

    // A name that resolves to loopback is refused too (checked in the resolver).
    f.set_client_webhook(&format!("http://localhost:{}/hook", addr.port()), TOKEN)
        .await;
    f.make_due(id).await;
    webhooks::dispatch_due(&f.db, &settings("example.com"), &ctx())
        .await
        .unwrap();
    let error: String = f.callback(id).await.get("last_error");
    assert!(error.contains("refused"), "{error}");
    assert!(receiver.seen.lock().unwrap().is_empty());

    // Allowed by name: sent.
    f.make_due(id).await;
    webhooks::dispatch_due(&f.db, &settings("localhost"), &ctx())
        .await
        .unwrap();
    assert_eq!(f.callback(id).await.get::<String, _>("status"), "delivered");
    assert_eq!(receiver.seen.lock().unwrap().values().sum::<u32>(), 1);
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn two_dispatchers_racing_over_the_same_rows_deliver_each_exactly_once() {
    let Some(f) = fixture().await else { return };
    let (receiver, addr) = start_receiver(&[]).await;
    f.set_client_webhook(&format!("http://{addr}/hook"), TOKEN)
        .await;
    const N: i64 = 200;
    sqlx::query(
        "INSERT INTO email_events (contact_id, client_id, audience_id, event_type)
         SELECT $1, $2, $3, 'delivered' FROM generate_series(1, $4)",
    )
    .bind(f.contact_id)
    .bind(f.client_id)
    .bind(f.audience_id)
    .bind(N)
    .execute(f.pool())
    .await
    .unwrap();
    // Two dispatchers with their own pools, as two processes would have.
    let other = Db::connect(&f.test_db.url, &PoolSettings::default()).unwrap();
    let s = settings("127.0.0.1");
    let started = Instant::now();
    let c = ctx();
    let (a, b) = tokio::join!(
        webhooks::dispatch_due(&f.db, &s, &c),
        webhooks::dispatch_due(&other, &s, &c),
    );
    let elapsed = started.elapsed();
    let (a, b) = (a.unwrap(), b.unwrap());
    eprintln!(
        "{N} callbacks by two dispatchers in {elapsed:?} ({:.0}/s): {} and {}",
        N as f64 / elapsed.as_secs_f64(),
        a.delivered(),
        b.delivered()
    );
    assert_eq!(a.delivered() + b.delivered(), N as u64);
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), N as usize);
    assert!(seen.values().all(|&n| n == 1), "a callback was sent twice");
    let (delivered, once): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'delivered'),
                count(*) FILTER (WHERE attempt_count = 1 AND response_status = 200)
         FROM cmp_callbacks",
    )
    .fetch_one(f.pool())
    .await
    .unwrap();
    assert_eq!((delivered, once), (N, N));
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn the_maintenance_task_dispatches_and_reports() {
    let Some(f) = fixture().await else { return };
    let (receiver, addr) = start_receiver(&[503]).await;
    f.set_client_webhook(&format!("http://{addr}/hook"), TOKEN)
        .await;
    f.event("open", json!({})).await;
    f.event("click", json!({})).await;
    let task = DispatchWebhooks {
        db: f.db.clone(),
        settings: settings("127.0.0.1"),
    };
    assert_eq!(
        task.every(),
        Duration::ZERO,
        "due on every maintenance pass"
    );
    let report = task.run(&ctx()).await.unwrap();
    assert_eq!(report.acted_on, 2);
    assert_eq!(report.detail, "delivered 1, retrying 1, failed 0");
    assert_eq!(receiver.seen.lock().unwrap().values().sum::<u32>(), 2);
    let report = task.run(&ctx()).await.unwrap();
    assert_eq!(report.detail, "nothing due");
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn the_triggers_event_map_is_cores() {
    let Some(f) = fixture().await else { return };
    for event_type in [
        "queued",
        "skipped",
        "sent",
        "delivered",
        "open",
        "click",
        "subscribe",
        "unsubscribe",
        "bounce",
        "complaint",
        "failed",
    ] {
        for transactional in [false, true] {
            let sql: Option<String> =
                sqlx::query_scalar("SELECT client_webhook_event_type($1, $2)")
                    .bind(event_type)
                    .bind(transactional)
                    .fetch_one(f.pool())
                    .await
                    .unwrap();
            assert_eq!(
                sql.as_deref(),
                datamailer_core::webhooks::callback_event_type(event_type, transactional),
                "{event_type} transactional={transactional}"
            );
        }
    }
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_dispatcher_whose_claim_was_taken_over_settles_nothing() {
    use datamailer_runtime::source::outbox::OutboxSource;
    use datamailer_runtime::source::{Received, Settlement, Source};
    let Some(f) = fixture().await else { return };
    f.set_client_webhook("https://hooks.example.com/dm", "tok")
        .await;
    let id = f.callback_id(f.event("open", json!({})).await).await;
    let source = OutboxSource::new(f.db.clone(), webhooks::CALLBACKS);
    let take = || async {
        match source.receive(10).await.unwrap() {
            Received::Messages(m) => m,
            Received::Exhausted => panic!("not draining"),
        }
    };
    let first = take().await;
    assert_eq!(first.len(), 1);
    assert!(take().await.is_empty(), "claimed rows are invisible");
    // The first holder's visibility runs out; another dispatcher claims it.
    f.make_due(id).await;
    let second = take().await;
    assert_eq!(second[0].receive_count, 2);
    let report = source
        .settle(vec![(first[0].clone(), Settlement::Ack)])
        .await;
    assert_eq!(
        report.failures.len(),
        1,
        "the stale receipt settles nothing"
    );
    assert_eq!(f.callback(id).await.get::<String, _>("status"), "pending");
    // A counted retry keeps its reason; an uncounted one gives the attempt back and keeps it.
    let report = source
        .settle(vec![(
            second[0].clone(),
            Settlement::Retry {
                delay: Duration::ZERO,
                reason: "HTTP 502".into(),
                counted: true,
            },
        )])
        .await;
    assert!(report.is_ok());
    let third = take().await;
    let report = source
        .settle(vec![(
            third[0].clone(),
            Settlement::Retry {
                delay: Duration::from_secs(30),
                reason: "shutting down".into(),
                counted: false,
            },
        )])
        .await;
    assert!(report.is_ok());
    let row = f.callback(id).await;
    assert_eq!(row.get::<String, _>("last_error"), "HTTP 502");
    assert_eq!(row.get::<i32, _>("attempt_count"), 2);
    assert_eq!(row.get::<String, _>("status"), "pending");
    f.test_db.drop_db().await;
}
