//! `datamailer lambda`: the AWS Lambda bootstrap for one queue (`DATAMAILER_QUEUE`).
//! Clients, the pool and the limiter are built once per execution environment; each
//! invocation runs the queue's tree over its batch and answers `batchItemFailures`.

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
    let max_connections =
        if std::env::var("DATAMAILER_DB_MAX_CONNECTIONS").is_ok() { config.db_max_connections } else { 2 };
    let pool = PoolSettings { max_connections, verify_on_recycle: true, ..Default::default() };
    let services = Services::build(&config, pool).await?;
    let handler = services.handler(queue)?;
    let aws = services::aws_config(&config).await;
    let client = services::sqs_client(&aws);
    let queue_url = config.sqs_queue_urls.get(&queue).cloned();
    let mut dlq_url = config.sqs_dlq_urls.get(&queue).cloned();
    if let (None, Some(url)) = (&dlq_url, &queue_url) {
        match SqsQueue::connect(client.clone(), queue.as_str(), url.clone(), None).await {
            Ok(q) => dlq_url = q.dlq_url().map(str::to_string),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "could not discover the DLQ; poison messages will retry"),
        }
    }
    let sqs = LambdaSqs { client, queue_url, dlq_url };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let (handler, sqs) = (handler.clone(), sqs.clone());
        async move {
            let deadline = event.context.deadline();
            let time_left = deadline.duration_since(SystemTime::now()).unwrap_or(Duration::from_secs(1));
            let records = event.payload.records;
            let failures =
                datamailer_runtime::lambda::run_invocation(queue.as_str(), handler, &records, Some(sqs), time_left).await?;
            let items: Vec<Value> = failures.into_iter().map(|id| json!({"itemIdentifier": id})).collect();
            Ok::<Value, lambda_runtime::Error>(json!({"batchItemFailures": items}))
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
