//! `/api/contacts/{id}/...`: tags, verification, validation, suppression and history. Every
//! one answers 404 `contact_id: not_found` unless the contact has a client subscription in
//! the caller's scope, so an id tells another client nothing.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use chrono::{DateTime, SubsecRound, Utc};
use datamailer_core::slug::slugify;
use datamailer_core::time::iso_opt;
use serde_json::{json, Map, Value};
use sqlx::PgConnection;

use super::model::{self, ContactState};
use super::upsert::{self, parse_suppression, parse_timestamp, parse_validation_status};
use super::{as_map, invalid};
use crate::auth::AuthClient;
use crate::error::{ApiError, ApiResult};
use crate::json::{parse_body, JsonObject};
use crate::scope::{self, query_map, QueryMap, Scope};
use crate::AppState;

fn contact_id(raw: &str) -> Result<i64, ApiError> {
    // `<int:contact_id>` in the original's URLs: anything else is no route at all.
    raw.parse::<i64>().map_err(|_| ApiError::NotFound)
}

/// The scope and the locked contact, or 404.
async fn scoped_contact(
    tx: &mut PgConnection,
    state: &AppState,
    auth: &AuthClient,
    id: i64,
    data: &Map<String, Value>,
) -> Result<(Scope, ContactState), ApiError> {
    let scope = scope::resolve(state, auth, data, false).await?;
    let sql = model::state_sql(2, 3, true, "WHERE c.id = $1 FOR UPDATE OF c");
    let row = sqlx::query(&sql)
        .bind(id)
        .bind(scope.audience_id)
        .bind(scope.client_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::not_found("contact_id"))?;
    Ok((scope, ContactState::from_row(&row)?))
}

async fn reload(tx: &mut PgConnection, scope: &Scope, id: i64) -> Result<Value, ApiError> {
    let states = model::load(&mut *tx, &[id], scope.audience_id, scope.client_id).await?;
    let state = states.first();
    Ok(model::contact_payload(
        state,
        &scope.audience_slug,
        &scope.client_slug,
        state.map_or("", |s| s.email.as_str()),
    ))
}

/// `PUT /api/contacts/{id}/tags`: replace the contact's tags in the audience.
pub async fn replace_tags(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let id = contact_id(&id)?;
    let data = as_map(&body);
    let mut tx = state.db.begin().await?;
    let (scope, _) = scoped_contact(&mut tx, &state, &auth, id, data).await?;
    let names = upsert::parse_tags(data.get("tags"))?;
    let slugs: Vec<String> = names
        .iter()
        .map(|n| slugify(n))
        .filter(|s| !s.is_empty())
        .collect();
    sqlx::query(
        "DELETE FROM contact_tags ct USING tags t
         WHERE ct.tag_id = t.id AND ct.contact_id = $1 AND t.audience_id = $2
           AND NOT (t.slug = ANY($3))",
    )
    .bind(id)
    .bind(scope.audience_id)
    .bind(&slugs)
    .execute(&mut *tx)
    .await?;
    let ids = vec![id; slugs.len()];
    let kept: Vec<String> = names
        .into_iter()
        .filter(|n| !slugify(n).is_empty())
        .collect();
    upsert::add_tags(&mut tx, scope.audience_id, &ids, &slugs, &kept).await?;
    let payload = reload(&mut tx, &scope, id).await?;
    tx.commit().await?;
    Ok(Json(payload))
}

/// The scope of a tag add/remove: the JSON body, or the query string when there is none.
fn body_or_query(body: &Bytes, query: Option<&str>) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(query_map(query.unwrap_or("")));
    }
    let value = parse_body(body)?;
    Ok(value.as_object().cloned().unwrap_or_default())
}

fn tag_slug(raw: &str) -> Result<String, ApiError> {
    if raw.trim().is_empty() {
        return Err(invalid("tag", "required"));
    }
    let slug = slugify(raw.trim());
    if slug.is_empty() {
        return Err(invalid("tag", "invalid"));
    }
    Ok(slug)
}

