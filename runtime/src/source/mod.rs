//! Sources: where a queue tree's messages come from and where their outcomes go.
//!
//! Every source speaks the same small protocol, so the tree does not care whether it reads SQS,
//! a Lambda batch or the embedded Postgres queue:
//!
//! 1. [`Source::receive`] hands out at most `max` messages (the free handler capacity: that is
//!    the backpressure), each invisible to other consumers until its visibility timeout.
//! 2. [`Source::extend`] pushes that timeout out while long work is still running (heartbeat).
//! 3. [`Source::settle`] acknowledges, retries after a delay, or dead-letters each message
//!    with its reason. Nothing is acknowledged before its effects are durable.

pub mod lambda;
pub mod postgres;
pub mod sqs;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// One received message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The queue's id for the message (SQS MessageId, embedded queue row id).
    pub id: String,
    /// What the consumer needs to settle it (SQS receipt handle; the row id otherwise).
    pub receipt: String,
    pub body: String,
    /// How many times this message has been received, this time included.
    pub receive_count: u32,
    /// When the producer sent it (for queue-lag metrics).
    pub sent_at: Option<DateTime<Utc>>,
}

/// What became of one message, decided by the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its effects are durable: delete it.
    Ack,
    /// Try again later (transient failure); the reason is kept for the record.
    Retry(String),
    /// It can never succeed (poison): move it to the dead-letter queue with the reason.
    DeadLetter(String),
}

/// An outcome with the runtime's decision on timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Ack,
    Retry { delay: Duration, reason: String },
    DeadLetter { reason: String },
}

/// The result of one receive.
#[derive(Debug)]
pub enum Received {
    /// Zero or more messages; zero means "nothing right now, poll again".
    Messages(Vec<Delivery>),
    /// The source will never produce more (a Lambda batch that has been handed out).
    Exhausted,
}

#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// A short name for logs and metrics labels ("sqs", "lambda", "postgres").
    fn kind(&self) -> &'static str;

    /// Receives at most `max` messages; may wait (long poll) but returns promptly when empty.
    /// A receive is never cancelled half-way (its messages would stay invisible until their
    /// timeout), so keep its wait bounded.
    async fn receive(&self, max: usize) -> anyhow::Result<Received>;

    /// The most messages one worker batch may hold (SQS receives at most 10).
    fn max_batch(&self) -> usize {
        10
    }

    /// How long the poller pauses after an empty receive (sources without long polling).
    fn idle_wait(&self) -> Duration {
        Duration::ZERO
    }

    /// Keeps the messages invisible for `for_` from now.
    async fn extend(&self, deliveries: &[Delivery], for_: Duration) -> anyhow::Result<()>;

    /// Applies the settlements. Errors mean some settlements may not have been applied; the
    /// messages then reappear after their visibility timeout (at-least-once).
    async fn settle(&self, settled: Vec<(Delivery, Settlement)>) -> anyhow::Result<()>;

    /// The visibility timeout the source applies on receive (the heartbeat runs at half of it).
    fn visibility_timeout(&self) -> Duration;
}
