//! What one message of the `ses-webhooks` queue means for us: the event to record and the
//! facts its effects depend on (facts §3.7 "Processing", with its gaps fixed). The queue
//! carries three shapes, all accepted:
//!
//! * the `ses-webhooks` v1 contract (`POST /webhooks/ses` enqueues it);
//! * a raw SNS `Notification` envelope (SNS delivering to SQS, raw message delivery off);
//! * a bare SES event (raw message delivery on), keyed by a hash of its body, which every
//!   redelivery of the same event shares.
//!
//! An SES event type no one knows is kept as an `unknown` event with its reason; only a body
//! that is none of the three is refused (dead-lettered with the reason).

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::contracts::{ContractError, NotificationType, SesWebhookV1};
use crate::fields::parse_iso_datetime;
use crate::ses_events::{self, NormalizeError};

/// How a bounce counts (`bounceType`): only `Permanent` is hard; `Transient` (whatever its
/// subtype, `General` included) is soft; `Undetermined` is recorded and nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceClass {
    Hard,
    Soft,
    Undetermined,
}

impl BounceClass {
    pub fn of(bounce_type: Option<&str>) -> BounceClass {
        match bounce_type.map(str::to_ascii_lowercase).as_deref() {
            Some("permanent") => BounceClass::Hard,
            Some("transient") => BounceClass::Soft,
            _ => BounceClass::Undetermined,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BounceClass::Hard => "hard",
            BounceClass::Soft => "soft",
            BounceClass::Undetermined => "undetermined",
        }
    }
}

/// One event, ready for `ses_apply_events` (migration 0020).
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackEvent {
    /// The dedupe key: the SNS MessageId (contract, envelope) or `ses-event:<sha256>`.
    pub provider_event_id: String,
    /// Its `email_events.event_type`.
    pub event_type: &'static str,
    pub ses_message_id: String,
    /// Our tags (`datamailer_kind`, `datamailer_id`): the row the send was for.
    pub tag_kind: String,
    pub tag_id: Option<i64>,
    /// When it happened: the event's own time, else the mail's, else when it was received.
    pub occurred_at: DateTime<Utc>,
    pub url: String,
    /// What the history keeps.
    pub metadata: Value,
    /// The recipients the event names, normalized (bounced, complained, delivered ones).
    pub recipients: Vec<String>,
    pub bounce: Option<BounceClass>,
}

/// Why a message is refused (it is dead-lettered with this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("invalid ses-webhooks message: {0}")]
    Contract(String),
    #[error("{0}")]
    Normalize(NormalizeError),
    #[error(
        "unsupported ses-webhooks payload: neither the ses-webhooks contract, an SNS envelope \
         nor an SES event (no contract, Type or eventType/notificationType)"
    )]
    Unsupported,
}

impl From<ContractError> for FeedbackError {
    fn from(e: ContractError) -> Self {
        FeedbackError::Contract(e.to_string())
    }
}

/// The email_events type of a contract type.
pub fn event_type(t: NotificationType) -> &'static str {
    match t {
        NotificationType::Send => "sent",
        NotificationType::Reject => "failed",
        NotificationType::Delivery => "delivered",
        NotificationType::Bounce => "bounce",
        NotificationType::Complaint => "complaint",
        NotificationType::Open => "open",
        NotificationType::Click => "click",
        NotificationType::DeliveryDelay => "delivery_delay",
        NotificationType::RenderingFailure => "rendering_failure",
        NotificationType::Subscription => "subscription",
    }
}

