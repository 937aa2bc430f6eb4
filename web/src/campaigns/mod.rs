//! The campaigns API (facts §4.8, plus list, estimate, pause and resume): a client builds a
//! draft, queues it (202 at once: the campaign-email tree snapshots and fans it out), watches
//! its counters, pauses, resumes or cancels it. Every call is scoped to the caller's client and
//! the request's audience.

pub mod model;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use datamailer_core::campaign::{PreparedBody, PREVIEW_TRACKING_TOKEN, PREVIEW_UNSUBSCRIBE_TOKEN};
use datamailer_core::contracts::{CampaignFanoutV1, CampaignTestSendV1};
use datamailer_core::queue::QueueName;
use datamailer_core::reasons::Reason;
use datamailer_runtime::producer::PG_ENQUEUE_SQL;
use serde_json::{json, Map, Value};

use crate::auth::AuthClient;
use crate::contacts::as_map;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonObject;
use crate::scope::{self, QueryMap, Scope};
use crate::AppState;
use model::{CampaignRow, COLUMNS};

async fn campaign_scope(
    state: &AppState,
    auth: &AuthClient,
    data: &Map<String, Value>,
) -> Result<Scope, ApiError> {
    scope::resolve(state, auth, data, false).await
}

/// The caller's campaign by key, optionally locked for the transaction.
async fn find(
    conn: &mut sqlx::PgConnection,
    scope: &Scope,
    key: &str,
    lock: bool,
) -> Result<CampaignRow, ApiError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM campaigns WHERE client_id = $1 AND audience_id = $2 AND external_key = $3{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query_as(&sql)
        .bind(scope.client_id)
        .bind(scope.audience_id)
        .bind(key)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApiError::not_found("external_key"))
}

fn payload(row: &CampaignRow, scope: &Scope) -> Value {
    row.payload(&scope.audience_slug, &scope.client_slug)
}

/// `PUT /api/campaigns/{key}`: create (201) or update (200) a draft.
pub async fn put_campaign(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let key = model::external_key(&key)?;
    let data = as_map(&body);
    let scope = campaign_scope(&state, &auth, data).await?;
    let input = model::parse_input(data)?;
    let mut tx = state.db.begin().await?;
    if !input.from.is_empty() {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM clients, jsonb_array_elements(sender_emails) s
                             WHERE clients.id = $1 AND s ->> 'id' = $2)",
        )
        .bind(scope.client_id)
        .bind(&input.from)
        .fetch_one(&mut *tx)
        .await?;
        if !known {
            return Err(ApiError::field("from", Reason::NotFound));
        }
    }
    let existing: Option<(i64, i64, String)> = sqlx::query_as(
        "SELECT id, audience_id, status FROM campaigns
          WHERE client_id = $1 AND external_key = $2 FOR UPDATE",
    )
    .bind(scope.client_id)
    .bind(&key)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((_, audience_id, status)) = &existing {
        if *audience_id != scope.audience_id {
            return Err(ApiError::field_status(
                StatusCode::CONFLICT,
                "external_key",
                Reason::AudienceMismatch,
            ));
        }
        if status != "draft" {
            return Err(ApiError::field_status(
                StatusCode::CONFLICT,
                "status",
                Reason::NotEditable,
            ));
        }
    }
    let sql = if existing.is_some() {
        format!(
            "UPDATE campaigns SET subject = $3, preview_text = $4, html_body = $5, text_body = $6,
                    scheduled_at = $7, category_tag = $8, recipient_list_key = $9,
                    include_tags = $10, exclude_tags = $11, metadata = $12, from_sender_id = $13,
                    updated_at = now()
              WHERE client_id = $1 AND external_key = $14 AND audience_id = $2
          RETURNING {COLUMNS}"
        )
    } else {
        format!(
            "INSERT INTO campaigns (client_id, audience_id, subject, preview_text, html_body,
                    text_body, scheduled_at, category_tag, recipient_list_key, include_tags,
                    exclude_tags, metadata, from_sender_id, external_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
          RETURNING {COLUMNS}"
        )
    };
    let row: CampaignRow = sqlx::query_as(&sql)
        .bind(scope.client_id)
        .bind(scope.audience_id)
        .bind(&input.subject)
        .bind(&input.preview_text)
        .bind(&input.html_body)
        .bind(&input.text_body)
        .bind(input.scheduled_at)
        .bind(&input.category_tag)
        .bind(&input.recipient_list_key)
        .bind(json!(input.include_tags))
        .bind(json!(input.exclude_tags))
        .bind(Value::Object(input.metadata.clone()))
        .bind(&input.from)
        .bind(&key)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let created = existing.is_none();
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(json!({"campaign": payload(&row, &scope), "created": created})),
    ))
}

