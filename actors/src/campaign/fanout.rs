//! Fan-out of one campaign (a `campaign-fanout` message, or maintenance): snapshot its
//! recipients once, then hand every pending recipient without a live batch to the queue.
//!
//! Batches are derived from recipient rows, never only from messages in flight: a row is
//! stamped `batched_at` in the statement that puts it in a batch, and a pending row whose batch
//! is older than the horizon is batched again. So a lost message, a crash between commit and
//! SQS, or a process killed mid-fan-out loses no recipient; a duplicate batch is harmless
//! because sending starts with a claim (`pending → sending`) that only one delivery wins.

use std::time::Duration;

use anyhow::Context;
use datamailer_core::contracts::CampaignEmailV1;
use datamailer_core::queue::QueueName;
use datamailer_runtime::db::Db;
use datamailer_runtime::producer::{Producer, PG_ENQUEUE_MANY_SQL};

/// What a fan-out did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FanoutReport {
    /// Recipient rows the snapshot created (0 when it had run before).
    pub snapshotted: u64,
    pub batches: usize,
    pub recipients_batched: usize,
    /// The campaign had nothing left to send and is now `sent`.
    pub finished: bool,
}

/// The snapshot (facts §3.4): the rules live in the `campaign_candidates` SQL function. New
/// rows only (`ON CONFLICT DO NOTHING`: re-running changes nothing), counters moved by what
/// this statement inserted, and the campaign moved on to `sending`.
const SNAPSHOT_SQL: &str = "
WITH inserted AS (
    INSERT INTO campaign_recipients (campaign_id, contact_id, email, status, skip_reason)
    SELECT $1, k.contact_id, k.email,
           CASE WHEN k.skip_reason = '' THEN 'pending' ELSE 'skipped' END, k.skip_reason
      FROM campaign_candidates($1) k
     ORDER BY k.normalized_email, k.contact_id
    ON CONFLICT (campaign_id, contact_id) DO NOTHING
    RETURNING status
)
UPDATE campaigns
   SET recipient_count = recipient_count + (SELECT count(*) FROM inserted WHERE status = 'pending'),
       skipped_count = skipped_count + (SELECT count(*) FROM inserted WHERE status = 'skipped'),
       status = 'sending', snapshot_finished_at = clock_timestamp(),
       sending_started_at = coalesce(sending_started_at, now()), updated_at = now()
 WHERE id = $1 AND status = 'snapshotting'
RETURNING (SELECT count(*) FROM inserted)";

/// Pending rows with no live batch, and `sending` rows whose holder is gone (their lease and
/// the ledger's delay have passed: the batch that gets them reconciles before sending),
/// stamped as batched, in id order.
const BATCH_ROWS_SQL: &str = "
WITH due AS (
    SELECT id FROM campaign_recipients
     WHERE campaign_id = $1
       AND (status = 'pending' AND (batched_at IS NULL OR batched_at < now() - make_interval(secs => $2))
            OR status = 'sending' AND lease_expires_at < now() - make_interval(secs => $3)
               AND (batched_at IS NULL OR batched_at < now() - make_interval(secs => $2)))
     ORDER BY id
     FOR UPDATE SKIP LOCKED
)
UPDATE campaign_recipients r SET batched_at = now()
  FROM due WHERE r.id = due.id
RETURNING r.id";

/// `sending` with nothing pending or in flight: `sent` (one campaign, or every one for NULL).
pub const FINISH_SQL: &str = "
UPDATE campaigns c SET status = 'sent', sent_at = now(), updated_at = now()
 WHERE ($1::bigint IS NULL OR c.id = $1) AND c.status = 'sending'
   AND NOT EXISTS (SELECT 1 FROM campaign_recipients r
                    WHERE r.campaign_id = c.id AND r.status IN ('pending', 'sending'))";

/// A snapshot at least this large refreshes `campaign_recipients`' statistics.
const ANALYZE_AFTER: u64 = 1000;

