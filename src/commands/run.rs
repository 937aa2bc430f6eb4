//! The long-running subcommands: `serve` (web and workers in one process), `web`, `worker`.

use anyhow::{bail, Context};
use datamailer_actors::registry;
use datamailer_core::queue::QueueName;
use datamailer_runtime::db::PoolSettings;
use datamailer_runtime::outbound::OutboundPolicy;
use datamailer_runtime::tree::{QueueTree, TreeExit};
use tokio::sync::watch;

use crate::config::{Config, QueueBackend};
use crate::database;
use crate::services::{self, Services, SHUTDOWN_GRACE};

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
    // The web pool also serves the recipient-list import jobs: every connection of the
    // process comes out of DATAMAILER_DB_MAX_CONNECTIONS.
    let web_pool = database::web_pool(&config, web_connections as u32).await?;
    let services = Services::build(
        &config,
        PoolSettings {
            max_connections: worker_connections,
            ..Default::default()
        },
    )
    .await?
    .with_import_pool(web_pool.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let web = tokio::spawn(run_web(config.clone(), web_pool, stop_rx.clone()));
    tracing::info!(
        addr = %config.http_addr,
        backend = ?config.queue_backend,
        mailer = ?config.mailer,
        web_connections,
        worker_connections,
        "datamailer serving"
    );
    let queues = default_queues(&config);
    let result = run_workers(&services, &queues, stop_tx.clone(), stop_rx).await;
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
    let pool = database::web_pool(&config, config.db_max_connections as u32).await?;
    run_web(config.clone(), pool, stop_rx).await
}

async fn run_web(
    config: Config,
    pool: sqlx::PgPool,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The global webhook fallback, where the email_events trigger can see it.
    datamailer_web::webhooks::store_fallback(
        &pool,
        config
            .cmp_webhook
            .as_ref()
            .map(|(url, token)| (url.as_str(), token.as_str())),
    )
    .await?;
    let producer = services::producer(&config).await;
    let state = datamailer_web::AppState::new(
        pool.clone(),
        producer,
        datamailer_web::WebConfig {
            public_base_url: config.public_base_url.clone(),
        },
    )
    .with_outbound_policy(OutboundPolicy::from_allow_list(
        &config.outbound_allow_hosts,
    ))
    .with_tracking_async(config.tracking_async)
    .with_sns_ingress(datamailer_web::ses_ingress::SnsIngress::new(
        if config.sns_insecure {
            tracing::warn!("DATAMAILER_SNS_SIGNATURE_MODE=insecure: POST /webhooks/ses checks no signature (local testing only)");
            datamailer_web::ses_ingress::SignatureMode::Insecure
        } else {
            datamailer_web::ses_ingress::SignatureMode::Strict
        },
        config.sns_topic_arns.clone(),
        config.sns_allow_subscription_confirmation,
    ));
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

/// Every queue with a worker, except, on SQS, those whose queue URL is not configured (a host
/// that works only some queues).
fn default_queues(config: &Config) -> Vec<QueueName> {
    registry::queues_with_workers()
        .into_iter()
        .filter(|q| {
            config.queue_backend != QueueBackend::Sqs || config.sqs_queue_urls.contains_key(q)
        })
        .collect()
}

pub async fn worker(config: Config, queues: Vec<String>) -> anyhow::Result<()> {
    database::ensure_database(&config).await?;
    let queues: Vec<QueueName> = if queues.is_empty() {
        default_queues(&config)
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
    // One connection of the cap for the recipient-list import jobs, the rest for the trees.
    let import_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_lazy(config.database_url())
        .context("the import jobs' pool")?;
    let services = Services::build(
        &config,
        PoolSettings {
            max_connections: config.db_max_connections.saturating_sub(1).max(1),
            ..Default::default()
        },
    )
    .await?
    .with_import_pool(import_pool);
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

/// Runs one tree per queue plus the maintenance tree until a signal (or `stop`), then drains.
/// A tree that fails (restart limit) stops the process with an error, so systemd restarts it.
pub(crate) async fn run_workers(
    services: &Services,
    queues: &[QueueName],
    stop_tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut specs = Vec::new();
    for &queue in queues {
        specs.push(services.tree_spec(queue).await?);
    }
    let (maintenance, maintainer) = services.maintenance_tree();
    specs.push(maintenance);
    let mut stoppers = Vec::new();
    let mut waits = tokio::task::JoinSet::new();
    for spec in specs {
        let name = spec.queue.clone();
        let tree = QueueTree::start(spec).await?;
        stoppers.push(tree.stopper());
        waits.spawn(async move { (name, tree.wait().await) });
    }
    let mut failure = None;
    tokio::select! {
        _ = services::shutdown_signal() => {},
        _ = stop.wait_for(|s| *s) => {},
        Some(Ok((tree, exit))) = waits.join_next() => {
            if let TreeExit::Failed(why) = exit {
                failure = Some(format!("the {tree} tree failed: {why}"));
            }
        }
    }
    stop_tx.send_replace(true);
    for s in &stoppers {
        s.shutdown();
    }
    // In-flight batches finish; past three quarters of the grace, handlers release what they
    // have not started; past the grace, the trees are killed.
    let soft = SHUTDOWN_GRACE.mul_f64(0.75);
    let drain = async {
        while let Some(joined) = waits.join_next().await {
            if let Ok((tree, TreeExit::Failed(why))) = joined {
                tracing::warn!(%tree, why, "tree ended with a failure");
            }
        }
    };
    tokio::pin!(drain);
    let drained = tokio::time::timeout(soft, &mut drain).await.is_ok() || {
        for s in &stoppers {
            s.cancel();
        }
        tokio::time::timeout(SHUTDOWN_GRACE - soft, &mut drain)
            .await
            .is_ok()
    };
    if !drained {
        tracing::warn!("in-flight work did not finish within the grace period; stopping");
        for s in &stoppers {
            s.kill();
        }
    }
    // The next process's maintainer can start at once.
    maintainer.release().await;
    match failure {
        Some(why) => bail!(why),
        None => Ok(()),
    }
}
