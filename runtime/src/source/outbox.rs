//! A Postgres outbox table as a source: rows that are due (`next_attempt_at <= now()`) are
//! received like queue messages, so dispatching client webhooks or working import jobs runs as
//! a supervised tree with the runtime's retries, deadlines and dead letters.
//!
//! The table follows a convention: `id bigint`, `status` (its pending, optional in-flight,
//! done and failed values), `attempt_count`, `next_attempt_at`, `receipt bigint`,
//! `last_error`. Then:
//!
//! * **receive** claims due rows with `FOR UPDATE SKIP LOCKED` (two dispatchers never take the
//!   same row), counts the attempt, bumps the receipt and pushes `next_attempt_at` out by the
//!   visibility timeout, so a dispatcher that dies gives the row back by itself;
//! * **ack** marks it done; **retry** sets the next attempt and the reason (an uncounted
//!   retry gives the attempt back and keeps the last real error); **dead-letter** marks it
//!   failed with the reason — the table is its own DLQ;
//! * every settle matches the receipt, so a dispatcher whose visibility ran out changes nothing.
//!
//! With `drain` set, the first empty receive exhausts the source, so a tree over it ends once
//! nothing is due (the scheduled maintenance pass runs it so).

use std::time::Duration;

use async_trait::async_trait;

use super::{with_retries, Delivery, Received, SettleReport, Settlement, Source, SETTLE_ATTEMPTS};
use crate::db::Db;

/// How one outbox table is worked. All names are the code's own constants (never input).
#[derive(Debug, Clone)]
pub struct OutboxTable {
    pub table: &'static str,
    /// The message body: an SQL expression over the row `t` (e.g. `t.payload::text`).
    pub body: &'static str,
    /// The statuses a row can be received in (`'pending'`, or `'pending', 'processing'`).
    pub receivable: &'static [&'static str],
    /// Set on receive, if the table shows work in progress.
    pub in_flight_status: Option<&'static str>,
    pub done_status: &'static str,
    /// Stamped when done, if the table has such a column.
    pub done_at: Option<&'static str>,
    pub failed_status: &'static str,
}

pub struct OutboxSource {
    db: Db,
    table: OutboxTable,
    visibility: Duration,
    max_batch: usize,
    idle_poll: Duration,
    drain: bool,
    drained: std::sync::atomic::AtomicBool,
    sql: Sql,
}

struct Sql {
    receive: String,
    settle: String,
}

fn list(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl OutboxSource {
    pub fn new(db: Db, table: OutboxTable) -> Self {
        let receive = format!(
            "WITH due AS (
                SELECT id FROM {t} WHERE status IN ({receivable}) AND next_attempt_at <= now()
                ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
            )
            UPDATE {t} t SET attempt_count = t.attempt_count + 1, receipt = t.receipt + 1,
                next_attempt_at = now() + make_interval(secs => $2), updated_at = now(){in_flight}
            FROM due WHERE t.id = due.id
            RETURNING t.id, t.receipt, t.attempt_count, ({body})::text, t.created_at",
            t = table.table,
            receivable = list(table.receivable),
            in_flight = table
                .in_flight_status
                .map(|s| format!(", status = '{s}'"))
                .unwrap_or_default(),
            body = table.body,
        );
        let settle = format!(
            "WITH s AS (
                SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::float8[], $5::text[])
                    AS s(id, receipt, action, delay, reason)
            )
            UPDATE {t} t SET
                status = CASE s.action WHEN 'ack' THEN '{done}' WHEN 'dead' THEN '{failed}'
                                       ELSE '{pending}' END,
                {done_at}
                attempt_count = CASE WHEN s.action = 'defer' THEN greatest(t.attempt_count - 1, 0)
                                     ELSE t.attempt_count END,
                next_attempt_at = CASE WHEN s.action IN ('retry', 'defer')
                                       THEN now() + make_interval(secs => s.delay)
                                       ELSE t.next_attempt_at END,
                last_error = CASE WHEN s.action IN ('retry', 'dead') THEN s.reason ELSE t.last_error END,
                updated_at = now()
            FROM s WHERE t.id = s.id AND t.receipt = s.receipt
            RETURNING t.id",
            t = table.table,
            done = table.done_status,
            failed = table.failed_status,
            pending = table.receivable[0],
            done_at = table
                .done_at
                .map(|c| format!("{c} = CASE WHEN s.action = 'ack' THEN now() ELSE t.{c} END,"))
                .unwrap_or_default(),
        );
        Self {
            db,
            table,
            visibility: Duration::from_secs(120),
            max_batch: 25,
            idle_poll: Duration::from_millis(500),
            drain: false,
            drained: std::sync::atomic::AtomicBool::new(false),
            sql: Sql { receive, settle },
        }
    }

    pub fn with_visibility_timeout(mut self, t: Duration) -> Self {
        self.visibility = t;
        self
    }

    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    pub fn with_idle_poll(mut self, t: Duration) -> Self {
        self.idle_poll = t;
        self
    }

    /// End (as exhausted) at the first receive that finds nothing due.
    pub fn draining(mut self) -> Self {
        self.drain = true;
        self
    }

    pub fn table(&self) -> &OutboxTable {
        &self.table
    }
}

