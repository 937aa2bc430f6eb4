//! The account-wide reputation guard: a maintenance task that reads the rolling hard-bounce
//! and complaint rates of the last N sends (every lane: SES judges the account on all of its
//! mail; found among the last 20 N events) and, when either reaches its threshold after the minimum sample, pauses the campaign
//! lane: every campaign that could send is paused with the reason, and new ones are paused on
//! the next pass while the guard holds. Transactional mail keeps flowing.
//!
//! Only an operator ends it (`datamailer reputation resume`): the guard is cleared, the
//! campaigns it paused carry on, and sends count from then on, so the bounces that tripped it
//! do not trip it again at once. (A campaign's own guard, applied with its events, is in
//! `ses_apply_events`, migration 0020.)

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use datamailer_runtime::db::Db;
use datamailer_runtime::maintenance::{MaintenanceTask, TaskReport};
use datamailer_runtime::HandlerContext;

use crate::events::feedback as events;
use crate::ses_webhooks::FeedbackSettings;

/// The pause reason's prefix on campaigns the account-wide guard paused.
pub const PAUSE_PREFIX: &str = "account_reputation: ";

/// How far back (in events, of every type) the guard looks for its last N sends: far enough
/// while sends are at least 1 in [`SCAN_FACTOR`] events, and a bounded read when they are not.
/// (An index of sends would find them at once, but every send of a campaign would pay for it.)
pub const SCAN_FACTOR: i64 = 20;

/// The last `$1` sends (the workers' own `sent` events: SES's `Send` events carry a provider id
/// and would count a message twice) among the last `$2` events since the guard was last
/// cleared, and how many of them hard-bounced or drew a complaint.
const RATES_SQL: &str = "
WITH g AS (SELECT tripped_at, reason, counted_after FROM reputation_guard),
recent AS (
    SELECT e.event_type, e.provider_event_id, e.campaign_recipient_id, e.transactional_message_id
      FROM email_events e
     WHERE e.id > (SELECT counted_after FROM g)
     ORDER BY e.id DESC LIMIT $2
),
s AS (
    SELECT campaign_recipient_id, transactional_message_id FROM recent
     WHERE event_type = 'sent' AND provider_event_id = '' LIMIT $1
)
SELECT count(*),
       count(*) FILTER (WHERE coalesce(cr.bounced_at, tm.bounced_at) IS NOT NULL),
       count(*) FILTER (WHERE coalesce(cr.complained_at, tm.complained_at) IS NOT NULL),
       (SELECT tripped_at IS NOT NULL FROM g), (SELECT reason FROM g)
  FROM s
  LEFT JOIN campaign_recipients cr ON cr.id = s.campaign_recipient_id
  LEFT JOIN transactional_messages tm ON tm.id = s.transactional_message_id";

const TRIP_SQL: &str = "
UPDATE reputation_guard SET tripped_at = now(), reason = $1, updated_at = now()
 WHERE tripped_at IS NULL";

/// While the guard holds: every campaign that could send is paused.
const HOLD_SQL: &str = "
UPDATE campaigns SET paused_at = now(), pause_reason = $1, updated_at = now()
 WHERE status IN ('queued', 'snapshotting', 'sending') AND paused_at IS NULL";

/// Clearing it: sends count from now on, and the campaigns it paused carry on (their pending
/// rows batched again by the `campaigns` task).
const CLEAR_SQL: &str = "
WITH cleared AS (
    UPDATE reputation_guard
       SET tripped_at = NULL, reason = '', updated_at = now(),
           counted_after = (SELECT coalesce(max(id), 0) FROM email_events)
     WHERE tripped_at IS NOT NULL
    RETURNING 1
),
resumed AS (
    UPDATE campaigns SET paused_at = NULL, pause_reason = '', updated_at = now()
     WHERE paused_at IS NOT NULL AND starts_with(pause_reason, $1) AND EXISTS (SELECT 1 FROM cleared)
    RETURNING id
),
rebatched AS (
    UPDATE campaign_recipients r SET batched_at = NULL
      FROM resumed c WHERE r.campaign_id = c.id AND r.status = 'pending'
    RETURNING 1
)
SELECT (SELECT count(*) FROM cleared), (SELECT count(*) FROM resumed)";

pub struct ReputationGuard {
    pub db: Db,
    pub settings: FeedbackSettings,
}

