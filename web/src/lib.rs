//! The datamailer web service: the client API under `/api/...` (Bearer API keys), health and
//! Prometheus metrics. Handlers are thin: they parse with `datamailer-core`, talk to Postgres
//! with runtime SQL, and answer through one error type ([`error::ApiError`]).

use std::sync::{Arc, OnceLock};

use axum::routing::{get, patch, post, put, MethodRouter};
use axum::Router;
use datamailer_runtime::outbound::OutboundPolicy;
use datamailer_runtime::producer::Producer;

pub mod auth;
pub mod campaigns;
pub(crate) mod contacts;
pub mod error;
pub mod health;
mod held_connection;
mod http_metrics;
pub mod json;
pub mod lists;
mod messages;
pub mod openapi;
pub mod provision;
pub mod scope;
mod send;
pub mod send_writer;
mod senders;
pub mod ses_ingress;
mod subscriptions;
mod templates;
pub mod tracking;
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
    /// The contact upsert writer (group commit), started on first use.
    contact_writer: Arc<OnceLock<contacts::writer::ContactWriter>>,
    /// Audience ids by (organization, slug), read once a minute at most.
    pub(crate) audiences: Arc<scope::AudienceCache>,
    /// Which webhook URLs a client may set (`DATAMAILER_OUTBOUND_ALLOW_HOSTS`); strict unless
    /// [`AppState::with_outbound_policy`] says otherwise.
    pub(crate) outbound_policy: Arc<OutboundPolicy>,
    /// Opens and clicks go through the email-events queue (`DATAMAILER_TRACKING_ASYNC`).
    pub(crate) tracking_async: bool,
    /// The tracking-token keys, read from the database on first use.
    tracking_keys: Arc<tokio::sync::OnceCell<datamailer_core::tracking::TrackingKeys>>,
    /// Whether recipients moved from the original carry its tokens (looked up once a minute).
    pub(crate) legacy_tokens: Arc<tracking::LegacyTokens>,
    /// `POST /webhooks/ses`: SNS signature settings and certificate cache.
    pub(crate) sns_ingress: Arc<ses_ingress::SnsIngress>,
}

impl AppState {
    pub fn new(db: sqlx::PgPool, producer: Producer, config: WebConfig) -> Self {
        Self {
            db,
            producer,
            config: Arc::new(config),
            writer: Arc::new(OnceLock::new()),
            contact_writer: Arc::new(OnceLock::new()),
            audiences: Arc::default(),
            outbound_policy: Arc::new(OutboundPolicy::default()),
            tracking_keys: Arc::default(),
            legacy_tokens: Arc::default(),
            sns_ingress: Arc::default(),
            tracking_async: false,
        }
    }

    /// How `POST /webhooks/ses` authenticates SNS (strict, with no allowed topic, by default).
    pub fn with_sns_ingress(mut self, ingress: ses_ingress::SnsIngress) -> Self {
        self.sns_ingress = Arc::new(ingress);
        self
    }

    /// Puts one message on `queue`: in Postgres at once, or on SQS.
    pub(crate) async fn enqueue(&self, queue: &str, body: String) -> anyhow::Result<()> {
        if self.producer.writes_in_transaction() {
            sqlx::query(datamailer_runtime::producer::PG_ENQUEUE_SQL)
                .bind(queue)
                .bind(&body)
                .execute(&self.db)
                .await?;
        } else {
            self.producer.send_after_commit(queue, vec![body]).await?;
        }
        Ok(())
    }

    /// Opens and clicks are enqueued as `email-events` messages instead of written at once.
    pub fn with_tracking_async(mut self, on: bool) -> Self {
        self.tracking_async = on;
        self
    }