#[async_trait]
impl Source for OutboxSource {
    fn kind(&self) -> &'static str {
        "outbox"
    }

    async fn receive(&self, max: usize) -> anyhow::Result<Received> {
        use std::sync::atomic::Ordering;
        if self.drained.load(Ordering::SeqCst) {
            return Ok(Received::Exhausted);
        }
        if max == 0 {
            return Ok(Received::Messages(Vec::new()));
        }
        let conn = self.db.get().await?;
        let receive = conn.prepare_cached(&self.sql.receive).await?;
        let rows = conn
            .query(&receive, &[&(max as i64), &self.visibility.as_secs_f64()])
            .await?;
        if rows.is_empty() && self.drain {
            self.drained.store(true, Ordering::SeqCst);
            return Ok(Received::Exhausted);
        }
        Ok(Received::Messages(
            rows.iter()
                .map(|r| Delivery {
                    id: r.get::<_, i64>(0).to_string(),
                    receipt: r.get::<_, i64>(1).to_string(),
                    receive_count: r.get::<_, i32>(2) as u32,
                    body: r.get(3),
                    sent_at: Some(r.get(4)),
                })
                .collect(),
        ))
    }

    fn is_exhausted(&self) -> bool {
        self.drained.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn idle_wait(&self) -> Duration {
        self.idle_poll
    }

    async fn extend(&self, deliveries: &[Delivery], for_: Duration) -> anyhow::Result<()> {
        let (ids, receipts) = keys(deliveries);
        let sql = format!(
            "UPDATE {t} t SET next_attempt_at = now() + make_interval(secs => $3)
             FROM unnest($1::bigint[], $2::bigint[]) AS e(id, receipt)
             WHERE t.id = e.id AND t.receipt = e.receipt",
            t = self.table.table
        );
        let conn = self.db.get().await?;
        conn.execute(&sql, &[&ids, &receipts, &for_.as_secs_f64()])
            .await?;
        Ok(())
    }

    async fn settle(&self, settled: Vec<(Delivery, Settlement)>) -> SettleReport {
        let mut report = SettleReport::default();
        let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut expected = Vec::new();
        for (d, s) in &settled {
            let (Ok(id), Ok(receipt)) = (d.id.parse::<i64>(), d.receipt.parse::<i64>()) else {
                report.fail(d, s.action(), "not an outbox row");
                continue;
            };
            let (action, delay, reason) = match s {
                Settlement::Ack => ("ack", 0.0, String::new()),
                Settlement::Retry {
                    delay,
                    reason,
                    counted,
                } => (
                    if *counted { "retry" } else { "defer" },
                    delay.as_secs_f64(),
                    reason.clone(),
                ),
                Settlement::DeadLetter { reason } => ("dead", 0.0, reason.clone()),
            };
            cols.0.push(id);
            cols.1.push(receipt);
            cols.2.push(action);
            cols.3.push(delay);
            cols.4.push(reason);
            expected.push((id, d, s));
        }
        if expected.is_empty() {
            return report;
        }
        let result = with_retries(SETTLE_ATTEMPTS, || async {
            let conn = self.db.get().await?;
            let settle = conn.prepare_cached(&self.sql.settle).await?;
            let rows = conn
                .query(&settle, &[&cols.0, &cols.1, &cols.2, &cols.3, &cols.4])
                .await?;
            anyhow::Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
        })
        .await;
        match result {
            Ok(done) => {
                for (id, d, s) in expected {
                    if !done.contains(&id) {
                        report.fail(d, s.action(), "stale receipt: the row was received again");
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
        self.visibility
    }
}

fn keys(ds: &[Delivery]) -> (Vec<i64>, Vec<i64>) {
    ds.iter()
        .filter_map(|d| Some((d.id.parse::<i64>().ok()?, d.receipt.parse::<i64>().ok()?)))
        .unzip()
}
