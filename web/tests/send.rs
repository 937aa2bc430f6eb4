//! POST /api/transactional/send and GET /api/transactional/messages/{id} (facts §3.2, §4.6, §6.9).

mod common;

use axum::http::{Method, StatusCode};
use common::*;
use datamailer_core::contracts::TransactionalEmailV1;
use datamailer_web::provision::provision;
use serde_json::{json, Value};

/// (event_type, metadata, client_id, contact_id, audience_id).
type EventRow = (String, Value, Option<i64>, Option<i64>, Option<i64>);

#[tokio::test]
async fn full_send_persists_renders_and_enqueues() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let body = json!({
        "email": "  Ada.Lovelace@Example.COM ",
        "template_key": "welcome",
        "idempotency_key": "signup-1",
        "context": {"name": "Ada", "reset_url": "https://example.com/r?a=1&b=2"},
        "metadata": {"user_id": 42},
        "reply_to": "help@example.com",
        "cc": "boss@example.com",
        "bcc": ["audit@example.com"],
        "headers": {"X-Campaign": "signup"},
        "message_parts": [{"content_type": "text/calendar", "content": "BEGIN:VCALENDAR"}],
    });
    let (status, resp) = ctx.send(body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let m = &resp["message"];
    assert_eq!(m["email"], "ada.lovelace@example.com");
    assert_eq!(m["from_email"], "support");
    assert_eq!(m["from_email_address"], "support@example.com");
    assert_eq!(m["reply_to"], "help@example.com");
    assert_eq!(m["cc"], json!(["boss@example.com"]));
    assert_eq!(m["bcc"], json!(["audit@example.com"]));
    assert_eq!(m["status"], "queued");
    assert_eq!(m["template_key"], "welcome");
    assert_eq!(m["idempotency_key"], "signup-1");
    assert!(m["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(resp["idempotent_replay"], false);
    assert_eq!(resp["enqueued"], true);
    let id = m["id"].as_i64().unwrap();

    // The stored row: rendered, normalized, sender id and address, exact metadata.
    let row: (
        String,
        String,
        String,
        String,
        String,
        String,
        Value,
        Value,
        i64,
    ) = sqlx::query_as(
        "SELECT email, from_email_id, from_email, subject, text_body, status, metadata, context, \
         contact_id FROM transactional_messages WHERE id = $1",
    )
    .bind(id)
    .fetch_one(ctx.pool())
    .await
    .unwrap();
    assert_eq!(row.0, "ada.lovelace@example.com");
    assert_eq!(
        (row.1.as_str(), row.2.as_str()),
        ("support", "support@example.com")
    );
    assert_eq!(row.3, "Hello Ada");
    assert_eq!(row.4, "Hi Ada, reset: https://example.com/r?a=1&b=2");
    assert_eq!(row.5, "queued");
    let expected_meta = datamailer_core::transactional::SendRequest::parse(&body)
        .unwrap()
        .message_metadata();
    assert_eq!(row.6, Value::Object(expected_meta));
    assert_eq!(row.6["user_id"], 42);
    assert_eq!(row.6["cc"], json!(["boss@example.com"]));
    assert_eq!(row.6["reply_to"], "help@example.com");
    assert_eq!(row.6["headers"]["X-Campaign"], "signup");
    assert!(row.6["message_parts"].is_array());
    assert_eq!(row.7["name"], "Ada");

    // The contact: raw email kept, normalized unique.
    let (email, normalized): (String, String) =
        sqlx::query_as("SELECT email, normalized_email FROM contacts WHERE id = $1")
            .bind(row.8)
            .fetch_one(ctx.pool())
            .await
            .unwrap();
    assert_eq!(email, "Ada.Lovelace@Example.COM");
    assert_eq!(normalized, "ada.lovelace@example.com");

    // One queued event with {template_key}, client and contact set, audience null.
    let events: Vec<EventRow> = sqlx::query_as(
        "SELECT event_type, metadata, client_id, contact_id, audience_id FROM email_events \
         WHERE transactional_message_id = $1",
    )
    .bind(id)
    .fetch_all(ctx.pool())
    .await
    .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "queued");
    assert_eq!(events[0].1, json!({"template_key": "welcome"}));
    assert_eq!(events[0].2, Some(ctx.a.client_id));
    assert_eq!(events[0].3, Some(row.8));
    assert_eq!(events[0].4, None);

    // One queue message that passes the contract and carries every id and the metadata.
    let bodies: Vec<String> =
        sqlx::query_scalar("SELECT body FROM queue_messages WHERE queue = 'transactional-email'")
            .fetch_all(ctx.pool())
            .await
            .unwrap();
    assert_eq!(bodies.len(), 1);
    let payload = TransactionalEmailV1::parse(&bodies[0]).unwrap();
    assert_eq!(payload.transactional_message_id, id);
    assert_eq!(payload.client_id, ctx.a.client_id);
    assert_eq!(payload.idempotency_key, "signup-1");
    assert_eq!(payload.contact_id, Some(row.8));
    assert!(payload.template_id.is_some());
    assert_eq!(payload.template_key.as_deref(), Some("welcome"));
    assert_eq!(Value::Object(payload.metadata.unwrap()), row.6);
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn send_without_key_generates_one_and_needs_no_subscription() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let (status, resp) = ctx.send(send_body("new@example.com")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let key = resp["message"]["idempotency_key"].as_str().unwrap();
    let hex = key.strip_prefix("transactional-message:").unwrap();
    assert_eq!(hex.len(), 32);
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    // Two sends without a key are two messages.
    let (status, _) = ctx.send(send_body("new@example.com")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(ctx.counts().await, (1, 2, 2, 2));
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn message_status_shows_events_and_hides_other_clients() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let (_, resp) = ctx.send(send_body("ada@example.com")).await;
    let id = resp["message"]["id"].as_i64().unwrap();
    // A later event with metadata that must be filtered.
    sqlx::query(
        "INSERT INTO email_events (transactional_message_id, client_id, event_type, metadata) \
         VALUES ($1, $2, 'sent', $3)",
    )
    .bind(id)
    .bind(ctx.a.client_id)
    .bind(json!({"ses_message_id": "ses-1", "sent_at": "2026-01-01T00:00:00Z", "token": "secret"}))
    .execute(ctx.pool())
    .await
    .unwrap();

    let path = format!("/api/transactional/messages/{id}");
    let (status, body) = ctx.call(Method::GET, &path, &ctx.a.api_key, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let m = &body["message"];
    assert_eq!(m["type"], "transactional_message");
    assert_eq!(m["id"], id);
    assert_eq!(m["client"], "shop");
    assert_eq!(m["email"], "ada@example.com");
    assert_eq!(m["from_email"], "support");
    assert_eq!(m["from_email_address"], "support@example.com");
    assert_eq!(m["status"], "queued");
    assert_eq!(m["subject"], "Hello Ada");
    assert_eq!(m["sent_at"], Value::Null);
    assert_eq!(m["open_count"], 0);
    assert_eq!(m["ses_message_id"], "");
    assert!(m["contact_id"].is_i64());
    assert!(m["updated_at"].is_string());
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_type"], "sent", "newest first");
    assert_eq!(events[0]["type"], "email_event");
    assert_eq!(events[0]["client"], "shop");
    assert_eq!(events[0]["audience"], Value::Null);
    assert_eq!(events[0]["transactional_message_id"], id);
    assert_eq!(
        events[0]["metadata"],
        json!({"ses_message_id": "ses-1", "sent_at": "2026-01-01T00:00:00Z"})
    );
    assert_eq!(events[1]["event_type"], "queued");
    assert_eq!(events[1]["metadata"], json!({"template_key": "welcome"}));

    // Another client (other organization) cannot see it; unknown and non-numeric ids are 404.
    let b = provision(
        ctx.pool(),
        &scope(
            "other",
            "aud",
            "rival",
            vec![sender("s", "s@rival.example")],
        ),
    )
    .await
    .unwrap();
    for (key, path) in [
        (&b.api_key, path.clone()),
        (
            &ctx.a.api_key,
            "/api/transactional/messages/999999".to_string(),
        ),
        (
            &ctx.a.api_key,
            "/api/transactional/messages/abc".to_string(),
        ),
    ] {
        let (status, body) = ctx.call(Method::GET, &path, key, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            body,
            json!({"error": {"code": "validation_error", "fields": {"message_id": "not_found"}}})
        );
    }
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn idempotent_replay_enqueues_once_and_skips_context_validation() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let mut body = send_body("ada@example.com");
    body["idempotency_key"] = json!("order-7");
    let (status, first) = ctx.send(body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Same key, context now missing: still a replay of the first message.
    body["context"] = json!({});
    let (status, second) = ctx.send(body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_eq!(second["idempotent_replay"], true);
    assert_eq!(second["enqueued"], false);
    assert_eq!(second["message"], first["message"]);
    assert_eq!(ctx.counts().await, (1, 1, 1, 1));
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn concurrent_first_sends_with_one_key_make_one_message() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let sends = (0..10).map(|i| {
        let mut body = send_body(&format!("user{}@example.com", i % 3));
        body["idempotency_key"] = json!("race-1");
        ctx.send(body)
    });
    let results = futures::future::join_all(sends).await;
    let mut ids = std::collections::HashSet::new();
    let mut fresh = 0;
    for (status, body) in &results {
        assert_eq!(*status, StatusCode::ACCEPTED, "{body}");
        ids.insert(body["message"]["id"].as_i64().unwrap());
        if body["idempotent_replay"] == false {
            fresh += 1;
        }
    }
    assert_eq!(ids.len(), 1, "every answer names the same message");
    assert_eq!(fresh, 1, "exactly one send created it");
    assert_eq!(ctx.count("transactional_messages").await, 1);
    assert_eq!(ctx.count("email_events").await, 1);
    assert_eq!(ctx.count("queue_messages").await, 1);
    ctx.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_really_race_on_a_multi_thread_runtime() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let ctx = std::sync::Arc::new(ctx);
    let rt_handles: Vec<_> = (0..10)
        .map(|i| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut body = send_body(&format!("racer{i}@example.com"));
                body["idempotency_key"] = json!("race-2");
                ctx.send(body).await
            })
        })
        .collect();
    for h in rt_handles {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    assert_eq!(ctx.count("transactional_messages").await, 1);
    assert_eq!(ctx.count("queue_messages").await, 1);
    if let Ok(ctx) = std::sync::Arc::try_unwrap(ctx) {
        ctx.db.drop_db().await;
    }
}

#[tokio::test]
async fn missing_required_context_writes_nothing() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let mut body = send_body("ada@example.com");
    body["context"] = json!({"name": "Ada", "reset_url": ""});
    let (status, resp) = ctx.send(body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        resp,
        json!({"error": {"code": "validation_error", "fields": {"context.reset_url": "required"}}})
    );
    assert_eq!(ctx.counts().await, (0, 0, 0, 0));
    ctx.db.drop_db().await;
}

async fn suppress(ctx: &Ctx, email: &str, column: &str) {
    sqlx::query(&format!(
        "INSERT INTO contacts (email, normalized_email, {column}) VALUES ($1, $1, now())"
    ))
    .bind(email)
    .execute(ctx.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn suppressed_contacts_get_409_and_a_skipped_row() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    for (email, column, reason) in [
        ("bounced@example.com", "hard_bounced_at", "hard_bounce"),
        ("angry@example.com", "complained_at", "complaint"),
    ] {
        suppress(&ctx, email, column).await;
        let (status, resp) = ctx.send(send_body(email)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{resp}");
        assert_eq!(
            resp["error"],
            json!({
                "code": "transactional_suppressed",
                "message": "Contact is hard-suppressed for transactional email.",
                "reason": reason,
            })
        );
        assert_eq!(resp["message"]["status"], "skipped");
        assert_eq!(resp["enqueued"], false);
        assert_eq!(resp["idempotent_replay"], false);
        let id = resp["message"]["id"].as_i64().unwrap();
        let (status, last_error): (String, String) =
            sqlx::query_as("SELECT status, last_error FROM transactional_messages WHERE id = $1")
                .bind(id)
                .fetch_one(ctx.pool())
                .await
                .unwrap();
        assert_eq!((status.as_str(), last_error.as_str()), ("skipped", reason));
        let events: Vec<(String, Value)> = sqlx::query_as(
            "SELECT event_type, metadata FROM email_events WHERE transactional_message_id = $1",
        )
        .bind(id)
        .fetch_all(ctx.pool())
        .await
        .unwrap();
        assert_eq!(
            events,
            vec![("skipped".to_string(), json!({"reason": reason}))]
        );
    }
    assert_eq!(ctx.count("queue_messages").await, 0);
    // Global unsubscribe alone does not block transactional mail.
    suppress(&ctx, "unsub@example.com", "global_unsubscribed_at").await;
    let (status, _) = ctx.send(send_body("unsub@example.com")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn category_opt_out_and_scope_checks() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let contact_id: i64 = sqlx::query_scalar(
        "INSERT INTO contacts (email, normalized_email) VALUES ($1, $1) RETURNING id",
    )
    .bind("optout@example.com")
    .fetch_one(ctx.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO category_preferences (contact_id, audience_id, client_id, tag, enabled) \
         VALUES ($1, $2, $3, 'course-updates', false)",
    )
    .bind(contact_id)
    .bind(ctx.a.audience_id)
    .bind(ctx.a.client_id)
    .execute(ctx.pool())
    .await
    .unwrap();
    let with_category = |email: &str| {
        let mut body = send_body(email);
        body["category_tag"] = json!("course-updates");
        body["audience"] = json!("news");
        body["client"] = json!("shop");
        body
    };
    let (status, resp) = ctx.send(with_category("optout@example.com")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    assert_eq!(resp["error"]["reason"], "category_unsubscribe");
    assert_eq!(ctx.count("queue_messages").await, 0);
    let metadata: Value =
        sqlx::query_scalar("SELECT metadata FROM transactional_messages WHERE status = 'skipped'")
            .fetch_one(ctx.pool())
            .await
            .unwrap();
    assert_eq!(metadata["category_tag"], "course-updates");

    // Another contact with the category enabled (no preference row) is sent.
    let (status, _) = ctx.send(with_category("fine@example.com")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // A globally unsubscribed contact is blocked once a category is given.
    suppress(&ctx, "gone@example.com", "global_unsubscribed_at").await;
    let (status, resp) = ctx.send(with_category("gone@example.com")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(resp["error"]["reason"], "global_unsubscribe");

    let before = ctx.counts().await;
    let mut body = with_category("x@example.com");
    body["audience"] = json!("nope");
    let (status, resp) = ctx.send(body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["error"]["fields"], json!({"audience": "not_found"}));
    let mut body = with_category("x@example.com");
    body["client"] = json!("someone-else");
    let (status, resp) = ctx.send(body).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(resp["error"]["fields"]["client"], "forbidden");
    let mut body = send_body("x@example.com");
    body["category_tag"] = json!("course-updates");
    let (status, resp) = ctx.send(body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(resp["error"]["fields"]["audience"].is_string());
    assert_eq!(ctx.counts().await, before, "scope errors write nothing");
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn sender_selection() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    // Client default.
    let (status, resp) = ctx.send(send_body("a@example.com")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(resp["message"]["from_email"], "support");
    // Explicit allowed id with a display name.
    let mut body = send_body("b@example.com");
    body["from_email"] = json!("billing");
    let (status, resp) = ctx.send(body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["message"]["from_email"], "billing");
    assert_eq!(
        resp["message"]["from_email_address"],
        "Billing Team <billing@example.com>"
    );
    // Template default.
    let (status, _) = ctx
        .put_template(
            "invoice",
            json!({"name": "Invoice", "subject": "Invoice", "text_body": "Pay", "default_sender_id": "billing"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, resp) = ctx
        .send(json!({"email": "c@example.com", "template_key": "invoice"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(resp["message"]["from_email"], "billing");
    let stored: String =
        sqlx::query_scalar("SELECT from_email FROM transactional_messages WHERE id = $1")
            .bind(resp["message"]["id"].as_i64().unwrap())
            .fetch_one(ctx.pool())
            .await
            .unwrap();
    assert_eq!(stored, "Billing Team <billing@example.com>");

    let before = ctx.counts().await;
    for (from, reason) in [
        ("marketing", "not_configured"),
        ("someone@example.com", "invalid"),
    ] {
        let mut body = send_body("d@example.com");
        body["from_email"] = json!(from);
        let (status, resp) = ctx.send(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{from}: {resp}");
        assert_eq!(resp["error"]["fields"]["from_email"], reason, "{from}");
    }
    // A client with no senders at all.
    let bare = provision(ctx.pool(), &scope("acme", "news", "bare", vec![]))
        .await
        .unwrap();
    let path = "/api/transactional/templates/welcome";
    let (status, _) = ctx
        .call(
            Method::PUT,
            path,
            &bare.api_key,
            Some(json!({"name": "W", "subject": "Hi"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, resp) = ctx
        .call(
            Method::POST,
            "/api/transactional/send",
            &bare.api_key,
            Some(json!({"email": "e@example.com", "template_key": "welcome"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["error"]["fields"]["from_email"], "not_configured");
    assert_eq!(ctx.counts().await, before, "sender errors write nothing");
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn unusable_templates_are_404_and_create_no_contact() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    ctx.put_template(
        "old",
        json!({"name": "Old", "subject": "Old", "is_active": false}),
    )
    .await;
    sqlx::query(
        "INSERT INTO email_templates (client_id, key, name, subject, is_transactional) \
         VALUES ($1, 'campaign-only', 'C', 'C', false)",
    )
    .bind(ctx.a.client_id)
    .execute(ctx.pool())
    .await
    .unwrap();
    for key in ["old", "campaign-only", "missing"] {
        let (status, resp) = ctx
            .send(json!({"email": "a@example.com", "template_key": key}))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{key}");
        assert_eq!(
            resp,
            json!({"error": {"code": "validation_error", "fields": {"template_key": "not_found"}}})
        );
    }
    assert_eq!(ctx.counts().await, (0, 0, 0, 0));
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn each_invalid_field_is_named_and_nothing_is_written() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let cases: Vec<(&str, Value)> = vec![
        ("email", json!({"email": "not-an-email"})),
        ("email", json!({"email": null})),
        ("template_key", json!({"template_key": ""})),
        ("context", json!({"context": "x"})),
        ("metadata", json!({"metadata": [1]})),
        ("reply_to", json!({"reply_to": "nope"})),
        ("cc.0", json!({"cc": ["bad"]})),
        ("bcc", json!({"bcc": 5})),
        ("headers", json!({"headers": "x"})),
        ("headers.Subject", json!({"headers": {"Subject": "x"}})),
        (
            "message_parts.0.content_type",
            json!({"message_parts": [{"content": "x"}]}),
        ),
        ("idempotency_key", json!({"idempotency_key": 5})),
        ("dry_run", json!({"dry_run": "yes"})),
    ];
    for (field, patch) in cases {
        let mut body = send_body("ada@example.com");
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, resp) = ctx.send(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {resp}");
        assert_eq!(resp["error"]["code"], "validation_error");
        assert!(
            resp["error"]["fields"].get(field).is_some(),
            "{field} not named in {resp}"
        );
    }
    // Body-level errors.
    let auth = format!("Bearer {}", ctx.a.api_key);
    let (status, text) = ctx
        .raw(
            Method::POST,
            "/api/transactional/send",
            Some(&auth),
            "{not json",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("invalid_json"));
    let (status, text) = ctx
        .raw(Method::POST, "/api/transactional/send", Some(&auth), "[1]")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("must_be_object"));
    let (status, text) = ctx
        .raw(Method::POST, "/api/transactional/send", Some(&auth), "")
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "empty body is {{}}: email required"
    );
    assert!(text.contains("\"email\""));
    assert_eq!(ctx.counts().await, (0, 0, 0, 0));
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn long_subject_and_render_errors_are_400() {
    let Some(ctx) = setup().await else { return };
    ctx.put_template(
        "echo",
        json!({"name": "Echo", "subject": "{{ s }}", "text_body": "x"}),
    )
    .await;
    let (status, resp) = ctx
        .send(json!({"email": "a@example.com", "template_key": "echo", "context": {"s": "x".repeat(999)}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["error"]["fields"], json!({"subject": "too_long"}));
    let (status, _) = ctx
        .send(json!({"email": "a@example.com", "template_key": "echo", "context": {"s": "x".repeat(998)}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn dry_run_renders_and_writes_nothing() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let mut body = send_body("Fresh@Example.com");
    body["dry_run"] = json!(true);
    let (status, resp) = ctx.send(body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["message"]["id"], Value::Null);
    assert_eq!(resp["message"]["created_at"], Value::Null);
    assert_eq!(resp["message"]["email"], "fresh@example.com");
    assert_eq!(resp["message"]["status"], "queued");
    assert_eq!(resp["enqueued"], false);
    assert_eq!(resp["idempotent_replay"], false);
    assert_eq!(resp["would_deliver"], true);
    assert_eq!(resp["delivery_decision"]["allowed"], true);
    assert_eq!(resp["rendered"]["subject"], "Hello Ada");
    assert_eq!(
        resp["rendered"]["text_body"],
        "Hi Ada, reset: https://example.com/reset"
    );
    assert_eq!(
        ctx.counts().await,
        (0, 0, 0, 0),
        "a dry run writes nothing, not even the contact"
    );

    // A suppressed contact: still 202, rendered, would_deliver false.
    suppress(&ctx, "bounced@example.com", "hard_bounced_at").await;
    let mut body = send_body("bounced@example.com");
    body["dry_run"] = json!(true);
    let (status, resp) = ctx.send(body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(resp["would_deliver"], false);
    assert_eq!(resp["delivery_decision"]["reason"], "hard_bounce");
    assert_eq!(resp["message"]["status"], "skipped");
    assert_eq!(resp["rendered"]["subject"], "Hello Ada");
    assert_eq!(ctx.counts().await, (1, 0, 0, 0));

    // Same validation as a real send; unknown template 404; no auth 401.
    let mut body = send_body("a@example.com");
    body["dry_run"] = json!(true);
    body["context"] = json!({});
    let (status, resp) = ctx.send(body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["error"]["fields"]["context.name"], "required");
    body["template_key"] = json!("nope");
    let (status, _) = ctx.send(body.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, text) = ctx
        .raw(
            Method::POST,
            "/api/transactional/send",
            None,
            &body.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("missing_authorization"));

    // A real send afterwards still persists and enqueues.
    let (status, resp) = ctx.send(send_body("fresh@example.com")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(resp["enqueued"], true);
    assert_eq!(ctx.counts().await, (2, 1, 1, 1));
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn tenants_are_isolated() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let b = provision(
        ctx.pool(),
        &scope(
            "globex",
            "list",
            "rival",
            vec![sender("s", "s@globex.example")],
        ),
    )
    .await
    .unwrap();
    // B cannot read A's template nor send with it.
    let (status, _) = ctx
        .call(
            Method::GET,
            "/api/transactional/templates/welcome",
            &b.api_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, resp) = ctx
        .call(
            Method::POST,
            "/api/transactional/send",
            &b.api_key,
            Some(send_body("a@example.com")),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(resp["error"]["fields"]["template_key"], "not_found");
    assert_eq!(ctx.counts().await, (0, 0, 0, 0));

    // B's own template with the same key is B's; the same idempotency key is per client.
    let (status, _) = ctx
        .call(
            Method::PUT,
            "/api/transactional/templates/welcome",
            &b.api_key,
            Some(json!({"name": "B", "subject": "From B"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut body = send_body("a@example.com");
    body["idempotency_key"] = json!("shared");
    let (_, from_a) = ctx.send(body.clone()).await;
    let (status, from_b) = ctx
        .call(
            Method::POST,
            "/api/transactional/send",
            &b.api_key,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{from_b}");
    assert_eq!(from_b["idempotent_replay"], false);
    assert_ne!(from_a["message"]["id"], from_b["message"]["id"]);
    let subject: String =
        sqlx::query_scalar("SELECT subject FROM transactional_messages WHERE id = $1")
            .bind(from_b["message"]["id"].as_i64().unwrap())
            .fetch_one(ctx.pool())
            .await
            .unwrap();
    assert_eq!(subject, "From B");
    // A cannot see B's message.
    let path = format!("/api/transactional/messages/{}", from_b["message"]["id"]);
    let (status, _) = ctx.call(Method::GET, &path, &ctx.a.api_key, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    ctx.db.drop_db().await;
}

/// SQS cannot join the transaction: when the post-commit send fails the answer is still 202
/// with `enqueued: false`, and the row stays `queued` for the stale-row sweeper (fixes the
/// original's 500-after-commit).
#[tokio::test]
async fn failed_post_commit_enqueue_still_answers_202() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:1")
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "x", "y", None, None, "test",
        ))
        .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
        .build();
    let urls = [(
        "transactional-email".to_string(),
        "http://127.0.0.1:1/000000000000/transactional-email".to_string(),
    )]
    .into_iter()
    .collect();
    let producer = datamailer_runtime::producer::Producer::Sqs(
        datamailer_runtime::producer::SqsProducer::new(
            aws_sdk_sqs::Client::from_conf(config),
            urls,
        ),
    );
    let app = datamailer_web::router(datamailer_web::AppState::new(
        ctx.pool().clone(),
        producer,
        datamailer_web::WebConfig {
            public_base_url: "http://localhost".into(),
        },
    ));
    let ctx = Ctx { app, ..ctx };
    let (status, resp) = ctx.send(send_body("ada@example.com")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["enqueued"], false);
    assert_eq!(resp["message"]["status"], "queued");
    let status: String = sqlx::query_scalar("SELECT status FROM transactional_messages")
        .fetch_one(ctx.pool())
        .await
        .unwrap();
    assert_eq!(status, "queued");
    assert_eq!(
        ctx.count("queue_messages").await,
        0,
        "SQS mode writes no embedded queue rows"
    );
    ctx.db.drop_db().await;
}
