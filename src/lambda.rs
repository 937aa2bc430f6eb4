//! `datamailer lambda`: the AWS Lambda bootstrap for one queue (`DATAMAILER_QUEUE`).
//! Clients, the pool and the limiter are built once per execution environment; each
//! invocation runs the queue's tree over its batch and answers `batchItemFailures`.
//! Metrics go to stdout as CloudWatch Embedded Metric Format lines, flushed at the end of
//! every invocation (namespace `Datamailer`, the metric's labels as dimensions).

use std::time::{Duration, SystemTime};

use anyhow::Context;
use aws_lambda_events::event::sqs::SqsEvent;
use datamailer_actors::registry;
use datamailer_core::queue::QueueName;
use datamailer_runtime::db::PoolSettings;
use datamailer_runtime::lambda::{run_invocation, Invocation};
use datamailer_runtime::source::lambda::deliveries;
use datamailer_runtime::source::sqs::{SqsQueue, SqsTarget};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::{json, Value};

use crate::config::Config;
use crate::services::{self, Services};

/// What a function built from this binary does, from `DATAMAILER_LAMBDA_JOB`.
pub const JOB_ENV: &str = "DATAMAILER_LAMBDA_JOB";

/// `datamailer lambda`: a queue worker (`DATAMAILER_LAMBDA_JOB` unset or `queue`), the scheduled
/// maintenance (`maintenance`) or the migration runner (`migrate`).
pub async fn run(config: Config) -> anyhow::Result<()> {
    match crate::config::var(JOB_ENV).as_deref() {
        None | Some("queue") => run_queue_worker(config).await,
        Some("maintenance") => crate::commands::maintain::run_lambda(config).await,
        Some("migrate") => crate::commands::migrate::run_lambda(config).await,
        Some(other) => anyhow::bail!("{JOB_ENV}: '{other}' must be queue, maintenance or migrate"),
    }
}

/// One queue's worker: each invocation runs the queue's tree over its batch.
async fn run_queue_worker(config: Config) -> anyhow::Result<()> {
    let queue: QueueName = std::env::var("DATAMAILER_QUEUE")
        .context("DATAMAILER_QUEUE must name the queue this function works")?
        .parse()
        .map_err(|e: String| anyhow::anyhow!("DATAMAILER_QUEUE: {e}"))?;
    // One invocation at a time per environment: a small pool, verified after a thaw.
    let max_connections = if std::env::var("DATAMAILER_DB_MAX_CONNECTIONS").is_ok() {
        config.db_max_connections
    } else {
        2
    };
    let pool = PoolSettings {
        max_connections,
        verify_on_recycle: true,
        ..Default::default()
    };
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| queue.to_string());
    datamailer_runtime::telemetry::install_emf(&function)?;
    let services = Services::build(&config, pool).await?;
    let handler = registry::handler(queue, &services.deps())?;
    let sqs = sqs_target(&config, queue).await;
    let max_receives = sqs.max_receives.unwrap_or(queue.spec().max_receives);
    // Handlers stop starting sends this long before the deadline: one SES call may still be
    // in flight and its result must be recorded (validate-infra checks the function timeout
    // leaves room for it).
    let stop_margin = config.ses_timeout + RECORD_MARGIN;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let (handler, sqs, services) = (handler.clone(), sqs.clone(), services.clone());
        async move {
            let time_left = time_budget(event.context.deadline(), SystemTime::now());
            let result = run_invocation(Invocation {
                queue: queue.to_string(),
                handler,
                records: deliveries(&event.payload.records),
                sqs: Some(sqs),
                control: Some(services.control.clone()),
                breaker: Some(services.breaker(queue)),
                time_left,
                stop_margin,
                max_receives,
            })
            .await;
            // Before answering: Lambda may freeze the process as soon as we return.
            datamailer_runtime::telemetry::flush_emf();
            let items: Vec<Value> = result?
                .failures
                .into_iter()
                .map(|id| json!({"itemIdentifier": id}))
                .collect();
            Ok::<Value, lambda_runtime::Error>(json!({"batchItemFailures": items}))
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}

/// After an SES call returns, the time its result needs to be recorded and settled.
pub const RECORD_MARGIN: Duration = Duration::from_secs(5);

/// Where the queue's settlements go: its URL, DLQ and redrive limit, read from the queue when
/// the URL is configured (once per execution environment).
async fn sqs_target(config: &Config, queue: QueueName) -> SqsTarget {
    let aws = services::aws_config(config).await;
    let client = services::sqs_client(&aws);
    let dlq_url = config.sqs_dlq_urls.get(&queue).cloned();
    let fallback = SqsTarget {
        client: client.clone(),
        queue: queue.to_string(),
        url: config.sqs_queue_urls.get(&queue).cloned(),
        dlq_url: dlq_url.clone(),
        max_receives: None,
    };
    let Some(url) = config.sqs_queue_urls.get(&queue) else {
        return fallback;
    };
    match SqsQueue::connect(client, queue.as_str(), url.clone(), dlq_url).await {
        Ok(q) => q.target(),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not read the queue's redrive policy; poison messages will retry"
            );
            fallback
        }
    }
}

/// Lambda's default function timeout: the budget when the invocation has no usable deadline.
const DEFAULT_LAMBDA_TIMEOUT: Duration = Duration::from_secs(3);

/// The time an invocation may take. Lambda's deadline always lies ahead when an invocation
/// starts; one already past is an emulator's placeholder (cargo-lambda's `watch` sends a
/// constant `Lambda-Runtime-Deadline-Ms: 600000`, i.e. 1970). Treating it as "no time left"
/// would cut every batch off after a fraction of a second, so assume Lambda's default timeout.
pub(crate) fn time_budget(deadline: SystemTime, now: SystemTime) -> Duration {
    match deadline.duration_since(now) {
        Ok(left) => left,
        Err(_) => {
            let deadline_ms = deadline
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            tracing::warn!(
                deadline_ms,
                "the invocation deadline is already past (an emulator?); assuming a 3 s budget"
            );
            DEFAULT_LAMBDA_TIMEOUT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_past_deadline_gets_the_default_timeout() {
        let now = SystemTime::now();
        assert_eq!(
            time_budget(now + Duration::from_secs(42), now),
            Duration::from_secs(42)
        );
        let emulator = SystemTime::UNIX_EPOCH + Duration::from_millis(600_000);
        assert_eq!(time_budget(emulator, now), DEFAULT_LAMBDA_TIMEOUT);
    }
}
