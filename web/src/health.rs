//! `GET /health/` (checks the database), `GET /health/probes/{probe_id}` (did a worker consume
//! this smoke probe?), `GET /metrics` (Prometheus text) and the host metrics the alarms use.
//!
//! Host metrics (scraped from `/metrics` by the web host's CloudWatch agent):
//! * `datamailer_health_check_ok`: 1 when the database answers, else 0; refreshed by every
//!   `/health/` call and by [`spawn_host_metrics`] every [`HOST_METRICS_EVERY`].
//! * `datamailer_campaign_sending_age_seconds`: age of the oldest campaign in `sending` (by
//!   `sending_started_at`), 0 when none.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use sqlx::PgPool;

use crate::AppState;

const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the background task refreshes the host metrics.
pub const HOST_METRICS_EVERY: Duration = Duration::from_secs(30);

pub const HEALTH_CHECK_OK: &str = "datamailer_health_check_ok";
pub const CAMPAIGN_SENDING_AGE: &str = "datamailer_campaign_sending_age_seconds";

/// Whether the database answers within the check timeout; sets `datamailer_health_check_ok`.
pub async fn database_ok(db: &PgPool) -> bool {
    let check = tokio::time::timeout(
        DB_CHECK_TIMEOUT,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(db),
    )
    .await;
    let ok = match check {
        Ok(Ok(_)) => true,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "health check: database unavailable");
            false
        }
        Err(_) => {
            tracing::warn!("health check: database timed out");
            false
        }
    };
    metrics::gauge!(HEALTH_CHECK_OK).set(if ok { 1.0 } else { 0.0 });
    ok
}

pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    if database_ok(&state.db).await {
        (StatusCode::OK, Json(json!({"status": "ok"})))
    } else {
        unavailable()
    }
}

fn unavailable() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "error", "checks": {"database": "unavailable"}})),
    )
}

/// 200 `{"probe_id", "queue", "received_at"}` once a worker consumed the probe, else 404.
pub async fn probe(
    State(state): State<AppState>,
    Path(probe_id): Path<String>,
) -> impl IntoResponse {
    if !datamailer_runtime::control::valid_probe_id(&probe_id) {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"})));
    }
    let row = sqlx::query_as::<_, (String, chrono::DateTime<chrono::Utc>)>(
        "SELECT queue, received_at FROM queue_probes WHERE probe_id = $1",
    )
    .bind(&probe_id)
    .fetch_optional(&state.db)
    .await;
    match row {
        Ok(Some((queue, received_at))) => (
            StatusCode::OK,
            Json(json!({
                "probe_id": probe_id,
                "queue": queue,
                "received_at": datamailer_core::time::iso(received_at),
            })),
        ),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))),
        Err(e) => {
            tracing::warn!(error = %e, "reading queue_probes");
            unavailable()
        }
    }
}

/// Age in seconds of the oldest campaign in `sending` (0 when none); sets the gauge.
pub async fn campaign_sending_age(db: &PgPool) -> anyhow::Result<f64> {
    let age: f64 = sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(sending_started_at)), 0)::float8
         FROM campaigns WHERE status = 'sending'",
    )
    .fetch_one(db)
    .await?;
    let age = age.max(0.0);
    metrics::gauge!(CAMPAIGN_SENDING_AGE).set(age);
    Ok(age)
}

/// One refresh of the host metrics.
pub async fn refresh_host_metrics(db: &PgPool) {
    if database_ok(db).await {
        if let Err(e) = campaign_sending_age(db).await {
            tracing::warn!(error = %e, "could not read the oldest sending campaign");
        }
    }
}

/// Refreshes the host metrics now and every `every` until the task is aborted.
pub fn spawn_host_metrics(db: PgPool, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            refresh_host_metrics(&db).await;
        }
    })
}

pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        datamailer_runtime::telemetry::render_prometheus(),
    )
}

/// `/health` → 301 `/health/`, query kept: Django's `APPEND_SLASH` redirect, which the
/// original answers there (its load balancer checks may use either form).
pub async fn redirect_to_slash(uri: axum::http::Uri) -> axum::response::Response {
    let location = match uri.query() {
        Some(q) => format!("/health/?{q}"),
        None => "/health/".to_string(),
    };
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, location)],
    )
        .into_response()
}
