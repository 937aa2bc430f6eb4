//! The ses-webhooks tree: what SES says about our mail after the send (deliveries, bounces,
//! complaints, opens, clicks, rejects, delays, rendering failures, subscriptions and its own
//! `Send` events), applied to the message's row, its contact and its campaign.
//!
//! * Each message is read by [`datamailer_core::feedback::parse`] (contract, SNS envelope or
//!   bare SES event); what is none of them is dead-lettered with the reason.
//! * Events go through [`WRITERS`] [`BatchWriter`]s over [`FeedbackSink`]: every event
//!   waiting, from all of the tree's workers, is applied by one call of `ses_apply_events`
//!   (migration 0020) per writer, one round trip and one commit for the lot. Events about one
//!   message always take the same writer, so the writers never contend for a row.
//! * Redelivery is harmless: the provider event id is unique in `email_events`, so a
//!   duplicate (even one applied concurrently) records and counts nothing and is acknowledged.
//! * A `Send` event writes the send ledger and marks a row whose record was lost as sent, so
//!   a reclaimed row is not sent twice (see `datamailer_runtime::ledger`).
//! * A campaign whose bounce or complaint rate reaches its threshold pauses itself.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datamailer_core::feedback::{self, FeedbackEvent};
use datamailer_runtime::db::{self, Db};
use datamailer_runtime::writer::{BatchSink, BatchWriter, WriterSettings};
use datamailer_runtime::{Delivery, Handler, HandlerContext, Outcome};
use serde_json::Value;

use crate::events::feedback as events;

/// The thresholds of the feedback rules (configuration, `DATAMAILER_FEEDBACK_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedbackSettings {
    /// Soft bounces of one contact, with no delivery between, that suppress it (0: never).
    pub soft_bounce_limit: i32,
    /// ... within this window.
    pub soft_bounce_window: Duration,
    /// A campaign (and the account's campaign lane) pauses at this hard-bounce rate ...
    pub bounce_threshold: f64,
    /// ... or this complaint rate ...
    pub complaint_threshold: f64,
    /// ... once this many have been sent.
    pub min_sample: i32,
    /// The account-wide guard's window: the last N sends.
    pub account_window: i64,
}

impl Default for FeedbackSettings {
    /// Below SES's own review levels (bounce 5 %, complaint 0.1 %).
    fn default() -> Self {
        Self {
            soft_bounce_limit: 3,
            soft_bounce_window: Duration::from_secs(7 * 24 * 3600),
            bounce_threshold: 0.04,
            complaint_threshold: 0.0008,
            min_sample: 1000,
            account_window: 10_000,
        }
    }
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Recorded and applied to its row.
    Applied,
    /// Recorded; no row of ours matched (no effect).
    Uncorrelated,
    /// Seen before: nothing recorded or changed.
    Duplicate,
    /// Not written: the database is unreachable (the message comes back, uncounted).
    Unavailable,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Applied => "applied",
            Applied::Uncorrelated => "uncorrelated",
            Applied::Duplicate => "duplicate",
            Applied::Unavailable => "unavailable",
        }
    }
}

const APPLY_SQL: &str = "
SELECT n, outcome, campaign_id FROM ses_apply_events(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[], $7::text[],
    $8::jsonb[], $9::jsonb[], $10::text[], $11::int, $12::float8, $13::float8, $14::float8, $15::int)";

/// Applies events in batches (see the module docs).
pub struct FeedbackSink {
    db: Db,
    settings: FeedbackSettings,
}

#[async_trait]
impl BatchSink for FeedbackSink {
    type Item = FeedbackEvent;
    type Output = Applied;
    type Key = String;

    fn name(&self) -> &'static str {
        "ses-feedback"
    }

    async fn write(&self, items: &[&FeedbackEvent]) -> anyhow::Result<Vec<Applied>> {
        match self.apply(items).await {
            // No use trying the events one by one when the database is away.
            Err(e) if db::is_unavailable(&e) => {
                events::unavailable(&e);
                Ok(vec![Applied::Unavailable; items.len()])
            }
            // Otherwise the writer retries each alone: one bad event fails only itself.
            other => other,
        }
    }

    fn dedupe_key(&self, item: &FeedbackEvent) -> Option<String> {
        Some(item.provider_event_id.clone())
    }

    fn duplicate(&self, first: &Applied) -> Applied {
        match first {
            Applied::Unavailable => Applied::Unavailable,
            _ => Applied::Duplicate,
        }
    }
}

