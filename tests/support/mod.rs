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
    create_queues_with(sqs, name, 5).await
}

/// A source queue and its DLQ whose redrive policy moves a message after `max_receives`.
pub async fn create_queues_with(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    max_receives: u32,
) -> Queues {
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
    let policy =
        json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}).to_string();
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

// ------------------------------------------------------------------ databases and login roles

/// An empty database (no migrations), optionally owned by `owner` — as RDS's database is owned
/// by its master user. Dropped (best effort) by [`EmptyDb::drop_db`].
pub struct EmptyDb {
    pub name: String,
    /// As the test server's admin (`postgres`, trust auth).
    pub url: String,
}

impl EmptyDb {
    /// `None` (a failure under CI) when Postgres is down.
    pub async fn create(owner: Option<&str>) -> Option<EmptyDb> {
        use sqlx::Connection;
        let admin = datamailer_testkit::admin_url();
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => {
                datamailer_testkit::unavailable("Postgres", e);
                return None;
            }
        };
        let name = unique("dm_empty").replace('-', "_");
        let owner = owner.map(|o| format!(" OWNER \"{o}\"")).unwrap_or_default();
        sqlx::raw_sql(&format!("CREATE DATABASE {name}{owner}"))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let (base, _) = admin.rsplit_once('/').expect("admin url has a database");
        Some(EmptyDb {
            url: format!("{base}/{name}"),
            name,
        })
    }

    /// Drops the database; then `roles` (cluster-global, so tests clean up their own).
    pub async fn drop_db(self, roles: &[&str]) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&datamailer_testkit::admin_url()).await {
            let _ = sqlx::raw_sql(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
            for role in roles {
                let _ = sqlx::raw_sql(&format!("DROP ROLE IF EXISTS \"{role}\""))
                    .execute(&mut conn)
                    .await;
            }
        }
    }
}

/// A database secret on moto for `username` (the shape of the stack's secrets); returns its ARN.
pub async fn login_secret(
    aws: &SdkConfig,
    username: &str,
    password: &str,
    host: &str,
    dbname: &str,
) -> String {
    let secret = json!({"username": username, "password": password, "host": host,
                        "port": 5432, "dbname": dbname, "engine": "postgres"});
    aws_sdk_secretsmanager::Client::new(aws)
        .create_secret()
        .name(unique("dm-login-secret"))
        .secret_string(secret.to_string())
        .send()
        .await
        .expect("CreateSecret")
        .arn()
        .expect("secret arn")
        .to_string()
}

/// Whether a stored `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier (from
/// `pg_authid.rolpassword`) was made from `password` (RFC 5802/7677; for passwords SASLprep
/// leaves unchanged, e.g. ASCII or composed accents). The test server trusts every login, so this is how a test proves the password.
pub fn scram_verifier_matches(verifier: &str, password: &str) -> bool {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let b64 = base64::engine::general_purpose::STANDARD;
    let hmac = |key: &[u8], data: &[u8]| -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key size");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    };
    let Some(rest) = verifier.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((params, keys)) = rest.split_once('$') else {
        return false;
    };
    let (Some((iterations, salt)), Some((stored_key, server_key))) =
        (params.split_once(':'), keys.split_once(':'))
    else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(stored_key), Ok(server_key)) = (
        iterations.parse::<u32>(),
        b64.decode(salt),
        b64.decode(stored_key),
        b64.decode(server_key),
    ) else {
        return false;
    };
    // Hi(password, salt, i): PBKDF2-HMAC-SHA-256 with one output block.
    let mut u = hmac(
        password.as_bytes(),
        &[salt.as_slice(), &[0, 0, 0, 1]].concat(),
    );
    let mut salted = u.clone();
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &u);
        salted.iter_mut().zip(&u).for_each(|(s, x)| *s ^= x);
    }
    let client_key = hmac(&salted, b"Client Key");
    Sha256::digest(&client_key).as_slice() == stored_key.as_slice()
        && hmac(&salted, b"Server Key") == server_key
}