/// `GET /api/campaigns/{key}`.
pub async fn get_campaign(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    QueryMap(query): QueryMap,
) -> ApiResult<Json<Value>> {
    let key = model::external_key(&key)?;
    let scope = campaign_scope(&state, &auth, &query).await?;
    let mut conn = state.db.acquire().await?;
    let row = find(&mut conn, &scope, &key, false).await?;
    Ok(Json(json!({"campaign": payload(&row, &scope)})))
}

const STATUSES: [&str; 7] = [
    "draft",
    "queued",
    "snapshotting",
    "sending",
    "sent",
    "cancelled",
    "failed",
];

/// `GET /api/campaigns?audience=&status=&limit=&after=`: newest first, keyset pages (`after`
/// is the `next_after` of the previous page).
pub async fn list_campaigns(
    State(state): State<AppState>,
    auth: AuthClient,
    QueryMap(query): QueryMap,
) -> ApiResult<Json<Value>> {
    let scope = campaign_scope(&state, &auth, &query).await?;
    let status = query.get("status").and_then(Value::as_str).unwrap_or("");
    if !status.is_empty() && !STATUSES.contains(&status) {
        return Err(ApiError::field("status", Reason::Invalid));
    }
    let limit = crate::contacts::by_id::limit_param(query.get("limit"), 50, 500)?;
    let after = match query.get("after").and_then(Value::as_str) {
        None | Some("") => i64::MAX,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::field("after", Reason::Invalid))?,
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM campaigns
          WHERE client_id = $1 AND audience_id = $2 AND ($3 = '' OR status = $3) AND id < $4
          ORDER BY id DESC LIMIT $5"
    );
    let rows: Vec<CampaignRow> = sqlx::query_as(&sql)
        .bind(scope.client_id)
        .bind(scope.audience_id)
        .bind(status)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&state.db)
        .await?;
    let more = rows.len() as i64 > limit;
    let page: Vec<Value> = rows
        .iter()
        .take(limit as usize)
        .map(|r| payload(r, &scope))
        .collect();
    let next = if more {
        json!(rows[limit as usize - 1].id.to_string())
    } else {
        Value::Null
    };
    Ok(Json(json!({"campaigns": page, "next_after": next})))
}

/// Puts a fan-out of the campaign on its queue: in the transaction on the embedded queue,
/// after the commit on SQS (maintenance fans out a queued campaign whose message was lost).
async fn enqueue_fanout(
    state: &AppState,
    tx: &mut sqlx::PgConnection,
    campaign_id: i64,
) -> Result<Option<String>, ApiError> {
    let body = CampaignFanoutV1 { campaign_id }.to_json();
    if state.producer.writes_in_transaction() {
        sqlx::query(PG_ENQUEUE_SQL)
            .bind(QueueName::CampaignEmail.as_str())
            .bind(&body)
            .execute(tx)
            .await?;
        return Ok(None);
    }
    Ok(Some(body))
}

async fn send_after_commit(state: &AppState, body: Option<String>) {
    if let Some(body) = body {
        if let Err(e) = state
            .producer
            .send_after_commit(QueueName::CampaignEmail.as_str(), vec![body])
            .await
        {
            // Not lost: maintenance fans out a queued campaign that did not start.
            tracing::warn!(
                error = format!("{e:#}"),
                "could not enqueue a campaign fan-out"
            );
        }
    }
}

