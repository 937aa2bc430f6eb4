//! The dashboards' one source of truth: every view (a panel in Grafana, a widget in CloudWatch)
//! is one [`View`] here, with its PromQL queries for hosts that scrape `/metrics` and its
//! CloudWatch metrics for the AWS deployment. From [`rows`] come
//!
//! * `dashboards/grafana/datamailer.json` ([`grafana_json`]): a Grafana dashboard on a
//!   Prometheus data source (the `datasource` template variable) with a `queue` variable;
//! * `dashboards/cloudwatch/dashboard-body.json` ([`cloudwatch_body_pretty`]) and the template's
//!   `Dashboard` `DashboardBody` (`{"Fn::Sub": `[`cloudwatch_body_json`]`}`, with the template's
//!   `${...}` placeholders for queue, function and database names).
//!
//! `deploy/tests/dashboards.rs` fails when a committed file differs from what this module
//! generates; `DATAMAILER_BLESS_DASHBOARDS=1` rewrites them. A view that exists on one side only
//! says so, and why, in [`View::only`].
//!
//! CloudWatch's custom metrics (namespace `Datamailer`) come two ways
//! ([`crate::validate::MetricSource`]): the Lambda workers write Embedded Metric Format lines in
//! which **every label is a dimension** (so a widget names a metric with exactly its labels,
//! [`METRIC_LABELS`]), and the CloudWatch agent on the web host scrapes `/metrics` (dimension
//! `job`, plus those its `metric_declaration` adds). Counters arrive as increments (use `Sum`),
//! histograms as values (use percentiles), gauges as values.

use serde_json::{json, Map, Value};

/// The queues every tree works, as their `queue` label spells them.
pub const QUEUES: &[&str] = crate::validate::QUEUES;

/// The labels each metric a dashboard or alert uses carries, as the code emits it (a test
/// compares this with the emit sites). In Lambda these are the CloudWatch dimensions.
pub const METRIC_LABELS: &[(&str, &[&str])] = &[
    ("datamailer_actor_restarts_total", &["queue", "actor"]),
    ("datamailer_campaign_pauses_total", &["by"]),
    ("datamailer_campaign_recipients_sent_total", &[]),
    ("datamailer_campaign_sending_age_seconds", &[]),
    ("datamailer_client_webhook_post_duration_seconds", &[]),
    ("datamailer_client_webhooks_total", &["outcome"]),
    ("datamailer_db_pool_connections", &["state"]),
    ("datamailer_db_pool_max_connections", &[]),
    ("datamailer_db_pool_wait_seconds", &[]),
    ("datamailer_handler_duration_seconds", &["queue"]),
    ("datamailer_health_check_ok", &[]),
    ("datamailer_http_request_duration_seconds", &["route"]),
    (
        "datamailer_http_requests_total",
        &["route", "method", "status"],
    ),
    ("datamailer_limiter_rate", &[]),
    ("datamailer_limiter_wait_seconds", &["lane"]),
    ("datamailer_maintenance_duration_seconds", &["task"]),
    (
        "datamailer_maintenance_last_success_timestamp_seconds",
        &["task"],
    ),
    ("datamailer_maintenance_runs_total", &["task", "outcome"]),
    ("datamailer_messages_acked_total", &["queue"]),
    ("datamailer_messages_dead_lettered_total", &["queue"]),
    ("datamailer_messages_deferred_total", &["queue"]),
    ("datamailer_messages_failed_total", &["queue"]),
    ("datamailer_messages_in_flight", &["queue"]),
    ("datamailer_messages_received_total", &["queue", "source"]),
    ("datamailer_queue_lag_seconds", &["queue"]),
    ("datamailer_queue_paused", &["queue"]),
    ("datamailer_reputation_campaigns_paused", &[]),
    ("datamailer_reputation_rate", &["kind"]),
    ("datamailer_ses_campaign_quota_left", &[]),
    ("datamailer_ses_event_lag_seconds", &[]),
    ("datamailer_ses_events_total", &["type", "outcome"]),
    ("datamailer_ses_send_duration_seconds", &["mailer"]),
    ("datamailer_ses_sends_total", &["lane", "mailer", "outcome"]),
    ("datamailer_ses_suppressions_total", &["type"]),
    ("datamailer_ses_throttles_total", &["lane"]),
    ("datamailer_transactional_sends_total", &["outcome"]),
    ("datamailer_tree_breaker_trips_total", &["queue"]),
    ("datamailer_tree_failures_total", &["queue"]),
    ("datamailer_tree_state", &["queue"]),
    ("datamailer_writer_restarts_total", &["writer"]),
];

/// The labels of `metric` ([`METRIC_LABELS`]), if a dashboard may use it.
pub fn labels(metric: &str) -> Option<&'static [&'static str]> {
    METRIC_LABELS
        .iter()
        .find(|(m, _)| *m == metric)
        .map(|(_, l)| *l)
}

/// The CloudWatch namespace of our metrics.
pub const NAMESPACE: &str = crate::validate::CUSTOM_NAMESPACE;
/// The `job` dimension the CloudWatch agent gives the web host's metrics.
pub const WEB_JOB: &str = "datamailer-web";

/// What a view's values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Events per second in Grafana; events per period (`Sum`) in CloudWatch.
    Rate,
    Seconds,
    Milliseconds,
    /// A plain number (connections, messages, a state code).
    Count,
    /// 0..1.
    Ratio,
    Percent,
    Bytes,
}

