//! `lambda`: cold start of the Lambda bootstrap. `datamailer lambda` (the transactional
//! worker) is started `runs` times against a Lambda Runtime API served by the harness (the
//! same HTTP protocol `cargo lambda watch` and AWS serve, kept in-process so the harness sees
//! the instant the function first asks for an event). Ready = process spawned → its first
//! `GET /runtime/invocation/next`; then one SQS event with one real message is handed over
//! and timed to the function's response (which must report no failure) and to the fake SES.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::transactional::wait_fake;
use super::{serve, Harness};
use crate::pg;
use crate::report::{Goal, Percentiles, RunReport, Target};
use datamailer_testkit::fake_ses::{Behaviour, FakeSes};

pub const READY_TARGET_MS: f64 = 50.0;

#[derive(Default)]
struct Invocation {
    event: Option<Value>,
    first_poll: Option<Instant>,
    responded: Option<(Instant, Value)>,
    error: Option<String>,
}

#[derive(Clone, Default)]
struct RuntimeApi {
    state: Arc<Mutex<Invocation>>,
    responded: Arc<Notify>,
}

async fn next(State(api): State<RuntimeApi>) -> impl IntoResponse {
    let event = {
        let mut s = api.state.lock().expect("state");
        if s.first_poll.is_none() {
            s.first_poll = Some(Instant::now());
        }
        s.event.take()
    };
    let Some(event) = event else {
        // One event per process: later polls wait, as Lambda's would while idle.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
    let mut headers = HeaderMap::new();
    headers.insert(
        "lambda-runtime-aws-request-id",
        "load-test-1".parse().unwrap(),
    );
    headers.insert(
        "lambda-runtime-deadline-ms",
        deadline.to_string().parse().unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:datamailer-transactional"
            .parse()
            .unwrap(),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        "Root=1-00000000-000000000000000000000000".parse().unwrap(),
    );
    (headers, axum::Json(event))
}

async fn response(
    State(api): State<RuntimeApi>,
    Path(_id): Path<String>,
    body: axum::body::Bytes,
) -> &'static str {
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    api.state.lock().expect("state").responded = Some((Instant::now(), value));
    api.responded.notify_one();
    "{}"
}

async fn error(State(api): State<RuntimeApi>, body: axum::body::Bytes) -> &'static str {
    api.state.lock().expect("state").error = Some(String::from_utf8_lossy(&body).into_owned());
    api.responded.notify_one();
    "{}"
}

