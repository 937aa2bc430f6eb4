//! Transactional email rules (facts §3.2, §4.6, §4.7): request validation for
//! `POST /api/transactional/send` and template upserts, the delivery decision,
//! required-context checks, sender selection and message statuses.

use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::fields::{self, add, present, FieldErrors};
use crate::render::{self, TemplateSource};
use crate::{email, slug};

/// Message statuses as stored in `transactional_messages.status`.
pub mod status {
    pub const QUEUED: &str = "queued";
    pub const SENDING: &str = "sending";
    pub const SENT: &str = "sent";
    pub const FAILED: &str = "failed";
    pub const SKIPPED: &str = "skipped";
    pub const BOUNCED: &str = "bounced";
    pub const COMPLAINED: &str = "complained";
}

/// Statuses the worker acknowledges without sending (the message is done).
pub fn is_worker_terminal(status: &str) -> bool {
    matches!(
        status,
        status::SENT | status::SKIPPED | status::FAILED | status::BOUNCED | status::COMPLAINED
    )
}

/// Error code and message of the 409 answer for a suppressed contact.
pub const SUPPRESSED_CODE: &str = "transactional_suppressed";
pub const SUPPRESSED_MESSAGE: &str = "Contact is hard-suppressed for transactional email.";

/// The key used when the client gives none: `transactional-message:<uuid4 hex>`.
pub fn generate_idempotency_key() -> String {
    format!("transactional-message:{}", uuid::Uuid::new_v4().simple())
}

/// Per-member key of a recipient-list send: `<key>:<source_object_key>`.
pub fn member_idempotency_key(key: &str, source_object_key: &str) -> String {
    format!("{key}:{source_object_key}")
}

// ---------------------------------------------------------------------------
// Delivery decision
// ---------------------------------------------------------------------------

/// Suppression state of a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContactFlags {
    pub hard_bounced: bool,
    pub complained: bool,
    pub global_unsubscribed: bool,
}

/// Category preference facts, given only when the send carries a `category_tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CategoryCheck {
    /// Whether the request named an audience and client scope.
    pub has_scope: bool,
    /// Whether the contact disabled this category for that scope.
    pub category_disabled: bool,
}

/// Whether a transactional message may be sent, and why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryDecision {
    pub allowed: bool,
    pub reason: Option<&'static str>,
}

impl DeliveryDecision {
    const ALLOWED: DeliveryDecision = DeliveryDecision {
        allowed: true,
        reason: None,
    };

    fn blocked(reason: &'static str) -> Self {
        DeliveryDecision {
            allowed: false,
            reason: Some(reason),
        }
    }

    /// `{"allowed": .., "reason": ..}` as in the dry-run response.
    pub fn to_json(&self) -> Value {
        json!({"allowed": self.allowed, "reason": self.reason})
    }
}

/// Transactional mail ignores verification and subscriptions; only hard bounces
/// and complaints block it, plus unsubscribes when a category is named.
pub fn decide(flags: ContactFlags, category: Option<CategoryCheck>) -> DeliveryDecision {
    if flags.hard_bounced {
        return DeliveryDecision::blocked("hard_bounce");
    }
    if flags.complained {
        return DeliveryDecision::blocked("complaint");
    }
    if let Some(category) = category {
        if flags.global_unsubscribed {
            return DeliveryDecision::blocked("global_unsubscribe");
        }
        if !category.has_scope {
            return DeliveryDecision::blocked("missing_category_scope");
        }
        if category.category_disabled {
            return DeliveryDecision::blocked("category_unsubscribe");
        }
    }
    DeliveryDecision::ALLOWED
}

// ---------------------------------------------------------------------------
// Send request
// ---------------------------------------------------------------------------

const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
const MAX_TAG_LEN: usize = 80;
const MAX_HEADERS: usize = 20;
const MAX_MESSAGE_PARTS: usize = 10;
const MAX_PART_CONTENT_CHARS: usize = 200_000;
const RESERVED_HEADERS: [&str; 7] = [
    "bcc",
    "cc",
    "content-type",
    "from",
    "reply-to",
    "subject",
    "to",
];

static HEADER_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9-]{1,80}$").expect("valid regex"));

/// An extra text part (attachment or inline) of a transactional message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePart {
    pub content_type: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default = "default_disposition")]
    pub disposition: String,
}

fn default_disposition() -> String {
    "attachment".to_owned()
}

/// A validated `POST /api/transactional/send` body.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    /// Normalized (trimmed, lowercased) recipient.
    pub email: String,
    /// The recipient as the client wrote it.
    pub raw_email: String,
    pub template_key: String,
    pub idempotency_key: Option<String>,
    pub context: Map<String, Value>,
    pub metadata: Map<String, Value>,
    pub category_tag: Option<String>,
    pub audience: Option<String>,
    pub client: Option<String>,
    /// A sender id (not an address).
    pub from_email: Option<String>,
    pub reply_to: Option<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub headers: BTreeMap<String, String>,
    pub message_parts: Vec<MessagePart>,
    pub dry_run: bool,
}

