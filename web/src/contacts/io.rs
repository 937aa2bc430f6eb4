//! Listing, exporting and importing contacts (facts §4.3): `GET /api/contacts` (filters,
//! keyset pagination), `GET /api/contacts.csv` (streamed page by page, so memory stays flat
//! however many rows), `POST /api/contacts/imports` (JSON) and `.../imports/csv`. Imports
//! report per item exactly as the original and write through the set-based upsert engine.

use std::collections::{HashMap, HashSet};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use datamailer_core::email;
use datamailer_core::slug::slugify;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::by_id::{cursor_param, limit_param};
use super::model::{self, ContactState, SUBSCRIPTION_STATUSES, VALIDATION_STATUSES};
use super::upsert::{self, parse_datetime, ContactInput};
use super::{as_map, invalid};
use crate::auth::AuthClient;
use crate::error::{ApiError, ApiResult};
use crate::json::parse_body;
use crate::scope::{QueryMap, Scope, ScopeResolver};
use crate::AppState;

/// Rows per statement batch of an import and per page of the CSV export.
const CHUNK: usize = 2_000;

/// Import chunks written at once (each in its own transaction and connection).
const PARALLEL: usize = 3;

fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(v) => v.to_string().trim().to_string(),
    }
}

fn query_bool(value: Option<&Value>, field: &str) -> Result<Option<bool>, ApiError> {
    let v = text(value).to_lowercase();
    match v.as_str() {
        "" => Ok(None),
        "1" | "true" | "yes" | "y" | "on" => Ok(Some(true)),
        "0" | "false" | "no" | "n" | "off" => Ok(Some(false)),
        _ => Err(invalid(field, "must_be_boolean")),
    }
}

/// A bind value of a filtered listing.
enum Bind {
    I64(i64),
    Text(String),
    Time(DateTime<Utc>),
}

/// The listing query for one scope and the filters of `data` (`$1` audience, `$2` client).
fn listing_sql(
    data: &Map<String, Value>,
    limit_clause: bool,
) -> Result<(String, Vec<Bind>), ApiError> {
    let mut conditions: Vec<String> = Vec::new();
    let mut binds: Vec<Bind> = Vec::new();
    let next = |binds: &mut Vec<Bind>, b: Bind| {
        binds.push(b);
        format!("${}", binds.len() + 2)
    };
    let tags: Vec<String> = text(data.get("tags"))
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(slugify)
        .collect();
    for tag in tags {
        let p = next(&mut binds, Bind::Text(tag));
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
                     WHERE ct.contact_id = c.id AND t.audience_id = $1 AND t.slug = {p})"
        ));
    }
    let status = text(data.get("subscription_status"));
    if !status.is_empty() {
        if !SUBSCRIPTION_STATUSES.contains(&status.as_str()) {
            return Err(invalid("subscription_status", "invalid"));
        }
        let p = next(&mut binds, Bind::Text(status));
        conditions.push(format!("sc.status = {p}"));
    }
    if let Some(verified) = query_bool(data.get("verified"), "verified")? {
        let cond = "(c.verified_at IS NOT NULL OR sc.verified_at IS NOT NULL)";
        conditions.push(if verified {
            cond.into()
        } else {
            format!("NOT {cond}")
        });
    }
    let validation = text(data.get("email_validation_status"));
    if !validation.is_empty() {
        if !VALIDATION_STATUSES.contains(&validation.as_str()) {
            return Err(invalid("email_validation_status", "invalid"));
        }
        let p = next(&mut binds, Bind::Text(validation));
        conditions.push(format!("c.email_validation_status = {p}"));
    }
    let suppression = text(data.get("suppression"));
    let any = "(c.global_unsubscribed_at IS NOT NULL OR c.hard_bounced_at IS NOT NULL OR c.complained_at IS NOT NULL)";
    match suppression.as_str() {
        "" => {}
        "none" => conditions.push(format!("NOT {any}")),
        "any" => conditions.push(any.into()),
        "global_unsubscribed" => conditions.push("c.global_unsubscribed_at IS NOT NULL".into()),
        "hard_bounced" => conditions.push("c.hard_bounced_at IS NOT NULL".into()),
        "complained" => conditions.push("c.complained_at IS NOT NULL".into()),
        _ => return Err(invalid("suppression", "invalid")),
    }
    let since = text(data.get("updated_since"));
    if !since.is_empty() {
        let at = parse_datetime(&since)
            .ok_or_else(|| invalid("updated_since", "must_be_iso_datetime"))?;
        let p = next(&mut binds, Bind::Time(at));
        conditions.push(format!("c.updated_at >= {p}"));
    }
    // The page: `c.id > cursor` and a limit, bound last.
    let cursor = next(&mut binds, Bind::I64(0));
    conditions.push(format!("c.id > {cursor}"));
    let mut tail = format!("WHERE {} ORDER BY c.id", conditions.join(" AND "));
    if limit_clause {
        let p = next(&mut binds, Bind::I64(0));
        tail.push_str(&format!(" LIMIT {p}"));
    }
    Ok((model::state_sql(1, 2, true, &tail), binds))
}