/// `POST /api/campaigns/{key}/queue`: 202 at once. A draft becomes `queued` (fanned out now,
/// or at `scheduled_at`); anything else is a no-op replay with the stored counts.
pub async fn queue_campaign(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let key = model::external_key(&key)?;
    let scope = campaign_scope(&state, &auth, as_map(&body)).await?;
    let mut tx = state.db.begin().await?;
    let row = find(&mut tx, &scope, &key, true).await?;
    let mut after_commit = None;
    let (row, queued) = if row.status == "draft" {
        let row: CampaignRow = sqlx::query_as(&format!(
            "UPDATE campaigns SET status = 'queued', queued_at = now(), updated_at = now()
              WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(row.id)
        .fetch_one(&mut *tx)
        .await?;
        if row.scheduled_at.is_none_or(|at| at <= chrono::Utc::now()) {
            after_commit = enqueue_fanout(&state, &mut tx, row.id).await?;
        }
        (row, true)
    } else {
        (row, false)
    };
    tx.commit().await?;
    send_after_commit(&state, after_commit).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "campaign": payload(&row, &scope),
            "queued": queued,
            "batch_count": if queued { 0 } else { row.batch_count },
            "recipient_count": row.recipient_count,
            "skipped_count": row.skipped_count,
        })),
    ))
}

