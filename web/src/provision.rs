//! Provisioning a client scope from the CLI (`datamailer provision`): organization, audience,
//! client, sender identities and a fresh API key, in one transaction. Idempotent for the
//! scope: running it again reuses the rows and only adds a new key.

use anyhow::{bail, Context};
use datamailer_core::transactional::SenderIdentity;
use sqlx::{PgPool, Row};

use crate::auth::senders_to_json;

/// What to provision.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub org: String,
    pub audience: String,
    pub client: String,
    /// When non-empty, replaces the client's sender set.
    pub senders: Vec<SenderIdentity>,
    /// The default sender id (one of `senders`); the first sender when absent.
    pub default_sender: Option<String>,
    /// The new key's name; `cli-<UTC timestamp>` when absent.
    pub key_name: Option<String>,
}

/// What was provisioned. `api_key` is the raw key: shown once, never stored.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub organization_id: i64,
    pub audience_id: i64,
    pub client_id: i64,
    pub api_key: String,
    pub public_id: String,
}

fn check_slug(flag: &str, value: &str, max: usize) -> anyhow::Result<()> {
    if value.len() > max || !datamailer_core::slug::is_slug(value) {
        bail!("--{flag} must be a slug (letters, digits, '-' or '_', at most {max} characters), got {value:?}");
    }
    Ok(())
}

fn check_request(req: &ProvisionRequest) -> anyhow::Result<()> {
    check_slug("org", &req.org, 120)?;
    check_slug("audience", &req.audience, 120)?;
    check_slug("client", &req.client, 120)?;
    let mut seen = std::collections::HashSet::new();
    for sender in &req.senders {
        check_slug("sender", &sender.id, 80)
            .with_context(|| format!("--sender {}={}: bad sender id", sender.id, sender.email))?;
        if datamailer_core::email::parse_sender(&sender.email).is_none() {
            bail!(
                "--sender {}={}: not a valid email address (\"addr\" or \"Name <addr>\")",
                sender.id,
                sender.email
            );
        }
        if !seen.insert(sender.id.as_str()) {
            bail!("--sender {}: duplicate sender id", sender.id);
        }
    }
    if let Some(default) = &req.default_sender {
        if req.senders.is_empty() {
            bail!("--default-sender {default} needs --sender ID=EMAIL (no senders given)");
        }
        if !req.senders.iter().any(|s| &s.id == default) {
            bail!("--default-sender {default} is not one of the --sender ids");
        }
    }
    if let Some(name) = &req.key_name {
        if name.trim().is_empty() || name.len() > 120 {
            bail!("--key-name must be 1 to 120 characters");
        }
    }
    Ok(())
}

/// Creates or reuses the scope and issues a new active API key.
pub async fn provision(pool: &PgPool, req: &ProvisionRequest) -> anyhow::Result<Provisioned> {
    check_request(req)?;
    let mut tx = pool
        .begin()
        .await
        .context("begin provisioning transaction")?;

    // Create-or-get with a no-op update so RETURNING always yields the row.
    let organization_id: i64 = sqlx::query_scalar(
        "INSERT INTO organizations (name, slug) VALUES ($1, $1) \
         ON CONFLICT (slug) DO UPDATE SET slug = EXCLUDED.slug RETURNING id",
    )
    .bind(&req.org)
    .fetch_one(&mut *tx)
    .await
    .context("create organization")?;
    let audience_id: i64 = sqlx::query_scalar(
        "INSERT INTO audiences (organization_id, name, slug) VALUES ($1, $2, $2) \
         ON CONFLICT (organization_id, slug) DO UPDATE SET slug = EXCLUDED.slug RETURNING id",
    )
    .bind(organization_id)
    .bind(&req.audience)
    .fetch_one(&mut *tx)
    .await
    .context("create audience")?;
    let client_id: i64 = sqlx::query_scalar(
        "INSERT INTO clients (organization_id, name, slug) VALUES ($1, $2, $2) \
         ON CONFLICT (organization_id, slug) DO UPDATE SET slug = EXCLUDED.slug RETURNING id",
    )
    .bind(organization_id)
    .bind(&req.client)
    .fetch_one(&mut *tx)
    .await
    .context("create client")?;

    if let Some(first) = req.senders.first() {
        let default = req
            .default_sender
            .clone()
            .unwrap_or_else(|| first.id.clone());
        sqlx::query(
            "UPDATE clients SET sender_emails = $2, default_sender_id = $3, updated_at = now() \
             WHERE id = $1",
        )
        .bind(client_id)
        .bind(senders_to_json(&req.senders))
        .bind(&default)
        .execute(&mut *tx)
        .await
        .context("set client senders")?;
    }

    let name = req
        .key_name
        .clone()
        .unwrap_or_else(|| format!("cli-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ")));
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM client_api_keys \
         WHERE client_id = $1 AND name = $2 AND revoked_at IS NULL)",
    )
    .bind(client_id)
    .bind(&name)
    .fetch_one(&mut *tx)
    .await?;
    if taken {
        bail!(
            "an active API key named {name:?} already exists for client {}",
            req.client
        );
    }
    let key = datamailer_core::apikey::generate();
    let row = sqlx::query(
        "INSERT INTO client_api_keys (client_id, name, key_hash, public_id) \
         VALUES ($1, $2, $3, $4) RETURNING public_id",
    )
    .bind(client_id)
    .bind(&name)
    .bind(&key.key_hash)
    .bind(&key.public_id)
    .fetch_one(&mut *tx)
    .await
    .context("create API key")?;
    let public_id: String = row.try_get("public_id")?;
    tx.commit().await.context("commit provisioning")?;
    Ok(Provisioned {
        organization_id,
        audience_id,
        client_id,
        api_key: key.raw,
        public_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> ProvisionRequest {
        ProvisionRequest {
            org: "acme".into(),
            audience: "news".into(),
            client: "shop".into(),
            senders: vec![SenderIdentity {
                id: "support".into(),
                email: "Support <support@example.com>".into(),
            }],
            default_sender: None,
            key_name: None,
        }
    }

    #[test]
    fn validates_slugs_and_senders() {
        assert!(check_request(&req()).is_ok());
        let mut bad = req();
        bad.org = "Not A Slug".into();
        assert!(check_request(&bad)
            .unwrap_err()
            .to_string()
            .contains("--org"));
        let mut bad = req();
        bad.senders[0].email = "nope".into();
        assert!(check_request(&bad)
            .unwrap_err()
            .to_string()
            .contains("--sender"));
        let mut bad = req();
        bad.default_sender = Some("other".into());
        assert!(check_request(&bad)
            .unwrap_err()
            .to_string()
            .contains("--default-sender"));
    }
}
