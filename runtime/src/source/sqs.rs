//! Amazon SQS as a source: long poll, batch receive and delete, visibility heartbeat, retry
//! backoff through ChangeMessageVisibility, and dead-lettering with the reason attached.
//!
//! The queue's redrive policy stays as a safety net; we dead-letter poison messages ourselves
//! so they do not burn retries and so the reason travels with them (message attributes
//! `DeadLetterReason`, `SourceQueue`, `OriginalMessageId`).

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use chrono::{TimeZone, Utc};

use super::{Delivery, Received, Settlement, Source};

/// SQS caps a visibility timeout at 12 hours.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue: String,
    url: String,
    dlq_url: Option<String>,
    wait: Duration,
    visibility_timeout: Duration,
}

impl SqsQueue {
    /// `dlq_url` is where poison messages go; when `None` we read the queue's redrive policy.
    pub async fn connect(
        client: aws_sdk_sqs::Client,
        queue: impl Into<String>,
        url: impl Into<String>,
        dlq_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let queue = queue.into();
        let url = url.into();
        let attrs = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .with_context(|| format!("reading the attributes of the {queue} queue ({url})"))?;
        let attrs = attrs.attributes().cloned().unwrap_or_default();
        let visibility_timeout = attrs
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(30));
        let dlq_url = match dlq_url {
            Some(u) => Some(u),
            None => match attrs.get(&QueueAttributeName::RedrivePolicy) {
                Some(policy) => Some(dlq_url_from_policy(&client, policy).await?),
                None => None,
            },
        };
        Ok(Self {
            client,
            queue,
            url,
            dlq_url,
            wait: Duration::from_secs(20),
            visibility_timeout,
        })
    }

    /// Long-poll wait (SQS allows 0..=20 s).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait.min(Duration::from_secs(20));
        self
    }

    pub fn dlq_url(&self) -> Option<&str> {
        self.dlq_url.as_deref()
    }
}

async fn dlq_url_from_policy(client: &aws_sdk_sqs::Client, policy: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_str(policy).context("parsing RedrivePolicy")?;
    let arn = v["deadLetterTargetArn"]
        .as_str()
        .context("RedrivePolicy has no deadLetterTargetArn")?;
    let name = arn.rsplit(':').next().unwrap_or(arn);
    let out = client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .context("GetQueueUrl for the DLQ")?;
    out.queue_url()
        .map(str::to_string)
        .context("GetQueueUrl returned no URL")
}

#[async_trait]
impl Source for SqsQueue {
    fn kind(&self) -> &'static str {
        "sqs"
    }

    async fn receive(&self, max: usize) -> anyhow::Result<Received> {
        let max = max.clamp(0, 10);
        if max == 0 {
            return Ok(Received::Messages(Vec::new()));
        }
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max as i32)
            .wait_time_seconds(self.wait.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .with_context(|| format!("SQS ReceiveMessage on {}", self.queue))?;
        let messages = out
            .messages()
            .iter()
            .map(|m| {
                let attrs = m.attributes();
                let attr = |name| attrs.and_then(|a| a.get(&name)).cloned();
                Delivery {
                    id: m.message_id().unwrap_or_default().to_string(),
                    receipt: m.receipt_handle().unwrap_or_default().to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                    sent_at: attr(MessageSystemAttributeName::SentTimestamp)
                        .and_then(|v| v.parse::<i64>().ok())
                        .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
                }
            })
            .collect();
        Ok(Received::Messages(messages))
    }

    async fn extend(&self, deliveries: &[Delivery], for_: Duration) -> anyhow::Result<()> {
        let secs = for_.min(MAX_VISIBILITY).as_secs() as i32;
        change_visibility(
            &self.client,
            &self.url,
            deliveries.iter().map(|d| (d, secs)),
        )
        .await
    }

    async fn settle(&self, settled: Vec<(Delivery, Settlement)>) -> anyhow::Result<()> {
        let mut delete = Vec::new();
        let mut later = Vec::new();
        for (d, s) in &settled {
            match s {
                Settlement::Ack => delete.push(d),
                Settlement::Retry { delay, .. } => {
                    later.push((d, (*delay).min(MAX_VISIBILITY).as_secs() as i32))
                }
                Settlement::DeadLetter { reason } => {
                    // Only a message safely in the DLQ may leave the source queue.
                    send_to_dlq(
                        &self.client,
                        self.dlq_url.as_deref(),
                        &self.queue,
                        d,
                        reason,
                    )
                    .await?;
                    delete.push(d);
                }
            }
        }
        change_visibility(&self.client, &self.url, later.into_iter()).await?;
        delete_batch(&self.client, &self.url, delete.into_iter()).await
    }

    fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }
}