impl Unit {
    /// Grafana's unit id.
    pub fn grafana(self) -> &'static str {
        match self {
            Unit::Rate => "ops",
            Unit::Seconds => "s",
            Unit::Milliseconds => "ms",
            Unit::Count => "short",
            Unit::Ratio => "percentunit",
            Unit::Percent => "percent",
            Unit::Bytes => "bytes",
        }
    }

    /// The left axis label of a CloudWatch widget.
    pub fn cloudwatch(self, period: u32) -> String {
        match self {
            Unit::Rate => format!("per {}", period_text(period)),
            Unit::Seconds => "seconds".into(),
            Unit::Milliseconds => "ms".into(),
            Unit::Count => "count".into(),
            Unit::Ratio => "ratio".into(),
            Unit::Percent => "%".into(),
            Unit::Bytes => "bytes".into(),
        }
    }
}

fn period_text(period: u32) -> String {
    match (period / 60, period % 60) {
        (minutes, 0) if minutes > 0 => format!("{minutes} min"),
        _ => format!("{period} s"),
    }
}

/// Where a view exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// In both dashboards, generated from the same [`View`].
    Both,
    /// Grafana only; the text says why CloudWatch has no counterpart.
    Prometheus(&'static str),
    /// CloudWatch only; the text says why Prometheus has no counterpart.
    CloudWatch(&'static str),
}

/// One PromQL query of a Grafana panel. `$queue` and `$__rate_interval` are Grafana variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub expr: String,
    /// Grafana's legend format (`{{label}}`).
    pub legend: String,
}

/// One CloudWatch metric with all its dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct CwMetric {
    pub namespace: String,
    pub name: String,
    pub dimensions: Vec<(String, String)>,
    pub stat: String,
}

/// One line of a CloudWatch widget: a metric, or the sum of several (metric math).
#[derive(Debug, Clone, PartialEq)]
pub enum CwLine {
    Metric {
        metric: CwMetric,
        label: String,
        right: bool,
    },
    Sum {
        parts: Vec<CwMetric>,
        label: String,
    },
}

impl CwLine {
    /// The metrics this line reads.
    pub fn metrics(&self) -> Vec<&CwMetric> {
        match self {
            CwLine::Metric { metric, .. } => vec![metric],
            CwLine::Sum { parts, .. } => parts.iter().collect(),
        }
    }
}

/// One view: a Grafana panel and/or a CloudWatch widget.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub title: String,
    pub description: String,
    pub unit: Unit,
    pub prometheus: Vec<Query>,
    pub cloudwatch: Vec<CwLine>,
    /// The CloudWatch period (seconds).
    pub period: u32,
    pub only: Only,
}

/// A row of views.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub title: &'static str,
    pub views: Vec<View>,
}

impl View {
    fn new(title: &str, unit: Unit, description: &str) -> View {
        View {
            title: title.into(),
            description: description.into(),
            unit,
            prometheus: vec![],
            cloudwatch: vec![],
            period: 300,
            only: Only::Both,
        }
    }

    fn q(mut self, expr: impl Into<String>, legend: &str) -> View {
        self.prometheus.push(Query {
            expr: expr.into(),
            legend: legend.into(),
        });
        self
    }

    fn cw(mut self, lines: impl IntoIterator<Item = CwLine>) -> View {
        self.cloudwatch.extend(lines);
        self
    }

    fn period(mut self, period: u32) -> View {
        self.period = period;
        self
    }

    fn prometheus_only(mut self, why: &'static str) -> View {
        self.only = Only::Prometheus(why);
        self
    }

    fn cloudwatch_only(mut self, why: &'static str) -> View {
        self.only = Only::CloudWatch(why);
        self
    }
}

// ------------------------------------------------------------------ PromQL and CloudWatch helpers

const QUEUE_FILTER: &str = "queue=~\"$queue\"";

fn selector(metric: &str, filter: &str) -> String {
    if filter.is_empty() {
        metric.to_string()
    } else {
        format!("{metric}{{{filter}}}")
    }
}

/// `sum by (by) (rate(metric{filter}[$__rate_interval]))`.
fn rate(metric: &str, by: &str, filter: &str) -> String {
    let inner = format!("rate({}[$__rate_interval])", selector(metric, filter));
    if by.is_empty() {
        format!("sum({inner})")
    } else {
        format!("sum by ({by}) ({inner})")
    }
}

/// `sum by (by) (increase(metric{filter}[5m]))`: events per 5 minutes (rare events).
fn increase(metric: &str, by: &str, filter: &str) -> String {
    format!("sum by ({by}) (increase({}[5m]))", selector(metric, filter))
}

/// The `q` quantile of a histogram, per `by`.
fn quantile(q: f64, metric: &str, by: &str, filter: &str) -> String {
    let by = if by.is_empty() {
        "le".to_string()
    } else {
        format!("le, {by}")
    };
    format!(
        "histogram_quantile({q}, sum by ({by}) (rate({}[$__rate_interval])))",
        selector(&format!("{metric}_bucket"), filter)
    )
}

fn metric(namespace: &str, name: &str, dims: &[(&str, &str)], stat: &str) -> CwMetric {
    CwMetric {
        namespace: namespace.into(),
        name: name.into(),
        dimensions: dims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        stat: stat.into(),
    }
}

fn line(m: CwMetric, label: impl Into<String>) -> CwLine {
    CwLine::Metric {
        metric: m,
        label: label.into(),
        right: false,
    }
}

fn right(m: CwMetric, label: impl Into<String>) -> CwLine {
    CwLine::Metric {
        metric: m,
        label: label.into(),
        right: true,
    }
}

/// A `Datamailer` metric the Lambda functions write (EMF).
fn emf(name: &str, dims: &[(&str, &str)], stat: &str) -> CwMetric {
    metric(NAMESPACE, name, dims, stat)
}

