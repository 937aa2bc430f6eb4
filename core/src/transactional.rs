//! Transactional email rules (facts §3.2, §4.6, §4.7): request validation for
//! `POST /api/transactional/send` and template upserts, the delivery decision,
//! required-context checks, sender selection and message statuses.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::fields::{self, add, check, is_blank, py_strip, FieldErrors};
use crate::reasons::Reason;
use crate::render;
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

    /// `{"allowed": .., "reason": ..}` as in the dry-run response; the reason is `""` when
    /// the send is allowed, as the original answers.
    pub fn to_json(&self) -> Value {
        json!({"allowed": self.allowed, "reason": self.reason.unwrap_or("")})
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
// Send request (the original's `validate_transactional_send_payload`)
// ---------------------------------------------------------------------------

/// Longest idempotency key we store (the original's column; it answers a 500 past it).
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
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

/// The `audience`/`client` scope fields as given (checked by [`fields::scope_errors`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScopeFields {
    pub audience: Option<Value>,
    pub client: Option<Value>,
}

/// A validated `POST /api/transactional/send` body.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    /// Normalized (trimmed, lowercased) recipient.
    pub email: String,
    /// The recipient as the client wrote it, stripped.
    pub raw_email: String,
    /// Stripped; any string (a key that is no template's answers 404 `not_found`).
    pub template_key: String,
    pub idempotency_key: Option<String>,
    pub context: Map<String, Value>,
    pub metadata: Map<String, Value>,
    pub category_tag: Option<String>,
    /// The scope fields, checked only when a `category_tag` is given.
    pub scope: ScopeFields,
    /// A sender id (not an address).
    pub from_email: Option<String>,
    pub reply_to: Option<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// In the order given.
    pub headers: Vec<(String, String)>,
    pub message_parts: Vec<MessagePart>,
    pub dry_run: bool,
}

impl SendRequest {
    /// Validates a send body field by field as the original does, collecting every error
    /// in its order. The scope (`audience`, `client`) is checked afterwards by the caller,
    /// only when a `category_tag` is given and no other field failed.
    pub fn parse(body: &Value) -> Result<SendRequest, FieldErrors> {
        let Some(body) = body.as_object() else {
            return Err(FieldErrors::one("body", Reason::MustBeObject));
        };
        let mut errors = FieldErrors::new();

        let raw_email = check(&mut errors, "email", fields::email(body.get("email")));
        let template_key = check(
            &mut errors,
            "template_key",
            fields::required_string(body.get("template_key")),
        );
        let idempotency_key = check(
            &mut errors,
            "idempotency_key",
            fields::optional_non_empty_string(body.get("idempotency_key")).and_then(|key| {
                key.map(|k| fields::max_chars(k, MAX_IDEMPOTENCY_KEY_LEN))
                    .transpose()
            }),
        )
        .flatten();
        let mut request = parse_rest(body, &mut errors, |_| {});
        request.raw_email = raw_email.unwrap_or_default();
        request.email = email::normalize(&request.raw_email);
        request.template_key = template_key.unwrap_or_default();
        request.idempotency_key = idempotency_key;
        request.dry_run = check(
            &mut errors,
            "dry_run",
            fields::optional_bool(body.get("dry_run"), false),
        )
        .unwrap_or(false);
        fields::finish(errors, request)
    }

    /// What is stored as the message's metadata (and sent in the queue payload): the
    /// client's metadata, then each delivery option that was given, in the original's order
    /// (a key the client's metadata already has keeps its place and takes the new value).
    pub fn message_metadata(&self) -> Map<String, Value> {
        self.message_metadata_with(Map::new())
    }