/// What the guard last saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    pub sends: i64,
    pub bounces: i64,
    pub complaints: i64,
    pub tripped: bool,
    pub reason: String,
}

impl Rates {
    pub fn bounce_rate(&self) -> f64 {
        self.bounces as f64 / self.sends.max(1) as f64
    }

    pub fn complaint_rate(&self) -> f64 {
        self.complaints as f64 / self.sends.max(1) as f64
    }

    /// Why these rates trip the guard, if they do.
    pub fn breach(&self, s: &FeedbackSettings) -> Option<String> {
        if self.sends < i64::from(s.min_sample.max(1)) {
            return None;
        }
        let pct = |r: f64| format!("{:.3}%", r * 100.0);
        if self.complaint_rate() >= s.complaint_threshold {
            return Some(format!(
                "complaint_rate: {} complaints in the last {} sends ({}) reached the threshold of {}",
                self.complaints,
                self.sends,
                pct(self.complaint_rate()),
                pct(s.complaint_threshold)
            ));
        }
        if self.bounce_rate() >= s.bounce_threshold {
            return Some(format!(
                "bounce_rate: {} hard bounces in the last {} sends ({}) reached the threshold of {}",
                self.bounces,
                self.sends,
                pct(self.bounce_rate()),
                pct(s.bounce_threshold)
            ));
        }
        None
    }
}

/// The guard's state and the rates over its window.
pub async fn rates(db: &Db, window: i64) -> anyhow::Result<Rates> {
    let row = db
        .get()
        .await?
        .query_one(RATES_SQL, &[&window, &(window * SCAN_FACTOR)])
        .await
        .context("reading the rolling send rates")?;
    Ok(Rates {
        sends: row.get(0),
        bounces: row.get(1),
        complaints: row.get(2),
        tripped: row.get(3),
        reason: row.get(4),
    })
}

/// Ends the guard: `(was it tripped, campaigns resumed)`.
pub async fn clear(db: &Db) -> anyhow::Result<(bool, i64)> {
    let row = db
        .get()
        .await?
        .query_one(CLEAR_SQL, &[&PAUSE_PREFIX])
        .await
        .context("clearing the reputation guard")?;
    let cleared: i64 = row.get(0);
    Ok((cleared > 0, row.get(1)))
}

#[async_trait]
impl MaintenanceTask for ReputationGuard {
    fn name(&self) -> &'static str {
        "reputation"
    }

    fn every(&self) -> Duration {
        Duration::from_secs(15)
    }

    async fn run(&self, _ctx: &HandlerContext) -> anyhow::Result<TaskReport> {
        let mut rates = rates(&self.db, self.settings.account_window).await?;
        if !rates.tripped {
            if let Some(reason) = rates.breach(&self.settings) {
                self.db
                    .get()
                    .await?
                    .execute(TRIP_SQL, &[&reason])
                    .await
                    .context("tripping the reputation guard")?;
                rates.tripped = true;
                rates.reason = reason;
            }
        }
        events::account_rates(rates.bounce_rate(), rates.complaint_rate(), rates.tripped);
        if !rates.tripped {
            return Ok(TaskReport::default());
        }
        let paused = self
            .db
            .get()
            .await?
            .execute(HOLD_SQL, &[&format!("{PAUSE_PREFIX}{}", rates.reason)])
            .await
            .context("pausing campaigns under the reputation guard")?;
        if paused > 0 {
            events::account_tripped(&rates.reason, paused);
        }
        Ok(TaskReport {
            acted_on: paused,
            detail: rates.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(sends: i64, bounces: i64, complaints: i64) -> Rates {
        Rates {
            sends,
            bounces,
            complaints,
            tripped: false,
            reason: String::new(),
        }
    }

    #[test]
    fn trips_at_the_threshold_and_only_after_the_sample() {
        let s = FeedbackSettings::default();
        assert_eq!(rates(999, 500, 0).breach(&s), None, "below the sample");
        assert_eq!(rates(1000, 39, 0).breach(&s), None);
        let bounce = rates(1000, 40, 0).breach(&s).unwrap();
        assert!(bounce.starts_with("bounce_rate: 40 hard bounces in the last 1000 sends (4.000%)"));
        assert_eq!(rates(10_000, 7, 7).breach(&s), None);
        let complaint = rates(10_000, 0, 8).breach(&s).unwrap();
        assert!(
            complaint.starts_with("complaint_rate: 8 complaints"),
            "{complaint}"
        );
    }
}
