//! Group-commit writers ([`crate::writer`]), labelled by sink.

pub fn batch(writer: &'static str, size: usize) {
    metrics::histogram!("datamailer_write_batch_size", "writer" => writer).record(size as f64);
}

pub fn batch_failed(writer: &'static str, size: usize, error: &anyhow::Error) {
    tracing::warn!(
        writer,
        size,
        error = format!("{error:#}"),
        "write batch failed; retrying its items one by one"
    );
    metrics::counter!("datamailer_write_batch_failures_total", "writer" => writer).increment(1);
}

/// A writer started: its restart counter exists from now on (at 0).
pub fn started(writer: &'static str) {
    metrics::counter!("datamailer_writer_restarts_total", "writer" => writer).increment(0);
}

pub fn restarted(writer: &'static str, why: &str) {
    tracing::error!(writer, why, "writer crashed; restarting it");
    metrics::counter!("datamailer_writer_restarts_total", "writer" => writer).increment(1);
}