impl SendRequest {
    /// Validates a send body, collecting every field error (not just the first).
    pub fn parse(body: &Value) -> Result<SendRequest, FieldErrors> {
        let mut errors = FieldErrors::new();
        let Some(body) = body.as_object() else {
            add(&mut errors, "body", "must_be_object");
            return Err(errors);
        };

        let raw_email = required_string(body, "email", &mut errors, |s| email::is_valid(s.trim()));
        let template_key = required_string(body, "template_key", &mut errors, slug::is_slug);
        let idempotency_key = optional_string(body, "idempotency_key", &mut errors, |s| {
            !s.trim().is_empty() && s.chars().count() <= MAX_IDEMPOTENCY_KEY_LEN
        });
        let context = optional_object(body, "context", &mut errors);
        let metadata = optional_object(body, "metadata", &mut errors);
        let category_tag = optional_string(body, "category_tag", &mut errors, is_tag);
        let audience = optional_string(body, "audience", &mut errors, |s| !s.trim().is_empty());
        let client = optional_string(body, "client", &mut errors, |s| !s.trim().is_empty());
        if category_tag.is_some() {
            for (name, value) in [("audience", &audience), ("client", &client)] {
                if value.is_none() {
                    add(&mut errors, name, "required");
                }
            }
        }
        let from_email = optional_string(body, "from_email", &mut errors, is_tag);
        let reply_to =
            optional_string(body, "reply_to", &mut errors, |s| email::is_valid(s.trim()))
                .map(|s| s.trim().to_owned());
        let cc = address_list(body, "cc", &mut errors);
        let bcc = address_list(body, "bcc", &mut errors);
        let headers = headers(body, &mut errors);
        let message_parts = message_parts(body, &mut errors);
        let dry_run = match present(body, "dry_run") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                add(&mut errors, "dry_run", "invalid");
                false
            }
        };

        let raw_email = raw_email.unwrap_or_default();
        let request = SendRequest {
            email: email::normalize(&raw_email),
            raw_email,
            template_key: template_key.unwrap_or_default(),
            idempotency_key,
            context,
            metadata,
            category_tag,
            audience,
            client,
            from_email,
            reply_to,
            cc,
            bcc,
            headers,
            message_parts,
            dry_run,
        };
        fields::finish(errors, request)
    }

    /// What is stored as the message's metadata (and sent in the queue payload):
    /// the client's metadata plus each delivery option that was given.
    pub fn message_metadata(&self) -> Map<String, Value> {
        let mut metadata = self.metadata.clone();
        if let Some(tag) = &self.category_tag {
            metadata.insert("category_tag".into(), Value::from(tag.as_str()));
        }
        if let Some(reply_to) = &self.reply_to {
            metadata.insert("reply_to".into(), Value::from(reply_to.as_str()));
        }
        if !self.cc.is_empty() {
            metadata.insert("cc".into(), Value::from(self.cc.clone()));
        }
        if !self.bcc.is_empty() {
            metadata.insert("bcc".into(), Value::from(self.bcc.clone()));
        }
        if !self.headers.is_empty() {
            let headers: Map<String, Value> = self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            metadata.insert("headers".into(), Value::Object(headers));
        }
        if !self.message_parts.is_empty() {
            metadata.insert(
                "message_parts".into(),
                serde_json::to_value(&self.message_parts).expect("parts serialize"),
            );
        }
        metadata
    }
}

/// A slug of at most 80 characters (category tags, sender ids).
fn is_tag(s: &str) -> bool {
    s.len() <= MAX_TAG_LEN && slug::is_slug(s)
}

/// A required string: `required` when absent, null or blank, `invalid` when not a
/// string or rejected by `valid`.
fn required_string(
    body: &Map<String, Value>,
    name: &str,
    errors: &mut FieldErrors,
    valid: impl Fn(&str) -> bool,
) -> Option<String> {
    required_string_at(body, name, name, errors, valid)
}

/// Like [`required_string`], reporting errors under the path `field`.
fn required_string_at(
    body: &Map<String, Value>,
    key: &str,
    field: &str,
    errors: &mut FieldErrors,
    valid: impl Fn(&str) -> bool,
) -> Option<String> {
    match present(body, key) {
        None => add(errors, field, "required"),
        Some(Value::String(s)) if s.trim().is_empty() => add(errors, field, "required"),
        Some(Value::String(s)) if valid(s) => return Some(s.clone()),
        Some(_) => add(errors, field, "invalid"),
    }
    None
}

/// An optional string: absent when missing, null or "", `invalid` when not a
/// string or rejected by `valid`.
fn optional_string(
    body: &Map<String, Value>,
    name: &str,
    errors: &mut FieldErrors,
    valid: impl Fn(&str) -> bool,
) -> Option<String> {
    match present(body, name) {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if valid(s) => Some(s.clone()),
        Some(_) => {
            add(errors, name, "invalid");
            None
        }
    }
}

