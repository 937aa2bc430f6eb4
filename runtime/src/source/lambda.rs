//! One Lambda invocation's SQS batch as a source.
//!
//! The records are handed out once; then the source is exhausted and the tree drains. Lambda
//! deletes every record we do not list in `batchItemFailures`, so:
//! * ack → not listed;
//! * retry → listed, after a ChangeMessageVisibility that applies our backoff (when we have an
//!   SQS client and the queue URL);
//! * dead-letter → copied to the DLQ with its reason, then not listed (listed if the copy failed,
//!   so nothing is lost).
//!
//! Records never settled (deadline, crash) are listed as failures by [`LambdaBatch::failures`].

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsMessage;
use chrono::{TimeZone, Utc};

use super::sqs::{change_visibility, send_to_dlq};
use super::{Delivery, Received, Settlement, Source};

/// SQS access for retries and dead letters from inside Lambda.
#[derive(Clone)]
pub struct LambdaSqs {
    pub client: aws_sdk_sqs::Client,
    pub queue_url: Option<String>,
    pub dlq_url: Option<String>,
}

pub struct LambdaBatch {
    queue: String,
    records: Mutex<Option<Vec<Delivery>>>,
    /// Ids not yet settled as done (acked or safely dead-lettered).
    unsettled: Mutex<BTreeSet<String>>,
    order: Vec<String>,
    sqs: Option<LambdaSqs>,
    visibility_timeout: Duration,
}

impl LambdaBatch {
    pub fn new(queue: impl Into<String>, records: &[SqsMessage], sqs: Option<LambdaSqs>) -> Self {
        let deliveries: Vec<Delivery> = records
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
            .collect();
        let order: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
        Self {
            queue: queue.into(),
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
        if let Some(LambdaSqs {
            client,
            queue_url: Some(url),
            ..
        }) = &self.sqs
        {
            change_visibility(
                client,
                url,
                deliveries.iter().map(|d| (d, for_.as_secs() as i32)),
            )
            .await?;
        }
        Ok(())
    }

    async fn settle(&self, settled: Vec<(Delivery, Settlement)>) -> anyhow::Result<()> {
        let mut done = Vec::new();
        let mut retry = Vec::new();
        for (d, s) in &settled {
            match s {
                Settlement::Ack => done.push(d.id.clone()),
                Settlement::Retry { delay, .. } => retry.push((d, delay.as_secs() as i32)),
                Settlement::DeadLetter { reason } => {
                    let dlq = self.sqs.as_ref().and_then(|s| s.dlq_url.as_deref());
                    match &self.sqs {
                        Some(sqs) => {
                            match send_to_dlq(&sqs.client, dlq, &self.queue, d, reason).await {
                                Ok(()) => done.push(d.id.clone()),
                                Err(e) => {
                                    tracing::error!(id = %d.id, error = %e, "could not dead-letter; reporting as a failure")
                                }
                            }
                        }
                        None => {
                            tracing::error!(id = %d.id, reason, "no SQS client to dead-letter with; reporting as a failure")
                        }
                    }
                }
            }
        }
        if let Some(LambdaSqs {
            client,
            queue_url: Some(url),
            ..
        }) = &self.sqs
        {
            // Backoff is a nicety: if it fails the record still retries after the queue's timeout.
            if let Err(e) = change_visibility(client, url, retry.into_iter()).await {
                tracing::warn!(error = %e, "could not apply retry backoff");
            }
        }
        let mut unsettled = self.unsettled.lock().unwrap();
        for id in done {
            unsettled.remove(&id);
        }
        Ok(())
    }

    /// The whole invocation is one batch: the mapping already chose its size.
    fn max_batch(&self) -> usize {
        self.order.len().max(1)
    }

    fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }
}
