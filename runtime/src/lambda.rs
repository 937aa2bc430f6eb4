//! Running a queue tree over one Lambda invocation's batch.
//!
//! Clients, pools, limiters and the circuit breaker are built once per execution environment
//! (by the caller); each invocation starts a tree over its records and waits for it to drain
//! before returning, because Lambda freezes the process afterwards.
//!
//! Deadlines: the invocation has `time_left`. At `time_left − stop_margin` (the soft
//! deadline) handlers start no new send and release what they claimed, answering `Defer`;
//! `stop_margin` is sized to let an SES call already in flight finish and its result be
//! recorded (SES timeout + a few seconds). At `time_left − HARD_MARGIN` whatever still runs
//! is stopped and its records are reported as failures.
//!
//! A paused queue ([`crate::control`]) or an open circuit breaker starts no tree: every record
//! is handed back uncounted (it comes back after the pause or cooldown), so nothing is handled,
//! lost or walked towards the DLQ.

use std::sync::Arc;
use std::time::Duration;

use crate::control::{QueueControl, LAMBDA_PAUSE_VISIBILITY};
use crate::events::lambda as events;
use crate::source::lambda::LambdaBatch;
use crate::source::sqs::SqsTarget;
use crate::source::Delivery;
use crate::tree::{CircuitBreaker, Handler, QueueTree, TreeExit, TreeSpec};

/// Left at the end of an invocation for answering Lambda and flushing metrics.
pub const HARD_MARGIN: Duration = Duration::from_secs(1);

/// One invocation's work.
pub struct Invocation {
    pub queue: String,
    pub handler: Arc<dyn Handler>,
    pub records: Vec<Delivery>,
    /// The queue the records came from (retries' delays, dead letters, copies); `None` for a
    /// non-SQS event such as the maintenance schedule.
    pub sqs: Option<SqsTarget>,
    pub control: Option<Arc<QueueControl>>,
    pub breaker: Option<Arc<CircuitBreaker>>,
    pub time_left: Duration,
    /// How long before the deadline handlers stop starting new work.
    pub stop_margin: Duration,
    pub max_receives: u32,
}

/// What an invocation did.
#[derive(Debug)]
pub struct InvocationResult {
    /// Record ids Lambda must retry (`batchItemFailures`), in input order.
    pub failures: Vec<String>,
    pub exit: TreeExit,
}

/// Runs the handler over the records.
pub async fn run_invocation(inv: Invocation) -> anyhow::Result<InvocationResult> {
    let records = inv.records.len();
    let batch = Arc::new(LambdaBatch::new(inv.records, inv.sqs));
    if let Some(control) = &inv.control {
        if control.is_paused(&inv.queue).await {
            return Ok(
                hand_back(&inv.queue, &batch, LAMBDA_PAUSE_VISIBILITY, "queue paused").await,
            );
        }
    }
    if let Some(breaker) = &inv.breaker {
        let left = breaker.blocking_for();
        if !left.is_zero() {
            return Ok(hand_back(
                &inv.queue,
                &batch,
                left,
                "a dependency is down (circuit breaker open)",
            )
            .await);
        }
    }
    let hard = inv.time_left.saturating_sub(HARD_MARGIN);
    let soft = inv
        .time_left
        .saturating_sub(inv.stop_margin.min(inv.time_left / 2));
    let mut spec = TreeSpec::new(inv.queue.clone(), batch.clone(), inv.handler);
    spec.concurrency = 1;
    spec.control = inv.control;
    spec.breaker = inv.breaker;
    spec.max_receives = inv.max_receives;
    spec.deadline = Some(tokio::time::Instant::now() + soft);
    let tree = QueueTree::start(spec).await?;
    let exit = tree.wait_or_kill(hard).await;
    let failures = batch.failures();
    events::invocation_finished(&inv.queue, records, failures.len(), &exit);
    Ok(InvocationResult { failures, exit })
}

async fn hand_back(
    queue: &str,
    batch: &LambdaBatch,
    delay: Duration,
    why: &str,
) -> InvocationResult {
    let n = batch.hand_back_unreceived(delay, why).await;
    events::handed_back(queue, n, why);
    InvocationResult {
        failures: batch.failures(),
        exit: TreeExit::Drained,
    }
}
