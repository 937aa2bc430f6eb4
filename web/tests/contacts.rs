//! The contacts and subscriptions API against a real Postgres (facts §6.8): upsert
//! semantics, status and eligibility, the per-contact endpoints, history, preferences,
//! imports and exports, erase with its tombstone, and tenant isolation on every route.

mod common;

use axum::http::{Method, StatusCode};
use common::{scope, sender, setup, Ctx};
use datamailer_web::provision::provision;
use serde_json::{json, Value};

async fn post(ctx: &Ctx, path: &str, body: Value) -> (StatusCode, Value) {
    ctx.call(Method::POST, path, &ctx.a.api_key, Some(body))
        .await
}

fn scoped(extra: Value) -> Value {
    let mut body = json!({"audience": "news", "client": "shop"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn upsert(ctx: &Ctx, extra: Value) -> Value {
    let (status, body) = post(ctx, "/api/contacts", scoped(extra)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// A second client: `blog` in the same organization and audience.
async fn other_client(ctx: &Ctx) -> String {
    provision(
        ctx.pool(),
        &scope(
            "acme",
            "news",
            "blog",
            vec![sender("support", "s@example.com")],
        ),
    )
    .await
    .unwrap()
    .api_key
}

#[tokio::test]
async fn upsert_normalizes_is_idempotent_and_reports_eligibility() {
    let Some(ctx) = setup().await else { return };
    let first = upsert(
        &ctx,
        json!({"email": "  Ada@Example.COM ", "tags": ["ML Zoomcamp", "vip"]}),
    )
    .await;
    let again = upsert(&ctx, json!({"email": "ada@example.com", "tags": ["vip"]})).await;
    assert_eq!(first["email"], "ada@example.com");
    assert_eq!(first["contact_id"], again["contact_id"]);
    assert_eq!(again["tags"], json!(["ml-zoomcamp", "vip"]));
    assert_eq!(again["exists"], true);
    assert_eq!(again["can_send_marketing"], false, "not verified");
    assert_eq!(again["can_send_transactional"], true);
    assert_eq!(ctx.count("contacts").await, 1);
    assert_eq!(ctx.count("subscriptions").await, 1);
    assert_eq!(ctx.count("contact_tags").await, 2);

    let verified = upsert(
        &ctx,
        json!({"email": "ada@example.com", "status": "subscribed", "verified": true}),
    )
    .await;
    assert_eq!(
        verified["verified"], false,
        "only the subscription is verified"
    );
    assert_eq!(verified["client"]["verified"], true);
    assert_eq!(verified["can_send_marketing"], true);

    // Validation and suppression inputs apply and are idempotent.
    let body = json!({"email": "ada@example.com", "status": "subscribed", "verified": true,
        "email_validation": {"status": "manually_invalid", "reason": "typo"},
        "suppression": {"global_unsubscribed": true}});
    let a = upsert(&ctx, body.clone()).await;
    let b = upsert(&ctx, body).await;
    assert_eq!(a["email_validation"], b["email_validation"]);
    assert_eq!(b["email_validation"]["status"], "manually_invalid");
    assert_eq!(b["global_unsubscribed"], true);
    assert_eq!(b["can_send_marketing"], false);
    assert_eq!(b["can_send_transactional"], true);
    let hard = upsert(
        &ctx,
        json!({"email": "ada@example.com", "suppression": {"hard_bounced": true}}),
    )
    .await;
    assert_eq!(hard["can_send_transactional"], false);
}

#[tokio::test]
async fn resubscribing_writes_one_subscribe_event() {
    let Some(ctx) = setup().await else { return };
    upsert(
        &ctx,
        json!({"email": "bo@example.com", "status": "unsubscribed"}),
    )
    .await;
    upsert(
        &ctx,
        json!({"email": "bo@example.com", "status": "subscribed"}),
    )
    .await;
    upsert(
        &ctx,
        json!({"email": "bo@example.com", "status": "subscribed"}),
    )
    .await;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM email_events WHERE event_type = 'subscribe'")
            .fetch_one(ctx.pool())
            .await
            .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let Some(ctx) = setup().await else { return };
    for (body, field, reason, status) in [
        (
            json!({"email": "nope", "audience": "news", "client": "shop"}),
            "email",
            "invalid",
            400,
        ),
        (
            json!({"email": "a@example.com", "client": "shop"}),
            "audience",
            "required",
            400,
        ),
        (
            json!({"email": "a@example.com", "audience": "news"}),
            "client",
            "required",
            400,
        ),
        (
            json!({"email": "a@example.com", "audience": "news", "client": "shop", "status": "maybe"}),
            "status",
            "invalid",
            400,
        ),
        (
            json!({"email": "a@example.com", "audience": "news", "client": "shop", "tags": "vip"}),
            "tags",
            "must_be_list",
            400,
        ),
        (
            json!({"email": "a@example.com", "audience": "news", "client": "shop", "verified": "yes"}),
            "verified",
            "must_be_boolean",
            400,
        ),
        (
            json!({"email": "a@example.com", "audience": "elsewhere", "client": "shop"}),
            "audience",
            "not_found",
            400,
        ),
        (
            json!({"email": "a@example.com", "audience": "news", "client": "rival"}),
            "client",
            "forbidden",
            403,
        ),
    ] {
        let (got, answer) = post(&ctx, "/api/contacts", body.clone()).await;
        assert_eq!(got.as_u16(), status, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], "validation_error");
        assert_eq!(
            answer["error"]["fields"][field], reason,
            "{body} → {answer}"
        );
    }
    assert_eq!(ctx.count("contacts").await, 0);
    let (status, body) = ctx
        .call(Method::DELETE, "/api/contacts", &ctx.a.api_key, None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let (status, _) = ctx
        .call(Method::GET, "/api/v1/contacts", &ctx.a.api_key, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn status_hides_contacts_without_a_subscription_of_this_client() {
    let Some(ctx) = setup().await else { return };
    let blog = other_client(&ctx).await;
    let (s, _) = ctx
        .call(
            Method::POST,
            "/api/contacts",
            &blog,
            Some(
                json!({"email": "cy@example.com", "audience": "news", "client": "blog",
              "suppression": {"hard_bounced": true}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = ctx
        .call(
            Method::GET,
            "/api/contacts/status?email=cy@example.com&audience=news&client=shop",
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["exists"], false);
    assert_eq!(body["contact_id"], Value::Null);
    assert_eq!(body["hard_bounced"], false);
    assert_eq!(body["can_send_transactional"], false);
    assert_eq!(body["email_validation"]["status"], "unknown");
}

#[tokio::test]
async fn per_contact_endpoints_update_idempotently_and_404_for_others() {
    let Some(ctx) = setup().await else { return };
    let blog = other_client(&ctx).await;
    let c = upsert(&ctx, json!({"email": "di@example.com", "tags": ["a"]})).await;
    let id = c["contact_id"].as_i64().unwrap();
    let key = ctx.a.api_key.clone();
    let call = |m: Method, p: String, k: String, b: Value| {
        let ctx = &ctx;
        async move { ctx.call(m, &p, &k, Some(b)).await }
    };

    let (s, body) = call(
        Method::PUT,
        format!("/api/contacts/{id}/tags"),
        key.clone(),
        scoped(json!({"tags": ["B", "c"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["tags"], json!(["b", "c"]));
    for _ in 0..2 {
        let (s, body) = call(
            Method::POST,
            format!("/api/contacts/{id}/tags/New%20One"),
            key.clone(),
            scoped(json!({})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["tags"], json!(["b", "c", "new-one"]));
    }
    let (s, body) = ctx
        .raw(
            Method::DELETE,
            &format!("/api/contacts/{id}/tags/b?audience=news&client=shop"),
            Some(&format!("Bearer {key}")),
            "",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.contains("\"tags\":[\"c\",\"new-one\"]"), "{body}");

    let (s, body) = call(
        Method::PATCH,
        format!("/api/contacts/{id}/verification"),
        key.clone(),
        scoped(json!({"verified": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["verified"], true);
    assert_eq!(body["client"]["verified"], true);
    let (s, body) = call(
        Method::PATCH,
        format!("/api/contacts/{id}/validation"),
        key.clone(),
        scoped(json!({"status": "valid", "reason": "checked"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["email_validation"]["status"], "valid");
    let at = body["email_validation"]["validated_at"].clone();
    let (_, again) = call(
        Method::PATCH,
        format!("/api/contacts/{id}/validation"),
        key.clone(),
        scoped(json!({"status": "valid", "reason": "checked"})),
    )
    .await;
    assert_eq!(
        again["email_validation"]["validated_at"], at,
        "unchanged status keeps its time"
    );

    for _ in 0..2 {
        let (s, body) = call(
            Method::PATCH,
            format!("/api/contacts/{id}/suppression"),
            key.clone(),
            scoped(json!({"global_unsubscribed": true, "hard_bounced": true, "reason": "asked"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["can_send_marketing"], false);
        assert_eq!(body["can_send_transactional"], false);
    }
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM email_events WHERE contact_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(ctx.pool())
            .await
            .unwrap();
    assert_eq!(
        kinds,
        vec!["unsubscribe", "bounce"],
        "one event each, none on the repeat"
    );

    // Another client of the same audience sees none of it and changes nothing.
    let blog_scope = json!({"audience": "news", "client": "blog", "tags": ["x"], "verified": false,
                            "status": "unknown", "global_unsubscribed": false});
    for (m, p) in [
        (Method::PUT, format!("/api/contacts/{id}/tags")),
        (Method::POST, format!("/api/contacts/{id}/tags/x")),
        (Method::DELETE, format!("/api/contacts/{id}/tags/c")),
        (Method::PATCH, format!("/api/contacts/{id}/verification")),
        (Method::PATCH, format!("/api/contacts/{id}/validation")),
        (Method::PATCH, format!("/api/contacts/{id}/suppression")),
    ] {
        let (s, body) = call(m.clone(), p.clone(), blog.clone(), blog_scope.clone()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {p}: {body}");
        assert_eq!(body["error"]["fields"]["contact_id"], "not_found");
    }
    let (s, _) = ctx
        .call(
            Method::GET,
            &format!("/api/contacts/{id}/history?audience=news&client=blog"),
            &blog,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Claiming to be the other client is forbidden.
    let (s, _) = call(
        Method::PUT,
        format!("/api/contacts/{id}/tags"),
        blog.clone(),
        scoped(json!({"tags": []})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, body) = ctx
        .call(
            Method::GET,
            "/api/contacts/status?email=di@example.com&audience=news&client=shop",
            &key,
            None,
        )
        .await;
    assert_eq!(body["tags"], Value::Null, "status has no tags");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM contact_tags WHERE contact_id = $1")
        .bind(id)
        .fetch_one(ctx.pool())
        .await
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn history_pages_events_and_shows_only_safe_metadata() {
    let Some(ctx) = setup().await else { return };
    let c = upsert(&ctx, json!({"email": "ed@example.com"})).await;
    let id = c["contact_id"].as_i64().unwrap();
    for i in 0..3 {
        sqlx::query(
            "INSERT INTO email_events (contact_id, client_id, audience_id, event_type, metadata)
             VALUES ($1, $2, $3, 'sent', $4)",
        )
        .bind(id)
        .bind(ctx.a.client_id)
        .bind(ctx.a.audience_id)
        .bind(json!({"ses_message_id": format!("m{i}"), "tracking_token_hash": "secret", "url": "https://x"}))
        .execute(ctx.pool())
        .await
        .unwrap();
    }
    let (s, body) = ctx
        .call(
            Method::GET,
            &format!("/api/contacts/{id}/history?audience=news&client=shop&limit=1"),
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        body["events"][0]["metadata"],
        json!({"ses_message_id": "m2"})
    );
    let cursor = body["next_cursor"].as_str().unwrap().to_string();
    let (_, page2) = ctx
        .call(
            Method::GET,
            &format!(
                "/api/contacts/{id}/history?audience=news&client=shop&limit=1&cursor={cursor}"
            ),
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(
        page2["events"][0]["metadata"],
        json!({"ses_message_id": "m1"})
    );
    assert!(!body.to_string().contains("secret"));
    let (s, body) = ctx
        .call(
            Method::GET,
            &format!("/api/contacts/{id}/history?audience=news&client=shop&limit=0"),
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["fields"]["limit"],
        "must_be_between_1_and_100"
    );
}

#[tokio::test]
async fn preferences_default_store_and_refuse_enabling_suppressed() {
    let Some(ctx) = setup().await else { return };
    let (s, body) = ctx
        .call(Method::GET, "/api/contacts/preferences?email=fi@example.com&audience=news&client=shop&category_tags=product-updates", &ctx.a.api_key, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        body["categories"],
        json!([{"tag": "product-updates", "label": "Product Updates", "enabled": true}])
    );
    let put = |cats: Value| scoped(json!({"email": "fi@example.com", "categories": cats}));
    let (s, body) = ctx
        .call(
            Method::PUT,
            "/api/contacts/preferences",
            &ctx.a.api_key,
            Some(put(
                json!([{"tag": "news", "enabled": false, "label": "News"}]),
            )),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        body["categories"],
        json!([{"tag": "news", "label": "News", "enabled": false}])
    );
    upsert(
        &ctx,
        json!({"email": "fi@example.com", "suppression": {"complained": true}}),
    )
    .await;
    let (s, body) = ctx
        .call(
            Method::PUT,
            "/api/contacts/preferences",
            &ctx.a.api_key,
            Some(put(json!([{"tag": "news", "enabled": true}]))),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        body["error"]["fields"]["categories"],
        "suppressed_contact_cannot_be_enabled"
    );
}

#[tokio::test]
async fn subscribe_and_unsubscribe_with_scopes_write_their_events_once() {
    let Some(ctx) = setup().await else { return };
    upsert(
        &ctx,
        json!({"email": "gu@example.com", "status": "unsubscribed"}),
    )
    .await;
    let (s, body) = post(
        &ctx,
        "/api/subscriptions/subscribe",
        scoped(json!({"email": "gu@example.com", "tags": ["t"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["client"]["status"], "subscribed");
    assert_eq!(body["client"]["verified"], true);
    assert_eq!(body["tags"], json!(["t"]));
    for which in ["client", "audience", "global"] {
        for _ in 0..2 {
            let (s, body) = post(
                &ctx,
                "/api/subscriptions/unsubscribe",
                scoped(json!({"email": "gu@example.com", "scope": which, "reason": "too many"})),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{body}");
            assert_eq!(body["scope"], which);
        }
    }
    let (_, body) = ctx
        .call(
            Method::GET,
            "/api/contacts/status?email=gu@example.com&audience=news&client=shop",
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(body["client"]["status"], "unsubscribed");
    assert_eq!(body["client"]["unsubscribe_reason"], "too many");
    assert_eq!(body["audience"]["status"], "unsubscribed");
    assert_eq!(body["global_unsubscribed"], true);
    let scopes: Vec<Value> = sqlx::query_scalar(
        "SELECT metadata->'scope' FROM email_events WHERE event_type = 'unsubscribe' ORDER BY id",
    )
    .fetch_all(ctx.pool())
    .await
    .unwrap();
    assert_eq!(
        scopes,
        vec![json!("client"), json!("audience"), json!("global")]
    );
    let (s, body) = post(
        &ctx,
        "/api/subscriptions/unsubscribe",
        scoped(json!({"email": "gu@example.com", "scope": "everything"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["fields"]["scope"], "invalid");
}

#[tokio::test]
async fn json_import_counts_exactly_and_reruns_unchanged() {
    let Some(ctx) = setup().await else { return };
    upsert(&ctx, json!({"email": "old@example.com"})).await;
    let body = json!({"audience": "news", "client": "shop", "contacts": [
        {"email": "n1@example.com"},
        {"email": "N1@example.com"},
        {"email": "n2@example.com", "subscription_status": "subscribed"},
        {"email": "old@example.com", "tags": ["new"]},
        {"email": "broken"},
    ]});
    let (s, first) = post(&ctx, "/api/contacts/imports", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(
        first["counts"],
        json!({"total": 5, "created": 2, "updated": 1, "unchanged": 0, "skipped": 1, "invalid": 1})
    );
    let dup = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "skipped")
        .unwrap();
    assert_eq!(dup["reason"], "duplicate_input");
    assert_eq!(dup["kept_item"], 1);
    assert_eq!(first["errors"][0]["errors"]["email"], "invalid");
    let (_, again) = post(&ctx, "/api/contacts/imports", body).await;
    assert_eq!(again["counts"]["unchanged"], 3);
    let (_, dry) = post(
        &ctx,
        "/api/contacts/imports",
        json!({"audience": "news", "client": "shop", "dry_run": true,
        "contacts": [{"email": "n9@example.com"}, {"email": "n1@example.com"}]}),
    )
    .await;
    assert_eq!(dry["counts"]["skipped"], 2);
    assert_eq!(dry["results"][0]["action"], "would_create");
    assert_eq!(dry["results"][1]["action"], "would_update");
    assert_eq!(ctx.count("contacts").await, 3);
    let (_, foreign) = post(
        &ctx,
        "/api/contacts/imports",
        json!({"client": "shop",
        "contacts": [{"email": "z@example.com", "audience": "nowhere"}]}),
    )
    .await;
    assert_eq!(foreign["errors"][0]["errors"]["audience"], "not_found");
    let (s, body) = post(&ctx, "/api/contacts/imports", json!({"contacts": "x"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["fields"]["contacts"], "must_be_list");
}

#[tokio::test]
async fn csv_round_trips_reports_row_errors_and_blank_cells_keep_suppression() {
    let Some(ctx) = setup().await else { return };
    upsert(
        &ctx,
        json!({"email": "hb@example.com", "suppression": {"hard_bounced": true}}),
    )
    .await;
    let csv = "email,tags,subscription_status,verified,hard_bounced\n\
               a1@example.com,x;y,subscribed,yes,\n\
               hb@example.com,,pending,,\n\
               bad,,,,\n\
               a2@example.com,,,maybe,\n";
    let (s, body) = post(
        &ctx,
        "/api/contacts/imports/csv",
        json!({"csv": csv, "audience": "news", "client": "shop"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["counts"]["created"], 1);
    assert_eq!(body["counts"]["invalid"], 2);
    let rows: Vec<i64> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["row"].as_i64())
        .collect();
    assert_eq!(rows, vec![4, 5]);
    let (_, st) = ctx
        .call(
            Method::GET,
            "/api/contacts/status?email=hb@example.com&audience=news&client=shop",
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(
        st["hard_bounced"], true,
        "a blank cell does not clear a hard bounce"
    );
    let (_, rerun) = post(
        &ctx,
        "/api/contacts/imports/csv",
        json!({"csv": csv, "audience": "news", "client": "shop"}),
    )
    .await;
    assert_eq!(rerun["counts"]["unchanged"], 2, "{rerun}");
    let (s, body) = post(
        &ctx,
        "/api/contacts/imports/csv",
        json!({"audience": "news", "client": "shop"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["fields"]["csv"], "required");

    // The export re-imports to the same state.
    let (s, exported) = ctx
        .raw(
            Method::GET,
            "/api/contacts.csv?audience=news&client=shop",
            Some(&format!("Bearer {}", ctx.a.api_key)),
            "",
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        exported.starts_with("email,audience,client,tags,subscription_status,verified,"),
        "{exported}"
    );
    assert!(
        exported.contains("a1@example.com,news,shop,x;y,subscribed,True,"),
        "{exported}"
    );
    let (_, back) = post(&ctx, "/api/contacts/imports/csv", json!({"csv": exported})).await;
    assert_eq!(back["counts"]["unchanged"], 2, "{back}");
}

#[tokio::test]
async fn listing_filters_and_pages_by_cursor() {
    let Some(ctx) = setup().await else { return };
    for i in 0..5 {
        upsert(&ctx, json!({"email": format!("l{i}@example.com"), "tags": if i % 2 == 0 { json!(["even"]) } else { json!([]) },
                            "status": if i == 4 { "unsubscribed" } else { "pending" }})).await;
    }
    let key = ctx.a.api_key.clone();
    let get = |q: &str| {
        let path = format!("/api/contacts?audience=news&client=shop&{q}");
        let ctx = &ctx;
        let key = key.clone();
        async move { ctx.call(Method::GET, &path, &key, None).await }
    };
    let (s, page) = get("limit=2").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["count"], 2);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, rest) = get(&format!("limit=10&cursor={cursor}")).await;
    assert_eq!(rest["count"], 3);
    assert_eq!(rest["next_cursor"], Value::Null);
    let (_, even) = get("tags=even").await;
    assert_eq!(even["count"], 3);
    let (_, unsub) = get("subscription_status=unsubscribed").await;
    assert_eq!(unsub["contacts"][0]["email"], "l4@example.com");
    assert_eq!(unsub["contacts"][0]["unsubscribed"], true);
    let (s, bad) = get("email_validation_status=great").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(bad["error"]["fields"]["email_validation_status"], "invalid");
    let blog = other_client(&ctx).await;
    let (_, other) = ctx
        .call(
            Method::GET,
            "/api/contacts?audience=news&client=blog",
            &blog,
            None,
        )
        .await;
    assert_eq!(other["count"], 0, "another client lists none of them");
}

#[tokio::test]
async fn erase_anonymizes_and_the_tombstone_keeps_the_address_suppressed() {
    let Some(ctx) = setup().await else { return };
    let c = upsert(
        &ctx,
        json!({"email": "er@example.com", "tags": ["t"], "suppression": {"complained": true}}),
    )
    .await;
    let id = c["contact_id"].as_i64().unwrap();
    sqlx::query("INSERT INTO email_events (contact_id, client_id, audience_id, event_type, metadata) VALUES ($1, $2, $3, 'complaint', '{\"x\": 1}')")
        .bind(id).bind(ctx.a.client_id).bind(ctx.a.audience_id).execute(ctx.pool()).await.unwrap();
    let blog = other_client(&ctx).await;
    let (_, foreign) = ctx
        .call(
            Method::POST,
            "/api/contacts/erase",
            &blog,
            Some(json!({"email": "er@example.com", "audience": "news", "client": "blog"})),
        )
        .await;
    assert_eq!(
        foreign["erased"], false,
        "no relationship with the other client"
    );
    let (s, body) = post(
        &ctx,
        "/api/contacts/erase",
        scoped(json!({"email": "er@example.com"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["erased"], true);
    assert_eq!(body["counts"]["subscriptions_deleted"], 1);
    assert_eq!(body["counts"]["contact_tags_deleted"], 1);
    assert_eq!(body["counts"]["email_events_anonymized"], 1);
    let (email, meta): (String, Value) = sqlx::query_as(
        "SELECT c.email, e.metadata FROM contacts c JOIN email_events e ON e.contact_id = c.id WHERE c.id = $1")
        .bind(id).fetch_one(ctx.pool()).await.unwrap();
    assert_eq!(email, format!("erased-contact-{id}@erased.invalid"));
    assert_eq!(meta, json!({"erased": true}));
    let (_, again) = post(
        &ctx,
        "/api/contacts/erase",
        scoped(json!({"email": "er@example.com"})),
    )
    .await;
    assert_eq!(again["erased"], false);
    // No plain address is kept, and the address comes back complained.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM suppression_tombstones")
        .fetch_one(ctx.pool())
        .await
        .unwrap();
    assert_eq!(stored, 1);
    let back = upsert(&ctx, json!({"email": "ER@example.com"})).await;
    assert_eq!(back["complained"], true);
    assert_eq!(back["can_send_transactional"], false);
}

#[tokio::test]
async fn concurrent_upserts_are_committed_together_and_each_answers_its_own_request() {
    let Some(ctx) = setup().await else { return };
    // 40 requests at once (the writer batches them): 30 distinct addresses, and one address
    // ten times with a different tag each, which must all land.
    let requests = (0..40).map(|i| {
        let ctx = &ctx;
        async move {
            let extra = if i < 30 {
                json!({"email": format!("u{i}@example.com"), "status": "subscribed"})
            } else {
                json!({"email": "same@example.com", "tags": [format!("t{i}")]})
            };
            post(ctx, "/api/contacts", scoped(extra)).await
        }
    });
    let answers = futures::future::join_all(requests).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, StatusCode::OK, "{i}: {body}");
        let expected = if i < 30 {
            format!("u{i}@example.com")
        } else {
            "same@example.com".to_string()
        };
        assert_eq!(body["email"], expected.as_str(), "{i}: {body}");
        if i >= 30 {
            let tags = body["tags"].as_array().unwrap();
            assert!(tags.contains(&json!(format!("t{i}"))), "{i}: {body}");
        }
    }
    assert_eq!(ctx.count("contacts").await, 31);
    let tags: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM contact_tags ct JOIN contacts c ON c.id = ct.contact_id
         WHERE c.normalized_email = 'same@example.com'",
    )
    .fetch_one(ctx.pool())
    .await
    .unwrap();
    assert_eq!(tags, 10);
    let subscribed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM subscriptions WHERE status = 'subscribed' AND client_id = $1",
    )
    .bind(ctx.a.client_id)
    .fetch_one(ctx.pool())
    .await
    .unwrap();
    assert_eq!(subscribed, 30);
}
