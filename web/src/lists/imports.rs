//! Recipient-list import jobs (facts §3.9, §4.5): `POST .../imports` records a job (202; a
//! replay of its idempotency key answers the same job, 200) and the maintenance task
//! [`ImportJobs`] works it: fetch the JSONL through the SSRF-guarded client (50 MiB, 30 s),
//! check every line (any bad line fails the job and writes no member), then apply all
//! members with their cascades in one transaction and record the counts and content hash.
//!
//! Recovery: a claim pushes the job's `next_attempt_at` out by [`VISIBILITY`] and bumps its
//! `receipt`; a worker that dies leaves the job `processing` until then, when any maintainer
//! claims it again (at most [`MAX_ATTEMPTS`] times). Results are written only under the
//! receipt of the claim, so a worker that lost its claim changes nothing.

use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use datamailer_core::time::iso_opt;
use datamailer_runtime::maintenance::{MaintenanceTask, TaskReport};
use datamailer_runtime::outbound::OutboundClient;
use datamailer_runtime::tree::HandlerContext;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

use super::model::{self, path_key, ListDefaults, ListRow};
use super::tree::{self, Owner};
use super::{created_status, list_scope};
use crate::auth::AuthClient;
use crate::contacts::as_map;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonObject;
use crate::scope::QueryMap;
use crate::AppState;

pub const MAX_BYTES: usize = 50 * 1024 * 1024;
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
pub const VISIBILITY: Duration = Duration::from_secs(600);
pub const MAX_ATTEMPTS: i32 = 3;

const JOB_COLUMNS: &str = "j.id, j.list_key, a.slug AS audience, c.slug AS client, j.source_url,
    j.idempotency_key, j.status, j.list_defaults, j.remove_absent, j.row_count, j.created_count,
    j.updated_count, j.removed_count, j.failed_count, j.failed_rows, j.content_sha256, j.error,
    j.started_at, j.completed_at, j.created_at, j.updated_at, j.recipient_list_id";

async fn job_payload(db: &PgPool, id: i64) -> Result<Value, ApiError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM recipient_list_import_jobs j
         JOIN audiences a ON a.id = j.audience_id JOIN clients c ON c.id = j.client_id WHERE j.id = $1"
    );
    let r = sqlx::query(&sql).bind(id).fetch_one(db).await?;
    let list_id: Option<i64> = r.try_get("recipient_list_id")?;
    let (audience, client): (String, String) = (r.try_get("audience")?, r.try_get("client")?);
    let list = match list_id {
        None => Value::Null,
        Some(list_id) => {
            let sql = format!(
                "SELECT {} FROM recipient_lists WHERE id = $1",
                model::LIST_COLUMNS
            );
            let row = sqlx::query(&sql).bind(list_id).fetch_one(db).await?;
            ListRow::from_row(&row)?.payload(&audience, &client)
        }
    };
    let ts = |k: &str| -> Result<Value, sqlx::Error> { Ok(iso_opt(r.try_get(k)?)) };
    Ok(json!({
        "id": r.try_get::<i64, _>("id")?,
        "list_key": r.try_get::<String, _>("list_key")?,
        "audience": audience,
        "client": client,
        "source_url": r.try_get::<String, _>("source_url")?,
        "idempotency_key": r.try_get::<String, _>("idempotency_key")?,
        "status": r.try_get::<String, _>("status")?,
        "list": r.try_get::<Value, _>("list_defaults")?,
        "remove_absent": r.try_get::<bool, _>("remove_absent")?,
        "row_count": r.try_get::<i32, _>("row_count")?,
        "created_count": r.try_get::<i32, _>("created_count")?,
        "updated_count": r.try_get::<i32, _>("updated_count")?,
        "removed_count": r.try_get::<i32, _>("removed_count")?,
        "failed_count": r.try_get::<i32, _>("failed_count")?,
        "failed_rows": r.try_get::<Value, _>("failed_rows")?,
        "content_sha256": r.try_get::<String, _>("content_sha256")?,
        "error": r.try_get::<String, _>("error")?,
        "started_at": ts("started_at")?,
        "completed_at": ts("completed_at")?,
        "created_at": ts("created_at")?,
        "updated_at": ts("updated_at")?,
        "recipient_list": list,
    }))
}

