//! A fake Amazon SES v2 endpoint for tests and the load harness: datamailer's real
//! aws-sdk-sesv2 client talks to it over HTTP (`AWS_ENDPOINT_URL`), so request building, SigV4
//! signing, the sender's retries and the HTTP client pool all run as in production. Nothing
//! checks the signature. (moto's SES is the correctness reference elsewhere; it answers ~300
//! calls/s and cannot throttle, so rate and load tests use this.)
//!
//! * `POST /v2/email/outbound-emails` (`SendEmail`): after the configured latency, 200 with a
//!   fresh `MessageId`; or 429 `TooManyRequestsException` (throttling) at `throttle_rate`, on
//!   every `fail_every`-th request, or for every send while a storm is on; or 500
//!   `InternalFailure` at `error_rate`; or 400 `MessageRejected` for an address containing one
//!   of `reject` (a permanent refusal). Every accepted send is recorded (its first To address
//!   and when it arrived), so callers count lost and duplicated messages and the rate SES saw.
//! * `GET /v2/email/account` (`GetAccount`): the configured quota.
//!
//! Latency is a timer per request, so it adds delay without capping throughput.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Added before every `SendEmail` answer.
    pub latency: Duration,
    /// Share of sends answered with 429 throttling (0..1).
    pub throttle_rate: f64,
    /// Every n-th `SendEmail` request answered with 429 (0: never).
    pub fail_every: u64,
    /// Share of sends answered with 500 (0..1).
    pub error_rate: f64,
    /// Sends to an address containing one of these get 400 `MessageRejected`.
    pub reject: Vec<String>,
    /// `GetAccount`'s `MaxSendRate`.
    pub max_send_rate: f64,
    /// `GetAccount`'s `Max24HourSend`.
    pub max_24_hour_send: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            throttle_rate: 0.0,
            fail_every: 0,
            error_rate: 0.0,
            reject: vec![],
            max_send_rate: 1.0e6,
            max_24_hour_send: 1.0e9,
        }
    }
}

/// One accepted send.
#[derive(Debug, Clone)]
pub struct Send {
    pub to: String,
    /// When the request arrived.
    pub at: Instant,
}

#[derive(Clone)]
pub struct FakeSes {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

struct Inner {
    behaviour: Behaviour,
    started: Instant,
    storm: AtomicBool,
    sends: Mutex<Vec<Send>>,
    requests: AtomicU64,
    throttled: AtomicU64,
    errors: AtomicU64,
}

impl FakeSes {
    /// Serves on the caller's runtime, on `port` (0: any free port).
    pub async fn start(port: u16, behaviour: Behaviour) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let fake = Self::new(listener.local_addr()?, behaviour);
        let app = fake.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(fake)
    }

    /// Serves on a thread of its own, so a test that blocks its runtime (a synchronous
    /// `Command::output`, say) does not stall the processes sending to it.
    pub fn start_in_background(behaviour: Behaviour) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let fake = Self::new(listener.local_addr().expect("addr"), behaviour);
                let app = fake.router();
                tx.send(fake).expect("send");
                let _ = axum::serve(listener, app).await;
            });
        });
        rx.recv().expect("the fake SES started")
    }

    fn new(addr: SocketAddr, behaviour: Behaviour) -> Self {
        let inner = Arc::new(Inner {
            behaviour,
            started: Instant::now(),
            storm: AtomicBool::new(false),
            sends: Mutex::new(Vec::with_capacity(1024)),
            requests: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        Self { inner, addr }
    }

    fn router(&self) -> Router {
        Router::new()
            .route("/v2/email/outbound-emails", post(send_email))
            .route("/v2/email/account", get(get_account))
            .with_state(self.inner.clone())
    }

    /// `AWS_ENDPOINT_URL` for datamailer.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While on, every send is throttled (a throttling storm).
    pub fn set_storm(&self, on: bool) {
        self.inner.storm.store(on, Ordering::SeqCst);
    }

    /// Sends accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.sends.lock().expect("sends").len() as u64
    }

    /// `SendEmail` answers with 429.
    pub fn throttled(&self) -> u64 {
        self.inner.throttled.load(Ordering::Relaxed)
    }

    /// `SendEmail` answers with 500 or 400.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// Every accepted send, in arrival order.
    pub fn sends(&self) -> Vec<Send> {
        self.inner.sends.lock().expect("sends").clone()
    }

    /// The first To address of every accepted send, in arrival order.
    pub fn recipients(&self) -> Vec<String> {
        self.sends().into_iter().map(|s| s.to).collect()
    }

    /// Arrival times of the accepted sends, in seconds since the fake started.
    pub fn send_times(&self) -> Vec<f64> {
        let start = self.inner.started;
        self.sends()
            .iter()
            .map(|s| s.at.duration_since(start).as_secs_f64())
            .collect()
    }
}

