//! Amazon SES v2 `SendEmail`: simple content when it can, raw MIME when the message has custom
//! headers or extra parts; always with our tags and the configuration set.
//!
//! Error classes (facts §3.3 plus the v2 names): rejected or malformed messages are permanent;
//! throttling is ours to retry; a paused or suspended account is transient for the message;
//! HTTP 5xx, timeouts and connection failures are transient; anything unknown is transient
//! too, so it retries into the dead-letter queue rather than being lost.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sesv2::config::retry::RetryConfig;
use aws_sdk_sesv2::config::timeout::TimeoutConfig;
use aws_sdk_sesv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{
    Body, Content, Destination, EmailContent, Message, MessageTag, RawMessage,
};

use super::{mime, Mailer, OutgoingEmail, SendError, SendReceipt};

/// The SES client we send with: SDK retries off (the sender retries, so the limiter sees every
/// attempt) and a bounded time per call (`DATAMAILER_SES_TIMEOUT_SECONDS`), which is what a
/// Lambda invocation's stop margin must fit.
pub fn client(config: &aws_config::SdkConfig, timeout: Duration) -> aws_sdk_sesv2::Client {
    let conf = aws_sdk_sesv2::config::Builder::from(config)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3).min(timeout))
                .operation_timeout(timeout)
                .build(),
        )
        .build();
    aws_sdk_sesv2::Client::from_conf(conf)
}

pub struct SesMailer {
    client: aws_sdk_sesv2::Client,
}

impl SesMailer {
    pub fn new(client: aws_sdk_sesv2::Client) -> Self {
        Self { client }
    }
}

const PERMANENT: &[&str] = &[
    "MessageRejected",
    "MailFromDomainNotVerifiedException",
    "BadRequestException",
    "NotFoundException",
    "ConfigurationSetDoesNotExistException",
    "InvalidParameterCombination",
    "InvalidParameterValue",
    "InvalidParameterValueException",
    "ValidationError",
];
const THROTTLED: &[&str] = &[
    "TooManyRequestsException",
    "LimitExceededException",
    "Throttling",
    "ThrottlingException",
];
const PAUSED: &[&str] = &["SendingPausedException", "AccountSuspendedException"];

/// Classifies an error code and HTTP status the way the sender needs.
pub fn classify(code: &str, message: &str, status: Option<u16>) -> SendError {
    let (code, message) = (code.to_string(), message.to_string());
    if THROTTLED.contains(&code.as_str()) || status == Some(429) {
        SendError::Throttled { code, message }
    } else if PAUSED.contains(&code.as_str()) {
        SendError::Paused { code, message }
    } else if PERMANENT.contains(&code.as_str()) {
        SendError::Permanent { code, message }
    } else {
        // 5xx and anything we do not recognise: retry (it ends in the DLQ if it never works).
        SendError::Transient { code, message }
    }
}

fn tag(name: &str, value: &str) -> Option<MessageTag> {
    // SES tag values allow only ASCII letters, digits, '_', '-', '.', '@'.
    let clean: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    MessageTag::builder().name(name).value(clean).build().ok()
}

#[async_trait]
impl Mailer for SesMailer {
    fn kind(&self) -> &'static str {
        "ses"
    }

    async fn quota(&self) -> Option<anyhow::Result<super::Quota>> {
        let result = async {
            let account = self.client.get_account().send().await?;
            let quota = account
                .send_quota()
                .ok_or_else(|| anyhow::anyhow!("GetAccount answered no SendQuota"))?;
            anyhow::Ok(super::Quota {
                max_send_rate: quota.max_send_rate(),
                max_24_hour_send: quota.max24_hour_send(),
                sent_last_24_hours: quota.sent_last24_hours(),
            })
        }
        .await;
        Some(result)
    }

    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError> {
        let destination = Destination::builder()
            .set_to_addresses(Some(email.to.clone()))
            .set_cc_addresses((!email.cc.is_empty()).then(|| email.cc.clone()))
            .set_bcc_addresses((!email.bcc.is_empty()).then(|| email.bcc.clone()))
            .build();
        let content = if email.needs_raw() {
            let raw = RawMessage::builder()
                .data(Blob::new(mime::build(email).into_bytes()))
                .build()
                .map_err(|e| SendError::Permanent {
                    code: "BuildError".into(),
                    message: e.to_string(),
                })?;
            EmailContent::builder().raw(raw).build()
        } else {
            let utf8 = |s: &str| Content::builder().data(s).charset("UTF-8").build();
            let subject = utf8(&email.subject).map_err(|e| SendError::Permanent {
                code: "BuildError".into(),
                message: e.to_string(),
            })?;
            let mut body = Body::builder();
            // As the original: Html always (even empty), Text only when there is text.
            body = body.html(utf8(&email.html_body).expect("data is set"));
            if !email.text_body.is_empty() {
                body = body.text(utf8(&email.text_body).expect("data is set"));
            }
            EmailContent::builder()
                .simple(
                    Message::builder()
                        .subject(subject)
                        .body(body.build())
                        .build(),
                )
                .build()
        };
        let tags: Vec<MessageTag> = email.tags.iter().filter_map(|(k, v)| tag(k, v)).collect();
        let result = self
            .client
            .send_email()
            .from_email_address(&email.from)
            .destination(destination)
            .set_reply_to_addresses((!email.reply_to.is_empty()).then(|| email.reply_to.clone()))
            .content(content)
            .set_email_tags((!tags.is_empty()).then_some(tags))
            .set_configuration_set_name(email.configuration_set.clone())
            .send()
            .await;
        match result {
            Ok(out) => Ok(SendReceipt {
                message_id: out.message_id().unwrap_or_default().to_string(),
            }),
            Err(SdkError::ServiceError(e)) => {
                let status = e.raw().status().as_u16();
                let err = e.err();
                Err(classify(
                    err.code().unwrap_or("Unknown"),
                    err.message().unwrap_or_default(),
                    Some(status),
                ))
            }
            Err(SdkError::TimeoutError(_)) => Err(SendError::Transient {
                code: "Timeout".into(),
                message: "SES request timed out".into(),
            }),
            Err(e) => Err(SendError::Transient {
                code: "ConnectionError".into(),
                message: format!(
                    "Could not connect to SES: {}",
                    aws_sdk_sesv2::error::DisplayErrorContext(&e)
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errors() {
        assert!(matches!(
            classify("MessageRejected", "Address rejected", Some(400)),
            SendError::Permanent { .. }
        ));
        assert!(matches!(
            classify("TooManyRequestsException", "", Some(429)),
            SendError::Throttled { .. }
        ));
        assert!(matches!(
            classify("LimitExceededException", "", Some(400)),
            SendError::Throttled { .. }
        ));
        assert!(matches!(
            classify("SendingPausedException", "", Some(400)),
            SendError::Paused { .. }
        ));
        assert!(matches!(
            classify("InternalFailure", "", Some(500)),
            SendError::Transient { .. }
        ));
        assert_eq!(
            classify("MessageRejected", "Address rejected", None).to_string(),
            "MessageRejected: Address rejected"
        );
    }
}
