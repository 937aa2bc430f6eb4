//! Amazon SNS message signatures, as SNS documents them ("Verifying the signatures of Amazon
//! SNS messages"): an RSA PKCS#1 v1.5 signature, SHA1 for `SignatureVersion` 1 and SHA256
//! for 2, over a canonical string built from the message's fields, made with the key of the
//! X.509 certificate at `SigningCertURL`. Pure: fetching (and caching) the certificate is the
//! caller's.
//!
//! What the original skipped and this checks: the certificate URL must be `https` on
//! `sns.<region>.amazonaws.com` (or `.amazonaws.com.cn`) and name a `.pem`;
//! `UnsubscribeConfirmation` has its canonical string too; every failure says why.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};
use x509_cert::der::Decode;

/// The three message types SNS signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

impl MessageType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Notification" => Some(Self::Notification),
            "SubscriptionConfirmation" => Some(Self::SubscriptionConfirmation),
            "UnsubscribeConfirmation" => Some(Self::UnsubscribeConfirmation),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notification => "Notification",
            Self::SubscriptionConfirmation => "SubscriptionConfirmation",
            Self::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }

    /// The signed fields, in the order they are signed. `Subject` only when present.
    fn signed_fields(self) -> &'static [&'static str] {
        match self {
            Self::Notification => &[
                "Message",
                "MessageId",
                "Subject",
                "Timestamp",
                "TopicArn",
                "Type",
            ],
            Self::SubscriptionConfirmation | Self::UnsubscribeConfirmation => &[
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ],
        }
    }
}

/// Why a message is refused; `Display` is the reason given to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnsError {
    #[error("Type must be Notification, SubscriptionConfirmation or UnsubscribeConfirmation")]
    UnknownType,
    #[error("{0} is missing or not a string")]
    MissingField(&'static str),
    #[error("SignatureVersion must be 1 or 2")]
    UnknownSignatureVersion,
    #[error("SigningCertURL {0}")]
    CertUrl(&'static str),
    #[error("the signing certificate could not be read: {0}")]
    Certificate(String),
    #[error("Signature is not base64")]
    SignatureEncoding,
    #[error("the signature does not match the message")]
    BadSignature,
}

fn field<'a>(msg: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, SnsError> {
    msg.get(name)
        .and_then(Value::as_str)
        .ok_or(SnsError::MissingField(name))
}

/// The message's type.
pub fn message_type(msg: &Map<String, Value>) -> Result<MessageType, SnsError> {
    MessageType::parse(field(msg, "Type")?).ok_or(SnsError::UnknownType)
}

/// `"<Key>\n<Value>\n"` for each signed field present, in order; every field but `Subject`
/// is required.
pub fn canonical_string(msg: &Map<String, Value>) -> Result<String, SnsError> {
    let kind = message_type(msg)?;
    let mut out = String::new();
    for &name in kind.signed_fields() {
        let value = match field(msg, name) {
            Ok(v) => v,
            Err(_) if name == "Subject" && !msg.contains_key("Subject") => continue,
            Err(e) => return Err(e),
        };
        out.push_str(name);
        out.push('\n');
        out.push_str(value);
        out.push('\n');
    }
    Ok(out)
}

/// The certificate URL rule: [`check_sns_url`], naming a `.pem`.
pub fn check_cert_url(url: &str) -> Result<(), SnsError> {
    check_sns_url(url)?;
    let path = url["https://".len()..]
        .split_once('/')
        .map_or("", |(_, p)| p);
    if !path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .ends_with(".pem")
    {
        return Err(SnsError::CertUrl("must name a .pem certificate"));
    }
    Ok(())
}

/// `https://sns.<region>.amazonaws.com[.cn]/...`, nothing else (no user info, no port, no
/// other host that merely ends the same way).
pub fn check_sns_url(url: &str) -> Result<(), SnsError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or(SnsError::CertUrl("must be https"))?;
    let (host, _) = rest
        .split_once('/')
        .ok_or(SnsError::CertUrl("has no path"))?;
    let region = host
        .strip_prefix("sns.")
        .and_then(|h| {
            h.strip_suffix(".amazonaws.com")
                .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
        })
        .ok_or(SnsError::CertUrl("must be on sns.<region>.amazonaws.com"))?;
    let region_ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(SnsError::CertUrl("must be on sns.<region>.amazonaws.com"));
    }
    Ok(())
}