/// One line per queue of an EMF metric whose only label is `queue` (plus `extra`).
fn per_queue(name: &str, extra: &[(&str, &str)], stat: &str, suffix: &str) -> Vec<CwLine> {
    QUEUES
        .iter()
        .map(|q| {
            let mut dims = vec![("queue", *q)];
            dims.extend_from_slice(extra);
            line(emf(name, &dims, stat), format!("{q}{suffix}"))
        })
        .collect()
}

/// A web-host metric (scraped by the CloudWatch agent, dimension `job`).
fn web(name: &str, stat: &str) -> CwMetric {
    metric(NAMESPACE, name, &[("job", WEB_JOB)], stat)
}

/// The four workers' queue resources, as (queue, template logical id of its queue, of its DLQ,
/// of its worker function).
const QUEUE_RESOURCES: &[(&str, &str, &str, &str)] = &[
    (
        "transactional-email",
        "TransactionalEmailQueue",
        "TransactionalEmailDLQ",
        "TransactionalEmailWorker",
    ),
    (
        "campaign-email",
        "CampaignEmailQueue",
        "CampaignEmailDLQ",
        "CampaignEmailWorker",
    ),
    (
        "ses-webhooks",
        "SesWebhooksQueue",
        "SesWebhooksDLQ",
        "SesWebhooksWorker",
    ),
    (
        "email-events",
        "EmailEventsQueue",
        "EmailEventsDLQ",
        "EmailEventsWorker",
    ),
];

/// Every Lambda function of the template: (label, logical id).
fn functions() -> Vec<(&'static str, &'static str)> {
    let mut f: Vec<_> = QUEUE_RESOURCES.iter().map(|r| (r.0, r.3)).collect();
    f.push(("maintenance", "MaintenanceFunction"));
    f.push(("migrate", "MigrateFunction"));
    f
}

fn lambda_lines(name: &str, stat: &str) -> Vec<CwLine> {
    functions()
        .into_iter()
        .map(|(label, id)| {
            line(
                metric(
                    "AWS/Lambda",
                    name,
                    &[("FunctionName", &format!("${{{id}}}"))],
                    stat,
                ),
                label,
            )
        })
        .collect()
}

fn sqs_lines(name: &str, dlq: bool) -> Vec<CwLine> {
    QUEUE_RESOURCES
        .iter()
        .map(|(q, queue, dlq_id, _)| {
            let id = if dlq { dlq_id } else { queue };
            line(
                metric(
                    "AWS/SQS",
                    name,
                    &[("QueueName", &format!("${{{id}.QueueName}}"))],
                    "Maximum",
                ),
                if dlq {
                    format!("{q} DLQ")
                } else {
                    q.to_string()
                },
            )
        })
        .collect()
}

fn rds(name: &str, stat: &str) -> CwMetric {
    metric(
        "AWS/RDS",
        name,
        &[("DBInstanceIdentifier", "${DatabaseInstance}")],
        stat,
    )
}

/// Send lanes (`lane` label).
const LANES: &[&str] = &["transactional", "campaign"];
/// `datamailer_ses_sends_total{outcome}` (runtime/src/mailer/mod.rs `outcome_label`).
const SEND_OUTCOMES: &[&str] = &[
    "sent",
    "throttled",
    "transient_error",
    "permanent_error",
    "paused",
    "not_attempted",
];
/// `datamailer_client_webhooks_total{outcome}`.
const WEBHOOK_OUTCOMES: &[&str] = &["delivered", "retried", "failed", "deferred"];
/// `datamailer_ses_events_total{type}`: the email_events types of SES's event types.
const SES_EVENT_TYPES: &[&str] = &[
    "sent",
    "delivered",
    "bounce",
    "complaint",
    "open",
    "click",
    "delivery_delay",
    "failed",
    "rendering_failure",
    "subscription",
];
/// `datamailer_ses_events_total{outcome}` other than `applied`.
const NOT_APPLIED: &[&str] = &["uncorrelated", "duplicate", "unavailable"];
/// HTTP statuses the API answers (the CloudWatch view of `datamailer_http_requests_total`).
const HTTP_STATUSES: &[&str] = &[
    "200", "201", "202", "204", "302", "400", "401", "403", "404", "409", "413", "422", "429",
    "500", "503",
];
/// The tree's supervised actors (`actor` label).
const ACTORS: &[&str] = &["poller", "worker"];

