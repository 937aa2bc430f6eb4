//! Queue tools for operators: `enqueue`, `dlq list`, `dlq redrive`, `reenqueue`.

use std::io::BufRead;
use std::time::Duration;

use anyhow::Context;
use datamailer_core::queue::QueueName;
use datamailer_runtime::db::{Db, PoolSettings};
use datamailer_runtime::source::{postgres as pg_queue, sqs as sqs_queue};

use crate::config::{Config, QueueBackend};
use crate::services;

pub(crate) fn small_db(config: &Config) -> anyhow::Result<Db> {
    Db::connect(
        config.database_url(),
        &PoolSettings {
            max_connections: 2,
            ..Default::default()
        },
    )
}

pub async fn enqueue(config: Config, queue: String) -> anyhow::Result<()> {
    let queue: QueueName = queue
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--queue: {e}"))?;
    let bodies: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let n = bodies.len();
    let producer = services::producer(&config).await;
    producer
        .enqueue(&small_db(&config)?, queue.as_str(), bodies)
        .await?;
    eprintln!("enqueued {n} message(s) on {queue}");
    Ok(())
}

async fn sqs_dlq(
    config: &Config,
    queue: QueueName,
) -> anyhow::Result<(aws_sdk_sqs::Client, String, String)> {
    let aws = services::aws_config(config).await;
    let client = services::sqs_client(&aws);
    let url = config
        .sqs_queue_urls
        .get(&queue)
        .with_context(|| format!("{} is not set", queue.sqs_url_env()))?
        .clone();
    let source = sqs_queue::SqsQueue::connect(
        client.clone(),
        queue.as_str(),
        url.clone(),
        config.sqs_dlq_urls.get(&queue).cloned(),
    )
    .await?;
    let dlq = source.dlq_url().with_context(|| {
        format!(
            "the {queue} queue has no DLQ (no redrive policy and no {} set)",
            queue.sqs_dlq_url_env()
        )
    })?;
    Ok((client, url, dlq.to_string()))
}

pub async fn dlq_list(config: Config, queue: String) -> anyhow::Result<()> {
    let queue: QueueName = queue
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--queue: {e}"))?;
    let letters: Vec<serde_json::Value> = match config.queue_backend {
        QueueBackend::Postgres => pg_queue::list_dead_letters(&small_db(&config)?, queue.as_str())
            .await?
            .into_iter()
            .map(|d| serde_json::to_value(d).unwrap())
            .collect(),
        QueueBackend::Sqs => {
            let (client, _, dlq) = sqs_dlq(&config, queue).await?;
            sqs_queue::list_dead_letters(&client, &dlq)
                .await?
                .into_iter()
                .map(|d| serde_json::to_value(d).unwrap())
                .collect()
        }
    };
    for l in &letters {
        println!("{l}");
    }
    eprintln!("{} dead-lettered message(s) on {queue}", letters.len());
    Ok(())
}

pub async fn dlq_redrive(config: Config, queue: String) -> anyhow::Result<()> {
    let queue: QueueName = queue
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--queue: {e}"))?;
    let moved = match config.queue_backend {
        QueueBackend::Postgres => {
            pg_queue::redrive(&small_db(&config)?, queue.as_str()).await? as usize
        }
        QueueBackend::Sqs => {
            let (client, url, dlq) = sqs_dlq(&config, queue).await?;
            sqs_queue::redrive(&client, &dlq, &url).await?
        }
    };
    println!("redrove {moved} message(s) to {queue}");
    Ok(())
}

/// `datamailer reenqueue`: what the maintenance task `transactional-stale-rows` does every
/// minute, by hand, with its thresholds and a dry run.
pub async fn reenqueue(
    config: Config,
    older_than_minutes: u64,
    limit: i64,
    dry_run: bool,
) -> anyhow::Result<()> {
    let db = small_db(&config)?;
    let ledger_delay = match config.mailer {
        crate::config::MailerKind::Capture => Duration::ZERO,
        crate::config::MailerKind::Ses => datamailer_runtime::ledger::SES_EVENT_GRACE,
    };
    let stale = datamailer_actors::transactional::stale_payloads(
        &db,
        Duration::from_secs(older_than_minutes * 60),
        ledger_delay,
        limit,
        dry_run,
    )
    .await?;
    let mut per_template = std::collections::BTreeMap::new();
    for p in &stale {
        *per_template
            .entry(p.template_key.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    for (template, n) in &per_template {
        println!("{template}\t{n}");
    }
    if dry_run {
        println!("dry run: {} message(s) would be re-enqueued", stale.len());
        return Ok(());
    }
    let producer = services::producer(&config).await;
    let bodies = stale.iter().map(|p| p.to_json()).collect();
    producer
        .enqueue(&db, QueueName::TransactionalEmail.as_str(), bodies)
        .await?;
    println!("re-enqueued {} message(s)", stale.len());
    Ok(())
}