/// `POST /api/contacts/{id}/tags/{tag_slug}` (idempotent).
pub async fn add_tag(
    State(state): State<AppState>,
    auth: AuthClient,
    Path((id, tag)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let id = contact_id(&id)?;
    let data = body_or_query(&body, query.as_deref())?;
    let mut tx = state.db.begin().await?;
    let (scope, _) = scoped_contact(&mut tx, &state, &auth, id, &data).await?;
    let slug = tag_slug(&tag)?;
    upsert::add_tags(
        &mut tx,
        scope.audience_id,
        &[id],
        std::slice::from_ref(&slug),
        std::slice::from_ref(&slug),
    )
    .await?;
    let payload = reload(&mut tx, &scope, id).await?;
    tx.commit().await?;
    Ok(Json(payload))
}

/// `DELETE /api/contacts/{id}/tags/{tag_slug}` (idempotent).
pub async fn remove_tag(
    State(state): State<AppState>,
    auth: AuthClient,
    Path((id, tag)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let id = contact_id(&id)?;
    let data = body_or_query(&body, query.as_deref())?;
    let mut tx = state.db.begin().await?;
    let (scope, _) = scoped_contact(&mut tx, &state, &auth, id, &data).await?;
    let slug = tag_slug(&tag)?;
    sqlx::query(
        "DELETE FROM contact_tags ct USING tags t
         WHERE ct.tag_id = t.id AND ct.contact_id = $1 AND t.audience_id = $2 AND t.slug = $3",
    )
    .bind(id)
    .bind(scope.audience_id)
    .bind(&slug)
    .execute(&mut *tx)
    .await?;
    let payload = reload(&mut tx, &scope, id).await?;
    tx.commit().await?;
    Ok(Json(payload))
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// `PATCH /api/contacts/{id}/verification`: `verified` true sets the contact's (global)
/// `verified_at` and the subscription's if unset; false clears both.
pub async fn verification(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let id = contact_id(&id)?;
    let data = as_map(&body);
    let mut tx = state.db.begin().await?;
    let (scope, contact) = scoped_contact(&mut tx, &state, &auth, id, data).await?;
    let verified = match data.get("verified") {
        None | Some(Value::Null) => return Err(invalid("verified", "required")),
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("verified", "must_be_boolean")),
    };
    let verified_at = if verified && data.contains_key("verified_at") {
        Some(parse_timestamp(&data["verified_at"], "verified_at")?.unwrap_or_else(now))
    } else if verified {
        Some(contact.verified_at.unwrap_or_else(now))
    } else {
        None
    };
    let sub_verified = contact.client_sub.as_ref().and_then(|s| s.verified_at);
    let sub_verified_at = if !verified || sub_verified.is_none() {
        verified_at
    } else {
        sub_verified
    };
    sqlx::query(
        "UPDATE contacts SET verified_at = $2, updated_at = now()
         WHERE id = $1 AND verified_at IS DISTINCT FROM $2",
    )
    .bind(id)
    .bind(verified_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE subscriptions SET verified_at = $4, updated_at = now()
         WHERE contact_id = $1 AND audience_id = $2 AND client_id = $3
           AND verified_at IS DISTINCT FROM $4",
    )
    .bind(id)
    .bind(scope.audience_id)
    .bind(scope.client_id)
    .bind(sub_verified_at)
    .execute(&mut *tx)
    .await?;
    let payload = reload(&mut tx, &scope, id).await?;
    tx.commit().await?;
    Ok(Json(payload))
}

/// `PATCH /api/contacts/{id}/validation`.
pub async fn validation(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let id = contact_id(&id)?;
    let data = as_map(&body);
    let mut tx = state.db.begin().await?;
    let (scope, contact) = scoped_contact(&mut tx, &state, &auth, id, data).await?;
    let status = parse_validation_status(data.get("status"), "status")?;
    let reason = match data.get("reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(_) => return Err(invalid("reason", "must_be_string")),
    };
    let validated_at = if let Some(v) = data.get("validated_at") {
        parse_timestamp(v, "validated_at")?
    } else if status == "unknown" {
        None
    } else if contact.validation_status == status && contact.validation_reason == reason {
        Some(contact.validated_at.unwrap_or_else(now))
    } else {
        Some(now())
    };
    sqlx::query(
        "UPDATE contacts SET email_validation_status = $2, email_validation_reason = left($3, 255),
                email_validated_at = $4, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(&status)
    .bind(&reason)
    .bind(validated_at)
    .execute(&mut *tx)
    .await?;
    let payload = reload(&mut tx, &scope, id).await?;
    tx.commit().await?;
    Ok(Json(payload))
}

/// `PATCH /api/contacts/{id}/suppression`: each change appends its event (unsubscribe,
/// bounce, complaint; subscribe when a global unsubscribe is cleared), none when nothing
/// changed.
pub async fn suppression(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let id = contact_id(&id)?;
    let data = as_map(&body);
    let mut tx = state.db.begin().await?;
    let (scope, contact) = scoped_contact(&mut tx, &state, &auth, id, data).await?;
    let wanted = parse_suppression(data, "suppression.")?;
    let reason = match data.get("reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(_) => return Err(invalid("reason", "must_be_string")),
    };
    let current = [
        contact.global_unsubscribed_at,
        contact.hard_bounced_at,
        contact.complained_at,
    ];
    let now = now();
    let mut next = current;
    let mut events: Vec<&str> = Vec::new();
    for (i, want) in wanted.iter().enumerate() {
        let set_to = match (want, current[i]) {
            (Some(true), None) => Some(now),
            (Some(false), Some(_)) => None,
            _ => continue,
        };
        next[i] = set_to;
        match (i, set_to.is_some()) {
            (0, true) => events.push("unsubscribe"),
            (1, true) => events.push("bounce"),
            (2, true) => events.push("complaint"),
            (0, false) => events.push("subscribe"),
            _ => {}
        }
    }
    if next != current {
        sqlx::query(
            "UPDATE contacts SET global_unsubscribed_at = $2, hard_bounced_at = $3,
                    complained_at = $4, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(next[0])
        .bind(next[1])
        .bind(next[2])
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO email_events (contact_id, client_id, audience_id, event_type, metadata)
             SELECT $1, $2, $3, t, jsonb_build_object('source', 'api', 'reason', $5::text)
             FROM unnest($4::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
        )
        .bind(id)
        .bind(scope.client_id)
        .bind(scope.audience_id)
        .bind(&events)
        .bind(&reason)
        .execute(&mut *tx)
        .await?;
    }
    let payload = reload(&mut tx, &scope, id).await?;
    tx.commit().await?;
    Ok(Json(payload))
}

fn int_param(value: Option<&Value>, default: Option<i64>) -> Result<Option<i64>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) if s.is_empty() => Ok(default),
        Some(v) => {
            let parsed = match v {
                Value::String(s) => s.trim().parse::<i64>().ok(),
                Value::Number(n) => n.as_i64(),
                _ => None,
            };
            parsed.map(Some).ok_or(ApiError::NotFound)
        }
    }
}

/// `limit` between 1 and `max` (`must_be_integer`, `must_be_between_1_and_<max>`).
pub fn limit_param(value: Option<&Value>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = int_param(value, Some(default)).map_err(|_| invalid("limit", "must_be_integer"))?;
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(invalid("limit", &format!("must_be_between_1_and_{max}")));
    }
    Ok(limit)
}

