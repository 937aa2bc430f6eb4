//! The campaign-email tree's handler and the campaign maintenance task.
//!
//! The queue carries two contracts: `campaign-fanout` (snapshot a queued campaign and batch
//! its recipients, [`fanout`]) and `campaign-email` (send one batch, [`send`]). The
//! campaign moves `queued → snapshotting → sending → sent`, each step timestamped; pause and
//! cancel are honoured between sends. Recovery needs no operator on any source: a lost or
//! failed message is redelivered by its queue, and [`CampaignMaintenance`] (run wherever
//! workers run, and by the scheduled maintenance Lambda) fans out due and stalled campaigns
//! again, batches pending recipients whose batch went missing, and finishes campaigns whose
//! last batch could not.

pub mod fanout;
mod send;
mod test_send;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use datamailer_core::campaign::PreparedBody;
use datamailer_core::contracts::CampaignQueueMessage;
use datamailer_core::tracking::TrackingKeys;
use datamailer_runtime::db::{self, Db};
use datamailer_runtime::ledger::SendLedger;
use datamailer_runtime::mailer::Sender;
use datamailer_runtime::maintenance::{MaintenanceTask, TaskReport};
use datamailer_runtime::producer::Producer;
use datamailer_runtime::{Delivery, Handler, HandlerContext, Outcome};
use serde_json::Value;

/// The send ledger's `kind` (and `datamailer_kind` tag) of campaign sends.
pub const KIND: &str = "campaign";

/// Settings from configuration.
#[derive(Debug, Clone)]
pub struct CampaignSettings {
    /// Where tracking and unsubscribe links point (`PUBLIC_BASE_URL`).
    pub public_base_url: String,
    /// The last-resort sender (`DEFAULT_FROM_EMAIL`).
    pub default_from_email: String,
    pub configuration_set: Option<String>,
    /// `List-Unsubscribe` mailto address, when configured.
    pub unsubscribe_mailto: Option<String>,
    /// How long a claim protects a `sending` recipient.
    pub lease: Duration,
    /// Recipients per `campaign-email` message.
    pub batch_size: usize,
    /// A pending recipient whose batch is older than this is batched again.
    pub batch_horizon: Duration,
}

impl CampaignSettings {
    pub fn new(public_base_url: String) -> Self {
        Self {
            public_base_url,
            default_from_email: "newsletter@example.com".into(),
            configuration_set: None,
            unsubscribe_mailto: None,
            lease: Duration::from_secs(900),
            batch_size: 100,
            batch_horizon: Duration::from_secs(900),
        }
    }
}

/// What every recipient of a campaign gets, built once per process.
pub(crate) struct PreparedCampaign {
    id: i64,
    subject: String,
    from: String,
    body: PreparedBody,
}

pub struct CampaignHandler {
    db: Db,
    sender: Sender,
    producer: Producer,
    ledger: SendLedger,
    settings: CampaignSettings,
    /// Campaign content cannot change once queued (`not_editable`), so it is cached by id.
    prepared: Mutex<HashMap<i64, Arc<PreparedCampaign>>>,
    /// Read on first use (a process may start while the database is away).
    keys: tokio::sync::OnceCell<TrackingKeys>,
}

impl CampaignHandler {
    pub fn new(db: Db, sender: Sender, producer: Producer, settings: CampaignSettings) -> Self {
        Self {
            ledger: SendLedger::new(db.clone()),
            db,
            sender,
            producer,
            settings,
            prepared: Mutex::default(),
            keys: tokio::sync::OnceCell::new(),
        }
    }

    async fn keys(&self) -> anyhow::Result<&TrackingKeys> {
        self.keys.get_or_try_init(|| load_keys(&self.db)).await
    }

