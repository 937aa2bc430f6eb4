//! The worker pool.

pub fn pool_checked_out(wait_seconds: f64, open: usize, idle: usize, max: usize) {
    metrics::histogram!("datamailer_db_pool_wait_seconds").record(wait_seconds);
    metrics::gauge!("datamailer_db_pool_connections", "state" => "open").set(open as f64);
    metrics::gauge!("datamailer_db_pool_connections", "state" => "idle").set(idle as f64);
    metrics::gauge!("datamailer_db_pool_max_connections").set(max as f64);
}
