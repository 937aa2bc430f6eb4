//! Shared helpers for the AWS-path integration tests: the moto server (SQS + SES v2) through
//! the real SDK clients, a Postgres scope provisioned through the product's own code, and the
//! web API served on a local port.
//!
//! Every test creates its own uniquely named queues and identities, so tests run in parallel.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::types::QueueAttributeName;
use datamailer_core::transactional::SenderIdentity;
use datamailer_runtime::producer::{Producer, SqsProducer};
use serde_json::{json, Value};

pub const QUEUE: &str = "transactional-email";
/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_datamailer");

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Points a `datamailer` command at moto: endpoint, fake credentials, fixed region, no IMDS.
pub fn aws_env(cmd: &mut std::process::Command, endpoint: &str) {
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("queue arn")
}

/// SDK configuration for moto: fixed region, endpoint and fake credentials, independent of the
/// environment (no profile, no IMDS).
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await
}

/// A name unique to this process and call: `<prefix>-<pid>-<n>-<nanos>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A source queue and its DLQ, wired with a redrive policy (maxReceiveCount 5).
pub struct Queues {
    pub url: String,
    pub dlq_url: String,
    pub dlq_arn: String,
}

pub async fn create_queues(sqs: &aws_sdk_sqs::Client, name: &str) -> Queues {
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("CreateQueue (DLQ)")
        .queue_url()
        .expect("DLQ url")
        .to_string();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes (DLQ arn)")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .expect("DLQ arn")
        .clone();
    let policy = json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}).to_string();
    let url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, policy)
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .send()
        .await
        .expect("CreateQueue")
        .queue_url()
        .expect("queue url")
        .to_string();
    Queues {
        url,
        dlq_url,
        dlq_arn,
    }
}

/// (visible, in flight) message counts of a queue.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes (depth)");
    let attrs = out.attributes().cloned().unwrap_or_default();
    let n = |k: QueueAttributeName| -> u64 {
        attrs
            .get(&k)
            .and_then(|v| v.parse().ok())
            .expect("numeric queue attribute")
    };
    (
        n(QueueAttributeName::ApproximateNumberOfMessages),
        n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Makes moto's SES accept `email` as a sender.
pub async fn verify_identity(ses: &aws_sdk_sesv2::Client, email: &str) {
    ses.create_email_identity()
        .email_identity(email)
        .send()
        .await
        .expect("CreateEmailIdentity");
}

/// Messages moto's SES recorded (`ses.Message` in `/moto-api/data.json`; SES v2 sends land
/// there too): `{id, source, destinations: {ToAddresses, ...}, subject, body}`.
pub async fn moto_sent_messages(endpoint: &str) -> Vec<Value> {
    let url = format!("{}/moto-api/data.json", endpoint.trim_end_matches('/'));
    let data: Value = reqwest::get(&url)
        .await
        .expect("GET data.json")
        .json()
        .await
        .expect("data.json is JSON");
    data["ses"]["Message"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls `check` every 100 ms until it yields `Some`, or panics after `limit` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if started.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A provisioned client scope with one sender identity (`support`).
pub struct Scope {
    pub client_id: i64,
    pub api_key: String,
    pub sender_email: String,
}

pub async fn provision(pool: &sqlx::PgPool, sender_email: &str) -> Scope {
    let request = datamailer_web::provision::ProvisionRequest {
        org: "acme".into(),
        audience: "news".into(),
        client: "shop".into(),
        senders: vec![SenderIdentity {
            id: "support".into(),
            email: format!("Support <{sender_email}>"),
        }],
        default_sender: None,
        key_name: None,
    };
    let done = datamailer_web::provision::provision(pool, &request)
        .await
        .expect("provision");
    Scope {
        client_id: done.client_id,
        api_key: done.api_key,
        sender_email: sender_email.to_string(),
    }
}

/// The producer the web side uses on the SQS backend, for one queue URL.
pub fn sqs_producer(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Producer {
    let urls: HashMap<String, String> = [(QUEUE.to_string(), queue_url.to_string())].into();
    Producer::Sqs(SqsProducer::new(sqs.clone(), urls))
}

/// The web API served on a free local port; the server task ends with the test's runtime.
pub struct Web {
    pub base: String,
    pub http: reqwest::Client,
    pub api_key: String,
}

pub async fn start_web(pool: sqlx::PgPool, producer: Producer, api_key: &str) -> Web {
    let state = datamailer_web::AppState::new(
        pool,
        producer,
        datamailer_web::WebConfig {
            public_base_url: "http://localhost:8000".into(),
        },
    );
    let app = datamailer_web::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind web port");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("web server");
    });
    Web {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        api_key: api_key.to_string(),
    }
}

impl Web {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// PUT a transactional template (`Hello {{ name }}` and friends).
    pub async fn put_template(&self, key: &str) {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/api/transactional/templates/{key}"),
                json!({
                    "name": "Welcome",
                    "subject": "Hello {{ name }}",
                    "html_body": "<p>Welcome, {{ name }}!</p>",
                    "text_body": "Welcome, {{ name }}!",
                    "required_context": ["name"],
                }),
            )
            .await;
        assert_eq!(status, 200, "template PUT: {body}");
    }

    /// POST /api/transactional/send; returns (status, body).
    pub async fn send(&self, email: &str, template_key: &str, name: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/api/transactional/send",
            json!({"email": email, "template_key": template_key, "context": {"name": name}}),
        )
        .await
    }
}