async fn fetch_page(
    db: &sqlx::PgPool,
    sql: &str,
    binds: &[Bind],
    scope: &Scope,
    after: i64,
    limit: i64,
) -> Result<Vec<ContactState>, sqlx::Error> {
    let mut q = sqlx::query(sql)
        .bind(scope.audience_id)
        .bind(scope.client_id);
    let n = binds.len();
    for (i, b) in binds.iter().enumerate() {
        q = match b {
            // The last two are the cursor and the limit.
            Bind::I64(_) if i == n - 2 => q.bind(after),
            Bind::I64(_) if i == n - 1 => q.bind(limit),
            Bind::I64(v) => q.bind(*v),
            Bind::Text(v) => q.bind(v.clone()),
            Bind::Time(v) => q.bind(*v),
        };
    }
    let rows = q.fetch_all(db).await?;
    rows.iter().map(ContactState::from_row).collect()
}

async fn list_scope(
    state: &AppState,
    auth: &AuthClient,
    data: &Map<String, Value>,
) -> Result<Scope, ApiError> {
    let mut scoped = data.clone();
    scoped.remove("email");
    ScopeResolver::new(state, auth)
        .resolve(&scoped, false)
        .await?
        .map_err(ApiError::Validation)
}

/// `GET /api/contacts`.
pub async fn list(
    State(state): State<AppState>,
    auth: AuthClient,
    QueryMap(query): QueryMap,
) -> ApiResult<Json<Value>> {
    let limit = limit_param(query.get("limit"), 50, 500)?;
    let cursor_value = query
        .get("cursor")
        .filter(|v| !text(Some(v)).is_empty())
        .or(query.get("offset"));
    let cursor = cursor_param(cursor_value)?;
    let scope = list_scope(&state, &auth, &query).await?;
    let (sql, binds) = listing_sql(&query, true)?;
    let mut page = fetch_page(
        &state.db,
        &sql,
        &binds,
        &scope,
        cursor.unwrap_or(0),
        limit + 1,
    )
    .await?;
    let mut next_cursor = Value::Null;
    if page.len() as i64 > limit {
        page.truncate(limit as usize);
        next_cursor = json!(page.last().map(|c| c.id.to_string()));
    }
    let contacts: Vec<Value> = page
        .iter()
        .map(|c| model::export_payload(c, &scope.audience_slug, &scope.client_slug))
        .collect();
    Ok(Json(json!({
        "audience": scope.audience_slug,
        "client": scope.client_slug,
        "count": contacts.len(),
        "next_cursor": next_cursor,
        "contacts": contacts,
    })))
}

/// The CSV export's default row limit (the original's), and ours beyond it.
const CSV_DEFAULT_LIMIT: i64 = 10_000;
const CSV_MAX_LIMIT: i64 = 10_000_000;

fn csv_line(fields: &[String]) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(256));
    w.write_record(fields).expect("writing to memory");
    w.into_inner().expect("writing to memory")
}

