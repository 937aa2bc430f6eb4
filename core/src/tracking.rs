//! Tracking and unsubscribe tokens, and signed click targets (facts §3.8, with its gaps fixed).
//!
//! The original stored SHA-256 hashes of random tokens and looked every hit up in the
//! database, and its click redirect followed any URL. Here a token *is* its claim, signed:
//!
//! ```text
//! token = base64url( key id (1 byte) | campaign recipient id (8 bytes, big endian) | mac (16 bytes) )
//! mac   = HMAC-SHA256(key, purpose | key id | recipient id), first 16 bytes
//! ```
//!
//! so a forged or altered token is refused without touching the database, no token is stored,
//! and keys rotate by id (the newest signs, every known id verifies). The purpose (tracking or
//! unsubscribe) is inside the MAC, so an open token cannot unsubscribe anyone. A click URL
//! carries `s`, a MAC over the token and the destination: only the links we wrote redirect.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Reads the signing keys (table `tracking_keys`): every process loads them once.
pub const KEYS_SQL: &str = "SELECT id::int4, secret FROM tracking_keys ORDER BY id";

const MAC_LEN: usize = 16;
const TOKEN_LEN: usize = 1 + 8 + MAC_LEN;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Open pixel and click redirect.
    Tracking,
    Unsubscribe,
}

impl Purpose {
    fn tag(self) -> &'static [u8] {
        match self {
            Purpose::Tracking => b"datamailer-tracking",
            Purpose::Unsubscribe => b"datamailer-unsubscribe",
        }
    }
}

/// The signing keys: (id, secret), the newest (highest id) signs.
#[derive(Clone)]
pub struct TrackingKeys {
    keys: Vec<(u8, Vec<u8>)>,
}

impl std::fmt::Debug for TrackingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u8> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("TrackingKeys").field("ids", &ids).finish()
    }
}

impl TrackingKeys {
    /// `None` without any key.
    pub fn new(mut keys: Vec<(u8, Vec<u8>)>) -> Option<TrackingKeys> {
        keys.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        (!keys.is_empty()).then_some(TrackingKeys { keys })
    }

