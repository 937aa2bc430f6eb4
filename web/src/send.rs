//! `POST /api/transactional/send`: the transactional send pipeline, web side (facts §3.2).
//!
//! The handler validates, reads once (template, category audience, idempotent replay and the
//! contact's suppression state and category preference: one statement), resolves the sender,
//! checks the required context, renders and decides, all before anything is written. The write
//! goes to the [`crate::send_writer::SendWriter`], which persists concurrent sends together
//! with one statement (contact upsert, message, event, queue message). A concurrent first send
//! with the same idempotency key loses the `ON CONFLICT DO NOTHING` and is answered with the
//! winner's message as a replay.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use datamailer_core::fields::FieldErrors;
use datamailer_core::render::{render, Rendered, TemplateSource};
use datamailer_core::time::iso_opt;
use datamailer_core::transactional::{
    decide, generate_idempotency_key, required_context_errors, resolve_sender, CategoryCheck,
    ContactFlags, DeliveryDecision, SendRequest, SUPPRESSED_CODE, SUPPRESSED_MESSAGE,
};
use serde_json::{json, Map, Value};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::auth::AuthClient;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonObject;
use crate::send_writer::{NewMessage, WriteOutcome};
use crate::AppState;

/// Longest rendered subject we accept (RFC 5322 line limit).
const MAX_SUBJECT_CHARS: usize = 998;

pub(crate) const SENDS_TOTAL: &str = "datamailer_transactional_sends_total";

/// Template, category audience, replay candidate and the contact's suppression state, in one
/// read. $1 client, $2 template key, $3 organization, $4 audience slug (nullable),
/// $5 idempotency key ('' for none), $6 normalized email, $7 category tag (nullable).
/// `m.idempotency_key <> ''` (not `$5 <> ''`) lets the planner use the partial unique index
/// in a generic plan; otherwise it filters every message of the client.
const READ_SQL: &str = "\
SELECT t.id AS template_id, t.key AS template_key, t.subject AS template_subject,
       t.html_body AS template_html, t.text_body AS template_text,
       t.required_context, t.default_sender_id AS template_sender,
       t.autoescape AS template_autoescape,
       a.id AS audience_id,
       m.id AS m_id, m.email AS m_email, m.from_email_id AS m_from_email_id,
       m.from_email AS m_from_email, m.metadata AS m_metadata, m.status AS m_status,
       m.template_key AS m_template_key, m.idempotency_key AS m_idempotency_key,
       m.created_at AS m_created_at,
       ct.id AS contact_id,
       COALESCE(ct.hard_bounced_at IS NOT NULL, false) AS hard_bounced,
       COALESCE(ct.complained_at IS NOT NULL, false) AS complained,
       COALESCE(ct.global_unsubscribed_at IS NOT NULL, false) AS global_unsubscribed,
       EXISTS (SELECT 1 FROM category_preferences p
               WHERE p.contact_id = ct.id AND p.audience_id = a.id AND p.client_id = $1
                 AND p.tag = $7 AND NOT p.enabled) AS category_disabled
FROM (SELECT 1) AS one
LEFT JOIN email_templates t
       ON t.client_id = $1 AND t.key = $2 AND t.is_transactional AND t.is_active
LEFT JOIN audiences a ON a.organization_id = $3 AND a.slug = $4
LEFT JOIN transactional_messages m
       ON m.client_id = $1 AND m.idempotency_key = $5 AND m.idempotency_key <> ''
LEFT JOIN contacts ct ON ct.normalized_email = $6";

/// The existing message for (client, idempotency key), after losing a concurrent insert.
const EXISTING_SQL: &str = "\
SELECT id AS m_id, email AS m_email, from_email_id AS m_from_email_id,
       from_email AS m_from_email, metadata AS m_metadata, status AS m_status,
       template_key AS m_template_key, idempotency_key AS m_idempotency_key,
       created_at AS m_created_at
FROM transactional_messages
WHERE client_id = $1 AND idempotency_key = $2 AND idempotency_key <> ''";

/// What the API says about a message (`message` in the send responses).
struct MessageView {
    id: Option<i64>,
    email: String,
    from_email_id: String,
    from_email: String,
    metadata: Value,
    status: String,
    template_key: String,
    idempotency_key: String,
    created_at: Option<DateTime<Utc>>,
}

impl MessageView {
    fn from_row(row: &PgRow) -> ApiResult<Self> {
        Ok(MessageView {
            id: Some(row.try_get("m_id")?),
            email: row.try_get("m_email")?,
            from_email_id: row.try_get("m_from_email_id")?,
            from_email: row.try_get("m_from_email")?,
            metadata: row.try_get("m_metadata")?,
            status: row.try_get("m_status")?,
            template_key: row.try_get("m_template_key")?,
            idempotency_key: row.try_get("m_idempotency_key")?,
            created_at: Some(row.try_get("m_created_at")?),
        })
    }