    async fn campaign(&self, id: i64) -> anyhow::Result<Option<Arc<PreparedCampaign>>> {
        if let Some(p) = self.prepared.lock().expect("cache").get(&id) {
            return Ok(Some(p.clone()));
        }
        let conn = self.db.get().await?;
        let Some(row) = conn
            .query_opt(
                "SELECT c.subject, c.html_body, c.text_body, c.from_sender_id, cl.sender_emails,
                        cl.default_sender_id, cl.default_from_email
                   FROM campaigns c JOIN clients cl ON cl.id = c.client_id WHERE c.id = $1",
                &[&id],
            )
            .await
            .context("reading the campaign")?
        else {
            return Ok(None);
        };
        let senders: Value = row.get(4);
        let sender_email = |wanted: &str| -> Option<String> {
            senders.as_array()?.iter().find_map(|s| {
                (s["id"].as_str()? == wanted).then(|| s["email"].as_str().map(str::to_string))?
            })
        };
        let from_id: String = row.get(3);
        let default_id: String = row.get(5);
        let client_from: String = row.get(6);
        let from = [from_id.as_str(), default_id.as_str()]
            .into_iter()
            .filter(|id| !id.is_empty())
            .find_map(sender_email)
            .or_else(|| (!client_from.is_empty()).then_some(client_from))
            .unwrap_or_else(|| self.settings.default_from_email.clone());
        let html: String = row.get(1);
        let text: String = row.get(2);
        let prepared = Arc::new(PreparedCampaign {
            id,
            subject: row.get(0),
            from,
            body: PreparedBody::new(&html, &text),
        });
        let mut cache = self.prepared.lock().expect("cache");
        if cache.len() > 256 {
            cache.clear();
        }
        cache.insert(id, prepared.clone());
        Ok(Some(prepared))
    }

    async fn handle_one(&self, ctx: &HandlerContext, delivery: &Delivery) -> Outcome {
        let message = match CampaignQueueMessage::parse(&delivery.body) {
            Ok(m) => m,
            Err(e) => return Outcome::DeadLetter(format!("invalid campaign-email message: {e}")),
        };
        let result = match &message {
            CampaignQueueMessage::Fanout(f) => fanout::fan_out(
                &self.db,
                &self.producer,
                f.campaign_id,
                self.settings.batch_size,
                self.settings.batch_horizon,
                self.sender.ledger_delay(),
            )
            .await
            .map(|report| match report {
                Some(_) => Outcome::Ack,
                None => Outcome::DeadLetter(format!("campaign {} does not exist", f.campaign_id)),
            }),
            CampaignQueueMessage::Batch(b) => self.send_batch(ctx, b).await,
            CampaignQueueMessage::TestSend(t) => self.test_send(ctx, t).await,
        };
        result.unwrap_or_else(|e| {
            let why = format!("{e:#}");
            if db::is_unavailable(&e) {
                Outcome::Unavailable(why)
            } else {
                Outcome::Retry(why)
            }
        })
    }
}

#[async_trait]
impl Handler for CampaignHandler {
    async fn handle(&self, ctx: &HandlerContext, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            if ctx.should_stop() {
                outcomes.push(Outcome::Defer {
                    reason: "stopping".into(),
                    delay: Duration::ZERO,
                });
                continue;
            }
            outcomes.push(self.handle_one(ctx, delivery).await);
        }
        outcomes
    }

    /// A fan-out given up on after its last receive: the campaign is `failed` with the reason
    /// (the `campaigns` task would otherwise fan it out again for ever). A batch given up on
    /// leaves its recipients `pending`: the task batches them again once the horizon passes.
    async fn gave_up(&self, _ctx: &HandlerContext, messages: &[(Delivery, String)]) {
        for (delivery, why) in messages {
            let Ok(CampaignQueueMessage::Fanout(f)) = CampaignQueueMessage::parse(&delivery.body)
            else {
                continue;
            };
            let result = async {
                self.db
                    .get()
                    .await?
                    .execute(
                        "UPDATE campaigns SET status = 'failed', failed_at = now(), failure_reason = $2,
                                updated_at = now()
                          WHERE id = $1 AND status IN ('queued', 'snapshotting')",
                        &[&f.campaign_id, why],
                    )
                    .await?;
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = result {
                tracing::error!(
                    error = format!("{e:#}"),
                    campaign_id = f.campaign_id,
                    "could not mark a campaign failed"
                );
            }
        }
    }
}

