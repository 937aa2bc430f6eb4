//! `datamailer provision`: create or update a scope and print a new API key.

use anyhow::Context;
use datamailer_core::transactional::SenderIdentity;

use crate::config::Config;
use crate::database;

pub async fn provision(
    config: Config,
    org: String,
    audience: String,
    client: String,
    senders: Vec<String>,
    default_sender: Option<String>,
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
    eprintln!(
        "provisioned organization #{}, audience #{}, client #{}; new API key {} (shown once):",
        done.organization_id, done.audience_id, done.client_id, done.public_id
    );
    println!("{}", done.api_key);
    Ok(())
}
