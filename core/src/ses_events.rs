//! Turning an SNS `Notification` that carries an SES event into the `ses-webhooks` v1
//! contract (facts §3.7, "Normalization"), with what the original dropped kept in `metadata`:
//! the event's own time (`event_timestamp`), the recipients it names (`recipients`: bounced,
//! complained or delivered ones) and our SES tags (`tags`), which later correlation needs.

use serde_json::{Map, Value};

use crate::contracts::{NotificationType, SesWebhookV1};

/// Why a notification cannot become the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("invalid SES notification message: {0}")]
    InvalidMessage(&'static str),
    #[error("unsupported SES notification type {0:?}")]
    UnsupportedType(String),
}

/// The contract's type for an SES `eventType` (configuration-set publishing) or
/// `notificationType` (identity notifications), and the key of its detail object.
fn kind(name: &str) -> Option<(NotificationType, &'static str)> {
    Some(match name {
        "Send" => (NotificationType::Send, "send"),
        "Reject" => (NotificationType::Reject, "reject"),
        "Delivery" => (NotificationType::Delivery, "delivery"),
        "Bounce" => (NotificationType::Bounce, "bounce"),
        "Complaint" => (NotificationType::Complaint, "complaint"),
        "Open" => (NotificationType::Open, "open"),
        "Click" => (NotificationType::Click, "click"),
        "DeliveryDelay" => (NotificationType::DeliveryDelay, "deliveryDelay"),
        "Rendering Failure" | "RenderingFailure" => (NotificationType::RenderingFailure, "failure"),
        "Subscription" => (NotificationType::Subscription, "subscription"),
        _ => return None,
    })
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, key| v.get(key))?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// The SES event a notification carries, as JSON.
pub fn ses_event(envelope: &Map<String, Value>) -> Result<Value, NormalizeError> {
    let message = envelope
        .get("Message")
        .and_then(Value::as_str)
        .ok_or(NormalizeError::InvalidMessage("Message is not a string"))?;
    let event: Value = serde_json::from_str(message)
        .map_err(|_| NormalizeError::InvalidMessage("Message is not JSON"))?;
    if !event.is_object() {
        return Err(NormalizeError::InvalidMessage(
            "Message is not a JSON object",
        ));
    }
    Ok(event)
}

/// The contract for an SNS envelope (`MessageId`, `TopicArn`, `Message`) received at
/// `received_at`.
pub fn normalize(
    envelope: &Map<String, Value>,
    received_at: &str,
) -> Result<SesWebhookV1, NormalizeError> {
    let event = ses_event(envelope)?;
    let envelope_value = Value::Object(envelope.clone());
    let sns_message_id = text(&envelope_value, &["MessageId"])
        .ok_or(NormalizeError::InvalidMessage("MessageId is missing"))?;
    from_event(
        &event,
        sns_message_id,
        text(&envelope_value, &["TopicArn"]),
        received_at,
    )
}

