//! Client webhooks (the original's CMP callbacks): which events become callbacks, how a
//! delivery is signed, and when a failed one is tried again.
//!
//! Every POST carries `Authorization: Bearer <token>` (as the original) and
//! `X-Datamailer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`, the HMAC keyed by the
//! client's token over `"<t>."` followed by the raw body. A receiver recomputes it, compares in
//! constant time, and refuses a `t` older than its replay window (we suggest 5 minutes;
//! [`verify`] is the reference implementation).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The callback event type an `email_events.event_type` produces, if any. `transactional`
/// says whether the event belongs to a transactional message (only those map skipped/failed).
pub fn callback_event_type(event_type: &str, transactional: bool) -> Option<&'static str> {
    Some(match event_type {
        "subscribe" => "subscription.resubscribed",
        "unsubscribe" => "subscription.unsubscribed",
        "bounce" => "contact.hard_bounced",
        "complaint" => "contact.complained",
        "delivered" => "message.delivered",
        "open" => "message.opened",
        "click" => "message.clicked",
        "skipped" if transactional => "transactional.skipped",
        "failed" if transactional => "transactional.failed",
        _ => return None,
    })
}

/// Seconds to wait after the 1st, 2nd, ... failed attempt (the last repeats), as the original.
pub const BACKOFF_SECONDS: [u64; 7] = [60, 300, 900, 3600, 10800, 21600, 43200];

/// Attempts before a callback is `failed`.
pub const MAX_ATTEMPTS: u32 = 8;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "X-Datamailer-Signature";

/// How old a signature a receiver should still accept.
pub const REPLAY_WINDOW_SECONDS: i64 = 300;

fn mac(token: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header's value for `body` sent at `timestamp` (unix seconds).
pub fn signature(token: &str, timestamp: i64, body: &[u8]) -> String {
    let digest = mac(token, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(digest))
}

/// Why a signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature header")]
    Malformed,
    #[error("signature timestamp outside the replay window")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a signature header as a receiver should: well-formed, within `window_seconds` of
/// `now`, and matching in constant time.
pub fn verify(
    token: &str,
    header: &str,
    body: &[u8],
    now: i64,
    window_seconds: i64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(SignatureError::Malformed);
    };
    if (now - t).abs() > window_seconds {
        return Err(SignatureError::Stale);
    }
    mac(token, t, body)
        .verify_slice(&v1)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_original_event_types() {
        assert_eq!(
            callback_event_type("bounce", false),
            Some("contact.hard_bounced")
        );
        assert_eq!(
            callback_event_type("skipped", true),
            Some("transactional.skipped")
        );
        assert_eq!(callback_event_type("skipped", false), None);
        assert_eq!(callback_event_type("sent", true), None);
        assert_eq!(callback_event_type("queued", true), None);
    }

    #[test]
    fn signs_and_verifies_with_a_replay_window() {
        let body = br#"{"event_id":"datamailer-email-event:1"}"#;
        let header = signature("s3cret", 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        // The value docs/api.md's Python and openssl examples compute for this input.
        assert_eq!(
            header,
            "t=1700000000,v1=d548703035f399bd6b7595fb81e7a7f7b7907b7b08b4fd23d56700bf1e08b82b"
        );
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        assert_eq!(verify("s3cret", &header, body, 1_700_000_100, 300), Ok(()));
        assert_eq!(
            verify("s3cret", &header, body, 1_700_000_400, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("other", &header, body, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", &header, b"{}", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", "v1=abc", body, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
    }
}