fn optional_object(
    body: &Map<String, Value>,
    name: &str,
    errors: &mut FieldErrors,
) -> Map<String, Value> {
    match present(body, name) {
        None => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => {
            add(errors, name, "must_be_object");
            Map::new()
        }
    }
}

/// `cc`/`bcc`: one address or a list of addresses.
fn address_list(body: &Map<String, Value>, name: &str, errors: &mut FieldErrors) -> Vec<String> {
    let items: Vec<&Value> = match present(body, name) {
        None => return Vec::new(),
        Some(Value::String(s)) if s.trim().is_empty() => return Vec::new(),
        Some(single @ Value::String(_)) => vec![single],
        Some(Value::Array(items)) => items.iter().collect(),
        Some(_) => {
            add(errors, name, "invalid");
            return Vec::new();
        }
    };
    let mut addresses = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match item.as_str().map(str::trim) {
            Some(address) if email::is_valid(address) => addresses.push(address.to_owned()),
            _ => add(errors, format!("{name}.{i}"), "invalid"),
        }
    }
    addresses
}

fn headers(body: &Map<String, Value>, errors: &mut FieldErrors) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    let entries = match present(body, "headers") {
        None => return headers,
        Some(Value::Object(entries)) => entries,
        Some(_) => {
            add(errors, "headers", "must_be_object");
            return headers;
        }
    };
    if entries.len() > MAX_HEADERS {
        add(errors, "headers", "too_many");
        return headers;
    }
    for (name, value) in entries {
        let field = format!("headers.{name}");
        if !HEADER_NAME_RE.is_match(name) {
            add(errors, field, "invalid_name");
        } else if RESERVED_HEADERS
            .iter()
            .any(|r| r.eq_ignore_ascii_case(name))
        {
            add(errors, field, "reserved");
        } else {
            match value.as_str() {
                Some(v) if !v.contains(['\r', '\n']) => {
                    headers.insert(name.clone(), v.to_owned());
                }
                _ => add(errors, field, "invalid_value"),
            }
        }
    }
    headers
}

fn message_parts(body: &Map<String, Value>, errors: &mut FieldErrors) -> Vec<MessagePart> {
    let items = match present(body, "message_parts") {
        None => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            add(errors, "message_parts", "must_be_list");
            return Vec::new();
        }
    };
    if items.len() > MAX_MESSAGE_PARTS {
        add(errors, "message_parts", "too_many");
        return Vec::new();
    }
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| message_part(item, &format!("message_parts.{i}"), errors))
        .collect()
}

fn message_part(item: &Value, prefix: &str, errors: &mut FieldErrors) -> Option<MessagePart> {
    let Some(part) = item.as_object() else {
        add(errors, prefix, "must_be_object");
        return None;
    };
    let before = errors.len();
    let content_type = match present(part, "content_type") {
        None => {
            add(errors, format!("{prefix}.content_type"), "required");
            String::new()
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            add(errors, format!("{prefix}.content_type"), "required");
            String::new()
        }
        Some(Value::String(s)) if s.contains(['\r', '\n']) => {
            add(errors, format!("{prefix}.content_type"), "invalid");
            String::new()
        }
        Some(Value::String(s)) => {
            let main_type = s.split('/').next().unwrap_or_default().trim();
            if !main_type.eq_ignore_ascii_case("text") {
                add(errors, format!("{prefix}.content_type"), "unsupported");
            }
            s.trim().to_owned()
        }
        Some(_) => {
            add(errors, format!("{prefix}.content_type"), "invalid");
            String::new()
        }
    };
    let content = match present(part, "content") {
        None => String::new(),
        Some(Value::String(s)) if s.chars().count() > MAX_PART_CONTENT_CHARS => {
            add(errors, format!("{prefix}.content"), "too_long");
            String::new()
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            add(errors, format!("{prefix}.content"), "invalid");
            String::new()
        }
    };
    let filename = match present(part, "filename") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if !s.contains(['/', '\\', '\r', '\n', '"']) => Some(s.clone()),
        Some(_) => {
            add(errors, format!("{prefix}.filename"), "invalid");
            None
        }
    };
    let disposition = match present(part, "disposition") {
        None => default_disposition(),
        Some(Value::String(s)) if s.is_empty() => default_disposition(),
        Some(Value::String(s))
            if s.eq_ignore_ascii_case("attachment") || s.eq_ignore_ascii_case("inline") =>
        {
            s.to_ascii_lowercase()
        }
        Some(_) => {
            add(errors, format!("{prefix}.disposition"), "invalid");
            default_disposition()
        }
    };
    (errors.len() == before).then_some(MessagePart {
        content_type,
        content,
        filename,
        disposition,
    })
}

