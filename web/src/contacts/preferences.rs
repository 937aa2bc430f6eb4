//! `GET|PUT /api/contacts/preferences`: category opt-ins per (contact, audience, client).

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use datamailer_core::slug::is_slug;
use serde_json::{json, Value};

use super::{as_map, invalid};
use crate::auth::AuthClient;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonObject;
use crate::scope::{self, QueryMap, Scope};
use crate::AppState;

/// Python's `str.title()` on the tag with dashes as spaces (the default label).
pub fn default_label(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len());
    let mut prev_cased = false;
    for c in tag.replace('-', " ").chars() {
        if c.is_alphabetic() {
            if prev_cased {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            prev_cased = true;
        } else {
            out.push(c);
            prev_cased = false;
        }
    }
    out
}

fn category_tag(value: Option<&Value>, field: &str) -> Result<String, ApiError> {
    match value.and_then(Value::as_str).map(str::trim) {
        Some(t) if !t.is_empty() => {
            if is_slug(t) {
                Ok(t.to_string())
            } else {
                Err(invalid(field, "invalid"))
            }
        }
        _ => Err(invalid(field, "required")),
    }
}

fn category_tags(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let raw: Vec<Value> = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => return Ok(Vec::new()),
        Some(Value::String(s)) => s.split(',').map(|t| Value::String(t.into())).collect(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(invalid("category_tags", "invalid")),
    };
    raw.iter()
        .filter(|t| match t {
            Value::String(s) => !s.trim().is_empty(),
            _ => true,
        })
        .map(|t| category_tag(Some(t), "category_tags"))
        .collect()
}

async fn answer(
    db: &sqlx::PgPool,
    scope: &Scope,
    requested: Vec<String>,
) -> Result<Value, ApiError> {
    let normalized = scope.normalized_email();
    let contact = sqlx::query_as::<_, (i64, bool, bool, bool)>(
        "SELECT id, global_unsubscribed_at IS NOT NULL, hard_bounced_at IS NOT NULL,
                complained_at IS NOT NULL FROM contacts WHERE normalized_email = $1",
    )
    .bind(&normalized)
    .fetch_optional(db)
    .await?;
    let mut stored: HashMap<String, (String, bool)> = HashMap::new();
    if let Some((id, ..)) = contact {
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT tag, label, enabled FROM category_preferences
             WHERE contact_id = $1 AND audience_id = $2 AND client_id = $3",
        )
        .bind(id)
        .bind(scope.audience_id)
        .bind(scope.client_id)
        .fetch_all(db)
        .await?;
        stored = rows.into_iter().map(|(t, l, e)| (t, (l, e))).collect();
    }
    let tags = if requested.is_empty() {
        let mut all: Vec<String> = stored.keys().cloned().collect();
        all.sort();
        all
    } else {
        requested
    };
    let categories: Vec<Value> = tags
        .iter()
        .map(|tag| match stored.get(tag) {
            None => json!({"tag": tag, "label": default_label(tag), "enabled": true}),
            Some((label, enabled)) => json!({
                "tag": tag,
                "label": if label.is_empty() { default_label(tag) } else { label.clone() },
                "enabled": enabled,
            }),
        })
        .collect();
    let (gu, hb, co) = contact.map_or((false, false, false), |(_, g, h, c)| (g, h, c));
    let mut reasons = Vec::new();
    if gu {
        reasons.push("global_unsubscribed");
    }
    if hb {
        reasons.push("hard_bounce");
    }
    if co {
        reasons.push("complaint");
    }
    Ok(json!({
        "email": normalized,
        "audience": scope.audience_slug,
        "client": scope.client_slug,
        "categories": categories,
        "global_unsubscribed": gu,
        "suppressed": !reasons.is_empty(),
        "suppression_reasons": reasons,
    }))
}

/// `GET /api/contacts/preferences`.
pub async fn get_preferences(
    State(state): State<AppState>,
    auth: AuthClient,
    QueryMap(query): QueryMap,
) -> ApiResult<Json<Value>> {
    let scope = scope::resolve(&state, &auth, &query, true).await?;
    let requested = category_tags(query.get("category_tags"))?;
    Ok(Json(answer(&state.db, &scope, requested).await?))
}

/// `PUT /api/contacts/preferences`: upserts the contact and the given categories; enabling
/// any category of a suppressed contact is 409.
pub async fn put_preferences(
    State(state): State<AppState>,
    auth: AuthClient,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let data = as_map(&body);
    let scope = scope::resolve(&state, &auth, data, true).await?;
    let Some(Value::Array(items)) = data.get("categories") else {
        return Err(invalid("categories", "must_be_list"));
    };
    let mut categories = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(invalid(&format!("categories.{i}"), "must_be_object"));
        };
        let tag = category_tag(item.get("tag"), &format!("categories.{i}.tag"))?;
        let Some(Value::Bool(enabled)) = item.get("enabled") else {
            return Err(invalid(
                &format!("categories.{i}.enabled"),
                "must_be_boolean",
            ));
        };
        let label = match item.get("label") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.trim().to_string(),
            Some(_) => return Err(invalid(&format!("categories.{i}.label"), "must_be_string")),
        };
        categories.push((tag, *enabled, label));
    }
    let reason = data.get("reason").and_then(Value::as_str).unwrap_or("");
    let mut tx = state.db.begin().await?;
    let (contact_id, suppressed): (i64, bool) = sqlx::query_as(
        "INSERT INTO contacts (email, normalized_email) VALUES ($1, $2)
         ON CONFLICT (normalized_email) DO UPDATE SET email = EXCLUDED.email, updated_at = now()
         RETURNING id, (global_unsubscribed_at IS NOT NULL OR hard_bounced_at IS NOT NULL
                        OR complained_at IS NOT NULL)",
    )
    .bind(&scope.email)
    .bind(scope.normalized_email())
    .fetch_one(&mut *tx)
    .await?;
    if suppressed && categories.iter().any(|(_, enabled, _)| *enabled) {
        return Err(ApiError::field_status(
            StatusCode::CONFLICT,
            "categories",
            "suppressed_contact_cannot_be_enabled",
        ));
    }
    let tags: Vec<&str> = categories.iter().map(|c| c.0.as_str()).collect();
    let enabled: Vec<bool> = categories.iter().map(|c| c.1).collect();
    let labels: Vec<&str> = categories.iter().map(|c| c.2.as_str()).collect();
    sqlx::query(
        "INSERT INTO category_preferences (contact_id, audience_id, client_id, tag, label, enabled,
                                           updated_reason)
         SELECT $1, $2, $3, t, left(l, 120), e, left($7, 255)
         FROM unnest($4::text[], $5::text[], $6::bool[]) AS u(t, l, e)
         ON CONFLICT (contact_id, audience_id, client_id, tag) DO UPDATE
         SET label = EXCLUDED.label, enabled = EXCLUDED.enabled,
             updated_reason = EXCLUDED.updated_reason, updated_at = now()",
    )
    .bind(contact_id)
    .bind(scope.audience_id)
    .bind(scope.client_id)
    .bind(&tags)
    .bind(&labels)
    .bind(&enabled)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let requested = categories.into_iter().map(|c| c.0).collect();
    Ok(Json(answer(&state.db, &scope, requested).await?))
}

#[cfg(test)]
mod tests {
    use super::default_label;

    #[test]
    fn labels_are_title_cased_like_python() {
        assert_eq!(default_label("product-updates"), "Product Updates");
        assert_eq!(default_label("ml-zoomcamp2026x"), "Ml Zoomcamp2026X");
    }
}