    /// [`Self::message_metadata`] with `extra` (a list send's member keys) laid over the
    /// client's metadata and category, before the delivery options, in the original's order.
    pub fn message_metadata_with(&self, extra: Map<String, Value>) -> Map<String, Value> {
        let mut metadata = self.metadata.clone();
        if let Some(tag) = &self.category_tag {
            metadata.insert("category_tag".into(), Value::from(tag.as_str()));
        }
        metadata.extend(extra);
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

/// The fields every send body shares after its recipient, key and idempotency key, in the
/// original's order: `context`, `metadata`, `category_tag`, then whatever `between` parses
/// (a list send's member fields), then the delivery options.
fn parse_rest(
    body: &Map<String, Value>,
    errors: &mut FieldErrors,
    between: impl FnOnce(&mut FieldErrors),
) -> SendRequest {
    let context = check(
        errors,
        "context",
        fields::optional_object(body.get("context")),
    );
    let metadata = check(
        errors,
        "metadata",
        fields::optional_object(body.get("metadata")),
    );
    let category_tag = check(
        errors,
        "category_tag",
        fields::optional_non_empty_string(body.get("category_tag")),
    )
    .flatten();
    between(errors);
    SendRequest {
        email: String::new(),
        raw_email: String::new(),
        template_key: String::new(),
        idempotency_key: None,
        context: context.unwrap_or_default(),
        metadata: metadata.unwrap_or_default(),
        category_tag,
        scope: ScopeFields {
            audience: body.get("audience").cloned(),
            client: body.get("client").cloned(),
        },
        from_email: sender_id(body.get("from_email"), errors),
        reply_to: optional_address(body.get("reply_to"), "reply_to", errors),
        cc: address_list(body.get("cc"), "cc", errors),
        bcc: address_list(body.get("bcc"), "bcc", errors),
        headers: headers(body.get("headers"), errors),
        message_parts: message_parts(body.get("message_parts"), errors),
        dry_run: false,
    }
}

/// How a list send with `members` syncs the stored list first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberSync {
    /// Upsert the given members, keep the others.
    Upsert,
    /// Upsert the given members and (with `remove_absent_members`) remove the others.
    Reconcile,
}

/// A validated recipient-list send body (`POST /api/recipient-lists/{key}/transactional-send`
/// and the transient variant): one message per active member, keyed
/// `<idempotency_key>:<source_object_key>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListSendRequest {
    /// The shared send fields (`email` and `idempotency_key` unset: each member is a
    /// recipient with a key of its own).
    pub send: SendRequest,
    /// Required here: it keys every member's message.
    pub idempotency_key: String,
    /// The members given, unchecked (the list sync and the transient parser check them).
    pub members: Option<Vec<Value>>,
    pub member_sync: MemberSync,
    pub remove_absent_members: bool,
    pub list: Option<Map<String, Value>>,
}

impl ListSendRequest {
    /// Validates as the original's `validate_recipient_list_send_payload` (the caller checks
    /// the `audience`/`client` scope first).
    pub fn parse(body: &Value) -> Result<ListSendRequest, FieldErrors> {
        let Some(body) = body.as_object() else {
            return Err(FieldErrors::one("body", Reason::MustBeObject));
        };
        let mut errors = FieldErrors::new();
        let template_key = check(
            &mut errors,
            "template_key",
            fields::required_string(body.get("template_key")),
        );
        let idempotency_key = check(
            &mut errors,
            "idempotency_key",
            fields::required_string(body.get("idempotency_key"))
                .and_then(|k| fields::max_chars(k, MAX_IDEMPOTENCY_KEY_LEN)),
        );
        let mut members = None;
        let mut member_sync = MemberSync::Upsert;
        let mut remove_absent_members = true;
        let mut list = None;
        let mut send = parse_rest(body, &mut errors, |errors| {
            members = match body.get("members") {
                None | Some(Value::Null) => None,
                Some(Value::Array(items)) => Some(items.clone()),
                Some(_) => {
                    add(errors, "members", Reason::MustBeList);
                    None
                }
            };
            let default_sync = if body.get("members").is_some_and(|m| !m.is_null()) {
                MemberSync::Reconcile
            } else {
                MemberSync::Upsert
            };
            member_sync = match body.get("member_sync") {
                None => default_sync,
                Some(Value::String(s)) if s == "upsert" => MemberSync::Upsert,
                Some(Value::String(s)) if s == "reconcile" => MemberSync::Reconcile,
                Some(_) => {
                    add(errors, "member_sync", Reason::Invalid);
                    default_sync
                }
            };
            remove_absent_members = match body.get("remove_absent_members") {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    add(errors, "remove_absent_members", Reason::MustBeBoolean);
                    true
                }
            };
            list = match body.get("list") {
                None | Some(Value::Null) => None,
                Some(Value::Object(m)) => Some(m.clone()),
                Some(_) => {
                    add(errors, "list", Reason::MustBeObject);
                    None
                }
            };
        });
        send.template_key = template_key.unwrap_or_default();
        fields::finish(
            errors,
            ListSendRequest {
                send,
                idempotency_key: idempotency_key.unwrap_or_default(),
                members,
                member_sync,
                remove_absent_members,
                list,
            },
        )
    }
}

