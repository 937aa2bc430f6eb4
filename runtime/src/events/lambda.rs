//! Lambda invocations.

use crate::tree::TreeExit;

/// Records handed straight back (paused queue, open circuit breaker), uncounted.
pub fn handed_back(queue: &str, records: usize, why: &str) {
    tracing::warn!(queue, records, why, "every record handed back");
    metrics::counter!("datamailer_paused_handbacks_total", "queue" => queue.to_string())
        .increment(records as u64);
}

pub fn invocation_finished(queue: &str, records: usize, failures: usize, exit: &TreeExit) {
    tracing::info!(queue, records, failures, ?exit, "invocation finished");
}