    fn to_json(&self) -> Value {
        let meta = |key: &str, default: Value| self.metadata.get(key).cloned().unwrap_or(default);
        json!({
            "id": self.id,
            "email": self.email,
            "from_email": self.from_email_id,
            "from_email_address": self.from_email,
            "reply_to": meta("reply_to", json!("")),
            "cc": meta("cc", json!([])),
            "bcc": meta("bcc", json!([])),
            "status": self.status,
            "template_key": self.template_key,
            "idempotency_key": self.idempotency_key,
            "created_at": iso_opt(self.created_at),
        })
    }
}

fn send_body(message: &MessageView, idempotent_replay: bool, enqueued: bool) -> Value {
    json!({
        "message": message.to_json(),
        "idempotent_replay": idempotent_replay,
        "enqueued": enqueued,
    })
}

fn replay(message: MessageView) -> Response {
    metrics::counter!(SENDS_TOTAL, "outcome" => "replay").increment(1);
    (StatusCode::ACCEPTED, Json(send_body(&message, true, false))).into_response()
}

/// The template row the send uses.
pub(crate) struct Template {
    pub id: i64,
    pub key: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    pub required_context: Value,
    pub default_sender_id: String,
    /// Ours: HTML-escape context values (the template opted in).
    pub autoescape: bool,
}

impl Template {
    /// The client's active transactional template `key`, if any.
    pub(crate) async fn load(
        db: &sqlx::PgPool,
        client_id: i64,
        key: &str,
    ) -> Result<Option<Template>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT id, key, subject, html_body, text_body, required_context, default_sender_id,
                    autoescape
             FROM email_templates
             WHERE client_id = $1 AND key = $2 AND is_transactional AND is_active",
        )
        .bind(client_id)
        .bind(key)
        .fetch_optional(db)
        .await?;
        row.map(|r| {
            Ok(Template {
                id: r.try_get("id")?,
                key: r.try_get("key")?,
                subject: r.try_get("subject")?,
                html_body: r.try_get("html_body")?,
                text_body: r.try_get("text_body")?,
                required_context: r.try_get("required_context")?,
                default_sender_id: r.try_get("default_sender_id")?,
                autoescape: r.try_get("autoescape")?,
            })
        })
        .transpose()
    }

    /// `context.<name>: required` for each `required_context` name the context lacks.
    pub(crate) fn check_context(&self, context: &Map<String, Value>) -> Result<(), ApiError> {
        let errors = required_context_errors(&self.required_context, context);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.into())
        }
    }

    /// Renders the three fields: `<field>: render_error` when one does not render, `subject:
    /// too_long` past the header line limit.
    pub(crate) fn render_checked(&self, context: &Value) -> Result<Rendered, ApiError> {
        let rendered = render(&self.source(), context, self.autoescape)
            .map_err(|err| ApiError::field(err.field.to_string(), "render_error"))?;
        if rendered.subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(ApiError::field("subject", "too_long"));
        }
        Ok(rendered)
    }

    pub(crate) fn source(&self) -> TemplateSource<'_> {
        TemplateSource {
            subject: &self.subject,
            html_body: &self.html_body,
            text_body: &self.text_body,
        }
    }
}

/// Checks the `audience` + `client` scope a `category_tag` needs (400 `not_found`/`required`,
/// 403 `forbidden`).
fn scope_errors(req: &SendRequest, auth: &AuthClient, audience_found: bool) -> FieldErrors {
    let mut errors = FieldErrors::new();
    if req.category_tag.is_none() {
        return errors;
    }
    match scope_str(req.scope.audience.as_ref()) {
        None => {
            errors.insert("audience", "required");
        }
        Some(_) if !audience_found => {
            errors.insert("audience", "not_found");
        }
        Some(_) => {}
    }
    match scope_str(req.scope.client.as_ref()) {
        None => {
            errors.insert("client", "required");
        }
        Some(slug) if slug != auth.client_slug => {
            errors.insert("client", "forbidden");
        }
        Some(_) => {}
    }
    errors
}

/// A scope field as the original reads it: a stripped, non-empty string, else absent.
fn scope_str(value: Option<&Value>) -> Option<&str> {
    value
        .and_then(Value::as_str)
        .map(datamailer_core::fields::py_strip)
        .filter(|s| !s.is_empty())
}