/// The tracking keys from the database.
pub async fn load_keys(db: &Db) -> anyhow::Result<TrackingKeys> {
    let rows = db
        .get()
        .await?
        .query(datamailer_core::tracking::KEYS_SQL, &[])
        .await
        .context("reading the tracking keys")?;
    let keys = rows
        .iter()
        .map(|r| (r.get::<_, i32>(0) as u8, r.get::<_, Vec<u8>>(1)))
        .collect();
    TrackingKeys::new(keys).context("no tracking key in tracking_keys (migration 0013 makes one)")
}

/// Campaigns moving without an operator: scheduled ones fanned out when due, fan-outs whose
/// message was lost run again, pending recipients whose batch went missing batched again,
/// finished campaigns marked `sent`, and recipients a dead worker left `sending` in a cancelled
/// campaign settled from the send ledger. (The stuck-campaign gauge,
/// `datamailer_campaign_sending_age_seconds`, is the web host's: `web/src/health.rs`.)
pub struct CampaignMaintenance {
    pub db: Db,
    pub producer: Producer,
    pub batch_size: usize,
    pub batch_horizon: Duration,
    pub ledger_delay: Duration,
    /// A `queued` campaign whose fan-out message has not started it after this long is
    /// fanned out here.
    pub stalled_after: Duration,
}

const DUE_SQL: &str = "
SELECT id FROM campaigns
 WHERE paused_at IS NULL AND (
        (status IN ('queued', 'snapshotting')
         AND (scheduled_at IS NOT NULL AND scheduled_at <= now()
              OR coalesce(snapshot_started_at, queued_at) < now() - make_interval(secs => $1)))
     OR (status = 'sending' AND EXISTS (
            SELECT 1 FROM campaign_recipients r
             WHERE r.campaign_id = campaigns.id
               AND (r.status = 'pending' AND (r.batched_at IS NULL OR r.batched_at < now() - make_interval(secs => $2))
                    OR r.status = 'sending' AND r.lease_expires_at < now() - make_interval(secs => $3)))))
 ORDER BY id LIMIT 100";

#[async_trait]
impl MaintenanceTask for CampaignMaintenance {
    fn name(&self) -> &'static str {
        "campaigns"
    }

    fn every(&self) -> Duration {
        Duration::from_secs(5)
    }

    async fn run(&self, ctx: &HandlerContext) -> anyhow::Result<TaskReport> {
        let conn = self.db.get().await?;
        let due: Vec<i64> = conn
            .query(
                DUE_SQL,
                &[
                    &self.stalled_after.as_secs_f64(),
                    &self.batch_horizon.as_secs_f64(),
                    &self.ledger_delay.as_secs_f64(),
                ],
            )
            .await
            .context("finding campaigns to fan out")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut done = conn.execute(fanout::FINISH_SQL, &[&None::<i64>]).await?;
        drop(conn);
        let ledger = SendLedger::new(self.db.clone());
        let settled = send::settle_cancelled(&self.db, &ledger, self.ledger_delay).await?;

        let mut batched = 0usize;
        for id in &due {
            if ctx.should_stop() {
                break;
            }
            if let Some(report) = fanout::fan_out(
                &self.db,
                &self.producer,
                *id,
                self.batch_size,
                self.batch_horizon,
                self.ledger_delay,
            )
            .await?
            {
                batched += report.recipients_batched;
                done += u64::from(report.finished);
            }
        }
        Ok(TaskReport {
            acted_on: due.len() as u64 + done + settled,
            detail: format!(
                "{} campaigns fanned out ({batched} recipients batched), {done} finished, \
                 {settled} in-flight recipients of cancelled campaigns settled",
                due.len()
            ),
        })
    }
}