/// `cursor` ≥ 1 when given (`must_be_integer`, `must_be_positive`).
pub fn cursor_param(value: Option<&Value>) -> Result<Option<i64>, ApiError> {
    let cursor = int_param(value, None).map_err(|_| invalid("cursor", "must_be_integer"))?;
    if cursor.is_some_and(|c| c < 1) {
        return Err(invalid("cursor", "must_be_positive"));
    }
    Ok(cursor)
}

/// Event metadata keys a history shows; nothing else (no tokens, URLs or context) leaves.
const SAFE_METADATA: &[&str] = &[
    "reason",
    "error",
    "scope",
    "ses_message_id",
    "bounce_type",
    "complaint_feedback_type",
    "source",
];

fn safe_metadata(metadata: &Value) -> Value {
    let Some(map) = metadata.as_object() else {
        return json!({});
    };
    let kept: Map<String, Value> = map
        .iter()
        .filter(|(k, v)| {
            SAFE_METADATA.contains(&k.as_str())
                && !matches!(v, Value::Null)
                && v.as_str() != Some("")
                && v.as_array().is_none_or(|a| !a.is_empty())
                && v.as_object().is_none_or(|o| !o.is_empty())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(kept)
}

/// An event row of a history: id, time, type, client and audience slugs, the campaign,
/// recipient and message it belongs to, and its metadata.
type EventRow = (
    i64,
    DateTime<Utc>,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Value,
);

/// `GET /api/contacts/{id}/history`: the contact's campaign recipients, transactional
/// messages and events in this scope, newest first; events page by `cursor`.
pub async fn history(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(id): Path<String>,
    QueryMap(query): QueryMap,
) -> ApiResult<Json<Value>> {
    let id = contact_id(&id)?;
    let mut conn = state.db.acquire().await?;
    let (scope, contact) = {
        let scope = scope::resolve(&state, &auth, &query, false).await?;
        let states = model::load(&mut *conn, &[id], scope.audience_id, scope.client_id).await?;
        match states.into_iter().next().filter(|s| s.client_sub.is_some()) {
            Some(c) => (scope, c),
            None => return Err(ApiError::not_found("contact_id")),
        }
    };
    let limit = limit_param(query.get("limit"), 50, 100)?;
    let cursor = cursor_param(query.get("cursor"))?;

    let campaign_rows: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object(
             'type', 'campaign_recipient', 'id', r.id, 'created_at', r.created_at,
             'campaign', jsonb_build_object('id', r.campaign_id, 'subject', cp.subject,
                                            'audience', $4::text, 'client', $5::text),
             'email', r.email, 'status', r.status, 'skip_reason', r.skip_reason,
             'sent_at', r.sent_at, 'delivered_at', r.delivered_at,
             'first_opened_at', r.first_opened_at, 'first_clicked_at', r.first_clicked_at,
             'open_count', r.open_count, 'click_count', r.click_count, 'last_error', r.last_error)
         FROM campaign_recipients r JOIN campaigns cp ON cp.id = r.campaign_id
         WHERE r.contact_id = $1 AND cp.audience_id = $2 AND cp.client_id = $3
         ORDER BY r.created_at DESC, r.id DESC LIMIT $6",
    )
    .bind(id)
    .bind(scope.audience_id)
    .bind(scope.client_id)
    .bind(&scope.audience_slug)
    .bind(&scope.client_slug)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let transactional_rows: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object(
             'type', 'transactional_message', 'id', m.id, 'created_at', m.created_at,
             'client', $3::text, 'email', m.email, 'from_email', m.from_email_id,
             'from_email_address', m.from_email, 'template_key', m.template_key,
             'status', m.status, 'subject', m.subject, 'sent_at', m.sent_at,
             'delivered_at', m.delivered_at, 'first_opened_at', m.first_opened_at,
             'first_clicked_at', m.first_clicked_at, 'open_count', m.open_count,
             'click_count', m.click_count, 'last_error', m.last_error)
         FROM transactional_messages m
         WHERE m.contact_id = $1 AND m.client_id = $2
         ORDER BY m.created_at DESC, m.id DESC LIMIT $4",
    )
    .bind(id)
    .bind(scope.client_id)
    .bind(&scope.client_slug)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let event_rows: Vec<EventRow> = sqlx::query_as(
        "SELECT e.id, e.created_at, e.event_type, cl.slug, a.slug, e.campaign_id,
                    e.campaign_recipient_id, e.transactional_message_id, e.metadata
             FROM email_events e
             LEFT JOIN clients cl ON cl.id = e.client_id
             LEFT JOIN audiences a ON a.id = e.audience_id
             WHERE e.contact_id = $1
               AND (e.client_id = $2 OR e.client_id IS NULL)
               AND (e.audience_id = $3 OR e.audience_id IS NULL)
               AND ($4::bigint IS NULL OR e.id < $4)
             ORDER BY e.id DESC LIMIT $5",
    )
    .bind(id)
    .bind(scope.client_id)
    .bind(scope.audience_id)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await?;
    let mut events: Vec<Value> = event_rows
        .iter()
        .map(|(eid, at, kind, cl, au, cp, cr, tm, meta)| {
            json!({
                "type": "email_event",
                "id": eid,
                "created_at": iso_opt(Some(*at)),
                "event_type": kind,
                "client": cl,
                "audience": au,
                "campaign_id": cp,
                "campaign_recipient_id": cr,
                "transactional_message_id": tm,
                "metadata": safe_metadata(meta),
            })
        })
        .collect();
    let mut next_cursor = Value::Null;
    if events.len() as i64 > limit {
        events.truncate(limit as usize);
        next_cursor = json!(events
            .last()
            .and_then(|e| e["id"].as_i64())
            .map(|i| i.to_string()));
    }
    Ok(Json(json!({
        "contact_id": contact.id,
        "email": contact.normalized_email,
        "audience": scope.audience_slug,
        "client": scope.client_slug,
        "campaign_recipients": fix_times(campaign_rows),
        "transactional_messages": fix_times(transactional_rows),
        "events": events,
        "next_cursor": next_cursor,
    })))
}

/// `jsonb_build_object` prints timestamps in Postgres's form; answer them as the API does.
fn fix_times(rows: Vec<Value>) -> Vec<Value> {
    rows.into_iter()
        .map(|mut row| {
            if let Some(map) = row.as_object_mut() {
                for (key, value) in map.iter_mut() {
                    if key.ends_with("_at") {
                        if let Some(dt) = value.as_str().and_then(upsert::parse_datetime) {
                            *value = iso_opt(Some(dt));
                        }
                    }
                }
            }
            row
        })
        .collect()
}