// ------------------------------------------------------------------------ the Lambda emulator

/// A child process killed when the test ends (also on panic); its output is printed when the
/// test fails or `DATAMAILER_TEST_SHOW_LOGS` is set.
pub struct Process {
    name: &'static str,
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Process {
    pub fn spawn(name: &'static str, mut cmd: std::process::Command) -> Process {
        use std::process::Stdio;
        let log = std::env::temp_dir().join(unique(&format!("dm-{name}")) + ".log");
        let out = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process { name, child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited early ({status}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("DATAMAILER_TEST_SHOW_LOGS").is_some() {
            eprintln!("----- {} output -----\n{}", self.name, self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// cargo-lambda: `DATAMAILER_TEST_CARGO_LAMBDA`, then the workspace's `.venv`, then `PATH`.
/// `None` (a failure under CI) when it is nowhere.
pub fn find_cargo_lambda() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Ok(p) = std::env::var("DATAMAILER_TEST_CARGO_LAMBDA") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/cargo-lambda");
    if venv.exists() {
        return Some(venv);
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("cargo-lambda"))
            .find(|p| p.exists())
    });
    if found.is_none() {
        datamailer_testkit::unavailable("cargo-lambda", "not found (.venv/bin or PATH)");
    }
    found
}

/// `cargo lambda watch --only-lambda-apis` on a free port (retried if another process takes
/// the port first): the Runtime API a function started by the test polls, and the Invoke API.
pub async fn start_lambda_emulator(cargo_lambda: &std::path::Path) -> (Process, u16) {
    for attempt in 1..=3 {
        let port = free_port();
        let mut cmd = std::process::Command::new(cargo_lambda);
        cmd.args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1"])
            .args(["-P", &port.to_string()])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        let mut emulator = Process::spawn("cargo-lambda", cmd);
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (emulator, port);
            }
            if let Some(status) = emulator.child.try_wait().unwrap() {
                assert!(
                    attempt < 3,
                    "cargo-lambda exited ({status}):\n{}",
                    emulator.log()
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "cargo-lambda did not listen on {port} within 20 s:\n{}",
                emulator.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    unreachable!()
}

/// The environment the emulator expects of a function started outside it.
pub fn lambda_function_env(cmd: &mut std::process::Command, emulator_port: u16, name: &str) {
    cmd.env(
        "AWS_LAMBDA_RUNTIME_API",
        format!("http://127.0.0.1:{emulator_port}/.rt"),
    )
    .env("AWS_LAMBDA_FUNCTION_NAME", name)
    .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
    .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256");
}

/// Invokes the emulator's function with `event`: (HTTP status, body). Fails fast, with the
/// logs, if a watched process dies meanwhile.
pub async fn invoke_lambda(
    port: u16,
    event: &Value,
    watched: &mut [&mut Process],
) -> (u16, String) {
    let request = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"
        ))
        .json(event)
        .timeout(Duration::from_secs(60))
        .send();
    tokio::pin!(request);
    let response = loop {
        tokio::select! {
            r = &mut request => break r.unwrap_or_else(|e| panic!("invoke failed: {e}")),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for p in watched.iter_mut() {
                    p.assert_running();
                }
            }
        }
    };
    let status = response.status().as_u16();
    (status, response.text().await.expect("invoke body"))
}

/// Receives exactly `n` messages from the queue, as Lambda's event source mapping would.
pub async fn receive_messages(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    n: usize,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "received {} of {n} messages",
            got.len()
        );
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages((n - got.len()) as i32)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .expect("ReceiveMessage");
        got.extend(out.messages().iter().cloned());
    }
    got
}

/// The SQS event Lambda delivers for these messages.
pub fn sqs_event(messages: &[aws_sdk_sqs::types::Message], queue_arn: &str) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, Value> = m
                .attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_string(), json!(v)))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    json!({ "Records": records })
}