pub async fn fan_out(
    db: &Db,
    producer: &Producer,
    campaign_id: i64,
    batch_size: usize,
    horizon: Duration,
    ledger_delay: Duration,
) -> anyhow::Result<Option<FanoutReport>> {
    let mut report = FanoutReport::default();
    let mut conn = db.get().await.context("getting a database connection")?;

    // queued → snapshotting, visible on its own: a crash mid-snapshot leaves the campaign
    // `snapshotting`, and the next fan-out (redelivery or maintenance) runs it again.
    let row = conn
        .query_opt(
            "UPDATE campaigns
                SET status = CASE WHEN status = 'queued' THEN 'snapshotting' ELSE status END,
                    snapshot_started_at = CASE WHEN status = 'queued' THEN now() ELSE snapshot_started_at END,
                    updated_at = CASE WHEN status = 'queued' THEN now() ELSE updated_at END
              WHERE id = $1
          RETURNING status, paused_at IS NOT NULL",
            &[&campaign_id],
        )
        .await
        .context("starting the campaign's snapshot")?;
    let Some(row) = row else {
        return Ok(None);
    };
    let status: String = row.get(0);
    let paused: bool = row.get(1);

    if status == "snapshotting" {
        let tx = conn.transaction().await?;
        // One snapshot at a time per campaign: a second fan-out waits on the campaign's row,
        // then finds it `sending` (SNAPSHOT_SQL changes nothing unless `snapshotting`).
        tx.execute(
            "SELECT 1 FROM campaigns WHERE id = $1 FOR UPDATE",
            &[&campaign_id],
        )
        .await?;
        let inserted = tx
            .query_opt(SNAPSHOT_SQL, &[&campaign_id])
            .await
            .context("snapshotting the campaign's recipients")?;
        tx.commit().await?;
        report.snapshotted = inserted.map_or(0, |r| r.get::<_, i64>(0) as u64);
        if report.snapshotted >= ANALYZE_AFTER {
            // Fresh statistics before the sends: with the table's old ones (autovacuum comes a
            // minute later at best) the planner takes the new rows for a handful, and the
            // claim, record and finish statements slow down several times over (measured:
            // 4,300 against 7,200 emails/s). The function runs as the table's owner
            // (migration 0019): the workers' role may not ANALYZE itself.
            conn.execute("SELECT analyze_campaign_recipients()", &[])
                .await
                .context("analyzing campaign_recipients after the snapshot")?;
        }
    } else if status != "sending" {
        // draft, cancelled, sent, failed: nothing to fan out.
        return Ok(Some(report));
    }
    if paused {
        // Resume fans out again.
        return Ok(Some(report));
    }

    let tx = conn.transaction().await?;
    let ids: Vec<i64> = tx
        .query(
            BATCH_ROWS_SQL,
            &[
                &campaign_id,
                &horizon.as_secs_f64(),
                &ledger_delay.as_secs_f64(),
            ],
        )
        .await
        .context("batching pending recipients")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut ids = ids;
    ids.sort_unstable();
    let chunks: Vec<Vec<i64>> = ids.chunks(batch_size.max(1)).map(<[i64]>::to_vec).collect();
    let mut bodies = Vec::with_capacity(chunks.len());
    if !chunks.is_empty() {
        let first: i32 = tx
            .query_one(
                "UPDATE campaigns SET batch_count = batch_count + $2 WHERE id = $1
                 RETURNING batch_count - $2",
                &[&campaign_id, &(chunks.len() as i32)],
            )
            .await?
            .get(0);
        for (n, chunk) in chunks.into_iter().enumerate() {
            let batch_id = CampaignEmailV1::batch_id(campaign_id, first as usize + n + 1);
            bodies.push(
                CampaignEmailV1 {
                    campaign_id,
                    idempotency_key: Some(batch_id.clone()),
                    batch_id,
                    campaign_recipient_ids: chunk,
                    metadata: None,
                }
                .to_json(),
            );
        }
    }
    let queue = QueueName::CampaignEmail.as_str();
    if producer.writes_in_transaction() && !bodies.is_empty() {
        tx.execute(PG_ENQUEUE_MANY_SQL, &[&queue, &bodies])
            .await
            .context("enqueueing campaign batches")?;
    }
    let finished = tx.execute(FINISH_SQL, &[&Some(campaign_id)]).await? > 0;
    tx.commit().await?;
    report.batches = bodies.len();
    report.recipients_batched = ids.len();
    report.finished = finished;
    // After the commit: should this fail, the rows' `batched_at` ages past the horizon and
    // maintenance batches them again.
    producer
        .send_after_commit(queue, bodies)
        .await
        .context("sending campaign batches to the queue")?;
    Ok(Some(report))
}