// ---------------------------------------------------------------------------
// Required context
// ---------------------------------------------------------------------------

/// Names declared in `required_context` (a list of names or `{name, description}`
/// objects), in order.
pub fn required_context_names(required_context: &Value) -> Vec<String> {
    required_context
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| match item {
                    Value::String(name) => Some(name.clone()),
                    Value::Object(obj) => {
                        obj.get("name").and_then(Value::as_str).map(str::to_owned)
                    }
                    _ => None,
                })
                .filter(|name| !name.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Required names absent from `context` or given as null or "". The API reports
/// each as `context.<name>: required`.
pub fn missing_required_context(
    required_context: &Value,
    context: &Map<String, Value>,
) -> Vec<String> {
    required_context_names(required_context)
        .into_iter()
        .filter(|name| match context.get(name) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Template upsert
// ---------------------------------------------------------------------------

const MAX_TEMPLATE_TEXT_LEN: usize = 255;

/// A validated `PUT /api/transactional/templates/{key}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateUpsert {
    pub name: String,
    pub subject: String,
    pub description: String,
    pub html_body: String,
    pub text_body: String,
    /// A list of names or `{name, description}` objects.
    pub required_context: Value,
    /// An object.
    pub example_context: Value,
    pub is_active: bool,
    /// A sender id or "" (the web layer checks it against the client's senders).
    pub default_sender_id: String,
}

impl TemplateUpsert {
    /// Validates field types and template syntax, collecting every field error.
    pub fn parse(body: &Value) -> Result<TemplateUpsert, FieldErrors> {
        let mut errors = FieldErrors::new();
        let Some(body) = body.as_object() else {
            add(&mut errors, "body", "must_be_object");
            return Err(errors);
        };
        let name = short_required_text(body, "name", &mut errors);
        let subject = short_required_text(body, "subject", &mut errors);
        let description = text_or_empty(body, "description", &mut errors);
        let html_body = text_or_empty(body, "html_body", &mut errors);
        let text_body = text_or_empty(body, "text_body", &mut errors);

        let required_context = match present(body, "required_context") {
            None => Value::Array(Vec::new()),
            Some(Value::Array(items)) if items.iter().all(is_context_name) => {
                Value::Array(items.clone())
            }
            Some(_) => {
                add(&mut errors, "required_context", "invalid");
                Value::Array(Vec::new())
            }
        };
        let example_context = match present(body, "example_context") {
            None => Value::Object(Map::new()),
            Some(obj @ Value::Object(_)) => obj.clone(),
            Some(_) => {
                add(&mut errors, "example_context", "invalid");
                Value::Object(Map::new())
            }
        };
        let is_active = match present(body, "is_active") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                add(&mut errors, "is_active", "invalid");
                true
            }
        };
        let default_sender_id = match present(body, "default_sender_id") {
            None => String::new(),
            Some(Value::String(s)) if s.is_empty() || is_tag(s) => s.clone(),
            Some(_) => {
                add(&mut errors, "default_sender_id", "invalid");
                String::new()
            }
        };

        // Each template field is checked on its own so every broken one is reported.
        for (field, text) in [
            ("subject", subject.as_deref()),
            ("html_body", Some(html_body.as_str())),
            ("text_body", Some(text_body.as_str())),
        ] {
            let Some(text) = text.filter(|_| !errors.contains_key(field)) else {
                continue;
            };
            let mut src = TemplateSource {
                subject: "",
                html_body: "",
                text_body: "",
            };
            match field {
                "subject" => src.subject = text,
                "html_body" => src.html_body = text,
                _ => src.text_body = text,
            }
            if render::check_syntax(&src).is_err() {
                add(&mut errors, field, "invalid_template");
            }
        }

        let upsert = TemplateUpsert {
            name: name.unwrap_or_default(),
            subject: subject.unwrap_or_default(),
            description,
            html_body,
            text_body,
            required_context,
            example_context,
            is_active,
            default_sender_id,
        };
        fields::finish(errors, upsert)
    }
}

fn is_context_name(item: &Value) -> bool {
    match item {
        Value::String(name) => !name.is_empty(),
        Value::Object(obj) => obj
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|name| !name.is_empty()),
        _ => false,
    }
}

/// A required non-blank string of at most 255 characters.
fn short_required_text(
    body: &Map<String, Value>,
    name: &str,
    errors: &mut FieldErrors,
) -> Option<String> {
    match present(body, name) {
        None => add(errors, name, "required"),
        Some(Value::String(s)) if s.trim().is_empty() => add(errors, name, "required"),
        Some(Value::String(s)) if s.chars().count() > MAX_TEMPLATE_TEXT_LEN => {
            add(errors, name, "too_long")
        }
        Some(Value::String(s)) => return Some(s.clone()),
        Some(_) => add(errors, name, "invalid"),
    }
    None
}

