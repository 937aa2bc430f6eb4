//! What happens to the domain's components, as small typed functions (the runtime's
//! `events` habit): one place per component names its metrics and writes its log lines.

/// The client-webhook dispatcher ([`crate::webhooks`]).
pub mod webhooks {
    use datamailer_runtime::Outcome;

    /// Callback attempts by outcome: `delivered` (2xx), `retried` (will be tried again),
    /// `failed` (its last attempt failed: the row is `failed`), `deferred` (not attempted:
    /// the dispatcher stopped first or could not read the configuration).
    const CALLBACKS_TOTAL: &str = "datamailer_client_webhooks_total";
    /// How long one POST took (answered or not).
    const POST_SECONDS: &str = "datamailer_client_webhook_post_duration_seconds";

    pub fn attempt_settled(outcome: &Outcome) {
        let label = match outcome {
            Outcome::Ack => "delivered",
            Outcome::Retry(why) | Outcome::Unavailable(why) => {
                tracing::info!(error = %why, "client webhook failed; it will be tried again");
                "retried"
            }
            Outcome::DeadLetter(why) => {
                tracing::warn!(error = %why, "client webhook failed for the last time");
                "failed"
            }
            Outcome::Defer { .. } => "deferred",
        };
        metrics::counter!(CALLBACKS_TOTAL, "outcome" => label).increment(1);
    }

    pub fn posted(seconds: f64) {
        metrics::histogram!(POST_SECONDS).record(seconds);
    }

    pub fn config_failed(why: &str) {
        tracing::warn!(error = %why, "client webhooks: could not read their configuration");
    }

    pub fn record_failed(error: &anyhow::Error) {
        tracing::warn!(
            error = format!("{error:#}"),
            "client webhooks: could not record the attempts' response statuses"
        );
    }
}
