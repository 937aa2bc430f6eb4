//! Recovery of transactional rows with no operator, on the embedded queue (the SQS and Lambda
//! paths are in the workspace's tests/aws_recovery.rs):
//!
//! * a row leased by a delivery that died is waited for (never dead-lettered) and sent once its
//!   lease ends;
//! * a row left `sending` with no message at all is brought back by maintenance;
//! * a holder whose lease was taken over records nothing (fencing);
//! * a batch told to stop releases the rows it did not send;
//! * a paused SES account pauses the tree instead of failing rows;
//! * a message the runtime gives up on marks its row failed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use datamailer_actors::transactional::RequeueStaleRows;
use datamailer_actors::{TransactionalHandler, TransactionalSettings};
use datamailer_runtime::backoff::Backoff;
use datamailer_runtime::mailer::capture::CaptureMailer;
use datamailer_runtime::mailer::{
    Mailer, OutgoingEmail, SendError, SendLimiter, SendReceipt, Sender,
};
use datamailer_runtime::maintenance::{Maintainer, PassMode};
use datamailer_runtime::producer::{Producer, PG_ENQUEUE_MANY_SQL};
use datamailer_runtime::source::postgres::{list_dead_letters, PostgresQueue};
use datamailer_runtime::{Handler, HandlerContext, Outcome, QueueTree, TreeSpec};
use serde_json::json;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

const QUEUE: &str = "transactional-email";