fn source_url(data: &Map<String, Value>) -> Result<String, ApiError> {
    let raw = match (data.get("source_url"), data.get("url")) {
        (Some(Value::String(s)), _) if !s.is_empty() => s,
        (_, Some(Value::String(s))) => s,
        _ => return Err(ApiError::field("source_url", "required")),
    };
    let url = raw.trim();
    if url.is_empty() {
        return Err(ApiError::field("source_url", "required"));
    }
    let ok = reqwest::Url::parse(url)
        .ok()
        .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if !ok {
        return Err(ApiError::field("source_url", "invalid"));
    }
    if url.chars().count() > 2048 {
        return Err(ApiError::field("source_url", "too_long"));
    }
    Ok(url.to_string())
}

/// `POST /api/recipient-lists/{key}/imports`.
pub async fn create(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let key = path_key(Some(&key), "list_key")?;
    let data = as_map(&body);
    let scope = list_scope(&state, &auth, data).await?;
    let defaults = model::list_defaults(data, &key)?;
    let url = source_url(data)?;
    let idempotency_key = match data.get("idempotency_key") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.trim().chars().count() > 255 => {
            return Err(ApiError::field("idempotency_key", "too_long"))
        }
        Some(Value::String(s)) => s.trim().to_string(),
        Some(_) => return Err(ApiError::field("idempotency_key", "must_be_string")),
    };
    let remove_absent = match data.get("remove_absent") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::field("remove_absent", "must_be_boolean")),
    };
    // One statement: a replay of the key finds the existing job, a race creates one.
    let row: (i64, bool) = sqlx::query_as(
        "WITH ins AS (
             INSERT INTO recipient_list_import_jobs (client_id, audience_id, list_key, source_url,
                                                     idempotency_key, list_defaults, remove_absent)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (client_id, idempotency_key) WHERE idempotency_key <> '' DO NOTHING
             RETURNING id)
         SELECT id, true FROM ins
         UNION ALL
         SELECT id, false FROM recipient_list_import_jobs
         WHERE client_id = $1 AND idempotency_key = $5 AND $5 <> '' AND NOT EXISTS (SELECT 1 FROM ins)",
    )
    .bind(scope.client_id)
    .bind(scope.audience_id)
    .bind(&key)
    .bind(&url)
    .bind(&idempotency_key)
    .bind(serde_json::to_value(&defaults).expect("defaults serialize"))
    .bind(remove_absent)
    .fetch_one(&state.db)
    .await?;
    let payload = job_payload(&state.db, row.0).await?;
    Ok((
        created_status(row.1),
        Json(json!({"import_job": payload, "created": row.1})),
    ))
}

/// `GET /api/recipient-lists/{key}/imports/{job_id}`.
pub async fn get(
    State(state): State<AppState>,
    auth: AuthClient,
    Path((key, job_id)): Path<(String, String)>,
    QueryMap(query): QueryMap,
) -> ApiResult<Json<Value>> {
    let key = path_key(Some(&key), "list_key")?;
    let job_id: i64 = job_id.parse().map_err(|_| ApiError::NotFound)?;
    let scope = list_scope(&state, &auth, &query).await?;
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM recipient_list_import_jobs
         WHERE id = $1 AND client_id = $2 AND audience_id = $3 AND list_key = $4",
    )
    .bind(job_id)
    .bind(scope.client_id)
    .bind(scope.audience_id)
    .bind(&key)
    .fetch_optional(&state.db)
    .await?;
    let id = found.ok_or_else(|| ApiError::not_found("import_job"))?;
    Ok(Json(
        json!({"import_job": job_payload(&state.db, id).await?}),
    ))
}

fn fields_json(e: &ApiError) -> Value {
    match e {
        ApiError::Validation(f) | ApiError::ValidationStatus(_, f) => {
            serde_json::to_value(f).unwrap_or(Value::Null)
        }
        _ => json!("invalid"),
    }
}

/// A JSONL body's members (source key and input), or every line that failed.
pub type ParsedLines = Result<Vec<(String, model::MemberInput)>, Vec<Value>>;

