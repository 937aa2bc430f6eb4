//! The process-wide metrics recorder: Prometheus (rendered at `/metrics`) for long-lived
//! processes, CloudWatch Embedded Metric Format (EMF) lines on stdout inside Lambda.
//!
//! Components record through the `metrics` facade (see each component's `events` section);
//! this module only installs one recorder per process. Every metric name the code emits is
//! listed in [`EMITTED_METRICS`] (alarms may only use these).

use std::sync::OnceLock;

use metrics_cloudwatch_embedded::Collector;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Every `datamailer_*` metric the code emits. Alarms and dashboards may only reference
/// these; a test keeps the list equal to the names in the code.
pub const EMITTED_METRICS: &[&str] = &[
    "datamailer_actor_restarts_total",
    "datamailer_campaign_sending_age_seconds",
    "datamailer_campaign_recipients_sent_total",
    "datamailer_campaign_pauses_total",
    "datamailer_ses_campaign_quota_left",
    "datamailer_client_webhook_post_duration_seconds",
    "datamailer_client_webhooks_total",
    "datamailer_db_pool_connections",
    "datamailer_db_pool_max_connections",
    "datamailer_db_pool_wait_seconds",
    "datamailer_enqueue_failures_total",
    "datamailer_handler_duration_seconds",
    "datamailer_handler_timeouts_total",
    "datamailer_health_check_ok",
    "datamailer_heartbeat_failures_total",
    "datamailer_http_request_duration_seconds",
    "datamailer_http_requests_total",
    "datamailer_limiter_rate",
    "datamailer_limiter_wait_seconds",
    "datamailer_maintenance_acted_on_total",
    "datamailer_maintenance_duration_seconds",
    "datamailer_maintenance_last_success_timestamp_seconds",
    "datamailer_maintenance_passes_skipped_total",
    "datamailer_maintenance_runs_total",
    "datamailer_messages_acked_total",
    "datamailer_messages_dead_lettered_total",
    "datamailer_messages_deferred_total",
    "datamailer_messages_failed_total",
    "datamailer_messages_in_flight",
    "datamailer_messages_received_total",
    "datamailer_paused_handbacks_total",
    "datamailer_probes_received_total",
    "datamailer_queue_lag_seconds",
    "datamailer_queue_paused",
    "datamailer_receive_errors_total",
    "datamailer_reputation_campaigns_paused",
    "datamailer_reputation_rate",
    "datamailer_ses_event_lag_seconds",
    "datamailer_ses_events_total",
    "datamailer_ses_send_duration_seconds",
    "datamailer_ses_sends_total",
    "datamailer_ses_suppressions_total",
    "datamailer_ses_throttles_total",
    "datamailer_settle_failures_total",
    "datamailer_transactional_sends_total",
    "datamailer_tree_breaker_trips_total",
    "datamailer_tree_failures_total",
    "datamailer_tree_state",
    "datamailer_write_batch_failures_total",
    "datamailer_write_batch_size",
    "datamailer_writer_restarts_total",
];

/// The CloudWatch namespace of the EMF metrics.
pub const EMF_NAMESPACE: &str = "Datamailer";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static EMF: OnceLock<&'static Collector> = OnceLock::new();

/// Installs the Prometheus recorder (idempotent). Histograms get buckets fit for seconds.
pub fn install_prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests): keep rendering ours anyway.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The current metrics in the Prometheus text format.
pub fn render_prometheus() -> String {
    install_prometheus().render()
}

/// Installs the EMF recorder for a Lambda function (idempotent; fails if another recorder is
/// already installed). Every metric's labels become its CloudWatch dimensions (`queue` for
/// the queue metrics: `datamailer_queue_lag_seconds{queue}` is `Datamailer /
/// datamailer_queue_lag_seconds` with dimension `queue`); `function` is a property of each
/// line (searchable in Logs Insights), not a dimension, since a function works one queue.
/// Counters are emitted as the increase since the last flush, histograms as their values.
pub fn install_emf(function: &str) -> anyhow::Result<&'static Collector> {
    if let Some(c) = EMF.get() {
        return Ok(c);
    }
    let collector = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(EMF_NAMESPACE)
        .init()
        .map_err(|e| anyhow::anyhow!("installing the EMF metrics recorder: {e}"))?;
    collector.set_property("function", function.to_string());
    for name in EMITTED_METRICS {
        if name.ends_with("_seconds") {
            metrics::describe_histogram!(*name, metrics::Unit::Seconds, "");
        } else if name.ends_with("_total") {
            metrics::describe_counter!(*name, metrics::Unit::Count, "");
        }
    }
    Ok(EMF.get_or_init(|| collector))
}

/// Writes the metrics recorded since the last flush as EMF lines on stdout. Call it before
/// each invocation returns: Lambda freezes the process afterwards. A no-op without EMF.
pub fn flush_emf() {
    let mut out = std::io::stdout().lock();
    if let Err(e) = flush_emf_to(&mut out) {
        tracing::warn!(error = %e, "could not write the EMF metrics");
    }
}

/// [`flush_emf`] into any writer (one JSON document per line).
pub fn flush_emf_to(mut out: impl std::io::Write) -> std::io::Result<()> {
    if let Some(c) = EMF.get() {
        c.flush(&mut out)?;
        out.flush()?;
    }
    Ok(())
}
