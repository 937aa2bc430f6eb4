//! Campaigns end to end through real parts: the web API in-process, the real
//! `datamailer worker --queue campaign-email` (embedded Postgres queue, capture mailer), and
//! the public tracking and unsubscribe endpoints hit with the URLs the mail carries.

mod support;

use std::process::Command;
use std::time::Duration;

use datamailer_runtime::producer::Producer;
use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use support::*;

/// Sendable contacts, and contacts each skip rule catches.
const SENDABLE: i64 = 1500;
const UNVERIFIED: i64 = 40;
const BOUNCED: i64 = 30;
const UNSUBSCRIBED: i64 = 20;

async fn seed(pool: &sqlx::PgPool, client_id: i64) {
    sqlx::raw_sql(&format!(
        "WITH a AS (SELECT id FROM audiences WHERE slug = 'news'),
         c AS (
           INSERT INTO contacts (email, normalized_email, verified_at, hard_bounced_at)
           SELECT 'u' || g || '@example.com', 'u' || g || '@example.com',
                  CASE WHEN g > {SENDABLE} AND g <= {SENDABLE} + {UNVERIFIED} THEN NULL ELSE now() END,
                  CASE WHEN g > {SENDABLE} + {UNVERIFIED} AND g <= {SENDABLE} + {UNVERIFIED} + {BOUNCED}
                       THEN now() END
             FROM generate_series(1, {SENDABLE} + {UNVERIFIED} + {BOUNCED} + {UNSUBSCRIBED}) g
           RETURNING id, email)
         INSERT INTO subscriptions (contact_id, audience_id, client_id, status)
         SELECT c.id, a.id, {client_id},
                CASE WHEN split_part(split_part(c.email, '@', 1), 'u', 2)::int
                          > {SENDABLE} + {UNVERIFIED} + {BOUNCED} THEN 'unsubscribed' ELSE 'subscribed' END
           FROM c, a"
    ))
    .execute(pool)
    .await
    .unwrap();
}