impl FeedbackSink {
    async fn apply(&self, items: &[&FeedbackEvent]) -> anyhow::Result<Vec<Applied>> {
        let ids: Vec<&str> = items.iter().map(|e| e.provider_event_id.as_str()).collect();
        let types: Vec<&str> = items.iter().map(|e| e.event_type).collect();
        let ses: Vec<&str> = items.iter().map(|e| e.ses_message_id.as_str()).collect();
        let kinds: Vec<&str> = items.iter().map(|e| e.tag_kind.as_str()).collect();
        let rows: Vec<Option<i64>> = items.iter().map(|e| e.tag_id).collect();
        let at: Vec<DateTime<Utc>> = items.iter().map(|e| e.occurred_at).collect();
        let urls: Vec<&str> = items.iter().map(|e| e.url.as_str()).collect();
        let meta: Vec<&Value> = items.iter().map(|e| &e.metadata).collect();
        let emails: Vec<Value> = items.iter().map(|e| e.recipients.clone().into()).collect();
        let bounce: Vec<&str> = items
            .iter()
            .map(|e| e.bounce.map_or("", |b| b.as_str()))
            .collect();
        let s = &self.settings;
        let conn = self.db.get().await?;
        let apply = conn.prepare_cached(APPLY_SQL).await?;
        let rows = conn
            .query(
                &apply,
                &[
                    &ids,
                    &types,
                    &ses,
                    &kinds,
                    &rows,
                    &at,
                    &urls,
                    &meta,
                    &emails,
                    &bounce,
                    &s.soft_bounce_limit,
                    &s.soft_bounce_window.as_secs_f64(),
                    &s.bounce_threshold,
                    &s.complaint_threshold,
                    &s.min_sample,
                ],
            )
            .await?;
        let mut out = vec![Applied::Duplicate; items.len()];
        for row in rows {
            let n: i64 = row.get(0);
            let outcome: String = row.get(1);
            if n == 0 {
                let campaign_id: i64 = row.get(2);
                events::campaign_paused(campaign_id, &outcome);
                continue;
            }
            out[(n - 1) as usize] = match outcome.as_str() {
                "applied" => Applied::Applied,
                "uncorrelated" => Applied::Uncorrelated,
                _ => Applied::Duplicate,
            };
        }
        for (event, applied) in items.iter().zip(&out) {
            events::applied(event, *applied);
        }
        Ok(out)
    }
}

/// Writers (connections) applying events side by side. Events about one message always go to
/// the same writer, so two writers never wait on each other's rows (only, briefly, on a
/// campaign's counters, which each updates last).
pub const WRITERS: usize = 2;

pub struct SesWebhooksHandler {
    writers: Vec<BatchWriter<FeedbackSink>>,
}

impl SesWebhooksHandler {
    /// Starts its writers (call inside a Tokio runtime).
    pub fn new(db: Db, settings: FeedbackSettings) -> Self {
        let writers = (0..WRITERS)
            .map(|_| {
                BatchWriter::start(
                    FeedbackSink {
                        db: db.clone(),
                        settings,
                    },
                    WriterSettings {
                        max_batch: 500,
                        ..Default::default()
                    },
                )
            })
            .collect();
        Self { writers }
    }

    /// The writer of the message an event is about: by our tags, else the SES message id.
    fn writer_for(&self, event: &FeedbackEvent) -> &BatchWriter<FeedbackSink> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match (event.tag_id, event.ses_message_id.as_str()) {
            (Some(id), _) => (event.tag_kind.as_str(), id).hash(&mut h),
            (None, "") => event.provider_event_id.hash(&mut h),
            (None, ses) => ses.hash(&mut h),
        }
        &self.writers[h.finish() as usize % self.writers.len()]
    }
}

#[async_trait]
impl Handler for SesWebhooksHandler {
    async fn handle(&self, _ctx: &HandlerContext, batch: &[Delivery]) -> Vec<Outcome> {
        let now = Utc::now();
        let writes = batch.iter().map(|delivery| async move {
            let event = match feedback::parse(&delivery.body, now) {
                Ok(event) => event,
                Err(why) => return Outcome::DeadLetter(why.to_string()),
            };
            match self.writer_for(&event).write(event).await {
                Ok(Applied::Unavailable) => {
                    Outcome::Unavailable("the database is unavailable".into())
                }
                Ok(_) => Outcome::Ack,
                Err(e) => Outcome::Retry(format!("applying the SES event: {e:#}")),
            }
        });
        futures::future::join_all(writes).await
    }
}
