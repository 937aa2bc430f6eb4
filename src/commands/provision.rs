//! `datamailer provision`: create or update a scope and print a new API key.

use anyhow::Context;
use datamailer_core::transactional::SenderIdentity;

use datamailer_runtime::outbound::OutboundPolicy;
use datamailer_web::webhooks::{self, WebhookChange};

use crate::config::Config;
use crate::database;

pub async fn provision(
    config: Config,
    org: String,
    audience: String,
    client: String,
    senders: Vec<String>,
    default_sender: Option<String>,
    (webhook_url, webhook_token): (Option<String>, Option<String>),
) -> anyhow::Result<()> {
    database::ensure_database(&config).await?;
    database::migrate(&config).await?;
    let senders = senders
        .iter()
        .map(|s| {
            let (id, email) = s
                .split_once('=')
                .with_context(|| format!("--sender '{s}': expected ID=EMAIL"))?;
            Ok(SenderIdentity {
                id: id.trim().to_string(),
                email: email.trim().to_string(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Checked before anything is written, with the API's rules.
    let webhook = webhook_change(&config, webhook_url, webhook_token)?;
    let pool = database::web_pool(&config, 2).await?;
    let request = datamailer_web::provision::ProvisionRequest {
        org,
        audience,
        client,
        senders,
        default_sender,
        key_name: None,
    };
    let done = datamailer_web::provision::provision(&pool, &request).await?;
    if let Some(change) = &webhook {
        match webhooks::apply_change(&pool, done.client_id, change).await? {
            Some((url, _)) if url.is_empty() => eprintln!("client webhook cleared"),
            Some((url, _)) => eprintln!("client webhook: {url}"),
            None => anyhow::bail!("--webhook-url needs --webhook-token (no token is stored yet)"),
        }
    }
    eprintln!(
        "provisioned organization #{}, audience #{}, client #{}; new API key {} (shown once):",
        done.organization_id, done.audience_id, done.client_id, done.public_id
    );
    println!("{}", done.api_key);
    Ok(())
}

/// `--webhook-url` / `--webhook-token` as a change, validated like `PUT /api/client/webhook`
/// (an empty `--webhook-url ""` clears the webhook).
fn webhook_change(
    config: &Config,
    url: Option<String>,
    token: Option<String>,
) -> anyhow::Result<Option<WebhookChange>> {
    if url.is_none() && token.is_none() {
        return Ok(None);
    }
    let Some(url) = url else {
        anyhow::bail!("--webhook-token needs --webhook-url");
    };
    let mut body = serde_json::Map::new();
    body.insert("url".into(), url.into());
    if let Some(token) = token {
        body.insert("token".into(), token.into());
    }
    let policy = OutboundPolicy::from_allow_list(&config.outbound_allow_hosts);
    webhooks::parse_change(&body, &policy)
        .map(Some)
        .map_err(|errors| {
            let why: Vec<String> = errors
                .iter()
                .map(|(field, reason)| format!("--webhook-{field}: {reason}"))
                .collect();
            anyhow::anyhow!(
                "{} (URLs must be http(s), at most 2048 characters, and not a loopback, private or link-local address unless DATAMAILER_OUTBOUND_ALLOW_HOSTS names the host; tokens 1 to 255 characters)",
                why.join(", ")
            )
        })
}
