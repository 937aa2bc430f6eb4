//! `GET /health/` (checks the database) and `GET /metrics` (Prometheus text).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::AppState;

const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let check = tokio::time::timeout(
        DB_CHECK_TIMEOUT,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.db),
    )
    .await;
    match check {
        Ok(Ok(_)) => (StatusCode::OK, Json(json!({"status": "ok"}))),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "health check: database unavailable");
            unavailable()
        }
        Err(_) => {
            tracing::warn!("health check: database timed out");
            unavailable()
        }
    }
}

fn unavailable() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "error", "checks": {"database": "unavailable"}})),
    )
}

pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        datamailer_runtime::telemetry::render_prometheus(),
    )
}
