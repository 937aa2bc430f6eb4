//! The datamailer web service: the client API under `/api/...` (Bearer API keys), health and
//! Prometheus metrics. Handlers are thin: they parse with `datamailer-core`, talk to Postgres
//! with runtime SQL, and answer through one error type ([`error::ApiError`]).

use std::sync::{Arc, OnceLock};

use axum::routing::{get, post, MethodRouter};
use axum::Router;
use datamailer_runtime::outbound::OutboundPolicy;
use datamailer_runtime::producer::Producer;

pub mod auth;
pub mod error;
pub mod health;
mod http_metrics;
pub mod json;
mod messages;
pub mod provision;
mod send;
pub mod send_writer;
mod senders;
mod templates;
pub mod webhooks;

/// Web service settings that handlers need.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// The public base URL of this service (e.g. `https://mail.example.com`).
    pub public_base_url: String,
}

/// Shared state of every handler: the pool, the queue producer and the configuration.
#[derive(Clone)]
pub struct AppState {
    pub(crate) db: sqlx::PgPool,
    pub(crate) producer: Producer,
    #[allow(dead_code)]
    pub(crate) config: Arc<WebConfig>,
    /// Started on first use (so `new` needs no runtime).
    writer: Arc<OnceLock<send_writer::SendWriter>>,
    /// Which webhook URLs a client may set (`DATAMAILER_OUTBOUND_ALLOW_HOSTS`); strict unless
    /// [`AppState::with_outbound_policy`] says otherwise.
    pub(crate) outbound_policy: Arc<OutboundPolicy>,
}

impl AppState {
    pub fn new(db: sqlx::PgPool, producer: Producer, config: WebConfig) -> Self {
        Self {
            db,
            producer,
            config: Arc::new(config),
            writer: Arc::new(OnceLock::new()),
            outbound_policy: Arc::new(OutboundPolicy::default()),
        }
    }

    /// The hosts exempt from the SSRF rules when a client sets its webhook URL.
    pub fn with_outbound_policy(mut self, policy: OutboundPolicy) -> Self {
        self.outbound_policy = Arc::new(policy);
        self
    }

    /// The transactional send writer (group commit), started on first use.
    pub(crate) fn send_writer(&self) -> &send_writer::SendWriter {
        self.writer
            .get_or_init(|| send_writer::start(self.db.clone(), self.producer.clone()))
    }

    /// The database pool.
    pub fn db(&self) -> &sqlx::PgPool {
        &self.db
    }

    /// The configuration.
    pub fn config(&self) -> &WebConfig {
        &self.config
    }
}

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A method router whose unmatched methods answer the API's JSON 405 (before auth, since
/// authentication happens in the handlers' extractors).
fn api_route(
    methods: MethodRouter<AppState>,
    allowed: &'static [&'static str],
) -> MethodRouter<AppState> {
    methods.fallback(move || async move { error::ApiError::MethodNotAllowed(allowed) })
}

/// Every route of the service, with the HTTP metrics layer.
pub fn router(state: AppState) -> Router {
    // Record into the process-wide Prometheus registry (idempotent).
    datamailer_runtime::telemetry::install_prometheus();
    Router::new()
        .route("/health/", get(health::health))
        .route("/health/probes/{probe_id}", get(health::probe))
        .route("/metrics", get(health::metrics))
        // require_POST in the original: a plain 405 with no body, before auth.
        .route("/api/transactional/send", post(send::send))
        .route(
            "/api/transactional/templates/{template_key}",
            api_route(
                get(templates::get_template).put(templates::put_template),
                &["GET", "PUT"],
            ),
        )
        .route(
            "/api/transactional/messages/{message_id}",
            api_route(get(messages::message_status), &["GET"]),
        )
        .route(
            "/api/client/senders",
            api_route(
                get(senders::get_senders).put(senders::put_senders),
                &["GET", "PUT"],
            ),
        )
        .route(
            "/api/client/webhook",
            api_route(
                get(webhooks::get_webhook).put(webhooks::put_webhook),
                &["GET", "PUT"],
            ),
        )
        .fallback(|| async { error::ApiError::NotFound })
        // Ten message parts of up to 200,000 characters fit; the default 2 MB would not.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(http_metrics::record))
        .with_state(state)
}