/// Every view, row by row.
pub fn rows() -> Vec<Row> {
    vec![
        Row {
            title: "Queues: rate, errors, duration",
            views: vec![
                View::new(
                    "Messages received and acknowledged",
                    Unit::Rate,
                    "Per queue: messages the tree received and acknowledged (done, durable).",
                )
                .q(rate("datamailer_messages_received_total", "queue", QUEUE_FILTER), "{{queue}} received")
                .q(rate("datamailer_messages_acked_total", "queue", QUEUE_FILTER), "{{queue}} acked")
                .cw(per_queue("datamailer_messages_received_total", &[("source", "lambda")], "Sum", " received"))
                .cw(per_queue("datamailer_messages_acked_total", &[], "Sum", " acked")),
                View::new(
                    "Failed, deferred and dead-lettered",
                    Unit::Rate,
                    "Failed: a counted retry (it walks towards the DLQ). Deferred: back later, not counted (a lease held elsewhere, an open breaker, shutting down). Dead-lettered: moved to the DLQ (poison, or out of receives).",
                )
                .q(rate("datamailer_messages_failed_total", "queue", QUEUE_FILTER), "{{queue}} failed")
                .q(rate("datamailer_messages_deferred_total", "queue", QUEUE_FILTER), "{{queue}} deferred")
                .q(rate("datamailer_messages_dead_lettered_total", "queue", QUEUE_FILTER), "{{queue}} dead-lettered")
                .cw(per_queue("datamailer_messages_failed_total", &[], "Sum", " failed"))
                .cw(per_queue("datamailer_messages_deferred_total", &[], "Sum", " deferred"))
                .cw(per_queue("datamailer_messages_dead_lettered_total", &[], "Sum", " dead-lettered")),
                View::new(
                    "Handler duration p50 / p95 / p99",
                    Unit::Seconds,
                    "How long one batch's handling took, per queue.",
                )
                .q(quantile(0.5, "datamailer_handler_duration_seconds", "queue", QUEUE_FILTER), "{{queue}} p50")
                .q(quantile(0.95, "datamailer_handler_duration_seconds", "queue", QUEUE_FILTER), "{{queue}} p95")
                .q(quantile(0.99, "datamailer_handler_duration_seconds", "queue", QUEUE_FILTER), "{{queue}} p99")
                .cw(per_queue("datamailer_handler_duration_seconds", &[], "p50", " p50"))
                .cw(per_queue("datamailer_handler_duration_seconds", &[], "p95", " p95"))
                .cw(per_queue("datamailer_handler_duration_seconds", &[], "p99", " p99")),
            ],
        },
        Row {
            title: "Queues: lag, in flight, dead letters",
            views: vec![
                View::new(
                    "Queue lag p95 (enqueue to handling)",
                    Unit::Seconds,
                    "How long messages waited in the queue before a worker took them (TransactionalQueueLatencyAlarm: transactional p95 > 60 s).",
                )
                .q(quantile(0.95, "datamailer_queue_lag_seconds", "queue", QUEUE_FILTER), "{{queue}} p95")
                .cw(per_queue("datamailer_queue_lag_seconds", &[], "p95", " p95")),
                View::new(
                    "Messages in flight",
                    Unit::Count,
                    "Messages handed to handlers and not yet settled (the poller asks only for free slots).",
                )
                .q(format!("sum by (queue) (datamailer_messages_in_flight{{{QUEUE_FILTER}}})"), "{{queue}}")
                .cw(per_queue("datamailer_messages_in_flight", &[], "Maximum", ""))
                .period(60),
                View::new(
                    "Dead-lettered by the runtime (per 5 min)",
                    Unit::Count,
                    "Messages the runtime moved to a dead-letter queue: `datamailer dlq list --queue NAME` shows them with their reason, `datamailer dlq redrive` sends them back.",
                )
                .q(increase("datamailer_messages_dead_lettered_total", "queue", QUEUE_FILTER), "{{queue}}")
                .cw(per_queue("datamailer_messages_dead_lettered_total", &[], "Sum", "")),
                View::new("SQS age of the oldest message", Unit::Seconds, "QueueAgeAlarm: transactional > 120 s, campaign > 900 s, others > 300 s.")
                    .cw(sqs_lines("ApproximateAgeOfOldestMessage", false))
                    .period(60)
                    .cloudwatch_only("SQS's own metric; on a host the embedded Postgres queue's wait is the queue-lag view"),
                View::new("DLQ depth", Unit::Count, "Messages waiting in each dead-letter queue (DLQDepthAlarm: > 0).")
                    .cw(sqs_lines("ApproximateNumberOfMessagesVisible", true))
                    .period(60)
                    .cloudwatch_only("SQS's own metric; on a host, the dead-lettered view and `datamailer dlq list`"),
            ],
        },
        Row {
            title: "Trees: state, restarts, breaker",
            views: vec![
                View::new(
                    "Tree state (0 closed, 1 half-open, 2 open)",
                    Unit::Count,
                    "The circuit breaker of each queue's tree: open means a dependency (SES, Postgres) is down and the tree receives nothing until its cooldown ends; nothing is dead-lettered meanwhile.",
                )
                .q(format!("max by (queue) (datamailer_tree_state{{{QUEUE_FILTER}}})"), "{{queue}}")
                .cw(per_queue("datamailer_tree_state", &[], "Maximum", ""))
                .period(60),
                View::new(
                    "Restarts and tree failures (per 5 min)",
                    Unit::Count,
                    "Crashed actors restarted by their supervisor, crashed writers restarted, and trees that gave up (restart limit reached: the process fails loudly).",
                )
                .q(increase("datamailer_actor_restarts_total", "queue, actor", QUEUE_FILTER), "{{queue}} {{actor}} restarts")
                .q(increase("datamailer_writer_restarts_total", "writer", ""), "writer {{writer}} restarts")
                .q(increase("datamailer_tree_failures_total", "queue", QUEUE_FILTER), "{{queue}} tree failed")
                .cw(QUEUES.iter().flat_map(|q| {
                    ACTORS.iter().map(move |a| {
                        line(emf("datamailer_actor_restarts_total", &[("queue", q), ("actor", a)], "Sum"), format!("{q} {a} restarts"))
                    })
                }))
                .cw([line(emf("datamailer_writer_restarts_total", &[("writer", "ses-feedback")], "Sum"), "writer ses-feedback restarts")])
                .cw(per_queue("datamailer_tree_failures_total", &[], "Sum", " tree failed")),
                View::new(
                    "Circuit breaker trips and paused queues",
                    Unit::Count,
                    "Breaker trips per 5 min, and queues paused by an operator (`datamailer pause`, 1 = paused).",
                )
                .q(increase("datamailer_tree_breaker_trips_total", "queue", QUEUE_FILTER), "{{queue}} trips")
                .q(format!("max by (queue) (datamailer_queue_paused{{{QUEUE_FILTER}}})"), "{{queue}} paused")
                .cw(per_queue("datamailer_tree_breaker_trips_total", &[], "Sum", " trips"))
                .cw(per_queue("datamailer_queue_paused", &[], "Maximum", " paused")),
            ],
        },
        Row {
            title: "SES sending",
            views: vec![
                View::new(
                    "SES sends by outcome",
                    Unit::Rate,
                    "Every SES SendEmail attempt by lane and outcome (throttled attempts are retried by us).",
                )
                .q(rate("datamailer_ses_sends_total", "lane, outcome", ""), "{{lane}} {{outcome}}")
                .cw(LANES.iter().flat_map(|lane| {
                    SEND_OUTCOMES.iter().map(move |o| {
                        line(emf("datamailer_ses_sends_total", &[("lane", lane), ("mailer", "ses"), ("outcome", o)], "Sum"), format!("{lane} {o}"))
                    })
                })),
                View::new(
                    "SES throttles retried",
                    Unit::Rate,
                    "SES answered too fast: the limiter halves its pace and the send is retried with jittered backoff.",
                )
                .q(rate("datamailer_ses_throttles_total", "lane", ""), "{{lane}}")
                .cw(LANES.iter().map(|lane| line(emf("datamailer_ses_throttles_total", &[("lane", lane)], "Sum"), *lane))),
                View::new(
                    "Limiter wait p95 / p99",
                    Unit::Seconds,
                    "How long a send waited for its slot under the SES rate (transactional mail goes first).",
                )
                .q(quantile(0.95, "datamailer_limiter_wait_seconds", "lane", ""), "{{lane}} p95")
                .q(quantile(0.99, "datamailer_limiter_wait_seconds", "lane", ""), "{{lane}} p99")
                .cw(LANES.iter().flat_map(|lane| {
                    ["p95", "p99"].into_iter().map(move |p| {
                        line(emf("datamailer_limiter_wait_seconds", &[("lane", lane)], p), format!("{lane} {p}"))
                    })
                })),
                View::new(
                    "Limiter pace (sends per second)",
                    Unit::Count,
                    "The limiter's current rate: the configured rate (capped by the account's MaxSendRate), lower after throttles until it recovers.",
                )
                .q("max(datamailer_limiter_rate)", "pace")
                .cw([line(emf("datamailer_limiter_rate", &[], "Minimum"), "pace (lowest environment)")])
                .period(60),
                View::new(
                    "SES call duration p95",
                    Unit::Seconds,
                    "How long one SendEmail call took (answered or not).",
                )
                .q(quantile(0.95, "datamailer_ses_send_duration_seconds", "mailer", ""), "{{mailer}} p95")
                .cw([line(emf("datamailer_ses_send_duration_seconds", &[("mailer", "ses")], "p95"), "ses p95")]),
            ],
        },
        Row {
            title: "Postgres",
            views: vec![
                View::new(
                    "Worker pool: connections vs max",
                    Unit::Count,
                    "The workers' pool (one hard cap per process): open and idle connections against its size. In CloudWatch, the fullest Lambda environment.",
                )
                .q("sum by (state) (datamailer_db_pool_connections)", "{{state}}")
                .q("sum(datamailer_db_pool_max_connections)", "max")
                .cw([
                    line(emf("datamailer_db_pool_connections", &[("state", "open")], "Maximum"), "open"),
                    line(emf("datamailer_db_pool_connections", &[("state", "idle")], "Maximum"), "idle"),
                    line(emf("datamailer_db_pool_max_connections", &[], "Maximum"), "max"),
                ])
                .period(60),
                View::new(
                    "Pool wait p95 / p99",
                    Unit::Seconds,
                    "How long a worker waited for a connection (a full pool shows here first).",
                )
                .q(quantile(0.95, "datamailer_db_pool_wait_seconds", "", ""), "p95")
                .q(quantile(0.99, "datamailer_db_pool_wait_seconds", "", ""), "p99")
                .cw([
                    line(emf("datamailer_db_pool_wait_seconds", &[], "p95"), "p95"),
                    line(emf("datamailer_db_pool_wait_seconds", &[], "p99"), "p99"),
                ]),
                View::new("RDS: CPU, connections, free storage", Unit::Count, "DatabaseCpuAlarm > 80 %, DatabaseConnectionsAlarm, DatabaseFreeStorageAlarm < 2 GiB.")
                    .cw([
                        line(rds("CPUUtilization", "Average"), "CPU %"),
                        line(rds("DatabaseConnections", "Maximum"), "connections"),
                        right(rds("FreeStorageSpace", "Minimum"), "free storage (bytes)"),
                    ])
                    .cloudwatch_only("RDS's own metrics; a host's Postgres is watched by its own exporter"),
            ],
        },
        Row {
            title: "Campaigns",
            views: vec![
                View::new(
                    "Campaign recipients sent",
                    Unit::Rate,
                    "Recipients recorded as sent, all campaigns.",
                )
                .q(rate("datamailer_campaign_recipients_sent_total", "", ""), "sent")
                .cw([line(emf("datamailer_campaign_recipients_sent_total", &[], "Sum"), "sent")]),
                View::new(
                    "Oldest sending campaign (age)",
                    Unit::Seconds,
                    "Age of the oldest campaign in `sending` (0 when none). CampaignStuckAlarm: over an hour.",
                )
                .q("max(datamailer_campaign_sending_age_seconds)", "oldest sending")
                .cw([line(web("datamailer_campaign_sending_age_seconds", "Maximum"), "oldest sending")])
                .period(60),
                View::new(
                    "Campaign pauses by cause (per 5 min)",
                    Unit::Count,
                    "Campaigns paused by their own reputation guard (bounce or complaint rate), the account-wide guard, or the client. CloudWatch shows the workers' causes (the client's pauses happen on the web host).",
                )
                .q(increase("datamailer_campaign_pauses_total", "by", ""), "{{by}}")
                .cw(["bounce_rate", "complaint_rate", "account_reputation"].into_iter().map(|by| {
                    line(emf("datamailer_campaign_pauses_total", &[("by", by)], "Sum"), by)
                })),
            ],
        },
        Row {
            title: "Client webhooks",
            views: vec![
                View::new(
                    "Client webhook dispatch by outcome",
                    Unit::Rate,
                    "Signed callbacks to the clients' webhook URLs: delivered (2xx), retried, failed for the last time, deferred.",
                )
                .q(rate("datamailer_client_webhooks_total", "outcome", ""), "{{outcome}}")
                .cw(WEBHOOK_OUTCOMES.iter().map(|o| line(emf("datamailer_client_webhooks_total", &[("outcome", o)], "Sum"), *o))),
                View::new(
                    "Client webhook POST duration p95 / p99",
                    Unit::Seconds,
                    "How long one POST to a client took (bounded by CMP_WEBHOOK_TIMEOUT_SECONDS).",
                )
                .q(quantile(0.95, "datamailer_client_webhook_post_duration_seconds", "", ""), "p95")
                .q(quantile(0.99, "datamailer_client_webhook_post_duration_seconds", "", ""), "p99")
                .cw([
                    line(emf("datamailer_client_webhook_post_duration_seconds", &[], "p95"), "p95"),
                    line(emf("datamailer_client_webhook_post_duration_seconds", &[], "p99"), "p99"),
                ]),
            ],
        },
        Row {
            title: "HTTP API",
            views: vec![
                View::new(
                    "Requests by status",
                    Unit::Rate,
                    "Every HTTP request the web service answered, by status.",
                )
                .q(rate("datamailer_http_requests_total", "status", ""), "{{status}}")
                .cw(HTTP_STATUSES.iter().map(|s| {
                    line(metric(NAMESPACE, "datamailer_http_requests_total", &[("job", WEB_JOB), ("status", s)], "Sum"), *s)
                })),
                View::new(
                    "Error responses by route (4xx, 5xx)",
                    Unit::Rate,
                    "Refused and failed requests per route template and status.",
                )
                .q(rate("datamailer_http_requests_total", "route, status", "status=~\"[45]..\""), "{{status}} {{route}}")
                .prometheus_only("the CloudWatch agent publishes requests by status only (a route dimension would make one metric per route and status)"),
                View::new(
                    "Request duration p50 / p95 by route",
                    Unit::Seconds,
                    "Time to answer, per route template.",
                )
                .q(quantile(0.5, "datamailer_http_request_duration_seconds", "route", ""), "{{route}} p50")
                .q(quantile(0.95, "datamailer_http_request_duration_seconds", "route", ""), "{{route}} p95")
                .prometheus_only("the CloudWatch agent drops Prometheus histograms"),
                View::new(
                    "Transactional sends accepted by outcome",
                    Unit::Rate,
                    "POST /api/transactional/send (and list sends): queued, skipped (suppressed contact), replayed (idempotency key), dry runs.",
                )
                .q(rate("datamailer_transactional_sends_total", "outcome", ""), "{{outcome}}")
                .prometheus_only("a web-host metric the CloudWatch agent does not publish; the SQS and Lambda views show the same flow"),
                View::new(
                    "Web health (1 = healthy)",
                    Unit::Count,
                    "/health/'s database check, refreshed every few seconds. WebHealthAlarm: below 1 for 3 minutes, or no data.",
                )
                .q("min(datamailer_health_check_ok)", "healthy")
                .cw([line(web("datamailer_health_check_ok", "Minimum"), "healthy")])
                .period(60),
            ],
        },
        Row {
            title: "SES feedback and reputation",
            views: vec![
                View::new(
                    "SES events applied by type",
                    Unit::Rate,
                    "SES's events (through SNS and the ses-webhooks queue) applied to their message or recipient.",
                )
                .q(rate("datamailer_ses_events_total", "type", "outcome=\"applied\""), "{{type}}")
                .cw(SES_EVENT_TYPES.iter().map(|t| {
                    line(emf("datamailer_ses_events_total", &[("type", t), ("outcome", "applied")], "Sum"), *t)
                })),
                View::new(
                    "SES events not applied",
                    Unit::Rate,
                    "Uncorrelated (no message of ours), duplicate (already applied) and unavailable (the database was down: retried).",
                )
                .q(rate("datamailer_ses_events_total", "outcome", "outcome!=\"applied\""), "{{outcome}}")
                .cw(NOT_APPLIED.iter().map(|o| CwLine::Sum {
                    parts: SES_EVENT_TYPES
                        .iter()
                        .map(|t| emf("datamailer_ses_events_total", &[("type", t), ("outcome", o)], "Sum"))
                        .collect(),
                    label: o.to_string(),
                })),
                View::new(
                    "Suppressions and event lag",
                    Unit::Count,
                    "Hard bounces and complaints applied (the address is suppressed), per 5 min; and how long after SES's event we applied it (p95, right axis in CloudWatch).",
                )
                .q(increase("datamailer_ses_suppressions_total", "type", ""), "{{type}} suppressions")
                .q(quantile(0.95, "datamailer_ses_event_lag_seconds", "", ""), "event lag p95 (s)")
                .cw(["bounce", "complaint"].into_iter().map(|t| line(emf("datamailer_ses_suppressions_total", &[("type", t)], "Sum"), format!("{t} suppressions"))))
                .cw([right(emf("datamailer_ses_event_lag_seconds", &[], "p95"), "event lag p95 (s)")]),
                View::new(
                    "Reputation guard: rolling rates of the last N sends, campaign lane held",
                    Unit::Ratio,
                    "The account-wide guard's bounce and complaint rates over the last DATAMAILER_REPUTATION_WINDOW_SENDS sends; campaign lane held = 1 while it holds campaign sending (`datamailer reputation resume` ends it).",
                )
                .q("max by (kind) (datamailer_reputation_rate)", "{{kind}} rate")
                .q("max(datamailer_reputation_campaigns_paused)", "campaign lane held")
                .cw(["bounce", "complaint"].into_iter().map(|k| line(emf("datamailer_reputation_rate", &[("kind", k)], "Maximum"), format!("{k} rate"))))
                .cw([right(emf("datamailer_reputation_campaigns_paused", &[], "Maximum"), "campaign lane held")]),
                View::new("SES account reputation", Unit::Ratio, "SesBounceRateAlarm > 4 %, SesComplaintRateAlarm > 0.08 % (SES reviews at 5 % / 0.1 %).")
                    .cw([
                        line(metric("AWS/SES", "Reputation.BounceRate", &[], "Maximum"), "bounce rate"),
                        line(metric("AWS/SES", "Reputation.ComplaintRate", &[], "Maximum"), "complaint rate"),
                    ])
                    .period(900)
                    .cloudwatch_only("SES's own account metrics; the guard's rates above are ours"),
            ],
        },
        Row {
            title: "Lambda",
            views: vec![
                View::new("Lambda errors", Unit::Count, "Invocation errors (crashes, timeouts) per function (<Worker>ErrorsAlarm: > 0).")
                    .cw(lambda_lines("Errors", "Sum"))
                    .cloudwatch_only("Lambda's own metrics"),
                View::new("Lambda throttles", Unit::Count, "Throttled invocations (MaximumConcurrency above reserved concurrency?).")
                    .cw(lambda_lines("Throttles", "Sum"))
                    .cloudwatch_only("Lambda's own metrics"),
                View::new("Lambda duration p95", Unit::Milliseconds, "<Worker>DurationAlarm: p95 above 80 % of the timeout.")
                    .cw(lambda_lines("Duration", "p95"))
                    .cloudwatch_only("Lambda's own metrics; on a host, the handler-duration view"),
            ],
        },
        Row {
            title: "Maintenance",
            views: vec![
                View::new("Maintenance runs (invocations and errors per 5 min; expect about 5 invocations)", Unit::Count, "The scheduled maintenance function (MaintenanceNotRunningAlarm, MaintenanceErrorsAlarm).")
                    .cw([
                        line(metric("AWS/Lambda", "Invocations", &[("FunctionName", "${MaintenanceFunction}")], "Sum"), "invocations"),
                        line(metric("AWS/Lambda", "Errors", &[("FunctionName", "${MaintenanceFunction}")], "Sum"), "errors"),
                    ])
                    .cloudwatch_only("the schedule's Lambda invocations; on a host, the task views"),
                View::new(
                    "Maintenance task runs by outcome (per 5 min)",
                    Unit::Count,
                    "Each maintenance task (stale rows, lease reconciling, scheduling, client webhooks, the reputation guard) by outcome.",
                )
                .q("sum by (task, outcome) (increase(datamailer_maintenance_runs_total[5m]))", "{{task}} {{outcome}}")
                .prometheus_only("in AWS the scheduled function's invocations and errors are the view"),
                View::new(
                    "Since each task's last success",
                    Unit::Seconds,
                    "Seconds since each maintenance task last succeeded (one maintainer acts at a time, so only the acting process's tasks advance).",
                )
                .q("time() - max by (task) (datamailer_maintenance_last_success_timestamp_seconds)", "{{task}}")
                .prometheus_only("in AWS the scheduled function's invocations and errors are the view"),
            ],
        },
    ]
}

