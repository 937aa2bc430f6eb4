//! One Lambda invocation's batch as a source.
//!
//! The records are handed out once; then the source is exhausted and the tree drains. Lambda
//! deletes every record we do not list in `batchItemFailures`, so:
//! * ack → not listed;
//! * retry → listed, after a ChangeMessageVisibility that applies our delay (when we know the
//!   queue URL);
//! * an uncounted retry one receive short of the redrive limit → put back as a fresh copy,
//!   then not listed (see [`super::sqs`]);
//! * dead-letter → copied to the DLQ with its reason, then not listed (listed if the copy
//!   failed, so nothing is lost).
//!
//! Records never settled (deadline, crash) are listed as failures by [`LambdaBatch::failures`].
//! A batch built from a non-SQS event (the scheduled maintenance) has no queue to settle with:
//! its failures are only reported.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsMessage;
use chrono::{TimeZone, Utc};

use super::sqs::{SqsTarget, Then};
use super::{Delivery, Received, SettleReport, Settlement, Source};

pub struct LambdaBatch {
    records: Mutex<Option<Vec<Delivery>>>,
    /// Ids not yet settled as done (acked, safely dead-lettered or copied back).
    unsettled: Mutex<BTreeSet<String>>,
    order: Vec<String>,
    sqs: Option<SqsTarget>,
    visibility_timeout: Duration,
}

/// An SQS event's records as deliveries.
pub fn deliveries(records: &[SqsMessage]) -> Vec<Delivery> {
    records
        .iter()
        .map(|r| {
            let attr = |k: &str| r.attributes.get(k).cloned();
            Delivery {
                id: r.message_id.clone().unwrap_or_default(),
                receipt: r.receipt_handle.clone().unwrap_or_default(),
                body: r.body.clone().unwrap_or_default(),
                receive_count: attr("ApproximateReceiveCount")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
                sent_at: attr("SentTimestamp")
                    .and_then(|v| v.parse::<i64>().ok())
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            }
        })
        .collect()
}

impl LambdaBatch {
    pub fn new(deliveries: Vec<Delivery>, sqs: Option<SqsTarget>) -> Self {
        let order: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
        Self {
            unsettled: Mutex::new(order.iter().cloned().collect()),
            records: Mutex::new(Some(deliveries)),
            order,
            sqs,
            visibility_timeout: Duration::from_secs(180),
        }
    }

    /// Record ids Lambda must retry, in input order: failures plus anything never settled.
    pub fn failures(&self) -> Vec<String> {
        let unsettled = self.unsettled.lock().unwrap();
        self.order
            .iter()
            .filter(|id| unsettled.contains(*id))
            .cloned()
            .collect()
    }

    /// Hands back every record not yet handed out, uncounted, to come back after `delay`
    /// (a paused queue, an open circuit breaker). Returns how many.
    pub async fn hand_back_unreceived(&self, delay: Duration, reason: &str) -> usize {
        let Some(records) = self.records.lock().unwrap().take() else {
            return 0;
        };
        let n = records.len();
        let settled = records
            .into_iter()
            .map(|d| {
                (
                    d,
                    Settlement::Retry {
                        delay,
                        reason: reason.to_string(),
                        counted: false,
                    },
                )
            })
            .collect();
        let report = self.settle(settled).await;
        for f in &report.failures {
            tracing::warn!(id = %f.id, error = %f.error, "could not hand a record back; Lambda retries it after the queue's timeout");
        }
        n
    }
}

#[async_trait]
impl Source for LambdaBatch {
    fn kind(&self) -> &'static str {
        "lambda"
    }

    async fn receive(&self, _max: usize) -> anyhow::Result<Received> {
        // A Lambda batch is fixed by the event source mapping: hand it out whole, once.
        Ok(match self.records.lock().unwrap().take() {
            Some(records) => Received::Messages(records),
            None => Received::Exhausted,
        })
    }

    async fn extend(&self, deliveries: &[Delivery], for_: Duration) -> anyhow::Result<()> {
        if let Some(target) = &self.sqs {
            let mut report = SettleReport::default();
            let items: Vec<(&Delivery, Duration)> = deliveries.iter().map(|d| (d, for_)).collect();
            target
                .change_visibility(&items, &mut report, |_| "extend")
                .await;
            if let Some(f) = report.failures.first() {
                anyhow::bail!("extending {}: {}", f.id, f.error);
            }
        }
        Ok(())
    }

    async fn settle(&self, settled: Vec<(Delivery, Settlement)>) -> SettleReport {
        let mut report = SettleReport::default();
        let Some(target) = &self.sqs else {
            // No queue (a scheduled event): acks are done, anything else stays a failure.
            let mut unsettled = self.unsettled.lock().unwrap();
            for (d, s) in &settled {
                match s {
                    Settlement::Ack => {
                        unsettled.remove(&d.id);
                    }
                    other => report.fail(d, other.action(), "no queue to settle with"),
                }
            }
            return report;
        };
        let plan = target.prepare(&settled, &mut report).await;
        let mut later = Vec::new();
        let mut done = Vec::new();
        for (d, action, then) in plan {
            match then {
                Then::Remove => done.push(d.id.clone()),
                Then::Return(delay) => later.push((d, delay, action)),
            }
        }
        // The delay is a nicety: without it the record still retries after the queue's timeout.
        let items: Vec<(&Delivery, Duration)> = later.iter().map(|(d, t, _)| (*d, *t)).collect();
        target
            .change_visibility(&items, &mut report, |d| {
                later
                    .iter()
                    .find(|(x, _, _)| x.id == d.id)
                    .map(|(_, _, a)| *a)
                    .unwrap_or("retry")
            })
            .await;
        let mut unsettled = self.unsettled.lock().unwrap();
        for id in done {
            unsettled.remove(&id);
        }
        report
    }

    fn is_exhausted(&self) -> bool {
        self.records.lock().unwrap().is_none()
    }

    /// The whole invocation is one batch: the mapping already chose its size.
    fn max_batch(&self) -> usize {
        self.order.len().max(1)
    }

    fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }
}
