//! `POST /webhooks/ses`: Amazon SNS delivering SES events over HTTPS (facts §3.7, path A),
//! with the original's gaps fixed.
//!
//! * Strict by default: the `TopicArn` must be one of `DATAMAILER_SNS_TOPIC_ARNS`, the
//!   certificate URL must be `https://sns.<region>.amazonaws.com/…pem`, and the RSA signature
//!   (SignatureVersion 1, SHA1, or 2, SHA256) must match the canonical string of the message's
//!   type (`core/src/sns.rs`). Certificates are cached by URL (they are immutable: a new key
//!   comes with a new URL). `DATAMAILER_SNS_SIGNATURE_MODE=insecure` skips the signature for
//!   local testing only, and says so at start.
//! * Every refusal is a 4xx naming the reason, and nothing is written or enqueued for it;
//!   a certificate that cannot be fetched is a 502, so SNS retries.
//! * `Notification`: normalized to the `ses-webhooks` contract and enqueued (no other write);
//!   an SES event type the contract does not know is enqueued as the SNS envelope itself,
//!   which the ses-webhooks tree keeps with its reason. `SubscriptionConfirmation` is
//!   confirmed (a GET of its `SubscribeURL`, same host rule) only when
//!   `DATAMAILER_SNS_ALLOW_SUBSCRIPTION_CONFIRMATION` is on; `UnsubscribeConfirmation` is
//!   acknowledged and logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use datamailer_core::queue::QueueName;
use datamailer_core::ses_events::{self, NormalizeError};
use datamailer_core::sns::{self, MessageType, SnsError};
use serde_json::{json, Map, Value};

use crate::AppState;

/// Whether signatures are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMode {
    Strict,
    /// No signature or topic check: local testing only.
    Insecure,
}

/// Where certificates and confirmations are fetched from (HTTPS in production; a test
/// stands in for AWS's certificate host, which cannot be reached here).
#[async_trait]
pub trait SnsHttp: Send + Sync {
    async fn get(&self, url: &str) -> anyhow::Result<String>;
}

/// Plain HTTPS, 5 s per request.
pub struct HttpsFetcher(reqwest::Client);

impl Default for HttpsFetcher {
    fn default() -> Self {
        Self(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
        )
    }
}