/// Parses the JSONL body (an error only when it is not UTF-8).
pub fn parse_lines(content: &[u8]) -> Result<ParsedLines, String> {
    let text =
        std::str::from_utf8(content).map_err(|_| "decode_failed: expected_utf8".to_string())?;
    let mut members = Vec::new();
    let mut failed = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let number = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Result<Value, _> = serde_json::from_str(line);
        let outcome = match parsed {
            Err(_) => Err(json!("invalid_json")),
            Ok(Value::Object(item)) => {
                let prefix = format!("line.{number}.");
                path_key(
                    item.get("source_object_key").and_then(Value::as_str),
                    &format!("{prefix}source_object_key"),
                )
                .and_then(|k| model::member_input(&item, &prefix).map(|m| (k, m)))
                .map_err(|e| fields_json(&e))
            }
            Ok(_) => Err(json!({format!("line.{number}"): "must_be_object"})),
        };
        match outcome {
            Ok(m) => members.push(m),
            Err(error) => failed.push(json!({"line": number, "error": error})),
        }
    }
    Ok(if failed.is_empty() {
        Ok(members)
    } else {
        Err(failed)
    })
}

/// The maintenance task that works due import jobs.
pub struct ImportJobs {
    pub db: PgPool,
    pub http: OutboundClient,
    pub batch: i64,
}

struct Claim {
    id: i64,
    receipt: i64,
    attempts: i32,
    owner: Owner,
    list_key: String,
    source_url: String,
    defaults: ListDefaults,
    remove_absent: bool,
}