/// Copies a message to the dead-letter queue with the reason as message attributes.
pub(crate) async fn send_to_dlq(
    client: &aws_sdk_sqs::Client,
    dlq_url: Option<&str>,
    queue: &str,
    d: &Delivery,
    reason: &str,
) -> anyhow::Result<()> {
    let dlq_url = dlq_url.with_context(|| format!("the {queue} queue has no dead-letter queue"))?;
    let attr = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(if v.is_empty() { "-" } else { v })
            .build()
            .expect("string attribute")
    };
    // SQS limits attribute values to the message size; reasons are short, but be safe.
    let reason: String = reason.chars().take(2000).collect();
    client
        .send_message()
        .queue_url(dlq_url)
        .message_body(&d.body)
        .message_attributes("DeadLetterReason", attr(&reason))
        .message_attributes("SourceQueue", attr(queue))
        .message_attributes("OriginalMessageId", attr(&d.id))
        .message_attributes("ReceiveCount", attr(&d.receive_count.to_string()))
        .send()
        .await
        .with_context(|| format!("sending a dead letter to the {queue} DLQ"))?;
    Ok(())
}

pub(crate) async fn change_visibility<'a>(
    client: &aws_sdk_sqs::Client,
    url: &str,
    items: impl Iterator<Item = (&'a Delivery, i32)>,
) -> anyhow::Result<()> {
    let items: Vec<_> = items.collect();
    for chunk in items.chunks(10) {
        let mut req = client.change_message_visibility_batch().queue_url(url);
        for (i, (d, secs)) in chunk.iter().enumerate() {
            req = req.entries(
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&d.receipt)
                    .visibility_timeout(*secs)
                    .build()?,
            );
        }
        let out = req
            .send()
            .await
            .context("SQS ChangeMessageVisibilityBatch")?;
        if let Some(f) = out.failed().first() {
            anyhow::bail!(
                "SQS refused a visibility change: {} {}",
                f.code(),
                f.message().unwrap_or_default()
            );
        }
    }
    Ok(())
}

async fn delete_batch<'a>(
    client: &aws_sdk_sqs::Client,
    url: &str,
    items: impl Iterator<Item = &'a Delivery>,
) -> anyhow::Result<()> {
    let items: Vec<_> = items.collect();
    for chunk in items.chunks(10) {
        let mut req = client.delete_message_batch().queue_url(url);
        for (i, d) in chunk.iter().enumerate() {
            req = req.entries(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&d.receipt)
                    .build()?,
            );
        }
        let out = req.send().await.context("SQS DeleteMessageBatch")?;
        if let Some(f) = out.failed().first() {
            anyhow::bail!(
                "SQS refused a delete: {} {}",
                f.code(),
                f.message().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// One dead letter as read back from an SQS DLQ.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SqsDeadLetter {
    pub id: String,
    pub body: String,
    pub reason: String,
}

/// Reads every message of a DLQ without consuming it (each is made visible again at once).
pub async fn list_dead_letters(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
) -> anyhow::Result<Vec<SqsDeadLetter>> {
    let mut seen = std::collections::BTreeMap::new();
    let mut handles = Vec::new();
    // Keep them invisible while we page through, then hand them all back.
    for _ in 0..100 {
        let out = client
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .context("SQS ReceiveMessage on the DLQ")?;
        if out.messages().is_empty() {
            break;
        }
        for m in out.messages() {
            let reason = m
                .message_attributes()
                .and_then(|a| a.get("DeadLetterReason"))
                .and_then(|v| v.string_value())
                .unwrap_or(
                    "(no reason recorded: moved by the redrive policy after too many receives)",
                )
                .to_string();
            let id = m.message_id().unwrap_or_default().to_string();
            handles.push(Delivery {
                id: id.clone(),
                receipt: m.receipt_handle().unwrap_or_default().to_string(),
                body: String::new(),
                receive_count: 0,
                sent_at: None,
            });
            seen.insert(
                id.clone(),
                SqsDeadLetter {
                    id,
                    body: m.body().unwrap_or_default().to_string(),
                    reason,
                },
            );
        }
    }
    change_visibility(client, dlq_url, handles.iter().map(|d| (d, 0))).await?;
    Ok(seen.into_values().collect())
}

/// Moves every message of the DLQ back to the source queue. Returns how many moved.
pub async fn redrive(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    queue_url: &str,
) -> anyhow::Result<usize> {
    let mut moved = 0;
    loop {
        let out = client
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .send()
            .await
            .context("SQS ReceiveMessage on the DLQ")?;
        if out.messages().is_empty() {
            return Ok(moved);
        }
        for m in out.messages() {
            client
                .send_message()
                .queue_url(queue_url)
                .message_body(m.body().unwrap_or_default())
                .send()
                .await
                .context("SQS SendMessage back to the source queue")?;
            client
                .delete_message()
                .queue_url(dlq_url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .context("SQS DeleteMessage on the DLQ")?;
            moved += 1;
        }
    }
}
