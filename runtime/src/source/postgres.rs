//! The embedded queue: SQS semantics on a Postgres table, so the product runs with nothing
//! but Postgres.
//!
//! * Receive claims ready rows with `FOR UPDATE SKIP LOCKED`, bumps the receive count and hides
//!   them for the visibility timeout, in one statement.
//! * A row received more than `max_receives` times is dead-lettered on receive with the last
//!   error, like an SQS redrive policy.
//! * Ack deletes; retry sets the next visible time (an uncounted retry gives its receive
//!   back); dead-letter keeps the row with its reason.
//! * Every receive bumps the row's receipt; extend and settle match it, so a
//!   consumer whose visibility ran out (the row was received again since) changes nothing.

use std::time::Duration;

use async_trait::async_trait;

use super::{with_retries, Delivery, Received, SettleReport, Settlement, Source, SETTLE_ATTEMPTS};
use crate::db::Db;
use crate::events::source as events;

pub struct PostgresQueue {
    db: Db,
    queue: String,
    visibility_timeout: Duration,
    max_receives: u32,
    /// How long to sleep when the queue is empty before polling again.
    idle_poll: Duration,
    max_batch: usize,
}

impl PostgresQueue {
    pub fn new(db: Db, queue: impl Into<String>) -> Self {
        Self {
            db,
            queue: queue.into(),
            visibility_timeout: Duration::from_secs(180),
            max_receives: 5,
            idle_poll: Duration::from_millis(100),
            max_batch: DEFAULT_MAX_BATCH,
        }
    }

    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    pub fn with_visibility_timeout(mut self, t: Duration) -> Self {
        self.visibility_timeout = t;
        self
    }

    pub fn with_max_receives(mut self, n: u32) -> Self {
        self.max_receives = n.max(1);
        self
    }

    pub fn with_idle_poll(mut self, t: Duration) -> Self {
        self.idle_poll = t;
        self
    }
}

/// Messages per worker batch. Unlike SQS (10 per receive) the table has no limit; every
/// statement and commit a batch costs is shared by its messages, so larger batches are cheaper
/// per message, while 50 keeps one batch's SES sends and its visibility window small.
pub const DEFAULT_MAX_BATCH: usize = 50;