/// The contract for a bare SES event (raw message delivery), keyed by `provider_event_id`.
pub fn from_event(
    event: &Value,
    provider_event_id: &str,
    topic_arn: Option<&str>,
    received_at: &str,
) -> Result<SesWebhookV1, NormalizeError> {
    let type_name = text(event, &["eventType"])
        .or_else(|| text(event, &["notificationType"]))
        .ok_or(NormalizeError::InvalidMessage(
            "neither eventType nor notificationType",
        ))?;
    let (notification_type, detail_key) =
        kind(type_name).ok_or_else(|| NormalizeError::UnsupportedType(type_name.to_string()))?;
    let detail = event.get(detail_key).cloned().unwrap_or(Value::Null);
    let ses_message_id = text(event, &["mail", "messageId"])
        .or_else(|| text(event, &["mailMessageId"]))
        .map(str::to_string);

    let mut metadata = Map::new();
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(v) = value {
            metadata.insert(key.into(), Value::String(v.into()));
        }
    };
    put("sns_message_id", Some(provider_event_id));
    put("sns_topic_arn", topic_arn);
    put("mail_timestamp", text(event, &["mail", "timestamp"]));
    put("mail_source", text(event, &["mail", "source"]));
    match notification_type {
        NotificationType::Bounce => {
            put("bounce_type", text(&detail, &["bounceType"]));
            put("bounce_sub_type", text(&detail, &["bounceSubType"]));
        }
        NotificationType::Complaint => {
            put(
                "complaint_feedback_type",
                text(&detail, &["complaintFeedbackType"]),
            );
        }
        NotificationType::Reject => put("reason", text(&detail, &["reason"])),
        NotificationType::Click => put("url", text(&detail, &["link"])),
        NotificationType::DeliveryDelay => put("delay_type", text(&detail, &["delayType"])),
        NotificationType::RenderingFailure => {
            put("reason", text(&detail, &["errorMessage"]));
        }
        _ => {}
    }
    put("event_timestamp", text(&detail, &["timestamp"]));
    let listed = |list: &str, item: Option<&str>| -> Vec<Value> {
        detail
            .get(list)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| match item {
                        Some(key) => r.get(key).and_then(Value::as_str),
                        None => r.as_str(),
                    })
                    .map(|s| Value::String(s.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let recipients = match notification_type {
        NotificationType::Bounce => listed("bouncedRecipients", Some("emailAddress")),
        NotificationType::Complaint => listed("complainedRecipients", Some("emailAddress")),
        NotificationType::Delivery => listed("recipients", None),
        NotificationType::DeliveryDelay => listed("delayedRecipients", Some("emailAddress")),
        _ => Vec::new(),
    };
    if !recipients.is_empty() {
        metadata.insert("recipients".into(), Value::Array(recipients));
    }
    if let Some(tags) = event.pointer("/mail/tags").and_then(Value::as_object) {
        if !tags.is_empty() {
            metadata.insert("tags".into(), Value::Object(tags.clone()));
        }
    }
    Ok(SesWebhookV1 {
        provider: "ses".into(),
        provider_event_id: provider_event_id.to_string(),
        notification_type,
        received_at: received_at.to_string(),
        mail_message_id: ses_message_id.clone(),
        ses_message_id,
        raw_payload_s3_key: None,
        metadata: Some(metadata),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(event: Value) -> Map<String, Value> {
        json!({"Type": "Notification", "MessageId": "sns-1", "TopicArn": "arn:aws:sns:us-east-1:1:t",
               "Message": event.to_string()})
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn a_delivery_becomes_the_originals_payload() {
        let event = json!({"eventType": "Delivery",
            "mail": {"messageId": "ses-1", "timestamp": "2026-12-03T10:00:00.000Z", "source": "a@x.test"},
            "delivery": {"timestamp": "2026-12-03T10:00:02.000Z", "recipients": ["b@y.test"]}});
        let c = normalize(&envelope(event), "2026-12-03T10:00:05+00:00").unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&c.to_json()).unwrap(),
            json!({"contract": "ses-webhooks", "version": 1, "provider": "ses",
                   "provider_event_id": "sns-1", "notification_type": "delivery",
                   "received_at": "2026-12-03T10:00:05+00:00", "ses_message_id": "ses-1",
                   "mail_message_id": "ses-1",
                   "metadata": {"sns_message_id": "sns-1", "sns_topic_arn": "arn:aws:sns:us-east-1:1:t",
                                "mail_timestamp": "2026-12-03T10:00:00.000Z", "mail_source": "a@x.test",
                                "event_timestamp": "2026-12-03T10:00:02.000Z",
                                "recipients": ["b@y.test"]}})
        );
    }

    #[test]
    fn a_bounce_keeps_its_type_recipients_time_and_our_tags() {
        let event = json!({"notificationType": "Bounce",
            "mail": {"messageId": "ses-2", "tags": {"datamailer_kind": ["campaign"], "datamailer_id": ["7"]}},
            "bounce": {"bounceType": "Transient", "bounceSubType": "General",
                       "timestamp": "2026-12-03T11:00:00.000Z",
                       "bouncedRecipients": [{"emailAddress": "cc@y.test"}]}});
        let c = normalize(&envelope(event), "now").unwrap();
        assert_eq!(c.notification_type, NotificationType::Bounce);
        let m = c.metadata.unwrap();
        assert_eq!(m["bounce_type"], "Transient");
        assert_eq!(m["bounce_sub_type"], "General");
        assert_eq!(m["recipients"], json!(["cc@y.test"]));
        assert_eq!(m["event_timestamp"], "2026-12-03T11:00:00.000Z");
        assert_eq!(m["tags"]["datamailer_id"], json!(["7"]));
    }

    #[test]
    fn the_types_the_original_refused_are_carried_and_the_rest_named() {
        for (name, wanted) in [
            ("DeliveryDelay", NotificationType::DeliveryDelay),
            ("Rendering Failure", NotificationType::RenderingFailure),
            ("Subscription", NotificationType::Subscription),
        ] {
            let c = normalize(&envelope(json!({"eventType": name, "mail": {}})), "t").unwrap();
            assert_eq!(c.notification_type, wanted);
        }
        assert_eq!(
            normalize(&envelope(json!({"eventType": "Teleport"})), "t").unwrap_err(),
            NormalizeError::UnsupportedType("Teleport".into())
        );
        let mut bad = envelope(json!({}));
        bad.insert("Message".into(), json!("not json"));
        assert_eq!(
            normalize(&bad, "t").unwrap_err(),
            NormalizeError::InvalidMessage("Message is not JSON")
        );
    }
}
