//! Auth, 405 shapes, health, metrics, templates, senders and provisioning (facts §4, §6.8, §6.9).

mod common;

use axum::http::{Method, StatusCode};
use common::*;
use datamailer_runtime::producer::Producer;
use datamailer_web::provision::provision;
use datamailer_web::{router, AppState, WebConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

fn auth_error(code: &str) -> Value {
    json!({"error": {"code": code, "message": "Authentication credentials were not accepted."}})
}

#[tokio::test]
async fn auth_failures_are_401_with_codes_and_write_nothing() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let body = send_body("ada@example.com").to_string();
    let path = "/api/transactional/send";
    let good = format!("Bearer {}", ctx.a.api_key);
    let wrong_secret = format!("Bearer dm_{}_wrongsecret", ctx.a.public_id);
    for (header, code) in [
        (None, "missing_authorization"),
        (Some("Basic abc"), "invalid_authorization"),
        (Some("Bearer "), "invalid_authorization"),
        (Some("Bearer legacy-test-key"), "invalid_api_key"),
        (Some("Bearer dm_unknown123_secret"), "invalid_api_key"),
        (Some(wrong_secret.as_str()), "invalid_api_key"),
    ] {
        let (status, text) = ctx.raw(Method::POST, path, header, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            auth_error(code),
            "{header:?}"
        );
    }
    assert_eq!(ctx.count("contacts").await, 0);

    // Scheme is case-insensitive; success sets last_used_at.
    let lower = format!("bearer {}", ctx.a.api_key);
    let (status, _) = ctx
        .raw(Method::GET, "/api/client/senders", Some(&lower), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut used = None;
    for _ in 0..50 {
        used = sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT last_used_at FROM client_api_keys WHERE public_id = $1",
        )
        .bind(&ctx.a.public_id)
        .fetch_one(ctx.pool())
        .await
        .unwrap();
        if used.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        used.is_some(),
        "last_used_at set after a successful request"
    );

    // A second key works; revoking one leaves the other working.
    let second = provision(ctx.pool(), &scope("acme", "news", "shop", vec![]))
        .await
        .unwrap();
    assert_eq!(second.client_id, ctx.a.client_id);
    let second_auth = format!("Bearer {}", second.api_key);
    let (status, _) = ctx
        .raw(Method::GET, "/api/client/senders", Some(&second_auth), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    sqlx::query("UPDATE client_api_keys SET revoked_at = now() WHERE public_id = $1")
        .bind(&ctx.a.public_id)
        .execute(ctx.pool())
        .await
        .unwrap();
    let (status, text) = ctx
        .raw(Method::GET, "/api/client/senders", Some(&good), "")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        auth_error("invalid_api_key")
    );
    let (status, _) = ctx
        .raw(Method::GET, "/api/client/senders", Some(&second_auth), "")
        .await;
    assert_eq!(status, StatusCode::OK);

    // An inactive client.
    sqlx::query("UPDATE clients SET is_active = false WHERE id = $1")
        .bind(ctx.a.client_id)
        .execute(ctx.pool())
        .await
        .unwrap();
    let (status, text) = ctx.raw(Method::POST, path, Some(&second_auth), &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        auth_error("inactive_client")
    );
    assert_eq!(ctx.count("contacts").await, 0);
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn method_not_allowed_comes_before_auth() {
    let Some(ctx) = setup().await else { return };
    for (method, path, allowed) in [
        (
            Method::DELETE,
            "/api/transactional/templates/welcome",
            json!(["GET", "PUT"]),
        ),
        (
            Method::POST,
            "/api/transactional/messages/1",
            json!(["GET"]),
        ),
        (Method::POST, "/api/client/senders", json!(["GET", "PUT"])),
    ] {
        let (status, text) = ctx.raw(method.clone(), path, None, "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"error": {"code": "method_not_allowed", "allowed_methods": allowed}})
        );
    }
    // HEAD is not GET: the original's API views answer it 405 too (axum would run GET and
    // the handler's auth); a HEAD answer has no body.
    for path in [
        "/api/contacts",
        "/api/client/senders",
        "/api/contacts/erase",
    ] {
        let (status, text) = ctx.raw(Method::HEAD, path, None, "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "HEAD {path}");
        assert_eq!(text, "", "HEAD {path}");
    }
    // /api/transactional/send: a plain 405 with an empty body, before auth.
    let (status, text) = ctx
        .raw(Method::GET, "/api/transactional/send", None, "")
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(text, "");
    // Legacy /api/v1 paths are 404.
    let (status, _) = ctx
        .raw(Method::GET, "/api/v1/transactional/send", None, "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn health_checks_the_database() {
    let Some(ctx) = setup().await else { return };
    let (status, text) = ctx.raw(Method::GET, "/health/", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"status": "ok"})
    );

    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let app = router(AppState::new(
        dead,
        Producer::Postgres,
        WebConfig {
            public_base_url: "http://localhost".into(),
        },
    ));
    let resp = app
        .oneshot(
            axum::http::Request::get("/health/")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap(),
        json!({"status": "error", "checks": {"database": "unavailable"}})
    );
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn metrics_use_route_templates() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let (status, _) = ctx
        .call(
            Method::GET,
            "/api/transactional/messages/12345",
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = ctx
        .app
        .clone()
        .oneshot(
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4");
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains("datamailer_http_requests_total"), "{text}");
    assert!(
        text.contains("route=\"/api/transactional/messages/{message_id}\""),
        "{text}"
    );
    assert!(
        text.contains("datamailer_http_request_duration_seconds"),
        "{text}"
    );
    assert!(!text.contains("12345"), "no raw ids in labels");
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn templates_upsert_get_and_validate() {
    let Some(ctx) = setup().await else { return };
    let body = json!({
        "name": "Welcome",
        "subject": "Hello {{ name }}",
        "description": "First mail",
        "html_body": "<p>Hi</p>",
        "text_body": "Hi",
        "required_context": ["name"],
        "example_context": {"name": "Ada"},
        "default_sender_id": "billing",
    });
    let (status, resp) = ctx.put_template("welcome", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["created"], true);
    let t = &resp["template"];
    assert_eq!(t["key"], "welcome");
    assert_eq!(t["client"], "shop");
    assert_eq!(t["subject"], "Hello {{ name }}");
    assert_eq!(t["required_context"], json!(["name"]));
    assert_eq!(t["example_context"], json!({"name": "Ada"}));
    assert_eq!(t["default_sender_id"], "billing");
    assert_eq!(t["is_transactional"], true);
    assert_eq!(t["is_active"], true);

    let mut update = body.clone();
    update["subject"] = json!("Welcome back");
    update["is_active"] = json!(false);
    let (status, resp) = ctx.put_template("welcome", update).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp["created"], false);
    assert_eq!(resp["template"]["subject"], "Welcome back");

    // GET returns the template unwrapped, inactive ones too.
    let (status, got) = ctx
        .call(
            Method::GET,
            "/api/transactional/templates/welcome",
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["key"], "welcome");
    assert_eq!(got["subject"], "Welcome back");
    assert_eq!(got["is_active"], false);
    assert_eq!(ctx.count("email_templates").await, 1);

    // Unknown sender, unknown key, bad key, bad field types.
    let mut bad = body.clone();
    bad["default_sender_id"] = json!("marketing");
    let (status, resp) = ctx.put_template("other", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        resp["error"]["fields"],
        json!({"default_sender_id": "not_configured"})
    );
    let (status, resp) = ctx
        .call(
            Method::GET,
            "/api/transactional/templates/nope",
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        resp["error"]["fields"],
        json!({"template_key": "not_found"})
    );
    let (status, resp) = ctx.put_template("bad%20key", body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["error"]["fields"], json!({"template_key": "invalid"}));
    let long = "k".repeat(121);
    let (status, _) = ctx.put_template(&long, body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for field in [
        "name",
        "subject",
        "required_context",
        "example_context",
        "is_active",
    ] {
        let mut bad = body.clone();
        bad[field] = json!(12);
        let (status, resp) = ctx.put_template("typed", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}");
        assert!(
            resp["error"]["fields"].get(field).is_some(),
            "{field}: {resp}"
        );
    }
    assert_eq!(ctx.count("email_templates").await, 1);
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn senders_get_and_put() {
    let Some(ctx) = setup().await else { return };
    let (status, got) = ctx
        .call(Method::GET, "/api/client/senders", &ctx.a.api_key, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        got,
        json!({
            "client": {"organization": "acme", "slug": "shop", "name": "shop"},
            "default_sender_id": "support",
            "senders": [
                {"id": "support", "email": "support@example.com"},
                {"id": "billing", "email": "Billing Team <billing@example.com>"},
            ],
        })
    );
    let (status, put) = ctx
        .call(
            Method::PUT,
            "/api/client/senders",
            &ctx.a.api_key,
            Some(json!({"senders": [
                {"id": "news", "email": "News <news@example.com>"},
                {"id": "ops", "email": "ops@example.com"},
            ], "default_sender_id": "ops"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["default_sender_id"], "ops");
    assert_eq!(
        put["senders"][0],
        json!({"id": "news", "email": "News <news@example.com>"})
    );
    let (_, got) = ctx
        .call(Method::GET, "/api/client/senders", &ctx.a.api_key, None)
        .await;
    assert_eq!(got, put);

    // The new set is used by sends: the old default is gone.
    ctx.welcome_template().await;
    let (status, resp) = ctx.send(send_body("a@example.com")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(resp["message"]["from_email"], "ops");
    let mut body = send_body("a@example.com");
    body["from_email"] = json!("support");
    let (status, resp) = ctx.send(body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["error"]["fields"]["from_email"], "not_configured");

    // An invalid default is refused and changes nothing.
    let (status, resp) = ctx
        .call(
            Method::PUT,
            "/api/client/senders",
            &ctx.a.api_key,
            Some(json!({"senders": [{"id": "x", "email": "x@example.com"}], "default_sender_id": "y"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        resp["error"]["fields"]["default_sender_id"],
        "not_configured"
    );
    let (_, after) = ctx
        .call(Method::GET, "/api/client/senders", &ctx.a.api_key, None)
        .await;
    assert_eq!(after, put);
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn provisioning_is_idempotent_for_the_scope() {
    let Some(ctx) = setup().await else { return };
    let again = provision(ctx.pool(), &scope("acme", "news", "shop", vec![]))
        .await
        .unwrap();
    assert_eq!(again.organization_id, ctx.a.organization_id);
    assert_eq!(again.audience_id, ctx.a.audience_id);
    assert_eq!(again.client_id, ctx.a.client_id);
    assert_ne!(again.public_id, ctx.a.public_id);
    assert!(again
        .api_key
        .starts_with(&format!("dm_{}_", again.public_id)));
    // Senders kept when none are given.
    let (_, got) = ctx
        .call(Method::GET, "/api/client/senders", &again.api_key, None)
        .await;
    assert_eq!(got["default_sender_id"], "support");
    assert_eq!(got["senders"].as_array().unwrap().len(), 2);
    // Only hashes are stored.
    let hashes: Vec<String> = sqlx::query_scalar("SELECT key_hash FROM client_api_keys")
        .fetch_all(ctx.pool())
        .await
        .unwrap();
    assert_eq!(hashes.len(), 2);
    assert!(hashes
        .iter()
        .all(|h| h.starts_with("sha256$") && !h.contains(&again.api_key)));
    // Replacing senders with an explicit default; a named key must be unique among active keys.
    let mut req = scope(
        "acme",
        "news",
        "shop",
        vec![
            sender("a", "a@example.com"),
            sender("b", "B <b@example.com>"),
        ],
    );
    req.default_sender = Some("b".into());
    req.key_name = Some("deploy".into());
    provision(ctx.pool(), &req).await.unwrap();
    let (_, got) = ctx
        .call(Method::GET, "/api/client/senders", &again.api_key, None)
        .await;
    assert_eq!(got["default_sender_id"], "b");
    let err = provision(ctx.pool(), &req).await.unwrap_err();
    assert!(err.to_string().contains("deploy"), "{err}");
    let mut bad = scope("acme", "news", "shop", vec![sender("a", "a@example.com")]);
    bad.default_sender = Some("zzz".into());
    assert!(provision(ctx.pool(), &bad)
        .await
        .unwrap_err()
        .to_string()
        .contains("--default-sender"));
    assert_eq!(ctx.count("organizations").await, 1);
    assert_eq!(ctx.count("clients").await, 1);
    ctx.db.drop_db().await;
}

/// A key moved over from the original: `dm_<public_id>_<secret>` with Django's PBKDF2 hash
/// (`hashlib.pbkdf2_hmac('sha256', key, salt, 1000)`, as `make_password` stores it).
const LEGACY_RAW: &str = "dm_legacyKey01_s3cr3t-value";
const LEGACY_HASH: &str =
    "pbkdf2_sha256$1000$a1b2c3d4e5f6g7h8$Ll9aNm3oZMUU2KFKbNZZ7C60TVMvbHltL4v06ISX84E=";

const LEGACY_REVOKED_HASH: &str =
    "pbkdf2_sha256$1000$a1b2c3d4e5f6g7h8$hiq86wYL+3tkU1BhH69CcwoNo9roEK1vJ5CAtBmwOjk=";

#[tokio::test]
async fn an_original_pbkdf2_key_works_once_verified_then_takes_the_fast_path() {
    let Some(ctx) = setup().await else { return };
    let insert =
        |public_id: &'static str, name: &'static str, hash: &'static str, revoked: bool| {
            let pool = ctx.pool().clone();
            let client = ctx.a.client_id;
            async move {
                sqlx::query(
                    "INSERT INTO client_api_keys (client_id, name, key_hash, public_id, revoked_at)
                 VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)",
                )
                .bind(client)
                .bind(name)
                .bind(hash)
                .bind(public_id)
                .bind(revoked)
                .execute(&pool)
                .await
                .unwrap();
            }
        };
    insert("legacyKey01", "imported", LEGACY_HASH, false).await;
    let senders = |key: &'static str| ctx.call(Method::GET, "/api/client/senders", key, None);

    // A wrong secret for the legacy key: refused, and the legacy hash stays.
    let (s, body) = senders("dm_legacyKey01_wrong").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body, auth_error("invalid_api_key"));
    let stored: String =
        sqlx::query_scalar("SELECT key_hash FROM client_api_keys WHERE public_id = 'legacyKey01'")
            .fetch_one(ctx.pool())
            .await
            .unwrap();
    assert_eq!(stored, LEGACY_HASH);

    // The right one: accepted, and rehashed to ours so the next request is fast.
    let (s, body) = senders(LEGACY_RAW).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["client"]["slug"], "shop");
    let stored: String =
        sqlx::query_scalar("SELECT key_hash FROM client_api_keys WHERE public_id = 'legacyKey01'")
            .fetch_one(ctx.pool())
            .await
            .unwrap();
    assert_eq!(stored, datamailer_core::apikey::hash(LEGACY_RAW));
    let (s, _) = senders(LEGACY_RAW).await;
    assert_eq!(s, StatusCode::OK);

    // A revoked legacy key stays revoked.
    sqlx::query("UPDATE client_api_keys SET revoked_at = now() WHERE public_id = 'legacyKey01'")
        .execute(ctx.pool())
        .await
        .unwrap();
    let (s, body) = senders(LEGACY_RAW).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    // Its own hash is right (made like LEGACY_HASH), but the key was revoked before the move.
    insert("legacyKey02", "imported-revoked", LEGACY_REVOKED_HASH, true).await;
    let (s, _) = senders("dm_legacyKey02_s3cr3t-value").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn health_without_the_slash_redirects_permanently_as_django_does() {
    let Some(ctx) = setup().await else { return };
    let resp = ctx
        .app
        .clone()
        .oneshot(
            axum::http::Request::get("/health?probe=lb")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(resp.headers()["location"], "/health/?probe=lb");
}