    /// The keys that sign and verify tracking and unsubscribe tokens (table `tracking_keys`).
    pub(crate) async fn tracking_keys(
        &self,
    ) -> anyhow::Result<&datamailer_core::tracking::TrackingKeys> {
        self.tracking_keys
            .get_or_try_init(|| async {
                let rows: Vec<(i32, Vec<u8>)> = sqlx::query_as(datamailer_core::tracking::KEYS_SQL)
                    .fetch_all(&self.db)
                    .await?;
                datamailer_core::tracking::TrackingKeys::new(
                    rows.into_iter().map(|(id, s)| (id as u8, s)).collect(),
                )
                .ok_or_else(|| anyhow::anyhow!("no tracking key in tracking_keys"))
            })
            .await
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

    /// The contact upsert writer (group commit), started on first use.
    pub(crate) fn contact_writer(&self) -> &contacts::writer::ContactWriter {
        self.contact_writer
            .get_or_init(|| contacts::writer::start(self.db.clone()))
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
/// authentication happens in the handlers' extractors). HEAD included: axum would answer it
/// with the GET handler, the original's API views answer 405.
fn api_route(
    methods: MethodRouter<AppState>,
    allowed: &'static [&'static str],
) -> MethodRouter<AppState> {
    let refuse = move || async move { error::ApiError::MethodNotAllowed(allowed) };
    methods.head(refuse).fallback(refuse)
}

/// `GET /api-docs/openapi.json` (no auth: it holds no data, only the API's shape).
async fn openapi_document(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document(&state.config.public_base_url))
}

/// The people side of the client API: contacts and subscriptions (facts §4.3, §4.4).
fn audience_routes() -> Router<AppState> {
    use contacts::{by_id, erase, io, preferences};
    Router::new()
        .route(
            "/api/contacts",
            api_route(
                get(io::list).post(contacts::upsert_contact),
                openapi::methods("/api/contacts"),
            ),
        )
        .route(
            "/api/contacts.csv",
            api_route(get(io::export_csv), openapi::methods("/api/contacts.csv")),
        )
        .route(
            "/api/contacts/status",
            api_route(
                get(contacts::status),
                openapi::methods("/api/contacts/status"),
            ),
        )
        .route(
            "/api/contacts/imports",
            api_route(
                post(io::import_json),
                openapi::methods("/api/contacts/imports"),
            ),
        )
        .route(
            "/api/contacts/imports/csv",
            api_route(
                post(io::import_csv),
                openapi::methods("/api/contacts/imports/csv"),
            ),
        )
        .route(
            "/api/contacts/erase",
            api_route(post(erase::erase), openapi::methods("/api/contacts/erase")),
        )
        .route(
            "/api/contacts/preferences",
            api_route(
                get(preferences::get_preferences).put(preferences::put_preferences),
                openapi::methods("/api/contacts/preferences"),
            ),
        )
        .route(
            "/api/contacts/{contact_id}/tags",
            api_route(
                put(by_id::replace_tags),
                openapi::methods("/api/contacts/{contact_id}/tags"),
            ),
        )
        .route(
            "/api/contacts/{contact_id}/tags/{tag_slug}",
            api_route(
                post(by_id::add_tag).delete(by_id::remove_tag),
                openapi::methods("/api/contacts/{contact_id}/tags/{tag_slug}"),
            ),
        )
        .route(
            "/api/contacts/{contact_id}/verification",
            api_route(
                patch(by_id::verification),
                openapi::methods("/api/contacts/{contact_id}/verification"),
            ),
        )
        .route(
            "/api/contacts/{contact_id}/validation",
            api_route(
                patch(by_id::validation),
                openapi::methods("/api/contacts/{contact_id}/validation"),
            ),
        )
        .route(
            "/api/contacts/{contact_id}/suppression",
            api_route(
                patch(by_id::suppression),
                openapi::methods("/api/contacts/{contact_id}/suppression"),
            ),
        )
        .route(
            "/api/contacts/{contact_id}/history",
            api_route(
                get(by_id::history),
                openapi::methods("/api/contacts/{contact_id}/history"),
            ),
        )
        .route(
            "/api/recipient-lists/{list_key}",
            api_route(
                get(lists::get_list).put(lists::put_list),
                openapi::methods("/api/recipient-lists/{list_key}"),
            ),
        )
        .route(
            "/api/recipient-lists/{list_key}/members",
            api_route(
                get(lists::members),
                openapi::methods("/api/recipient-lists/{list_key}/members"),
            ),
        )
        .route(
            "/api/recipient-lists/{list_key}/members/bulk-upsert",
            api_route(
                post(lists::bulk_upsert),
                openapi::methods("/api/recipient-lists/{list_key}/members/bulk-upsert"),
            ),
        )
        .route(
            "/api/recipient-lists/{list_key}/members/reconcile",
            api_route(
                post(lists::reconcile),
                openapi::methods("/api/recipient-lists/{list_key}/members/reconcile"),
            ),
        )
        .route(
            "/api/recipient-lists/{list_key}/members/{source_object_key}",
            api_route(
                put(lists::put_member).delete(lists::delete_member),
                openapi::methods("/api/recipient-lists/{list_key}/members/{source_object_key}"),
            ),
        )
        .route(
            "/api/recipient-lists/{list_key}/transactional-send",
            api_route(
                post(lists::send::send_to_list),
                openapi::methods("/api/recipient-lists/{list_key}/transactional-send"),
            ),
        )
        .route(
            "/api/transient-recipient-lists/transactional-send",
            api_route(
                post(lists::send::send_to_transient_list),
                openapi::methods("/api/transient-recipient-lists/transactional-send"),
            ),
        )
        .route(
            "/api/recipient-lists/{list_key}/imports",
            api_route(
                post(lists::imports::create),
                openapi::methods("/api/recipient-lists/{list_key}/imports"),
            ),
        )
        .route(
            "/api/recipient-lists/{list_key}/imports/{job_id}",
            api_route(
                get(lists::imports::get),
                openapi::methods("/api/recipient-lists/{list_key}/imports/{job_id}"),
            ),
        )
        .route(
            "/api/subscriptions/subscribe",
            api_route(
                post(subscriptions::subscribe),
                openapi::methods("/api/subscriptions/subscribe"),
            ),
        )
        .route(
            "/api/subscriptions/unsubscribe",
            api_route(
                post(subscriptions::unsubscribe),
                openapi::methods("/api/subscriptions/unsubscribe"),
            ),
        )
}

/// Campaigns (facts §4.8, plus list, estimate, pause and resume).
fn campaign_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/campaigns",
            api_route(
                get(campaigns::list_campaigns),
                openapi::methods("/api/campaigns"),
            ),
        )
        .route(
            "/api/campaigns/{key}",
            api_route(
                get(campaigns::get_campaign).put(campaigns::put_campaign),
                openapi::methods("/api/campaigns/{key}"),
            ),
        )
        .route(
            "/api/campaigns/{key}/queue",
            api_route(
                post(campaigns::queue_campaign),
                openapi::methods("/api/campaigns/{key}/queue"),
            ),
        )
        .route(
            "/api/campaigns/{key}/cancel",
            api_route(
                post(campaigns::cancel_campaign),
                openapi::methods("/api/campaigns/{key}/cancel"),
            ),
        )
        .route(
            "/api/campaigns/{key}/pause",
            api_route(
                post(campaigns::pause_campaign),
                openapi::methods("/api/campaigns/{key}/pause"),
            ),
        )
        .route(
            "/api/campaigns/{key}/resume",
            api_route(
                post(campaigns::resume_campaign),
                openapi::methods("/api/campaigns/{key}/resume"),
            ),
        )
        .route(
            "/api/campaigns/{key}/estimate",
            api_route(
                post(campaigns::estimate_campaign),
                openapi::methods("/api/campaigns/{key}/estimate"),
            ),
        )
        .route(
            "/api/campaigns/{key}/test-send",
            api_route(
                post(campaigns::test_send_campaign),
                openapi::methods("/api/campaigns/{key}/test-send"),
            ),
        )
        .route(
            "/api/campaigns/{key}/preview",
            api_route(
                post(campaigns::preview_campaign),
                openapi::methods("/api/campaigns/{key}/preview"),
            ),
        )
}

