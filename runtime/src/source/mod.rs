//! Sources: where a queue tree's messages come from and where their outcomes go.
//!
//! Every source speaks the same small protocol, so the tree does not care whether it reads SQS,
//! a Lambda batch, the embedded Postgres queue or the maintenance clock:
//!
//! 1. [`Source::receive`] hands out at most `max` messages (the free handler capacity: that is
//!    the backpressure), each invisible to other consumers until its visibility timeout.
//! 2. [`Source::extend`] pushes that timeout out while long work is still running (heartbeat).
//! 3. [`Source::settle`] acknowledges, retries after a delay, or dead-letters each message
//!    with its reason. Nothing is acknowledged before its effects are durable. Settling never
//!    fails as a whole: each message that could not be settled is retried by the source and
//!    then reported on its own ([`SettleReport`]), so one refused delete never drops the
//!    acknowledgements after it.
//!
//! A retry is either **counted** (the message failed: it spends one of its receives and is
//! dead-lettered after the last) or **uncounted** (the message is fine but must wait: another
//! holder's lease, a stopped invocation, a dependency that is down). An uncounted retry never
//! spends a message's last receive: the embedded queue gives the receive back; SQS cannot, so
//! a message near its redrive limit is put back as a fresh copy ([`sqs`]).

pub mod lambda;
pub mod outbox;
pub mod postgres;
pub mod sqs;
pub mod tick;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// One received message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The queue's id for the message (SQS MessageId, embedded queue row id).
    pub id: String,
    /// What the consumer needs to settle it: the SQS receipt handle, or the embedded queue's
    /// per-receive token. A stale receipt (the message was received again since) settles
    /// nothing, so only the current holder can settle.
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
    /// It failed this time (a transient error of its own); counted: dead-lettered with the
    /// reason once its receives are spent.
    Retry(String),
    /// Not its fault and not a failure: come back after `delay` (another delivery holds the
    /// row until its lease ends; the handler stopped before getting to it). Never
    /// dead-lettered, never counted.
    Defer { reason: String, delay: Duration },
    /// A dependency is down (SES paused or failing, Postgres unreachable). Feeds the tree's
    /// circuit breaker; once the breaker opens, such messages come back uncounted.
    Unavailable(String),
    /// It can never succeed (poison): move it to the dead-letter queue with the reason.
    DeadLetter(String),
}

/// An outcome with the runtime's decision on timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Ack,
    Retry {
        delay: Duration,
        reason: String,
        /// Whether this retry spends one of the message's receives.
        counted: bool,
    },
    DeadLetter {
        reason: String,
    },
}

impl Settlement {
    /// The name of the action, for logs and the `action` label of settle failures.
    pub fn action(&self) -> &'static str {
        match self {
            Settlement::Ack => "ack",
            Settlement::Retry { counted: true, .. } => "retry",
            Settlement::Retry { counted: false, .. } => "defer",
            Settlement::DeadLetter { .. } => "dead_letter",
        }
    }
}

/// The result of one receive.
#[derive(Debug)]
pub enum Received {
    /// Zero or more messages; zero means "nothing right now, poll again".
    Messages(Vec<Delivery>),
    /// The source will never produce more (a Lambda batch that has been handed out).
    Exhausted,
}

/// A message the source could not settle (after its own retries). It is not lost: it comes
/// back after its visibility timeout, and its handler is idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleFailure {
    pub id: String,
    pub action: &'static str,
    pub error: String,
}

/// What settling a batch did not manage.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SettleReport {
    pub failures: Vec<SettleFailure>,
}

impl SettleReport {
    pub fn fail(&mut self, d: &Delivery, action: &'static str, error: impl std::fmt::Display) {
        self.failures.push(SettleFailure {
            id: d.id.clone(),
            action,
            error: format!("{error:#}"),
        });
    }

    /// Every message of `settled` failed the same way (e.g. the database is unreachable).
    pub fn all_failed(settled: &[(Delivery, Settlement)], error: impl std::fmt::Display) -> Self {
        let error = format!("{error:#}");
        SettleReport {
            failures: settled
                .iter()
                .map(|(d, s)| SettleFailure {
                    id: d.id.clone(),
                    action: s.action(),
                    error: error.clone(),
                })
                .collect(),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// A short name for logs and metrics labels ("sqs", "lambda", "postgres", "tick").
    fn kind(&self) -> &'static str;

    /// Receives at most `max` messages; may wait (long poll) but returns promptly when empty.
    /// A receive is never cancelled half-way (its messages would stay invisible until their
    /// timeout), so keep its wait bounded.
    async fn receive(&self, max: usize) -> anyhow::Result<Received>;

    /// The most messages one worker batch may hold (SQS receives at most 10).
    fn max_batch(&self) -> usize {
        10
    }

    /// True once the source will never produce more (a Lambda batch handed out), so the tree
    /// can finish without asking again.
    fn is_exhausted(&self) -> bool {
        false
    }

    /// How long the poller pauses after an empty receive (sources without long polling).
    fn idle_wait(&self) -> Duration {
        Duration::ZERO
    }

    /// Keeps the messages invisible for `for_` from now.
    async fn extend(&self, deliveries: &[Delivery], for_: Duration) -> anyhow::Result<()>;

    /// Applies the settlements, retrying what fails; reports each message it could not
    /// settle. Those reappear after their visibility timeout (at-least-once).
    async fn settle(&self, settled: Vec<(Delivery, Settlement)>) -> SettleReport;

    /// The visibility timeout the source applies on receive (the heartbeat runs at half of it).
    fn visibility_timeout(&self) -> Duration;
}

/// Runs `op` up to `attempts` times with a short growing pause; the last error if all fail.
/// Sources use it for settle calls, which must not give up on the first refused request.
pub(crate) async fn with_retries<T, F, Fut>(attempts: u32, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut last = None;
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 * 4u64.pow(attempt - 1))).await;
        }
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// How many times a source tries one settle call before reporting its messages.
pub(crate) const SETTLE_ATTEMPTS: u32 = 3;