fn text_or_empty(body: &Map<String, Value>, name: &str, errors: &mut FieldErrors) -> String {
    match present(body, name) {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            add(errors, name, "invalid");
            String::new()
        }
    }
}

// ---------------------------------------------------------------------------
// Senders
// ---------------------------------------------------------------------------

/// A configured sender of a client: an id the API refers to and the address
/// (`addr` or `Display Name <addr>`) it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderIdentity {
    pub id: String,
    pub email: String,
}

/// Picks the sender: the request's id, else the template's default, else the
/// client's default. The chosen id must be configured, else `not_configured`.
pub fn resolve_sender(
    requested: Option<&str>,
    template_default: &str,
    client_default: &str,
    senders: &[SenderIdentity],
) -> Result<SenderIdentity, &'static str> {
    let id = [
        requested.unwrap_or_default(),
        template_default,
        client_default,
    ]
    .into_iter()
    .map(str::trim)
    .find(|id| !id.is_empty())
    .ok_or("not_configured")?;
    senders
        .iter()
        .find(|sender| sender.id == id)
        .cloned()
        .ok_or("not_configured")
}

/// Validates `PUT /api/client/senders`: `senders` (or legacy `sender_emails`), a
/// list of `{id, email}` with unique slug ids, and an optional
/// `default_sender_id` (the first sender when omitted; "" when the set is empty).
pub fn parse_senders(body: &Value) -> Result<(Vec<SenderIdentity>, String), FieldErrors> {
    let mut errors = FieldErrors::new();
    let Some(body) = body.as_object() else {
        add(&mut errors, "body", "must_be_object");
        return Err(errors);
    };
    let (list_name, list) = match (present(body, "senders"), present(body, "sender_emails")) {
        (Some(list), _) => ("senders", list),
        (None, Some(list)) => ("sender_emails", list),
        (None, None) => {
            add(&mut errors, "senders", "required");
            return Err(errors);
        }
    };
    let Some(items) = list.as_array() else {
        add(&mut errors, list_name, "invalid");
        return Err(errors);
    };

    let mut senders = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("{list_name}.{i}");
        let Some(item) = item.as_object() else {
            add(&mut errors, prefix, "invalid");
            continue;
        };
        let id = required_string_at(item, "id", &format!("{prefix}.id"), &mut errors, is_tag);
        let address = required_string_at(
            item,
            "email",
            &format!("{prefix}.email"),
            &mut errors,
            |s| email::parse_sender(s).is_some(),
        );
        if let Some(id) = &id {
            if !seen.insert(id.clone()) {
                add(&mut errors, format!("{prefix}.id"), "duplicate");
            }
        }
        if let (Some(id), Some(address)) = (id, address) {
            senders.push(SenderIdentity {
                id,
                email: address.trim().to_owned(),
            });
        }
    }

    let default_sender_id = match present(body, "default_sender_id") {
        None => senders.first().map(|s| s.id.clone()).unwrap_or_default(),
        Some(Value::String(s)) if s.is_empty() => {
            senders.first().map(|s| s.id.clone()).unwrap_or_default()
        }
        Some(Value::String(s)) => {
            if errors.is_empty() && !senders.iter().any(|sender| &sender.id == s) {
                add(&mut errors, "default_sender_id", "not_configured");
            }
            s.clone()
        }
        Some(_) => {
            add(&mut errors, "default_sender_id", "invalid");
            String::new()
        }
    };
    fields::finish(errors, (senders, default_sender_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of<T: std::fmt::Debug>(result: Result<T, FieldErrors>) -> Vec<(String, String)> {
        result.unwrap_err().into_iter().collect()
    }

    fn error_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(f, r)| (f.to_string(), r.to_string()))
            .collect()
    }

    fn send(extra: Value) -> Value {
        let mut body = json!({"email": "  Alice@Example.COM ", "template_key": "welcome"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    }

    #[test]
    fn decision_order_and_reasons() {
        let none = ContactFlags::default();
        let scoped = Some(CategoryCheck {
            has_scope: true,
            category_disabled: false,
        });
        assert_eq!(
            decide(none, None),
            DeliveryDecision {
                allowed: true,
                reason: None
            }
        );
        let all = ContactFlags {
            hard_bounced: true,
            complained: true,
            global_unsubscribed: true,
        };
        assert_eq!(decide(all, scoped).reason, Some("hard_bounce"));
        let complained = ContactFlags {
            complained: true,
            global_unsubscribed: true,
            ..none
        };
        assert_eq!(decide(complained, scoped).reason, Some("complaint"));
        let unsubscribed = ContactFlags {
            global_unsubscribed: true,
            ..none
        };
        assert!(
            decide(unsubscribed, None).allowed,
            "global unsubscribe only counts with a category"
        );
        assert_eq!(
            decide(unsubscribed, scoped).reason,
            Some("global_unsubscribe")
        );
        let no_scope = Some(CategoryCheck {
            has_scope: false,
            category_disabled: true,
        });
        assert_eq!(
            decide(none, no_scope).reason,
            Some("missing_category_scope")
        );
        let disabled = Some(CategoryCheck {
            has_scope: true,
            category_disabled: true,
        });
        assert_eq!(decide(none, disabled).reason, Some("category_unsubscribe"));
        assert!(decide(none, scoped).allowed);
    }

    #[test]
    fn decision_json_shape() {
        let blocked = decide(
            ContactFlags {
                hard_bounced: true,
                ..Default::default()
            },
            None,
        );
        assert_eq!(
            blocked.to_json(),
            json!({"allowed": false, "reason": "hard_bounce"})
        );
        assert_eq!(
            decide(ContactFlags::default(), None).to_json(),
            json!({"allowed": true, "reason": null})
        );
    }

    #[test]
    fn worker_terminal_statuses() {
        for s in ["sent", "skipped", "failed", "bounced", "complained"] {
            assert!(is_worker_terminal(s), "{s}");
        }
        assert!(!is_worker_terminal(status::QUEUED));
        assert!(!is_worker_terminal(status::SENDING));
    }

    #[test]
    fn generated_keys() {
        let key = generate_idempotency_key();
        let hex = key.strip_prefix("transactional-message:").unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(member_idempotency_key("k", "m-1"), "k:m-1");
    }

    #[test]
    fn minimal_send_parses_with_defaults() {
        let req = SendRequest::parse(&send(json!({}))).unwrap();
        assert_eq!(req.email, "alice@example.com");
        assert_eq!(req.raw_email, "  Alice@Example.COM ");
        assert_eq!(req.template_key, "welcome");
        assert_eq!(req.idempotency_key, None);
        assert!(req.context.is_empty() && req.cc.is_empty() && req.headers.is_empty());
        assert!(!req.dry_run);
        assert!(req.message_metadata().is_empty());
    }

    #[test]
    fn full_send_builds_metadata() {
        let req = SendRequest::parse(&send(json!({
            "idempotency_key": "order-1",
            "context": {"name": "Ada"},
            "metadata": {"order_id": 7},
            "category_tag": "receipts",
            "audience": "acme",
            "client": "shop",
            "from_email": "support",
            "reply_to": "help@example.com",
            "cc": "boss@example.com",
            "bcc": ["audit@example.com"],
            "headers": {"X-Order": "7"},
            "message_parts": [{"content_type": "text/calendar", "content": "BEGIN:VCALENDAR", "filename": "a.ics"}],
            "dry_run": true
        })))
        .unwrap();
        assert_eq!(req.cc, vec!["boss@example.com"]);
        assert_eq!(req.from_email.as_deref(), Some("support"));
        assert!(req.dry_run);
        assert_eq!(req.message_parts[0].disposition, "attachment");
        assert_eq!(
            Value::Object(req.message_metadata()),
            json!({
                "order_id": 7,
                "category_tag": "receipts",
                "reply_to": "help@example.com",
                "cc": ["boss@example.com"],
                "bcc": ["audit@example.com"],
                "headers": {"X-Order": "7"},
                "message_parts": [{"content_type": "text/calendar", "content": "BEGIN:VCALENDAR", "filename": "a.ics", "disposition": "attachment"}]
            })
        );
    }

    #[test]
    fn missing_required_fields_are_all_reported() {
        assert_eq!(
            errors_of(SendRequest::parse(&json!({"email": " "}))),
            error_pairs(&[("email", "required"), ("template_key", "required")])
        );
        assert_eq!(
            errors_of(SendRequest::parse(&json!([]))),
            error_pairs(&[("body", "must_be_object")])
        );
    }

    #[test]
    fn each_invalid_field_is_named() {
        let body = json!({
            "email": "not-an-email",
            "template_key": "has space",
            "idempotency_key": "   ",
            "context": [],
            "metadata": "x",
            "from_email": "sender@example.com",
            "reply_to": "nope",
            "cc": ["ok@example.com", "bad"],
            "bcc": 5,
            "headers": {"Subject": "x", "X Bad": "y", "X-Crlf": "a\r\nb", "X-Num": 1},
            "message_parts": [{"content_type": "application/pdf"}, {"content": 1}, "x"],
            "dry_run": "yes"
        });
        assert_eq!(
            errors_of(SendRequest::parse(&body)),
            error_pairs(&[
                ("bcc", "invalid"),
                ("cc.1", "invalid"),
                ("context", "must_be_object"),
                ("dry_run", "invalid"),
                ("email", "invalid"),
                ("from_email", "invalid"),
                ("headers.Subject", "reserved"),
                ("headers.X Bad", "invalid_name"),
                ("headers.X-Crlf", "invalid_value"),
                ("headers.X-Num", "invalid_value"),
                ("idempotency_key", "invalid"),
                ("message_parts.0.content_type", "unsupported"),
                ("message_parts.1.content", "invalid"),
                ("message_parts.1.content_type", "required"),
                ("message_parts.2", "must_be_object"),
                ("metadata", "must_be_object"),
                ("reply_to", "invalid"),
                ("template_key", "invalid"),
            ])
        );
    }

    #[test]
    fn category_tag_requires_scope() {
        assert_eq!(
            errors_of(SendRequest::parse(&send(json!({"category_tag": "news"})))),
            error_pairs(&[("audience", "required"), ("client", "required")])
        );
        assert!(SendRequest::parse(&send(
            json!({"category_tag": "news", "audience": "a", "client": "c"})
        ))
        .is_ok());
        let long_tag = "t".repeat(81);
        assert_eq!(
            errors_of(SendRequest::parse(&send(
                json!({"category_tag": long_tag, "audience": "a", "client": "c"})
            ))),
            error_pairs(&[("category_tag", "invalid")])
        );
    }

    #[test]
    fn idempotency_key_length_limit() {
        assert!(SendRequest::parse(&send(json!({"idempotency_key": "k".repeat(255)}))).is_ok());
        assert_eq!(
            errors_of(SendRequest::parse(&send(
                json!({"idempotency_key": "k".repeat(256)})
            ))),
            error_pairs(&[("idempotency_key", "invalid")])
        );
        assert_eq!(
            errors_of(SendRequest::parse(&send(json!({"idempotency_key": 5})))),
            error_pairs(&[("idempotency_key", "invalid")])
        );
    }

    #[test]
    fn header_limits() {
        let many: Map<String, Value> = (0..21).map(|i| (format!("X-H{i}"), json!("v"))).collect();
        assert_eq!(
            errors_of(SendRequest::parse(&send(json!({"headers": many})))),
            error_pairs(&[("headers", "too_many")])
        );
        assert_eq!(
            errors_of(SendRequest::parse(&send(json!({"headers": ["X-A"]})))),
            error_pairs(&[("headers", "must_be_object")])
        );
        assert_eq!(
            errors_of(SendRequest::parse(&send(
                json!({"headers": {"reply-TO": "x"}})
            ))),
            error_pairs(&[("headers.reply-TO", "reserved")])
        );
    }

    #[test]
    fn message_part_rules() {
        let parts = |p: Value| SendRequest::parse(&send(json!({"message_parts": p})));
        assert_eq!(
            errors_of(parts(json!({}))),
            error_pairs(&[("message_parts", "must_be_list")])
        );
        let eleven: Vec<Value> = (0..11)
            .map(|_| json!({"content_type": "text/plain"}))
            .collect();
        assert_eq!(
            errors_of(parts(json!(eleven))),
            error_pairs(&[("message_parts", "too_many")])
        );
        assert_eq!(
            errors_of(parts(
                json!([{"content_type": "text/plain", "content": "x".repeat(200_001)}])
            )),
            error_pairs(&[("message_parts.0.content", "too_long")])
        );
        assert_eq!(
            errors_of(parts(
                json!([{"content_type": "text/plain", "filename": "../etc/passwd"}])
            )),
            error_pairs(&[("message_parts.0.filename", "invalid")])
        );
        assert_eq!(
            errors_of(parts(
                json!([{"content_type": "text/plain", "disposition": "form-data"}])
            )),
            error_pairs(&[("message_parts.0.disposition", "invalid")])
        );
        let ok = parts(json!([{"content_type": "TEXT/html; charset=utf-8", "content": "<p>", "disposition": "Inline"}])).unwrap();
        assert_eq!(ok.message_parts[0].disposition, "inline");
        assert_eq!(ok.message_parts[0].filename, None);
    }

    #[test]
    fn null_optionals_are_absent() {
        let req = SendRequest::parse(&send(json!({
            "context": null, "cc": null, "headers": null, "dry_run": null, "from_email": "", "idempotency_key": null
        })))
        .unwrap();
        assert!(req.context.is_empty() && req.cc.is_empty() && !req.dry_run);
        assert_eq!(req.from_email, None);
    }

    #[test]
    fn message_part_round_trips_through_serde() {
        let part: MessagePart =
            serde_json::from_value(json!({"content_type": "text/plain", "content": "x"})).unwrap();
        assert_eq!(part.disposition, "attachment");
        assert_eq!(
            serde_json::to_value(&part).unwrap(),
            json!({"content_type": "text/plain", "content": "x", "disposition": "attachment"})
        );
    }

    #[test]
    fn required_context_checks() {
        let required =
            json!(["reset_url", {"name": "name", "description": "who"}, {"name": "code"}, "count"]);
        let context = json!({"reset_url": "", "name": null, "count": 0})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            missing_required_context(&required, &context),
            vec!["reset_url", "name", "code"]
        );
        assert!(missing_required_context(&json!(null), &context).is_empty());
        assert_eq!(
            required_context_names(&required),
            vec!["reset_url", "name", "code", "count"]
        );
    }

    #[test]
    fn template_upsert_defaults() {
        let upsert =
            TemplateUpsert::parse(&json!({"name": "Welcome", "subject": "Hi {{ name }}"})).unwrap();
        assert_eq!(upsert.subject, "Hi {{ name }}");
        assert!(upsert.is_active);
        assert_eq!(upsert.required_context, json!([]));
        assert_eq!(upsert.example_context, json!({}));
        assert_eq!(upsert.default_sender_id, "");
    }

    #[test]
    fn template_upsert_reports_each_bad_type() {
        let body = json!({
            "name": 5,
            "subject": ["x"],
            "description": 1,
            "required_context": "reset_url",
            "example_context": [],
            "is_active": "yes",
            "default_sender_id": "not a slug"
        });
        assert_eq!(
            errors_of(TemplateUpsert::parse(&body)),
            error_pairs(&[
                ("default_sender_id", "invalid"),
                ("description", "invalid"),
                ("example_context", "invalid"),
                ("is_active", "invalid"),
                ("name", "invalid"),
                ("required_context", "invalid"),
                ("subject", "invalid"),
            ])
        );
        assert_eq!(
            errors_of(TemplateUpsert::parse(
                &json!({"name": "n".repeat(256), "subject": ""})
            )),
            error_pairs(&[("name", "too_long"), ("subject", "required")])
        );
        assert_eq!(
            errors_of(TemplateUpsert::parse(
                &json!({"name": "n", "subject": "s", "required_context": [1]})
            )),
            error_pairs(&[("required_context", "invalid")])
        );
    }

    #[test]
    fn template_upsert_rejects_broken_templates() {
        let body = json!({"name": "n", "subject": "{{ a", "html_body": "{% if x %}", "text_body": "{{ ok }}"});
        assert_eq!(
            errors_of(TemplateUpsert::parse(&body)),
            error_pairs(&[
                ("html_body", "invalid_template"),
                ("subject", "invalid_template")
            ])
        );
    }

    fn senders() -> Vec<SenderIdentity> {
        vec![
            SenderIdentity {
                id: "default".into(),
                email: "noreply@example.com".into(),
            },
            SenderIdentity {
                id: "support".into(),
                email: "Acme Support <support@example.com>".into(),
            },
        ]
    }

    #[test]
    fn sender_precedence() {
        let s = senders();
        assert_eq!(
            resolve_sender(Some("support"), "default", "default", &s)
                .unwrap()
                .id,
            "support"
        );
        assert_eq!(
            resolve_sender(None, "support", "default", &s).unwrap().id,
            "support"
        );
        assert_eq!(
            resolve_sender(Some(""), "", "default", &s).unwrap().id,
            "default"
        );
        assert_eq!(
            resolve_sender(Some("other"), "", "default", &s),
            Err("not_configured")
        );
        assert_eq!(resolve_sender(None, "", "", &s), Err("not_configured"));
        assert_eq!(
            resolve_sender(None, "", "default", &[]),
            Err("not_configured")
        );
    }

    #[test]
    fn senders_put_defaults_to_first() {
        let (list, default) = parse_senders(&json!({"senders": [
            {"id": "support", "email": "Acme <support@example.com>"},
            {"id": "billing", "email": "billing@example.com"}
        ]}))
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].email, "Acme <support@example.com>");
        assert_eq!(default, "support");
        let (_, default) = parse_senders(&json!({"sender_emails": [{"id": "a", "email": "a@example.com"}, {"id": "b", "email": "b@example.com"}], "default_sender_id": "b"})).unwrap();
        assert_eq!(default, "b");
        let (list, default) = parse_senders(&json!({"senders": []})).unwrap();
        assert!(list.is_empty() && default.is_empty());
    }

    #[test]
    fn senders_put_errors() {
        assert_eq!(
            errors_of(parse_senders(
                &json!({"senders": [{"id": "a", "email": "a@example.com"}], "default_sender_id": "zzz"})
            )),
            error_pairs(&[("default_sender_id", "not_configured")])
        );
        assert_eq!(
            errors_of(parse_senders(&json!({"senders": [
                {"id": "a", "email": "a@example.com"},
                {"id": "a", "email": "nope"},
                {"email": "c@example.com"},
                {"id": "bad id", "email": "d@example.com"},
                7
            ]}))),
            error_pairs(&[
                ("senders.1.email", "invalid"),
                ("senders.1.id", "duplicate"),
                ("senders.2.id", "required"),
                ("senders.3.id", "invalid"),
                ("senders.4", "invalid"),
            ])
        );
        assert_eq!(
            errors_of(parse_senders(&json!({}))),
            error_pairs(&[("senders", "required")])
        );
        assert_eq!(
            errors_of(parse_senders(&json!({"senders": {}}))),
            error_pairs(&[("senders", "invalid")])
        );
    }
}
