//! `GET|PUT /api/client/webhook` and the stored global fallback, against real Postgres.

mod common;

use axum::http::{Method, StatusCode};
use common::{scope, setup, Ctx};
use datamailer_runtime::outbound::OutboundPolicy;
use datamailer_runtime::producer::Producer;
use datamailer_web::provision::provision;
use datamailer_web::{router, AppState, WebConfig};
use serde_json::{json, Value};

const PATH: &str = "/api/client/webhook";

async fn stored(ctx: &Ctx, client_id: i64) -> (String, String) {
    sqlx::query_as("SELECT cmp_webhook_url, cmp_webhook_token FROM clients WHERE id = $1")
        .bind(client_id)
        .fetch_one(ctx.pool())
        .await
        .unwrap()
}

fn field_error(field: &str, reason: &str) -> Value {
    json!({"error": {"code": "validation_error", "fields": {field: reason}}})
}

#[tokio::test]
async fn a_client_sets_reads_and_clears_its_webhook_and_never_sees_the_token() {
    let Some(ctx) = setup().await else { return };
    let key = ctx.a.api_key.clone();

    let (status, body) = ctx.call(Method::GET, PATH, &key, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"url": "", "token_set": false}));

    let (status, body) = ctx
        .call(
            Method::PUT,
            PATH,
            &key,
            Some(json!({"url": " https://hooks.example.com/dm ", "token": "s3cret-token"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"url": "https://hooks.example.com/dm", "token_set": true})
    );
    assert_eq!(
        stored(&ctx, ctx.a.client_id).await,
        ("https://hooks.example.com/dm".into(), "s3cret-token".into())
    );
    let (status, text) = ctx
        .raw(Method::GET, PATH, Some(&format!("Bearer {key}")), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"url": "https://hooks.example.com/dm", "token_set": true})
    );
    assert!(!text.contains("s3cret"), "the token leaked: {text}");

    // A new URL without a token keeps the stored token.
    let (status, body) = ctx
        .call(
            Method::PUT,
            PATH,
            &key,
            Some(json!({"url": "https://hooks.example.com/v2"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"url": "https://hooks.example.com/v2", "token_set": true})
    );
    assert_eq!(stored(&ctx, ctx.a.client_id).await.1, "s3cret-token");

    // "" and null clear both.
    for clear in [json!({"url": ""}), json!({"url": null, "token": "ignored"})] {
        ctx.call(
            Method::PUT,
            PATH,
            &key,
            Some(json!({"url": "https://hooks.example.com/x", "token": "t"})),
        )
        .await;
        let (status, body) = ctx.call(Method::PUT, PATH, &key, Some(clear)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"url": "", "token_set": false}));
        assert_eq!(
            stored(&ctx, ctx.a.client_id).await,
            (String::new(), String::new())
        );
    }

    // With nothing stored, a URL alone is not enough.
    let (status, body) = ctx
        .call(
            Method::PUT,
            PATH,
            &key,
            Some(json!({"url": "https://hooks.example.com/dm"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, field_error("token", "required"));
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn bad_urls_and_tokens_are_refused_naming_the_field() {
    let Some(ctx) = setup().await else { return };
    let key = ctx.a.api_key.clone();
    let long = format!("https://example.com/{}", "a".repeat(2048));
    for (body, field, reason) in [
        (
            json!({"url": "ftp://example.com/x", "token": "t"}),
            "url",
            "invalid",
        ),
        (json!({"url": "not a url", "token": "t"}), "url", "invalid"),
        (json!({"url": 42, "token": "t"}), "url", "must_be_string"),
        (json!({"url": long, "token": "t"}), "url", "too_long"),
        (
            json!({"url": "http://127.0.0.1:8080/hook", "token": "t"}),
            "url",
            "invalid",
        ),
        (
            json!({"url": "http://169.254.169.254/latest", "token": "t"}),
            "url",
            "invalid",
        ),
        (
            json!({"url": "http://10.1.2.3/hook", "token": "t"}),
            "url",
            "invalid",
        ),
        (
            json!({"url": "http://[::1]/hook", "token": "t"}),
            "url",
            "invalid",
        ),
        (
            json!({"url": "http://localhost/hook", "token": "t"}),
            "url",
            "invalid",
        ),
        (
            json!({"url": "https://example.com/x", "token": ""}),
            "token",
            "required",
        ),
        (
            json!({"url": "https://example.com/x", "token": "  "}),
            "token",
            "required",
        ),
        (
            json!({"url": "https://example.com/x", "token": "a".repeat(256)}),
            "token",
            "too_long",
        ),
        (
            json!({"url": "https://example.com/x", "token": ["t"]}),
            "token",
            "must_be_string",
        ),
    ] {
        let (status, got) = ctx.call(Method::PUT, PATH, &key, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(got, field_error(field, reason), "{body}");
    }
    assert_eq!(
        stored(&ctx, ctx.a.client_id).await,
        (String::new(), String::new())
    );
    let (status, got) = ctx
        .raw(Method::PUT, PATH, Some(&format!("Bearer {key}")), "[1]")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_str::<Value>(&got).unwrap(),
        field_error("body", "must_be_object")
    );

    // A loopback host named in DATAMAILER_OUTBOUND_ALLOW_HOSTS is accepted.
    let app = router(
        AppState::new(
            ctx.pool().clone(),
            Producer::Postgres,
            WebConfig {
                public_base_url: "http://localhost:8000".into(),
            },
        )
        .with_outbound_policy(OutboundPolicy::from_allow_list("127.0.0.1")),
    );
    let allowed = Ctx {
        db: datamailer_testkit::TestDb {
            name: String::new(),
            url: String::new(),
            pool: ctx.pool().clone(),
        },
        app,
        a: ctx.a.clone(),
    };
    let (status, body) = allowed
        .call(
            Method::PUT,
            PATH,
            &key,
            Some(json!({"url": "http://127.0.0.1:8080/hook", "token": "t"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = allowed
        .call(
            Method::PUT,
            PATH,
            &key,
            Some(json!({"url": "http://10.1.2.3/hook", "token": "t"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, field_error("url", "invalid"));
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn another_client_can_neither_see_nor_change_the_webhook() {
    let Some(ctx) = setup().await else { return };
    let b = provision(ctx.pool(), &scope("acme", "news", "other", vec![]))
        .await
        .unwrap();
    let (status, _) = ctx
        .call(
            Method::PUT,
            PATH,
            &ctx.a.api_key,
            Some(json!({"url": "https://a.example.com/hook", "token": "a-token"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = ctx.call(Method::GET, PATH, &b.api_key, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"url": "", "token_set": false}));
    let (status, _) = ctx
        .call(
            Method::PUT,
            PATH,
            &b.api_key,
            Some(json!({"url": "https://b.example.com/hook", "token": "b-token"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = ctx
        .call(Method::PUT, PATH, &b.api_key, Some(json!({"url": ""})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stored(&ctx, ctx.a.client_id).await,
        ("https://a.example.com/hook".into(), "a-token".into())
    );
    let (_, body) = ctx.call(Method::GET, PATH, &ctx.a.api_key, None).await;
    assert_eq!(
        body,
        json!({"url": "https://a.example.com/hook", "token_set": true})
    );

    // Unauthenticated: 401, nothing changed; other methods: 405 before auth.
    let (status, _) = ctx
        .raw(Method::PUT, PATH, None, r#"{"url": "", "token": ""}"#)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(stored(&ctx, ctx.a.client_id).await.1, "a-token");
    for method in [Method::POST, Method::DELETE, Method::PATCH] {
        let (status, text) = ctx.raw(method.clone(), PATH, None, "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"error": {"code": "method_not_allowed", "allowed_methods": ["GET", "PUT"]}})
        );
    }
    ctx.db.drop_db().await;
}

#[tokio::test]
async fn the_global_fallback_is_stored_for_the_trigger_and_removed_when_unset() {
    let Some(ctx) = setup().await else { return };
    let read = || async {
        sqlx::query_as::<_, (String, String)>("SELECT url, token FROM client_webhook_fallback")
            .fetch_all(ctx.pool())
            .await
            .unwrap()
    };
    datamailer_web::webhooks::store_fallback(
        ctx.pool(),
        Some(("https://global.example.com/hook", "g1")),
    )
    .await
    .unwrap();
    datamailer_web::webhooks::store_fallback(
        ctx.pool(),
        Some((" https://global.example.com/v2 ", "g2")),
    )
    .await
    .unwrap();
    assert_eq!(
        read().await,
        vec![(
            "https://global.example.com/v2".to_string(),
            "g2".to_string()
        )]
    );

    // The trigger uses it for a client without its own webhook.
    let contact: i64 = sqlx::query_scalar(
        "INSERT INTO contacts (email, normalized_email) VALUES ('a@example.com', 'a@example.com') RETURNING id",
    )
    .fetch_one(ctx.pool())
    .await
    .unwrap();
    let insert_event = || async {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO email_events (contact_id, client_id, event_type) VALUES ($1, $2, 'open') RETURNING id",
        )
        .bind(contact)
        .bind(ctx.a.client_id)
        .fetch_one(ctx.pool())
        .await
        .unwrap()
    };
    insert_event().await;
    let urls: Vec<String> = sqlx::query_scalar("SELECT callback_url FROM cmp_callbacks")
        .fetch_all(ctx.pool())
        .await
        .unwrap();
    assert_eq!(urls, vec!["https://global.example.com/v2".to_string()]);

    datamailer_web::webhooks::store_fallback(ctx.pool(), None)
        .await
        .unwrap();
    assert!(read().await.is_empty());
    insert_event().await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM cmp_callbacks")
        .fetch_one(ctx.pool())
        .await
        .unwrap();
    assert_eq!(count, 1, "no fallback, no callback");
    ctx.db.drop_db().await;
}
