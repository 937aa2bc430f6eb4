//! The two recipient-list sends (facts §4.6): one transactional message per active member of
//! a stored list (`POST /api/recipient-lists/{key}/transactional-send`) or of a list given in
//! the body and never stored (`POST /api/transient-recipient-lists/transactional-send`).
//!
//! Everything is checked before any message is written: the body, the template, the sender,
//! and every member's context and rendering (all or nothing). A stored list sent with
//! `members` is synced first, in a transaction that is rolled back when any member fails.
//! The messages then go through the send writer, which persists them in batches. Each has the
//! key `<idempotency_key>:<source_object_key>`, so a retry after a crash, a timeout or a 5xx
//! writes exactly the messages the first try did not and counts the rest as replays.
//! Suppressed and category-opted-out members become `skipped` rows with their reason (and a
//! `transactional.skipped` client webhook), not a 409.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use datamailer_core::fields::FieldErrors;
use datamailer_core::transactional::{
    decide, member_idempotency_key, resolve_sender, CategoryCheck, ContactFlags, ListSendRequest,
    MemberSync, SenderIdentity,
};
use datamailer_core::{email, fields};
use serde_json::{json, Map, Value};
use sqlx::Row;

use super::model::{self, path_key};
use super::{list_scope, owner, parse_members, sync_members, tree};
use crate::auth::AuthClient;
use crate::contacts::as_map;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonObject;
use crate::scope::Scope;
use crate::send::{Template, SENDS_TOTAL};
use crate::send_writer::{NewMessage, WriteOutcome};
use crate::AppState;

/// Longest stored idempotency key (`<idempotency_key>:<source_object_key>` must fit).
const MAX_KEY_CHARS: usize = 255;

/// Messages handed to the writer at once (it batches them; this bounds the waiting futures).
const WRITE_CHUNK: usize = 1_000;

/// One member to send to, with what the decision needs.
struct Recipient {
    /// The stored member's id (none for a transient list).
    member_id: Option<i64>,
    source_object_key: String,
    /// As given (stripped) and normalized.
    raw_email: String,
    email: String,
    member_metadata: Value,
    flags: ContactFlags,
    category_disabled: bool,
    /// A message with this member's key exists already.
    replay: bool,
}

/// What the list sends answer besides their list.
#[derive(Default)]
struct Counts {
    created: usize,
    enqueued: usize,
    skipped: usize,
    replays: usize,
}

impl Counts {
    fn into_body(self, list: (&str, Value), req: &ListSendRequest, template_key: &str) -> Value {
        let mut body = Map::new();
        body.insert(list.0.into(), list.1);
        body.insert("template_key".into(), json!(template_key));
        body.insert("idempotency_key".into(), json!(req.idempotency_key));
        body.insert("created_count".into(), json!(self.created));
        body.insert("enqueued_count".into(), json!(self.enqueued));
        body.insert("skipped_count".into(), json!(self.skipped));
        body.insert("idempotent_replay_count".into(), json!(self.replays));
        Value::Object(body)
    }
}

/// The request, its template and sender, checked before anything is read per member.
struct Prepared {
    req: ListSendRequest,
    template: Template,
    sender: SenderIdentity,
}

async fn prepare(state: &AppState, auth: &AuthClient, body: &Value) -> Result<Prepared, ApiError> {
    let req = ListSendRequest::parse(body)?;
    let template = Template::load(&state.db, auth.client_id, &req.send.template_key)
        .await?
        .ok_or_else(|| ApiError::not_found("template_key"))?;
    let sender = resolve_sender(
        req.send.from_email.as_deref(),
        &template.default_sender_id,
        &auth.default_sender_id,
        &auth.sender_emails,
    )
    .map_err(|reason| ApiError::field("from_email", reason))?;
    Ok(Prepared {
        req,
        template,
        sender,
    })
}

