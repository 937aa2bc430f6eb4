//! Putting messages on a queue.
//!
//! The embedded queue is a Postgres table, so its producer writes inside the caller's
//! transaction: the row and its queue message commit together or not at all. SQS cannot join a
//! Postgres transaction, so its producer sends after the commit; a row whose send failed stays
//! `queued` and the stale-row sweeper re-enqueues it.

use std::collections::HashMap;

use anyhow::Context;

/// The statement that enqueues one message on the embedded queue (`$1` queue name, `$2` body).
/// Run it in the same transaction as the row it announces.
pub const PG_ENQUEUE_SQL: &str = "INSERT INTO queue_messages (queue, body) VALUES ($1, $2)";

/// Many messages in one statement (`$1` queue name, `$2` text[] of bodies).
pub const PG_ENQUEUE_MANY_SQL: &str =
    "INSERT INTO queue_messages (queue, body) SELECT $1, b FROM unnest($2::text[]) AS b";

/// Where producers put messages.
#[derive(Clone)]
pub enum Producer {
    /// The embedded Postgres queue: enqueue with [`PG_ENQUEUE_SQL`] in your transaction.
    Postgres,
    /// Amazon SQS (or a compatible server): send after your transaction commits.
    Sqs(SqsProducer),
}

impl Producer {
    /// True when the message must be written in the caller's database transaction.
    pub fn writes_in_transaction(&self) -> bool {
        matches!(self, Producer::Postgres)
    }

    /// Puts bodies on `queue` now, outside any caller transaction (maintenance re-enqueues,
    /// `datamailer enqueue`).
    pub async fn enqueue(
        &self,
        db: &crate::db::Db,
        queue: &str,
        bodies: Vec<String>,
    ) -> anyhow::Result<()> {
        if bodies.is_empty() {
            return Ok(());
        }
        match self {
            Producer::Postgres => {
                db.get()
                    .await?
                    .execute(PG_ENQUEUE_MANY_SQL, &[&queue, &bodies])
                    .await
                    .with_context(|| format!("enqueueing on {queue}"))?;
                Ok(())
            }
            Producer::Sqs(sqs) => sqs.send(queue, bodies).await,
        }
    }

    /// Sends bodies to `queue` after the caller's commit. A no-op for the embedded queue,
    /// whose messages were already written in the transaction.
    pub async fn send_after_commit(&self, queue: &str, bodies: Vec<String>) -> anyhow::Result<()> {
        match self {
            Producer::Postgres => Ok(()),
            Producer::Sqs(sqs) => sqs.send(queue, bodies).await,
        }
    }
}

/// Sends to SQS queues by queue name, with the URLs from configuration.
#[derive(Clone)]
pub struct SqsProducer {
    client: aws_sdk_sqs::Client,
    urls: HashMap<String, String>,
}

impl SqsProducer {
    pub fn new(client: aws_sdk_sqs::Client, urls: HashMap<String, String>) -> Self {
        Self { client, urls }
    }

    /// Sends in batches of ten; any entry SQS refuses is an error naming the queue.
    pub async fn send(&self, queue: &str, bodies: Vec<String>) -> anyhow::Result<()> {
        let url = self
            .urls
            .get(queue)
            .with_context(|| format!("no SQS queue URL configured for {queue}"))?;
        for chunk in bodies.chunks(10) {
            let mut req = self.client.send_message_batch().queue_url(url);
            for (i, body) in chunk.iter().enumerate() {
                req = req.entries(
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()?,
                );
            }
            let out = req
                .send()
                .await
                .with_context(|| format!("SQS SendMessageBatch to {queue}"))?;
            if let Some(failed) = out.failed().first() {
                anyhow::bail!(
                    "SQS refused a message for {queue}: {} {}",
                    failed.code(),
                    failed.message().unwrap_or_default()
                );
            }
        }
        Ok(())
    }
}
