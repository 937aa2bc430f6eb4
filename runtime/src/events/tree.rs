//! Queue trees: receiving, handling, settling, supervision and the circuit breaker.

use std::time::Duration;

use crate::source::{SettleReport, Settlement};
use crate::tree::breaker::BreakerState;

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
        Settlement::Retry {
            reason,
            delay,
            counted: true,
        } => {
            tracing::warn!(
                queue,
                id,
                reason,
                retry_in_s = delay.as_secs(),
                "message failed; will retry"
            );
            metrics::counter!("datamailer_messages_failed_total", "queue" => q).increment(1)
        }
        Settlement::Retry {
            reason,
            delay,
            counted: false,
        } => {
            tracing::info!(
                queue,
                id,
                reason,
                back_in_s = delay.as_secs(),
                "message deferred (not counted as a failure)"
            );
            metrics::counter!("datamailer_messages_deferred_total", "queue" => q).increment(1)
        }
        Settlement::DeadLetter { reason } => {
            tracing::error!(queue, id, reason, "message dead-lettered");
            metrics::counter!("datamailer_messages_dead_lettered_total", "queue" => q).increment(1)
        }
    }
}

/// Messages the source could not settle even after retrying; they come back after their
/// visibility timeout.
pub fn settle_failures(queue: &str, report: &SettleReport) {
    for f in &report.failures {
        tracing::warn!(
            queue,
            id = %f.id,
            action = f.action,
            error = %f.error,
            "could not settle a message; it returns after its visibility timeout"
        );
        metrics::counter!("datamailer_settle_failures_total", "queue" => queue.to_string(), "action" => f.action)
            .increment(1);
    }
}

pub fn heartbeat_failed(queue: &str, error: &anyhow::Error) {
    tracing::warn!(
        queue,
        error = format!("{error:#}"),
        "visibility heartbeat failed"
    );
    metrics::counter!("datamailer_heartbeat_failures_total", "queue" => queue.to_string())
        .increment(1);
}

pub fn handler_timed_out(queue: &str, why: &str) {
    tracing::error!(queue, why, "batch abandoned: handler past its deadline");
    metrics::counter!("datamailer_handler_timeouts_total", "queue" => queue.to_string())
        .increment(1);
}

pub fn receive_failed(queue: &str, error: &anyhow::Error) {
    tracing::warn!(
        queue,
        error = format!("{error:#}"),
        "receive failed; backing off"
    );
    metrics::counter!("datamailer_receive_errors_total", "queue" => queue.to_string()).increment(1);
}

/// A tree started: its failure counters exist from now on (at 0), so a dashboard or alert
/// reads "no restarts" rather than "no data".
pub fn tree_started(queue: &str, actors: &[&'static str]) {
    for actor in actors {
        metrics::counter!("datamailer_actor_restarts_total", "queue" => queue.to_string(), "actor" => *actor).increment(0);
    }
    metrics::counter!("datamailer_tree_failures_total", "queue" => queue.to_string()).increment(0);
    metrics::counter!("datamailer_tree_breaker_trips_total", "queue" => queue.to_string())
        .increment(0);
}

pub fn actor_restarted(queue: &str, actor: &'static str, why: &str) {
    tracing::error!(queue, actor, why, "actor crashed; restarting");
    metrics::counter!("datamailer_actor_restarts_total", "queue" => queue.to_string(), "actor" => actor).increment(1);
}

pub fn tree_failed(queue: &str, why: &str) {
    tracing::error!(queue, why, "queue tree gave up: restart limit reached");
    metrics::counter!("datamailer_tree_failures_total", "queue" => queue.to_string()).increment(1);
}

pub fn probe_received(queue: &str, probe_id: &str, id: &str, recorded: bool) {
    if recorded {
        tracing::info!(queue, probe_id, id, "probe recorded and acknowledged");
    } else {
        tracing::info!(
            queue,
            probe_id,
            id,
            "probe acknowledged (no control database to record it in)"
        );
    }
    metrics::counter!("datamailer_probes_received_total", "queue" => queue.to_string())
        .increment(1);
}

pub fn pause_changed(queue: &str, paused: bool) {
    if paused {
        tracing::warn!(
            queue,
            "queue paused: receiving nothing until `datamailer resume`"
        );
    } else {
        tracing::info!(queue, "queue resumed");
    }
}

/// The breaker's state as a gauge: 0 closed, 1 half-open (probing), 2 open (backing off).
pub fn tree_state(queue: &str, state: BreakerState) {
    metrics::gauge!("datamailer_tree_state", "queue" => queue.to_string()).set(state.gauge());
}

pub fn tree_state_changed(queue: &str, from: BreakerState, to: BreakerState, reason: &str) {
    match to {
        BreakerState::Closed => tracing::info!(
            queue,
            from = from.as_str(),
            "dependencies answer again: tree resumed"
        ),
        BreakerState::HalfOpen => {
            tracing::info!(queue, reason, "probing whether the dependency is back")
        }
        BreakerState::Open => tracing::warn!(
            queue,
            from = from.as_str(),
            reason,
            "a dependency is down: tree paused, nothing is dead-lettered meanwhile"
        ),
    }
}

pub fn breaker_opened(queue: &str, cooldown: Duration, reason: &str) {
    tracing::warn!(
        queue,
        cooldown_s = cooldown.as_secs_f64(),
        reason,
        "circuit breaker open"
    );
    metrics::counter!("datamailer_tree_breaker_trips_total", "queue" => queue.to_string())
        .increment(1);
}
