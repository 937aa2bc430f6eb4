//! Field-by-field validation of the transactional endpoints against the original's parsers
//! (mailing/services/transactional.py `validate_transactional_send_payload`, `validate_headers`,
//! `validate_message_parts`, `validate_optional_email_address(es)`; api.py
//! `validate_transactional_template_payload`, `validate_sender_policy_payload`;
//! senders.py `normalize_sender_id`): each input gives exactly the original's `fields`, and a
//! refused request writes nothing.

mod common;

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::{json, Value};

fn with(base: &Value, extra: Value) -> Value {
    let mut body = base.clone();
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn expect_fields(ctx: &Ctx, method: Method, path: &str, body: Value, fields: Value) {
    let (status, resp) = ctx
        .call(method.clone(), path, &ctx.a.api_key, Some(body.clone()))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{method} {path} {body} → {resp}"
    );
    assert_eq!(resp["error"]["code"], "validation_error", "{body} → {resp}");
    assert_eq!(resp["error"]["fields"], fields, "{body} → {resp}");
}

#[tokio::test]
async fn send_fields_answer_the_originals_reason_codes() {
    let Some(ctx) = setup().await else { return };
    ctx.welcome_template().await;
    let base = json!({"email": "a@example.com", "template_key": "welcome",
                      "context": {"name": "A", "reset_url": "https://x"}});
    let too_many_headers: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("X-H{i}"), json!("v"))).collect();
    let part = json!({"content_type": "text/plain", "content": "x"});
    let cases = [
        (json!({"email": ""}), json!({"email": "required"})),
        (json!({"email": 5}), json!({"email": "required"})),
        (
            json!({"email": "not-an-address"}),
            json!({"email": "invalid"}),
        ),
        (
            json!({"template_key": "  "}),
            json!({"template_key": "required"}),
        ),
        (
            json!({"template_key": 7}),
            json!({"template_key": "required"}),
        ),
        (
            json!({"idempotency_key": "   "}),
            json!({"idempotency_key": "must_be_non_empty_string"}),
        ),
        (
            json!({"idempotency_key": 5}),
            json!({"idempotency_key": "must_be_non_empty_string"}),
        ),
        (json!({"context": []}), json!({"context": "must_be_object"})),
        (
            json!({"metadata": "x"}),
            json!({"metadata": "must_be_object"}),
        ),
        (
            json!({"category_tag": " "}),
            json!({"category_tag": "must_be_non_empty_string"}),
        ),
        (
            json!({"from_email": "support@example.com"}),
            json!({"from_email": "invalid"}),
        ),
        (
            json!({"from_email": 5}),
            json!({"from_email": "must_be_string"}),
        ),
        (json!({"reply_to": "nope"}), json!({"reply_to": "invalid"})),
        (
            json!({"reply_to": 5}),
            json!({"reply_to": "must_be_non_empty_string"}),
        ),
        (json!({"cc": 5}), json!({"cc": "must_be_list"})),
        (
            json!({"cc": ["ok@example.com", "bad", " "]}),
            json!({"cc.1": "invalid", "cc.2": "must_be_non_empty_string"}),
        ),
        (json!({"bcc": "bad"}), json!({"bcc.0": "invalid"})),
        (json!({"headers": []}), json!({"headers": "must_be_object"})),
        (
            json!({"headers": Value::Object(too_many_headers)}),
            json!({"headers": "too_many"}),
        ),
        (
            json!({"headers": {"Bad Name": "x", "From": "x", "X-Ok": "a\nb", "X-Num": 5}}),
            json!({"headers.Bad Name": "invalid_name", "headers.From": "reserved",
                "headers.X-Ok": "invalid_value", "headers.X-Num": "invalid_value"}),
        ),
        (
            json!({"message_parts": {}}),
            json!({"message_parts": "must_be_list"}),
        ),
        (
            json!({"message_parts": vec![part.clone(); 11]}),
            json!({"message_parts": "too_many"}),
        ),
        (
            json!({"message_parts": [1, {"content": "x"}, {"content_type": "image/png", "content": "x"}]}),
            json!({"message_parts.0": "must_be_object", "message_parts.1.content_type": "required",
                "message_parts.2.content_type": "unsupported"}),
        ),
        (
            json!({"message_parts": [{"content_type": "text/csv", "content": 5, "filename": "a/b", "disposition": "sideways"}]}),
            json!({"message_parts.0.content": "must_be_string", "message_parts.0.filename": "invalid",
                "message_parts.0.disposition": "invalid"}),
        ),
        (
            json!({"message_parts": [{"content_type": "text/plain", "content": "x".repeat(200_001)}]}),
            json!({"message_parts.0.content": "too_large"}),
        ),
        (
            json!({"dry_run": "yes"}),
            json!({"dry_run": "must_be_boolean"}),
        ),
        // Every error of a body, not only the first.
        (
            json!({"email": "", "template_key": "", "context": 1, "dry_run": 1}),
            json!({"email": "required", "template_key": "required", "context": "must_be_object",
                "dry_run": "must_be_boolean"}),
        ),
    ];
    for (extra, fields) in cases {
        expect_fields(
            &ctx,
            Method::POST,
            "/api/transactional/send",
            with(&base, extra),
            fields,
        )
        .await;
    }
    // What the original accepts: blanks for the optional objects, a non-slug template key is
    // a 404 (the CLI's retry checks it), surrounding spaces stripped.
    let (status, resp) = ctx
        .send(with(
            &base,
            json!({"context": {"name": "A", "reset_url": "x"}, "metadata": "",
                                   "headers": "", "cc": null, "idempotency_key": "  k-1  "}),
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["message"]["idempotency_key"], "k-1");
    let (status, resp) = ctx
        .send(with(&base, json!({"template_key": "Not A Slug!"})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{resp}");
    assert_eq!(resp["error"]["fields"]["template_key"], "not_found");
    assert_eq!(
        ctx.count("transactional_messages").await,
        1,
        "only the accepted send wrote"
    );
}

#[tokio::test]
async fn template_and_sender_fields_answer_the_originals_reason_codes() {
    let Some(ctx) = setup().await else { return };
    let base = json!({"name": "Welcome", "subject": "Hi"});
    let cases = [
        (json!({"name": " "}), json!({"name": "required"})),
        (json!({"subject": 5}), json!({"subject": "required"})),
        (
            json!({"description": 5, "html_body": [], "text_body": null}),
            json!({"description": "must_be_string", "html_body": "must_be_string", "text_body": "must_be_string"}),
        ),
        (
            json!({"required_context": {}}),
            json!({"required_context": "must_be_list"}),
        ),
        (
            json!({"example_context": []}),
            json!({"example_context": "must_be_object"}),
        ),
        (
            json!({"is_active": "yes"}),
            json!({"is_active": "must_be_boolean"}),
        ),
        (
            json!({"default_sender_id": " "}),
            json!({"default_sender_id": "must_be_non_empty_string"}),
        ),
        (
            json!({"default_sender_id": "Not Slug"}),
            json!({"default_sender_id": "invalid"}),
        ),
        (
            json!({"default_sender_id": "nobody"}),
            json!({"default_sender_id": "not_configured"}),
        ),
    ];
    for (extra, fields) in cases {
        expect_fields(
            &ctx,
            Method::PUT,
            "/api/transactional/templates/welcome",
            with(&base, extra),
            fields,
        )
        .await;
    }
    expect_fields(
        &ctx,
        Method::PUT,
        "/api/transactional/templates/Not%20A%20Slug",
        base.clone(),
        json!({"template_key": "invalid"}),
    )
    .await;
    assert_eq!(ctx.count("email_templates").await, 0);

    let senders = "/api/client/senders";
    for (body, fields) in [
        (
            json!({"senders": []}),
            json!({"senders": "must_be_non_empty_list", "default_sender_id": "required"}),
        ),
        (
            json!({"senders": "x"}),
            json!({"senders": "must_be_non_empty_list", "default_sender_id": "required"}),
        ),
        (
            json!({"senders": [1, {"id": ""}, {"id": "Bad Id", "email": "a@example.com"},
                            {"id": "ok", "email": "a@example.com"}, {"id": "ok", "email": "b@example.com"},
                            {"id": "noemail"}, {"id": "badmail", "email": "nope"}]}),
            json!({"senders.0": "must_be_object", "senders.1.id": "required", "senders.2.id": "invalid",
                "senders.4.id": "duplicate", "senders.5.email": "required", "senders.6.email": "invalid"}),
        ),
    ] {
        expect_fields(&ctx, Method::PUT, senders, body, fields).await;
    }
    // The senders are untouched by the refused requests.
    let (status, resp) = ctx.call(Method::GET, senders, &ctx.a.api_key, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp["senders"].as_array().unwrap().len(), 2, "{resp}");
}