impl ImportJobs {
    async fn claim(&self) -> anyhow::Result<Vec<Claim>> {
        let rows = sqlx::query(
            "WITH due AS (
                 SELECT id FROM recipient_list_import_jobs
                 WHERE status IN ('pending', 'processing') AND next_attempt_at <= now()
                 ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
             UPDATE recipient_list_import_jobs j SET status = 'processing',
                 started_at = COALESCE(j.started_at, now()), error = '',
                 attempt_count = j.attempt_count + 1, receipt = j.receipt + 1,
                 next_attempt_at = now() + make_interval(secs => $2), updated_at = now()
             FROM due WHERE j.id = due.id
             RETURNING j.id, j.receipt, j.attempt_count, j.client_id, j.audience_id, j.list_key,
                       j.source_url, j.list_defaults, j.remove_absent",
        )
        .bind(self.batch)
        .bind(VISIBILITY.as_secs_f64())
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Claim {
                    id: r.try_get("id")?,
                    receipt: r.try_get("receipt")?,
                    attempts: r.try_get("attempt_count")?,
                    owner: Owner {
                        client_id: r.try_get("client_id")?,
                        audience_id: r.try_get("audience_id")?,
                    },
                    list_key: r.try_get("list_key")?,
                    source_url: r.try_get("source_url")?,
                    defaults: serde_json::from_value(r.try_get("list_defaults")?)
                        .unwrap_or_else(|_| model::ancestor_defaults("")),
                    remove_absent: r.try_get("remove_absent")?,
                })
            })
            .collect()
    }

    async fn fail(
        &self,
        c: &Claim,
        error: &str,
        row_count: usize,
        failed_rows: Vec<Value>,
        sha: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE recipient_list_import_jobs SET status = 'failed', row_count = $3,
                 failed_rows = $4, failed_count = $5, content_sha256 = $6, error = left($7, 5000),
                 completed_at = now(), updated_at = now()
             WHERE id = $1 AND receipt = $2",
        )
        .bind(c.id)
        .bind(c.receipt)
        .bind(row_count as i32)
        .bind(Value::Array(failed_rows.clone()))
        .bind(failed_rows.len() as i32)
        .bind(sha)
        .bind(error)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Works one claimed job to `succeeded` or `failed`.
    async fn work(&self, c: &Claim) -> anyhow::Result<&'static str> {
        if c.attempts > MAX_ATTEMPTS {
            self.fail(
                c,
                &format!("gave_up: {MAX_ATTEMPTS} attempts did not finish"),
                0,
                vec![],
                "",
            )
            .await?;
            return Ok("failed");
        }
        let content = match self
            .http
            .get_limited(&c.source_url, MAX_BYTES, FETCH_TIMEOUT)
            .await
        {
            Ok(body) => body,
            Err(err) => {
                let text = format!("{err:#}");
                let text = if text.starts_with("fetch_failed") {
                    text
                } else {
                    format!("fetch_failed: {text}")
                };
                self.fail(c, &text, 0, vec![], "").await?;
                return Ok("failed");
            }
        };
        let sha = hex::encode(Sha256::digest(&content));
        let members = match parse_lines(&content) {
            Err(decode) => {
                self.fail(c, &decode, 0, vec![], &sha).await?;
                return Ok("failed");
            }
            Ok(Err(failed)) => {
                let rows = content
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                    .count();
                self.fail(c, "row_validation_failed", rows, failed, &sha)
                    .await?;
                return Ok("failed");
            }
            Ok(Ok(members)) => members,
        };
        let mut tx = self.db.begin().await?;
        let still_ours: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM recipient_list_import_jobs WHERE id = $1 AND receipt = $2 FOR UPDATE",
        )
        .bind(c.id)
        .bind(c.receipt)
        .fetch_optional(&mut *tx)
        .await?;
        if still_ours.is_none() {
            return Ok("lost");
        }
        let (list, _) = tree::put_list(&mut tx, c.owner, &c.list_key, &c.defaults, true).await?;
        let (mut created, mut updated) = (0, 0);
        let mut keep = Vec::with_capacity(members.len());
        for (source, input) in &members {
            keep.push(source.clone());
            let (member, was_created) = tree::upsert_member(&mut tx, &list, source, input).await?;
            tree::cascade(&mut tx, c.owner, &list, &member).await?;
            if was_created {
                created += 1;
            } else {
                updated += 1;
            }
        }
        let mut removed = 0;
        if c.remove_absent {
            removed = tree::remove_absent(&mut tx, c.owner, &list, &keep).await?;
            sqlx::query("UPDATE recipient_lists SET last_reconciled_at = now() WHERE id = $1")
                .bind(list.id)
                .execute(&mut *tx)
                .await?;
        }
        tree::refresh_counts(&mut tx, list.id).await?;
        sqlx::query(
            "UPDATE recipient_list_import_jobs SET recipient_list_id = $2, status = 'succeeded',
                 row_count = $3, created_count = $4, updated_count = $5, removed_count = $6,
                 failed_count = 0, failed_rows = '[]', content_sha256 = $7, error = '',
                 completed_at = now(), updated_at = now()
             WHERE id = $1",
        )
        .bind(c.id)
        .bind(list.id)
        .bind(members.len() as i32)
        .bind(created)
        .bind(updated)
        .bind(removed as i32)
        .bind(&sha)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok("succeeded")
    }

    /// Works due jobs until none is left (or the context says stop):
    /// `processed=N succeeded=N failed=N`.
    pub async fn drain(&self, ctx: &HandlerContext) -> anyhow::Result<TaskReport> {
        let (mut processed, mut succeeded, mut failed) = (0u64, 0u64, 0u64);
        while !ctx.should_stop() {
            let claims = self.claim().await?;
            if claims.is_empty() {
                break;
            }
            for c in &claims {
                processed += 1;
                match self.work(c).await {
                    Ok("succeeded") => succeeded += 1,
                    Ok("failed") => failed += 1,
                    Ok(_) => {}
                    // Left `processing`: claimed again after its visibility.
                    Err(err) => {
                        tracing::warn!(job = c.id, error = %format!("{err:#}"), "import job attempt failed")
                    }
                }
            }
        }
        Ok(TaskReport {
            acted_on: processed,
            detail: format!("processed={processed} succeeded={succeeded} failed={failed}"),
        })
    }
}

#[async_trait]
impl MaintenanceTask for ImportJobs {
    fn name(&self) -> &'static str {
        "recipient-list-imports"
    }

    fn every(&self) -> Duration {
        Duration::from_secs(5)
    }

    async fn run(&self, ctx: &HandlerContext) -> anyhow::Result<TaskReport> {
        self.drain(ctx).await
    }
}
