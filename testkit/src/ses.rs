//! Realistic SES events and the SNS envelopes that carry them, shaped after the examples in
//! AWS's documentation ("Examples of event data that Amazon SES publishes to Amazon SNS" and
//! "Amazon SNS notification examples"): every field SES sends is here, not only the ones we
//! read, so a test meets what production meets.

use serde_json::{json, Value};

/// Every event type a configuration set publishes (its `eventType`).
pub const EVENT_TYPES: [&str; 10] = [
    "Send",
    "Reject",
    "Bounce",
    "Complaint",
    "Delivery",
    "Open",
    "Click",
    "DeliveryDelay",
    "Rendering Failure",
    "Subscription",
];

/// What one event is about.
#[derive(Debug, Clone)]
pub struct Mail {
    pub ses_message_id: String,
    /// Our tags: (`datamailer_kind`, `datamailer_id`), if the send carried them.
    pub tags: Option<(String, i64)>,
    /// Who the mail went to.
    pub to: String,
    /// When it was sent (`mail.timestamp`), ISO 8601.
    pub sent_at: String,
}

impl Mail {
    pub fn new(ses_message_id: &str, to: &str) -> Mail {
        Mail {
            ses_message_id: ses_message_id.into(),
            tags: None,
            to: to.into(),
            sent_at: "2026-12-04T10:00:00.000Z".into(),
        }
    }

    pub fn tagged(mut self, kind: &str, id: i64) -> Mail {
        self.tags = Some((kind.into(), id));
        self
    }

    fn mail(&self) -> Value {
        let mut tags = json!({
            "ses:configuration-set": ["datamailer"],
            "ses:source-ip": ["192.0.2.0"],
            "ses:from-domain": ["example.com"],
            "ses:caller-identity": ["datamailer"],
        });
        if let Some((kind, id)) = &self.tags {
            tags["datamailer_kind"] = json!([kind]);
            tags["datamailer_id"] = json!([id.to_string()]);
        }
        json!({
            "timestamp": self.sent_at,
            "source": "News <news@example.com>",
            "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/example.com",
            "sendingAccountId": "123456789012",
            "messageId": self.ses_message_id,
            "destination": [self.to],
            "headersTruncated": false,
            "headers": [
                {"name": "From", "value": "News <news@example.com>"},
                {"name": "To", "value": self.to},
                {"name": "Subject", "value": "Hello"},
                {"name": "MIME-Version", "value": "1.0"},
            ],
            "commonHeaders": {"from": ["News <news@example.com>"], "to": [self.to],
                              "messageId": self.ses_message_id, "subject": "Hello"},
            "tags": tags,
        })
    }
}

/// The event of `event_type` (one of [`EVENT_TYPES`]) about `mail`, happening at `at`.
/// Bounces are `Permanent`/`General` unless [`bounce`] is used.
pub fn event(event_type: &str, mail: &Mail, at: &str) -> Value {
    let mut e = json!({"eventType": event_type, "mail": mail.mail()});
    let to = mail.to.as_str();
    match event_type {
        "Send" => e["send"] = json!({}),
        "Reject" => e["reject"] = json!({"reason": "Bad content"}),
        "Bounce" => return bounce(mail, "Permanent", "General", &[to], at),
        "Complaint" => return complaint(mail, &[to], at),
        "Delivery" => {
            e["delivery"] = json!({"timestamp": at, "processingTimeMillis": 546,
                "recipients": [to], "smtpResponse": "250 ok:  Message 64111812 accepted",
                "reportingMTA": "a8-70.smtp-out.amazonses.com", "remoteMtaIp": "127.0.2.0"})
        }
        "Open" => {
            e["open"] = json!({"ipAddress": "192.0.2.1", "timestamp": at,
                "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 10_3_3 like Mac OS X)"})
        }
        "Click" => {
            e["click"] = json!({"ipAddress": "192.0.2.1", "timestamp": at,
                "userAgent": "Mozilla/5.0", "link": "https://example.com/page?x=1",
                "linkTags": {"samplekey0": ["samplevalue0"]}})
        }
        "DeliveryDelay" => {
            e["deliveryDelay"] = json!({"timestamp": at, "delayType": "TransientCommunicationFailure",
                "expirationTime": "2026-12-05T10:00:00.000Z",
                "delayedRecipients": [{"emailAddress": to, "status": "4.4.1",
                    "diagnosticCode": "smtp; 421 4.4.1 Unable to connect"}]})
        }
        "Rendering Failure" => {
            e["failure"] = json!({"errorMessage": "Attribute 'name' is not present in the rendering data.",
                "templateName": "MyTemplate"})
        }
        "Subscription" => {
            e["subscription"] = json!({"contactList": "SystemMonitor-Canary",
                "timestamp": at, "source": "UnsubscribeHeader",
                "newTopicPreferences": {"unsubscribeAll": true, "topicSubscriptionStatus": []},
                "oldTopicPreferences": {"unsubscribeAll": false, "topicSubscriptionStatus": []}})
        }
        other => e["eventType"] = json!(other),
    }
    e
}

/// A bounce of `kind` (`Permanent`, `Transient`, `Undetermined`) naming `recipients`.
pub fn bounce(mail: &Mail, kind: &str, sub_type: &str, recipients: &[&str], at: &str) -> Value {
    let listed: Vec<Value> = recipients
        .iter()
        .map(|r| {
            json!({"emailAddress": r, "action": "failed", "status": "5.1.1",
                        "diagnosticCode": "smtp; 550 5.1.1 user unknown"})
        })
        .collect();
    json!({"eventType": "Bounce", "mail": mail.mail(),
           "bounce": {"bounceType": kind, "bounceSubType": sub_type, "bouncedRecipients": listed,
                      "timestamp": at, "feedbackId": format!("fb-{}-{at}", mail.ses_message_id),
                      "reportingMTA": "dsn; e226-55.smtp-out.us-east-1.amazonses.com"}})
}

/// A complaint naming `recipients`.
pub fn complaint(mail: &Mail, recipients: &[&str], at: &str) -> Value {
    let listed: Vec<Value> = recipients
        .iter()
        .map(|r| json!({"emailAddress": r}))
        .collect();
    json!({"eventType": "Complaint", "mail": mail.mail(),
           "complaint": {"complainedRecipients": listed, "timestamp": at,
                         "feedbackId": format!("cf-{}-{at}", mail.ses_message_id),
                         "userAgent": "Mozilla/5.0", "complaintFeedbackType": "abuse",
                         "arrivalDate": at, "complaintSubType": null}})
}

/// The SNS `Notification` envelope carrying `event` (as SNS delivers it to SQS with raw
/// message delivery off, or POSTs it to an HTTPS endpoint). Unsigned: a test that needs a
/// signature adds one.
pub fn envelope(event: &Value, sns_message_id: &str) -> Value {
    json!({
        "Type": "Notification",
        "MessageId": sns_message_id,
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:datamailer-ses-events",
        "Subject": "Amazon SES Email Event Notification",
        "Message": event.to_string(),
        "Timestamp": "2026-12-04T10:00:05.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+..",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-1:123456789012:datamailer-ses-events:0",
    })
}