// ------------------------------------------------------------------------------- Grafana

/// The Grafana dashboard (Prometheus data source chosen by the `datasource` variable).
pub fn grafana() -> Value {
    let ds = json!({"type": "prometheus", "uid": "${datasource}"});
    let mut panels = vec![];
    let mut id = 1;
    let mut y = 0;
    for row in rows() {
        let views: Vec<&View> = row
            .views
            .iter()
            .filter(|v| !v.prometheus.is_empty())
            .collect();
        if views.is_empty() {
            continue;
        }
        panels.push(json!({
            "type": "row",
            "id": id,
            "title": row.title,
            "collapsed": false,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": [],
        }));
        id += 1;
        y += 1;
        for (i, v) in views.iter().enumerate() {
            let (w, h) = (8, 8);
            if i > 0 && i % 3 == 0 {
                y += h;
            }
            let targets: Vec<Value> = v
                .prometheus
                .iter()
                .enumerate()
                .map(|(n, q)| {
                    json!({
                        "refId": ref_id(n),
                        "datasource": ds,
                        "expr": q.expr,
                        "legendFormat": q.legend,
                        "range": true,
                    })
                })
                .collect();
            let mut description = v.description.clone();
            if let Only::Prometheus(why) = v.only {
                description.push_str(&format!(" (Not in CloudWatch: {why}.)"));
            }
            panels.push(json!({
                "type": "timeseries",
                "id": id,
                "title": v.title,
                "description": description,
                "datasource": ds,
                "gridPos": {"h": h, "w": w, "x": (i % 3) * w, "y": y},
                "fieldConfig": {
                    "defaults": {
                        "unit": v.unit.grafana(),
                        "custom": {
                            "drawStyle": "line",
                            "lineWidth": 1,
                            "fillOpacity": 10,
                            "showPoints": "never",
                            "spanNulls": false,
                        },
                    },
                    "overrides": [],
                },
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": true},
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
                "targets": targets,
            }));
            id += 1;
        }
        y += 8;
    }
    json!({
        "title": "datamailer",
        "uid": "datamailer",
        "description": "datamailer on Prometheus (generated by deploy/src/dashboards.rs; see dashboards/README.md)",
        "tags": ["datamailer"],
        "editable": true,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
            },
            {
                "name": "queue",
                "label": "Queue",
                "type": "query",
                "datasource": ds,
                "definition": "label_values(datamailer_messages_received_total, queue)",
                "query": {
                    "query": "label_values(datamailer_messages_received_total, queue)",
                    "refId": "queue",
                },
                "includeAll": true,
                "multi": true,
                "allValue": ".*",
                "current": {"selected": true, "text": ["All"], "value": ["$__all"]},
                "refresh": 2,
                "sort": 1,
                "hide": 0,
            },
        ]},
        "panels": panels,
    })
}

