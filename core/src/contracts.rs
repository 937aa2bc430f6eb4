//! Versioned JSON contracts of the four queues (facts §2). Consumers validate with
//! `parse`/`from_value`; producers serialize with `to_json`. The error messages and
//! the validation order match the original `queue_contracts.py`, so a bad record
//! fails with the same reason in both systems.

use std::fmt;
use std::str::FromStr;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

/// Why a record does not satisfy its contract. `field` names the offending field
/// (None when the body itself is not a JSON object).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ContractError {
    pub field: Option<String>,
    pub message: String,
}

impl ContractError {
    fn body(message: String) -> Self {
        ContractError {
            field: None,
            message,
        }
    }

    fn missing(field: &str) -> Self {
        ContractError {
            field: Some(field.to_owned()),
            message: format!("missing required field '{field}'"),
        }
    }

    fn invalid(field: &str, why: &str) -> Self {
        ContractError {
            field: Some(field.to_owned()),
            message: format!("invalid field '{field}': {why}"),
        }
    }
}

const POSITIVE_INT: &str = "must be a positive integer";
const NON_EMPTY_STRING: &str = "must be a non-empty string";
const OBJECT: &str = "must be an object";
const POSITIVE_INT_LIST: &str = "must be a non-empty list of positive integers";

fn decode(body: &str) -> Result<Value, ContractError> {
    serde_json::from_str(body)
        .map_err(|e| ContractError::body(format!("body is not valid JSON: {e}")))
}

/// A real JSON integer above zero (bools and floats such as `3.0` are not integers).
fn positive_int(value: &Value) -> Option<i64> {
    value.as_i64().filter(|n| *n > 0)
}

/// Checks the envelope (object, contract, version) and gives field access in the
/// declared order.
struct Envelope<'a> {
    fields: &'a Map<String, Value>,
}

impl<'a> Envelope<'a> {
    fn open(value: &'a Value, contract: &str) -> Result<Self, ContractError> {
        let fields = value
            .as_object()
            .ok_or_else(|| ContractError::body("body must be a JSON object".to_owned()))?;
        if fields.get("contract").and_then(Value::as_str) != Some(contract) {
            return Err(ContractError {
                field: Some("contract".to_owned()),
                message: format!("contract must be '{contract}'"),
            });
        }
        // Python compares `version == 1`, which also holds for 1.0 (but not for True,
        // which serde_json never turns into a number anyway).
        let version_ok = match fields.get("version") {
            Some(Value::Number(n)) => n.as_i64() == Some(1) || n.as_f64() == Some(1.0),
            _ => false,
        };
        if !version_ok {
            return Err(ContractError {
                field: Some("version".to_owned()),
                message: "version must be 1".to_owned(),
            });
        }
        Ok(Envelope { fields })
    }

    /// The field's value; JSON null counts as absent.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.fields.get(name).filter(|v| !v.is_null())
    }

    fn required(&self, name: &str) -> Result<&'a Value, ContractError> {
        self.get(name).ok_or_else(|| ContractError::missing(name))
    }

    fn required_int(&self, name: &str) -> Result<i64, ContractError> {
        positive_int(self.required(name)?).ok_or_else(|| ContractError::invalid(name, POSITIVE_INT))
    }

    fn required_str(&self, name: &str) -> Result<String, ContractError> {
        non_empty(self.required(name)?)
            .ok_or_else(|| ContractError::invalid(name, NON_EMPTY_STRING))
    }

    fn required_ids(&self, name: &str) -> Result<Vec<i64>, ContractError> {
        let invalid = || ContractError::invalid(name, POSITIVE_INT_LIST);
        let items = self.required(name)?.as_array().ok_or_else(invalid)?;
        if items.is_empty() {
            return Err(invalid());
        }
        items
            .iter()
            .map(|v| positive_int(v).ok_or_else(invalid))
            .collect()
    }

    fn optional_int(&self, name: &str) -> Result<Option<i64>, ContractError> {
        self.get(name)
            .map(|v| positive_int(v).ok_or_else(|| ContractError::invalid(name, POSITIVE_INT)))
            .transpose()
    }

    fn optional_str(&self, name: &str) -> Result<Option<String>, ContractError> {
        self.get(name)
            .map(|v| non_empty(v).ok_or_else(|| ContractError::invalid(name, NON_EMPTY_STRING)))
            .transpose()
    }

    fn optional_object(&self, name: &str) -> Result<Option<Map<String, Value>>, ContractError> {
        self.get(name)
            .map(|v| {
                v.as_object()
                    .cloned()
                    .ok_or_else(|| ContractError::invalid(name, OBJECT))
            })
            .transpose()
    }
}

