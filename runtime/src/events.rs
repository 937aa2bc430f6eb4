//! What happens to a queue tree, as typed events: the one place that names the metrics (and
//! logs the notable ones), so names stay consistent and tests can find them.
//!
//! Metric names follow Prometheus practice: `datamailer_` prefix, base units, `_total` for
//! counters, a `queue` label on everything (never ids or addresses).

use crate::source::Settlement;

pub fn received(queue: &str, source: &'static str, n: usize) {
    metrics::counter!("datamailer_messages_received_total", "queue" => queue.to_string(), "source" => source)
        .increment(n as u64);
}

pub fn queue_lag(queue: &str, seconds: f64) {
    metrics::histogram!("datamailer_queue_lag_seconds", "queue" => queue.to_string())
        .record(seconds.max(0.0));
}

pub fn in_flight(queue: &str, delta: f64) {
    metrics::gauge!("datamailer_messages_in_flight", "queue" => queue.to_string()).increment(delta);
}

pub fn handled(queue: &str, seconds: f64) {
    metrics::histogram!("datamailer_handler_duration_seconds", "queue" => queue.to_string())
        .record(seconds);
}

pub fn settled(queue: &str, id: &str, settlement: &Settlement) {
    let q = queue.to_string();
    match settlement {
        Settlement::Ack => {
            metrics::counter!("datamailer_messages_acked_total", "queue" => q).increment(1)
        }
        Settlement::Retry { reason, delay } => {
            tracing::warn!(
                queue,
                id,
                reason,
                retry_in_s = delay.as_secs(),
                "message failed; will retry"
            );
            metrics::counter!("datamailer_messages_failed_total", "queue" => q).increment(1)
        }
        Settlement::DeadLetter { reason } => {
            tracing::error!(queue, id, reason, "message dead-lettered");
            metrics::counter!("datamailer_messages_dead_lettered_total", "queue" => q).increment(1)
        }
    }
}

pub fn receive_failed(queue: &str, error: &anyhow::Error) {
    tracing::warn!(
        queue,
        error = format!("{error:#}"),
        "receive failed; backing off"
    );
    metrics::counter!("datamailer_receive_errors_total", "queue" => queue.to_string()).increment(1);
}

pub fn actor_restarted(queue: &str, actor: &'static str, why: &str) {
    tracing::error!(queue, actor, why, "actor crashed; restarting");
    metrics::counter!("datamailer_actor_restarts_total", "queue" => queue.to_string(), "actor" => actor).increment(1);
}

pub fn tree_failed(queue: &str, why: &str) {
    tracing::error!(queue, why, "queue tree gave up: restart limit reached");
    metrics::counter!("datamailer_tree_failures_total", "queue" => queue.to_string()).increment(1);
}

pub fn probe_received(queue: &str) {
    metrics::counter!("datamailer_probes_received_total", "queue" => queue.to_string())
        .increment(1);
}