async fn enqueue(f: &Fixture, body: &str) {
    f.db.get()
        .await
        .unwrap()
        .execute(PG_ENQUEUE_MANY_SQL, &[&QUEUE, &vec![body.to_string()]])
        .await
        .unwrap();
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// The transactional tree on the embedded queue, with fast retries and only two receives, so
/// a message that was wrongly counted would reach the DLQ within a second.
fn tree_spec(f: &Fixture, handler: Arc<dyn Handler>) -> TreeSpec {
    let source = PostgresQueue::new(f.db.clone(), QUEUE)
        .with_visibility_timeout(Duration::from_secs(5))
        .with_idle_poll(Duration::from_millis(20))
        .with_max_receives(2);
    let mut spec = TreeSpec::new(QUEUE, Arc::new(source), handler);
    spec.max_receives = 2;
    spec.backoff = Backoff::exponential(Duration::from_millis(50), Duration::from_millis(100));
    spec
}

async fn status(f: &Fixture, id: i64) -> String {
    f.row(id).await.get("status")
}

#[tokio::test]
async fn a_row_leased_by_a_dead_delivery_is_waited_for_then_sent_never_dead_lettered() {
    let Some(f) = fixture().await else { return };
    let (id, body) = f.queued("leased@example.com", json!({})).await;
    // A delivery claimed the row and died: `sending`, its lease ends in 2 s.
    sqlx::query("UPDATE transactional_messages SET status = 'sending', send_attempts = send_attempts + 1, lease_expires_at = now() + interval '2 seconds' WHERE id = $1")
        .bind(id)
        .execute(f.pool())
        .await
        .unwrap();
    enqueue(&f, &body).await;
    let tree = QueueTree::start(tree_spec(&f, Arc::new(f.capture_handler())))
        .await
        .unwrap();
    eventually("the row is sent after the lease", async || {
        status(&f, id).await == "sent"
    })
    .await;
    tree.shutdown(Duration::from_secs(5)).await;
    assert!(list_dead_letters(&f.db, QUEUE).await.unwrap().is_empty());
    assert_eq!(f.captured().await.len(), 1, "sent exactly once");
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_row_left_sending_with_no_message_is_brought_back_by_maintenance() {
    let Some(f) = fixture().await else { return };
    let (id, _) = f.queued("orphan@example.com", json!({})).await;
    // Its worker died and its message is gone (acknowledged by a duplicate, or expired).
    sqlx::query("UPDATE transactional_messages SET status = 'sending', send_attempts = send_attempts + 1, lease_expires_at = now() - interval '1 second', updated_at = now() - interval '10 minutes' WHERE id = $1")
        .bind(id)
        .execute(f.pool())
        .await
        .unwrap();
    let maintainer = Maintainer::new(
        f.db.clone(),
        vec![Arc::new(RequeueStaleRows {
            db: f.db.clone(),
            producer: Producer::Postgres,
            ledger_delay: Duration::ZERO,
            older_than: Duration::from_secs(300),
            limit: 100,
        })],
    );
    let report = maintainer
        .run_pass(&HandlerContext::unbounded(1), PassMode::Due)
        .await
        .unwrap();
    assert!(report.failures().is_empty(), "{report:?}");
    let tree = QueueTree::start(tree_spec(&f, Arc::new(f.capture_handler())))
        .await
        .unwrap();
    eventually("the orphan is sent", async || {
        status(&f, id).await == "sent"
    })
    .await;
    tree.shutdown(Duration::from_secs(5)).await;
    assert_eq!(f.captured().await.len(), 1);
    f.test_db.drop_db().await;
}

/// SES stand-in that holds every send until released.
struct GatedMailer {
    gate: tokio::sync::Semaphore,
    started: tokio::sync::Notify,
}

#[async_trait]
impl Mailer for GatedMailer {
    fn kind(&self) -> &'static str {
        "gated"
    }
    async fn send(&self, _: &OutgoingEmail) -> Result<SendReceipt, SendError> {
        self.started.notify_one();
        let _permit = self.gate.acquire().await.unwrap();
        Ok(SendReceipt {
            message_id: "ses-stale".into(),
        })
    }
}

#[tokio::test]
async fn a_holder_whose_lease_was_taken_over_records_nothing() {
    let Some(f) = fixture().await else { return };
    let (id, body) = f.queued("fenced@example.com", json!({})).await;
    let mailer = Arc::new(GatedMailer {
        gate: tokio::sync::Semaphore::new(0),
        started: tokio::sync::Notify::new(),
    });
    let handler = TransactionalHandler::new(
        f.db.clone(),
        Sender::new(mailer.clone(), SendLimiter::unlimited()),
        TransactionalSettings::default(),
    );
    let slow = tokio::spawn(async move { handler.handle(&ctx(), &[delivery(&body)]).await });
    mailer.started.notified().await;
    // While the first holder is stuck in SES, its lease is taken over by another delivery.
    sqlx::query("UPDATE transactional_messages SET send_attempts = send_attempts + 1, lease_expires_at = now() + interval '15 minutes' WHERE id = $1")
        .bind(id)
        .execute(f.pool())
        .await
        .unwrap();
    let token_now: i32 =
        sqlx::query_scalar("SELECT send_attempts FROM transactional_messages WHERE id = $1")
            .bind(id)
            .fetch_one(f.pool())
            .await
            .unwrap();
    mailer.gate.add_permits(1);
    slow.await.unwrap();
    let row = f.row(id).await;
    assert_eq!(
        row.get::<String, _>("status"),
        "sending",
        "the stale holder overwrote the row"
    );
    let token_after: i32 =
        sqlx::query_scalar("SELECT send_attempts FROM transactional_messages WHERE id = $1")
            .bind(id)
            .fetch_one(f.pool())
            .await
            .unwrap();
    assert_eq!(token_after, token_now);
    assert!(
        f.events(id).await.is_empty(),
        "the stale holder wrote an event"
    );
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_batch_told_to_stop_releases_the_rows_it_did_not_send() {
    let Some(f) = fixture().await else { return };
    let (a, body_a) = f.queued("stop-a@example.com", json!({})).await;
    let (b, body_b) = f.queued("stop-b@example.com", json!({})).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let stopped = HandlerContext::new(cancel, None, 5);
    let outcomes = f
        .capture_handler()
        .handle(&stopped, &[delivery(&body_a), delivery(&body_b)])
        .await;
    for o in &outcomes {
        assert!(
            matches!(o, Outcome::Defer { delay, .. } if delay.is_zero()),
            "{outcomes:?}"
        );
    }
    for id in [a, b] {
        let row = f.row(id).await;
        assert_eq!(row.get::<String, _>("status"), "queued", "left leased");
        let lease: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT lease_expires_at FROM transactional_messages WHERE id = $1")
                .bind(id)
                .fetch_one(f.pool())
                .await
                .unwrap();
        assert_eq!(lease, None);
    }
    assert!(
        f.captured().await.is_empty(),
        "sent after being told to stop"
    );
    // The next delivery sends them at once (no lease to wait for).
    let outcomes = f
        .capture_handler()
        .handle(&ctx(), &[delivery(&body_a), delivery(&body_b)])
        .await;
    assert_eq!(outcomes, vec![Outcome::Ack, Outcome::Ack]);
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_paused_ses_account_pauses_the_tree_instead_of_failing_rows() {
    let Some(f) = fixture().await else { return };
    let (id, body) = f.queued("paused@example.com", json!({})).await;
    let mailer = ScriptedMailer::answering(vec![Err(SendError::Paused {
        code: "SendingPausedException".into(),
        message: "sending is paused for this account".into(),
    })]);
    let outcomes = f
        .scripted_handler(mailer)
        .handle(&ctx(), &[delivery(&body)])
        .await;
    assert!(
        matches!(&outcomes[0], Outcome::Unavailable(why) if why.contains("SendingPaused")),
        "{outcomes:?}"
    );
    assert_eq!(status(&f, id).await, "queued");
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_message_the_runtime_gives_up_on_marks_its_row_failed() {
    let Some(f) = fixture().await else { return };
    let (id, body) = f.queued("given-up@example.com", json!({})).await;
    let (sent, sent_body) = f.queued("already@example.com", json!({})).await;
    sqlx::query("UPDATE transactional_messages SET status = 'sent' WHERE id = $1")
        .bind(sent)
        .execute(f.pool())
        .await
        .unwrap();
    let handler = TransactionalHandler::new(
        f.db.clone(),
        Sender::new(
            Arc::new(CaptureMailer::new(f.db.clone())),
            SendLimiter::unlimited(),
        ),
        TransactionalSettings::default(),
    );
    handler
        .gave_up(
            &ctx(),
            &[
                (delivery(&body), "gave up after 5 receives: SES 503".into()),
                (
                    delivery(&sent_body),
                    "gave up after 5 receives: late".into(),
                ),
            ],
        )
        .await;
    let row = f.row(id).await;
    assert_eq!(row.get::<String, _>("status"), "failed");
    assert!(row.get::<String, _>("last_error").contains("SES 503"));
    let events = f.events(id).await;
    assert_eq!(events[0].0, "failed");
    assert_eq!(events[0].1["reason"], "retries_exhausted");
    assert_eq!(
        status(&f, sent).await,
        "sent",
        "a finished row is left alone"
    );
    f.test_db.drop_db().await;
}
