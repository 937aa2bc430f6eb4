//! Wiring: the shared services a process builds once (AWS clients, the worker pool, the send
//! limiter, the producer) and the queue trees built from them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use datamailer_actors::{TransactionalHandler, TransactionalSettings};
use datamailer_core::queue::QueueName;
use datamailer_runtime::control::QueueControl;
use datamailer_runtime::db::{Db, PoolSettings};
use datamailer_runtime::mailer::capture::CaptureMailer;
use datamailer_runtime::mailer::ses::{self, SesMailer};
use datamailer_runtime::mailer::{Mailer, SendLimiter, Sender};
use datamailer_runtime::producer::{Producer, SqsProducer};
use datamailer_runtime::source::postgres::PostgresQueue;
use datamailer_runtime::source::sqs::SqsQueue;
use datamailer_runtime::source::Source;
use datamailer_runtime::tree::{Handler, TreeSpec};

use crate::config::{Config, MailerKind, QueueBackend};

/// Shared, built once per process (or Lambda execution environment).
#[derive(Clone)]
pub struct Services {
    pub config: Config,
    pub db: Db,
    pub sender: Sender,
    pub aws: Option<aws_config::SdkConfig>,
    /// Pauses and probes, shared by every tree of the process.
    pub control: Arc<QueueControl>,
}

pub async fn aws_config(config: &Config) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(config.aws_region.clone()));
    if let Some(url) = &config.aws_endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

pub fn sqs_client(aws: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(aws)
}

impl Services {
    pub async fn build(config: &Config, pool: PoolSettings) -> anyhow::Result<Services> {
        let aws = if config.needs_aws() {
            Some(aws_config(config).await)
        } else {
            None
        };
        let db = Db::connect(config.database_url(), &pool)?;
        let mailer: Arc<dyn Mailer> = match config.mailer {
            MailerKind::Capture => Arc::new(CaptureMailer::new(db.clone())),
            MailerKind::Ses => Arc::new(SesMailer::new(ses::client(
                aws.as_ref().expect("aws config"),
            ))),
        };
        let sender = Sender::new(mailer, SendLimiter::new(config.ses_max_send_rate));
        Ok(Services {
            config: config.clone(),
            control: Arc::new(QueueControl::new(db.clone())),
            db,
            sender,
            aws,
        })
    }

    pub fn handler(&self, queue: QueueName) -> anyhow::Result<Arc<dyn Handler>> {
        match queue {
            QueueName::TransactionalEmail => Ok(Arc::new(TransactionalHandler::new(
                self.db.clone(),
                self.sender.clone(),
                TransactionalSettings {
                    default_from_email: self.config.default_from_email.clone(),
                    configuration_set: self.config.ses_configuration_set.clone(),
                    ..Default::default()
                },
            ))),
            other => {
                anyhow::bail!("the {other} queue has no worker yet (only transactional-email does)")
            }
        }
    }

    pub async fn source(&self, queue: QueueName) -> anyhow::Result<Arc<dyn Source>> {
        Ok(match self.config.queue_backend {
            QueueBackend::Postgres => Arc::new(PostgresQueue::new(self.db.clone(), queue.as_str())),
            QueueBackend::Sqs => {
                let url = self
                    .config
                    .sqs_queue_urls
                    .get(&queue)
                    .with_context(|| format!("{} is not set", queue.sqs_url_env()))?;
                let client = sqs_client(self.aws.as_ref().expect("aws config"));
                Arc::new(
                    SqsQueue::connect(
                        client,
                        queue.as_str(),
                        url.clone(),
                        self.config.sqs_dlq_urls.get(&queue).cloned(),
                    )
                    .await?,
                )
            }
        })
    }

    pub async fn tree_spec(&self, queue: QueueName) -> anyhow::Result<TreeSpec> {
        let mut spec = TreeSpec::new(
            queue.as_str(),
            self.source(queue).await?,
            self.handler(queue)?,
        );
        spec.concurrency = queue.default_concurrency();
        spec.control = Some(self.control.clone());
        Ok(spec)
    }
}

/// The producer the web side and `enqueue` use.
pub async fn producer(config: &Config) -> Producer {
    match config.queue_backend {
        QueueBackend::Postgres => Producer::Postgres,
        QueueBackend::Sqs => {
            let aws = aws_config(config).await;
            let urls: HashMap<String, String> = config
                .sqs_queue_urls
                .iter()
                .map(|(q, u)| (q.as_str().to_string(), u.clone()))
                .collect();
            Producer::Sqs(SqsProducer::new(sqs_client(&aws), urls))
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown signal received: finishing in-flight work");
}

/// How long in-flight batches get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