/// `GET /api/contacts.csv`: streamed in keyset pages of [`CHUNK`] rows.
pub async fn export_csv(
    State(state): State<AppState>,
    auth: AuthClient,
    QueryMap(query): QueryMap,
) -> ApiResult<Response> {
    let scope = list_scope(&state, &auth, &query).await?;
    let (sql, binds) = listing_sql(&query, true)?;
    let limit = limit_param(query.get("limit"), CSV_DEFAULT_LIMIT, CSV_MAX_LIMIT)?;
    let header_line = csv_line(
        &model::CSV_COLUMNS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    );
    let db = state.db.clone();
    // State: (last id, rows left, finished).
    let pages = futures::stream::unfold((0i64, limit, false), move |(after, left, done)| {
        let (db, sql, scope) = (db.clone(), sql.clone(), scope.clone());
        let binds: Vec<Bind> = binds
            .iter()
            .map(|b| match b {
                Bind::I64(v) => Bind::I64(*v),
                Bind::Text(v) => Bind::Text(v.clone()),
                Bind::Time(v) => Bind::Time(*v),
            })
            .collect();
        async move {
            if done || left <= 0 {
                return None;
            }
            let take = left.min(CHUNK as i64);
            match fetch_page(&db, &sql, &binds, &scope, after, take).await {
                Err(err) => {
                    tracing::error!(error = %err, "contact export failed mid-stream");
                    Some((Err(std::io::Error::other(err)), (after, 0, true)))
                }
                Ok(rows) => {
                    let last = rows.last().map_or(after, |c| c.id);
                    let finished = (rows.len() as i64) < take;
                    let mut out = Vec::with_capacity(rows.len() * 160);
                    for c in &rows {
                        out.extend(csv_line(&model::csv_row(
                            c,
                            &scope.audience_slug,
                            &scope.client_slug,
                        )));
                    }
                    Some((
                        Ok(Bytes::from(out)),
                        (last, left - rows.len() as i64, finished),
                    ))
                }
            }
        }
    });
    let body =
        futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(header_line)) })
            .chain(pages);
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"contacts.csv\""),
    );
    Ok(response)
}

use futures::StreamExt;

/// One item of an import after its checks.
enum Checked {
    Invalid(Value),
    Duplicate {
        email: String,
        kept: usize,
    },
    Ready {
        scope: Box<Scope>,
        input: ContactInput,
    },
}

fn counts() -> Map<String, Value> {
    let mut m = Map::new();
    for k in [
        "total",
        "created",
        "updated",
        "unchanged",
        "skipped",
        "invalid",
    ] {
        m.insert(k.into(), json!(0));
    }
    m
}

fn bump(counts: &mut Map<String, Value>, key: &str) {
    let n = counts[key].as_i64().unwrap_or(0) + 1;
    counts.insert(key.into(), json!(n));
}

/// The body of a JSON import (also what a CSV import becomes).
pub struct ImportRequest {
    pub parent: Map<String, Value>,
    pub items: Vec<Value>,
    pub dry_run: bool,
    pub idempotency_key: Value,
}

