//! Queue pauses and probes.

pub fn paused_state(queue: &str, paused: bool) {
    metrics::gauge!("datamailer_queue_paused", "queue" => queue.to_string()).set(if paused {
        1.0
    } else {
        0.0
    });
}

pub fn pause_state_unreadable(queue: &str, error: &anyhow::Error) {
    tracing::warn!(
        queue,
        error = format!("{error:#}"),
        "could not read the pause state; keeping the last known"
    );
}