pub async fn send(
    State(state): State<AppState>,
    auth: AuthClient,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let req = SendRequest::parse(&body)?;
    let key_for_lookup = req.idempotency_key.clone().unwrap_or_default();

    // 1–2. Scope, template, replay candidate (and the contact for a dry run): one read.
    let row = sqlx::query(READ_SQL)
        .bind(auth.client_id)
        .bind(&req.template_key)
        .bind(auth.organization_id)
        .bind(scope_str(req.scope.audience.as_ref()))
        .bind(if req.dry_run {
            ""
        } else {
            key_for_lookup.as_str()
        })
        .bind(req.email.as_str())
        .bind(req.category_tag.as_deref())
        .fetch_one(&state.db)
        .await?;
    let audience_id: Option<i64> = row.try_get("audience_id")?;
    let errors = scope_errors(&req, &auth, audience_id.is_some());
    if !errors.is_empty() {
        return Err(errors.into());
    }
    let Some(template_id) = row.try_get::<Option<i64>, _>("template_id")? else {
        return Err(ApiError::not_found("template_key"));
    };
    let template = Template {
        id: template_id,
        key: row.try_get("template_key")?,
        subject: row.try_get("template_subject")?,
        html_body: row.try_get("template_html")?,
        text_body: row.try_get("template_text")?,
        required_context: row.try_get("required_context")?,
        default_sender_id: row.try_get("template_sender")?,
        autoescape: row.try_get("template_autoescape")?,
    };

    // 4. Idempotent replay: the existing message as it is, context not validated again.
    if !req.dry_run && row.try_get::<Option<i64>, _>("m_id")?.is_some() {
        return Ok(replay(MessageView::from_row(&row)?));
    }

    // 5.1–5.3, 5.6: sender, required context, rendering (nothing written yet).
    let sender = resolve_sender(
        req.from_email.as_deref(),
        &template.default_sender_id,
        &auth.default_sender_id,
        &auth.sender_emails,
    )
    .map_err(|reason| ApiError::field("from_email", reason))?;
    template.check_context(&req.context)?;
    let context = Value::Object(req.context.clone());
    let rendered = template.render_checked(&context)?;
    let idempotency_key = req
        .idempotency_key
        .clone()
        .unwrap_or_else(generate_idempotency_key);
    let metadata = req.message_metadata();

    // 5.5 Delivery decision from the contact's current state (read above; a contact that does
    // not exist yet has no suppression). The worker re-checks suppression at send time.
    let flags = ContactFlags {
        hard_bounced: row.try_get("hard_bounced")?,
        complained: row.try_get("complained")?,
        global_unsubscribed: row.try_get("global_unsubscribed")?,
    };
    let category_disabled: bool = row.try_get("category_disabled")?;
    let category = req.category_tag.as_ref().map(|_| CategoryCheck {
        has_scope: audience_id.is_some(),
        category_disabled,
    });
    let decision = decide(flags, category);

    // 3. Dry run: the same checks and rendering, nothing written (not even the contact).
    if req.dry_run {
        let view = MessageView {
            id: None,
            email: req.email.clone(),
            from_email_id: sender.id.clone(),
            from_email: sender.email.clone(),
            metadata: Value::Object(metadata),
            status: status_for(&decision).to_string(),
            template_key: template.key.clone(),
            idempotency_key,
            created_at: None,
        };
        let mut body = send_body(&view, false, false);
        body["rendered"] = json!({
            "subject": rendered.subject,
            "html_body": rendered.html_body,
            "text_body": rendered.text_body,
        });
        body["would_deliver"] = json!(decision.allowed);
        body["delivery_decision"] = decision.to_json();
        metrics::counter!(SENDS_TOTAL, "outcome" => "dry_run").increment(1);
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }

    // 5.4–5.8: contact upsert, decision, message, event and queue message, committed together.
    let new_message = NewMessage {
        client_id: auth.client_id,
        raw_email: req.raw_email.trim().to_string(),
        email: req.email.clone(),
        template_id: template.id,
        template_key: template.key.clone(),
        from_email_id: sender.id.clone(),
        from_email: sender.email.clone(),
        idempotency_key: idempotency_key.clone(),
        subject: rendered.subject,
        html_body: rendered.html_body,
        text_body: rendered.text_body,
        context,
        metadata: metadata.clone(),
        event_metadata: Default::default(),
        decision,
    };
    let outcome = state.send_writer().write(new_message).await?;
    let WriteOutcome::Inserted {
        message_id,
        created_at,
        enqueued,
    } = outcome
    else {
        // A concurrent send with the same key won: answer its message as a replay.
        let existing = sqlx::query(EXISTING_SQL)
            .bind(auth.client_id)
            .bind(&idempotency_key)
            .fetch_one(&state.db)
            .await?;
        return Ok(replay(MessageView::from_row(&existing)?));
    };
    let status = status_for(&decision);
    let view = MessageView {
        id: Some(message_id),
        email: req.email.clone(),
        from_email_id: sender.id,
        from_email: sender.email,
        metadata: Value::Object(metadata),
        status: status.to_string(),
        template_key: template.key,
        idempotency_key,
        created_at: Some(created_at),
    };
    let mut body = send_body(&view, false, enqueued);
    if decision.allowed {
        metrics::counter!(SENDS_TOTAL, "outcome" => "queued").increment(1);
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    metrics::counter!(SENDS_TOTAL, "outcome" => "skipped").increment(1);
    body["error"] = json!({
        "code": SUPPRESSED_CODE,
        "message": SUPPRESSED_MESSAGE,
        "reason": decision.reason.unwrap_or(""),
    });
    Err(ApiError::Custom(StatusCode::CONFLICT, body))
}

fn status_for(decision: &DeliveryDecision) -> &'static str {
    if decision.allowed {
        "queued"
    } else {
        "skipped"
    }
}
