//! The SES account's send rate, shared by every process that sends (host workers, `serve`,
//! each Lambda environment), through one row in Postgres.
//!
//! SES's `MaxSendRate` is per account; a limiter per process would let N processes send N
//! times too fast. Here every send reserves its slot on one schedule (`send_schedule`, the
//! same virtual-schedule algorithm as the process limiter: one slot every `1 / rate`
//! seconds, no burst) with one `UPDATE`, on the database's clock, then sleeps until the slot.
//! Nothing is leased or heartbeated, so a process that dies (or a Lambda environment that is
//! frozen) holds nothing: at worst the slots it reserved go unused.
//!
//! Transactional sends always take the next slot. Campaign sends take one only if it starts
//! within [`CAMPAIGN_LOOKAHEAD`]; otherwise they wait and ask again, so a password reset from
//! any process waits at most that long behind campaign mail.

use std::time::Duration;

use anyhow::Context;

use super::limiter::Lane;
use crate::db::Db;

/// How far ahead of now a campaign send may reserve a slot.
pub const CAMPAIGN_LOOKAHEAD: Duration = Duration::from_millis(100);

/// One statement, one implicit transaction, committed without waiting for the WAL flush
/// (`synchronous_commit` off for this transaction only): every send in every process takes
/// this row's lock in turn, and holding it through an fsync (2–4 ms here) capped the account
/// at ~300 sends/s whatever the configured rate (load-tests `rate` scenario). The cost: if
/// Postgres itself crashes, up to ~0.6 s of reservations may be forgotten, so the sends of
/// that moment may exceed the rate once, briefly.
const RESERVE_SQL: &str = "
WITH s AS (SELECT next_free, clock_timestamp() AS now FROM send_schedule FOR UPDATE),
granted AS (
    -- A slot missed by less than $4 s is still taken (see the limiter's reserve).
    SELECT s.*, ($2 OR s.next_free <= s.now + make_interval(secs => $3)) AS ok,
           CASE WHEN s.next_free + make_interval(secs => $4) >= s.now THEN s.next_free
                ELSE s.now END AS slot
      FROM s
),
async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
UPDATE send_schedule
   SET next_free = CASE WHEN g.ok THEN g.slot + make_interval(secs => $1) ELSE g.next_free END
  FROM granted g, async_commit
RETURNING g.ok, extract(epoch FROM g.slot - g.now)::float8";

/// The shared schedule at `rate` sends (recipients) per second.
#[derive(Clone)]
pub struct SharedSchedule {
    db: Db,
    rate: std::sync::Arc<std::sync::Mutex<f64>>,
}

impl SharedSchedule {
    pub fn new(db: Db, rate: f64) -> Self {
        Self {
            db,
            rate: std::sync::Arc::new(std::sync::Mutex::new(rate)),
        }
    }

    pub fn rate(&self) -> f64 {
        *self.rate.lock().expect("rate")
    }

    /// Lowers the rate to the account's `MaxSendRate` when configured above it.
    pub fn cap_rate(&self, max: f64) {
        let mut rate = self.rate.lock().expect("rate");
        *rate = rate.min(max);
    }

    /// Waits until `cells` sends may start on `lane`, across every process.
    pub async fn acquire(&self, lane: Lane, cells: u32) -> anyhow::Result<()> {
        let interval = f64::from(cells.max(1)) / self.rate();
        let transactional = lane == Lane::Transactional;
        let lookahead = CAMPAIGN_LOOKAHEAD.as_secs_f64();
        let tolerance = interval.max(super::limiter::LATE_TOLERANCE.as_secs_f64());
        loop {
            let row = self
                .db
                .get()
                .await
                .context("getting a connection for the shared send schedule")?
                .query_one(
                    RESERVE_SQL,
                    &[&interval, &transactional, &lookahead, &tolerance],
                )
                .await
                .context("reserving a slot on the shared send schedule")?;
            let (granted, wait): (bool, f64) = (row.get(0), row.get(1));
            let wait = Duration::from_secs_f64(wait.max(0.0));
            if granted {
                tokio::time::sleep(wait).await;
                return Ok(());
            }
            // A campaign send too far behind the schedule: ask again when it is near.
            tokio::time::sleep(wait.saturating_sub(CAMPAIGN_LOOKAHEAD)).await;
        }
    }
}