/// Runs an import and answers its report (`counts`, `results`, `errors`).
pub async fn run_import(
    state: &AppState,
    auth: &AuthClient,
    req: ImportRequest,
) -> Result<ImportReport, ApiError> {
    let mut counts = counts();
    let mut resolver = ScopeResolver::new(state, auth);
    let mut seen: HashMap<(String, i64), usize> = HashMap::new();
    let mut checked: Vec<Checked> = Vec::with_capacity(req.items.len());
    // Items are consumed as they are checked, so the request's values are freed as it goes.
    for (index, raw) in req.items.into_iter().enumerate() {
        let number = index + 1;
        bump(&mut counts, "total");
        let Value::Object(mut item) = raw else {
            checked.push(Checked::Invalid(json!({"index": index, "item": number,
                                                  "errors": {"item": "must_be_object"}})));
            continue;
        };
        for field in ["audience", "client"] {
            if !item.contains_key(field) {
                if let Some(v) = req.parent.get(field) {
                    item.insert(field.into(), v.clone());
                }
            }
        }
        if item.contains_key("subscription_status") && !item.contains_key("status") {
            let v = item["subscription_status"].clone();
            item.insert("status".into(), v);
        }
        let email_of = |item: &Map<String, Value>| match item.get("email") {
            Some(Value::String(s)) if !s.is_empty() => email::normalize(s),
            Some(v @ (Value::Number(_) | Value::Bool(true))) => email::normalize(&v.to_string()),
            _ => String::new(),
        };
        let scope = match resolver.resolve(&item, true).await? {
            Ok(scope) => scope,
            Err(errors) => {
                checked.push(Checked::Invalid(json!({"index": index, "item": number,
                    "email": email_of(&item), "errors": errors})));
                continue;
            }
        };
        let key = (scope.normalized_email(), scope.audience_id);
        if let Some(kept) = seen.get(&key) {
            checked.push(Checked::Duplicate {
                email: key.0,
                kept: *kept,
            });
            continue;
        }
        match upsert::parse_contact(&item, &scope.email) {
            Ok(input) => {
                seen.insert(key, number);
                checked.push(Checked::Ready {
                    scope: Box::new(scope),
                    input,
                });
            }
            Err(errors) => checked.push(Checked::Invalid(json!({"index": index, "item": number,
                "email": key.0, "errors": errors}))),
        }
    }

    // Write (or, in a dry run, look up) per audience in chunks; remember each item's outcome.
    // Each outcome is serialized as soon as it is known: a report of 100,000 items held as
    // JSON text, not as 100,000 trees of values (~10× the memory and most of the CPU).
    let mut outcomes: HashMap<usize, (&'static str, Box<RawValue>)> = HashMap::new();
    let mut by_audience: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, c) in checked.iter().enumerate() {
        if let Checked::Ready { scope, .. } = c {
            by_audience.entry(scope.audience_id).or_default().push(i);
        }
    }
    // Chunks of one audience each; written PARALLEL at a time (their emails are distinct, and
    // every write takes its row locks in sorted order, so they never wait on each other).
    let mut jobs: Wave = Vec::new();
    for (_, indexes) in by_audience {
        for chunk in indexes.chunks(CHUNK) {
            let scope = match &checked[chunk[0]] {
                Checked::Ready { scope, .. } => (**scope).clone(),
                _ => unreachable!("only ready items are grouped"),
            };
            let inputs: Vec<ContactInput> = chunk
                .iter()
                .map(|i| match &checked[*i] {
                    Checked::Ready { input, .. } => input.clone(),
                    _ => unreachable!("only ready items are grouped"),
                })
                .collect();
            jobs.push((scope, chunk.to_vec(), inputs));
        }
    }
    if req.dry_run {
        for (scope, chunk, inputs) in &jobs {
            let emails: Vec<&str> = inputs.iter().map(|i| i.normalized.as_str()).collect();
            let existing: Vec<String> = sqlx::query_scalar(
                "SELECT c.normalized_email FROM contacts c JOIN subscriptions s
                   ON s.contact_id = c.id AND s.audience_id = $2 AND s.client_id = $3
                 WHERE c.normalized_email = ANY($1)",
            )
            .bind(&emails)
            .bind(scope.audience_id)
            .bind(scope.client_id)
            .fetch_all(&state.db)
            .await?;
            let existing: HashSet<String> = existing.into_iter().collect();
            for (i, input) in chunk.iter().zip(inputs) {
                let action = if existing.contains(&input.normalized) {
                    "would_update"
                } else {
                    "would_create"
                };
                outcomes.insert(
                    *i,
                    (
                        action,
                        raw(&json!({"index": i, "item": i + 1, "email": input.normalized, "action": action})),
                    ),
                );
            }
        }
        jobs.clear();
    }
    // Waves of chunks: the first alone (so statistics are fresh before the others plan),
    // then PARALLEL at a time. A wave's writes run in a task of their own while this one
    // builds the previous wave's report entries, so the database and the JSON work overlap.
    let mut waves: Vec<Wave> = Vec::new();
    let mut pending = jobs.into_iter().peekable();
    while pending.peek().is_some() {
        let size = if waves.is_empty() { 1 } else { PARALLEL };
        waves.push(pending.by_ref().take(size).collect());
    }
    let mut waves = waves.into_iter();
    let mut running = waves.next().map(|w| spawn_wave(state.db.clone(), w, false));
    let (mut created_since_analyze, mut analyzed_at) = (0usize, 0usize);
    while let Some((report, write)) = running.take() {
        let done = write.await.map_err(anyhow::Error::from)??;
        created_since_analyze += done
            .iter()
            .flatten()
            .filter(|u| u.action == upsert::Action::Created)
            .count();
        // After the first wave, then whenever the tables have grown by half again.
        let analyze = analyzed_at == 0
            || (created_since_analyze >= CHUNK / 2 && created_since_analyze >= analyzed_at);
        if analyze {
            analyzed_at += created_since_analyze.max(1);
            created_since_analyze = 0;
        }
        running = waves
            .next()
            .map(|w| spawn_wave(state.db.clone(), w, analyze));
        for ((scope, chunk, emails), done) in report.into_iter().zip(done) {
            for ((i, email), up) in chunk.iter().zip(&emails).zip(&done) {
                let payload = model::contact_payload(
                    Some(&up.state),
                    &scope.audience_slug,
                    &scope.client_slug,
                    email,
                );
                outcomes.insert(
                    *i,
                    (
                        up.action.as_str(),
                        raw(&json!({"index": i, "item": i + 1,
                            "action": up.action.as_str(), "contact": payload})),
                    ),
                );
            }
        }
    }

    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, c) in checked.into_iter().enumerate() {
        match c {
            Checked::Invalid(e) => {
                bump(&mut counts, "invalid");
                errors.push(e);
            }
            Checked::Duplicate { email, kept } => {
                bump(&mut counts, "skipped");
                results.push(raw(&json!({"index": i, "item": i + 1, "email": email,
                    "action": "skipped", "reason": "duplicate_input", "kept_item": kept})));
            }
            Checked::Ready { .. } => {
                let (action, outcome) = outcomes
                    .remove(&i)
                    .expect("every ready item has an outcome");
                let key = if action.starts_with("would_") {
                    "skipped"
                } else {
                    action
                };
                bump(&mut counts, key);
                results.push(outcome);
            }
        }
    }
    Ok(ImportReport {
        dry_run: req.dry_run,
        idempotency_key: req.idempotency_key,
        counts,
        results,
        errors,
    })
}

