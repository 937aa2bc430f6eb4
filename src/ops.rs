//! The subcommands that run or operate datamailer.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{bail, Context};
use datamailer_core::queue::QueueName;
use datamailer_core::transactional::SenderIdentity;
use datamailer_runtime::db::{Db, PoolSettings};
use datamailer_runtime::producer::{Producer, PG_ENQUEUE_MANY_SQL};
use datamailer_runtime::source::{postgres as pg_queue, sqs as sqs_queue};
use datamailer_runtime::tree::{QueueTree, TreeExit};
use sqlx::Row;
use tokio::sync::watch;

use crate::config::{Config, QueueBackend};
use crate::database;
use crate::mappings;
use crate::services::{self, Services, SHUTDOWN_GRACE};

/// The queues that have a worker today.
const WORKER_QUEUES: [QueueName; 1] = [QueueName::TransactionalEmail];

pub async fn migrate(config: Config) -> anyhow::Result<()> {
    database::ensure_database(&config).await?;
    database::migrate(&config).await?;
    println!("migrations applied");
    Ok(())
}

/// Web and workers in one process; the connection cap is split between them.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    database::ensure_database(&config).await?;
    database::migrate(&config).await?;
    datamailer_runtime::telemetry::install_prometheus();
    let web_connections = (config.db_max_connections / 2).max(1);
    let worker_connections = config
        .db_max_connections
        .saturating_sub(web_connections)
        .max(1);
    let services = Services::build(
        &config,
        PoolSettings {
            max_connections: worker_connections,
            ..Default::default()
        },
    )
    .await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let web = tokio::spawn(run_web(
        config.clone(),
        web_connections as u32,
        stop_rx.clone(),
    ));
    tracing::info!(
        addr = %config.http_addr,
        backend = ?config.queue_backend,
        mailer = ?config.mailer,
        web_connections,
        worker_connections,
        "datamailer serving"
    );
    let result = run_workers(&services, &WORKER_QUEUES, stop_tx.clone(), stop_rx).await;
    stop_tx.send_replace(true);
    web.await.context("web task")??;
    services.db.close();
    result
}

pub async fn web(config: Config) -> anyhow::Result<()> {
    datamailer_runtime::telemetry::install_prometheus();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        services::shutdown_signal().await;
        stop_tx.send_replace(true);
    });
    run_web(config.clone(), config.db_max_connections as u32, stop_rx).await
}

async fn run_web(
    config: Config,
    connections: u32,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pool = database::web_pool(&config, connections).await?;
    let producer = services::producer(&config).await;
    let state = datamailer_web::AppState::new(
        pool.clone(),
        producer,
        datamailer_web::WebConfig {
            public_base_url: config.public_base_url.clone(),
        },
    );
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding DATAMAILER_HTTP_ADDR {}", config.http_addr))?;
    // datamailer_health_check_ok and datamailer_campaign_sending_age_seconds for the alarms.
    let host_metrics = datamailer_web::health::spawn_host_metrics(
        pool.clone(),
        datamailer_web::health::HOST_METRICS_EVERY,
    );
    let served = axum::serve(listener, datamailer_web::router(state))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    host_metrics.abort();
    served?;
    pool.close().await;
    Ok(())
}

pub async fn worker(config: Config, queues: Vec<String>) -> anyhow::Result<()> {
    database::ensure_database(&config).await?;
    let queues: Vec<QueueName> = if queues.is_empty() {
        WORKER_QUEUES.to_vec()
    } else {
        queues
            .iter()
            .map(|q| {
                q.parse()
                    .map_err(|e: String| anyhow::anyhow!("--queue: {e}"))
            })
            .collect::<Result<_, _>>()?
    };
    datamailer_runtime::telemetry::install_prometheus();
    let services = Services::build(
        &config,
        PoolSettings {
            max_connections: config.db_max_connections,
            ..Default::default()
        },
    )
    .await?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding DATAMAILER_METRICS_ADDR {}", config.metrics_addr))?;
    let metrics_app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { datamailer_runtime::telemetry::render_prometheus() }),
    );
    tokio::spawn(async move { axum::serve(metrics_listener, metrics_app).await });
    let (stop_tx, stop_rx) = watch::channel(false);
    let result = run_workers(&services, &queues, stop_tx, stop_rx).await;
    services.db.close();
    result
}

