//! The queues' Lambda event source mappings, as `datamailer pause` and `resume` switch them.
//!
//! On AWS a paused queue's Lambda invocations hand every record back, and every hand-back
//! counts as a receive: a pause longer than a few minutes would walk messages into the DLQ.
//! Disabling the mapping stops the receiving itself, so `pause` does it (when the queue's
//! `DATAMAILER_<QUEUE>_EVENT_SOURCE_MAPPING` is set, as `release.sh` does on the web host) and
//! `resume` enables the mapping again, but only if the pause was what disabled it.

use aws_sdk_lambda::Client;

use crate::config::Config;
use crate::services;

/// The Lambda API client for the configured region and endpoint.
pub async fn client(config: &Config) -> Client {
    Client::new(&services::aws_config(config).await)
}

/// Disables the mapping; `true` if this call disabled it, `false` if it was already disabled
/// (or being disabled).
pub async fn disable(lambda: &Client, uuid: &str) -> anyhow::Result<bool> {
    let current = lambda
        .get_event_source_mapping()
        .uuid(uuid)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "GetEventSourceMapping {uuid}: {}",
                aws_sdk_lambda::error::DisplayErrorContext(e)
            )
        })?;
    if matches!(current.state(), Some("Disabled" | "Disabling")) {
        return Ok(false);
    }
    set_enabled(lambda, uuid, false).await?;
    Ok(true)
}

pub async fn enable(lambda: &Client, uuid: &str) -> anyhow::Result<()> {
    set_enabled(lambda, uuid, true).await
}

async fn set_enabled(lambda: &Client, uuid: &str, enabled: bool) -> anyhow::Result<()> {
    lambda
        .update_event_source_mapping()
        .uuid(uuid)
        .enabled(enabled)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "UpdateEventSourceMapping {uuid} Enabled={enabled}: {}",
                aws_sdk_lambda::error::DisplayErrorContext(e)
            )
        })?;
    Ok(())
}
