//! Amazon SQS as a source: long poll, batch receive and delete, visibility heartbeat, retry
//! backoff through ChangeMessageVisibility, and dead-lettering with the reason attached.
//!
//! The queue's redrive policy stays as a safety net; we dead-letter poison messages ourselves
//! so they do not burn retries and so the reason travels with them (message attributes
//! `DeadLetterReason`, `SourceQueue`, `OriginalMessageId`).
//!
//! SQS counts every receive and cannot give one back, so an uncounted retry (a message that
//! must wait, not one that failed) of a message one receive short of the redrive limit is put
//! back as a fresh copy (`SendMessage` with the delay, then the original is deleted): waiting
//! never walks a message into the DLQ.
//!
//! Settling retries each refused entry and reports the ones that still fail; a message whose
//! dead-letter copy could not be written stays on its queue (made visible after a pause), so
//! nothing leaves the source queue without being safe elsewhere.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use chrono::{TimeZone, Utc};

use super::{with_retries, Delivery, Received, SettleReport, Settlement, Source, SETTLE_ATTEMPTS};

/// SQS caps a visibility timeout at 12 hours.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// SQS caps a message delay at 15 minutes.
const MAX_DELAY: Duration = Duration::from_secs(900);
/// How long a message whose dead-letter copy failed waits before it is tried again.
const DEAD_LETTER_FAILED_RETRY: Duration = Duration::from_secs(30);

pub struct SqsQueue {
    target: SqsTarget,
    wait: Duration,
    visibility_timeout: Duration,
}

/// Where a queue's settlements go: the queue, its DLQ and its redrive limit. Shared by the
/// SQS source and the Lambda batch (whose records come from the same queue).
#[derive(Clone)]
pub struct SqsTarget {
    pub client: aws_sdk_sqs::Client,
    pub queue: String,
    /// The queue's URL; without it (a Lambda batch with no URL configured) retries cannot
    /// apply their delay and uncounted retries cannot be copied.
    pub url: Option<String>,
    pub dlq_url: Option<String>,
    /// The redrive policy's `maxReceiveCount`, if the queue has one.
    pub max_receives: Option<u32>,
}

/// What happens to the original message once dead letters and copies are written.
pub(crate) enum Then {
    /// Its effects are done (acked, dead-lettered, or copied back): remove it.
    Remove,
    /// Make it visible again after this delay.
    Return(Duration),
}

impl SqsTarget {
    /// Reads the queue's visibility timeout and redrive policy. `dlq_url` overrides the
    /// policy's dead-letter target.
    pub async fn discover(
        client: aws_sdk_sqs::Client,
        queue: impl Into<String>,
        url: impl Into<String>,
        dlq_url: Option<String>,
    ) -> anyhow::Result<(SqsTarget, Duration)> {
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
        let policy: Option<serde_json::Value> = attrs
            .get(&QueueAttributeName::RedrivePolicy)
            .map(|p| serde_json::from_str(p).context("parsing RedrivePolicy"))
            .transpose()?;
        let max_receives = policy.as_ref().and_then(|p| {
            p["maxReceiveCount"]
                .as_u64()
                .or_else(|| p["maxReceiveCount"].as_str()?.parse().ok())
                .map(|n| n as u32)
        });
        let dlq_url = match (dlq_url, &policy) {
            (Some(u), _) => Some(u),
            (None, Some(policy)) => Some(dlq_url_from_policy(&client, policy).await?),
            (None, None) => None,
        };
        Ok((
            SqsTarget {
                client,
                queue,
                url: Some(url),
                dlq_url,
                max_receives,
            },
            visibility_timeout,
        ))
    }

