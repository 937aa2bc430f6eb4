//! Wiring: the shared services a process builds once (AWS clients, the worker pool, the send
//! limiter, the producer, the circuit breakers) and the trees built from them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use datamailer_actors::registry::{self, Deps};
use datamailer_actors::webhooks::WebhookSettings;
use datamailer_core::queue::QueueName;
use datamailer_runtime::control::QueueControl;
use datamailer_runtime::db::{Db, PoolSettings};
use datamailer_runtime::mailer::capture::CaptureMailer;
use datamailer_runtime::mailer::schedule::SharedSchedule;
use datamailer_runtime::mailer::ses::{self, SesMailer};
use datamailer_runtime::mailer::{Mailer, SendLimiter, Sender};
use datamailer_runtime::maintenance::{self, Maintainer};
use datamailer_runtime::outbound::{OutboundClient, OutboundPolicy};
use datamailer_runtime::producer::{Producer, SqsProducer};
use datamailer_runtime::source::postgres::PostgresQueue;
use datamailer_runtime::source::sqs::SqsQueue;
use datamailer_runtime::source::Source;
use datamailer_runtime::tree::{BreakerSettings, CircuitBreaker, TreeSpec};

use crate::config::{Config, MailerKind, QueueBackend};

/// Shared, built once per process (or Lambda execution environment).
#[derive(Clone)]
pub struct Services {
    pub config: Config,
    pub db: Db,
    pub sender: Sender,
    pub producer: Producer,
    pub aws: Option<aws_config::SdkConfig>,
    /// Pauses and probes, shared by every tree of the process.
    pub control: Arc<QueueControl>,
    /// One breaker per queue, kept for the life of the process (across Lambda invocations).
    breakers: Arc<HashMap<QueueName, Arc<CircuitBreaker>>>,
    /// Client webhooks: the SSRF-guarded HTTP client (one per process) and its timeout.
    webhooks: WebhookSettings,
    /// The pool the recipient-list import jobs use, when the process gives them one from
    /// its connection cap (`serve`: the web pool; `worker`: one connection of its own).
    import_pool: Option<sqlx::PgPool>,
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
                config.ses_timeout,
            ))),
        };
        let mut sender = Sender::new(mailer, SendLimiter::new(config.ses_max_send_rate));
        if config.mailer == MailerKind::Ses {
            sender = sender.with_quota_reserve(config.ses_daily_reserve);
            if let (true, Some(rate)) = (config.ses_rate_shared, config.ses_max_send_rate) {
                if rate > 0.0 {
                    sender = sender.with_shared_schedule(SharedSchedule::new(db.clone(), rate));
                }
            }
        }
        let breakers = QueueName::ALL
            .into_iter()
            .map(|q| {
                (
                    q,
                    Arc::new(CircuitBreaker::new(q.as_str(), BreakerSettings::default())),
                )
            })
            .collect();
        let mut webhooks = WebhookSettings::new(OutboundClient::new(
            OutboundPolicy::from_allow_list(&config.outbound_allow_hosts),
        )?);
        webhooks.timeout = config.cmp_webhook_timeout;
        Ok(Services {
            webhooks,
            producer: producer_with(config, aws.as_ref()),
            config: config.clone(),
            control: Arc::new(QueueControl::new(db.clone())),
            db,
            sender,
            aws,
            breakers: Arc::new(breakers),
            import_pool: None,
        })
    }

    /// Runs the recipient-list import jobs on `pool` (taken from the process's connection
    /// cap) instead of a pool of their own on top of it.
    pub fn with_import_pool(mut self, pool: sqlx::PgPool) -> Self {
        self.import_pool = Some(pool);
        self
    }

    /// What the registry builds handlers and maintenance tasks from.
    pub fn deps(&self) -> Deps {
        Deps {
            db: self.db.clone(),
            sender: self.sender.clone(),
            producer: self.producer.clone(),
            default_from_email: self.config.default_from_email.clone(),
            configuration_set: self.config.ses_configuration_set.clone(),
            webhooks: self.webhooks.clone(),
            public_base_url: self.config.public_base_url.clone(),
            unsubscribe_mailto: self.config.unsubscribe_mailto.clone(),
            campaign_batch_size: self.config.campaign_batch_size,
            campaign_lease: self.config.campaign_lease,
            campaign_batch_horizon: self.config.campaign_batch_horizon,
            feedback: self.config.feedback,
        }
    }

    pub fn breaker(&self, queue: QueueName) -> Arc<CircuitBreaker> {
        self.breakers[&queue].clone()
    }

    pub async fn source(&self, queue: QueueName) -> anyhow::Result<Arc<dyn Source>> {
        let spec = queue.spec();
        Ok(match self.config.queue_backend {
            QueueBackend::Postgres => Arc::new(
                PostgresQueue::new(self.db.clone(), queue.as_str())
                    .with_visibility_timeout(spec.visibility_timeout)
                    .with_max_receives(spec.max_receives),
            ),
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

    /// The tree of a queue, as the registry and the queue's spec describe it.
    pub async fn tree_spec(&self, queue: QueueName) -> anyhow::Result<TreeSpec> {
        let qs = queue.spec();
        let mut spec = TreeSpec::new(
            queue.as_str(),
            self.source(queue).await?,
            registry::handler(queue, &self.deps())?,
        );
        spec.concurrency = match queue {
            QueueName::CampaignEmail => self.config.campaign_concurrency,
            QueueName::SesWebhooks => self.config.ses_webhooks_concurrency,
            _ => qs.concurrency,
        };
        if let Some(n) = qs.batch_size {
            spec.batch_size = n;
        }
        spec.max_receives = qs.max_receives;
        spec.control = Some(self.control.clone());
        spec.breaker = Some(self.breaker(queue));
        Ok(spec)
    }

    /// The maintainer over the registry's tasks.
    pub fn maintainer(&self) -> Maintainer {
        let mut tasks = registry::maintenance_tasks(&self.deps());
        tasks.extend(self.audience_tasks());
        Maintainer::new(self.db.clone(), tasks)
    }

    /// The web crate's tasks (recipient-list import jobs), over the pool the process gave
    /// them ([`Self::with_import_pool`]) or else (the maintenance function, `maintain`) a
    /// small lazy sqlx pool: idle unless there is work, and then at most two connections.
    fn audience_tasks(&self) -> Vec<Arc<dyn datamailer_runtime::maintenance::MaintenanceTask>> {
        let pool = match &self.import_pool {
            Some(pool) => Ok(pool.clone()),
            None => sqlx::postgres::PgPoolOptions::new()
                .max_connections(IMPORT_JOBS_POOL)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect_lazy(self.config.database_url()),
        };
        match pool {
            Ok(db) => vec![Arc::new(datamailer_web::lists::imports::ImportJobs {
                db,
                http: self.webhooks.http.clone(),
                batch: 5,
            })],
            Err(err) => {
                tracing::error!(error = %err, "recipient-list import jobs cannot run in this process");
                Vec::new()
            }
        }
    }

    /// The maintenance tree of a long-lived process, and its maintainer (to give the lease
    /// back when the tree stops).
    pub fn maintenance_tree(&self) -> (TreeSpec, Arc<Maintainer>) {
        let maintainer = Arc::new(self.maintainer());
        (
            maintenance::tree_spec(maintainer.clone(), maintenance::TICK),
            maintainer,
        )
    }
}

/// Connections the import jobs' own pool may hold on top of the process's cap where the
/// process gives them none of its own (the maintenance function; validate-infra counts them
/// in its share of the connection budget).
pub const IMPORT_JOBS_POOL: u32 = 2;

/// The producer the web side, `enqueue` and maintenance use.
pub async fn producer(config: &Config) -> Producer {
    match config.queue_backend {
        QueueBackend::Postgres => Producer::Postgres,
        QueueBackend::Sqs => producer_with(config, Some(&aws_config(config).await)),
    }
}

fn producer_with(config: &Config, aws: Option<&aws_config::SdkConfig>) -> Producer {
    match (config.queue_backend, aws) {
        (QueueBackend::Sqs, Some(aws)) => {
            let urls: HashMap<String, String> = config
                .sqs_queue_urls
                .iter()
                .map(|(q, u)| (q.as_str().to_string(), u.clone()))
                .collect();
            Producer::Sqs(SqsProducer::new(sqs_client(aws), urls))
        }
        _ => Producer::Postgres,
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
