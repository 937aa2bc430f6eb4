//! Running a queue tree over one Lambda invocation's batch.
//!
//! Clients, pools and limiters are built once per execution environment (by the caller); each
//! invocation starts a tree over its records and waits for it to drain before returning,
//! because Lambda freezes the process afterwards. Work still running at the deadline (minus a
//! safety margin) is stopped and its records are reported as failures.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsMessage;

use crate::source::lambda::{LambdaBatch, LambdaSqs};
use crate::tree::{Handler, QueueTree, TreeSpec};

/// Runs `handler` over the records and returns the ids Lambda must retry.
pub async fn run_invocation(
    queue: &str,
    handler: Arc<dyn Handler>,
    records: &[SqsMessage],
    sqs: Option<LambdaSqs>,
    time_left: Duration,
) -> anyhow::Result<Vec<String>> {
    let batch = Arc::new(LambdaBatch::new(queue, records, sqs));
    let mut spec = TreeSpec::new(queue, batch.clone(), handler);
    spec.concurrency = 1;
    spec.batch_size = records.len().max(1);
    let margin = Duration::from_millis(1500).min(time_left / 4);
    let tree = QueueTree::start(spec).await?;
    let exit = tree.wait_or_kill(time_left.saturating_sub(margin)).await;
    tracing::info!(?exit, records = records.len(), "invocation finished");
    Ok(batch.failures())
}
