//! Recipient lists against a real Postgres (facts §6.8 "Recipient lists"): the cascade tree,
//! member listing, removal rules, bulk upsert and reconcile, import jobs worked by the
//! maintenance task from a real HTTP server, SSRF refusals and tenant isolation.

mod common;

use std::net::SocketAddr;

use axum::http::{Method, StatusCode};
use common::{scope, sender, setup, Ctx};
use datamailer_runtime::outbound::{OutboundClient, OutboundPolicy};
use datamailer_runtime::tree::HandlerContext;
use datamailer_web::lists::imports::ImportJobs;
use datamailer_web::provision::provision;
use serde_json::{json, Value};

const KEY: &str = "ml-2026:@e:@homework:homework-1";

async fn call(ctx: &Ctx, m: Method, path: &str, body: Value) -> (StatusCode, Value) {
    ctx.call(m, path, &ctx.a.api_key, Some(body)).await
}

fn scoped(extra: Value) -> Value {
    let mut body = json!({"audience": "news", "client": "shop"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn path(key: &str, rest: &str) -> String {
    format!("/api/recipient-lists/{}{rest}", key.replace('@', "%40"))
}

async fn put_member(ctx: &Ctx, key: &str, source: &str, email: &str, status: &str) -> Value {
    let (s, body) = call(
        ctx,
        Method::PUT,
        &path(key, &format!("/members/{source}")),
        scoped(json!({"member": {"email": email, "status": status}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

async fn member_rows(ctx: &Ctx) -> Vec<(String, String, bool)> {
    sqlx::query_as(
        "SELECT l.key, m.source_object_key, m.active FROM recipient_list_members m
         JOIN recipient_lists l ON l.id = m.recipient_list_id ORDER BY length(l.key), l.key",
    )
    .fetch_all(ctx.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_member_cascades_to_every_ancestor_idempotently() {
    let Some(ctx) = setup().await else { return };
    let body = put_member(&ctx, KEY, "hw-1-ada", "Ada@Example.com", "active").await;
    assert_eq!(body["created"], true);
    assert_eq!(body["member"]["email"], "ada@example.com");
    put_member(&ctx, KEY, "hw-1-ada", "ada@example.com", "active").await;
    let rows = member_rows(&ctx).await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(ctx.count("recipient_lists").await, 5);
    for (key, source, active) in &rows {
        assert!(active, "{key}");
        if key != KEY {
            assert!(source.starts_with("cascade-contact:"), "{key}: {source}");
        }
    }
    let (_, root) = ctx
        .call(
            Method::GET,
            &path("<all>", "/members?audience=news&client=shop")
                .replace('<', "%3C")
                .replace('>', "%3E"),
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(
        root["members"][0]["metadata"]["membership_reasons"],
        json!([{"list_key": KEY, "source_object_key": "hw-1-ada"}])
    );
    assert_eq!(root["recipient_list"]["active_member_count"], 1);
}

#[tokio::test]
async fn removals_cascade_and_explicit_parents_survive() {
    let Some(ctx) = setup().await else { return };
    put_member(&ctx, "course:a", "a-1", "bo@example.com", "active").await;
    put_member(&ctx, "course", "explicit-bo", "bo@example.com", "active").await;
    let (s, body) = call(
        &ctx,
        Method::DELETE,
        &path("course:a", "/members/a-1"),
        scoped(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["removed"], true);
    let rows = member_rows(&ctx).await;
    let active = |k: &str| rows.iter().find(|r| r.0 == k).map(|r| r.2);
    assert_eq!(active("course:a"), Some(false));
    assert_eq!(
        active("course"),
        Some(true),
        "the explicit parent membership survives"
    );
    assert_eq!(
        active("<all>"),
        Some(true),
        "the explicit parent still gives the root a reason"
    );
    let reasons: Value = sqlx::query_scalar(
        "SELECT m.metadata->'membership_reasons' FROM recipient_list_members m
         JOIN recipient_lists l ON l.id = m.recipient_list_id WHERE l.key = '<all>'",
    )
    .fetch_one(ctx.pool())
    .await
    .unwrap();
    assert_eq!(
        reasons,
        json!([{"list_key": "course", "source_object_key": "explicit-bo"}])
    );
    // A parent removal is ignored while a child still gives a reason.
    put_member(&ctx, "course:a", "a-1", "bo@example.com", "active").await;
    let (_, body) = call(
        &ctx,
        Method::DELETE,
        &path("course", "/members/explicit-bo"),
        scoped(json!({})),
    )
    .await;
    assert_eq!(body["member"]["active"], true, "{body}");
    // Deleting a member that does not exist creates nothing.
    let before = ctx.count("recipient_lists").await;
    let (s, body) = call(
        &ctx,
        Method::DELETE,
        &path("nowhere", "/members/x"),
        scoped(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["removed"], false);
    assert_eq!(ctx.count("recipient_lists").await, before);
}

#[tokio::test]
async fn listing_bulk_upsert_and_reconcile() {
    let Some(ctx) = setup().await else { return };
    let members: Vec<Value> = (0..4)
        .map(|i| {
            json!({"source_object_key": format!("m{i}"), "email": format!("m{i}@example.com"),
                        "status": if i == 3 { "removed" } else { "active" }})
        })
        .collect();
    let (s, body) = call(
        &ctx,
        Method::POST,
        &path("l", "/members/bulk-upsert"),
        scoped(json!({"members": members})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["created_count"], 4);
    let (s, bad) = call(&ctx, Method::POST, &path("l", "/members/bulk-upsert"),
        scoped(json!({"members": [{"source_object_key": "ok", "email": "ok@example.com"}, {"source_object_key": "x", "email": "nope"}]}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(bad["error"]["fields"]["member.email"], "invalid");
    let (_, list) = ctx
        .call(
            Method::GET,
            &path("l", "/members?audience=news&client=shop&limit=2"),
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(list["count"], 2);
    assert_eq!(list["has_more"], true);
    let (_, all) = ctx
        .call(
            Method::GET,
            &path(
                "l",
                "/members?audience=news&client=shop&include_removed=true",
            ),
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(all["count"], 4, "ok was not written: bulk upsert is atomic");

    let keep = json!([{"source_object_key": "m0", "email": "m0@example.com"}, {"source_object_key": "m9", "email": "m9@example.com"}]);
    let (_, dry) = call(
        &ctx,
        Method::POST,
        &path("l", "/members/reconcile"),
        scoped(json!({"members": keep, "dry_run": true})),
    )
    .await;
    assert_eq!(dry["removed_count"], 2, "{dry}");
    assert_eq!(dry["upsert_count"], 2);
    let (_, after_dry) = ctx
        .call(
            Method::GET,
            &path("l", "?audience=news&client=shop"),
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(
        after_dry["recipient_list"]["active_member_count"], 3,
        "a dry run writes nothing"
    );
    let (_, done) = call(
        &ctx,
        Method::POST,
        &path("l", "/members/reconcile"),
        scoped(json!({"members": keep})),
    )
    .await;
    assert_eq!(done["removed_count"], 2);
    assert_eq!(done["recipient_list"]["active_member_count"], 2);
    assert!(done["recipient_list"]["last_reconciled_at"].is_string());
}

#[tokio::test]
async fn lists_are_scoped_to_their_client() {
    let Some(ctx) = setup().await else { return };
    let blog = provision(
        ctx.pool(),
        &scope("acme", "news", "blog", vec![sender("s", "s@example.com")]),
    )
    .await
    .unwrap()
    .api_key;
    put_member(&ctx, "same", "a", "a@example.com", "active").await;
    let (s, body) = ctx
        .call(
            Method::GET,
            &path("same", "?audience=news&client=blog"),
            &blog,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["fields"]["list_key"], "not_found");
    let (s, _) = ctx
        .call(
            Method::GET,
            &path("same", "?audience=news&client=shop"),
            &blog,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = ctx
        .call(
            Method::PUT,
            &path("same", "/members/a"),
            &blog,
            Some(
                json!({"audience": "news", "client": "shop", "member": {"email": "x@example.com"}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = ctx
        .call(
            Method::PUT,
            &path("same", "/members/b"),
            &blog,
            Some(
                json!({"audience": "news", "client": "blog", "member": {"email": "b@example.com"}}),
            ),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the same key under another client is another list"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM recipient_lists WHERE key = 'same'")
        .fetch_one(ctx.pool())
        .await
        .unwrap();
    assert_eq!(n, 2);
    let (_, mine) = ctx
        .call(
            Method::GET,
            &path("same", "/members?audience=news&client=shop"),
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(mine["count"], 1);
}

async fn jsonl_server(body: &'static str) -> SocketAddr {
    let app = axum::Router::new().route(
        "/members.jsonl",
        axum::routing::get(move || async move { body }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn worker(ctx: &Ctx, allow: &str) -> ImportJobs {
    ImportJobs {
        db: ctx.pool().clone(),
        http: OutboundClient::new(OutboundPolicy::from_allow_list(allow)).unwrap(),
        batch: 5,
    }
}

async fn job(ctx: &Ctx, key: &str, url: &str, idem: &str) -> (StatusCode, Value) {
    call(
        ctx,
        Method::POST,
        &path(key, "/imports"),
        scoped(json!({"source_url": url, "idempotency_key": idem})),
    )
    .await
}

#[tokio::test]
async fn import_jobs_are_idempotent_and_worked_by_the_maintenance_task() {
    let Some(ctx) = setup().await else { return };
    let good = jsonl_server("{\"source_object_key\":\"a\",\"email\":\"a@example.com\"}\n\n{\"source_object_key\":\"b\",\"email\":\"b@example.com\",\"status\":\"active\"}\n").await;
    let bad =
        jsonl_server("not json\n{\"source_object_key\":\"c\",\"email\":\"c@example.com\"}\n").await;
    let url = format!("http://{good}/members.jsonl");
    let (s, first) = job(&ctx, "imp", &url, "k1").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{first}");
    let (s, replay) = job(&ctx, "imp", &url, "k1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(replay["import_job"]["id"], first["import_job"]["id"]);
    let (s, _) = job(&ctx, "broken", &format!("http://{bad}/members.jsonl"), "").await;
    assert_eq!(s, StatusCode::ACCEPTED);

    let report = worker(&ctx, "127.0.0.1")
        .drain(&HandlerContext::unbounded(5))
        .await
        .unwrap();
    assert_eq!(report.detail, "processed=2 succeeded=1 failed=1");
    let id = first["import_job"]["id"].as_i64().unwrap();
    let (_, done) = ctx
        .call(
            Method::GET,
            &path("imp", &format!("/imports/{id}?audience=news&client=shop")),
            &ctx.a.api_key,
            None,
        )
        .await;
    let j = &done["import_job"];
    assert_eq!(j["status"], "succeeded", "{done}");
    assert_eq!(j["row_count"], 2);
    assert_eq!(j["content_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(j["recipient_list"]["active_member_count"], 2);
    let failed: (String, Value) = sqlx::query_as(
        "SELECT error, failed_rows FROM recipient_list_import_jobs WHERE list_key = 'broken'",
    )
    .fetch_one(ctx.pool())
    .await
    .unwrap();
    assert_eq!(failed.0, "row_validation_failed");
    assert_eq!(failed.1[0]["line"], 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM recipient_lists WHERE key = 'broken'")
        .fetch_one(ctx.pool())
        .await
        .unwrap();
    assert_eq!(n, 0, "a bad line writes no list and no member");
    let idle = worker(&ctx, "127.0.0.1")
        .drain(&HandlerContext::unbounded(5))
        .await
        .unwrap();
    assert_eq!(idle.detail, "processed=0 succeeded=0 failed=0");
    let (s, _) = ctx
        .call(
            Method::GET,
            &path("imp", "/imports/999999?audience=news&client=shop"),
            &ctx.a.api_key,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn import_urls_to_private_addresses_are_refused() {
    let Some(ctx) = setup().await else { return };
    let local = jsonl_server("{\"source_object_key\":\"a\",\"email\":\"a@example.com\"}\n").await;
    for url in [
        format!("http://{local}/members.jsonl"),
        "http://169.254.169.254/latest/meta-data".to_string(),
        format!("http://localhost:{}/members.jsonl", local.port()),
    ] {
        let (s, _) = job(&ctx, "ssrf", &url, "").await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let report = worker(&ctx, "")
        .drain(&HandlerContext::unbounded(5))
        .await
        .unwrap();
    assert_eq!(report.detail, "processed=3 succeeded=0 failed=3");
    let errors: Vec<String> =
        sqlx::query_scalar("SELECT error FROM recipient_list_import_jobs ORDER BY id")
            .fetch_all(ctx.pool())
            .await
            .unwrap();
    for e in &errors {
        assert!(e.contains("refused"), "{e}");
    }
    assert_eq!(ctx.count("recipient_list_members").await, 0);
    let (s, body) = job(&ctx, "x", "ftp://example.com/a", "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["fields"]["source_url"], "invalid");
}