fn ref_id(n: usize) -> String {
    let letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    if n < letters.len() {
        (letters[n] as char).to_string()
    } else {
        format!("Q{n}")
    }
}

/// `v` with every object's keys in sorted order, however `serde_json` is built: with its
/// `preserve_order` feature (which another crate of a build may turn on) a map keeps insertion
/// order, so the generated text would depend on what else is compiled.
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// `dashboards/grafana/datamailer.json`'s text.
pub fn grafana_json() -> String {
    serde_json::to_string_pretty(&canonical(grafana())).expect("JSON") + "\n"
}

// ---------------------------------------------------------------------------- CloudWatch

/// The CloudWatch dashboard body, with the template's `${...}` placeholders.
pub fn cloudwatch_body() -> Value {
    let mut widgets = vec![json!({
        "type": "text",
        "x": 0, "y": 0, "width": 24, "height": 1,
        "properties": {"markdown": "# datamailer ${EnvironmentName} operations"},
    })];
    let mut y = 1;
    for row in rows() {
        let views: Vec<&View> = row
            .views
            .iter()
            .filter(|v| !v.cloudwatch.is_empty())
            .collect();
        if views.is_empty() {
            continue;
        }
        widgets.push(json!({
            "type": "text",
            "x": 0, "y": y, "width": 24, "height": 1,
            "properties": {"markdown": format!("## {}", row.title)},
        }));
        y += 1;
        for (i, v) in views.iter().enumerate() {
            let (w, h) = (8, 6);
            if i > 0 && i % 3 == 0 {
                y += h;
            }
            widgets.push(json!({
                "type": "metric",
                "x": (i % 3) * w, "y": y, "width": w, "height": h,
                "properties": widget_properties(v),
            }));
        }
        y += 6;
    }
    json!({ "widgets": widgets })
}

