//! `datamailer lambda` under a Lambda runtime emulator: cargo-lambda's `cargo lambda watch
//! --only-lambda-apis` serves the Runtime API and the Invoke API; our built binary is the
//! function, started by the test as Lambda would start a custom runtime.
//!
//! The SQS event is made of real SQS messages (received from a moto queue, as the event source
//! mapping does) mixing a good record, a poison record and a record that fails transiently;
//! the function must answer `batchItemFailures` naming exactly the transient one.
//!
//! Needs: Postgres, moto (`DATAMAILER_TEST_AWS_ENDPOINT`) and cargo-lambda (found through
//! `DATAMAILER_TEST_CARGO_LAMBDA`, then `.venv/bin/cargo-lambda` in the workspace, then
//! `cargo-lambda` on PATH). Set `DATAMAILER_TEST_SHOW_LOGS=1` to print the emulator's and the
//! function's output even when the test passes (it is always printed on failure).
//!
//! The emulator answers `Lambda-Runtime-Deadline-Ms: 600000` (a constant, i.e. 1970), so the
//! bootstrap sees a deadline already past and budgets Lambda's default 3 s (src/lambda.rs).

mod support;

use std::fs::File;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datamailer_runtime::source::sqs;
use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use sqlx::Row;
use support::*;

/// A child process that is killed when the test ends, pass or fail (also on panic); on failure
/// its output is printed so CI shows why.
struct ChildGuard {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    fn spawn(name: &'static str, mut cmd: Command) -> ChildGuard {
        let log = std::env::temp_dir().join(unique(&format!("dm-{name}")) + ".log");
        let out = File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        ChildGuard { name, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) if the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited early ({status}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("DATAMAILER_TEST_SHOW_LOGS").is_some() {
            eprintln!("----- {} output -----\n{}", self.name, self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn cargo_lambda() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DATAMAILER_TEST_CARGO_LAMBDA") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/cargo-lambda");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("cargo-lambda"))
            .find(|p| p.exists())
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts the emulator on a free port and waits until it accepts connections. The port is
/// picked by binding port 0 and releasing it, so another process may take it first: then the
/// emulator exits and we try another port.
async fn start_emulator(bin: &PathBuf) -> (ChildGuard, u16) {
    for attempt in 1..=3 {
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1"])
            .args(["-P", &port.to_string()])
            // It reads the workspace's metadata to know the function binaries.
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        let mut guard = ChildGuard::spawn("cargo-lambda", cmd);
        let started = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (guard, port);
            }
            if let Some(status) = guard.child.try_wait().unwrap() {
                if attempt == 3 {
                    panic!("cargo-lambda exited ({status}):\n{}", guard.log());
                }
                eprintln!(
                    "cargo-lambda exited ({status}) on port {port}; retrying:\n{}",
                    guard.log()
                );
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                panic!(
                    "cargo-lambda did not listen on {port} within 20 s:\n{}",
                    guard.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    unreachable!()
}

/// Invokes the function through the emulator's Invoke API and returns its JSON answer.
/// Fails fast, with the logs, if the function or the emulator dies meanwhile.
async fn invoke(
    port: u16,
    event: &Value,
    function: &mut ChildGuard,
    emulator: &mut ChildGuard,
) -> Value {
    let request = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"
        ))
        .json(event)
        .timeout(Duration::from_secs(20))
        .send();
    tokio::pin!(request);
    let response = loop {
        tokio::select! {
            r = &mut request => break r.unwrap_or_else(|e| panic!("invoke failed: {e}")),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                function.assert_running();
                emulator.assert_running();
            }
        }
    };
    let status = response.status();
    let text = response.text().await.expect("invoke body");
    assert!(status.is_success(), "invoke answered {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("answer {text:?} is not JSON: {e}"))
}

#[tokio::test]
async fn lambda_bootstrap_reports_only_the_transient_record_as_a_batch_item_failure() {
    bootstrap_end_to_end(
        PathBuf::from(env!("CARGO_BIN_EXE_datamailer")),
        &["lambda"],
        None,
    )
    .await;
}

/// The same flow with the `bootstrap` from the deployment artifact (`make lambda-artifact`):
/// `DATAMAILER_TEST_LAMBDA_ARTIFACT` names the zip (or an unzipped `bootstrap`). Lambda's
/// `provided.al2023` runtime starts `bootstrap` with no arguments, and so does this test. As on
/// AWS, the database comes from a Secrets Manager secret (moto) and the unzipped artifact is
/// `LAMBDA_TASK_ROOT`: when the zip carries `rds-ca.pem` (CI builds it with the local server's
/// certificate as the bundle) the function must connect with `verify-full` against it.
#[tokio::test]
async fn the_lambda_artifact_bootstrap_processes_an_sqs_event_end_to_end() {
    let Some(artifact) = std::env::var_os("DATAMAILER_TEST_LAMBDA_ARTIFACT") else {
        datamailer_testkit::unavailable(
            "the Lambda artifact",
            "DATAMAILER_TEST_LAMBDA_ARTIFACT is not set (scripts/test.sh builds it)",
        );
        return;
    };
    let artifact = PathBuf::from(artifact);
    let (bootstrap, task_root) = if artifact.extension().is_some_and(|e| e == "zip") {
        let dir = std::env::temp_dir().join(unique("dm-artifact"));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("unzip")
            .arg("-q")
            .arg(&artifact)
            .arg("-d")
            .arg(&dir)
            .status()
            .expect("unzip");
        assert!(status.success(), "unzip {}", artifact.display());
        (dir.join("bootstrap"), dir)
    } else {
        let dir = artifact.parent().unwrap().to_path_buf();
        (artifact, dir)
    };
    assert!(
        bootstrap.exists(),
        "no bootstrap at {}",
        bootstrap.display()
    );
    bootstrap_end_to_end(bootstrap, &[], Some(task_root)).await;
}

/// Drives `binary args...` as the function under the emulator (see the module doc). With a
/// `task_root`, the function reads its database from a secret, as deployed.
async fn bootstrap_end_to_end(binary: PathBuf, args: &[&str], task_root: Option<PathBuf>) {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(cargo_lambda) = cargo_lambda() else {
        datamailer_testkit::unavailable("cargo-lambda", "not found (.venv/bin or PATH)");
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let aws = sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queues = create_queues(&sqs, &unique("dm-lambda")).await;
    let queue_arn = queue_arn(&sqs, &queues.url).await;

    // The good record: a real send through the API, enqueued on SQS.
    let suffix = unique("l");
    let recipient = format!("grace-{suffix}@example.com");
    let scope = provision(&db.pool, &format!("support-{suffix}@example.com")).await;
    let web = start_web(
        db.pool.clone(),
        sqs_producer(&sqs, &queues.url),
        &scope.api_key,
    )
    .await;
    web.put_template("welcome").await;
    let (status, body) = web.send(&recipient, "welcome", "Grace").await;
    assert_eq!(status, 202, "send: {body}");
    let good_id = body["message"]["id"].as_i64().expect("message id");

    // The poison record: not the contract. The transient record: a valid contract for a row
    // that does not exist (yet), which the handler retries.
    let poison = r#"{"contract":"transactional-email","version":1,"client_id":1}"#;
    let transient = json!({
        "contract": "transactional-email",
        "version": 1,
        "transactional_message_id": good_id + 1_000_000,
        "client_id": scope.client_id,
        "idempotency_key": "not-yet-committed",
    })
    .to_string();
    for b in [poison, transient.as_str()] {
        sqs.send_message()
            .queue_url(&queues.url)
            .message_body(b)
            .send()
            .await
            .expect("SendMessage");
    }
    let messages = receive_messages(&sqs, &queues.url, 3).await;
    let id_of = |body: &str| -> String {
        messages
            .iter()
            .find(|m| m.body() == Some(body))
            .and_then(|m| m.message_id())
            .expect("message for body")
            .to_string()
    };
    let poison_id = id_of(poison);
    let transient_id = id_of(&transient);
    let event = sqs_event(&messages, &queue_arn);

    // The emulator, then our bootstrap as the function it runs.
    let (mut emulator, port) = start_emulator(&cargo_lambda).await;
    let mut function = Command::new(&binary);
    function.args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        function.env("PATH", path);
    }
    let runtime_api = format!("http://127.0.0.1:{port}/.rt");
    function.envs([
        // What the emulator says a function started outside it must have.
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.as_str()),
        ("AWS_LAMBDA_FUNCTION_NAME", "_"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "1"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "4096"),
        ("DATAMAILER_QUEUE", QUEUE),
        ("DATAMAILER_MAILER", "capture"),
        ("DATAMAILER_QUEUE_BACKEND", "sqs"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("SQS_TRANSACTIONAL_EMAIL_QUEUE_URL", queues.url.as_str()),
        ("SQS_TRANSACTIONAL_EMAIL_DLQ_URL", queues.dlq_url.as_str()),
        ("RUST_LOG", "info"),
    ]);
    let bundled_ca = task_root
        .as_ref()
        .is_some_and(|root| root.join("rds-ca.pem").is_file());
    match &task_root {
        None => {
            function.env("DATABASE_URL", &db.url);
        }
        Some(root) => {
            // `localhost`: the name the local server's certificate holds.
            let arn = database_secret(&aws, "localhost", &db.name, "unused").await;
            function
                .env("DATAMAILER_DATABASE_SECRET_ARN", arn)
                .env("LAMBDA_TASK_ROOT", root);
        }
    }
    let mut function = ChildGuard::spawn("datamailer lambda", function);

    let answer = invoke(port, &event, &mut function, &mut emulator).await;
    assert_eq!(
        answer,
        json!({"batchItemFailures": [{"itemIdentifier": transient_id}]}),
        "poison {poison_id}, transient {transient_id}"
    );
    if task_root.is_some() {
        // The function's pool (still open while it waits for the next event) is encrypted.
        let worker_ssl: Vec<bool> = sqlx::query_scalar(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'datamailer-worker'",
        )
        .bind(&db.name)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert!(
            !worker_ssl.is_empty() && worker_ssl.iter().all(|s| *s),
            "worker connections must use TLS: {worker_ssl:?}"
        );
        if bundled_ca {
            assert!(
                function.log().contains("sslmode=verify-full&sslrootcert="),
                "the bundled CA must select verify-full:\n{}",
                function.log()
            );
        }
    }

    // The poison record is in the DLQ with its reason, copied there by the function.
    let letters = sqs::list_dead_letters(&sqs, &queues.dlq_url)
        .await
        .expect("list dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].body, poison);
    assert_eq!(
        letters[0].reason,
        "invalid transactional-email message: missing required field 'transactional_message_id'"
    );
    let dead = sqs
        .receive_message()
        .queue_url(&queues.dlq_url)
        .message_attribute_names("All")
        .visibility_timeout(0)
        .send()
        .await
        .expect("ReceiveMessage on the DLQ");
    let original = dead.messages()[0]
        .message_attributes()
        .and_then(|a| a.get("OriginalMessageId"))
        .and_then(|v| v.string_value());
    assert_eq!(original, Some(poison_id.as_str()));

    // The good record was sent (capture mailer) and recorded.
    let row = wait_terminal(&db.pool, good_id, Duration::from_secs(5)).await;
    assert_eq!(row.status, "sent", "row: {row:?}");
    let captured = sqlx::query(
        "SELECT subject, to_addresses FROM captured_messages WHERE provider_message_id = $1",
    )
    .bind(&row.ses_message_id)
    .fetch_one(&db.pool)
    .await
    .expect("the captured message");
    assert_eq!(captured.get::<String, _>("subject"), "Hello Grace");
    assert_eq!(captured.get::<Value, _>("to_addresses"), json!([recipient]));

    // A second invocation in the same (warm) environment redelivers the good record, as SQS
    // may: the row is already sent, so it is acknowledged without a second send.
    let good = messages.iter().find(|m| {
        m.message_id() != Some(poison_id.as_str()) && m.message_id() != Some(transient_id.as_str())
    });
    let again = invoke(
        port,
        &sqs_event(&[good.unwrap().clone()], &queue_arn),
        &mut function,
        &mut emulator,
    )
    .await;
    assert_eq!(again, json!({"batchItemFailures": []}));
    let copies: i64 = sqlx::query_scalar("SELECT count(*) FROM captured_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(copies, 1, "the redelivered record must not be sent again");
    assert_eq!(
        message_row(&db.pool, good_id).await.ses_message_id,
        row.ses_message_id
    );

    // Metrics: every invocation flushed CloudWatch EMF lines on stdout before answering.
    let emf: Vec<Value> = function
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect();
    let acked = emf
        .iter()
        .find(|d| d.get("datamailer_messages_acked_total").is_some())
        .unwrap_or_else(|| panic!("no EMF line with acks in:\n{}", function.log()));
    assert_eq!(
        acked["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "Datamailer"
    );
    assert_eq!(acked["queue"], QUEUE);
    assert!(acked["datamailer_messages_acked_total"].as_u64().unwrap() >= 1);
    assert!(
        emf.iter()
            .any(|d| d.get("datamailer_messages_dead_lettered_total").is_some()),
        "the poison record's dead-letter is counted"
    );

    // Paused (`datamailer pause`): the next invocation hands every record back unhandled,
    // once the function's pause cache (3 s) has expired.
    sqlx::query("INSERT INTO queue_pauses (queue, reason) VALUES ($1, 'test')")
        .bind(QUEUE)
        .execute(&db.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let good_id = good.unwrap().message_id().unwrap().to_string();
    let paused = invoke(
        port,
        &sqs_event(&[good.unwrap().clone()], &queue_arn),
        &mut function,
        &mut emulator,
    )
    .await;
    assert_eq!(
        paused,
        json!({"batchItemFailures": [{"itemIdentifier": good_id}]})
    );

    drop(function);
    drop(emulator);
    db.drop_db().await;
}