fn non_empty(value: &Value) -> Option<String> {
    value
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

/// Builds a producer payload: contract, version 1 and every set field.
struct Payload(Map<String, Value>);

impl Payload {
    fn new(contract: &str) -> Self {
        let mut map = Map::new();
        map.insert("contract".into(), Value::from(contract));
        map.insert("version".into(), Value::from(1));
        Payload(map)
    }

    fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    fn maybe(self, key: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    /// Serialized like Python's `json.dumps(payload, sort_keys=True)`: keys sorted at
    /// every depth, whatever map implementation serde_json was built with.
    fn to_json(&self) -> String {
        serde_json::to_string(&SortedKeys(&Value::Object(self.0.clone())))
            .expect("JSON values always serialize")
    }
}

/// Serializes a JSON value with object keys sorted recursively.
struct SortedKeys<'a>(&'a Value);

impl Serialize for SortedKeys<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    out.serialize_entry(key, &SortedKeys(value))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&SortedKeys(item))?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// `transactional-email` v1: send one persisted transactional message.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionalEmailV1 {
    pub transactional_message_id: i64,
    pub client_id: i64,
    pub idempotency_key: String,
    pub contact_id: Option<i64>,
    pub template_id: Option<i64>,
    pub template_key: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

impl TransactionalEmailV1 {
    pub const CONTRACT: &'static str = "transactional-email";

    pub fn parse(body: &str) -> Result<Self, ContractError> {
        Self::from_value(&decode(body)?)
    }

    pub fn from_value(value: &Value) -> Result<Self, ContractError> {
        let env = Envelope::open(value, Self::CONTRACT)?;
        Ok(TransactionalEmailV1 {
            transactional_message_id: env.required_int("transactional_message_id")?,
            client_id: env.required_int("client_id")?,
            idempotency_key: env.required_str("idempotency_key")?,
            contact_id: env.optional_int("contact_id")?,
            template_id: env.optional_int("template_id")?,
            template_key: env.optional_str("template_key")?,
            metadata: env.optional_object("metadata")?,
        })
    }

    pub fn to_json(&self) -> String {
        Payload::new(Self::CONTRACT)
            .set("transactional_message_id", self.transactional_message_id)
            .set("client_id", self.client_id)
            .set("idempotency_key", self.idempotency_key.as_str())
            .maybe("contact_id", self.contact_id)
            .maybe("template_id", self.template_id)
            .maybe("template_key", self.template_key.as_deref())
            .maybe("metadata", self.metadata.clone())
            .to_json()
    }
}

/// `campaign-email` v1: send one batch of campaign recipients.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignEmailV1 {
    pub campaign_id: i64,
    pub batch_id: String,
    pub campaign_recipient_ids: Vec<i64>,
    pub idempotency_key: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

impl CampaignEmailV1 {
    pub const CONTRACT: &'static str = "campaign-email";

    /// The producer's batch id (also its idempotency key): `campaign-<id>-batch-<NNNN>`,
    /// numbered from 1.
    pub fn batch_id(campaign_id: i64, n: usize) -> String {
        format!("campaign-{campaign_id}-batch-{n:04}")
    }

    pub fn parse(body: &str) -> Result<Self, ContractError> {
        Self::from_value(&decode(body)?)
    }