/// One transactional row as the tests look at it.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub status: String,
    pub ses_message_id: String,
    pub last_error: String,
}

pub async fn message_row(pool: &sqlx::PgPool, id: i64) -> MessageRow {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT status, ses_message_id, last_error FROM transactional_messages WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("transactional row");
    MessageRow {
        status: row.get("status"),
        ses_message_id: row.get("ses_message_id"),
        last_error: row.get("last_error"),
    }
}

/// Waits until the row leaves `queued`/`sending`.
pub async fn wait_terminal(pool: &sqlx::PgPool, id: i64, limit: Duration) -> MessageRow {
    wait_for(
        &format!("message {id} to leave queued/sending"),
        limit,
        || async {
            let row = message_row(pool, id).await;
            (!matches!(row.status.as_str(), "queued" | "sending")).then_some(row)
        },
    )
    .await
}

/// (event_type, metadata) of a message's events, oldest first.
pub async fn events(pool: &sqlx::PgPool, id: i64) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT event_type, metadata FROM email_events WHERE transactional_message_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .expect("events")
}

/// An RDS-style database secret (`username`, `password`, `host`, `port`, `dbname`) on moto for
/// the local server's `dbname`, as the stack's secrets hold them; returns its ARN. The local
/// server trusts its clients, so the password only has to survive the URL round trip.
pub async fn database_secret(aws: &SdkConfig, host: &str, dbname: &str, password: &str) -> String {
    let secret = json!({"username": "postgres", "password": password, "host": host,
                        "port": 5432, "dbname": dbname, "engine": "postgres"});
    aws_sdk_secretsmanager::Client::new(aws)
        .create_secret()
        .name(unique("dm-db-secret"))
        .secret_string(secret.to_string())
        .send()
        .await
        .expect("CreateSecret")
        .arn()
        .expect("secret arn")
        .to_string()
}

/// A moto server of the test's own, for state that would break the shared one: once a Lambda
/// function exists, moto's `/moto-api/data.json` (where other tests read SES mail) fails
/// without docker, and moto keeps deleted functions in it. Killed on drop.
pub struct PrivateMoto {
    child: std::process::Child,
    pub endpoint: String,
}

impl PrivateMoto {
    /// Starts `.venv/bin/moto_server` (scripts/test-env.sh installs it); `None` (a failure
    /// under CI) when it cannot run.
    pub async fn start() -> Option<PrivateMoto> {
        let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/moto_server");
        let port = free_port();
        let child = match std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                datamailer_testkit::unavailable("a private moto server", format!("{bin}: {e}"));
                return None;
            }
        };
        let moto = PrivateMoto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let ready = format!("{}/moto-api/", moto.endpoint);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Some(moto);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the private moto server did not start within 30 s");
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