/// The RSA public key (PKCS#1 `RSAPublicKey` DER) of a PEM certificate.
pub fn public_key_of(cert_pem: &str) -> Result<Vec<u8>, SnsError> {
    let body: String = cert_pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    let der = STANDARD
        .decode(body.trim())
        .map_err(|e| SnsError::Certificate(format!("not PEM: {e}")))?;
    let cert = x509_cert::Certificate::from_der(&der)
        .map_err(|e| SnsError::Certificate(format!("not X.509: {e}")))?;
    let key = cert
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    Ok(key.to_vec())
}

/// Verifies the message's signature with the key of its certificate (fetched from the
/// message's `SigningCertURL`, which [`check_cert_url`] must have passed).
pub fn verify(msg: &Map<String, Value>, public_key: &[u8]) -> Result<(), SnsError> {
    let algorithm: &'static dyn ring::signature::VerificationAlgorithm =
        match field(msg, "SignatureVersion")? {
            "1" => &ring::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "2" => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            _ => return Err(SnsError::UnknownSignatureVersion),
        };
    let signature = STANDARD
        .decode(field(msg, "Signature")?)
        .map_err(|_| SnsError::SignatureEncoding)?;
    let canonical = canonical_string(msg)?;
    ring::signature::UnparsedPublicKey::new(algorithm, public_key)
        .verify(canonical.as_bytes(), &signature)
        .map_err(|_| SnsError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_strings_follow_the_documented_field_lists() {
        let note = json!({"Type": "Notification", "MessageId": "m1", "TopicArn": "arn:t",
                          "Message": "hello", "Timestamp": "2026-12-03T00:00:00.000Z",
                          "SignatureVersion": "2", "Signature": "x", "SigningCertURL": "u"});
        assert_eq!(
            canonical_string(note.as_object().unwrap()).unwrap(),
            "Message\nhello\nMessageId\nm1\nTimestamp\n2026-12-03T00:00:00.000Z\nTopicArn\narn:t\nType\nNotification\n"
        );
        let mut with_subject = note.clone();
        with_subject["Subject"] = json!("S");
        assert!(canonical_string(with_subject.as_object().unwrap())
            .unwrap()
            .contains("MessageId\nm1\nSubject\nS\nTimestamp\n"));
        let confirm = json!({"Type": "UnsubscribeConfirmation", "MessageId": "m2", "TopicArn": "arn:t",
                             "Message": "bye", "Timestamp": "t", "Token": "tok", "SubscribeURL": "https://x"});
        assert_eq!(
            canonical_string(confirm.as_object().unwrap()).unwrap(),
            "Message\nbye\nMessageId\nm2\nSubscribeURL\nhttps://x\nTimestamp\nt\nToken\ntok\nTopicArn\narn:t\nType\nUnsubscribeConfirmation\n"
        );
        let mut missing = confirm.clone();
        missing.as_object_mut().unwrap().remove("Token");
        assert_eq!(
            canonical_string(missing.as_object().unwrap()),
            Err(SnsError::MissingField("Token"))
        );
        let other = json!({"Type": "Surprise"});
        assert_eq!(
            canonical_string(other.as_object().unwrap()),
            Err(SnsError::UnknownType)
        );
    }

    #[test]
    fn only_sns_hosts_serve_the_certificate() {
        for ok in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
        ] {
            assert_eq!(check_cert_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/cert.pem",
            "https://sns.us-east-1.amazonaws.com.evil.test/cert.pem",
            "https://evil.test/sns.us-east-1.amazonaws.com/cert.pem",
            "https://sns.us-east-1.amazonaws.com@evil.test/cert.pem",
            "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
            "https://sns..amazonaws.com/cert.pem",
            "https://sns.us-east-1.amazonaws.com/cert.txt",
            "https://sqs.us-east-1.amazonaws.com/cert.pem",
        ] {
            assert!(check_cert_url(bad).is_err(), "{bad}");
        }
    }
}