    /// Writes dead letters and uncounted-retry copies; says what to do with each original.
    /// A failed write is reported and the original returns after a pause instead.
    pub(crate) async fn prepare<'a>(
        &self,
        settled: &'a [(Delivery, Settlement)],
        report: &mut SettleReport,
    ) -> Vec<(&'a Delivery, &'static str, Then)> {
        let mut out = Vec::with_capacity(settled.len());
        for (d, s) in settled {
            let then = match s {
                Settlement::Ack => Then::Remove,
                Settlement::DeadLetter { reason } => {
                    let sent = with_retries(SETTLE_ATTEMPTS, || {
                        send_to_dlq(
                            &self.client,
                            self.dlq_url.as_deref(),
                            &self.queue,
                            d,
                            reason,
                        )
                    })
                    .await;
                    match sent {
                        // Only a message safely in the DLQ may leave the source queue.
                        Ok(()) => Then::Remove,
                        Err(e) => {
                            report.fail(d, s.action(), &e);
                            Then::Return(DEAD_LETTER_FAILED_RETRY)
                        }
                    }
                }
                Settlement::Retry {
                    delay,
                    counted: false,
                    ..
                } if self.last_receive_is_next(d) => {
                    match with_retries(SETTLE_ATTEMPTS, || self.send_copy(d, *delay)).await {
                        Ok(()) => Then::Remove,
                        Err(e) => {
                            report.fail(d, s.action(), &e);
                            Then::Return(*delay)
                        }
                    }
                }
                Settlement::Retry { delay, .. } => Then::Return(*delay),
            };
            out.push((d, s.action(), then));
        }
        out
    }

    /// True when the redrive policy would move the message on its next receive but one.
    fn last_receive_is_next(&self, d: &Delivery) -> bool {
        self.max_receives
            .is_some_and(|max| d.receive_count + 1 >= max)
    }

    async fn send_copy(&self, d: &Delivery, delay: Duration) -> anyhow::Result<()> {
        let url = self
            .url
            .as_deref()
            .context("no queue URL to put the message back on")?;
        self.client
            .send_message()
            .queue_url(url)
            .message_body(&d.body)
            .delay_seconds(delay.min(MAX_DELAY).as_secs() as i32)
            .send()
            .await
            .with_context(|| format!("putting a waiting message back on {}", self.queue))?;
        Ok(())
    }

    /// Makes each message visible after its delay; reports the entries SQS still refuses.
    pub(crate) async fn change_visibility(
        &self,
        items: &[(&Delivery, Duration)],
        report: &mut SettleReport,
        action: impl Fn(&Delivery) -> &'static str,
    ) {
        let Some(url) = self.url.as_deref() else {
            return;
        };
        let entries: Vec<(&Delivery, i32)> = items
            .iter()
            .map(|(d, delay)| (*d, (*delay).min(MAX_VISIBILITY).as_secs() as i32))
            .collect();
        for (d, error) in change_visibility(&self.client, url, &entries).await {
            report.fail(d, action(d), error);
        }
    }

    /// Deletes the messages; reports the entries SQS still refuses.
    pub(crate) async fn delete(&self, items: &[&Delivery], report: &mut SettleReport) {
        let Some(url) = self.url.as_deref() else {
            return;
        };
        for (d, error) in delete_batch(&self.client, url, items).await {
            report.fail(d, "ack", error);
        }
    }
}

