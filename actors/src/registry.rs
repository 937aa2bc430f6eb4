//! The registry of queue handlers and maintenance tasks: what `serve`, `worker` and `lambda`
//! build a tree from. Adding a queue's worker is one entry here (and its handler module); the
//! runtime does not change. How each queue's tree runs (concurrency, batch, visibility,
//! receives) is [`QueueName::spec`] in `datamailer-core`.

use std::sync::Arc;
use std::time::Duration;

use datamailer_core::queue::QueueName;
use datamailer_runtime::db::Db;
use datamailer_runtime::mailer::Sender;
use datamailer_runtime::maintenance::MaintenanceTask;
use datamailer_runtime::producer::Producer;
use datamailer_runtime::Handler;

use crate::campaign::{CampaignHandler, CampaignMaintenance, CampaignSettings};
use crate::email_events::EmailEventsHandler;
use crate::reputation::ReputationGuard;
use crate::ses_webhooks::{FeedbackSettings, SesWebhooksHandler};
use crate::transactional::{RequeueStaleRows, TransactionalHandler, TransactionalSettings};
use crate::webhooks::{DispatchWebhooks, WebhookSettings};

/// What handlers and tasks are built from (once per process or Lambda environment).
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    pub sender: Sender,
    pub producer: Producer,
    /// The last-resort sender (`DEFAULT_FROM_EMAIL`).
    pub default_from_email: String,
    /// `AWS_SES_CONFIGURATION_SET`.
    pub configuration_set: Option<String>,
    /// How client webhooks are sent (SSRF-guarded client, timeout).
    pub webhooks: WebhookSettings,
    /// Where campaign tracking and unsubscribe links point (`PUBLIC_BASE_URL`).
    pub public_base_url: String,
    /// `DATAMAILER_UNSUBSCRIBE_MAILTO`: the mailto of campaign mail's List-Unsubscribe.
    pub unsubscribe_mailto: Option<String>,
    /// Campaign batch size, lease and batch horizon (configuration).
    pub campaign_batch_size: usize,
    pub campaign_lease: Duration,
    pub campaign_batch_horizon: Duration,
    /// The SES feedback rules' thresholds.
    pub feedback: FeedbackSettings,
}

impl Deps {
    fn campaign_settings(&self) -> CampaignSettings {
        let mut settings = CampaignSettings::new(self.public_base_url.clone());
        settings.default_from_email = self.default_from_email.clone();
        settings.configuration_set = self.configuration_set.clone();
        settings.unsubscribe_mailto = self.unsubscribe_mailto.clone();
        settings.batch_size = self.campaign_batch_size;
        settings.lease = self.campaign_lease;
        settings.batch_horizon = self.campaign_batch_horizon;
        settings
    }
}

/// The queues that have a worker today.
pub fn queues_with_workers() -> Vec<QueueName> {
    QueueName::ALL
        .into_iter()
        .filter(|q| build_handler(*q).is_some())
        .collect()
}

type Build = fn(&Deps) -> Arc<dyn Handler>;

fn build_handler(queue: QueueName) -> Option<Build> {
    match queue {
        QueueName::TransactionalEmail => Some(|deps| {
            Arc::new(TransactionalHandler::new(
                deps.db.clone(),
                deps.sender.clone(),
                TransactionalSettings {
                    default_from_email: deps.default_from_email.clone(),
                    configuration_set: deps.configuration_set.clone(),
                    ..Default::default()
                },
            ))
        }),
        QueueName::CampaignEmail => Some(|deps| {
            Arc::new(CampaignHandler::new(
                deps.db.clone(),
                deps.sender.clone(),
                deps.producer.clone(),
                deps.campaign_settings(),
            ))
        }),
        QueueName::EmailEvents => Some(|deps| Arc::new(EmailEventsHandler::new(deps.db.clone()))),
        QueueName::SesWebhooks => {
            Some(|deps| Arc::new(SesWebhooksHandler::new(deps.db.clone(), deps.feedback)))
        }
    }
}

/// The queue's handler, or an error naming the queues that have one.
pub fn handler(queue: QueueName, deps: &Deps) -> anyhow::Result<Arc<dyn Handler>> {
    match build_handler(queue) {
        Some(build) => Ok(build(deps)),
        None => {
            let have: Vec<String> = queues_with_workers()
                .iter()
                .map(|q| q.to_string())
                .collect();
            anyhow::bail!(
                "the {queue} queue has no worker yet (queues with a worker: {})",
                have.join(", ")
            )
        }
    }
}

/// Every maintenance task, in the order a pass runs them.
pub fn maintenance_tasks(deps: &Deps) -> Vec<Arc<dyn MaintenanceTask>> {
    vec![
        Arc::new(RequeueStaleRows {
            db: deps.db.clone(),
            producer: deps.producer.clone(),
            ledger_delay: deps.sender.ledger_delay(),
            older_than: Duration::from_secs(300),
            limit: 1000,
        }),
        Arc::new({
            let settings = deps.campaign_settings();
            CampaignMaintenance {
                db: deps.db.clone(),
                producer: deps.producer.clone(),
                batch_size: settings.batch_size,
                batch_horizon: settings.batch_horizon,
                ledger_delay: deps.sender.ledger_delay(),
                stalled_after: Duration::from_secs(60),
            }
        }),
        Arc::new(ReputationGuard {
            db: deps.db.clone(),
            settings: deps.feedback,
        }),
        Arc::new(DispatchWebhooks {
            db: deps.db.clone(),
            settings: deps.webhooks.clone(),
        }),
    ]
}