    pub fn from_value(value: &Value) -> Result<Self, ContractError> {
        let env = Envelope::open(value, Self::CONTRACT)?;
        Ok(CampaignEmailV1 {
            campaign_id: env.required_int("campaign_id")?,
            batch_id: env.required_str("batch_id")?,
            campaign_recipient_ids: env.required_ids("campaign_recipient_ids")?,
            idempotency_key: env.optional_str("idempotency_key")?,
            metadata: env.optional_object("metadata")?,
        })
    }

    pub fn to_json(&self) -> String {
        Payload::new(Self::CONTRACT)
            .set("campaign_id", self.campaign_id)
            .set("batch_id", self.batch_id.as_str())
            .set(
                "campaign_recipient_ids",
                self.campaign_recipient_ids.clone(),
            )
            .maybe("idempotency_key", self.idempotency_key.as_deref())
            .maybe("metadata", self.metadata.clone())
            .to_json()
    }
}

/// `campaign-fanout` v1, on the campaign-email queue: "snapshot this queued campaign and hand
/// its pending recipients to the queue in batches". Ours (the original snapshotted inside the
/// HTTP request); idempotent, so a duplicate or a maintenance re-send is harmless.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignFanoutV1 {
    pub campaign_id: i64,
}

impl CampaignFanoutV1 {
    pub const CONTRACT: &'static str = "campaign-fanout";

    pub fn parse(body: &str) -> Result<Self, ContractError> {
        Self::from_value(&decode(body)?)
    }

    pub fn from_value(value: &Value) -> Result<Self, ContractError> {
        let env = Envelope::open(value, Self::CONTRACT)?;
        Ok(CampaignFanoutV1 {
            campaign_id: env.required_int("campaign_id")?,
        })
    }

    pub fn to_json(&self) -> String {
        Payload::new(Self::CONTRACT)
            .set("campaign_id", self.campaign_id)
            .to_json()
    }
}

/// `campaign-test-send` v1, on the campaign-email queue: send the campaign to the rows of
/// `campaign_test_sends` named here (ours; the original sent test mail from the web request).
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignTestSendV1 {
    pub campaign_id: i64,
    pub test_send_ids: Vec<i64>,
}

impl CampaignTestSendV1 {
    pub const CONTRACT: &'static str = "campaign-test-send";

    pub fn from_value(value: &Value) -> Result<Self, ContractError> {
        let env = Envelope::open(value, Self::CONTRACT)?;
        Ok(CampaignTestSendV1 {
            campaign_id: env.required_int("campaign_id")?,
            test_send_ids: env.required_ids("test_send_ids")?,
        })
    }

    pub fn to_json(&self) -> String {
        Payload::new(Self::CONTRACT)
            .set("campaign_id", self.campaign_id)
            .set("test_send_ids", self.test_send_ids.clone())
            .to_json()
    }
}

/// What the campaign-email queue carries: a batch to send, a campaign to fan out, or test
/// sends.
#[derive(Debug, Clone, PartialEq)]
pub enum CampaignQueueMessage {
    Batch(CampaignEmailV1),
    Fanout(CampaignFanoutV1),
    TestSend(CampaignTestSendV1),
}

impl CampaignQueueMessage {
    /// By its `contract`; the error of a batch when the contract is neither.
    pub fn parse(body: &str) -> Result<Self, ContractError> {
        let value = decode(body)?;
        match value.get("contract").and_then(Value::as_str) {
            Some(CampaignFanoutV1::CONTRACT) => {
                return CampaignFanoutV1::from_value(&value).map(CampaignQueueMessage::Fanout)
            }
            Some(CampaignTestSendV1::CONTRACT) => {
                return CampaignTestSendV1::from_value(&value).map(CampaignQueueMessage::TestSend)
            }
            _ => {}
        }
        CampaignEmailV1::from_value(&value).map(CampaignQueueMessage::Batch)
    }
}