pub async fn run(h: &Harness, runs: u32) -> anyhow::Result<Vec<RunReport>> {
    let mut report = RunReport::new(
        "lambda",
        "cold-start",
        "`datamailer lambda` (transactional-email worker, fake SES) started afresh each run against \
         an in-process Lambda Runtime API; ready = spawn → first `GET /runtime/invocation/next`.",
    );
    let mut s = h.setup("lambda").await?;
    let fake = FakeSes::start(0, Behaviour::default()).await?;
    s.dm.ses(&fake.endpoint(), 0.0);
    let (p, api, _) = serve(&s.dm, "lambda-setup").await?;
    api.put_load_template(&s.key).await?;
    p.stop(Duration::from_secs(30)).await?;
    pg::seed_transactional_backlog(&s.sql, runs as u64, "lambda").await?;
    // The queue bodies the seed wrote, handed over as SQS records (the embedded rows stay
    // unclaimed: no `serve` runs meanwhile).
    let bodies: Vec<String> = s
        .sql
        .query(
            "SELECT body FROM queue_messages WHERE queue = 'transactional-email' ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    report
        .config("runs", runs)
        .config("queue", "transactional-email")
        .config("mailer", "ses (fake, 0 ms)");

    let (mut ready, mut first_event, mut to_ses) = (vec![], vec![], vec![]);
    let (mut peak_rss_kib, mut cpu_ms) = (0u64, 0u64);
    for (i, body) in bodies.iter().enumerate() {
        let rt = RuntimeApi::default();
        rt.state.lock().expect("state").event = Some(sqs_event(i, body));
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(error))
            .with_state(rt.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let sent_before = fake.accepted();
        let spawned = Instant::now();
        let p = s.dm.spawn_with(
            &format!("lambda-{i}"),
            &["lambda"],
            &[
                ("AWS_LAMBDA_RUNTIME_API", addr.to_string()),
                (
                    "AWS_LAMBDA_FUNCTION_NAME",
                    "datamailer-transactional".into(),
                ),
                ("AWS_LAMBDA_FUNCTION_VERSION", "1".into()),
                ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
                ("AWS_LAMBDA_LOG_STREAM_NAME", "load-test".into()),
                ("AWS_LAMBDA_LOG_GROUP_NAME", "load-test".into()),
                ("DATAMAILER_QUEUE", "transactional-email".into()),
                ("DATAMAILER_QUEUE_BACKEND", "sqs".into()),
                // Read once at start-up for the redrive policy; the fake answers 404, so the
                // function goes on with its defaults, as it would with an unreadable queue.
                (
                    "SQS_TRANSACTIONAL_EMAIL_QUEUE_URL",
                    format!(
                        "{}/123456789012/datamailer-transactional-email",
                        fake.endpoint()
                    ),
                ),
            ],
        )?;
        tokio::time::timeout(Duration::from_secs(30), rt.responded.notified())
            .await
            .map_err(|_| {
                anyhow::anyhow!("lambda run {i}: no response within 30 s; see lambda-{i}.log")
            })?;
        wait_fake(&fake, sent_before + 1, Duration::from_secs(10)).await?;
        let ses_at = fake.sends().last().map(|s| s.at).expect("a send");
        let (error, responded, first_poll) = {
            let st = rt.state.lock().expect("state");
            (st.error.clone(), st.responded.clone(), st.first_poll)
        };
        if let Some(e) = error {
            anyhow::bail!("lambda run {i} reported an error: {e}");
        }
        let (at, answer) = responded.expect("responded");
        anyhow::ensure!(
            answer == json!({"batchItemFailures": []}),
            "lambda run {i} answered {answer}"
        );
        let polled = first_poll.expect("polled before responding");
        ready.push(polled.duration_since(spawned).as_secs_f64() * 1000.0);
        first_event.push(at.duration_since(polled).as_secs_f64() * 1000.0);
        to_ses.push(ses_at.duration_since(polled).as_secs_f64() * 1000.0);
        if let Some(stats) = crate::datamailer::proc_stats(p.pid) {
            peak_rss_kib = peak_rss_kib.max(stats.peak_rss_kib);
            cpu_ms += stats.cpu_ms;
        }
        p.stop(Duration::from_secs(3)).await.ok();
        server.abort();
    }
    let ev = Percentiles::of(first_event).unwrap_or_default();
    let ses = Percentiles::of(to_ses).unwrap_or_default();
    report.emails = runs as u64;
    report.observed(crate::sample::Observed {
        peak_rss_mib: peak_rss_kib as f64 / 1024.0,
        cpu_ms_datamailer: cpu_ms,
        ..Default::default()
    });
    report.latencies("spawn → ready for the first event", ready);
    report
        .figure(
            "first event: handed over → response p50 / max (ms)",
            format!("{:.1} / {:.1}", ev.p50, ev.max),
        )
        .figure(
            "first event: handed over → fake SES p50 / max (ms)",
            format!("{:.1} / {:.1}", ses.p50, ses.max),
        );
    let p50 = report.latency_ms.map(|p| p.p50).unwrap_or(f64::INFINITY);
    let max = report.latency_ms.map(|p| p.max).unwrap_or(f64::INFINITY);
    report.target(Target::new(
        "ready (median)",
        Goal::Below(READY_TARGET_MS),
        "ms",
        p50,
    ));
    report.target(Target::new(
        "ready (slowest run)",
        Goal::Below(READY_TARGET_MS),
        "ms",
        max,
    ));
    s.db.drop().await?;
    Ok(vec![report])
}

fn sqs_event(i: usize, body: &str) -> Value {
    let now = chrono::Utc::now().timestamp_millis().to_string();
    json!({"Records": [{
        "messageId": format!("00000000-0000-4000-8000-{i:012}"),
        "receiptHandle": format!("load-test-{i}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": now,
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": now,
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:datamailer-transactional-email",
        "awsRegion": "us-east-1",
    }]})
}