/// An import's answer, in the original's key order.
#[derive(serde::Serialize)]
pub struct ImportReport {
    pub dry_run: bool,
    pub idempotency_key: Value,
    pub counts: Map<String, Value>,
    /// One entry per item, already serialized.
    pub results: Vec<Box<RawValue>>,
    pub errors: Vec<Value>,
}

fn raw(value: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("a JSON value serializes")
}

/// Chunks written together: per chunk its scope, item indexes and inputs.
type Wave = Vec<(Scope, Vec<usize>, Vec<ContactInput>)>;
/// What a wave's report entries need: per chunk its scope, item indexes and emails as given.
type WaveReport = Vec<(Scope, Vec<usize>, Vec<String>)>;
/// A wave's writes: per chunk, its upserts' results.
type WaveWrite = tokio::task::JoinHandle<Result<Vec<Vec<upsert::Upserted>>, sqlx::Error>>;

/// Starts a wave's writes (each chunk in its own transaction), refreshing statistics first
/// when `analyze`.
fn spawn_wave(db: sqlx::PgPool, wave: Wave, analyze: bool) -> (WaveReport, WaveWrite) {
    let mut report = Vec::with_capacity(wave.len());
    let mut writes = Vec::with_capacity(wave.len());
    for (scope, chunk, inputs) in wave {
        let emails = inputs.iter().map(|i| i.email.clone()).collect();
        writes.push((scope.audience_id, scope.client_id, inputs));
        report.push((scope, chunk, emails));
    }
    let task = tokio::spawn(async move {
        if analyze {
            refresh_statistics(&db).await;
        }
        futures::future::try_join_all(writes.iter().map(|(audience_id, client_id, inputs)| {
            let db = &db;
            async move {
                let mut tx = db.begin().await?;
                let done = upsert::upsert(&mut tx, *audience_id, *client_id, inputs).await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(done)
            }
        }))
        .await
    });
    (report, task)
}

