//! The product as a user runs it: the `datamailer` binary on the embedded defaults.
//!
//! * end to end: provision → template → send → `sent` → visible in `datamailer outbox`;
//! * a SIGTERM in the middle of a burst loses nothing and sends nothing twice: the fake SES
//!   endpoint below (the only stand-in here; it holds SES v2 `SendEmail` calls until the
//!   signal so it lands mid-flight) sees every message exactly once across two runs.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use support::{free_port, BIN};

struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(db_url: &str, extra_env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env("DATABASE_URL", db_url)
            .env("DATAMAILER_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "DATAMAILER_METRICS_ADDR",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let server = Server {
            child: cmd.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if reqwest::get(format!("{}/health/", server.base))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("datamailer serve did not become healthy");
    }

    /// SIGTERM, then wait for a clean exit.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn provision(db_url: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "provision",
            "--org",
            "o",
            "--audience",
            "a",
            "--client",
            "c",
            "--sender",
            "news=News <news@example.com>",
        ])
        .env("DATABASE_URL", db_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(key.starts_with("dm_"), "{key}");
    key
}

async fn put_template(http: &reqwest::Client, base: &str, key: &str) {
    let r = http
        .put(format!("{base}/api/transactional/templates/welcome"))
        .bearer_auth(key)
        .json(&json!({"name": "Welcome", "subject": "Welcome {{ name }}", "text_body": "Hi {{ name }}"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn send(http: &reqwest::Client, base: &str, key: &str, email: &str, name: &str) -> i64 {
    let r = http
        .post(format!("{base}/api/transactional/send"))
        .bearer_auth(key)
        .json(&json!({"email": email, "template_key": "welcome", "context": {"name": name}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["message"]["id"]
        .as_i64()
        .unwrap()
}

async fn status(http: &reqwest::Client, base: &str, key: &str, id: i64) -> String {
    let r: Value = http
        .get(format!("{base}/api/transactional/messages/{id}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["message"]["status"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn serve_sends_a_transactional_email_into_the_outbox() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let key = provision(&db.url);
    let server = Server::start(&db.url, &[]).await;
    let http = reqwest::Client::new();
    put_template(&http, &server.base, &key).await;
    let id = send(&http, &server.base, &key, "Ada@Example.com", "Ada").await;
    let mut last = String::new();
    for _ in 0..100 {
        last = status(&http, &server.base, &key, id).await;
        if last == "sent" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, "sent");
    let out = Command::new(BIN)
        .args(["outbox", "--json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["subject"], "Welcome Ada");
    assert_eq!(lines[0]["to"], json!(["ada@example.com"]));
    assert_eq!(lines[0]["from"], "News <news@example.com>");

    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("datamailer_messages_acked_total{queue=\"transactional-email\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("datamailer_ses_sends_total"), "{metrics}");
    server.terminate();
    db.drop_db().await;
}

/// A fake SES v2 endpoint: holds every `SendEmail` until `gate` opens, answers after a delay,
/// and counts each message id tag. `arrived` counts the calls that reached it at all.
struct FakeSes {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, usize>>>,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
    gate: tokio::sync::watch::Sender<bool>,
}

async fn fake_ses(delay: Duration) -> FakeSes {
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let arrived: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    let (s, a) = (seen.clone(), arrived.clone());
    let app = axum::Router::new().route(
        "/v2/email/outbound-emails",
        post(move |body: String| {
            let (s, a, mut gate_rx) = (s.clone(), a.clone(), gate_rx.clone());
            async move {
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = gate_rx.wait_for(|open| *open).await;
                tokio::time::sleep(delay).await;
                let v: Value = serde_json::from_str(&body).unwrap();
                let tag = v["EmailTags"]
                    .as_array()
                    .and_then(|tags| tags.iter().find(|t| t["Name"] == "datamailer_id"))
                    .and_then(|t| t["Value"].as_str())
                    .unwrap_or("?")
                    .to_string();
                *s.lock().unwrap().entry(tag.clone()).or_default() += 1;
                axum::Json(json!({"MessageId": format!("fake-{tag}")}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeSes {
        addr,
        seen,
        arrived,
        gate,
    }
}

// Multi-threaded: `terminate` blocks its thread while the fake SES must keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_loses_nothing_and_sends_nothing_twice() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let key = provision(&db.url);
    let ses = fake_ses(Duration::from_millis(250)).await;
    let seen = ses.seen.clone();
    let endpoint = format!("http://{}", ses.addr);
    let env = [
        ("DATAMAILER_MAILER", "ses"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("DATAMAILER_SES_MAX_SEND_RATE", "0"),
    ];
    let server = Server::start(&db.url, &env).await;
    let http = reqwest::Client::new();
    put_template(&http, &server.base, &key).await;
    // More than the tree can hold in flight (4 workers × batches of 50), so however fast
    // the sends arrive some are still queued when the signal lands.
    let total = 4 * datamailer_runtime::source::postgres::DEFAULT_MAX_BATCH + 100;
    let sends = (0..total).map(|i| {
        let (http, base, key) = (http.clone(), server.base.clone(), key.clone());
        async move { send(&http, &base, &key, &format!("user{i}@example.com"), "x").await }
    });
    let ids: Vec<i64> = futures::future::join_all(sends).await;
    // SES holds every call until the signal, so the signal always lands mid-burst however
    // slow this machine is: wait for the workers to have calls in flight, then open the gate
    // and SIGTERM at once (each held call still takes 250 ms to answer).
    for _ in 0..200 {
        if ses.arrived.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ses.gate.send_replace(true);
    server.terminate();
    let sent_before = seen.lock().unwrap().len();
    assert!(
        sent_before < total,
        "the signal came too late to test anything ({sent_before} sent)"
    );

    let server = Server::start(&db.url, &env).await;
    for _ in 0..200 {
        if seen.lock().unwrap().len() == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        let mut st = String::new();
        for _ in 0..50 {
            st = status(&http, &server.base, &key, *id).await;
            if st == "sent" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(st, "sent", "message {id}");
    }
    server.terminate();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), total, "every message reached SES");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    db.drop_db().await;
}

#[test]
fn bad_configuration_is_reported_one_line_per_variable() {
    let out = Command::new(BIN)
        .arg("migrate")
        .env("DATAMAILER_QUEUE_BACKEND", "kafka")
        .env("DATAMAILER_DB_MAX_CONNECTIONS", "lots")
        .env("DATAMAILER_HTTP_ADDR", "nowhere")
        .env("DATAMAILER_SES_MAX_SEND_RATE", "fast")
        .env_remove("DATAMAILER_MAILER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("configuration error: "))
        .collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    for var in [
        "DATAMAILER_QUEUE_BACKEND: 'kafka' must be postgres or sqs",
        "DATAMAILER_DB_MAX_CONNECTIONS: 'lots'",
        "DATAMAILER_HTTP_ADDR: 'nowhere'",
        "DATAMAILER_SES_MAX_SEND_RATE: 'fast'",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(var)),
            "no line for {var}: {stderr}"
        );
    }
}

/// What the review reproduced on `serve`: a row `sending` under a dead delivery's lease, with
/// its message on the queue, was dead-lettered after 111 s. Now the message waits for the
/// lease and the row is sent; and a row left `sending` with no message at all is brought back
/// by `serve`'s own maintenance, with no operator.
#[tokio::test]
async fn serve_recovers_leased_and_orphaned_rows_by_itself() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let key = provision(&db.url);
    let server = Server::start(&db.url, &[]).await;
    let http = reqwest::Client::new();
    put_template(&http, &server.base, &key).await;
    // Two sends, handled at once; then made to look as if their deliveries died.
    let leased = send(&http, &server.base, &key, "leased@example.com", "L").await;
    let orphan = send(&http, &server.base, &key, "orphan@example.com", "O").await;
    for id in [leased, orphan] {
        for _ in 0..100 {
            if status(&http, &server.base, &key, id).await == "sent" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    server.terminate();
    sqlx::query("DELETE FROM captured_messages")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE transactional_messages SET status = 'sending', ses_message_id = '', send_attempts = send_attempts + 1, lease_expires_at = now() + interval '3 seconds' WHERE id = $1")
        .bind(leased)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE transactional_messages SET status = 'sending', ses_message_id = '', send_attempts = send_attempts + 1, lease_expires_at = now() - interval '1 minute', updated_at = now() - interval '30 minutes' WHERE id = $1")
        .bind(orphan)
        .execute(&db.pool)
        .await
        .unwrap();
    // The ledger says neither was accepted; only the leased one still has a message. And it
    // all happened a while ago: the maintenance task is due again.
    sqlx::query("DELETE FROM send_ledger")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE maintenance_runs SET last_started_at = now() - interval '10 minutes'")
        .execute(&db.pool)
        .await
        .unwrap();
    let body: String = sqlx::query_scalar(
        "SELECT json_build_object('contract','transactional-email','version',1,
            'transactional_message_id', id, 'client_id', client_id,
            'idempotency_key', idempotency_key)::text FROM transactional_messages WHERE id = $1",
    )
    .bind(leased)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO queue_messages (queue, body) VALUES ('transactional-email', $1)")
        .bind(&body)
        .execute(&db.pool)
        .await
        .unwrap();

    let server = Server::start(&db.url, &[]).await;
    for id in [leased, orphan] {
        let mut last = String::new();
        for _ in 0..300 {
            last = status(&http, &server.base, &key, id).await;
            if last == "sent" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(last, "sent", "row {id}");
    }
    server.terminate();
    let dead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM queue_messages WHERE dead_lettered_at IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(dead, 0);
    let captured: i64 = sqlx::query_scalar("SELECT count(*) FROM captured_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(captured, 2, "each sent exactly once more");
    db.drop_db().await;
}
