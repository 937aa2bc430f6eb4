//! Client webhooks through the product as a user runs it: `datamailer provision
//! --webhook-url/--webhook-token`, `datamailer serve` (its maintenance dispatches), the global
//! fallback stored from the environment, and a real receiver that checks the signature.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use support::{free_port, BIN};

const TOKEN: &str = "client-hook-token";

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
            .env_remove("CMP_WEBHOOK_URL")
            .env_remove("CMP_WEBHOOK_TOKEN")
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

/// Signed, authorized payloads the receiver accepted; and how many it refused.
#[derive(Default)]
struct Seen {
    payloads: Mutex<Vec<(Value, Instant)>>,
    refused: Mutex<u32>,
}

async fn hook(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let ok = header("authorization") == format!("Bearer {TOKEN}")
        && datamailer_core::webhooks::verify(
            TOKEN,
            &header("x-datamailer-signature"),
            &body,
            chrono::Utc::now().timestamp(),
            300,
        )
        .is_ok();
    if !ok {
        *seen.refused.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    seen.payloads
        .lock()
        .unwrap()
        .push((serde_json::from_slice(&body).unwrap(), Instant::now()));
    StatusCode::NO_CONTENT
}

fn provision(db_url: &str, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args([
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
    .args(extra)
    .env("DATABASE_URL", db_url)
    .env_remove("DATAMAILER_OUTBOUND_ALLOW_HOSTS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn serve_delivers_a_signed_client_webhook_within_seconds() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // A loopback webhook URL is refused unless the allow list names the host.
    let out = provision(
        &db.url,
        &["--webhook-url", &hook_url, "--webhook-token", TOKEN],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--webhook-url: invalid"), "{stderr}");
    let allow = [("DATAMAILER_OUTBOUND_ALLOW_HOSTS", "127.0.0.1")];
    let out = provision(
        &db.url,
        &["--webhook-url", &hook_url, "--webhook-token", TOKEN],
        &allow,
    );
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

    // A hard-bounced contact: a send to it is skipped, which is a transactional.skipped event.
    sqlx::query(
        "INSERT INTO contacts (email, normalized_email, hard_bounced_at)
         VALUES ('bounced@example.com', 'bounced@example.com', now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let server = Server::start(
        &db.url,
        &[
            allow[0],
            ("CMP_WEBHOOK_URL", "https://global.example.com/hook"),
            ("CMP_WEBHOOK_TOKEN", "global-token"),
        ],
    )
    .await;
    let fallback: Vec<(String, String)> =
        sqlx::query_as("SELECT url, token FROM client_webhook_fallback")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        fallback,
        vec![(
            "https://global.example.com/hook".to_string(),
            "global-token".to_string()
        )]
    );

    let http = reqwest::Client::new();
    let got: Value = http
        .get(format!("{}/api/client/webhook", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, json!({"url": hook_url, "token_set": true}));
    let r = http
        .put(format!(
            "{}/api/transactional/templates/welcome",
            server.base
        ))
        .bearer_auth(&key)
        .json(&json!({"name": "Welcome", "subject": "Hi", "text_body": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent_at = Instant::now();
    let r = http
        .post(format!("{}/api/transactional/send", server.base))
        .bearer_auth(&key)
        .json(
            &json!({"email": "bounced@example.com", "template_key": "welcome",
                      "metadata": {"order": "A-1"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let message_id = r.json::<Value>().await.unwrap()["message"]["id"]
        .as_i64()
        .unwrap();

    let mut payloads = Vec::new();
    for _ in 0..100 {
        payloads = seen.payloads.lock().unwrap().clone();
        if !payloads.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(payloads.len(), 1, "one callback, delivered within 10 s");
    let (payload, at) = &payloads[0];
    eprintln!(
        "event to signed callback at the receiver: {:?}",
        at.duration_since(sent_at)
    );
    assert_eq!(payload["event_type"], "transactional.skipped");
    assert_eq!(payload["email"], "bounced@example.com");
    assert_eq!(payload["client"], "c");
    assert_eq!(payload["metadata"]["order"], "A-1");
    assert_eq!(payload["metadata"]["transactional_message_id"], message_id);
    assert_eq!(*seen.refused.lock().unwrap(), 0);
    let mut row = (String::new(), None);
    for _ in 0..50 {
        row = sqlx::query_as::<_, (String, Option<i32>)>(
            "SELECT status, response_status FROM cmp_callbacks",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if row.0 == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(row, ("delivered".to_string(), Some(204)));
    server.terminate();

    // Started without the variables, the fallback is gone.
    let server = Server::start(&db.url, &[]).await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM client_webhook_fallback")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    server.terminate();
    db.drop_db().await;
}