struct Api {
    web: Web,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .web
            .http
            .request(method, format!("{}{path}", self.web.base))
            .bearer_auth(&self.web.api_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, body).await
    }

    async fn campaign(&self, key: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/campaigns/{key}?audience=news&client=shop"),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["campaign"].clone()
    }

    async fn put(&self, key: &str) {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/api/campaigns/{key}"),
                json!({
                    "audience": "news",
                    "client": "shop",
                    "subject": format!("News {key}"),
                    "html_body": "<p>Read <a href=\"https://blog.example.com/post?id=7&amp;x=1\">this</a> or <a href=\"mailto:hi@example.com\">write</a>.</p>",
                    "text_body": "Read https://blog.example.com/post",
                    "from": "support",
                }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

async fn wait_status(api: &Api, key: &str, status: &str) -> Value {
    wait_for(
        &format!("campaign {key} {status}"),
        Duration::from_secs(90),
        || async {
            let c = api.campaign(key).await;
            (c["status"] == status).then_some(c)
        },
    )
    .await
}

/// Captured mail of one campaign: (to, html, headers).
async fn captured(pool: &sqlx::PgPool, campaign_id: i64) -> Vec<(String, String, Value)> {
    sqlx::query_as(
        "SELECT to_addresses ->> 0, html_body, headers FROM captured_messages
          WHERE tags ->> 'datamailer_campaign' = $1 ORDER BY id",
    )
    .bind(campaign_id.to_string())
    .fetch_all(pool)
    .await
    .unwrap()
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let from = s.find(start).unwrap_or_else(|| panic!("{start} in {s}")) + start.len();
    let to = s[from..].find(end).unwrap() + from;
    &s[from..to]
}

#[tokio::test]
async fn a_campaign_reaches_every_recipient_once_with_exact_counters_and_tracking() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let scope = provision(&db.pool, "news@example.com").await;
    seed(&db.pool, scope.client_id).await;
    let api = Api {
        web: start_web(db.pool.clone(), Producer::Postgres, &scope.api_key).await,
    };

    // Bad input names the field; the estimate writes nothing and applies the skip rules.
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            "/api/campaigns/x",
            json!({"audience": "news", "client": "shop", "subject": " "}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["fields"]["subject"], "required", "{body}");
    api.put("march").await;
    let (status, body) = api
        .post(
            "/api/campaigns/march/estimate",
            json!({"audience": "news", "client": "shop"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let estimate = &body["estimate"];
    assert_eq!(estimate["recipient_count"], SENDABLE, "{body}");
    assert_eq!(estimate["skip_reasons"]["unverified"], UNVERIFIED);
    assert_eq!(estimate["skip_reasons"]["hard_bounce"], BOUNCED);
    assert_eq!(estimate["skip_reasons"]["client_unsubscribe"], UNSUBSCRIBED);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM campaign_recipients")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);

    // Queue answers 202 at once; a replay queues nothing.
    let (status, body) = api
        .post(
            "/api/campaigns/march/queue",
            json!({"audience": "news", "client": "shop"}),
        )
        .await;
    assert_eq!((status, &body["queued"]), (202, &json!(true)), "{body}");
    let (status, body) = api
        .post(
            "/api/campaigns/march/queue",
            json!({"audience": "news", "client": "shop"}),
        )
        .await;
    assert_eq!((status, &body["queued"]), (202, &json!(false)), "{body}");
    // A second campaign, paused right after queueing: it must wait for its resume.
    api.put("april").await;
    api.post(
        "/api/campaigns/april/queue",
        json!({"audience": "news", "client": "shop"}),
    )
    .await;
    let (status, body) = api
        .post(
            "/api/campaigns/april/pause",
            json!({"audience": "news", "client": "shop", "reason": "proofreading"}),
        )
        .await;
    assert_eq!((status, &body["paused"]), (200, &json!(true)), "{body}");

    let mut worker = Command::new(BIN);
    worker
        .args(["worker", "--queue", "campaign-email"])
        .env("DATABASE_URL", &db.url)
        .env("PUBLIC_BASE_URL", &api.web.base)
        .env(
            "DATAMAILER_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("DATAMAILER_UNSUBSCRIBE_MAILTO", "unsubscribe@example.com")
        .env("RUST_LOG", "warn");
    let _worker = Process::spawn("campaign worker", worker);

    let march = wait_status(&api, "march", "sent").await;
    assert_eq!(march["recipient_count"], SENDABLE, "{march}");
    assert_eq!(march["sent_count"], SENDABLE, "{march}");
    assert_eq!(
        march["skipped_count"],
        UNVERIFIED + BOUNCED + UNSUBSCRIBED,
        "{march}"
    );
    for stamp in [
        "queued_at",
        "snapshot_started_at",
        "snapshot_finished_at",
        "sending_started_at",
        "sent_at",
    ] {
        assert!(march[stamp].is_string(), "{stamp}: {march}");
    }
    let march_id: i64 = sqlx::query_scalar("SELECT id FROM campaigns WHERE external_key = 'march'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let mail = captured(&db.pool, march_id).await;
    let mut recipients: Vec<&str> = mail.iter().map(|(to, _, _)| to.as_str()).collect();
    recipients.sort_unstable();
    recipients.dedup();
    assert_eq!(mail.len() as i64, SENDABLE, "one mail per recipient");
    assert_eq!(recipients.len() as i64, SENDABLE, "nobody twice");
    let sent_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_events WHERE campaign_id = $1 AND event_type = 'sent'",
    )
    .bind(march_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(sent_events, SENDABLE);

    // The paused campaign sent nothing; resumed, it completes.
    let april = api.campaign("april").await;
    assert_eq!(
        (april["sent_count"].clone(), april["paused"].clone()),
        (json!(0), json!(true)),
        "{april}"
    );
    let (status, _) = api
        .post(
            "/api/campaigns/april/resume",
            json!({"audience": "news", "client": "shop"}),
        )
        .await;
    assert_eq!(status, 200);
    let april = wait_status(&api, "april", "sent").await;
    assert_eq!(april["sent_count"], SENDABLE, "{april}");
    let (status, body) = api
        .post(
            "/api/campaigns/april/cancel",
            json!({"audience": "news", "client": "shop"}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["fields"]["status"]),
        (409, &json!("not_cancellable")),
        "{body}"
    );

    // The mail: tracked link with a signed destination, mailto untouched, one-click headers.
    let (to, html, headers) = &mail[0];
    assert!(html.contains("href=\"mailto:hi@example.com\""), "{html}");
    let unsubscribe = format!("{}/unsubscribe/", api.web.base);
    let list_unsubscribe = headers["List-Unsubscribe"]
        .as_str()
        .unwrap_or_else(|| panic!("{headers}"));
    assert!(
        list_unsubscribe.starts_with(&format!("<{unsubscribe}")),
        "{list_unsubscribe}"
    );
    assert!(list_unsubscribe.ends_with("<mailto:unsubscribe@example.com?subject=unsubscribe>"));
    assert_eq!(
        headers["List-Unsubscribe-Post"],
        "List-Unsubscribe=One-Click"
    );
    let pixel = format!(
        "{}/t/o/{}.gif",
        api.web.base,
        between(html, "/t/o/", ".gif")
    );
    let click =
        format!("{}/t/c/{}", api.web.base, between(html, "/t/c/", "\"")).replace("&amp;", "&");
    let unsub = format!("{unsubscribe}{}", between(html, "/unsubscribe/", "\""));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // A hit right after the send is a machine's (scanner, proxy): recorded, not counted.
    let resp = http.get(&pixel).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/gif");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..2 {
        assert_eq!(http.get(&pixel).send().await.unwrap().status(), 200);
    }
    let resp = http.get(&click).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        "https://blog.example.com/post?id=7&x=1"
    );
    let march = api.campaign("march").await;
    assert_eq!(
        (
            march["open_count"].clone(),
            march["unique_open_count"].clone()
        ),
        (json!(2), json!(1)),
        "{march}"
    );
    assert_eq!(
        (
            march["click_count"].clone(),
            march["unique_click_count"].clone()
        ),
        (json!(1), json!(1))
    );
    let machine: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_events WHERE event_type = 'open' AND metadata ->> 'machine' = 'true'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(machine, 1);

    // Forged tokens and redirects go nowhere and touch nothing.
    let forged_pixel = pixel.replace("/t/o/", "/t/o/A");
    assert_eq!(http.get(&forged_pixel).send().await.unwrap().status(), 404);
    let elsewhere = click.replace("blog.example.com", "evil.example");
    assert_eq!(http.get(&elsewhere).send().await.unwrap().status(), 400);
    let unsigned = click.split("&s=").next().unwrap().to_string();
    assert_eq!(http.get(&unsigned).send().await.unwrap().status(), 400);
    let tracking_as_unsubscribe = format!("{unsubscribe}{}", between(html, "/t/o/", ".gif"));
    assert_eq!(
        http.get(&tracking_as_unsubscribe)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // GET only shows the page; the one-click POST unsubscribes at once.
    let page = http.get(&unsub).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains(to.as_str()) && page.contains("name=\"scope\""),
        "{page}"
    );
    let status_of = |email: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT s.status FROM subscriptions s JOIN contacts c ON c.id = s.contact_id
                  WHERE c.normalized_email = $1 AND s.client_id IS NOT NULL",
            )
            .bind(email)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(status_of(to.clone()).await, "subscribed");
    let done = http
        .post(&unsub)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(status_of(to.clone()).await, "unsubscribed");
    let bad_scope = http
        .post(&unsub)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("scope=everything")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_scope.status(), 400);
    let march = api.campaign("march").await;
    assert_eq!(march["unsubscribe_count"], 1, "{march}");

    let (status, body) = api
        .call(
            reqwest::Method::GET,
            "/api/campaigns?audience=news&client=shop&status=sent&limit=1",
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["campaigns"][0]["external_key"], "april", "{body}");
    assert!(body["next_after"].is_string(), "{body}");

    db.drop_db().await;
}