impl SqsQueue {
    /// `dlq_url` is where poison messages go; when `None` we read the queue's redrive policy.
    pub async fn connect(
        client: aws_sdk_sqs::Client,
        queue: impl Into<String>,
        url: impl Into<String>,
        dlq_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let (target, visibility_timeout) = SqsTarget::discover(client, queue, url, dlq_url).await?;
        Ok(Self {
            target,
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
        self.target.dlq_url.as_deref()
    }

    /// What settlements of this queue need (for a Lambda batch of the same queue).
    pub fn target(&self) -> SqsTarget {
        self.target.clone()
    }

    fn url(&self) -> &str {
        self.target
            .url
            .as_deref()
            .expect("a connected queue has a URL")
    }
}

async fn dlq_url_from_policy(
    client: &aws_sdk_sqs::Client,
    policy: &serde_json::Value,
) -> anyhow::Result<String> {
    let arn = policy["deadLetterTargetArn"]
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
            .target
            .client
            .receive_message()
            .queue_url(self.url())
            .max_number_of_messages(max as i32)
            .wait_time_seconds(self.wait.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .with_context(|| format!("SQS ReceiveMessage on {}", self.target.queue))?;
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
        let entries: Vec<(&Delivery, i32)> = deliveries.iter().map(|d| (d, secs)).collect();
        match change_visibility(&self.target.client, self.url(), &entries)
            .await
            .first()
        {
            None => Ok(()),
            Some((d, e)) => anyhow::bail!("extending {}: {e}", d.id),
        }
    }

    async fn settle(&self, settled: Vec<(Delivery, Settlement)>) -> SettleReport {
        let mut report = SettleReport::default();
        let plan = self.target.prepare(&settled, &mut report).await;
        let mut remove = Vec::new();
        let mut later = Vec::new();
        for (d, action, then) in plan {
            match then {
                Then::Remove => remove.push(d),
                Then::Return(delay) => later.push((d, delay, action)),
            }
        }
        let items: Vec<(&Delivery, Duration)> = later.iter().map(|(d, t, _)| (*d, *t)).collect();
        self.target
            .change_visibility(&items, &mut report, |d| {
                later
                    .iter()
                    .find(|(x, _, _)| x.receipt == d.receipt)
                    .map(|(_, _, a)| *a)
                    .unwrap_or("retry")
            })
            .await;
        self.target.delete(&remove, &mut report).await;
        report
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

/// One SQS batch call over `items` in chunks of ten, retrying the entries it refuses (and
/// whole calls that fail) up to [`SETTLE_ATTEMPTS`] times. A chunk whose whole call keeps
/// failing is split into single-entry calls, so one bad entry (an expired receipt handle, say)
/// cannot sink the entries beside it. Returns the entries that still failed, with the reason.
async fn batch_call<T, F, Fut>(items: &[T], call: F) -> Vec<(T, String)>
where
    T: Copy,
    F: Fn(Vec<T>) -> Fut,
    // Ok(indices refused, with reasons) or Err for the whole call.
    Fut: std::future::Future<Output = anyhow::Result<Vec<(usize, String)>>>,
{
    let mut failed = Vec::new();
    for chunk in items.chunks(10) {
        let (still, whole_call_failed) = attempt(chunk.to_vec(), &call).await;
        if whole_call_failed && chunk.len() > 1 {
            for item in chunk {
                failed.extend(attempt(vec![*item], &call).await.0);
            }
        } else {
            failed.extend(still);
        }
    }
    failed
}

/// Up to [`SETTLE_ATTEMPTS`] calls, each over what the last one refused. Returns what is
/// left and whether the last call failed as a whole.
async fn attempt<T, F, Fut>(mut pending: Vec<T>, call: &F) -> (Vec<(T, String)>, bool)
where
    T: Copy,
    F: Fn(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<(usize, String)>>>,
{
    let mut last = Vec::new();
    let mut whole = false;
    for n in 0..SETTLE_ATTEMPTS {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(50 * 4u64.pow(n - 1))).await;
        }
        match call(pending.clone()).await {
            Ok(refused) => {
                whole = false;
                last = refused
                    .into_iter()
                    .filter_map(|(i, why)| Some((*pending.get(i)?, why)))
                    .collect();
            }
            Err(e) => {
                whole = true;
                last = pending.iter().map(|t| (*t, format!("{e:#}"))).collect();
            }
        }
        if last.is_empty() {
            break;
        }
        pending = last.iter().map(|(t, _)| *t).collect();
    }
    (last, whole)
}

pub(crate) async fn change_visibility<'a>(
    client: &aws_sdk_sqs::Client,
    url: &str,
    items: &[(&'a Delivery, i32)],
) -> Vec<(&'a Delivery, String)> {
    batch_call(items, |chunk: Vec<(&'a Delivery, i32)>| async move {
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
        Ok(refused(out.failed()))
    })
    .await
    .into_iter()
    .map(|((d, _), why)| (d, why))
    .collect()
}

async fn delete_batch<'a>(
    client: &aws_sdk_sqs::Client,
    url: &str,
    items: &[&'a Delivery],
) -> Vec<(&'a Delivery, String)> {
    batch_call(items, |chunk: Vec<&'a Delivery>| async move {
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
        Ok(refused(out.failed()))
    })
    .await
}

/// The entries of a batch answer that SQS refused: (index in the request, reason).
fn refused(failed: &[aws_sdk_sqs::types::BatchResultErrorEntry]) -> Vec<(usize, String)> {
    failed
        .iter()
        .filter_map(|f| {
            Some((
                f.id().parse().ok()?,
                format!("{} {}", f.code(), f.message().unwrap_or_default()),
            ))
        })
        .collect()
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
    let back: Vec<(&Delivery, i32)> = handles.iter().map(|d| (d, 0)).collect();
    if let Some((_, e)) = change_visibility(client, dlq_url, &back).await.first() {
        anyhow::bail!("making the dead letters visible again: {e}");
    }
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
