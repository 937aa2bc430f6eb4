//! What happens to the runtime's components, as small typed functions: the one place per
//! component that names its metrics and writes its notable log lines (Vector's
//! `InternalEvent` habit), so names stay consistent, `telemetry::EMITTED_METRICS` can list
//! them and tests can find them.
//!
//! Metric names follow Prometheus practice: `datamailer_` prefix, base units, `_total` for
//! counters, bounded labels (queue, lane, task: never ids or addresses).

pub mod control;
pub mod db;
pub mod lambda;
pub mod mailer;
pub mod maintenance;
pub mod source;
pub mod tree;
pub mod writer;
