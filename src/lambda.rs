//! `datamailer lambda`: the AWS Lambda bootstrap for one queue (`DATAMAILER_QUEUE`).
//! Clients, the pool and the limiter are built once per execution environment; each
//! invocation runs the queue's tree over its batch and answers `batchItemFailures`.
//! Metrics go to stdout as CloudWatch Embedded Metric Format lines, flushed at the end of
//! every invocation (namespace `Datamailer`, the metric's labels as dimensions).

use std::time::{Duration, SystemTime};

use anyhow::Context;
use aws_lambda_events::event::sqs::SqsEvent;
use datamailer_core::queue::QueueName;
use datamailer_runtime::db::PoolSettings;
use datamailer_runtime::source::lambda::LambdaSqs;
use datamailer_runtime::source::sqs::SqsQueue;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::{json, Value};

use crate::config::Config;
use crate::services::{self, Services};

pub async fn run(config: Config) -> anyhow::Result<()> {
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
    let control = services.control.clone();
    let handler = services.handler(queue)?;
    let aws = services::aws_config(&config).await;
    let client = services::sqs_client(&aws);
    let queue_url = config.sqs_queue_urls.get(&queue).cloned();
    let mut dlq_url = config.sqs_dlq_urls.get(&queue).cloned();
    if let (None, Some(url)) = (&dlq_url, &queue_url) {
        match SqsQueue::connect(client.clone(), queue.as_str(), url.clone(), None).await {
            Ok(q) => dlq_url = q.dlq_url().map(str::to_string),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "could not discover the DLQ; poison messages will retry"
            ),
        }
    }
    let sqs = LambdaSqs {
        client,
        queue_url,
        dlq_url,
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let (handler, sqs, control) = (handler.clone(), sqs.clone(), control.clone());
        async move {
            let time_left = time_budget(event.context.deadline(), SystemTime::now());
            let records = event.payload.records;
            let result = datamailer_runtime::lambda::run_invocation(
                queue.as_str(),
                handler,
                &records,
                Some(sqs),
                Some(control),
                time_left,
            )
            .await;
            // Before answering: Lambda may freeze the process as soon as we return.
            datamailer_runtime::telemetry::flush_emf();
            let failures = result?;
            let items: Vec<Value> = failures
                .into_iter()
                .map(|id| json!({"itemIdentifier": id}))
                .collect();
            Ok::<Value, lambda_runtime::Error>(json!({"batchItemFailures": items}))
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}

/// Lambda's default function timeout: the budget when the invocation has no usable deadline.
const DEFAULT_LAMBDA_TIMEOUT: Duration = Duration::from_secs(3);

/// The time an invocation may take. Lambda's deadline always lies ahead when an invocation
/// starts; one already past is an emulator's placeholder (cargo-lambda's `watch` sends a
/// constant `Lambda-Runtime-Deadline-Ms: 600000`, i.e. 1970). Treating it as "no time left"
/// would cut every batch off after a fraction of a second, so assume Lambda's default timeout.
fn time_budget(deadline: SystemTime, now: SystemTime) -> Duration {
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