/// A bulk import grows the tables faster than autovacuum re-plans them; with statistics
/// from a nearly empty table the planner probes subscriptions by scope instead of by
/// contact, once per contact. Refreshing them when an import has grown the tables by half
/// again keeps every chunk an index probe per contact (a warning, not an error, where the
/// role does not own the tables).
async fn refresh_statistics(db: &sqlx::PgPool) {
    if let Err(err) = sqlx::query("ANALYZE contacts, subscriptions, contact_tags")
        .execute(db)
        .await
    {
        tracing::warn!(error = %err, "could not refresh contact statistics after an import chunk");
    }
}

/// `POST /api/contacts/imports`.
pub async fn import_json(
    State(state): State<AppState>,
    auth: AuthClient,
    crate::json::JsonObject(body): crate::json::JsonObject,
) -> ApiResult<Json<ImportReport>> {
    let data = as_map(&body);
    let Some(Value::Array(items)) = data.get("contacts") else {
        return Err(invalid("contacts", "must_be_list"));
    };
    let dry_run = match data.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("dry_run", "must_be_boolean")),
    };
    let idempotency_key = match data.get("idempotency_key") {
        None => json!(""),
        Some(Value::String(s)) => json!(s),
        Some(_) => return Err(invalid("idempotency_key", "must_be_string")),
    };
    let req = ImportRequest {
        parent: data.clone(),
        items: items.clone(),
        dry_run,
        idempotency_key,
    };
    Ok(Json(run_import(&state, &auth, req).await?))
}

/// A CSV row as an import item, or its field errors. Fixing the original's gap, a blank
/// suppression or validation cell leaves that state as it is instead of clearing it.
fn csv_item(
    row: &HashMap<String, String>,
    audience: &str,
    client: &str,
) -> Result<Value, Map<String, Value>> {
    let cell = |k: &str| row.get(k).map(|s| s.trim().to_string()).unwrap_or_default();
    let mut errors = Map::new();
    let email_cell = cell("email");
    if email_cell.is_empty() {
        errors.insert("email".into(), json!("required"));
    } else if !email::is_valid(&email_cell) {
        errors.insert("email".into(), json!("invalid"));
    }
    let audience = Some(cell("audience"))
        .filter(|s| !s.is_empty())
        .unwrap_or(audience.into());
    let client = Some(cell("client"))
        .filter(|s| !s.is_empty())
        .unwrap_or(client.into());
    if audience.is_empty() {
        errors.insert("audience".into(), json!("required"));
    }
    if client.is_empty() {
        errors.insert("client".into(), json!("required"));
    }
    let mut status = {
        let s = cell("subscription_status");
        if s.is_empty() {
            cell("status")
        } else {
            s
        }
    }
    .to_lowercase();
    if status.is_empty() {
        status = "pending".into();
    }
    if !SUBSCRIPTION_STATUSES.contains(&status.as_str()) {
        errors.insert("subscription_status".into(), json!("invalid"));
    }
    let validation_status = cell("email_validation_status").to_lowercase();
    if !validation_status.is_empty() && !VALIDATION_STATUSES.contains(&validation_status.as_str()) {
        errors.insert("email_validation_status".into(), json!("invalid"));
    }
    let mut flag = |k: &str| -> Option<bool> {
        match cell(k).to_lowercase().as_str() {
            "" => None,
            "1" | "true" | "yes" | "y" | "on" => Some(true),
            "0" | "false" | "no" | "n" | "off" => Some(false),
            _ => {
                errors.insert(k.into(), json!("must_be_boolean"));
                None
            }
        }
    };
    let verified = flag("verified").unwrap_or(false);
    let mut suppression = Map::new();
    for k in upsert::SUPPRESSION_KEYS {
        if let Some(b) = flag(k) {
            suppression.insert(k.into(), json!(b));
        }
    }
    let unsubscribed = flag("unsubscribed");
    if !errors.is_empty() {
        return Err(errors);
    }
    if unsubscribed == Some(true) {
        status = "unsubscribed".into();
    }
    let tags: Vec<String> = cell("tags")
        .split(';')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    let mut item = json!({
        "email": email_cell, "audience": audience, "client": client, "tags": tags,
        "status": status, "verified": verified, "suppression": suppression,
    });
    let reason = cell("email_validation_reason");
    let validated_at = cell("email_validated_at");
    if !validation_status.is_empty() || !reason.is_empty() || !validated_at.is_empty() {
        let mut v = json!({"status": if validation_status.is_empty() { "unknown".to_string() } else { validation_status }, "reason": reason});
        if !validated_at.is_empty() {
            v["validated_at"] = json!(validated_at);
        }
        item["email_validation"] = v;
    }
    Ok(item)
}