/// `POST /api/recipient-lists/{key}/transactional-send`.
pub async fn send_to_list(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let key = path_key(Some(&key), "list_key")?;
    let data = as_map(&body);
    let scope = list_scope(&state, &auth, data).await?;
    let Prepared {
        req,
        template,
        sender,
    } = prepare(&state, &auth, &body).await?;

    let mut tx = state.db.begin().await?;
    let mut member_sync = None;
    if let Some(members) = &req.members {
        let mut sync = Map::new();
        sync.insert("members".into(), Value::Array(members.clone()));
        if let Some(list) = &req.list {
            sync.insert("list".into(), Value::Object(list.clone()));
        }
        let defaults = model::list_defaults(&sync, &key)?;
        let members = parse_members(&sync)?;
        let reconcile =
            (req.member_sync == MemberSync::Reconcile).then_some(req.remove_absent_members);
        let synced = sync_members(&mut tx, &scope, &key, &defaults, &members, reconcile).await?;
        member_sync = Some(match reconcile {
            Some(_) => synced.reconcile_payload(&scope),
            None => synced.bulk_upsert_payload(&scope),
        });
    }
    let list = tree::find_list(&mut *tx, owner(&scope), &key)
        .await?
        .ok_or_else(|| ApiError::not_found("list_key"))?;
    let recipients = stored_members(&mut tx, list.id, &scope, &req).await?;

    let extra = |r: &Recipient| {
        let mut meta = Map::new();
        meta.insert("recipient_list_key".into(), json!(list.key));
        meta.insert("recipient_list_member_id".into(), json!(r.member_id));
        meta.insert("source_object_key".into(), json!(r.source_object_key));
        meta.insert(
            "recipient_list_member_metadata".into(),
            r.member_metadata.clone(),
        );
        meta.insert("audience".into(), json!(scope.audience_slug));
        meta
    };
    let event = Map::from_iter([("recipient_list_key".to_string(), json!(list.key))]);
    // Every member checked and rendered before the sync commits or a message is written.
    let (messages, replays) =
        build_messages(&auth, &req, &template, &sender, &recipients, extra, &event)?;
    tx.commit().await?;

    let mut counts = write(&state, messages).await?;
    counts.replays += replays;
    let list_info = json!({"key": list.key, "active_member_count": list.active_member_count});
    let mut answer = counts.into_body(("recipient_list", list_info), &req, &template.key);
    if let Some(sync) = member_sync {
        answer["member_sync"] = sync;
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// `POST /api/transient-recipient-lists/transactional-send`: the members come in the body;
/// nothing about the list is stored.
pub async fn send_to_transient_list(
    State(state): State<AppState>,
    auth: AuthClient,
    JsonObject(body): JsonObject,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let data = as_map(&body);
    let scope = list_scope(&state, &auth, data).await?;
    let Prepared {
        req,
        template,
        sender,
    } = prepare(&state, &auth, &body).await?;
    let members = match &req.members {
        Some(items) if !items.is_empty() => items,
        _ => return Err(ApiError::field("members", "required")),
    };
    let list = req.list.clone().unwrap_or_default();
    let raw_key = [list.get("key"), data.get("list_key")]
        .into_iter()
        .flatten()
        .find(|v| !fields::is_blank(Some(v)))
        .and_then(Value::as_str)
        .unwrap_or(&req.idempotency_key);
    let list_key = path_key(Some(raw_key), "list.key")?;
    let list_name = match list.get("name") {
        None => list_key.clone(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => return Err(ApiError::field("list.name", "required")),
    };
    let given = transient_members(members)?;
    let recipients = transient_recipients(&state, &scope, &req, given).await?;
    let active = recipients.len();

    let extra = |r: &Recipient| {
        let mut meta = Map::new();
        meta.insert("transient_recipient_list_key".into(), json!(list_key));
        meta.insert("source_object_key".into(), json!(r.source_object_key));
        meta.insert(
            "transient_member_metadata".into(),
            r.member_metadata.clone(),
        );
        meta.insert("audience".into(), json!(scope.audience_slug));
        meta
    };
    let event = Map::from_iter([("transient_recipient_list_key".to_string(), json!(list_key))]);
    let (messages, replays) =
        build_messages(&auth, &req, &template, &sender, &recipients, extra, &event)?;
    let mut counts = write(&state, messages).await?;
    counts.replays += replays;
    let list_info = json!({
        "key": list_key,
        "name": list_name,
        "member_count": members.len(),
        "active_member_count": active,
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(counts.into_body(("transient_recipient_list", list_info), &req, &template.key)),
    ))
}

/// The active members of a stored list in id order, with their contact's suppression state,
/// category preference and whether their message exists already: one statement.
async fn stored_members(
    tx: &mut sqlx::PgConnection,
    list_id: i64,
    scope: &Scope,
    req: &ListSendRequest,
) -> Result<Vec<Recipient>, ApiError> {
    let rows = sqlx::query(
        "SELECT m.id, m.source_object_key, m.email, m.metadata,
                c.hard_bounced_at IS NOT NULL AS hard_bounced,
                c.complained_at IS NOT NULL AS complained,
                c.global_unsubscribed_at IS NOT NULL AS global_unsubscribed,
                EXISTS (SELECT 1 FROM category_preferences p
                        WHERE p.contact_id = c.id AND p.audience_id = $2 AND p.client_id = $3
                          AND p.tag = $4 AND NOT p.enabled) AS category_disabled,
                EXISTS (SELECT 1 FROM transactional_messages t
                        WHERE t.client_id = $3 AND t.idempotency_key <> ''
                          AND t.idempotency_key = $5 || ':' || m.source_object_key) AS replay
         FROM recipient_list_members m JOIN contacts c ON c.id = m.contact_id
         WHERE m.recipient_list_id = $1 AND m.active
         ORDER BY m.id",
    )
    .bind(list_id)
    .bind(scope.audience_id)
    .bind(scope.client_id)
    .bind(req.send.category_tag.as_deref())
    .bind(&req.idempotency_key)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            let email: String = r.try_get("email")?;
            Ok(Recipient {
                member_id: Some(r.try_get("id")?),
                source_object_key: r.try_get("source_object_key")?,
                raw_email: email.clone(),
                email,
                member_metadata: r.try_get("metadata")?,
                flags: ContactFlags {
                    hard_bounced: r.try_get("hard_bounced")?,
                    complained: r.try_get("complained")?,
                    global_unsubscribed: r.try_get("global_unsubscribed")?,
                },
                category_disabled: r.try_get("category_disabled")?,
                replay: r.try_get("replay")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(ApiError::from)
}

/// A transient member as given: (source key, stripped email, active, metadata).
type GivenMember = (String, String, bool, Value);

/// Checks every transient member, collecting each one's first error.
fn transient_members(items: &[Value]) -> Result<Vec<GivenMember>, ApiError> {
    let mut errors = FieldErrors::new();
    let mut members = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(item) = item else {
            errors.insert(format!("members.{i}"), "must_be_object");
            continue;
        };
        let source = path_key(
            item.get("source_object_key").and_then(Value::as_str),
            &format!("members.{i}.source_object_key"),
        );
        let mut plain = item.clone();
        plain.remove("member");
        let input = model::member_input(&plain, &format!("members.{i}."));
        match (source, input) {
            (Ok(source), Ok(input)) => {
                members.push((source, input.email, input.active, input.metadata))
            }
            (source, input) => {
                for err in [source.err(), input.err()].into_iter().flatten() {
                    if let ApiError::Validation(e) = err {
                        errors.extend(e);
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(members)
    } else {
        Err(errors.into())
    }
}

/// The active transient members with their contact's state (contacts that do not exist yet
/// have none) and whether their message exists already: two reads for the whole list.
async fn transient_recipients(
    state: &AppState,
    scope: &Scope,
    req: &ListSendRequest,
    given: Vec<GivenMember>,
) -> Result<Vec<Recipient>, ApiError> {
    let active: Vec<GivenMember> = given.into_iter().filter(|m| m.2).collect();
    let emails: Vec<String> = active.iter().map(|m| email::normalize(&m.1)).collect();
    let keys: Vec<String> = active
        .iter()
        .map(|m| member_idempotency_key(&req.idempotency_key, &m.0))
        .collect();
    let states = sqlx::query(
        "SELECT c.normalized_email,
                c.hard_bounced_at IS NOT NULL AS hard_bounced,
                c.complained_at IS NOT NULL AS complained,
                c.global_unsubscribed_at IS NOT NULL AS global_unsubscribed,
                EXISTS (SELECT 1 FROM category_preferences p
                        WHERE p.contact_id = c.id AND p.audience_id = $2 AND p.client_id = $3
                          AND p.tag = $4 AND NOT p.enabled) AS category_disabled
         FROM contacts c WHERE c.normalized_email = ANY($1)",
    )
    .bind(&emails)
    .bind(scope.audience_id)
    .bind(scope.client_id)
    .bind(req.send.category_tag.as_deref())
    .fetch_all(&state.db)
    .await?;
    let mut by_email = std::collections::HashMap::new();
    for r in &states {
        let flags = ContactFlags {
            hard_bounced: r.try_get("hard_bounced")?,
            complained: r.try_get("complained")?,
            global_unsubscribed: r.try_get("global_unsubscribed")?,
        };
        let email: String = r.try_get("normalized_email")?;
        by_email.insert(email, (flags, r.try_get::<bool, _>("category_disabled")?));
    }
    let existing: std::collections::HashSet<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM transactional_messages
         WHERE client_id = $1 AND idempotency_key <> '' AND idempotency_key = ANY($2)",
    )
    .bind(scope.client_id)
    .bind(&keys)
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .collect();
    Ok(active
        .into_iter()
        .zip(emails)
        .zip(keys)
        .map(|(((source, raw_email, _, metadata), email), key)| {
            let (flags, category_disabled) = by_email.get(&email).copied().unwrap_or_default();
            Recipient {
                member_id: None,
                source_object_key: source,
                raw_email,
                email,
                member_metadata: metadata,
                flags,
                category_disabled,
                replay: existing.contains(&key),
            }
        })
        .collect())
}

/// A member's context: its metadata, the request's context laid over it, and `member`.
fn member_context(base: &Map<String, Value>, member_metadata: &Value) -> Map<String, Value> {
    let member = member_metadata.as_object().cloned().unwrap_or_default();
    let mut context = member.clone();
    context.extend(base.clone());
    context.insert("member".into(), Value::Object(member));
    context
}

/// Checks and renders every member's message; fails on the first member whose context
/// misses a required name or does not render, before anything is written. Returns the new
/// messages and how many members already had theirs.
#[allow(clippy::too_many_arguments)]
fn build_messages(
    auth: &AuthClient,
    req: &ListSendRequest,
    template: &Template,
    sender: &SenderIdentity,
    recipients: &[Recipient],
    extra: impl Fn(&Recipient) -> Map<String, Value>,
    event: &Map<String, Value>,
) -> Result<(Vec<NewMessage>, usize), ApiError> {
    let mut messages = Vec::with_capacity(recipients.len());
    let mut replays = 0;
    for r in recipients {
        let context = member_context(&req.send.context, &r.member_metadata);
        // The original checks every member's context before it skips replays; so do we.
        template.check_context(&context)?;
        // The stored key is at most 255 characters (the original answered a 500 past it).
        let key = member_idempotency_key(&req.idempotency_key, &r.source_object_key);
        if key.chars().count() > MAX_KEY_CHARS {
            return Err(ApiError::field("idempotency_key", "too_long"));
        }
        if r.replay {
            replays += 1;
            continue;
        }
        let context = Value::Object(context);
        let rendered = template.render_checked(&context)?;
        let category = req.send.category_tag.as_ref().map(|_| CategoryCheck {
            has_scope: true,
            category_disabled: r.category_disabled,
        });
        messages.push(NewMessage {
            client_id: auth.client_id,
            raw_email: r.raw_email.clone(),
            email: r.email.clone(),
            template_id: template.id,
            template_key: template.key.clone(),
            from_email_id: sender.id.clone(),
            from_email: sender.email.clone(),
            idempotency_key: key,
            subject: rendered.subject,
            html_body: rendered.html_body,
            text_body: rendered.text_body,
            context,
            metadata: req.send.message_metadata_with(extra(r)),
            event_metadata: event.clone(),
            decision: decide(r.flags, category),
        });
    }
    Ok((messages, replays))
}

/// Hands the messages to the send writer (it batches them) and counts what happened.
async fn write(state: &AppState, messages: Vec<NewMessage>) -> Result<Counts, ApiError> {
    let mut counts = Counts::default();
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let chunk: Vec<NewMessage> = messages.by_ref().take(WRITE_CHUNK).collect();
        let allowed: Vec<bool> = chunk.iter().map(|m| m.decision.allowed).collect();
        let writer = state.send_writer();
        let outcomes = futures::future::join_all(chunk.into_iter().map(|m| writer.write(m))).await;
        for (outcome, allowed) in outcomes.into_iter().zip(allowed) {
            match outcome? {
                WriteOutcome::Inserted { enqueued, .. } => {
                    counts.created += 1;
                    if !allowed {
                        counts.skipped += 1;
                        metrics::counter!(SENDS_TOTAL, "outcome" => "skipped").increment(1);
                    } else {
                        metrics::counter!(SENDS_TOTAL, "outcome" => "queued").increment(1);
                        if enqueued {
                            counts.enqueued += 1;
                        }
                    }
                }
                WriteOutcome::Conflict => {
                    counts.replays += 1;
                    metrics::counter!(SENDS_TOTAL, "outcome" => "replay").increment(1);
                }
            }
        }
    }
    Ok(counts)
}