/// Every route of the service, with the HTTP metrics layer.
pub fn router(state: AppState) -> Router {
    // Record into the process-wide Prometheus registry (idempotent).
    datamailer_runtime::telemetry::install_prometheus();
    Router::new()
        .route("/health/", get(health::health))
        .route("/health", get(health::redirect_to_slash))
        .route("/health/probes/{probe_id}", get(health::probe))
        .route("/metrics", get(health::metrics))
        // require_POST in the original: a plain 405 with no body, before auth.
        .route("/api/transactional/send", post(send::send))
        .route(
            "/api/transactional/templates/{template_key}",
            api_route(
                get(templates::get_template).put(templates::put_template),
                openapi::methods("/api/transactional/templates/{template_key}"),
            ),
        )
        .route(
            "/api/transactional/messages/{message_id}",
            api_route(
                get(messages::message_status),
                openapi::methods("/api/transactional/messages/{message_id}"),
            ),
        )
        .route(
            "/api/client/senders",
            api_route(
                get(senders::get_senders).put(senders::put_senders),
                openapi::methods("/api/client/senders"),
            ),
        )
        .route(
            "/api/client/webhook",
            api_route(
                get(webhooks::get_webhook).put(webhooks::put_webhook),
                openapi::methods("/api/client/webhook"),
            ),
        )
        .merge(audience_routes())
        .merge(campaign_routes())
        .route(
            "/t/o/{file}",
            get(tracking::open_pixel).head(tracking::open_pixel),
        )
        .route("/t/c/{token}", get(tracking::click).head(tracking::click))
        .route("/webhooks/ses", post(ses_ingress::receive))
        .route(
            "/unsubscribe/{token}",
            get(tracking::unsubscribe_page).post(tracking::unsubscribe),
        )
        .route("/api-docs/openapi.json", get(openapi_document))
        .fallback(|| async { error::ApiError::NotFound })
        // Ten message parts of up to 200,000 characters fit; the default 2 MB would not.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(http_metrics::record))
        .with_state(state)
}