    fn secret(&self, id: u8) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, s)| s.as_slice())
    }

    fn mac(&self, id: u8, parts: &[&[u8]]) -> Option<[u8; MAC_LEN]> {
        let mut mac = HmacSha256::new_from_slice(self.secret(id)?).expect("any key length");
        for part in parts {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        Some(out)
    }

    /// The token of a campaign recipient for a purpose, signed with the newest key.
    pub fn token(&self, purpose: Purpose, recipient_id: i64) -> String {
        let id = self.keys[0].0;
        let rid = recipient_id.to_be_bytes();
        let mac = self
            .mac(id, &[purpose.tag(), &[id], &rid])
            .expect("the newest key exists");
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.push(id);
        bytes.extend_from_slice(&rid);
        bytes.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The recipient id a token names, if we signed it for this purpose.
    pub fn verify(&self, purpose: Purpose, token: &str) -> Option<i64> {
        let bytes = URL_SAFE_NO_PAD.decode(token.as_bytes()).ok()?;
        if bytes.len() != TOKEN_LEN {
            return None;
        }
        let id = bytes[0];
        let rid: [u8; 8] = bytes[1..9].try_into().ok()?;
        let expected = self.mac(id, &[purpose.tag(), &[id], &rid])?;
        let recipient = i64::from_be_bytes(rid);
        (subtle::ConstantTimeEq::ct_eq(&expected[..], &bytes[9..]).into() && recipient > 0)
            .then_some(recipient)
    }

    /// The `s` parameter of a click URL: binds the destination to the token.
    pub fn click_signature(&self, token: &str, destination: &str) -> String {
        let id = self.keys[0].0;
        let mac = self
            .mac(
                id,
                &[
                    b"datamailer-click",
                    token.as_bytes(),
                    destination.as_bytes(),
                ],
            )
            .expect("the newest key exists");
        let mut bytes = vec![id];
        bytes.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Whether `signature` is ours for this token and destination.
    pub fn verify_click(&self, token: &str, destination: &str, signature: &str) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(signature.as_bytes()) else {
            return false;
        };
        if bytes.len() != 1 + MAC_LEN {
            return false;
        }
        let Some(expected) = self.mac(
            bytes[0],
            &[
                b"datamailer-click",
                token.as_bytes(),
                destination.as_bytes(),
            ],
        ) else {
            return false;
        };
        subtle::ConstantTimeEq::ct_eq(&expected[..], &bytes[1..]).into()
    }
}

/// A click destination we redirect to: absolute http(s) with a host (facts §3.8).
pub fn is_allowed_destination(url: &str) -> bool {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        r
    } else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    !host.is_empty()
        && !host.starts_with(':')
        && !url.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// The SHA-256 hex under which the original stored its tokens (facts §3.8:
/// `secrets.token_urlsafe(32)`, 43 base64url characters), if `token` has that shape. Links in
/// mail the original sent before the move carry such tokens; `import-original` copies the
/// hashes, so they keep working here. Our own tokens never have this length.
pub fn legacy_token_hash(token: &str) -> Option<String> {
    use sha2::Digest;
    (token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| hex::encode(Sha256::digest(token.as_bytes())))
}

/// The lowercased host of an http(s) URL.
fn destination_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    let host = host.split(':').next()?.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether the campaign's HTML links to `url`'s host. The original's click links are not
/// signed: for its tokens this stands in for our signature, so an old link still goes where
/// the campaign pointed (any path or query there, which per-recipient links may vary) and
/// nowhere else: no open redirect.
pub fn campaign_links_to_host(html: &str, url: &str) -> bool {
    let Some(wanted) = destination_host(url) else {
        return false;
    };
    let lower = html.to_ascii_lowercase();
    ["https://", "http://"].iter().any(|scheme| {
        lower.match_indices(scheme).any(|(at, _)| {
            let link = lower[at..]
                .split(['"', '\'', '<', '>', ')', ' ', '\t', '\r', '\n'])
                .next()
                .unwrap_or("");
            destination_host(link).as_deref() == Some(wanted.as_str())
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn legacy_tokens_are_the_originals_shape_only() {
        let token = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ-_01234"; // 43
        assert_eq!(token.len(), 43);
        assert_eq!(legacy_token_hash(token).unwrap().len(), 64);
        assert_eq!(
            legacy_token_hash("abc").map(|_| ()),
            None,
            "too short for the original's token"
        );
        assert_eq!(legacy_token_hash(&format!("{token}x")), None);
        assert_eq!(legacy_token_hash(&token.replace('a', "+")), None);
        assert_eq!(legacy_token_hash(&token.replace('a', "é")), None);
        // As Python's hashlib.sha256(token.encode()).hexdigest().
        assert_eq!(
            legacy_token_hash("Jz3p4Xo2m0CxL5Vn8YcQdEwRtUyIoPaSdFgHjKlZ9_-").as_deref(),
            Some("ad0aa1ec904a83fa86cc50d64aea0692edff81af30ef301488c829d17b1be689")
        );
    }

    #[test]
    fn an_unsigned_click_goes_only_to_a_host_the_campaign_links_to() {
        let html = r#"<p><a href="https://Blog.Example.com/post?id=1">Read</a>
            <a href='http://shop.example.org:8080/x'>Shop</a> https://plain.example.net/y</p>"#;
        for ok in [
            "https://blog.example.com/other?utm=1",
            "http://blog.example.com/",
            "https://shop.example.org/x",
            "https://plain.example.net",
        ] {
            assert!(campaign_links_to_host(html, ok), "{ok}");
        }
        for bad in [
            "https://evil.example.com/",
            "https://blog.example.com.evil.test/",
            "https://evil.test/?https://blog.example.com",
            "https://blog.example.com@evil.test/",
            "javascript:alert(1)",
            "",
        ] {
            assert!(!campaign_links_to_host(html, bad), "{bad}");
        }
    }

    use super::*;

    fn keys() -> TrackingKeys {
        TrackingKeys::new(vec![(1, vec![7u8; 32])]).unwrap()
    }

    #[test]
    fn a_token_names_its_recipient_for_its_purpose_only() {
        let k = keys();
        let t = k.token(Purpose::Tracking, 42);
        assert_eq!(t.len(), 34);
        assert_eq!(k.verify(Purpose::Tracking, &t), Some(42));
        assert_eq!(k.verify(Purpose::Unsubscribe, &t), None);
        assert_ne!(t, k.token(Purpose::Tracking, 43));
        let u = k.token(Purpose::Unsubscribe, 42);
        assert_eq!(k.verify(Purpose::Unsubscribe, &u), Some(42));
    }

    #[test]
    fn tampered_or_foreign_tokens_are_refused() {
        let k = keys();
        let t = k.token(Purpose::Tracking, 42);
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        bytes[8] ^= 1; // another recipient id, same MAC
        assert_eq!(
            k.verify(Purpose::Tracking, &URL_SAFE_NO_PAD.encode(&bytes)),
            None
        );
        let other = TrackingKeys::new(vec![(1, vec![8u8; 32])]).unwrap();
        assert_eq!(other.verify(Purpose::Tracking, &t), None);
        for junk in [
            "",
            "preview-tracking-token",
            "ééé",
            &t[..33],
            &format!("{t}A"),
        ] {
            assert_eq!(k.verify(Purpose::Tracking, junk), None, "{junk}");
        }
    }

    #[test]
    fn rotated_keys_keep_old_tokens_valid_and_sign_with_the_newest() {
        let old = keys();
        let t = old.token(Purpose::Tracking, 5);
        let s = old.click_signature(&t, "https://example.com/a");
        let rotated = TrackingKeys::new(vec![(1, vec![7u8; 32]), (2, vec![9u8; 32])]).unwrap();
        assert_eq!(rotated.verify(Purpose::Tracking, &t), Some(5));
        assert!(rotated.verify_click(&t, "https://example.com/a", &s));
        let fresh = rotated.token(Purpose::Tracking, 5);
        assert_eq!(URL_SAFE_NO_PAD.decode(&fresh).unwrap()[0], 2);
        assert_eq!(old.verify(Purpose::Tracking, &fresh), None);
    }

    #[test]
    fn a_click_signature_binds_the_destination() {
        let k = keys();
        let t = k.token(Purpose::Tracking, 42);
        let s = k.click_signature(&t, "https://example.com/a?b=1");
        assert!(k.verify_click(&t, "https://example.com/a?b=1", &s));
        assert!(!k.verify_click(&t, "https://evil.example/", &s));
        assert!(!k.verify_click(
            &k.token(Purpose::Tracking, 43),
            "https://example.com/a?b=1",
            &s
        ));
        assert!(!k.verify_click(&t, "https://example.com/a?b=1", "garbage"));
    }

    #[test]
    fn destinations_must_be_absolute_http_with_a_host() {
        for ok in [
            "https://example.com",
            "http://example.com/x?y=1",
            "https://a.b:8443/",
        ] {
            assert!(is_allowed_destination(ok), "{ok}");
        }
        for bad in [
            "",
            "mailto:a@b.c",
            "javascript:alert(1)",
            "/relative",
            "https://",
            "https:///path",
            "ftp://example.com",
            "https://exa mple.com",
        ] {
            assert!(!is_allowed_destination(bad), "{bad}");
        }
    }
}
