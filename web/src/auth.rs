//! Bearer API-key authentication for `/api/...` (facts §4.1).
//!
//! The raw key is `dm_<public_id>_<secret>`: the row is found by its public id in one query
//! (joined with its client and organization) and the SHA-256 of the raw key is compared in
//! constant time. `last_used_at` is refreshed at most once a minute per key, off the hot path.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use datamailer_core::apikey;
use datamailer_core::transactional::SenderIdentity;
use serde_json::Value;
use sqlx::Row;

use crate::error::ApiError;
use crate::AppState;

/// The authenticated client of a request.
#[derive(Debug, Clone)]
pub struct AuthClient {
    pub key_id: i64,
    pub client_id: i64,
    pub client_slug: String,
    pub client_name: String,
    pub organization_id: i64,
    pub organization_slug: String,
    /// The configured sender identities (`clients.sender_emails`).
    pub sender_emails: Vec<SenderIdentity>,
    pub default_sender_id: String,
}

const LOOKUP_SQL: &str = "\
SELECT k.id AS key_id, k.key_hash,
       (k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds') AS touch,
       c.id AS client_id, c.slug AS client_slug, c.name AS client_name, c.is_active,
       c.sender_emails, c.default_sender_id,
       o.id AS organization_id, o.slug AS organization_slug
FROM client_api_keys k
JOIN clients c ON c.id = k.client_id
JOIN organizations o ON o.id = c.organization_id
WHERE k.public_id = $1 AND k.revoked_at IS NULL";

const TOUCH_SQL: &str = "\
UPDATE client_api_keys SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')";

/// Reads `[{"id":..,"email":..}]` as stored in `clients.sender_emails`, skipping junk entries.
pub fn senders_from_json(value: &Value) -> Vec<SenderIdentity> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let id = item.get("id")?.as_str()?;
                    let email = item.get("email")?.as_str()?;
                    Some(SenderIdentity {
                        id: id.to_string(),
                        email: email.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The stored/returned JSON form of a sender set.
pub fn senders_to_json(senders: &[SenderIdentity]) -> Value {
    Value::Array(
        senders
            .iter()
            .map(|s| serde_json::json!({"id": s.id, "email": s.email}))
            .collect(),
    )
}

/// Authenticates a raw Authorization header value against the database.
pub async fn authenticate(state: &AppState, header: Option<&str>) -> Result<AuthClient, ApiError> {
    let raw = apikey::bearer_token(header).map_err(|e| ApiError::Unauthorized(e.code()))?;
    // Keys not in the dm_ format cannot match (the original made only dm_ keys).
    let public_id = apikey::public_id(raw).ok_or(ApiError::Unauthorized("invalid_api_key"))?;
    let row = sqlx::query(LOOKUP_SQL)
        .bind(public_id)
        .fetch_optional(&state.db)
        .await?
        .ok_or(ApiError::Unauthorized("invalid_api_key"))?;
    let key_hash: String = row.try_get("key_hash")?;
    let key_id: i64 = row.try_get("key_id")?;
    if !apikey::verify(raw, &key_hash) && !upgrade_legacy(state, key_id, raw, &key_hash).await? {
        return Err(ApiError::Unauthorized("invalid_api_key"));
    }
    let is_active: bool = row.try_get("is_active")?;
    if !is_active {
        return Err(ApiError::Unauthorized("inactive_client"));
    }
    let touch: bool = row.try_get("touch")?;
    if touch {
        let db = state.db.clone();
        tokio::spawn(async move {
            if let Err(err) = sqlx::query(TOUCH_SQL).bind(key_id).execute(&db).await {
                tracing::warn!(error = %err, key_id, "could not update api key last_used_at");
            }
        });
    }
    let sender_emails: Value = row.try_get("sender_emails")?;
    Ok(AuthClient {
        key_id,
        client_id: row.try_get("client_id")?,
        client_slug: row.try_get("client_slug")?,
        client_name: row.try_get("client_name")?,
        organization_id: row.try_get("organization_id")?,
        organization_slug: row.try_get("organization_slug")?,
        sender_emails: senders_from_json(&sender_emails),
        default_sender_id: row.try_get("default_sender_id")?,
    })
}

/// Legacy checks running at once: each is ~0.5 s of CPU, so a flood of wrong secrets for an
/// imported key's public id cannot take every core.
static LEGACY_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// A key imported from the original (`pbkdf2_sha256$...`): verified once, off the async
/// threads, then its hash replaced by ours (only if nobody replaced or revoked it meanwhile),
/// so every later request takes the fast path.
async fn upgrade_legacy(
    state: &AppState,
    key_id: i64,
    raw: &str,
    stored: &str,
) -> Result<bool, ApiError> {
    if !apikey::is_legacy(stored) {
        return Ok(false);
    }
    let _permit = LEGACY_CHECKS
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let (raw_owned, stored_owned) = (raw.to_string(), stored.to_string());
    let ok = tokio::task::spawn_blocking(move || apikey::verify_legacy(&raw_owned, &stored_owned))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    if !ok {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE client_api_keys SET key_hash = $3, updated_at = now()
         WHERE id = $1 AND key_hash = $2 AND revoked_at IS NULL",
    )
    .bind(key_id)
    .bind(stored)
    .bind(apikey::hash(raw))
    .execute(&state.db)
    .await?;
    tracing::info!(key_id, "legacy API key verified once and rehashed");
    Ok(true)
}

impl FromRequestParts<AppState> for AuthClient {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .map_err(|_| ApiError::Unauthorized("invalid_authorization"))
            })
            .transpose()?;
        authenticate(state, header).await
    }
}
