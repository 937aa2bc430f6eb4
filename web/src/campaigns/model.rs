//! A campaign as the API reads and writes it (facts §4.8): the PUT body's parser, with the
//! original's reason codes, and the row's JSON payload (the original's keys in its order,
//! then ours).

use chrono::{DateTime, Utc};
use datamailer_core::fields::{self, FieldErrors};
use datamailer_core::reasons::Reason;
use datamailer_core::slug::slugify;
use datamailer_core::time::iso_opt;
use serde_json::{json, Map, Value};

/// The columns [`CampaignRow`] reads.
pub const COLUMNS: &str = "id, external_key, subject, preview_text, html_body, text_body, status,
    scheduled_at, sent_at, category_tag, recipient_list_key, include_tags, exclude_tags, metadata,
    recipient_count, sent_count, skipped_count, failed_count, delivered_count, unique_open_count,
    open_count, unique_click_count, click_count, unsubscribe_count, bounce_count, complaint_count,
    from_sender_id, queued_at, snapshot_started_at, snapshot_finished_at, sending_started_at,
    paused_at, pause_reason, cancelled_at, failed_at, failure_reason, batch_count, created_at,
    updated_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CampaignRow {
    pub id: i64,
    pub external_key: String,
    pub subject: String,
    pub preview_text: String,
    pub html_body: String,
    pub text_body: String,
    pub status: String,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub category_tag: String,
    pub recipient_list_key: String,
    pub include_tags: Value,
    pub exclude_tags: Value,
    pub metadata: Value,
    pub recipient_count: i32,
    pub sent_count: i32,
    pub skipped_count: i32,
    pub failed_count: i32,
    pub delivered_count: i32,
    pub unique_open_count: i32,
    pub open_count: i32,
    pub unique_click_count: i32,
    pub click_count: i32,
    pub unsubscribe_count: i32,
    pub bounce_count: i32,
    pub complaint_count: i32,
    pub from_sender_id: String,
    pub queued_at: Option<DateTime<Utc>>,
    pub snapshot_started_at: Option<DateTime<Utc>>,
    pub snapshot_finished_at: Option<DateTime<Utc>>,
    pub sending_started_at: Option<DateTime<Utc>>,
    pub paused_at: Option<DateTime<Utc>>,
    pub pause_reason: String,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub failure_reason: String,
    pub batch_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CampaignRow {
    pub fn payload(&self, audience: &str, client: &str) -> Value {
        json!({
            "external_key": self.external_key,
            "audience": audience,
            "client": client,
            "subject": self.subject,
            "preview_text": self.preview_text,
            "html_body": self.html_body,
            "text_body": self.text_body,
            "status": self.status,
            "scheduled_at": iso_opt(self.scheduled_at),
            "sent_at": iso_opt(self.sent_at),
            "category_tag": self.category_tag,
            "recipient_list_key": self.recipient_list_key,
            "include_tags": self.include_tags,
            "exclude_tags": self.exclude_tags,
            "metadata": self.metadata,
            "recipient_count": self.recipient_count,
            "sent_count": self.sent_count,
            "skipped_count": self.skipped_count,
            "delivered_count": self.delivered_count,
            "unique_open_count": self.unique_open_count,
            "open_count": self.open_count,
            "unique_click_count": self.unique_click_count,
            "click_count": self.click_count,
            "unsubscribe_count": self.unsubscribe_count,
            "bounce_count": self.bounce_count,
            "complaint_count": self.complaint_count,
            "created_at": iso_opt(Some(self.created_at)),
            "updated_at": iso_opt(Some(self.updated_at)),
            // Ours, after the original's keys.
            "from": self.from_sender_id,
            "failed_count": self.failed_count,
            "paused": self.paused_at.is_some(),
            "pause_reason": self.pause_reason,
            "queued_at": iso_opt(self.queued_at),
            "snapshot_started_at": iso_opt(self.snapshot_started_at),
            "snapshot_finished_at": iso_opt(self.snapshot_finished_at),
            "sending_started_at": iso_opt(self.sending_started_at),
            "paused_at": iso_opt(self.paused_at),
            "cancelled_at": iso_opt(self.cancelled_at),
            "failed_at": iso_opt(self.failed_at),
            "failure_reason": self.failure_reason,
        })
    }
}

/// The campaign's external key: required, no `/`, at most 180 characters.
pub fn external_key(raw: &str) -> Result<String, FieldErrors> {
    let key = fields::py_strip(raw);
    if key.is_empty() {
        return Err(FieldErrors::one("external_key", Reason::Required));
    }
    if key.contains('/') || key.chars().count() > 180 {
        return Err(FieldErrors::one("external_key", Reason::Invalid));
    }
    Ok(key.to_string())
}

/// A PUT body, checked.
#[derive(Debug, Clone)]
pub struct CampaignInput {
    pub subject: String,
    pub preview_text: String,
    pub html_body: String,
    pub text_body: String,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub category_tag: String,
    pub recipient_list_key: String,
    pub include_tags: Vec<String>,
    pub exclude_tags: Vec<String>,
    pub metadata: Map<String, Value>,
    /// Ours: a sender id of the client (checked against its senders by the handler).
    pub from: String,
}

fn blank(value: Option<&Value>) -> bool {
    matches!(value, None | Some(Value::Null)) || value == Some(&Value::String(String::new()))
}

fn optional_text(
    errors: &mut FieldErrors,
    body: &Map<String, Value>,
    field: &str,
    max: Option<usize>,
    strip: bool,
) -> String {
    let value = body.get(field);
    if blank(value) {
        return String::new();
    }
    let Some(s) = value.and_then(Value::as_str) else {
        errors.insert(field, Reason::MustBeString);
        return String::new();
    };
    let s = if strip { fields::py_strip(s) } else { s };
    if max.is_some_and(|max| s.chars().count() > max) {
        errors.insert(field, Reason::TooLong);
    }
    s.to_string()
}

/// Sorted, deduplicated, slugified, non-empty (facts §1.4).
fn tag_filter(errors: &mut FieldErrors, body: &Map<String, Value>, field: &str) -> Vec<String> {
    let value = body.get(field);
    if blank(value) {
        return Vec::new();
    }
    let Some(items) = value.and_then(Value::as_array) else {
        errors.insert(field, Reason::MustBeList);
        return Vec::new();
    };
    let mut tags: Vec<String> = items
        .iter()
        .filter_map(|v| v.as_str().map(slugify))
        .filter(|t| !t.is_empty())
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

pub fn parse_input(body: &Map<String, Value>) -> Result<CampaignInput, FieldErrors> {
    let mut errors = FieldErrors::new();
    let subject = match body
        .get("subject")
        .and_then(Value::as_str)
        .map(fields::py_strip)
    {
        Some(s) if !s.is_empty() => {
            if s.chars().count() > 255 {
                errors.insert("subject", Reason::TooLong);
            }
            s.to_string()
        }
        _ => {
            errors.insert("subject", Reason::Required);
            String::new()
        }
    };
    let preview_text = optional_text(&mut errors, body, "preview_text", Some(255), true);
    let html_body = optional_text(&mut errors, body, "html_body", None, false);
    let text_body = optional_text(&mut errors, body, "text_body", None, false);
    if fields::py_strip(&html_body).is_empty() && fields::py_strip(&text_body).is_empty() {
        errors.insert("body", Reason::Required);
    }
    let scheduled_at = match body.get("scheduled_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => match fields::parse_iso_datetime(s) {
            Some(at) => Some(at),
            None => {
                errors.insert("scheduled_at", Reason::Invalid);
                None
            }
        },
        Some(_) => {
            errors.insert("scheduled_at", Reason::MustBeString);
            None
        }
    };
    let include_tags = tag_filter(&mut errors, body, "include_tags");
    let exclude_tags = tag_filter(&mut errors, body, "exclude_tags");
    let category_tag = match body.get("category_tag") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.is_empty() => String::new(),
        Some(Value::String(s)) => {
            let tag = slugify(s);
            if tag.is_empty() {
                errors.insert("category_tag", Reason::Invalid);
            } else if tag.chars().count() > 80 {
                errors.insert("category_tag", Reason::TooLong);
            }
            tag
        }
        Some(_) => {
            errors.insert("category_tag", Reason::MustBeString);
            String::new()
        }
    };
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::String(s)) if s.is_empty() => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            errors.insert("metadata", Reason::MustBeObject);
            Map::new()
        }
    };
    let recipient_list_key = match body.get("recipient_list_key") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.is_empty() => String::new(),
        Some(Value::String(s)) => {
            let key = fields::py_strip(s);
            if key.is_empty() {
                errors.insert("recipient_list_key", Reason::Invalid);
            } else if key.chars().count() > 255 {
                errors.insert("recipient_list_key", Reason::TooLong);
            }
            key.to_string()
        }
        Some(_) => {
            errors.insert("recipient_list_key", Reason::MustBeString);
            String::new()
        }
    };
    let from = optional_text(&mut errors, body, "from", Some(80), true);
    fields::finish(
        errors,
        CampaignInput {
            subject,
            preview_text,
            html_body,
            text_body,
            scheduled_at,
            category_tag,
            recipient_list_key,
            include_tags,
            exclude_tags,
            metadata,
            from,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<CampaignInput, FieldErrors> {
        parse_input(v.as_object().unwrap())
    }

    #[test]
    fn the_original_reason_codes() {
        let e = parse(json!({})).unwrap_err();
        assert_eq!(e.get("subject"), Some("required"));
        assert_eq!(e.get("body"), Some("required"));
        let e = parse(json!({"subject": "x", "text_body": "t", "preview_text": 5,
            "scheduled_at": "soon", "include_tags": "a", "category_tag": "!!", "metadata": [],
            "recipient_list_key": "  "}))
        .unwrap_err();
        assert_eq!(e.get("preview_text"), Some("must_be_string"));
        assert_eq!(e.get("scheduled_at"), Some("invalid"));
        assert_eq!(e.get("include_tags"), Some("must_be_list"));
        assert_eq!(e.get("category_tag"), Some("invalid"));
        assert_eq!(e.get("metadata"), Some("must_be_object"));
        assert_eq!(e.get("recipient_list_key"), Some("invalid"));
        let long = "x".repeat(256);
        assert_eq!(
            parse(json!({"subject": long, "text_body": "t"}))
                .unwrap_err()
                .get("subject"),
            Some("too_long")
        );
    }

    #[test]
    fn tags_are_slugified_sorted_and_deduplicated_and_strings_stripped() {
        let c = parse(json!({"subject": "  Hi ", "html_body": "<p>x</p>",
            "include_tags": ["B Tag", "a", "b-tag", ""], "category_tag": "Events News",
            "scheduled_at": "2030-01-02T03:04:05"}))
        .unwrap();
        assert_eq!(c.subject, "Hi");
        assert_eq!(c.include_tags, vec!["a", "b-tag"]);
        assert_eq!(c.category_tag, "events-news");
        assert_eq!(
            c.scheduled_at.unwrap().to_rfc3339(),
            "2030-01-02T03:04:05+00:00"
        );
    }

    #[test]
    fn external_keys() {
        assert_eq!(external_key(" march ").unwrap(), "march");
        assert_eq!(
            external_key(" ").unwrap_err().get("external_key"),
            Some("required")
        );
        assert_eq!(
            external_key("a/b").unwrap_err().get("external_key"),
            Some("invalid")
        );
        assert_eq!(
            external_key(&"k".repeat(181))
                .unwrap_err()
                .get("external_key"),
            Some("invalid")
        );
    }
}