#[async_trait]
impl SnsHttp for HttpsFetcher {
    async fn get(&self, url: &str) -> anyhow::Result<String> {
        Ok(self
            .0
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

/// The ingress settings and its certificate cache.
pub struct SnsIngress {
    pub mode: SignatureMode,
    /// Topics whose messages are accepted (strict mode).
    pub topics: Vec<String>,
    pub allow_subscription_confirmation: bool,
    http: Arc<dyn SnsHttp>,
    /// Public keys by certificate URL.
    keys: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl Default for SnsIngress {
    fn default() -> Self {
        Self::new(SignatureMode::Strict, Vec::new(), false)
    }
}

impl SnsIngress {
    pub fn new(mode: SignatureMode, topics: Vec<String>, allow_confirmation: bool) -> Self {
        Self {
            mode,
            topics,
            allow_subscription_confirmation: allow_confirmation,
            http: Arc::new(HttpsFetcher::default()),
            keys: Mutex::default(),
        }
    }

    pub fn with_http(mut self, http: Arc<dyn SnsHttp>) -> Self {
        self.http = http;
        self
    }

    async fn public_key(&self, url: &str) -> Result<Arc<Vec<u8>>, Response> {
        if let Some(key) = self.keys.lock().expect("cert cache").get(url) {
            return Ok(key.clone());
        }
        let pem = self.http.get(url).await.map_err(|e| {
            tracing::warn!(
                url,
                error = format!("{e:#}"),
                "fetching an SNS certificate failed"
            );
            refuse(
                StatusCode::BAD_GATEWAY,
                "sns_certificate_unavailable",
                "the signing certificate could not be fetched; retry",
            )
        })?;
        let key = Arc::new(sns::public_key_of(&pem).map_err(signature_error)?);
        let mut keys = self.keys.lock().expect("cert cache");
        if keys.len() >= 64 {
            keys.clear();
        }
        keys.insert(url.to_string(), key.clone());
        Ok(key)
    }

    /// The topic and signature checks of strict mode.
    async fn authenticate(&self, msg: &Map<String, Value>) -> Result<(), Response> {
        if self.mode == SignatureMode::Insecure {
            return Ok(());
        }
        let topic = msg.get("TopicArn").and_then(Value::as_str).unwrap_or("");
        if !self.topics.iter().any(|t| t == topic) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "sns_topic_not_allowed",
                &format!("TopicArn {topic:?} is not one of DATAMAILER_SNS_TOPIC_ARNS"),
            ));
        }
        let url = msg
            .get("SigningCertURL")
            .and_then(Value::as_str)
            .ok_or_else(|| signature_error(SnsError::MissingField("SigningCertURL")))?;
        sns::check_cert_url(url).map_err(signature_error)?;
        let key = self.public_key(url).await?;
        sns::verify(msg, &key).map_err(signature_error)
    }
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn signature_error(e: SnsError) -> Response {
    match e {
        SnsError::UnknownType | SnsError::MissingField(_) => refuse(
            StatusCode::BAD_REQUEST,
            "invalid_sns_message",
            &e.to_string(),
        ),
        _ => refuse(
            StatusCode::FORBIDDEN,
            "invalid_sns_signature",
            &e.to_string(),
        ),
    }
}

fn ok(kind: MessageType, enqueued: bool, confirmed: bool) -> Response {
    Json(json!({"status": "ok", "type": kind.as_str(), "enqueued": enqueued, "confirmed": confirmed}))
        .into_response()
}

/// `POST /webhooks/ses`.
pub async fn receive(State(state): State<AppState>, body: Bytes) -> Response {
    let Ok(Value::Object(msg)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be an SNS message: a JSON object",
        );
    };
    let kind = match sns::message_type(&msg) {
        Ok(kind) => kind,
        Err(e) => return signature_error(e),
    };
    let ingress = &state.sns_ingress;
    if let Err(refusal) = ingress.authenticate(&msg).await {
        return refusal;
    }
    match kind {
        MessageType::Notification => {
            let received_at = chrono::Utc::now().to_rfc3339();
            let body = match ses_events::normalize(&msg, &received_at) {
                Ok(contract) => contract.to_json(),
                // The tree keeps an event type it does not know, with the reason.
                Err(NormalizeError::UnsupportedType(_)) => Value::Object(msg.clone()).to_string(),
                Err(e) => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_sns_message",
                        &e.to_string(),
                    )
                }
            };
            match state.enqueue(QueueName::SesWebhooks.as_str(), body).await {
                Ok(()) => ok(kind, true, false),
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "enqueueing an SES notification failed"
                    );
                    refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "queue_unavailable",
                        "the notification could not be queued; retry",
                    )
                }
            }
        }
        MessageType::SubscriptionConfirmation => {
            let Some(url) = msg.get("SubscribeURL").and_then(Value::as_str) else {
                return signature_error(SnsError::MissingField("SubscribeURL"));
            };
            if !ingress.allow_subscription_confirmation {
                tracing::warn!(topic = ?msg.get("TopicArn"), "SNS subscription not confirmed (DATAMAILER_SNS_ALLOW_SUBSCRIPTION_CONFIRMATION is off)");
                return ok(kind, false, false);
            }
            if let Err(e) = sns::check_sns_url(url) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "invalid_subscribe_url",
                    &e.to_string(),
                );
            }
            match ingress.http.get(url).await {
                Ok(_) => ok(kind, false, true),
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "confirming an SNS subscription failed"
                    );
                    refuse(
                        StatusCode::BAD_GATEWAY,
                        "subscription_not_confirmed",
                        "SNS did not answer the confirmation; retry",
                    )
                }
            }
        }
        MessageType::UnsubscribeConfirmation => {
            tracing::warn!(topic = ?msg.get("TopicArn"), "SNS says this endpoint was unsubscribed");
            ok(kind, false, false)
        }
    }
}
