//! `GET /api/transactional/messages/{id}`: a message and its events (facts §4.6).

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use datamailer_core::time::{iso, iso_opt};
use serde_json::{json, Map, Value};
use sqlx::Row;

use crate::auth::AuthClient;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Event metadata keys a client may see; everything else (tokens, raw payloads) stays inside.
pub const SAFE_METADATA_KEYS: &[&str] = &[
    "reason",
    "error",
    "scope",
    "ses_message_id",
    "sent_at",
    "bounce_type",
    "bounce_sub_type",
    "complaint_feedback_type",
    "source",
    "template_key",
    "notification_type",
];

/// The whitelisted, non-empty entries of an event's metadata.
pub fn safe_metadata(metadata: &Value) -> Value {
    let mut out = Map::new();
    if let Some(map) = metadata.as_object() {
        for key in SAFE_METADATA_KEYS {
            match map.get(*key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(Value::Object(o)) if o.is_empty() => {}
                Some(v) => {
                    out.insert((*key).to_string(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}

const MESSAGE_SQL: &str = "\
SELECT id, created_at, updated_at, email, from_email_id, from_email, template_key, status,
       subject, sent_at, delivered_at, first_opened_at, first_clicked_at, open_count,
       click_count, last_error, contact_id, idempotency_key, ses_message_id
FROM transactional_messages WHERE id = $1 AND client_id = $2";

const EVENTS_SQL: &str = "\
SELECT e.id, e.created_at, e.event_type, c.slug AS client, a.slug AS audience, e.campaign_id,
       e.campaign_recipient_id, e.transactional_message_id, e.metadata
FROM email_events e
LEFT JOIN clients c ON c.id = e.client_id
LEFT JOIN audiences a ON a.id = e.audience_id
WHERE e.transactional_message_id = $1 AND (e.client_id = $2 OR e.client_id IS NULL)
ORDER BY e.id DESC";

pub async fn message_status(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(raw_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: i64 = raw_id
        .parse()
        .map_err(|_| ApiError::not_found("message_id"))?;
    let m = sqlx::query(MESSAGE_SQL)
        .bind(id)
        .bind(auth.client_id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("message_id"))?;
    let events = sqlx::query(EVENTS_SQL)
        .bind(id)
        .bind(auth.client_id)
        .fetch_all(&state.db)
        .await?;
    let events = events
        .iter()
        .map(|e| {
            Ok(json!({
                "type": "email_event",
                "id": e.try_get::<i64, _>("id")?,
                "created_at": iso(e.try_get::<DateTime<Utc>, _>("created_at")?),
                "event_type": e.try_get::<String, _>("event_type")?,
                "client": e.try_get::<Option<String>, _>("client")?,
                "audience": e.try_get::<Option<String>, _>("audience")?,
                "campaign_id": e.try_get::<Option<i64>, _>("campaign_id")?,
                "campaign_recipient_id": e.try_get::<Option<i64>, _>("campaign_recipient_id")?,
                "transactional_message_id": e.try_get::<Option<i64>, _>("transactional_message_id")?,
                "metadata": safe_metadata(&e.try_get::<Value, _>("metadata")?),
            }))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let ts = |col: &str| -> Result<Value, sqlx::Error> {
        Ok(iso_opt(m.try_get::<Option<DateTime<Utc>>, _>(col)?))
    };
    let message = json!({
        "type": "transactional_message",
        "id": m.try_get::<i64, _>("id")?,
        "created_at": ts("created_at")?,
        "client": auth.client_slug,
        "email": m.try_get::<String, _>("email")?,
        "from_email": m.try_get::<String, _>("from_email_id")?,
        "from_email_address": m.try_get::<String, _>("from_email")?,
        "template_key": m.try_get::<String, _>("template_key")?,
        "status": m.try_get::<String, _>("status")?,
        "subject": m.try_get::<String, _>("subject")?,
        "sent_at": ts("sent_at")?,
        "delivered_at": ts("delivered_at")?,
        "first_opened_at": ts("first_opened_at")?,
        "first_clicked_at": ts("first_clicked_at")?,
        "open_count": m.try_get::<i32, _>("open_count")?,
        "click_count": m.try_get::<i32, _>("click_count")?,
        "last_error": m.try_get::<String, _>("last_error")?,
        "contact_id": m.try_get::<i64, _>("contact_id")?,
        "idempotency_key": m.try_get::<String, _>("idempotency_key")?,
        "ses_message_id": m.try_get::<String, _>("ses_message_id")?,
        "updated_at": ts("updated_at")?,
    });
    Ok(Json(json!({"message": message, "events": events})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_metadata_keeps_whitelist_only() {
        let meta = json!({
            "reason": "hard_bounce",
            "ses_message_id": "abc",
            "token": "secret",
            "raw": {"x": 1},
            "error": "",
        });
        assert_eq!(
            safe_metadata(&meta),
            json!({"reason": "hard_bounce", "ses_message_id": "abc"})
        );
        assert_eq!(safe_metadata(&json!([1])), json!({}));
    }
}