/// The CSV and form fields of a CSV import, from multipart or JSON.
struct CsvUpload {
    csv: Option<Vec<u8>>,
    fields: Map<String, Value>,
}

async fn read_upload(req: Request) -> Result<CsvUpload, ApiError> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if is_multipart {
        let mut multipart = Multipart::from_request(req, &())
            .await
            .map_err(|_| invalid("csv", "required"))?;
        let mut upload = CsvUpload {
            csv: None,
            fields: Map::new(),
        };
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|_| invalid("body", "invalid_multipart"))?
        {
            let name = field.name().unwrap_or("").to_string();
            let data = field
                .bytes()
                .await
                .map_err(|_| invalid("body", "invalid_multipart"))?;
            if name == "file" || name == "csv" {
                upload.csv = Some(data.to_vec());
            } else {
                upload
                    .fields
                    .insert(name, json!(String::from_utf8_lossy(&data).to_string()));
            }
        }
        return Ok(upload);
    }
    let bytes = Bytes::from_request(req, &())
        .await
        .map_err(|_| invalid("body", "invalid_json"))?;
    let body = parse_body(&bytes)?;
    let mut fields = body.as_object().cloned().unwrap_or_default();
    let csv = match fields.remove("csv") {
        Some(Value::String(s)) => Some(s.into_bytes()),
        _ => None,
    };
    Ok(CsvUpload { csv, fields })
}

/// `POST /api/contacts/imports/csv`.
pub async fn import_csv(
    State(state): State<AppState>,
    auth: AuthClient,
    req: Request,
) -> ApiResult<Json<ImportReport>> {
    let upload = read_upload(req).await?;
    let csv = match upload.csv {
        Some(bytes) if !bytes.iter().all(|b| b.is_ascii_whitespace()) => bytes,
        _ => return Err(invalid("csv", "required")),
    };
    let text = String::from_utf8(csv).map_err(|_| invalid("csv", "must_be_utf8"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let fields = upload.fields;
    let audience = text_of(fields.get("audience"));
    let client = text_of(fields.get("client"));
    let dry_run = match fields.get("dry_run") {
        Some(Value::Bool(b)) => *b,
        other => query_bool(other, "dry_run")
            .unwrap_or(Some(false))
            .unwrap_or(false),
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|_| invalid("csv", "missing_header"))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if headers.iter().all(String::is_empty) {
        return Err(invalid("csv", "missing_header"));
    }
    let mut items = Vec::new();
    let mut row_errors = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let row_number = n + 2;
        let record = match record {
            Ok(r) => r,
            Err(_) => {
                row_errors.push(json!({"row": row_number, "errors": {"row": "invalid"}}));
                continue;
            }
        };
        let row: HashMap<String, String> = headers
            .iter()
            .cloned()
            .zip(record.iter().map(String::from))
            .collect();
        match csv_item(&row, &audience, &client) {
            Ok(item) => items.push(item),
            Err(errors) => row_errors.push(json!({"row": row_number, "errors": errors})),
        }
    }
    let mut parent = Map::new();
    parent.insert("audience".into(), json!(audience));
    parent.insert("client".into(), json!(client));
    let idempotency_key = fields.get("idempotency_key").cloned().unwrap_or(json!(""));
    let mut report = run_import(
        &state,
        &auth,
        ImportRequest {
            parent,
            items,
            dry_run,
            idempotency_key,
        },
    )
    .await?;
    for _ in &row_errors {
        bump(&mut report.counts, "total");
        bump(&mut report.counts, "invalid");
    }
    report.errors.extend(row_errors);
    Ok(Json(report))
}

fn text_of(v: Option<&Value>) -> String {
    text(v)
}
