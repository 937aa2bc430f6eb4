//! Running a queue tree over one Lambda invocation's batch.
//!
//! Clients, pools and limiters are built once per execution environment (by the caller); each
//! invocation starts a tree over its records and waits for it to drain before returning,
//! because Lambda freezes the process afterwards. Work still running at the deadline (minus a
//! safety margin) is stopped and its records are reported as failures.
//!
//! A paused queue ([`crate::control`]) starts no tree: every record is hidden for
//! [`LAMBDA_PAUSE_VISIBILITY`] and reported as a failure, so nothing is handled or lost and
//! the event source mapping backs off.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsMessage;

use crate::control::{QueueControl, LAMBDA_PAUSE_VISIBILITY};
use crate::source::lambda::{LambdaBatch, LambdaSqs};
use crate::source::{Received, Source};
use crate::tree::{Handler, QueueTree, TreeSpec};

/// Runs `handler` over the records and returns the ids Lambda must retry.
pub async fn run_invocation(
    queue: &str,
    handler: Arc<dyn Handler>,
    records: &[SqsMessage],
    sqs: Option<LambdaSqs>,
    control: Option<Arc<QueueControl>>,
    time_left: Duration,
) -> anyhow::Result<Vec<String>> {
    let batch = Arc::new(LambdaBatch::new(queue, records, sqs));
    if let Some(control) = &control {
        if control.is_paused(queue).await {
            return Ok(hand_back(queue, &batch).await);
        }
    }
    let mut spec = TreeSpec::new(queue, batch.clone(), handler);
    spec.concurrency = 1;
    spec.control = control;
    let margin = Duration::from_millis(1500).min(time_left / 4);
    let tree = QueueTree::start(spec).await?;
    let exit = tree.wait_or_kill(time_left.saturating_sub(margin)).await;
    tracing::info!(?exit, records = records.len(), "invocation finished");
    Ok(batch.failures())
}

/// A paused queue's batch: hide every record for a while and report them all as failures.
async fn hand_back(queue: &str, batch: &LambdaBatch) -> Vec<String> {
    if let Ok(Received::Messages(deliveries)) = batch.receive(usize::MAX).await {
        if let Err(e) = batch.extend(&deliveries, LAMBDA_PAUSE_VISIBILITY).await {
            // Still reported as failures: they come back after the queue's own timeout.
            tracing::warn!(queue, error = %e, "could not delay the records of a paused queue");
        }
        metrics::counter!("datamailer_paused_handbacks_total", "queue" => queue.to_string())
            .increment(deliveries.len() as u64);
    }
    let failures = batch.failures();
    tracing::warn!(
        queue,
        records = failures.len(),
        "queue paused: every record handed back"
    );
    failures
}