/// Lost and duplicated messages: `expected` addresses each mailed exactly once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Delivery {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
}

/// Compares what SES saw with the addresses that should each have received one message.
pub fn delivery<'a>(sends: &[Send], expected: impl IntoIterator<Item = &'a str>) -> Delivery {
    let mut seen: HashMap<&str, u64> = HashMap::with_capacity(sends.len());
    for s in sends {
        *seen.entry(s.to.as_str()).or_default() += 1;
    }
    let mut d = Delivery::default();
    for addr in expected {
        d.expected += 1;
        match seen.get(addr) {
            None => d.lost += 1,
            Some(n) => {
                d.delivered += 1;
                d.duplicated += n - 1;
            }
        }
    }
    d
}

async fn send_email(State(inner): State<Arc<Inner>>, body: axum::body::Bytes) -> Response {
    let at = Instant::now();
    let b = &inner.behaviour;
    let n = inner.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let roll: f64 = rand::thread_rng().gen();
    if !b.latency.is_zero() {
        tokio::time::sleep(b.latency).await;
    }
    if inner.storm.load(Ordering::SeqCst)
        || roll < b.throttle_rate
        || (b.fail_every > 0 && n % b.fail_every == 0)
    {
        inner.throttled.fetch_add(1, Ordering::Relaxed);
        return ses_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            "Maximum sending rate exceeded.",
        );
    }
    if roll < b.throttle_rate + b.error_rate {
        inner.errors.fetch_add(1, Ordering::Relaxed);
        return ses_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "The request processing has failed because of an unknown error.",
        );
    }
    let to = first_to(&body);
    if b.reject.iter().any(|r| to.contains(r.as_str())) {
        inner.errors.fetch_add(1, Ordering::Relaxed);
        return ses_error(
            StatusCode::BAD_REQUEST,
            "MessageRejected",
            &format!("Address rejected: {to}"),
        );
    }
    inner.sends.lock().expect("sends").push(Send { to, at });
    Json(json!({"MessageId": format!("fake-{n:012}")})).into_response()
}

async fn get_account(State(inner): State<Arc<Inner>>) -> Response {
    let b = &inner.behaviour;
    Json(json!({
        "SendQuota": {
            "Max24HourSend": b.max_24_hour_send,
            "MaxSendRate": b.max_send_rate,
            "SentLast24Hours": 0.0,
        },
        "SendingEnabled": true,
        "ProductionAccessEnabled": true,
    }))
    .into_response()
}

fn first_to(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v["Destination"]["ToAddresses"][0]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn ses_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [
            ("x-amzn-ErrorType", code),
            ("content-type", "application/json"),
        ],
        Json(json!({"message": message})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_counts_lost_and_duplicated() {
        let now = Instant::now();
        let sends: Vec<Send> = ["a", "b", "b", "b", "c"]
            .iter()
            .map(|to| Send {
                to: to.to_string(),
                at: now,
            })
            .collect();
        let d = delivery(&sends, ["a", "b", "d"]);
        assert_eq!(
            (d.expected, d.delivered, d.lost, d.duplicated),
            (3, 2, 1, 2)
        );
    }
}
