//! `PUT|GET /api/transactional/templates/{template_key}` (facts §4.6).

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use datamailer_core::time::iso;
use datamailer_core::transactional::TemplateUpsert;
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::auth::AuthClient;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonObject;
use crate::AppState;

const TEMPLATE_COLUMNS: &str = "key, name, description, subject, html_body, text_body, \
    required_context, example_context, default_sender_id, is_transactional, is_active, \
    autoescape, created_at, updated_at";

/// A template key from the path: a slug of at most 120 characters.
fn template_key(raw: &str) -> ApiResult<&str> {
    if raw.len() <= 120 && datamailer_core::slug::is_slug(raw) {
        Ok(raw)
    } else {
        Err(ApiError::field("template_key", "invalid"))
    }
}

fn template_json(row: &PgRow, client_slug: &str) -> ApiResult<Value> {
    Ok(json!({
        "key": row.try_get::<String, _>("key")?,
        "client": client_slug,
        "name": row.try_get::<String, _>("name")?,
        "description": row.try_get::<String, _>("description")?,
        "subject": row.try_get::<String, _>("subject")?,
        "html_body": row.try_get::<String, _>("html_body")?,
        "text_body": row.try_get::<String, _>("text_body")?,
        "required_context": row.try_get::<Value, _>("required_context")?,
        "example_context": row.try_get::<Value, _>("example_context")?,
        "default_sender_id": row.try_get::<String, _>("default_sender_id")?,
        "is_transactional": row.try_get::<bool, _>("is_transactional")?,
        "is_active": row.try_get::<bool, _>("is_active")?,
        "autoescape": row.try_get::<bool, _>("autoescape")?,
        "created_at": iso(row.try_get::<DateTime<Utc>, _>("created_at")?),
        "updated_at": iso(row.try_get::<DateTime<Utc>, _>("updated_at")?),
    }))
}

pub async fn get_template(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(raw_key): Path<String>,
) -> ApiResult<Json<Value>> {
    let key = template_key(&raw_key)?;
    let sql = format!(
        "SELECT {TEMPLATE_COLUMNS} FROM email_templates \
         WHERE client_id = $1 AND key = $2 AND is_transactional"
    );
    let row = sqlx::query(&sql)
        .bind(auth.client_id)
        .bind(key)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("template_key"))?;
    Ok(Json(template_json(&row, &auth.client_slug)?))
}

pub async fn put_template(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(raw_key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let key = template_key(&raw_key)?;
    let upsert = TemplateUpsert::parse(&body)?;
    if !upsert.default_sender_id.is_empty()
        && !auth
            .sender_emails
            .iter()
            .any(|s| s.id == upsert.default_sender_id)
    {
        return Err(ApiError::field("default_sender_id", "not_configured"));
    }
    let sql = format!(
        "INSERT INTO email_templates (client_id, key, name, description, subject, html_body, \
             text_body, required_context, example_context, default_sender_id, is_transactional, \
             is_active, autoescape) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, true, $11, $12) \
         ON CONFLICT (client_id, key) DO UPDATE SET name = EXCLUDED.name, \
             description = EXCLUDED.description, subject = EXCLUDED.subject, \
             html_body = EXCLUDED.html_body, text_body = EXCLUDED.text_body, \
             required_context = EXCLUDED.required_context, \
             example_context = EXCLUDED.example_context, \
             default_sender_id = EXCLUDED.default_sender_id, is_transactional = true, \
             is_active = EXCLUDED.is_active, autoescape = EXCLUDED.autoescape, \
             updated_at = now() \
         RETURNING {TEMPLATE_COLUMNS}, (xmax = 0) AS created"
    );
    let row = sqlx::query(&sql)
        .bind(auth.client_id)
        .bind(key)
        .bind(&upsert.name)
        .bind(&upsert.description)
        .bind(&upsert.subject)
        .bind(&upsert.html_body)
        .bind(&upsert.text_body)
        .bind(&upsert.required_context)
        .bind(&upsert.example_context)
        .bind(&upsert.default_sender_id)
        .bind(upsert.is_active)
        .bind(upsert.autoescape)
        .fetch_one(&state.db)
        .await?;
    let created: bool = row.try_get("created")?;
    Ok(Json(json!({
        "template": template_json(&row, &auth.client_slug)?,
        "created": created,
    })))
}
