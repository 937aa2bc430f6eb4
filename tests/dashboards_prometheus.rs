//! The Grafana dashboard works on real data: `datamailer serve` (its own database, the SES
//! mailer against a fake SES v2 endpoint that sometimes throttles and once goes down) scraped
//! every second by a real Prometheus (`/usr/bin/prometheus`, with the shipped alerting rules),
//! driven through a short load that exercises every panel — transactional sends, a campaign
//! (and a paused one), a client webhook, SES events through the SNS ingress, poison messages,
//! throttling and an SES outage that trips the breaker — then **every** panel query of
//! `dashboards/grafana/datamailer.json` is evaluated through Prometheus's HTTP API and must
//! return at least one series.
//!
//! Under `CI=true` a missing Prometheus fails the test; elsewhere it is skipped with a message.

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use datamailer_testkit::ses::{self, Mail};
use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use support::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const AT: &str = "2026-12-04T10:00:03.000Z";

/// The fake SES v2 endpoint: `GetAccount`, and `SendEmail` answered 200 with a message id,
/// except every 7th call (429 TooManyRequestsException) and every call while `down` (500).
#[derive(Default)]
struct FakeSes {
    calls: AtomicUsize,
    throttled: AtomicUsize,
    down: AtomicBool,
}

async fn send_email(ses: Arc<FakeSes>) -> axum::response::Response {
    let n = ses.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let error = |status: StatusCode, code: &str, message: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("x-amzn-errortype", code.parse().unwrap());
        (
            status,
            headers,
            axum::Json(json!({"__type": code, "message": message})),
        )
            .into_response()
    };
    if ses.down.load(Ordering::SeqCst) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "the fake SES is down",
        );
    }
    if n % 7 == 3 {
        ses.throttled.fetch_add(1, Ordering::SeqCst);
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            "Maximum sending rate exceeded.",
        );
    }
    axum::Json(json!({"MessageId": format!("fake-ses-{n}")})).into_response()
}

async fn start_fake_ses() -> (Arc<FakeSes>, String) {
    let ses = Arc::new(FakeSes::default());
    let s = ses.clone();
    let app = axum::Router::new()
        .route(
            "/v2/email/outbound-emails",
            axum::routing::post(move || send_email(s.clone())),
        )
        .route(
            "/v2/email/account",
            axum::routing::get(|| async {
                axum::Json(json!({
                    "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 200.0, "SentLast24Hours": 0.0},
                    "SendingEnabled": true,
                    "ProductionAccessEnabled": true,
                    "EnforcementStatus": "HEALTHY",
                }))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (ses, url)
}

/// A client's webhook receiver: 204, except every 4th POST (500, so some are retried).
async fn start_hook() -> (Arc<AtomicUsize>, String) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let s = s.clone();
            async move {
                if s.fetch_add(1, Ordering::SeqCst) % 4 == 3 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, url)
}

/// `n` verified subscribers of the scope's audience.
async fn seed_subscribers(pool: &sqlx::PgPool, client_id: i64, n: i64) {
    sqlx::raw_sql(&format!(
        "WITH a AS (SELECT id FROM audiences WHERE slug = 'news'),
         c AS (
           INSERT INTO contacts (email, normalized_email, verified_at)
           SELECT 'sub' || g || '@example.com', 'sub' || g || '@example.com', now()
             FROM generate_series(1, {n}) g
           RETURNING id)
         INSERT INTO subscriptions (contact_id, audience_id, client_id, status)
         SELECT c.id, a.id, {client_id}, 'subscribed' FROM c, a"
    ))
    .execute(pool)
    .await
    .unwrap();
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Value,
) -> (u16, Value) {
    let resp = http
        .request(method, url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Waits until serve's own /metrics shows a series of `metric`.
async fn wait_metric(base: &str, metric: &str, limit: Duration) {
    let prefix = format!("{metric}{{");
    wait_for(&format!("{metric} in /metrics"), limit, || async {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l.starts_with(&prefix) || l.starts_with(&format!("{metric} ")))
            .then_some(())
    })
    .await
}

/// The Grafana dashboard's queries with its variables as Grafana would substitute them
/// (`$queue` = All, `$__rate_interval` = 30 s): (panel, legend, expr).
fn dashboard_queries() -> Vec<(String, String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/grafana/datamailer.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = vec![];
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "30s")
                .replace("$queue", ".*");
            assert!(!expr.contains('$'), "an unsubstituted variable in {expr}");
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["legendFormat"].as_str().unwrap_or_default().to_string(),
                expr,
            ));
        }
    }
    out
}