/// Reads one queue body received at `received_at`.
pub fn parse(body: &str, received_at: DateTime<Utc>) -> Result<FeedbackEvent, FeedbackError> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| FeedbackError::Contract(format!("malformed JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(FeedbackError::NotAnObject);
    };
    let received = received_at.to_rfc3339();
    if object.contains_key("contract") {
        return Ok(from_contract(
            SesWebhookV1::from_value(&value)?,
            received_at,
        ));
    }
    if let Some(kind) = object.get("Type").and_then(Value::as_str) {
        let sns_id = object
            .get("MessageId")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if kind != "Notification" {
            // A subscription handshake that reached the queue: kept, so an operator sees it.
            let id = sns_id.map_or_else(|| body_key(body), |id| id.to_string());
            return Ok(unknown(
                id,
                format!("SNS {kind} in the queue (confirm the subscription with its SubscribeURL)"),
                value.clone(),
                received_at,
            ));
        }
        return match ses_events::normalize(object, &received) {
            Ok(contract) => Ok(from_contract(contract, received_at)),
            Err(NormalizeError::UnsupportedType(name)) => {
                let id = sns_id.map_or_else(|| body_key(body), |id| id.to_string());
                let event = ses_events::ses_event(object).unwrap_or(Value::Null);
                Ok(unknown(
                    id,
                    format!("unsupported SES notification type {name:?}"),
                    event,
                    received_at,
                ))
            }
            Err(e) => Err(FeedbackError::Normalize(e)),
        };
    }
    if object.contains_key("eventType") || object.contains_key("notificationType") {
        let id = body_key(body);
        return match ses_events::from_event(&value, &id, None, &received) {
            Ok(contract) => Ok(from_contract(contract, received_at)),
            Err(NormalizeError::UnsupportedType(name)) => Ok(unknown(
                id,
                format!("unsupported SES event type {name:?}"),
                value.clone(),
                received_at,
            )),
            Err(e) => Err(FeedbackError::Normalize(e)),
        };
    }
    Err(FeedbackError::Unsupported)
}

/// The key of a bare event: the same bytes always give the same key.
fn body_key(body: &str) -> String {
    format!("ses-event:{}", hex::encode(Sha256::digest(body.as_bytes())))
}

fn unknown(id: String, reason: String, raw: Value, received_at: DateTime<Utc>) -> FeedbackEvent {
    FeedbackEvent {
        provider_event_id: clip(&id, 255),
        event_type: "unknown",
        ses_message_id: String::new(),
        tag_kind: String::new(),
        tag_id: None,
        occurred_at: received_at,
        url: String::new(),
        metadata: json!({"provider": "ses", "reason": reason, "raw": raw,
                         "received_at": received_at.to_rfc3339()}),
        recipients: Vec::new(),
        bounce: None,
    }
}

fn text<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// A tag's value: SES sends tags as lists of strings; the contract may carry plain strings.
fn tag<'a>(tags: Option<&'a Map<String, Value>>, name: &str) -> Option<&'a str> {
    match tags?.get(name)? {
        Value::String(s) => Some(s.as_str()),
        Value::Array(values) => values.first()?.as_str(),
        _ => None,
    }
}

fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn from_contract(c: SesWebhookV1, received_at: DateTime<Utc>) -> FeedbackEvent {
    let mut metadata = c.metadata.clone().unwrap_or_default();
    let tags = metadata.get("tags").and_then(Value::as_object);
    let tag_kind = tag(tags, KIND_TAG).unwrap_or_default().to_string();
    let tag_id = tag(tags, ID_TAG).and_then(|v| v.parse::<i64>().ok());
    let occurred_at = ["event_timestamp", "mail_timestamp"]
        .iter()
        .filter_map(|k| text(&metadata, k))
        .chain(std::iter::once(c.received_at.as_str()))
        .find_map(parse_iso_datetime)
        .unwrap_or(received_at);
    let recipients: Vec<String> = metadata
        .get("recipients")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(crate::email::normalize)
                .filter(|e| !e.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let bounce = (c.notification_type == NotificationType::Bounce)
        .then(|| BounceClass::of(text(&metadata, "bounce_type")));
    let url = match c.notification_type {
        NotificationType::Click => clip(text(&metadata, "url").unwrap_or_default(), 2048),
        _ => String::new(),
    };
    let ses_message_id = clip(c.ses_message_id.as_deref().unwrap_or_default(), 255);
    for (key, value) in [
        ("provider", Value::String(c.provider.clone())),
        (
            "provider_event_id",
            Value::String(c.provider_event_id.clone()),
        ),
        (
            "notification_type",
            Value::String(c.notification_type.as_str().into()),
        ),
        ("ses_message_id", Value::String(ses_message_id.clone())),
        ("received_at", Value::String(c.received_at.clone())),
    ] {
        metadata.insert(key.into(), value);
    }
    if let Some(class) = bounce {
        metadata.insert("bounce_class".into(), Value::String(class.as_str().into()));
    }
    FeedbackEvent {
        provider_event_id: clip(&c.provider_event_id, 255),
        event_type: event_type(c.notification_type),
        ses_message_id,
        tag_kind,
        tag_id,
        occurred_at,
        url,
        metadata: Value::Object(metadata),
        recipients,
        bounce,
    }
}

/// The tags every send carries (the runtime's send ledger reads the same two).
pub const KIND_TAG: &str = "datamailer_kind";
pub const ID_TAG: &str = "datamailer_id";

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        parse_iso_datetime("2026-12-04T12:00:00Z").unwrap()
    }

    #[test]
    fn only_permanent_is_hard() {
        assert_eq!(BounceClass::of(Some("Permanent")), BounceClass::Hard);
        assert_eq!(BounceClass::of(Some("Transient")), BounceClass::Soft);
        assert_eq!(
            BounceClass::of(Some("Undetermined")),
            BounceClass::Undetermined
        );
        assert_eq!(BounceClass::of(None), BounceClass::Undetermined);
    }

    #[test]
    fn the_three_shapes_give_the_same_event() {
        let event = json!({"eventType": "Bounce",
            "mail": {"messageId": "ses-9", "timestamp": "2026-12-04T10:00:00.000Z",
                     "tags": {"datamailer_kind": ["campaign"], "datamailer_id": ["42"]}},
            "bounce": {"bounceType": "Transient", "bounceSubType": "General",
                       "timestamp": "2026-12-04T10:00:03.000Z",
                       "bouncedRecipients": [{"emailAddress": "Ann@Example.TEST"}]}});
        let envelope = json!({"Type": "Notification", "MessageId": "sns-9",
                              "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": event.to_string()});
        let from_envelope = parse(&envelope.to_string(), at()).unwrap();
        let contract =
            ses_events::normalize(envelope.as_object().unwrap(), "2026-12-04T12:00:00+00:00")
                .unwrap();
        let from_contract = parse(&contract.to_json(), at()).unwrap();
        let bare = parse(&event.to_string(), at()).unwrap();
        for e in [&from_envelope, &from_contract, &bare] {
            assert_eq!(e.event_type, "bounce");
            assert_eq!(e.bounce, Some(BounceClass::Soft));
            assert_eq!((e.tag_kind.as_str(), e.tag_id), ("campaign", Some(42)));
            assert_eq!(e.ses_message_id, "ses-9");
            assert_eq!(e.recipients, vec!["ann@example.test".to_string()]);
            assert_eq!(
                e.occurred_at,
                parse_iso_datetime("2026-12-04T10:00:03Z").unwrap()
            );
        }
        assert_eq!(from_envelope.provider_event_id, "sns-9");
        assert_eq!(from_envelope, from_contract);
        assert!(bare.provider_event_id.starts_with("ses-event:"));
        assert_eq!(
            parse(&event.to_string(), at()).unwrap().provider_event_id,
            bare.provider_event_id,
            "a redelivered bare event has the same key"
        );
    }

    #[test]
    fn an_unknown_type_is_kept_with_its_reason() {
        let envelope = json!({"Type": "Notification", "MessageId": "sns-x",
                              "Message": json!({"eventType": "Teleport"}).to_string()});
        let e = parse(&envelope.to_string(), at()).unwrap();
        assert_eq!(e.event_type, "unknown");
        assert_eq!(e.provider_event_id, "sns-x");
        assert_eq!(
            e.metadata["reason"],
            "unsupported SES notification type \"Teleport\""
        );
        assert_eq!(e.metadata["raw"]["eventType"], "Teleport");
    }

    #[test]
    fn what_is_none_of_the_three_is_refused_with_a_reason() {
        assert_eq!(parse("[1]", at()).unwrap_err(), FeedbackError::NotAnObject);
        assert_eq!(
            parse(r#"{"hello": 1}"#, at()).unwrap_err(),
            FeedbackError::Unsupported
        );
        let wrong = parse(
            r#"{"contract": "ses-webhooks", "version": 999, "provider": "ses"}"#,
            at(),
        )
        .unwrap_err();
        assert!(wrong.to_string().contains("version"), "{wrong}");
        let bad_message = json!({"Type": "Notification", "MessageId": "m", "Message": "{oops"});
        assert_eq!(
            parse(&bad_message.to_string(), at())
                .unwrap_err()
                .to_string(),
            "invalid SES notification message: Message is not JSON"
        );
    }
}
