//! Sending: SES (or capture) calls, throttles and the rate limiter.

pub fn send_attempted(
    lane: &'static str,
    mailer: &'static str,
    outcome: &'static str,
    seconds: f64,
) {
    metrics::counter!("datamailer_ses_sends_total", "lane" => lane, "mailer" => mailer, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("datamailer_ses_send_duration_seconds", "mailer" => mailer).record(seconds);
}

pub fn throttled(lane: &'static str, attempt: u32, rate_after: Option<f64>) {
    tracing::warn!(
        lane,
        attempt,
        rate_after,
        "SES throttled the send; slowing down and retrying"
    );
    metrics::counter!("datamailer_ses_throttles_total", "lane" => lane).increment(1);
}

pub fn limiter_waited(lane: &'static str, seconds: f64) {
    metrics::histogram!("datamailer_limiter_wait_seconds", "lane" => lane).record(seconds);
}

/// The limiter's current pace (sends per second), after an adaptive change.
pub fn limiter_rate(rate: f64) {
    metrics::gauge!("datamailer_limiter_rate").set(rate);
}

pub fn capture_lookup_failed(error: &anyhow::Error) {
    tracing::warn!(error = format!("{error:#}"), "send ledger lookup failed");
}