fn widget_properties(v: &View) -> Value {
    let mut metrics = vec![];
    let mut sums = 0;
    for l in &v.cloudwatch {
        match l {
            CwLine::Metric {
                metric,
                label,
                right,
            } => {
                let mut opts = Map::new();
                opts.insert("stat".into(), json!(metric.stat));
                opts.insert("label".into(), json!(label));
                if *right {
                    opts.insert("yAxis".into(), json!("right"));
                }
                metrics.push(metric_row(metric, opts));
            }
            CwLine::Sum { parts, label } => {
                let ids: Vec<String> = (0..parts.len()).map(|n| format!("s{sums}_{n}")).collect();
                for (m, id) in parts.iter().zip(&ids) {
                    let mut opts = Map::new();
                    opts.insert("stat".into(), json!(m.stat));
                    opts.insert("id".into(), json!(id));
                    opts.insert("visible".into(), json!(false));
                    metrics.push(metric_row(m, opts));
                }
                metrics.push(json!([{
                    "expression": format!("SUM([{}])", ids.join(",")),
                    "label": label,
                    "id": format!("s{sums}"),
                }]));
                sums += 1;
            }
        }
    }
    let stat = v
        .cloudwatch
        .iter()
        .flat_map(|l| l.metrics())
        .next()
        .map(|m| m.stat.clone())
        .unwrap_or_else(|| "Sum".into());
    json!({
        "title": v.title,
        "region": "${AWS::Region}",
        "view": "timeSeries",
        "stacked": false,
        "stat": stat,
        "period": v.period,
        "yAxis": {"left": {"label": v.unit.cloudwatch(v.period), "showUnits": false}},
        "metrics": metrics,
    })
}

fn metric_row(m: &CwMetric, opts: Map<String, Value>) -> Value {
    let mut row = vec![json!(m.namespace), json!(m.name)];
    for (k, v) in &m.dimensions {
        row.push(json!(k));
        row.push(json!(v));
    }
    row.push(Value::Object(opts));
    Value::Array(row)
}

/// The `DashboardBody`'s `Fn::Sub` string (compact JSON).
pub fn cloudwatch_body_json() -> String {
    serde_json::to_string(&canonical(cloudwatch_body())).expect("JSON")
}

/// `dashboards/cloudwatch/dashboard-body.json`'s text (the same body, indented).
pub fn cloudwatch_body_pretty() -> String {
    serde_json::to_string_pretty(&canonical(cloudwatch_body())).expect("JSON") + "\n"
}

/// Every CloudWatch metric the body reads.
pub fn cloudwatch_metrics() -> Vec<CwMetric> {
    rows()
        .into_iter()
        .flat_map(|r| r.views)
        .flat_map(|v| v.cloudwatch)
        .flat_map(|l| l.metrics().into_iter().cloned().collect::<Vec<_>>())
        .collect()
}
