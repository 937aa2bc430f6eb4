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

/// The ses-webhooks tree ([`crate::ses_webhooks`]) and the reputation guard.
pub mod feedback {
    use datamailer_core::feedback::FeedbackEvent;

    use crate::ses_webhooks::Applied;

    /// SES events by `type` (their email_events type) and `outcome` (`applied`,
    /// `uncorrelated`, `duplicate`, `unavailable`).
    const EVENTS_TOTAL: &str = "datamailer_ses_events_total";
    /// Hard bounces and complaints applied (`type` = `bounce` or `complaint`): the dashboard's
    /// reputation widgets.
    const SUPPRESSIONS_TOTAL: &str = "datamailer_ses_suppressions_total";
    /// How long after the event happened it was applied.
    const EVENT_LAG_SECONDS: &str = "datamailer_ses_event_lag_seconds";
    /// Campaign pauses by who paused them (also written by the API, `by` = `client`).
    const CAMPAIGN_PAUSES_TOTAL: &str = "datamailer_campaign_pauses_total";
    /// 1 while the account-wide guard holds the campaign lane.
    const ACCOUNT_PAUSED: &str = "datamailer_reputation_campaigns_paused";
    /// The rolling rates the account-wide guard last read (`kind` = `bounce`, `complaint`).
    const ACCOUNT_RATE: &str = "datamailer_reputation_rate";

    pub fn applied(event: &FeedbackEvent, applied: Applied) {
        metrics::counter!(EVENTS_TOTAL, "type" => event.event_type, "outcome" => applied.as_str())
            .increment(1);
        if applied != Applied::Applied {
            return;
        }
        let lag = (chrono::Utc::now() - event.occurred_at).num_milliseconds() as f64 / 1000.0;
        metrics::histogram!(EVENT_LAG_SECONDS).record(lag.max(0.0));
        let hard = matches!(
            event.bounce,
            Some(datamailer_core::feedback::BounceClass::Hard)
        );
        if event.event_type == "complaint" || (event.event_type == "bounce" && hard) {
            metrics::counter!(SUPPRESSIONS_TOTAL, "type" => event.event_type).increment(1);
        }
    }

    pub fn campaign_paused(campaign_id: i64, reason: &str) {
        let by = if reason.starts_with("complaint_rate") {
            "complaint_rate"
        } else {
            "bounce_rate"
        };
        tracing::warn!(
            campaign_id,
            reason,
            "campaign paused by its reputation guard"
        );
        metrics::counter!(CAMPAIGN_PAUSES_TOTAL, "by" => by).increment(1);
    }

    pub fn unavailable(error: &anyhow::Error) {
        tracing::warn!(
            error = format!("{error:#}"),
            "SES events not applied: the database is unavailable"
        );
    }

    pub fn account_rates(bounce: f64, complaint: f64, paused: bool) {
        metrics::gauge!(ACCOUNT_RATE, "kind" => "bounce").set(bounce);
        metrics::gauge!(ACCOUNT_RATE, "kind" => "complaint").set(complaint);
        metrics::gauge!(ACCOUNT_PAUSED).set(if paused { 1.0 } else { 0.0 });
    }

    pub fn account_tripped(reason: &str, campaigns: u64) {
        tracing::error!(
            reason,
            campaigns,
            "campaign sending paused account-wide by the reputation guard \
             (`datamailer reputation resume` ends it)"
        );
        metrics::counter!(CAMPAIGN_PAUSES_TOTAL, "by" => "account_reputation").increment(campaigns);
    }
}