/// The original's `normalize_sender_id` for `from_email`: blank → none; not a string →
/// `must_be_string`; not a slug once stripped (an address, say) → `invalid`.
fn sender_id(value: Option<&Value>, errors: &mut FieldErrors) -> Option<String> {
    if is_blank(value) {
        return None;
    }
    let id = check(
        errors,
        "from_email",
        fields::string(value.expect("not blank")).map(py_strip),
    )?;
    if slug::is_slug(id) {
        Some(id.to_owned())
    } else {
        add(errors, "from_email", Reason::Invalid);
        None
    }
}

/// `reply_to`: blank → none; a blank or non-string → `must_be_non_empty_string`; an
/// address that does not validate → `invalid`.
fn optional_address(
    value: Option<&Value>,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<String> {
    let address = check(errors, field, fields::optional_non_empty_string(value))??;
    if email::is_valid(&address) {
        Some(address)
    } else {
        add(errors, field, Reason::Invalid);
        None
    }
}

/// `cc`/`bcc`: blank → none; one address or a list (else `must_be_list`); each item a
/// non-empty string (`<field>.N: must_be_non_empty_string`) that validates (`invalid`).
fn address_list(value: Option<&Value>, field: &str, errors: &mut FieldErrors) -> Vec<String> {
    if is_blank(value) {
        return Vec::new();
    }
    let items: Vec<&Value> = match value.expect("not blank") {
        single @ Value::String(_) => vec![single],
        Value::Array(items) => items.iter().collect(),
        _ => {
            add(errors, field, Reason::MustBeList);
            return Vec::new();
        }
    };
    let mut addresses = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let item_field = format!("{field}.{i}");
        let Some(address) = check(errors, &item_field, fields::non_empty_string(item)) else {
            continue;
        };
        if email::is_valid(&address) {
            addresses.push(address);
        } else {
            add(errors, item_field, Reason::Invalid);
        }
    }
    addresses
}

fn headers(value: Option<&Value>, errors: &mut FieldErrors) -> Vec<(String, String)> {
    if is_blank(value) {
        return Vec::new();
    }
    let Some(entries) = value.and_then(Value::as_object) else {
        add(errors, "headers", Reason::MustBeObject);
        return Vec::new();
    };
    if entries.len() > MAX_HEADERS {
        add(errors, "headers", Reason::TooMany);
        return Vec::new();
    }
    let mut headers = Vec::with_capacity(entries.len());
    for (raw_name, value) in entries {
        let name = py_strip(raw_name);
        let field = format!("headers.{}", if name.is_empty() { raw_name } else { name });
        if !HEADER_NAME_RE.is_match(name) {
            add(errors, field, Reason::InvalidName);
        } else if RESERVED_HEADERS
            .iter()
            .any(|r| r.eq_ignore_ascii_case(name))
        {
            add(errors, field, Reason::Reserved);
        } else {
            match value.as_str() {
                Some(v) if !v.contains(['\r', '\n']) => {
                    match headers
                        .iter_mut()
                        .find(|(n, _): &&mut (String, String)| n == name)
                    {
                        Some(entry) => entry.1 = v.to_owned(),
                        None => headers.push((name.to_owned(), v.to_owned())),
                    }
                }
                _ => add(errors, field, Reason::InvalidValue),
            }
        }
    }
    headers
}