/// SES notification kinds carried by the `ses-webhooks` contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationType {
    Send,
    Reject,
    Delivery,
    Bounce,
    Complaint,
    Open,
    Click,
    /// Beyond the original (which refused them): the other events a configuration set
    /// publishes.
    DeliveryDelay,
    RenderingFailure,
    Subscription,
}

impl NotificationType {
    pub const ALL: [NotificationType; 10] = [
        NotificationType::Send,
        NotificationType::Reject,
        NotificationType::Delivery,
        NotificationType::Bounce,
        NotificationType::Complaint,
        NotificationType::Open,
        NotificationType::Click,
        NotificationType::DeliveryDelay,
        NotificationType::RenderingFailure,
        NotificationType::Subscription,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationType::Send => "send",
            NotificationType::Reject => "reject",
            NotificationType::Delivery => "delivery",
            NotificationType::Bounce => "bounce",
            NotificationType::Complaint => "complaint",
            NotificationType::Open => "open",
            NotificationType::Click => "click",
            NotificationType::DeliveryDelay => "delivery_delay",
            NotificationType::RenderingFailure => "rendering_failure",
            NotificationType::Subscription => "subscription",
        }
    }
}

impl fmt::Display for NotificationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NotificationType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| one_of(Self::ALL.iter().map(|t| t.as_str())))
    }
}

fn one_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    format!("must be one of {}", names.collect::<Vec<_>>().join(", "))
}

/// `ses-webhooks` v1: one normalized SES event notification.
#[derive(Debug, Clone, PartialEq)]
pub struct SesWebhookV1 {
    /// Always `"ses"`.
    pub provider: String,
    pub provider_event_id: String,
    pub notification_type: NotificationType,
    /// Kept as text; never parsed during validation (like the original).
    pub received_at: String,
    pub ses_message_id: Option<String>,
    pub mail_message_id: Option<String>,
    pub raw_payload_s3_key: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

impl SesWebhookV1 {
    pub const CONTRACT: &'static str = "ses-webhooks";

    pub fn parse(body: &str) -> Result<Self, ContractError> {
        Self::from_value(&decode(body)?)
    }

    pub fn from_value(value: &Value) -> Result<Self, ContractError> {
        let env = Envelope::open(value, Self::CONTRACT)?;
        let provider = env.required_str("provider")?;
        if provider != "ses" {
            return Err(ContractError::invalid("provider", "must be 'ses'"));
        }
        let provider_event_id = env.required_str("provider_event_id")?;
        let notification_type = env
            .required_str("notification_type")?
            .parse()
            .map_err(|why: String| ContractError::invalid("notification_type", &why))?;
        Ok(SesWebhookV1 {
            provider,
            provider_event_id,
            notification_type,
            received_at: env.required_str("received_at")?,
            ses_message_id: env.optional_str("ses_message_id")?,
            mail_message_id: env.optional_str("mail_message_id")?,
            raw_payload_s3_key: env.optional_str("raw_payload_s3_key")?,
            metadata: env.optional_object("metadata")?,
        })
    }

    pub fn to_json(&self) -> String {
        Payload::new(Self::CONTRACT)
            .set("provider", self.provider.as_str())
            .set("provider_event_id", self.provider_event_id.as_str())
            .set("notification_type", self.notification_type.as_str())
            .set("received_at", self.received_at.as_str())
            .maybe("ses_message_id", self.ses_message_id.as_deref())
            .maybe("mail_message_id", self.mail_message_id.as_deref())
            .maybe("raw_payload_s3_key", self.raw_payload_s3_key.as_deref())
            .maybe("metadata", self.metadata.clone())
            .to_json()
    }
}

/// Engagement events carried by the `email-events` contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmailEventType {
    Open,
    Click,
    Unsubscribe,
}

impl EmailEventType {
    pub const ALL: [EmailEventType; 3] = [
        EmailEventType::Open,
        EmailEventType::Click,
        EmailEventType::Unsubscribe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EmailEventType::Open => "open",
            EmailEventType::Click => "click",
            EmailEventType::Unsubscribe => "unsubscribe",
        }
    }
}