/// `POST /api/campaigns/{key}/cancel`: a draft, or a campaign that has not finished; its
/// pending recipients are skipped (`campaign_cancelled`) and nothing new is sent.
pub async fn cancel_campaign(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let key = model::external_key(&key)?;
    let scope = campaign_scope(&state, &auth, as_map(&body)).await?;
    let mut tx = state.db.begin().await?;
    let row = find(&mut tx, &scope, &key, true).await?;
    match row.status.as_str() {
        "cancelled" => {
            tx.commit().await?;
            return Ok(Json(
                json!({"campaign": payload(&row, &scope), "cancelled": false}),
            ));
        }
        "sent" | "failed" => {
            return Err(ApiError::field_status(
                StatusCode::CONFLICT,
                "status",
                Reason::NotCancellable,
            ))
        }
        _ => {}
    }
    let skipped: i64 = sqlx::query_scalar(
        "WITH s AS (
            UPDATE campaign_recipients SET status = 'skipped', skip_reason = 'campaign_cancelled',
                   last_error = 'campaign_cancelled',
                   updated_at = now()
             WHERE campaign_id = $1 AND status = 'pending' RETURNING 1)
         SELECT count(*) FROM s",
    )
    .bind(row.id)
    .fetch_one(&mut *tx)
    .await?;
    let row: CampaignRow = sqlx::query_as(&format!(
        "UPDATE campaigns SET status = 'cancelled', cancelled_at = now(),
                skipped_count = skipped_count + $2,
                recipient_count = greatest(recipient_count - $2, 0), updated_at = now()
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(row.id)
    .bind(skipped as i32)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut answer = json!({"campaign": payload(&row, &scope), "cancelled": true});
    if skipped > 0 || row.queued_at.is_some() {
        answer["skipped_count"] = json!(skipped);
    }
    Ok(Json(answer))
}

/// `POST /api/campaigns/{key}/pause {reason?}`: a running campaign sends nothing new until
/// resumed (in-flight sends finish).
pub async fn pause_campaign(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let key = model::external_key(&key)?;
    let data = as_map(&body);
    let scope = campaign_scope(&state, &auth, data).await?;
    let reason = match data.get("reason") {
        None | Some(Value::Null) => "paused by the client".to_string(),
        Some(Value::String(s)) if s.chars().count() <= 255 => s.trim().to_string(),
        Some(Value::String(_)) => return Err(ApiError::field("reason", Reason::TooLong)),
        Some(_) => return Err(ApiError::field("reason", Reason::MustBeString)),
    };
    let mut tx = state.db.begin().await?;
    let row = find(&mut tx, &scope, &key, true).await?;
    if !matches!(row.status.as_str(), "queued" | "snapshotting" | "sending") {
        return Err(ApiError::field_status(
            StatusCode::CONFLICT,
            "status",
            Reason::NotPausable,
        ));
    }
    if row.paused_at.is_some() {
        tx.commit().await?;
        return Ok(Json(
            json!({"campaign": payload(&row, &scope), "paused": false}),
        ));
    }
    let row: CampaignRow = sqlx::query_as(&format!(
        "UPDATE campaigns SET paused_at = now(), pause_reason = $2, updated_at = now()
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(row.id)
    .bind(&reason)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("datamailer_campaign_pauses_total", "by" => "client").increment(1);
    Ok(Json(
        json!({"campaign": payload(&row, &scope), "paused": true}),
    ))
}

/// `POST /api/campaigns/{key}/resume`: a paused campaign carries on where it stopped.
pub async fn resume_campaign(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let key = model::external_key(&key)?;
    let scope = campaign_scope(&state, &auth, as_map(&body)).await?;
    let mut tx = state.db.begin().await?;
    let row = find(&mut tx, &scope, &key, true).await?;
    if row.paused_at.is_none() {
        return Err(ApiError::field_status(
            StatusCode::CONFLICT,
            "status",
            Reason::NotResumable,
        ));
    }
    let row: CampaignRow = sqlx::query_as(&format!(
        "UPDATE campaigns SET paused_at = NULL, pause_reason = '', updated_at = now()
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(row.id)
    .fetch_one(&mut *tx)
    .await?;
    // Batches that met the pause were acknowledged unsent: batch every pending row again.
    sqlx::query(
        "UPDATE campaign_recipients SET batched_at = NULL WHERE campaign_id = $1 AND status = 'pending'",
    )
    .bind(row.id)
    .execute(&mut *tx)
    .await?;
    let due = row.scheduled_at.is_none_or(|at| at <= chrono::Utc::now());
    let after_commit = if due {
        enqueue_fanout(&state, &mut tx, row.id).await?
    } else {
        None
    };
    tx.commit().await?;
    send_after_commit(&state, after_commit).await;
    Ok(Json(
        json!({"campaign": payload(&row, &scope), "resumed": true}),
    ))
}

/// `POST /api/campaigns/{key}/estimate`: who the snapshot would reach now, and why the others
/// would be skipped (the rules of the snapshot itself); writes nothing.
pub async fn estimate_campaign(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let key = model::external_key(&key)?;
    let scope = campaign_scope(&state, &auth, as_map(&body)).await?;
    let mut conn = state.db.acquire().await?;
    let row = find(&mut conn, &scope, &key, false).await?;
    // One evaluation of the candidates for both the counts and the preview.
    type Counts = sqlx::types::Json<Vec<(String, i64)>>;
    type Preview = sqlx::types::Json<Vec<(String, String)>>;
    let (reasons, preview): (Counts, Preview) =
        sqlx::query_as(
            "WITH k AS MATERIALIZED (SELECT * FROM campaign_candidates($1))
             SELECT coalesce((SELECT jsonb_agg(jsonb_build_array(skip_reason, n) ORDER BY skip_reason)
                                FROM (SELECT skip_reason, count(*) AS n FROM k GROUP BY 1) g), '[]'),
                    coalesce((SELECT jsonb_agg(jsonb_build_array(email, skip_reason)
                                               ORDER BY normalized_email, contact_id)
                                FROM (SELECT * FROM k ORDER BY normalized_email, contact_id LIMIT 25) p), '[]')",
        )
        .bind(row.id)
        .fetch_one(&mut *conn)
        .await?;
    let (reasons, preview) = (reasons.0, preview.0);
    let total: i64 = reasons.iter().map(|(_, n)| n).sum();
    let sendable: i64 = reasons
        .iter()
        .filter(|(r, _)| r.is_empty())
        .map(|(_, n)| n)
        .sum();
    let skip_reasons: Map<String, Value> = reasons
        .iter()
        .filter(|(r, _)| !r.is_empty())
        .map(|(r, n)| (r.clone(), json!(n)))
        .collect();
    let preview: Vec<Value> = preview
        .into_iter()
        .map(|(email, reason)| {
            json!({
                "email": email,
                "status": if reason.is_empty() { "pending" } else { "skipped" },
                "skip_reason": reason,
            })
        })
        .collect();
    Ok(Json(json!({
        "campaign": payload(&row, &scope),
        "estimate": {
            "candidate_count": total,
            "recipient_count": sendable,
            "skipped_count": total - sendable,
            "skip_reasons": skip_reasons,
            "preview": preview,
        }
    })))
}

/// `POST /api/campaigns/{key}/preview`: the mail as recipients get it, with placeholder
/// tokens.
pub async fn preview_campaign(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let key = model::external_key(&key)?;
    let scope = campaign_scope(&state, &auth, as_map(&body)).await?;
    let mut conn = state.db.acquire().await?;
    let row = find(&mut conn, &scope, &key, false).await?;
    let keys = state.tracking_keys().await?;
    let (html, text) = PreparedBody::new(&row.html_body, &row.text_body).render(
        &state.config.public_base_url,
        keys,
        PREVIEW_TRACKING_TOKEN,
        PREVIEW_UNSUBSCRIBE_TOKEN,
    );
    Ok(Json(json!({
        "campaign": payload(&row, &scope),
        "preview": {
            "subject": row.subject,
            "preview_text": row.preview_text,
            "html_body": html,
            "text_body": text,
        }
    })))
}

/// How long `test-send` waits for the campaign tree to send.
const TEST_SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The `emails` of a test send: 1 to 25 addresses, normalized, deduplicated, sorted (facts
/// §4.8), or the original's errors.
fn test_emails(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list = match value {
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => return Err(ApiError::field("emails", Reason::Required)),
    };
    if list.len() > 25 {
        return Err(ApiError::field("emails", Reason::TooMany));
    }
    let mut emails = Vec::new();
    let mut errors = Vec::new();
    for (index, item) in list.iter().enumerate() {
        match item.as_str().map(datamailer_core::fields::py_strip) {
            None | Some("") => errors.push(json!({"index": index, "error": "required"})),
            Some(email) if !datamailer_core::email::is_valid(email) => {
                errors.push(json!({"index": index, "email": email, "error": "invalid"}))
            }
            Some(email) => emails.push(datamailer_core::email::normalize(email)),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Custom(
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "validation_error", "fields": {"emails": errors}}}),
        ));
    }
    emails.sort();
    emails.dedup();
    Ok(emails)
}

/// `POST /api/campaigns/{key}/test-send {emails}` → 202 `{campaign, sent_count, recipients:
/// [{email, message_id}]}`. The campaign-email tree sends (the web holds no SES permission);
/// the request waits for it (up to 15 s; a send still queued then answers `message_id: null`).
pub async fn test_send_campaign(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let key = model::external_key(&key)?;
    let data = as_map(&body);
    let scope = campaign_scope(&state, &auth, data).await?;
    let mut tx = state.db.begin().await?;
    let row = find(&mut tx, &scope, &key, false).await?;
    let emails = test_emails(data.get("emails"))?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO campaign_test_sends (campaign_id, email)
         SELECT $1, e FROM unnest($2::text[]) AS e RETURNING id",
    )
    .bind(row.id)
    .bind(&emails)
    .fetch_all(&mut *tx)
    .await?;
    let message = CampaignTestSendV1 {
        campaign_id: row.id,
        test_send_ids: ids.clone(),
    }
    .to_json();
    let after_commit = if state.producer.writes_in_transaction() {
        sqlx::query(PG_ENQUEUE_SQL)
            .bind(QueueName::CampaignEmail.as_str())
            .bind(&message)
            .execute(&mut *tx)
            .await?;
        None
    } else {
        Some(message)
    };
    tx.commit().await?;
    send_after_commit(&state, after_commit).await;

    let started = tokio::time::Instant::now();
    let results = loop {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT email, status, ses_message_id FROM campaign_test_sends
              WHERE id = ANY ($1) ORDER BY email",
        )
        .bind(&ids)
        .fetch_all(&state.db)
        .await?;
        if rows.iter().all(|(_, status, _)| status != "queued")
            || started.elapsed() > TEST_SEND_WAIT
        {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let sent = results.iter().filter(|(_, s, _)| s == "sent").count();
    let recipients: Vec<Value> = results
        .iter()
        .map(|(email, status, id)| {
            let mut r = json!({"email": email, "message_id": (status == "sent").then_some(id)});
            if status != "sent" {
                r["status"] = json!(status);
            }
            r
        })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"campaign": payload(&row, &scope), "sent_count": sent, "recipients": recipients}),
        ),
    ))
}