fn message_parts(value: Option<&Value>, errors: &mut FieldErrors) -> Vec<MessagePart> {
    if is_blank(value) {
        return Vec::new();
    }
    let Some(items) = value.and_then(Value::as_array) else {
        add(errors, "message_parts", Reason::MustBeList);
        return Vec::new();
    };
    if items.len() > MAX_MESSAGE_PARTS {
        add(errors, "message_parts", Reason::TooMany);
        return Vec::new();
    }
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| message_part(item, &format!("message_parts.{i}"), errors))
        .collect()
}

/// The main type Python's `Message.get_content_type()` reads from a header value: the part
/// before `;`, lowercased; anything without exactly one `/` reads as `text/plain`.
fn content_main_type(value: &str) -> String {
    let ctype = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_lowercase();
    if ctype.matches('/').count() != 1 {
        return "text".to_owned();
    }
    ctype.split('/').next().unwrap_or_default().to_owned()
}

fn message_part(item: &Value, prefix: &str, errors: &mut FieldErrors) -> Option<MessagePart> {
    let Some(part) = item.as_object() else {
        add(errors, prefix, Reason::MustBeObject);
        return None;
    };
    let before = errors.len();
    let content_type_field = format!("{prefix}.content_type");
    let content_type = check(
        errors,
        &content_type_field,
        fields::required_string(part.get("content_type")),
    )?;
    if content_main_type(&content_type) != "text" || content_type.contains(['\r', '\n']) {
        add(errors, content_type_field, Reason::Unsupported);
        return None;
    }
    let content = match part.get("content") {
        Some(Value::String(s)) if s.chars().count() > MAX_PART_CONTENT_CHARS => {
            add(errors, format!("{prefix}.content"), Reason::TooLarge);
            String::new()
        }
        Some(Value::String(s)) => s.clone(),
        _ => {
            add(errors, format!("{prefix}.content"), Reason::MustBeString);
            String::new()
        }
    };
    let filename = match part.get("filename") {
        v if is_blank(v) => None,
        Some(Value::String(s)) if !s.contains(['/', '\\', '\r', '\n', '"']) => Some(s.clone()),
        _ => {
            add(errors, format!("{prefix}.filename"), Reason::Invalid);
            None
        }
    };
    let disposition = match part.get("disposition") {
        v if is_blank(v) => default_disposition(),
        Some(Value::String(s)) if s == "attachment" || s == "inline" => s.clone(),
        _ => {
            add(errors, format!("{prefix}.disposition"), Reason::Invalid);
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

/// Names declared in `required_context` (names, or `{name, description}` objects whose
/// name is turned into text as Python's `str()` would), stripped, blanks skipped.
pub fn required_context_names(required_context: &Value) -> Vec<String> {
    let Some(items) = required_context.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::String(name) => Some(py_strip(name).to_owned()),
            Value::Object(obj) => match obj.get("name") {
                None | Some(Value::Null) | Some(Value::Bool(false)) => None,
                Some(Value::String(s)) => Some(py_strip(s).to_owned()),
                Some(other) => Some(render::py_str(other)),
            },
            _ => None,
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// Required names absent from `context` or given as null or "". The API reports each as
/// `context.<name>: required`.
pub fn missing_required_context(
    required_context: &Value,
    context: &Map<String, Value>,
) -> Vec<String> {
    required_context_names(required_context)
        .into_iter()
        .filter(|name| is_blank(context.get(name)))
        .collect()
}

/// `context.<name>: required` for each missing name, in `required_context` order.
pub fn required_context_errors(
    required_context: &Value,
    context: &Map<String, Value>,
) -> FieldErrors {
    let mut errors = FieldErrors::new();
    for name in missing_required_context(required_context, context) {
        errors.insert(format!("context.{name}"), Reason::Required);
    }
    errors
}

// ---------------------------------------------------------------------------
// Template upsert (the original's `validate_transactional_template_payload`)
// ---------------------------------------------------------------------------

/// Longest template key, name and subject we store (the original's columns; it answers a
/// 500 past them).
pub const MAX_TEMPLATE_KEY_LEN: usize = 120;
const MAX_TEMPLATE_TEXT_LEN: usize = 255;

/// A validated `PUT /api/transactional/templates/{key}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateUpsert {
    /// Stripped.
    pub name: String,
    /// Stripped.
    pub subject: String,
    /// Stripped.
    pub description: String,
    pub html_body: String,
    pub text_body: String,
    /// A list (names or `{name, description}` objects), stored as given.
    pub required_context: Value,
    /// An object.
    pub example_context: Value,
    pub is_active: bool,
    /// Ours: HTML-escape context values when rendering (default false, as the original).
    pub autoescape: bool,
    /// A sender id or "" (the web layer checks it against the client's senders).
    pub default_sender_id: String,
}

impl TemplateUpsert {
    /// Validates field types as the original does, then (ours) that each template field is
    /// valid Django template syntax, collecting every field error in order.
    pub fn parse(body: &Value) -> Result<TemplateUpsert, FieldErrors> {
        let Some(body) = body.as_object() else {
            return Err(FieldErrors::one("body", Reason::MustBeObject));
        };
        let mut errors = FieldErrors::new();
        let text = |value: Result<String, Reason>| {
            value.and_then(|s| fields::max_chars(s, MAX_TEMPLATE_TEXT_LEN))
        };
        let name = check(
            &mut errors,
            "name",
            text(fields::required_string(body.get("name"))),
        );
        let subject = check(
            &mut errors,
            "subject",
            text(fields::required_string(body.get("subject"))),
        );
        let mut strings =
            [("description", ""), ("html_body", ""), ("text_body", "")].map(|(field, default)| {
                match body.get(field) {
                    None => Some(default.to_owned()),
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => {
                        add(&mut errors, field, Reason::MustBeString);
                        None
                    }
                }
            });
        let [description, html_body, text_body] = std::mem::take(&mut strings);
        let required_context = check(
            &mut errors,
            "required_context",
            fields::optional_list(body.get("required_context")),
        );
        let example_context = check(
            &mut errors,
            "example_context",
            fields::optional_object(body.get("example_context")),
        );
        let is_active = check(
            &mut errors,
            "is_active",
            body.get("is_active").map_or(Ok(true), fields::boolean),
        );
        let autoescape = check(
            &mut errors,
            "autoescape",
            body.get("autoescape").map_or(Ok(false), fields::boolean),
        );
        let default_sender_id = check(
            &mut errors,
            "default_sender_id",
            fields::optional_non_empty_string(body.get("default_sender_id")).and_then(
                |id| match id {
                    Some(id) if !slug::is_slug(&id) => Err(Reason::Invalid),
                    id => Ok(id.unwrap_or_default()),
                },
            ),
        );

        // Ours: each template field must compile, so a broken template is refused here
        // instead of failing every send.
        for (field, source) in [
            ("subject", &subject),
            ("html_body", &html_body),
            ("text_body", &text_body),
        ] {
            if let Some(source) = source {
                if render::check_syntax(source).is_err() {
                    add(&mut errors, field, Reason::InvalidTemplate);
                }
            }
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(TemplateUpsert {
            name: name.unwrap_or_default(),
            subject: subject.unwrap_or_default(),
            description: py_strip(&description.unwrap_or_default()).to_owned(),
            html_body: html_body.unwrap_or_default(),
            text_body: text_body.unwrap_or_default(),
            required_context: Value::Array(required_context.unwrap_or_default()),
            example_context: Value::Object(example_context.unwrap_or_default()),
            is_active: is_active.unwrap_or(true),
            autoescape: autoescape.unwrap_or(false),
            default_sender_id: default_sender_id.unwrap_or_default(),
        })
    }
}

// ---------------------------------------------------------------------------
// Senders (the original's `validate_sender_policy_payload`, `resolve_sender_email`)
// ---------------------------------------------------------------------------

/// A configured sender of a client: an id the API refers to and the address
/// (`addr` or `Display Name <addr>`) it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderIdentity {
    pub id: String,
    pub email: String,
}

/// Picks the sender: the request's id, else the template's default, else the client's
/// default. The chosen id must be configured, else `not_configured`.
pub fn resolve_sender(
    requested: Option<&str>,
    template_default: &str,
    client_default: &str,
    senders: &[SenderIdentity],
) -> Result<SenderIdentity, Reason> {
    let id = [
        requested.unwrap_or_default(),
        template_default,
        client_default,
    ]
    .into_iter()
    .map(str::trim)
    .find(|id| !id.is_empty())
    .ok_or(Reason::NotConfigured)?;
    senders
        .iter()
        .find(|sender| sender.id == id)
        .cloned()
        .ok_or(Reason::NotConfigured)
}

/// Validates `PUT /api/client/senders` as the original: `senders` (or `sender_emails`) a
/// non-empty list of `{id, email}` with unique slug ids and valid addresses, and
/// `default_sender_id` (the first sender when blank) one of them.
pub fn parse_senders(body: &Value) -> Result<(Vec<SenderIdentity>, String), FieldErrors> {
    let Some(body) = body.as_object() else {
        return Err(FieldErrors::one("body", Reason::MustBeObject));
    };
    let mut errors = FieldErrors::new();
    let list = match body.get("senders") {
        Some(v) => Some(v),
        None => body.get("sender_emails"),
    };
    let items: &[Value] = match check(&mut errors, "senders", fields::non_empty_list(list)) {
        Some(items) => items,
        None => &[],
    };

    let mut senders: Vec<SenderIdentity> = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("senders.{i}");
        let Some(item) = item.as_object() else {
            add(&mut errors, prefix, Reason::MustBeObject);
            continue;
        };
        let Some(id) = check(
            &mut errors,
            &format!("{prefix}.id"),
            fields::slug(item.get("id")),
        ) else {
            continue;
        };
        if !seen.insert(id.clone()) {
            add(&mut errors, format!("{prefix}.id"), Reason::Duplicate);
            continue;
        }
        let email_field = format!("{prefix}.email");
        let Some(address) = check(
            &mut errors,
            &email_field,
            fields::required_string(item.get("email")),
        ) else {
            continue;
        };
        if email::parse_sender(&address).is_none() {
            add(&mut errors, email_field, Reason::Invalid);
            continue;
        }
        senders.push(SenderIdentity { id, email: address });
    }

    let raw_default = body.get("default_sender_id");
    let default_sender_id = if is_blank(raw_default) && !senders.is_empty() {
        Some(senders[0].id.clone())
    } else {
        match raw_default {
            Some(Value::String(s)) if !py_strip(s).is_empty() => {
                let id = py_strip(s).to_owned();
                if !slug::is_slug(&id) {
                    add(&mut errors, "default_sender_id", Reason::Invalid);
                }
                Some(id)
            }
            _ => {
                add(&mut errors, "default_sender_id", Reason::Required);
                None
            }
        }
    };
    if let Some(id) = &default_sender_id {
        if !senders.iter().any(|s| &s.id == id) {
            add(&mut errors, "default_sender_id", Reason::NotConfigured);
        }
    }
    fields::finish(errors, (senders, default_sender_id.unwrap_or_default()))
}