/// `/api/v1/query`: the number of series the expression returns now.
async fn series(http: &reqwest::Client, prom: &str, expr: &str) -> Result<usize, String> {
    let resp: Value = http
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if resp["status"] != "success" {
        return Err(format!("{resp}"));
    }
    Ok(resp["data"]["result"]
        .as_array()
        .map(|r| r.len())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grafana_panel_query_returns_series_from_a_real_prometheus() {
    let started = Instant::now();
    if !std::path::Path::new(PROMETHEUS).exists() {
        datamailer_testkit::unavailable(
            "Prometheus",
            format!("{PROMETHEUS} is missing (apt-get install -y prometheus; scripts/test-env.sh does it)"),
        );
        return;
    }
    let Some(db) = TestDb::create().await else {
        return;
    };
    let queries = dashboard_queries();
    assert!(queries.len() > 30, "{} queries", queries.len());

    // ---------------------------------------------------------------- serve and Prometheus
    let (fake_ses, ses_url) = start_fake_ses().await;
    let (hooks, hook_url) = start_hook().await;
    let scope = provision(&db.pool, "news@example.com").await;
    sqlx::query("UPDATE clients SET cmp_webhook_url = $1, cmp_webhook_token = 'hook-token'")
        .bind(&hook_url)
        .execute(&db.pool)
        .await
        .unwrap();
    seed_subscribers(&db.pool, scope.client_id, 40).await;

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("DATAMAILER_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "DATAMAILER_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("PUBLIC_BASE_URL", &base)
        .env("DATAMAILER_MAILER", "ses")
        .env("AWS_ENDPOINT_URL", &ses_url)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("DATAMAILER_SES_MAX_SEND_RATE", "100")
        .env("DATAMAILER_SNS_SIGNATURE_MODE", "insecure")
        .env("DATAMAILER_OUTBOUND_ALLOW_HOSTS", "127.0.0.1")
        .env("DATAMAILER_CAMPAIGN_BATCH_SIZE", "10")
        .env_remove("CMP_WEBHOOK_URL")
        .env_remove("CMP_WEBHOOK_TOKEN")
        .env("RUST_LOG", "warn");
    let mut serve = Process::spawn("datamailer serve", cmd);
    wait_for("serve healthy", Duration::from_secs(20), || async {
        reqwest::get(format!("{base}/health/"))
            .await
            .is_ok_and(|r| r.status() == 200)
            .then_some(())
    })
    .await;

    let dir = std::env::temp_dir().join(unique("dm-prometheus"));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let alerts = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/prometheus/alerts.yml"
    );
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {alerts}\n\
             scrape_configs:\n  - job_name: datamailer\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let prom = format!("http://127.0.0.1:{prom_port}");
    let mut cmd = Command::new(PROMETHEUS);
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
    .stdout(Stdio::null());
    let mut prometheus = Process::spawn("prometheus", cmd);
    let http = reqwest::Client::new();
    wait_for("Prometheus ready", Duration::from_secs(20), || async {
        reqwest::get(format!("{prom}/-/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
            .then_some(())
    })
    .await;

    // ------------------------------------------------------------------------------ load
    let key = scope.api_key.clone();
    let api = |path: &str| format!("{base}{path}");
    let (status, body) = call(
        &http,
        reqwest::Method::PUT,
        api("/api/transactional/templates/welcome"),
        &key,
        json!({"name": "Welcome", "subject": "Hello {{ name }}", "text_body": "Hi {{ name }}",
               "html_body": "<p>Hi {{ name }}</p>"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let send = |email: String| {
        let (http, url, key) = (http.clone(), api("/api/transactional/send"), key.clone());
        async move {
            call(
                &http,
                reqwest::Method::POST,
                url,
                &key,
                json!({"email": email, "template_key": "welcome", "context": {"name": "x"}}),
            )
            .await
        }
    };

    // Transactional mail, some of it throttled by the fake.
    let mut ids = vec![];
    for i in 0..12 {
        let (status, body) = send(format!("t{i}@example.com")).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["message"]["id"].as_i64().unwrap());
    }
    // A suppressed contact: the send is skipped (409), which is a client webhook event.
    sqlx::query(
        "INSERT INTO contacts (email, normalized_email, hard_bounced_at)
         VALUES ('bounced@example.com', 'bounced@example.com', now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (status, _) = send("bounced@example.com".into()).await;
    assert_eq!(status, 409);
    // A refused key (401) for the error-by-route panel.
    let (status, _) = call(
        &http,
        reqwest::Method::POST,
        api("/api/transactional/send"),
        "dm_not_a_key",
        json!({}),
    )
    .await;
    assert_eq!(status, 401);

    // A campaign to 40 subscribers, and a second one paused right after queueing.
    for key_name in ["march", "april"] {
        let (status, body) = call(
            &http,
            reqwest::Method::PUT,
            api(&format!("/api/campaigns/{key_name}")),
            &key,
            json!({"audience": "news", "client": "shop", "subject": "News",
                   "html_body": "<p>News</p>", "text_body": "News", "from": "support"}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = call(
            &http,
            reqwest::Method::POST,
            api(&format!("/api/campaigns/{key_name}/queue")),
            &key,
            json!({"audience": "news", "client": "shop"}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, body) = call(
        &http,
        reqwest::Method::POST,
        api("/api/campaigns/april/pause"),
        &key,
        json!({"audience": "news", "client": "shop", "reason": "proofreading"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Poison messages: dead-lettered at once.
    for queue in ["transactional-email", "email-events"] {
        let mut enqueue = Command::new(BIN)
            .args(["enqueue", "--queue", queue])
            .env("DATABASE_URL", &db.url)
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(enqueue.stdin.take().unwrap(), "{{not json").unwrap();
        assert!(enqueue.wait().unwrap().success());
    }

    // SES's feedback on the sent mail through the SNS ingress: deliveries, a hard bounce, a
    // complaint, and one event about a message that is not ours (uncorrelated).
    let mut sent = vec![];
    for id in &ids[..4] {
        let row = wait_terminal(&db.pool, *id, Duration::from_secs(20)).await;
        assert_eq!(row.status, "sent", "{row:?}");
        sent.push((*id, row.ses_message_id));
    }
    let mail = |i: usize| {
        Mail::new(&sent[i].1, &format!("t{i}@example.com")).tagged("transactional", sent[i].0)
    };
    let events = [
        ses::event("Delivery", &mail(0), AT),
        ses::event("Delivery", &mail(1), AT),
        ses::event("Bounce", &mail(2), AT),
        ses::event("Complaint", &mail(3), AT),
        ses::event("Delivery", &Mail::new("not-ours", "x@example.com"), AT),
    ];
    for (n, event) in events.iter().enumerate() {
        let resp = http
            .post(api("/webhooks/ses"))
            .header("x-amz-sns-message-type", "Notification")
            .body(ses::envelope(event, &format!("sns-dash-{n}")).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    // The campaign goes out; the client webhooks are dispatched.
    wait_metric(
        &base,
        "datamailer_campaign_recipients_sent_total",
        Duration::from_secs(30),
    )
    .await;
    wait_metric(
        &base,
        "datamailer_client_webhooks_total",
        Duration::from_secs(20),
    )
    .await;
    wait_metric(
        &base,
        "datamailer_ses_throttles_total",
        Duration::from_secs(20),
    )
    .await;
    wait_metric(
        &base,
        "datamailer_ses_suppressions_total",
        Duration::from_secs(20),
    )
    .await;

    // An SES outage: one failure is a counted retry; more in a row trip the breaker, and what
    // arrives while it is open is deferred. Then SES comes back.
    fake_ses.down.store(true, Ordering::SeqCst);
    let (status, _) = send("outage0@example.com".into()).await;
    assert_eq!(status, 202);
    wait_metric(
        &base,
        "datamailer_messages_failed_total",
        Duration::from_secs(20),
    )
    .await;
    for i in 1..4 {
        let (status, _) = send(format!("outage{i}@example.com")).await;
        assert_eq!(status, 202);
    }
    wait_metric(
        &base,
        "datamailer_messages_deferred_total",
        Duration::from_secs(20),
    )
    .await;
    fake_ses.down.store(false, Ordering::SeqCst);
    serve.assert_running();
    eprintln!(
        "load done after {:?}: {} SES calls ({} throttled), {} webhook POSTs",
        started.elapsed(),
        fake_ses.calls.load(Ordering::SeqCst),
        fake_ses.throttled.load(Ordering::SeqCst),
        hooks.load(Ordering::SeqCst)
    );

    // ------------------------------------------------------------------- every panel query
    // Prometheus scrapes every second; give each query until the deadline to see its series.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pending: Vec<(String, String, String)> = queries.clone();
    let mut last_error: Vec<String> = vec![];
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = vec![];
        last_error.clear();
        for q in pending {
            match series(&http, &prom, &q.2).await {
                Ok(n) if n > 0 => {}
                Ok(_) => still.push(q),
                Err(e) => {
                    last_error.push(format!("{}: {e}", q.2));
                    still.push(q);
                }
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    prometheus.assert_running();
    assert!(
        pending.is_empty(),
        "{} of {} panel queries returned no series:\n{}\nerrors: {last_error:?}",
        pending.len(),
        queries.len(),
        pending
            .iter()
            .map(|(panel, legend, expr)| format!("  [{panel}] {legend}: {expr}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The queue variable has values, and the shipped rules loaded and evaluate cleanly.
    assert!(
        series(
            &http,
            &prom,
            "group by (queue) (datamailer_messages_received_total)"
        )
        .await
        .unwrap()
            >= 3
    );
    let rules: Value = http
        .get(format!("{prom}/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert!(groups.len() >= 5, "{rules}");
    for g in groups {
        for r in g["rules"].as_array().unwrap() {
            assert_ne!(r["health"], "err", "rule {}: {}", r["name"], r["lastError"]);
        }
    }
    eprintln!(
        "{} panel queries answered after {:?}",
        queries.len(),
        started.elapsed()
    );
    drop(prometheus);
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}
