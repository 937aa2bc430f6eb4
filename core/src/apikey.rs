//! API keys: `dm_<public_id>_<secret>`. The secret is 256 random bits, so a plain
//! SHA-256 is a sufficient stored hash and the lookup goes by public id; the
//! original's PBKDF2 cost ~0.5 s per request and bought nothing (DESIGN "Speed habits").
//! Keys moved over from the original keep their `pbkdf2_sha256$...` hash until first use:
//! [`verify_legacy`] checks it once and the caller stores [`hash`] in its place.

use rand::distributions::Alphanumeric;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "dm_";
const HASH_PREFIX: &str = "sha256$";
const PUBLIC_ID_LEN: usize = 12;
const MAX_PUBLIC_ID_LEN: usize = 32;
const SECRET_BYTES: usize = 32;

/// A freshly generated key. `raw` is shown to the client once; only `key_hash` is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    pub raw: String,
    pub public_id: String,
    pub key_hash: String,
}

/// Generates a new key from the OS-seeded thread RNG.
pub fn generate() -> GeneratedKey {
    let mut rng = rand::thread_rng();
    let public_id: String = (&mut rng)
        .sample_iter(Alphanumeric)
        .take(PUBLIC_ID_LEN)
        .map(char::from)
        .collect();
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut secret);
    let raw = format!("{PREFIX}{public_id}_{}", base64url(&secret));
    GeneratedKey {
        key_hash: hash(&raw),
        public_id,
        raw,
    }
}

/// The stored form of a raw key: `sha256$<hex digest>`.
pub fn hash(raw: &str) -> String {
    format!(
        "{HASH_PREFIX}{}",
        hex::encode(Sha256::digest(raw.as_bytes()))
    )
}

/// The public id used to find a key's row: the text between `dm_` and the next `_`,
/// 1..=32 ASCII alphanumerics. None for keys not in that format.
pub fn public_id(raw: &str) -> Option<&str> {
    let rest = raw.strip_prefix(PREFIX)?;
    let (id, _secret) = rest.split_once('_')?;
    let valid = (1..=MAX_PUBLIC_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric());
    valid.then_some(id)
}

/// Whether `raw` matches `stored_hash`, compared in constant time. Unknown hash
/// formats (e.g. the original's `pbkdf2_sha256$...`) never match.
pub fn verify(raw: &str, stored_hash: &str) -> bool {
    if !stored_hash.starts_with(HASH_PREFIX) {
        return false;
    }
    hash(raw).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

const LEGACY_PREFIX: &str = "pbkdf2_sha256$";
/// Django's default is 1,200,000 (6.0); far above it is refused rather than computed.
const MAX_LEGACY_ITERATIONS: u32 = 5_000_000;

/// Whether `stored_hash` is the original's (Django's `pbkdf2_sha256$<iter>$<salt>$<b64>`).
pub fn is_legacy(stored_hash: &str) -> bool {
    stored_hash.starts_with(LEGACY_PREFIX)
}

/// Whether `raw` matches a Django PBKDF2-SHA256 hash (Django's `PBKDF2PasswordHasher`:
/// PBKDF2-HMAC-SHA256 of the key with the salt's UTF-8 bytes, 32 bytes, standard base64).
/// Costs as many HMACs as the hash's iterations (~0.5 s at Django's defaults): callers run it
/// off the async threads and only once per key.
pub fn verify_legacy(raw: &str, stored_hash: &str) -> bool {
    let Some(rest) = stored_hash.strip_prefix(LEGACY_PREFIX) else {
        return false;
    };
    let mut parts = rest.splitn(3, '$');
    let (Some(iterations), Some(salt), Some(expected)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(iterations) = iterations.parse::<u32>() else {
        return false;
    };
    if iterations == 0 || iterations > MAX_LEGACY_ITERATIONS {
        return false;
    }
    let mut derived = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(raw.as_bytes(), salt.as_bytes(), iterations, &mut derived);
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(derived);
    encoded.as_bytes().ct_eq(expected.trim().as_bytes()).into()
}

/// URL-safe base64 without padding, like Python's `secrets.token_urlsafe`.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
        }
    }
    out
}

/// Why a request was not authenticated; rendered as 401
/// `{"error":{"code":<code>,"message":"Authentication credentials were not accepted."}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.code())]
pub enum AuthError {
    MissingAuthorization,
    InvalidAuthorization,
    InvalidApiKey,
    InactiveClient,
}

impl AuthError {
    /// The same message for every code, so responses reveal nothing about keys.
    pub const MESSAGE: &'static str = "Authentication credentials were not accepted.";