impl fmt::Display for EmailEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EmailEventType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| one_of(Self::ALL.iter().map(|t| t.as_str())))
    }
}

/// `email-events` v1: one open, click or unsubscribe.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailEventV1 {
    pub event_id: String,
    pub occurred_at: String,
    pub idempotency_key: String,
    pub event_type: EmailEventType,
    pub campaign_id: Option<i64>,
    pub campaign_recipient_id: Option<i64>,
    pub transactional_message_id: Option<i64>,
    pub contact_id: Option<i64>,
    pub client_id: Option<i64>,
    pub audience_id: Option<i64>,
    pub tracking_token: Option<String>,
    pub url: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

impl EmailEventV1 {
    pub const CONTRACT: &'static str = "email-events";

    pub fn parse(body: &str) -> Result<Self, ContractError> {
        Self::from_value(&decode(body)?)
    }

    pub fn from_value(value: &Value) -> Result<Self, ContractError> {
        let env = Envelope::open(value, Self::CONTRACT)?;
        let event_id = env.required_str("event_id")?;
        let occurred_at = env.required_str("occurred_at")?;
        let idempotency_key = env.required_str("idempotency_key")?;
        let event_type = env
            .required_str("event_type")?
            .parse()
            .map_err(|why: String| ContractError::invalid("event_type", &why))?;
        Ok(EmailEventV1 {
            event_id,
            occurred_at,
            idempotency_key,
            event_type,
            campaign_id: env.optional_int("campaign_id")?,
            campaign_recipient_id: env.optional_int("campaign_recipient_id")?,
            transactional_message_id: env.optional_int("transactional_message_id")?,
            contact_id: env.optional_int("contact_id")?,
            client_id: env.optional_int("client_id")?,
            audience_id: env.optional_int("audience_id")?,
            tracking_token: env.optional_str("tracking_token")?,
            url: env.optional_str("url")?,
            metadata: env.optional_object("metadata")?,
        })
    }

