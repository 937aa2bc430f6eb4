//! Campaigns end to end through real parts: the web API in-process, the real
//! `datamailer worker --queue campaign-email` (embedded Postgres queue, capture mailer), and
//! the public tracking and unsubscribe endpoints hit with the URLs the mail carries.

mod support;

use std::process::Command;
use std::time::Duration;

use datamailer_runtime::producer::Producer;
use datamailer_testkit::fake_ses::{Behaviour, FakeSes};
use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use support::*;

/// Sendable contacts, and contacts each skip rule catches.
const SENDABLE: i64 = 1500;
const UNVERIFIED: i64 = 40;
const BOUNCED: i64 = 30;
const UNSUBSCRIBED: i64 = 20;

async fn seed(pool: &sqlx::PgPool, client_id: i64) {
    seed_counts(pool, client_id, SENDABLE, UNVERIFIED, BOUNCED, UNSUBSCRIBED).await
}

/// `s` verified subscribers, then `v` unverified, `b` hard-bounced and `u` unsubscribed ones.
async fn seed_counts(pool: &sqlx::PgPool, client_id: i64, s: i64, v: i64, b: i64, u: i64) {
    sqlx::raw_sql(&format!(
        "WITH a AS (SELECT id FROM audiences WHERE slug = 'news'),
         c AS (
           INSERT INTO contacts (email, normalized_email, verified_at, hard_bounced_at)
           SELECT 'u' || g || '@example.com', 'u' || g || '@example.com',
                  CASE WHEN g > {s} AND g <= {s} + {v} THEN NULL ELSE now() END,
                  CASE WHEN g > {s} + {v} AND g <= {s} + {v} + {b} THEN now() END
             FROM generate_series(1, {s} + {v} + {b} + {u}) g
           RETURNING id, email)
         INSERT INTO subscriptions (contact_id, audience_id, client_id, status)
         SELECT c.id, a.id, {client_id},
                CASE WHEN split_part(split_part(c.email, '@', 1), 'u', 2)::int > {s} + {v} + {b}
                     THEN 'unsubscribed' ELSE 'subscribed' END
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
    // "Right after", however slow this machine is today: the sends move to now.
    sqlx::query(
        "UPDATE campaign_recipients SET sent_at = now()
          WHERE campaign_id = (SELECT id FROM campaigns WHERE external_key = 'march')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
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

/// A provisioned scope with `n` sendable subscribers, the API, and campaign `key` queued.
async fn queued_campaign(n: i64, key: &str) -> Option<(TestDb, Api, i64)> {
    queued_campaign_on(n, key, Producer::Postgres).await
}

/// A campaign to `n` subscribers, queued through a web whose fan-out goes to `producer`.
async fn queued_campaign_on(n: i64, key: &str, producer: Producer) -> Option<(TestDb, Api, i64)> {
    let db = TestDb::create().await?;
    let scope = provision(&db.pool, "news@example.com").await;
    seed_counts(&db.pool, scope.client_id, n, 0, 0, 0).await;
    let api = Api {
        web: start_web(db.pool.clone(), producer, &scope.api_key).await,
    };
    api.put(key).await;
    let (status, body) = api
        .post(
            &format!("/api/campaigns/{key}/queue"),
            json!({"audience": "news", "client": "shop"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id: i64 = sqlx::query_scalar("SELECT id FROM campaigns WHERE external_key = $1")
        .bind(key)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    Some((db, api, id))
}

fn campaign_worker(db: &TestDb, api: &Api, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--queue", "campaign-email"])
        .env("DATABASE_URL", &db.url)
        .env("PUBLIC_BASE_URL", &api.web.base)
        .env(
            "DATAMAILER_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v.as_str())));
    cmd
}

#[tokio::test]
async fn a_worker_killed_again_and_again_mid_campaign_loses_no_recipient_and_sends_none_twice() {
    const N: i64 = 3000;
    let Some((db, api, id)) = queued_campaign(N, "kills").await else {
        return;
    };
    kill_and_restart_until_sent(&db, &api, id, N, 8, &[]).await;
    db.drop_db().await;
}

/// The same on SQS (moto): messages in flight at a kill stay invisible for the queue's
/// visibility timeout (30 s), so recovery leans on leases, redelivery and maintenance
/// re-batching pending recipients, with no operator.
#[tokio::test]
async fn a_worker_on_sqs_killed_mid_campaign_loses_no_recipient_and_sends_none_twice() {
    const N: i64 = 2000;
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&endpoint).await);
    let queues = create_queues(&sqs, &unique("dm-campaign-kills")).await;
    // Required configuration on SQS, though this worker runs only the campaign tree.
    let transactional = create_queues(&sqs, &unique("dm-campaign-kills-tx")).await;
    let urls = [("campaign-email".to_string(), queues.url.clone())].into();
    let producer = Producer::Sqs(datamailer_runtime::producer::SqsProducer::new(
        sqs.clone(),
        urls,
    ));
    let Some((db, api, id)) = queued_campaign_on(N, "sqs-kills", producer).await else {
        return;
    };
    let env = [
        ("DATAMAILER_QUEUE_BACKEND", "sqs".to_string()),
        (
            "SQS_TRANSACTIONAL_EMAIL_QUEUE_URL",
            transactional.url.clone(),
        ),
        ("SQS_CAMPAIGN_EMAIL_QUEUE_URL", queues.url.clone()),
        ("SQS_CAMPAIGN_EMAIL_DLQ_URL", queues.dlq_url.clone()),
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    kill_and_restart_until_sent(&db, &api, id, N, 4, &env).await;
    assert_eq!(
        queue_depth(&sqs, &queues.dlq_url).await,
        (0, 0),
        "nothing dead-lettered"
    );
    db.drop_db().await;
}

/// SIGKILLs a campaign worker `kills` times, each time just after the sends pass the next
/// of `kills` evenly spaced marks, then lets one run: the campaign ends `sent`, every
/// recipient mailed exactly once, no row left in flight.
async fn kill_and_restart_until_sent(
    db: &TestDb,
    api: &Api,
    id: i64,
    n: i64,
    kills: i64,
    extra: &[(&str, String)],
) {
    // Short leases and batch horizon so recovery fits in a test; batches of 50.
    let mut env = vec![
        ("DATAMAILER_CAMPAIGN_LEASE_SECONDS", "2".to_string()),
        ("DATAMAILER_CAMPAIGN_BATCH_HORIZON_SECONDS", "4".to_string()),
        ("DATAMAILER_CAMPAIGN_BATCH_SIZE", "50".to_string()),
    ];
    env.extend(extra.iter().cloned());
    let captured_count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM captured_messages")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    let mut sent_before_kill = Vec::new();
    for i in 1..=kills {
        let worker = Process::spawn("campaign worker", campaign_worker(db, api, &env));
        let mark = n * i / (kills + 1);
        wait_for(
            &format!("{mark} sends before kill {i}"),
            Duration::from_secs(60),
            || async { (captured_count().await >= mark).then_some(()) },
        )
        .await;
        drop(worker); // SIGKILL
        sent_before_kill.push(captured_count().await);
    }
    assert!(
        sent_before_kill.iter().any(|k| *k > 0 && *k < n),
        "some kills must land mid-campaign: {sent_before_kill:?}"
    );
    let _worker = Process::spawn("campaign worker", campaign_worker(db, api, &env));
    let key: String = sqlx::query_scalar("SELECT external_key FROM campaigns WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let done = wait_status(api, &key, "sent").await;
    assert_eq!(done["sent_count"], n, "{done}");
    let mail = captured(&db.pool, id).await;
    let mut recipients: Vec<&str> = mail.iter().map(|(to, _, _)| to.as_str()).collect();
    recipients.sort_unstable();
    recipients.dedup();
    assert_eq!(recipients.len() as i64, n, "every recipient reached");
    // The capture outbox is the send ledger, so reconciliation finds every accepted send:
    // no recipient twice (the bound would be the sends in flight at each kill).
    assert_eq!(
        mail.len() as i64,
        n,
        "after kills at {sent_before_kill:?}: duplicates"
    );
    let stuck: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM campaign_recipients WHERE campaign_id = $1 AND status <> 'sent'",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stuck, 0);
}

/// One pass of every maintenance task, as `datamailer maintain --once` runs it.
fn maintain_once(db: &TestDb) {
    let out = Command::new(BIN)
        .args(["maintain", "--once"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A worker's environment for the SES mailer against the fake at `endpoint`.
fn ses_env(endpoint: &str, rate: f64) -> Vec<(&'static str, String)> {
    vec![
        ("DATAMAILER_MAILER", "ses".to_string()),
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("DATAMAILER_SES_MAX_SEND_RATE", rate.to_string()),
    ]
}

#[tokio::test]
async fn two_sending_processes_hold_the_configured_rate_together() {
    const N: i64 = 300;
    const RATE: f64 = 20.0;
    let Some((db, api, _)) = queued_campaign(N, "rate").await else {
        return;
    };
    // GetAccount says 100/s: the configured 20/s stays the ceiling.
    let ses = FakeSes::start_in_background(Behaviour {
        max_send_rate: 100.0,
        ..Default::default()
    });
    let mut env = ses_env(&ses.endpoint(), RATE);
    env.push(("DATAMAILER_CAMPAIGN_BATCH_SIZE", "10".to_string()));
    let _a = Process::spawn("sender a", campaign_worker(&db, &api, &env));
    let _b = Process::spawn("sender b", campaign_worker(&db, &api, &env));
    let done = wait_status(&api, "rate", "sent").await;
    assert_eq!(done["sent_count"], N, "{done}");

    let times = ses.send_times();
    assert_eq!(times.len() as i64, N);
    // No one-second window holds more than the rate allows (one slot every 1/RATE s; a
    // little network jitter at the fake's end).
    let most = times
        .iter()
        .map(|t| times.iter().filter(|u| **u >= *t && **u < t + 1.0).count())
        .max()
        .unwrap();
    assert!(most as f64 <= RATE + 2.0, "{most} sends in one second");
    let span = times.last().unwrap() - times.first().unwrap();
    let rate = (times.len() - 1) as f64 / span;
    assert!(rate <= RATE * 1.02, "overall {rate:.1}/s");
    assert!(
        rate >= RATE * 0.8,
        "both processes shared the rate, not idled: {rate:.1}/s"
    );
    db.drop_db().await;
}

/// One contact per skip rule (facts §3.4, §6.4), by email; the rules as `estimate` (and so the
/// snapshot, which shares them) applies them, then tag and list filters.
#[tokio::test]
async fn each_skip_rule_and_the_tag_and_list_filters_as_the_original() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let scope = provision(&db.pool, "news@example.com").await;
    let client = scope.client_id;
    sqlx::raw_sql(&format!(
        "WITH a AS (SELECT id FROM audiences WHERE slug = 'news'),
         c AS (INSERT INTO contacts (email, normalized_email, verified_at, global_unsubscribed_at,
                                     hard_bounced_at, complained_at, email_validation_status)
               VALUES ('ok@x.test', 'ok@x.test', now(), NULL, NULL, NULL, 'unknown'),
                      ('unverified@x.test', 'unverified@x.test', NULL, NULL, NULL, NULL, 'unknown'),
                      ('global@x.test', 'global@x.test', now(), now(), NULL, NULL, 'unknown'),
                      ('clientunsub@x.test', 'clientunsub@x.test', now(), NULL, NULL, NULL, 'unknown'),
                      ('audunsub@x.test', 'audunsub@x.test', now(), NULL, NULL, NULL, 'unknown'),
                      ('bounced@x.test', 'bounced@x.test', now(), NULL, now(), NULL, 'unknown'),
                      ('complained@x.test', 'complained@x.test', now(), NULL, NULL, now(), 'unknown'),
                      ('nomx@x.test', 'nomx@x.test', now(), NULL, NULL, NULL, 'no_mx'),
                      ('pending@x.test', 'pending@x.test', now(), NULL, NULL, NULL, 'unknown'),
                      ('nocategory@x.test', 'nocategory@x.test', now(), NULL, NULL, NULL, 'unknown')
               RETURNING id, email)
         INSERT INTO subscriptions (contact_id, audience_id, client_id, status)
         SELECT c.id, a.id, {client},
                CASE c.email WHEN 'clientunsub@x.test' THEN 'unsubscribed'
                             WHEN 'pending@x.test' THEN 'pending' ELSE 'subscribed' END
           FROM c, a;
         INSERT INTO subscriptions (contact_id, audience_id, client_id, status)
         SELECT c.id, a.id, NULL, 'unsubscribed' FROM contacts c, audiences a
          WHERE c.email = 'audunsub@x.test' AND a.slug = 'news';
         INSERT INTO category_preferences (contact_id, audience_id, client_id, tag, enabled)
         SELECT c.id, a.id, {client}, 'events', false FROM contacts c, audiences a
          WHERE c.email = 'nocategory@x.test' AND a.slug = 'news';"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let api = Api {
        web: start_web(db.pool.clone(), Producer::Postgres, &scope.api_key).await,
    };
    let estimate = |body: Value| {
        let api = &api;
        async move {
            let mut put =
                json!({"audience": "news", "client": "shop", "subject": "S", "text_body": "T"});
            put.as_object_mut()
                .unwrap()
                .extend(body.as_object().unwrap().clone());
            let (status, b) = api
                .call(reqwest::Method::PUT, "/api/campaigns/rules", put)
                .await;
            assert!(status == 200 || status == 201, "{b}");
            let (status, b) = api
                .post(
                    "/api/campaigns/rules/estimate",
                    json!({"audience": "news", "client": "shop"}),
                )
                .await;
            assert_eq!(status, 200, "{b}");
            b["estimate"]["preview"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["email"].as_str().unwrap().to_string(),
                        r["skip_reason"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<std::collections::BTreeMap<String, String>>()
        }
    };
    let got = estimate(json!({"category_tag": "Events"})).await;
    let want: std::collections::BTreeMap<String, String> = [
        ("ok@x.test", ""),
        ("unverified@x.test", "unverified"),
        ("global@x.test", "global_unsubscribe"),
        ("clientunsub@x.test", "client_unsubscribe"),
        ("audunsub@x.test", "audience_unsubscribe"),
        ("bounced@x.test", "hard_bounce"),
        ("complained@x.test", "complaint"),
        ("nomx@x.test", "invalid_email"),
        ("pending@x.test", "suppressed"),
        ("nocategory@x.test", "client_unsubscribe"),
    ]
    .into_iter()
    .map(|(e, r)| (e.to_string(), r.to_string()))
    .collect();
    assert_eq!(got, want);
    // Without the category, the disabled preference does not matter.
    assert_eq!(
        estimate(json!({"category_tag": ""})).await["nocategory@x.test"],
        ""
    );

    // Include needs every tag; exclude removes.
    sqlx::raw_sql(
        "INSERT INTO tags (audience_id, name, slug)
         SELECT id, 'A', 'a' FROM audiences WHERE slug = 'news'
         UNION ALL SELECT id, 'B', 'b' FROM audiences WHERE slug = 'news';
         INSERT INTO contact_tags (contact_id, tag_id)
         SELECT c.id, t.id FROM contacts c, tags t
          WHERE (c.email = 'ok@x.test' AND t.slug IN ('a', 'b')) OR (c.email = 'pending@x.test' AND t.slug = 'a');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let got = estimate(json!({"include_tags": ["A", "b"], "exclude_tags": []})).await;
    assert_eq!(got.keys().collect::<Vec<_>>(), vec!["ok@x.test"]);
    let got = estimate(json!({"include_tags": ["a"], "exclude_tags": ["b"]})).await;
    assert_eq!(got.keys().collect::<Vec<_>>(), vec!["pending@x.test"]);
    // An include tag that does not exist matches no one.
    assert!(
        estimate(json!({"include_tags": ["nope"], "exclude_tags": []}))
            .await
            .is_empty()
    );

    // A recipient list: only its active members.
    sqlx::raw_sql(&format!(
        "WITH a AS (SELECT id FROM audiences WHERE slug = 'news'),
         l AS (INSERT INTO recipient_lists (client_id, audience_id, key) SELECT {client}, a.id, 'vip' FROM a RETURNING id)
         INSERT INTO recipient_list_members (recipient_list_id, contact_id, email, source_object_key, active)
         SELECT l.id, c.id, c.email, c.email, c.email = 'ok@x.test' FROM l, contacts c
          WHERE c.email IN ('ok@x.test', 'bounced@x.test')"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let got = estimate(json!({"include_tags": [], "recipient_list_key": "vip"})).await;
    assert_eq!(got.keys().collect::<Vec<_>>(), vec!["ok@x.test"]);
    db.drop_db().await;
}

/// `scheduled_at` is honoured (the original stored it and never acted): queued now, fanned
/// out by maintenance once due, not before.
#[tokio::test]
async fn a_scheduled_campaign_starts_when_due_by_maintenance() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let scope = provision(&db.pool, "news@example.com").await;
    seed_counts(&db.pool, scope.client_id, 30, 0, 0, 0).await;
    let api = Api {
        web: start_web(db.pool.clone(), Producer::Postgres, &scope.api_key).await,
    };
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            "/api/campaigns/later",
            json!({"audience": "news", "client": "shop", "subject": "Later", "text_body": "T",
                   "scheduled_at": at.to_rfc3339()}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    api.post(
        "/api/campaigns/later/queue",
        json!({"audience": "news", "client": "shop"}),
    )
    .await;
    let maintain = || maintain_once(&db);
    maintain();
    let c = api.campaign("later").await;
    assert_eq!(c["status"], "queued", "not before it is due: {c}");
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM queue_messages WHERE queue = 'campaign-email'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(queued, 0, "no fan-out message for a scheduled campaign");
    tokio::time::sleep(Duration::from_secs(4)).await;
    maintain();
    let c = api.campaign("later").await;
    assert_eq!(
        (c["status"].clone(), c["recipient_count"].clone()),
        (json!("sending"), json!(30)),
        "{c}"
    );
    db.drop_db().await;
}

/// Async tracking: the pixel answers at once and enqueues an `email-events` message; the
/// email-events tree applies it with the same rules; a redelivered message counts nothing twice.
#[tokio::test]
async fn async_opens_go_through_the_email_events_tree_and_count_once() {
    let Some((db, api, id)) = queued_campaign(3, "async").await else {
        return;
    };
    let _sender = Process::spawn("campaign worker", campaign_worker(&db, &api, &[]));
    wait_status(&api, "async", "sent").await;
    let (_, html, _) = captured(&db.pool, id).await.remove(0);

    // The web with async tracking, on its own port.
    let state = datamailer_web::AppState::new(
        db.pool.clone(),
        Producer::Postgres,
        datamailer_web::WebConfig {
            public_base_url: api.web.base.clone(),
        },
    )
    .with_tracking_async(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, datamailer_web::router(state)).await });
    tokio::time::sleep(Duration::from_secs(3)).await; // past the machine window
    let pixel = format!("{base}/t/o/{}.gif", between(&html, "/t/o/", ".gif"));
    assert_eq!(reqwest::get(&pixel).await.unwrap().status(), 200);
    let campaign = api.campaign("async").await;
    assert_eq!(campaign["open_count"], 0, "not applied yet: {campaign}");
    // A redelivery: the same message twice on the queue.
    sqlx::query(
        "INSERT INTO queue_messages (queue, body) SELECT queue, body FROM queue_messages WHERE queue = 'email-events'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--queue", "email-events"])
        .env("DATABASE_URL", &db.url)
        .env(
            "DATAMAILER_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("RUST_LOG", "warn");
    let _events = Process::spawn("email-events worker", cmd);
    let campaign = wait_for("the open applied", Duration::from_secs(30), || async {
        let c = api.campaign("async").await;
        (c["open_count"] == 1).then_some(c)
    })
    .await;
    assert_eq!(campaign["unique_open_count"], 1, "{campaign}");
    wait_for("the queue drained", Duration::from_secs(30), || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM queue_messages WHERE queue = 'email-events' AND dead_lettered_at IS NULL",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;
    let campaign = api.campaign("async").await;
    assert_eq!(
        (
            campaign["open_count"].clone(),
            campaign["unique_open_count"].clone()
        ),
        (json!(1), json!(1))
    );
    let opens: i64 =
        sqlx::query_scalar("SELECT count(*) FROM email_events WHERE event_type = 'open'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(opens, 1, "the duplicate wrote no second event");
    db.drop_db().await;
}

/// With the SES mailer the account's quota (GetAccount) applies: the configured rate is
/// lowered to `MaxSendRate`, and campaign mail stops at the 10 % of `Max24HourSend` kept for
/// transactional mail.
#[tokio::test]
async fn the_account_quota_caps_the_rate_and_keeps_a_reserve_for_transactional_mail() {
    let Some((db, api, _)) = queued_campaign(20, "quota").await else {
        return;
    };
    let ses = FakeSes::start_in_background(Behaviour {
        max_send_rate: 5.0,
        max_24_hour_send: 10.0,
        ..Default::default()
    });
    let env = ses_env(&ses.endpoint(), 50.0);
    let _worker = Process::spawn("sender", campaign_worker(&db, &api, &env));
    let times = wait_for(
        "the quota's campaign share sent",
        Duration::from_secs(30),
        || async {
            let t = ses.send_times();
            (t.len() >= 9).then_some(t)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let times_after = ses.send_times();
    assert_eq!(
        times_after.len(),
        9,
        "10 a day, 10 % kept for transactional mail"
    );
    let span = times.last().unwrap() - times.first().unwrap();
    assert!(
        span >= 8.0 / 5.0 * 0.95,
        "9 sends at MaxSendRate 5/s take at least 1.6 s, not the configured 50/s: {span:.2} s"
    );
    let campaign = wait_for("the 9 sends recorded", Duration::from_secs(30), || async {
        let c = api.campaign("quota").await;
        (c["sent_count"] == 9).then_some(c)
    })
    .await;
    assert_eq!(campaign["status"], "sending", "{campaign}");
    db.drop_db().await;
}

/// SES refusing two addresses (400 MessageRejected, permanent) and throttling every 7th call:
/// the refused recipients fail alone with SES's reason, the throttled ones are retried, and
/// every other recipient is sent exactly once (counted at the fake's end).
#[tokio::test]
async fn a_rejected_address_fails_alone_and_throttled_sends_retry_without_duplicates() {
    const N: i64 = 120;
    let Some((db, api, id)) = queued_campaign(N, "errors").await else {
        return;
    };
    let ses = FakeSes::start_in_background(Behaviour {
        max_send_rate: 200.0,
        fail_every: 7,
        reject: vec!["u7@".into(), "u42@".into()],
        ..Default::default()
    });
    let mut env = ses_env(&ses.endpoint(), 100.0);
    env.push(("DATAMAILER_CAMPAIGN_BATCH_SIZE", "20".to_string()));
    let _worker = Process::spawn("sender", campaign_worker(&db, &api, &env));
    let done = wait_status(&api, "errors", "sent").await;
    assert_eq!(
        (done["sent_count"].clone(), done["failed_count"].clone()),
        (json!(N - 2), json!(2)),
        "{done}"
    );
    let failed: Vec<(String, String)> = sqlx::query_as(
        "SELECT email, last_error FROM campaign_recipients
          WHERE campaign_id = $1 AND status = 'failed' ORDER BY email",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0].0, "u42@example.com");
    assert_eq!(failed[1].0, "u7@example.com");
    assert!(
        failed.iter().all(|(_, e)| e.starts_with("MessageRejected")),
        "{failed:?}"
    );
    let failed_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_events WHERE campaign_id = $1 AND event_type = 'failed'
            AND metadata ->> 'error' LIKE 'MessageRejected%'",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(failed_events, 2);

    let mut to = ses.recipients();
    let accepted = to.len();
    to.sort_unstable();
    to.dedup();
    assert_eq!(accepted as i64, N - 2, "accepted by SES once each");
    assert_eq!(to.len() as i64, N - 2, "no recipient twice");
    let throttled = ses.throttled();
    assert!(throttled >= 10, "the fake throttled {throttled} sends");
    db.drop_db().await;
}

/// Pause stops new sends within about a second and holds; resume carries on to `sent` with
/// each recipient once. A second campaign cancelled mid-send stops the same way, and every
/// recipient ends `sent` or skipped as cancelled (none left `pending` or `sending`), the
/// counters agreeing with the rows and with what SES accepted.
#[tokio::test]
async fn pause_holds_resume_finishes_once_and_cancel_stops_mid_send() {
    const N: i64 = 200;
    const RATE: f64 = 20.0;
    let Some((db, api, id)) = queued_campaign(N, "pause").await else {
        return;
    };
    let ses = FakeSes::start_in_background(Behaviour {
        max_send_rate: 100.0,
        ..Default::default()
    });
    let mut env = ses_env(&ses.endpoint(), RATE);
    env.push(("DATAMAILER_CAMPAIGN_BATCH_SIZE", "25".to_string()));
    let _worker = Process::spawn("sender", campaign_worker(&db, &api, &env));
    let sent_by_fake = || async { ses.accepted() as i64 };
    let wait_sends = |at_least: i64| {
        wait_for(
            "sends at the fake",
            Duration::from_secs(60),
            move || async move { (sent_by_fake().await >= at_least).then_some(()) },
        )
    };
    let body = json!({"audience": "news", "client": "shop"});

    wait_sends(30).await;
    let (status, paused) = api.post("/api/campaigns/pause/pause", body.clone()).await;
    assert_eq!(status, 200, "{paused}");
    let at_pause = sent_by_fake().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = sent_by_fake().await;
    assert!(
        settled - at_pause <= 2 * RATE as i64,
        "at most the chunk in flight after a pause: {at_pause} then {settled}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sent_by_fake().await, settled, "nothing sent while paused");
    assert!(settled < N, "paused before the end");

    let (status, resumed) = api.post("/api/campaigns/pause/resume", body.clone()).await;
    assert_eq!(status, 200, "{resumed}");
    let done = wait_status(&api, "pause", "sent").await;
    assert_eq!(done["sent_count"], N, "{done}");
    let mut to = ses.recipients();
    assert_eq!(to.len() as i64, N);
    to.sort_unstable();
    to.dedup();
    assert_eq!(to.len() as i64, N, "no recipient twice across the pause");

    // Cancel: the same audience again.
    api.put("stop").await;
    let (status, _) = api.post("/api/campaigns/stop/queue", body.clone()).await;
    assert_eq!(status, 202);
    wait_sends(N + 30).await;
    let (status, cancelled) = api.post("/api/campaigns/stop/cancel", body.clone()).await;
    assert_eq!(status, 200, "{cancelled}");
    let at_cancel = sent_by_fake().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = sent_by_fake().await;
    assert!(
        settled - at_cancel <= 2 * RATE as i64,
        "at most the chunk in flight after a cancel: {at_cancel} then {settled}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sent_by_fake().await, settled, "nothing sent once cancelled");
    let stop_id: i64 = sqlx::query_scalar("SELECT id FROM campaigns WHERE external_key = 'stop'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_ne!(stop_id, id);
    // Given back and skipped at once; a cancel racing the record is swept by maintenance.
    let rows: Vec<(String, String, i64)> = wait_for(
        "no recipient of the cancelled campaign pending or in flight",
        Duration::from_secs(15),
        || async {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT status, skip_reason, count(*) FROM campaign_recipients
                  WHERE campaign_id = $1 GROUP BY 1, 2 ORDER BY 1",
            )
            .bind(stop_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
            rows.iter()
                .all(|(s, _, _)| s != "pending" && s != "sending")
                .then_some(rows)
        },
    )
    .await;
    let count = |status: &str| {
        rows.iter()
            .filter(|(s, _, _)| s == status)
            .map(|(_, _, n)| *n)
            .sum::<i64>()
    };
    assert_eq!(count("pending") + count("sending"), 0, "{rows:?}");
    assert!(
        rows.iter()
            .all(|(s, r, _)| s == "sent" || (s == "skipped" && r == "campaign_cancelled")),
        "{rows:?}"
    );
    let c = api.campaign("stop").await;
    assert_eq!(c["status"], "cancelled", "{c}");
    assert_eq!(c["sent_count"], count("sent"), "{c} {rows:?}");
    assert_eq!(c["skipped_count"], count("skipped"), "{c} {rows:?}");
    assert_eq!(
        count("sent"),
        settled - N,
        "the rows agree with what SES accepted"
    );
    db.drop_db().await;
}

/// A worker that died around the SES call after its campaign was cancelled leaves rows
/// `sending`; maintenance settles them once their lease is over: `sent` when the send ledger
/// saw SES accept one, skipped as cancelled otherwise.
#[tokio::test]
async fn maintenance_settles_recipients_left_in_flight_by_a_cancelled_campaign() {
    let Some((db, api, id)) = queued_campaign(30, "orphans").await else {
        return;
    };
    let maintain = || maintain_once(&db);
    // The fan-out, by maintenance (no worker runs): 30 recipients pending.
    sqlx::query("UPDATE campaigns SET queued_at = now() - interval '1 hour' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    maintain();
    assert_eq!(api.campaign("orphans").await["recipient_count"], 30);
    // Two claimed by a worker that then died; SES accepted one of them (the ledger says so).
    let orphans: Vec<i64> = sqlx::query_scalar(
        "UPDATE campaign_recipients SET status = 'sending', send_attempts = 1,
                lease_expires_at = now() - interval '1 hour'
          WHERE id IN (SELECT id FROM campaign_recipients WHERE campaign_id = $1 ORDER BY id LIMIT 2)
          RETURNING id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO send_ledger (kind, row_id, provider_message_id, accepted_at, source)
         VALUES ('campaign', $1, 'ses-accepted-1', now(), 'test')",
    )
    .bind(orphans.iter().min().unwrap())
    .execute(&db.pool)
    .await
    .unwrap();
    let body = json!({"audience": "news", "client": "shop"});
    let (status, cancelled) = api.post("/api/campaigns/orphans/cancel", body).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["skipped_count"], 28, "{cancelled}");

    maintain();
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT id, status, skip_reason, ses_message_id FROM campaign_recipients
          WHERE id = ANY($1) ORDER BY id",
    )
    .bind(&orphans)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows.iter()
            .map(|(_, s, r, m)| (s.as_str(), r.as_str(), m.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("sent", "", "ses-accepted-1"),
            ("skipped", "campaign_cancelled", "")
        ]
    );
    let c = api.campaign("orphans").await;
    assert_eq!(
        (
            c["status"].clone(),
            c["sent_count"].clone(),
            c["skipped_count"].clone()
        ),
        (json!("cancelled"), json!(1), json!(29)),
        "{c}"
    );
    db.drop_db().await;
}
