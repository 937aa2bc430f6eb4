//! The process-wide metrics recorder and the Prometheus rendering behind `/metrics`.
//!
//! Components record through the `metrics` facade (see each component's `events` section);
//! this module only installs the exporter once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

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