    pub fn code(self) -> &'static str {
        match self {
            AuthError::MissingAuthorization => "missing_authorization",
            AuthError::InvalidAuthorization => "invalid_authorization",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::InactiveClient => "inactive_client",
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let header = match header {
        None | Some("") => return Err(AuthError::MissingAuthorization),
        Some(h) => h.trim(),
    };
    let (scheme, token) = header
        .split_once(char::is_whitespace)
        .ok_or(AuthError::InvalidAuthorization)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::InvalidAuthorization);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_has_documented_shape() {
        let key = generate();
        assert_eq!(key.public_id.len(), 12);
        assert!(key.public_id.bytes().all(|b| b.is_ascii_alphanumeric()));
        let secret = key
            .raw
            .strip_prefix(&format!("dm_{}_", key.public_id))
            .unwrap();
        assert_eq!(secret.len(), 43);
        assert!(secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(public_id(&key.raw), Some(key.public_id.as_str()));
        assert!(verify(&key.raw, &key.key_hash));
        assert_ne!(generate().raw, key.raw);
    }

    #[test]
    fn hash_is_prefixed_sha256_hex() {
        assert_eq!(
            hash("abc"),
            "sha256$ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Made by Django's algorithm (`hashlib.pbkdf2_hmac('sha256', key, salt, 1000)`, base64).
    const LEGACY: &str =
        "pbkdf2_sha256$1000$a1b2c3d4e5f6g7h8$Ll9aNm3oZMUU2KFKbNZZ7C60TVMvbHltL4v06ISX84E=";

    #[test]
    fn legacy_django_hashes_verify_and_nothing_else_does() {
        assert!(is_legacy(LEGACY));
        assert!(verify_legacy("dm_legacyKey01_s3cr3t-value", LEGACY));
        assert!(!verify_legacy("dm_legacyKey01_s3cr3t-valuE", LEGACY));
        assert!(
            !verify("dm_legacyKey01_s3cr3t-value", LEGACY),
            "never the fast path"
        );
        for broken in [
            "pbkdf2_sha256$abc$salt$hash",
            "pbkdf2_sha256$0$a1b2c3d4e5f6g7h8$Ll9aNm3oZMUU2KFKbNZZ7C60TVMvbHltL4v06ISX84E=",
            "pbkdf2_sha256$99999999$s$h",
            "pbkdf2_sha256$1000$a1b2c3d4e5f6g7h8",
            "pbkdf2_sha1$1000$a1b2c3d4e5f6g7h8$Ll9aNm3oZMUU2KFKbNZZ7C60TVMvbHltL4v06ISX84E=",
        ] {
            assert!(
                !verify_legacy("dm_legacyKey01_s3cr3t-value", broken),
                "{broken}"
            );
        }
    }

    #[test]
    fn verify_rejects_wrong_key_and_foreign_formats() {
        let key = generate();
        assert!(!verify("dm_other_key", &key.key_hash));
        assert!(!verify(&key.raw, "pbkdf2_sha256$600000$salt$hash"));
        assert!(!verify(&key.raw, &key.key_hash[..20]));
    }

    #[test]
    fn public_id_parsing() {
        assert_eq!(public_id("dm_abc123_se_cr-et"), Some("abc123"));
        assert_eq!(public_id("dm__secret"), None);
        assert_eq!(public_id("dm_abc"), None);
        assert_eq!(public_id("xx_abc_secret"), None);
        assert_eq!(public_id("dm_ab-c_secret"), None);
        assert_eq!(public_id(&format!("dm_{}_s", "a".repeat(33))), None);
        assert_eq!(
            public_id(&format!("dm_{}_s", "a".repeat(32))).map(str::len),
            Some(32)
        );
    }

    #[test]
    fn base64url_matches_known_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff, 0xbf]), "-_-_");
    }

    #[test]
    fn bearer_token_parsing() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(Some("BEARER abc")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthError::MissingAuthorization));
        assert_eq!(bearer_token(Some("")), Err(AuthError::MissingAuthorization));
        assert_eq!(
            bearer_token(Some("Basic abc")),
            Err(AuthError::InvalidAuthorization)
        );
        assert_eq!(
            bearer_token(Some("Bearer")),
            Err(AuthError::InvalidAuthorization)
        );
        assert_eq!(
            bearer_token(Some("Bearer   ")),
            Err(AuthError::InvalidAuthorization)
        );
    }

    #[test]
    fn auth_error_codes() {
        assert_eq!(
            AuthError::MissingAuthorization.code(),
            "missing_authorization"
        );
        assert_eq!(
            AuthError::InvalidAuthorization.code(),
            "invalid_authorization"
        );
        assert_eq!(AuthError::InvalidApiKey.code(), "invalid_api_key");
        assert_eq!(AuthError::InactiveClient.to_string(), "inactive_client");
    }
}
