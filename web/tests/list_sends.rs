//! The recipient-list transactional sends against a real Postgres (facts §4.6, §6.9
//! "Recipient-list sends"): per-member messages and keys, suppressed and opted-out members
//! skipped with their reason (and their client webhook), replays, the member sync, all-or-
//! nothing context checks, the transient list, field errors and tenant isolation.

mod common;

use axum::http::{Method, StatusCode};
use common::{scope, sender, setup, Ctx};
use datamailer_web::provision::provision;
use serde_json::{json, Value};

const LIST: &str = "course:@cohort-1";

fn scoped(extra: Value) -> Value {
    let mut body = json!({"audience": "news", "client": "shop"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn list_path(key: &str, rest: &str) -> String {
    format!("/api/recipient-lists/{}{rest}", key.replace('@', "%40"))
}

async fn call(ctx: &Ctx, m: Method, path: &str, body: Value) -> (StatusCode, Value) {
    ctx.call(m, path, &ctx.a.api_key, Some(body)).await
}

/// A template that needs `name` and shows the member metadata and the base context.
async fn notice_template(ctx: &Ctx) {
    let (s, b) = ctx
        .put_template(
            "notice",
            json!({
                "name": "Notice",
                "subject": "Hi {{ name }}",
                "text_body": "{{ name }} / {{ member.cohort }} / {{ course }}",
                "required_context": ["name"],
            }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

async fn bulk(ctx: &Ctx, members: Value) {
    let (s, b) = call(
        ctx,
        Method::POST,
        &list_path(LIST, "/members/bulk-upsert"),
        scoped(json!({"members": members})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

async fn list_send(ctx: &Ctx, body: Value) -> (StatusCode, Value) {
    call(
        ctx,
        Method::POST,
        &list_path(LIST, "/transactional-send"),
        scoped(body),
    )
    .await
}

/// (idempotency key, status, last_error, metadata) of every message, by key.
async fn messages(ctx: &Ctx) -> Vec<(String, String, String, Value)> {
    sqlx::query_as(
        "SELECT idempotency_key, status, last_error, metadata FROM transactional_messages
         ORDER BY idempotency_key",
    )
    .fetch_all(ctx.pool())
    .await
    .unwrap()
}

fn member(source: &str, email: &str, metadata: Value) -> Value {
    json!({"source_object_key": source, "email": email, "metadata": metadata})
}

#[tokio::test]
async fn each_active_member_gets_its_message_and_suppressed_ones_are_skipped_with_their_reason() {
    let Some(ctx) = setup().await else { return };
    notice_template(&ctx).await;
    bulk(
        &ctx,
        json!([
            member("u-1", "ada@example.com", json!({"name": "Ada", "cohort": "c1"})),
            member("u-2", "bob@example.com", json!({"name": "Bob"})),
            member("u-3", "cy@example.com", json!({"name": "Cy"})),
            {"source_object_key": "u-4", "email": "gone@example.com", "status": "removed"},
        ]),
    )
    .await;
    // Bob hard-bounced; Cy opted out of the category; the client has a webhook.
    sqlx::query(
        "UPDATE contacts SET hard_bounced_at = now() WHERE normalized_email = 'bob@example.com'",
    )
    .execute(ctx.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO category_preferences (contact_id, audience_id, client_id, tag, enabled)
         SELECT c.id, $1, $2, 'course-news', false FROM contacts c
         WHERE c.normalized_email = 'cy@example.com'",
    )
    .bind(ctx.a.audience_id)
    .bind(ctx.a.client_id)
    .execute(ctx.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE clients SET cmp_webhook_url = 'https://hooks.example.com/dm', cmp_webhook_token = 't' WHERE id = $1")
        .bind(ctx.a.client_id)
        .execute(ctx.pool())
        .await
        .unwrap();

    let body = json!({
        "template_key": "notice",
        "idempotency_key": "week-1",
        "context": {"course": "ML"},
        "metadata": {"batch": 7},
        "category_tag": "course-news",
    });
    let (s, resp) = list_send(&ctx, body.clone()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(
        resp,
        json!({
            "recipient_list": {"key": LIST, "active_member_count": 3},
            "template_key": "notice",
            "idempotency_key": "week-1",
            "created_count": 3,
            "enqueued_count": 1,
            "skipped_count": 2,
            "idempotent_replay_count": 0,
        })
    );
    let rows = messages(&ctx).await;
    let keys: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(keys, ["week-1:u-1", "week-1:u-2", "week-1:u-3"]);
    assert_eq!((rows[0].1.as_str(), rows[0].2.as_str()), ("queued", ""));
    assert_eq!(
        (rows[1].1.as_str(), rows[1].2.as_str()),
        ("skipped", "hard_bounce")
    );
    assert_eq!(
        (rows[2].1.as_str(), rows[2].2.as_str()),
        ("skipped", "category_unsubscribe")
    );
    let meta = &rows[0].3;
    assert_eq!(meta["batch"], 7);
    assert_eq!(meta["category_tag"], "course-news");
    assert_eq!(meta["recipient_list_key"], LIST);
    assert_eq!(meta["source_object_key"], "u-1");
    assert_eq!(meta["recipient_list_member_metadata"]["cohort"], "c1");
    assert_eq!(meta["audience"], "news");
    assert!(meta["recipient_list_member_id"].is_i64(), "{meta}");
    let text: String = sqlx::query_scalar(
        "SELECT text_body FROM transactional_messages WHERE idempotency_key = 'week-1:u-1'",
    )
    .fetch_one(ctx.pool())
    .await
    .unwrap();
    assert_eq!(text, "Ada / c1 / ML");
    // One queue message (the allowed member), events naming the list, two skipped webhooks.
    assert_eq!(ctx.queue_bodies().await.len(), 1);
    let events: Vec<(String, Value)> =
        sqlx::query_as("SELECT event_type, metadata FROM email_events ORDER BY id")
            .fetch_all(ctx.pool())
            .await
            .unwrap();
    assert_eq!(events.len(), 3);
    assert!(
        events.iter().all(|(_, m)| m["recipient_list_key"] == LIST),
        "{events:?}"
    );
    let callbacks: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM cmp_callbacks ORDER BY id")
            .fetch_all(ctx.pool())
            .await
            .unwrap();
    assert_eq!(
        callbacks,
        ["transactional.skipped", "transactional.skipped"]
    );

    // The same request again (a client retrying after a timeout): replays only.
    let (s, again) = list_send(&ctx, body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["created_count"], 0);
    assert_eq!(again["idempotent_replay_count"], 3);
    assert_eq!(messages(&ctx).await.len(), 3);
    assert_eq!(ctx.queue_bodies().await.len(), 1);
}

#[tokio::test]
async fn a_send_with_members_syncs_the_list_first_and_a_retry_writes_only_what_is_missing() {
    let Some(ctx) = setup().await else { return };
    notice_template(&ctx).await;
    bulk(
        &ctx,
        json!([
            member("u-1", "ada@example.com", json!({"name": "Ada"})),
            member("u-2", "bob@example.com", json!({"name": "Bob"}))
        ]),
    )
    .await;
    let body = json!({
        "template_key": "notice",
        "idempotency_key": "w2",
        "members": [member("u-2", "bob@example.com", json!({"name": "Bobby", "cohort": "c9"})),
                    member("u-3", "cy@example.com", json!({"name": "Cy"}))],
    });
    let (s, resp) = list_send(&ctx, body.clone()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{resp}");
    // Reconcile by default: u-2 updated, u-3 created, u-1 removed.
    assert_eq!(resp["member_sync"]["upsert_count"], 2, "{resp}");
    assert_eq!(resp["member_sync"]["removed_count"], 1, "{resp}");
    assert_eq!(resp["member_sync"]["dry_run"], false);
    assert_eq!(resp["recipient_list"]["active_member_count"], 2);
    assert_eq!(resp["created_count"], 2);
    assert_eq!(resp["enqueued_count"], 2);
    let keys: Vec<String> = messages(&ctx).await.into_iter().map(|r| r.0).collect();
    assert_eq!(keys, ["w2:u-2", "w2:u-3"]);
    let text: String = sqlx::query_scalar(
        "SELECT text_body FROM transactional_messages WHERE idempotency_key = 'w2:u-2'",
    )
    .fetch_one(ctx.pool())
    .await
    .unwrap();
    assert_eq!(text, "Bobby / c9 / ");

    // A first try that wrote only part of its messages (it died mid-way): the retry writes
    // the rest and replays the one that exists.
    sqlx::query("DELETE FROM queue_messages")
        .execute(ctx.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM email_events")
        .execute(ctx.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM cmp_callbacks")
        .execute(ctx.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM transactional_messages WHERE idempotency_key = 'w2:u-3'")
        .execute(ctx.pool())
        .await
        .unwrap();
    let (s, retry) = list_send(&ctx, body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{retry}");
    assert_eq!(retry["created_count"], 1, "{retry}");
    assert_eq!(retry["idempotent_replay_count"], 1, "{retry}");
    assert_eq!(retry["member_sync"]["removed_count"], 0, "{retry}");
    let bodies = ctx.queue_bodies().await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["idempotency_key"], "w2:u-3");

    // member_sync upsert keeps the members not given.
    let (s, up) = list_send(
        &ctx,
        json!({"template_key": "notice", "idempotency_key": "w3", "member_sync": "upsert",
               "members": [member("u-9", "dee@example.com", json!({"name": "Dee"}))]}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{up}");
    assert_eq!(up["member_sync"]["created_count"], 1, "{up}");
    assert_eq!(up["recipient_list"]["active_member_count"], 3, "{up}");
    assert_eq!(up["created_count"], 3);
}

#[tokio::test]
async fn one_member_without_its_context_refuses_the_whole_send_and_undoes_the_sync() {
    let Some(ctx) = setup().await else { return };
    notice_template(&ctx).await;
    bulk(
        &ctx,
        json!([member("u-1", "ada@example.com", json!({"name": "Ada"}))]),
    )
    .await;
    let before = ctx.counts().await;
    let (s, resp) = list_send(
        &ctx,
        json!({"template_key": "notice", "idempotency_key": "w1",
               "members": [member("u-1", "ada@example.com", json!({"name": "Ada"})),
                           member("u-2", "nameless@example.com", json!({}))]}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{resp}");
    assert_eq!(
        resp["error"]["fields"]["context.name"], "required",
        "{resp}"
    );
    assert_eq!(ctx.counts().await, before, "nothing written");
    let sources: Vec<String> =
        sqlx::query_scalar("SELECT source_object_key FROM recipient_list_members m JOIN recipient_lists l ON l.id = m.recipient_list_id WHERE l.key = $1")
            .bind(LIST)
            .fetch_all(ctx.pool())
            .await
            .unwrap();
    assert_eq!(sources, ["u-1"], "the member sync was rolled back");

    // The base context fills what a member lacks.
    let (s, ok) = list_send(
        &ctx,
        json!({"template_key": "notice", "idempotency_key": "w1", "context": {"name": "Friend"},
               "members": [member("u-2", "nameless@example.com", json!({}))]}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{ok}");
    assert_eq!(ok["created_count"], 1);
}

#[tokio::test]
async fn a_transient_list_is_sent_to_and_not_stored() {
    let Some(ctx) = setup().await else { return };
    notice_template(&ctx).await;
    sqlx::query("INSERT INTO contacts (email, normalized_email, complained_at) VALUES ('c@example.com', 'c@example.com', now())")
        .execute(ctx.pool())
        .await
        .unwrap();
    let body = scoped(json!({
        "template_key": "notice",
        "idempotency_key": "t-1",
        "list": {"key": "adhoc:@today", "name": "Today"},
        "context": {"name": "You"},
        "members": [
            member("a", "A@Example.com", json!({})),
            member("c", "c@example.com", json!({})),
            {"source_object_key": "r", "email": "r@example.com", "status": "removed"},
        ],
    }));
    let path = "/api/transient-recipient-lists/transactional-send";
    let (s, resp) = call(&ctx, Method::POST, path, body.clone()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(
        resp,
        json!({
            "transient_recipient_list": {"key": "adhoc:@today", "name": "Today",
                                         "member_count": 3, "active_member_count": 2},
            "template_key": "notice",
            "idempotency_key": "t-1",
            "created_count": 2,
            "enqueued_count": 1,
            "skipped_count": 1,
            "idempotent_replay_count": 0,
        })
    );
    assert_eq!(ctx.count("recipient_lists").await, 0);
    assert_eq!(ctx.count("recipient_list_members").await, 0);
    let rows = messages(&ctx).await;
    assert_eq!(rows[0].0, "t-1:a");
    assert_eq!(rows[0].3["transient_recipient_list_key"], "adhoc:@today");
    assert_eq!(rows[1].2, "complaint");
    let emails: Vec<String> =
        sqlx::query_scalar("SELECT email FROM transactional_messages ORDER BY id")
            .fetch_all(ctx.pool())
            .await
            .unwrap();
    assert!(emails.contains(&"a@example.com".to_string()), "{emails:?}");

    let (s, again) = call(&ctx, Method::POST, path, body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["idempotent_replay_count"], 2);
    assert_eq!(again["created_count"], 0);

    // The key falls back to list_key, then to the idempotency key.
    let (_, fallback) = call(
        &ctx,
        Method::POST,
        path,
        scoped(
            json!({"template_key": "notice", "idempotency_key": "t-2", "context": {"name": "x"},
                      "members": [member("a", "a@example.com", json!({}))]}),
        ),
    )
    .await;
    assert_eq!(
        fallback["transient_recipient_list"]["key"], "t-2",
        "{fallback}"
    );
    assert_eq!(fallback["transient_recipient_list"]["name"], "t-2");
}

#[tokio::test]
async fn bad_list_sends_name_the_field_and_write_nothing() {
    let Some(ctx) = setup().await else { return };
    notice_template(&ctx).await;
    let cases = [
        (
            json!({"template_key": "notice"}),
            "idempotency_key",
            "required",
        ),
        (
            json!({"template_key": "notice", "idempotency_key": "  "}),
            "idempotency_key",
            "required",
        ),
        (json!({"idempotency_key": "k"}), "template_key", "required"),
        (
            json!({"template_key": "notice", "idempotency_key": "k", "members": {}}),
            "members",
            "must_be_list",
        ),
        (
            json!({"template_key": "notice", "idempotency_key": "k", "member_sync": "merge"}),
            "member_sync",
            "invalid",
        ),
        (
            json!({"template_key": "notice", "idempotency_key": "k", "remove_absent_members": "no"}),
            "remove_absent_members",
            "must_be_boolean",
        ),
        (
            json!({"template_key": "notice", "idempotency_key": "k", "list": []}),
            "list",
            "must_be_object",
        ),
        (
            json!({"template_key": "notice", "idempotency_key": "k", "context": []}),
            "context",
            "must_be_object",
        ),
        (
            json!({"template_key": "notice", "idempotency_key": "k", "members": [{"email": "a@example.com"}]}),
            "members.0.source_object_key",
            "required",
        ),
        (
            json!({"template_key": "notice", "idempotency_key": "k", "members": [{"source_object_key": "a", "email": "nope"}]}),
            "member.email",
            "invalid",
        ),
    ];
    for (body, field, reason) in cases {
        let (s, resp) = list_send(&ctx, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} → {resp}");
        assert_eq!(resp["error"]["fields"][field], reason, "{body} → {resp}");
    }
    // A list that does not exist, a template that does not exist.
    let (s, resp) = list_send(
        &ctx,
        json!({"template_key": "notice", "idempotency_key": "k"}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{resp}");
    assert_eq!(resp["error"]["fields"]["list_key"], "not_found");
    let (s, resp) = list_send(
        &ctx,
        json!({"template_key": "nope", "idempotency_key": "k"}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{resp}");
    assert_eq!(resp["error"]["fields"]["template_key"], "not_found");

    let transient = "/api/transient-recipient-lists/transactional-send";
    for (body, field, reason) in [
        (
            json!({"template_key": "notice", "idempotency_key": "k"}),
            "members",
            "required",
        ),
        (
            json!({"template_key": "notice", "idempotency_key": "k", "members": []}),
            "members",
            "required",
        ),
        (
            json!({"template_key": "notice", "idempotency_key": "k", "members": [1, {"source_object_key": "b", "email": ""}]}),
            "members.0",
            "must_be_object",
        ),
        (
            json!({"template_key": "notice", "idempotency_key": "k", "members": [1, {"source_object_key": "b", "email": ""}]}),
            "members.1.email",
            "required",
        ),
        (
            json!({"template_key": "notice", "idempotency_key": "k", "list": {"key": "a/b"}, "members": [member("a", "a@example.com", json!({}))]}),
            "list.key",
            "invalid",
        ),
    ] {
        let (s, resp) = call(&ctx, Method::POST, transient, scoped(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} → {resp}");
        assert_eq!(resp["error"]["fields"][field], reason, "{body} → {resp}");
    }
    assert_eq!(ctx.count("transactional_messages").await, 0);
    assert_eq!(ctx.count("recipient_lists").await, 0);

    // A member key past the stored 255 characters is a 400, not a database error.
    let long_source = "s".repeat(200);
    let (s, resp) = call(
        &ctx,
        Method::POST,
        transient,
        scoped(
            json!({"template_key": "notice", "idempotency_key": "k".repeat(100),
                      "context": {"name": "x"},
                      "members": [member(&long_source, "a@example.com", json!({}))]}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{resp}");
    assert_eq!(resp["error"]["fields"]["idempotency_key"], "too_long");
    assert_eq!(ctx.count("transactional_messages").await, 0);
}

#[tokio::test]
async fn another_client_cannot_send_to_or_sync_this_clients_list() {
    let Some(ctx) = setup().await else { return };
    notice_template(&ctx).await;
    bulk(
        &ctx,
        json!([member("u-1", "ada@example.com", json!({"name": "Ada"}))]),
    )
    .await;
    let b = provision(
        ctx.pool(),
        &scope(
            "acme",
            "news",
            "blog",
            vec![sender("hello", "hello@example.com")],
        ),
    )
    .await
    .unwrap();
    let before = ctx.counts().await;
    let members_before = ctx.count("recipient_list_members").await;
    let body = json!({"template_key": "notice", "idempotency_key": "x",
                      "members": [member("evil", "evil@example.com", json!({"name": "E"}))]});
    // Naming this client's scope: 403.
    let mut as_shop = body.clone();
    as_shop["audience"] = json!("news");
    as_shop["client"] = json!("shop");
    let (s, resp) = ctx
        .call(
            Method::POST,
            &list_path(LIST, "/transactional-send"),
            &b.api_key,
            Some(as_shop),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{resp}");
    // In its own scope the list does not exist (no template either): 404, nothing written.
    let mut as_blog = json!({"template_key": "notice", "idempotency_key": "x"});
    as_blog["audience"] = json!("news");
    as_blog["client"] = json!("blog");
    let (s, resp) = ctx
        .call(
            Method::POST,
            &list_path(LIST, "/transactional-send"),
            &b.api_key,
            Some(as_blog.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{resp}");
    let (s, resp) = ctx
        .call(
            Method::POST,
            "/api/transient-recipient-lists/transactional-send",
            &b.api_key,
            Some(as_shop_transient()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{resp}");
    assert_eq!(ctx.counts().await, before);
    assert_eq!(ctx.count("recipient_list_members").await, members_before);
}

fn as_shop_transient() -> Value {
    scoped(json!({"template_key": "notice", "idempotency_key": "x",
                  "members": [member("a", "a@example.com", json!({"name": "A"}))]}))
}