/// Runs one tree per queue plus the stale-row sweeper until a signal (or `stop`), then drains.
/// A tree that fails (restart limit) stops the process with an error, so systemd restarts it.
async fn run_workers(
    services: &Services,
    queues: &[QueueName],
    stop_tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut stoppers = Vec::new();
    let mut waits = tokio::task::JoinSet::new();
    for &queue in queues {
        let tree = QueueTree::start(services.tree_spec(queue).await?).await?;
        stoppers.push(tree.stopper());
        waits.spawn(async move { (queue, tree.wait().await) });
    }
    let sweeper = tokio::spawn(sweep_forever(services.clone()));
    let mut failure = None;
    tokio::select! {
        _ = services::shutdown_signal() => {},
        _ = stop.wait_for(|s| *s) => {},
        Some(Ok((queue, exit))) = waits.join_next() => {
            if let TreeExit::Failed(why) = exit {
                failure = Some(format!("the {queue} tree failed: {why}"));
            }
        }
    }
    stop_tx.send_replace(true);
    sweeper.abort();
    for s in &stoppers {
        s.shutdown();
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(joined) = waits.join_next().await {
            if let Ok((queue, TreeExit::Failed(why))) = joined {
                tracing::warn!(%queue, why, "tree ended with a failure");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight work did not finish within the grace period; stopping");
        for s in &stoppers {
            s.kill();
        }
    }
    match failure {
        Some(why) => bail!(why),
        None => Ok(()),
    }
}

/// Every minute, re-enqueue transactional rows left behind (see `stale_payloads`).
async fn sweep_forever(services: Services) {
    let producer = services::producer(&services.config).await;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        match datamailer_actors::transactional::stale_payloads(
            &services.db,
            Duration::from_secs(300),
            1000,
        )
        .await
        {
            Ok(stale) if !stale.is_empty() => {
                let bodies: Vec<String> = stale.iter().map(|p| p.to_json()).collect();
                let n = bodies.len();
                match enqueue_bodies(
                    &services.db,
                    &producer,
                    QueueName::TransactionalEmail,
                    bodies,
                )
                .await
                {
                    Ok(()) => tracing::warn!(count = n, "re-enqueued stale transactional messages"),
                    Err(e) => tracing::warn!(error = %e, "re-enqueueing stale messages failed"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "looking for stale messages failed"),
        }
    }
}

async fn enqueue_bodies(
    db: &Db,
    producer: &Producer,
    queue: QueueName,
    bodies: Vec<String>,
) -> anyhow::Result<()> {
    match producer {
        Producer::Postgres => {
            db.get()
                .await?
                .execute(PG_ENQUEUE_MANY_SQL, &[&queue.as_str(), &bodies])
                .await?;
            Ok(())
        }
        Producer::Sqs(sqs) => sqs.send(queue.as_str(), bodies).await,
    }
}

fn small_db(config: &Config) -> anyhow::Result<Db> {
    Db::connect(
        config.database_url(),
        &PoolSettings {
            max_connections: 2,
            ..Default::default()
        },
    )
}

pub async fn provision(
    config: Config,
    org: String,
    audience: String,
    client: String,
    senders: Vec<String>,
    default_sender: Option<String>,
) -> anyhow::Result<()> {
    database::ensure_database(&config).await?;
    database::migrate(&config).await?;
    let senders = senders
        .iter()
        .map(|s| {
            let (id, email) = s
                .split_once('=')
                .with_context(|| format!("--sender '{s}': expected ID=EMAIL"))?;
            Ok(SenderIdentity {
                id: id.trim().to_string(),
                email: email.trim().to_string(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pool = database::web_pool(&config, 2).await?;
    let request = datamailer_web::provision::ProvisionRequest {
        org,
        audience,
        client,
        senders,
        default_sender,
        key_name: None,
    };
    let done = datamailer_web::provision::provision(&pool, &request).await?;
    eprintln!(
        "provisioned organization #{}, audience #{}, client #{}; new API key {} (shown once):",
        done.organization_id, done.audience_id, done.client_id, done.public_id
    );
    println!("{}", done.api_key);
    Ok(())
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
    enqueue_bodies(&small_db(&config)?, &producer, queue, bodies).await?;
    eprintln!("enqueued {n} message(s) on {queue}");
    Ok(())
}

pub async fn outbox(config: Config, json: bool, limit: i64) -> anyhow::Result<()> {
    let pool = database::web_pool(&config, 1).await?;
    let rows = sqlx::query(
        "SELECT id, provider_message_id, from_email, to_addresses, cc_addresses, bcc_addresses, reply_to, subject,
                text_body, html_body, headers, tags, configuration_set, raw_mime, created_at
         FROM captured_messages ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&pool)
    .await
    .context("reading the outbox (has `datamailer migrate` run?)")?;
    for r in rows.iter().rev() {
        let created: chrono::DateTime<chrono::Utc> = r.get("created_at");
        if json {
            let line = serde_json::json!({
                "id": r.get::<i64, _>("id"),
                "message_id": r.get::<String, _>("provider_message_id"),
                "from": r.get::<String, _>("from_email"),
                "to": r.get::<serde_json::Value, _>("to_addresses"),
                "cc": r.get::<serde_json::Value, _>("cc_addresses"),
                "bcc": r.get::<serde_json::Value, _>("bcc_addresses"),
                "reply_to": r.get::<serde_json::Value, _>("reply_to"),
                "subject": r.get::<String, _>("subject"),
                "text_body": r.get::<String, _>("text_body"),
                "html_body": r.get::<String, _>("html_body"),
                "headers": r.get::<serde_json::Value, _>("headers"),
                "tags": r.get::<serde_json::Value, _>("tags"),
                "configuration_set": r.get::<String, _>("configuration_set"),
                "raw_mime": r.get::<Option<String>, _>("raw_mime"),
                "created_at": datamailer_core::time::iso(created),
            });
            println!("{line}");
        } else {
            let to: serde_json::Value = r.get("to_addresses");
            println!(
                "#{:<6} {}  {} -> {}\n        Subject: {}\n{}\n",
                r.get::<i64, _>("id"),
                datamailer_core::time::iso(created),
                r.get::<String, _>("from_email"),
                to.as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                r.get::<String, _>("subject"),
                indent(&r.get::<String, _>("text_body")),
            );
        }
    }
    if !json && rows.is_empty() {
        println!("(the outbox is empty)");
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("        {l}"))
        .collect::<Vec<_>>()
        .join("\n")
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

pub async fn reenqueue(
    config: Config,
    older_than_minutes: u64,
    limit: i64,
    dry_run: bool,
) -> anyhow::Result<()> {
    let db = small_db(&config)?;
    let stale = datamailer_actors::transactional::stale_payloads(
        &db,
        Duration::from_secs(older_than_minutes * 60),
        limit,
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
    enqueue_bodies(&db, &producer, QueueName::TransactionalEmail, bodies).await?;
    println!("re-enqueued {} message(s)", stale.len());
    Ok(())
}

/// `datamailer pause --queue Q`: the queue's workers (processes and Lambda) take nothing new
/// until `datamailer resume --queue Q`; in-flight work finishes.
pub async fn pause(config: Config, queue: String, reason: String) -> anyhow::Result<()> {
    let queue: QueueName = queue
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--queue: {e}"))?;
    let db = small_db(&config)?;
    let at = datamailer_runtime::control::pause(&db, queue.as_str(), &reason).await?;
    println!(
        "paused {queue} (since {}); workers stop receiving within {} s. Resume with: datamailer resume --queue {queue}",
        datamailer_core::time::iso(at),
        (datamailer_runtime::control::PAUSE_CACHE_TTL + datamailer_runtime::control::PAUSE_RECHECK)
            .as_secs()
    );
    let Some(uuid) = config.event_source_mappings.get(&queue) else {
        return Ok(());
    };
    let lambda = mappings::client(&config).await;
    match mappings::disable(&lambda, uuid).await {
        Ok(true) => {
            datamailer_runtime::control::note_disabled_mapping(&db, queue.as_str(), uuid).await?;
            println!("disabled the Lambda event source mapping {uuid}; resume enables it again");
        }
        Ok(false) => println!(
            "the Lambda event source mapping {uuid} was already disabled; resume leaves it disabled"
        ),
        Err(e) => anyhow::bail!(
            "{queue} is paused, but its Lambda event source mapping {uuid} is still enabled ({e:#}); \
             Lambda hands its records back and they reach the DLQ after 5 receives. Disable it: \
             aws lambda update-event-source-mapping --uuid {uuid} --no-enabled"
        ),
    }
    Ok(())
}

pub async fn resume(config: Config, queue: String) -> anyhow::Result<()> {
    let queue: QueueName = queue
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--queue: {e}"))?;
    let db = small_db(&config)?;
    let Some(resumed) = datamailer_runtime::control::resume(&db, queue.as_str()).await? else {
        println!("{queue} was not paused");
        return Ok(());
    };
    println!("resumed {queue}");
    let uuid = resumed.disabled_mapping;
    if !uuid.is_empty() {
        let lambda = mappings::client(&config).await;
        mappings::enable(&lambda, &uuid).await.with_context(|| {
            format!(
                "{queue} is resumed, but its Lambda event source mapping {uuid} is still disabled; \
                 enable it: aws lambda update-event-source-mapping --uuid {uuid} --enabled"
            )
        })?;
        println!("enabled the Lambda event source mapping {uuid}");
    }
    Ok(())
}

/// `datamailer pause --list`: every paused queue.
pub async fn paused(config: Config) -> anyhow::Result<()> {
    let db = small_db(&config)?;
    let rows = datamailer_runtime::control::paused_queues(&db).await?;
    for (queue, at, reason) in &rows {
        println!("{queue}\t{}\t{reason}", datamailer_core::time::iso(*at));
    }
    if rows.is_empty() {
        println!("no queue is paused");
    }
    Ok(())
}