    pub fn to_json(&self) -> String {
        Payload::new(Self::CONTRACT)
            .set("event_id", self.event_id.as_str())
            .set("occurred_at", self.occurred_at.as_str())
            .set("idempotency_key", self.idempotency_key.as_str())
            .set("event_type", self.event_type.as_str())
            .maybe("campaign_id", self.campaign_id)
            .maybe("campaign_recipient_id", self.campaign_recipient_id)
            .maybe("transactional_message_id", self.transactional_message_id)
            .maybe("contact_id", self.contact_id)
            .maybe("client_id", self.client_id)
            .maybe("audience_id", self.audience_id)
            .maybe("tracking_token", self.tracking_token.as_deref())
            .maybe("url", self.url.as_deref())
            .maybe("metadata", self.metadata.clone())
            .to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn transactional() -> Value {
        json!({
            "contract": "transactional-email",
            "version": 1,
            "transactional_message_id": 7,
            "client_id": 3,
            "idempotency_key": "k-1",
            "contact_id": 9,
            "template_id": 2,
            "template_key": "welcome",
            "metadata": {"cc": ["a@example.com"]}
        })
    }

    fn campaign() -> Value {
        json!({
            "contract": "campaign-email",
            "version": 1,
            "campaign_id": 5,
            "batch_id": "campaign-5-batch-0001",
            "campaign_recipient_ids": [1, 2, 3]
        })
    }

    fn ses() -> Value {
        json!({
            "contract": "ses-webhooks",
            "version": 1,
            "provider": "ses",
            "provider_event_id": "evt-1",
            "notification_type": "bounce",
            "received_at": "2026-01-01T00:00:00Z"
        })
    }

    fn event() -> Value {
        json!({
            "contract": "email-events",
            "version": 1,
            "event_id": "e1",
            "occurred_at": "2026-01-01T00:00:00Z",
            "idempotency_key": "open:e1",
            "event_type": "click",
            "campaign_id": 4,
            "url": "https://example.com"
        })
    }

    fn with(mut value: Value, key: &str, field: Value) -> Value {
        value[key] = field;
        value
    }

    fn without(mut value: Value, key: &str) -> Value {
        value.as_object_mut().unwrap().remove(key);
        value
    }

    fn message<T: std::fmt::Debug>(result: Result<T, ContractError>) -> String {
        result.unwrap_err().message
    }

    #[test]
    fn valid_records_parse() {
        let t = TransactionalEmailV1::from_value(&transactional()).unwrap();
        assert_eq!(t.transactional_message_id, 7);
        assert_eq!(t.template_key.as_deref(), Some("welcome"));
        assert_eq!(t.metadata.unwrap()["cc"], json!(["a@example.com"]));
        let c = CampaignEmailV1::from_value(&campaign()).unwrap();
        assert_eq!(c.campaign_recipient_ids, vec![1, 2, 3]);
        let s = SesWebhookV1::from_value(&ses()).unwrap();
        assert_eq!(s.notification_type, NotificationType::Bounce);
        let e = EmailEventV1::from_value(&event()).unwrap();
        assert_eq!(e.event_type, EmailEventType::Click);
        assert_eq!(e.campaign_id, Some(4));
    }

    #[test]
    fn version_999_fails() {
        let v = with(transactional(), "version", json!(999));
        assert_eq!(
            message(TransactionalEmailV1::from_value(&v)),
            "version must be 1"
        );
    }

    #[test]
    fn float_version_one_is_accepted_but_bool_is_not() {
        let v = with(campaign(), "version", json!(1.0));
        assert!(CampaignEmailV1::from_value(&v).is_ok());
        let v = with(campaign(), "version", json!(true));
        assert_eq!(
            message(CampaignEmailV1::from_value(&v)),
            "version must be 1"
        );
    }

    #[test]
    fn missing_or_wrong_contract_fails() {
        let err =
            TransactionalEmailV1::from_value(&without(transactional(), "contract")).unwrap_err();
        assert_eq!(err.message, "contract must be 'transactional-email'");
        assert_eq!(err.field.as_deref(), Some("contract"));
        let v = with(transactional(), "contract", json!("campaign-email"));
        assert!(TransactionalEmailV1::from_value(&v).is_err());
    }

    #[test]
    fn non_json_and_non_object_bodies_fail() {
        let msg = message(TransactionalEmailV1::parse("not json"));
        assert!(msg.starts_with("body is not valid JSON: "), "{msg}");
        let err = TransactionalEmailV1::parse("[1]").unwrap_err();
        assert_eq!(err.message, "body must be a JSON object");
        assert_eq!(err.field, None);
    }

    #[test]
    fn contract_is_checked_before_version_and_fields() {
        let v = json!({"version": 999});
        assert_eq!(
            message(CampaignEmailV1::from_value(&v)),
            "contract must be 'campaign-email'"
        );
        let v = json!({"contract": "campaign-email", "version": 2});
        assert_eq!(
            message(CampaignEmailV1::from_value(&v)),
            "version must be 1"
        );
    }

    #[test]
    fn required_fields_fail_in_declared_order() {
        let v = without(without(transactional(), "client_id"), "idempotency_key");
        assert_eq!(
            message(TransactionalEmailV1::from_value(&v)),
            "missing required field 'client_id'"
        );
        // A required field fails before an invalid optional one.
        let v = with(
            without(transactional(), "idempotency_key"),
            "contact_id",
            json!("x"),
        );
        assert_eq!(
            message(TransactionalEmailV1::from_value(&v)),
            "missing required field 'idempotency_key'"
        );
    }

    #[test]
    fn empty_recipient_list_fails() {
        let v = with(campaign(), "campaign_recipient_ids", json!([]));
        assert_eq!(
            message(CampaignEmailV1::from_value(&v)),
            "invalid field 'campaign_recipient_ids': must be a non-empty list of positive integers"
        );
        let v = with(campaign(), "campaign_recipient_ids", json!([1, 0]));
        assert!(CampaignEmailV1::from_value(&v).is_err());
    }

    #[test]
    fn bools_floats_and_non_positive_numbers_are_not_ints() {
        for bad in [
            json!(true),
            json!(3.0),
            json!(1.5),
            json!(0),
            json!(-2),
            json!("3"),
        ] {
            let v = with(transactional(), "client_id", bad.clone());
            assert_eq!(
                message(TransactionalEmailV1::from_value(&v)),
                "invalid field 'client_id': must be a positive integer",
                "{bad}"
            );
        }
    }

    #[test]
    fn blank_strings_and_non_objects_are_invalid() {
        let v = with(transactional(), "idempotency_key", json!("   "));
        assert_eq!(
            message(TransactionalEmailV1::from_value(&v)),
            "invalid field 'idempotency_key': must be a non-empty string"
        );
        let v = with(transactional(), "metadata", json!([1]));
        assert_eq!(
            message(TransactionalEmailV1::from_value(&v)),
            "invalid field 'metadata': must be an object"
        );
    }

    #[test]
    fn null_optionals_are_absent() {
        let v = with(transactional(), "contact_id", Value::Null);
        assert_eq!(
            TransactionalEmailV1::from_value(&v).unwrap().contact_id,
            None
        );
    }

    #[test]
    fn extra_fields_are_ignored() {
        let v = with(ses(), "surprise", json!({"x": 1}));
        assert!(SesWebhookV1::from_value(&v).is_ok());
    }

    #[test]
    fn ses_provider_and_type_are_checked() {
        let v = with(ses(), "provider", json!("sendgrid"));
        assert_eq!(
            message(SesWebhookV1::from_value(&v)),
            "invalid field 'provider': must be 'ses'"
        );
        let v = with(ses(), "notification_type", json!("Bounce"));
        assert_eq!(
            message(SesWebhookV1::from_value(&v)),
            "invalid field 'notification_type': must be one of send, reject, delivery, bounce, complaint, open, click, delivery_delay, rendering_failure, subscription"
        );
        let v = with(event(), "event_type", json!("bounce"));
        assert!(EmailEventV1::from_value(&v).is_err());
    }

    #[test]
    fn to_json_round_trips_with_sorted_keys() {
        let t = TransactionalEmailV1::from_value(&transactional()).unwrap();
        let json = t.to_json();
        assert_eq!(TransactionalEmailV1::parse(&json).unwrap(), t);
        let keys: Vec<String> = serde_json::from_str::<Map<String, Value>>(&json)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert!(
            json.starts_with(r#"{"client_id":3,"contact_id":9,"contract":"transactional-email""#),
            "{json}"
        );
        assert!(json.contains(r#""version":1"#));

        let c = CampaignEmailV1::from_value(&campaign()).unwrap();
        assert_eq!(CampaignEmailV1::parse(&c.to_json()).unwrap(), c);
        assert!(!c.to_json().contains("metadata"), "None fields are omitted");
        let s = SesWebhookV1::from_value(&ses()).unwrap();
        assert_eq!(SesWebhookV1::parse(&s.to_json()).unwrap(), s);
        let e = EmailEventV1::from_value(&event()).unwrap();
        assert_eq!(EmailEventV1::parse(&e.to_json()).unwrap(), e);
    }

    #[test]
    fn nested_metadata_keys_are_sorted() {
        let mut t = TransactionalEmailV1::from_value(&transactional()).unwrap();
        t.metadata = Some(
            json!({"z": 1, "a": {"y": 2, "b": 3}})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert!(t
            .to_json()
            .contains(r#""metadata":{"a":{"b":3,"y":2},"z":1}"#));
    }

    #[test]
    fn batch_ids_are_zero_padded_from_one() {
        assert_eq!(CampaignEmailV1::batch_id(42, 1), "campaign-42-batch-0001");
        assert_eq!(
            CampaignEmailV1::batch_id(42, 12345),
            "campaign-42-batch-12345"
        );
    }
}