const RECEIVE_SQL: &str = "
WITH ready AS (
    SELECT id FROM queue_messages
    WHERE queue = $1 AND dead_lettered_at IS NULL AND visible_at <= now()
    ORDER BY visible_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE queue_messages q
SET receive_count = q.receive_count + 1,
    visible_at = now() + make_interval(secs => $3),
    receipt = q.receipt + 1,
    first_received_at = coalesce(q.first_received_at, now()),
    dead_lettered_at = CASE WHEN q.receive_count + 1 > $4 THEN now() END,
    dead_letter_reason = CASE WHEN q.receive_count + 1 > $4
        THEN 'exceeded ' || $4 || ' receives; last error: ' || q.last_error ELSE '' END
FROM ready
WHERE q.id = ready.id
RETURNING q.id, q.body, q.receive_count, q.enqueued_at, q.dead_lettered_at IS NOT NULL,
    q.receipt::text";

const EXTEND_SQL: &str = "
UPDATE queue_messages q SET visible_at = now() + make_interval(secs => $3)
FROM unnest($1::bigint[], $2::text[]) AS e(id, receipt)
WHERE q.id = e.id AND q.receipt = e.receipt::bigint AND q.dead_lettered_at IS NULL";

/// One round trip for the whole batch: the three changes ride in one statement, each row
/// matched by its receipt. Returns the ids it settled.
const SETTLE_SQL: &str = "
WITH acked AS (
        DELETE FROM queue_messages q
        USING unnest($1::bigint[], $2::text[]) AS a(id, receipt)
        WHERE q.id = a.id AND q.receipt = a.receipt::bigint
        RETURNING q.id),
     retried AS (
        UPDATE queue_messages q
        SET visible_at = now() + make_interval(secs => r.delay), last_error = r.reason,
            receive_count = CASE WHEN r.counted THEN q.receive_count
                                 ELSE greatest(q.receive_count - 1, 0) END
        FROM unnest($3::bigint[], $4::text[], $5::float8[], $6::text[], $7::bool[])
            AS r(id, receipt, delay, reason, counted)
        WHERE q.id = r.id AND q.receipt = r.receipt::bigint
        RETURNING q.id),
     dead AS (
        UPDATE queue_messages q
        SET dead_lettered_at = now(), dead_letter_reason = d.reason, last_error = d.reason
        FROM unnest($8::bigint[], $9::text[], $10::text[]) AS d(id, receipt, reason)
        WHERE q.id = d.id AND q.receipt = d.receipt::bigint
        RETURNING q.id)
SELECT id FROM acked UNION ALL SELECT id FROM retried UNION ALL SELECT id FROM dead";

#[async_trait]
impl Source for PostgresQueue {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn receive(&self, max: usize) -> anyhow::Result<Received> {
        if max == 0 {
            return Ok(Received::Messages(Vec::new()));
        }
        let conn = self.db.get().await?;
        let receive = conn.prepare_cached(RECEIVE_SQL).await?;
        let rows = conn
            .query(
                &receive,
                &[
                    &self.queue,
                    &(max as i64),
                    &self.visibility_timeout.as_secs_f64(),
                    &(self.max_receives as i32),
                ],
            )
            .await?;
        drop(conn);
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let dead: bool = row.get(4);
            if dead {
                events::dead_lettered_on_receive(&self.queue, row.get::<_, i64>(0));
                continue;
            }
            let id: i64 = row.get(0);
            out.push(Delivery {
                id: id.to_string(),
                receipt: row.get(5),
                body: row.get(1),
                receive_count: row.get::<_, i32>(2) as u32,
                sent_at: Some(row.get(3)),
            });
        }
        Ok(Received::Messages(out))
    }

    async fn extend(&self, deliveries: &[Delivery], for_: Duration) -> anyhow::Result<()> {
        let (ids, receipts) = keys(deliveries.iter());
        let conn = self.db.get().await?;
        let extend = conn.prepare_cached(EXTEND_SQL).await?;
        conn.execute(&extend, &[&ids, &receipts, &for_.as_secs_f64()])
            .await?;
        Ok(())
    }

    async fn settle(&self, settled: Vec<(Delivery, Settlement)>) -> SettleReport {
        let mut ack = (Vec::new(), Vec::new());
        let mut retry = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut dead = (Vec::new(), Vec::new(), Vec::new());
        let mut report = SettleReport::default();
        let mut expected = Vec::with_capacity(settled.len());
        for (d, s) in &settled {
            let Ok(id) = d.id.parse::<i64>() else {
                report.fail(d, s.action(), "not an embedded queue message id");
                continue;
            };
            expected.push((id, d, s));
            match s {
                Settlement::Ack => {
                    ack.0.push(id);
                    ack.1.push(d.receipt.clone());
                }
                Settlement::Retry {
                    delay,
                    reason,
                    counted,
                } => {
                    retry.0.push(id);
                    retry.1.push(d.receipt.clone());
                    retry.2.push(delay.as_secs_f64());
                    retry.3.push(reason.clone());
                    retry.4.push(*counted);
                }
                Settlement::DeadLetter { reason } => {
                    dead.0.push(id);
                    dead.1.push(d.receipt.clone());
                    dead.2.push(reason.clone());
                }
            }
        }
        if expected.is_empty() {
            return report;
        }
        let result = with_retries(SETTLE_ATTEMPTS, || async {
            let conn = self.db.get().await?;
            let settle = conn.prepare_cached(SETTLE_SQL).await?;
            let rows = conn
                .query(
                    &settle,
                    &[
                        &ack.0, &ack.1, &retry.0, &retry.1, &retry.2, &retry.3, &retry.4, &dead.0,
                        &dead.1, &dead.2,
                    ],
                )
                .await?;
            anyhow::Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
        })
        .await;
        match result {
            Ok(done) => {
                let done: std::collections::HashSet<i64> = done.into_iter().collect();
                for (id, d, s) in expected {
                    if !done.contains(&id) {
                        report.fail(
                            d,
                            s.action(),
                            "stale receipt: the message was received again after its visibility timeout",
                        );
                    }
                }
            }
            Err(e) => {
                for (_, d, s) in expected {
                    report.fail(d, s.action(), &e);
                }
            }
        }
        report
    }

    fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }

    fn idle_wait(&self) -> Duration {
        self.idle_poll
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }
}

fn keys<'a>(ds: impl Iterator<Item = &'a Delivery>) -> (Vec<i64>, Vec<String>) {
    ds.filter_map(|d| Some((d.id.parse::<i64>().ok()?, d.receipt.clone())))
        .unzip()
}

/// One dead-lettered message, for `datamailer dlq list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub body: String,
    pub reason: String,
    pub receive_count: u32,
    pub dead_lettered_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Dead-letter queue operations on the embedded queue.
pub async fn list_dead_letters(db: &Db, queue: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let conn = db.get().await?;
    let rows = conn
        .query(
            "SELECT id, body, dead_letter_reason, receive_count, dead_lettered_at FROM queue_messages
             WHERE queue = $1 AND dead_lettered_at IS NOT NULL ORDER BY dead_lettered_at, id",
            &[&queue],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DeadLetter {
            id: r.get::<_, i64>(0).to_string(),
            body: r.get(1),
            reason: r.get(2),
            receive_count: r.get::<_, i32>(3) as u32,
            dead_lettered_at: r.get(4),
        })
        .collect())
}

/// Puts every dead-lettered message of `queue` back, as new (receive count 0). Returns how many.
pub async fn redrive(db: &Db, queue: &str) -> anyhow::Result<u64> {
    let conn = db.get().await?;
    Ok(conn
        .execute(
            "UPDATE queue_messages SET dead_lettered_at = NULL, dead_letter_reason = '', receive_count = 0,
                    visible_at = now(), first_received_at = NULL
             WHERE queue = $1 AND dead_lettered_at IS NOT NULL",
            &[&queue],
        )
        .await?)
}
