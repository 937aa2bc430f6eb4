//! Operational control of every queue tree, kept in Postgres (migration 0002):
//!
//! * **Pauses** (`queue_pauses`): a paused queue's poller receives nothing (in-flight work
//!   finishes) and re-checks every few seconds; a paused Lambda invocation hands every record
//!   back ([`crate::lambda::run_invocation`]). `datamailer pause` / `resume` write the row.
//! * **Probes** (`queue_probes`): a message in the `datamailer-probe` contract is recognised by
//!   the worker before the queue's handler sees the batch, recorded and acknowledged: never
//!   handled (so never emailed), never dead-lettered. `datamailer smoke` sends one and reads
//!   it back through `GET /health/probes/{probe_id}`.
//!
//! Pause state is cached for [`PAUSE_CACHE_TTL`], so a busy tree reads the table at most once
//! per few seconds. When the table cannot be read the last known state holds (initially "not
//! paused"): the handler needs the same database, so failing open costs nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::db::Db;
use crate::events::control as events;

/// The `contract` of a probe message.
pub const PROBE_CONTRACT: &str = "datamailer-probe";

/// How long a read of the pause table is trusted.
pub const PAUSE_CACHE_TTL: Duration = Duration::from_secs(3);

/// How long a paused poller waits before looking again.
pub const PAUSE_RECHECK: Duration = Duration::from_secs(5);

/// How long a paused Lambda invocation hides the records it hands back.
pub const LAMBDA_PAUSE_VISIBILITY: Duration = Duration::from_secs(60);

/// A smoke-test probe: `{"contract":"datamailer-probe","version":1,"probe_id":"…","sent_at":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub probe_id: String,
    pub sent_at: Option<DateTime<Utc>>,
}

impl Probe {
    /// The probe in `body`, or `None` for any other message (the queue's own contract).
    /// Probe ids are 1..=128 characters of `[A-Za-z0-9_.-]`.
    pub fn parse(body: &str) -> Option<Probe> {
        // Cheap pre-check: most bodies are not probes.
        if !body.contains(PROBE_CONTRACT) {
            return None;
        }
        let v: Value = serde_json::from_str(body).ok()?;
        if v.get("contract")?.as_str()? != PROBE_CONTRACT || v.get("version")?.as_i64()? != 1 {
            return None;
        }
        let probe_id = v.get("probe_id")?.as_str()?;
        if !valid_probe_id(probe_id) {
            return None;
        }
        let sent_at = v
            .get("sent_at")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc));
        Some(Probe {
            probe_id: probe_id.to_string(),
            sent_at,
        })
    }

    /// The message body for this probe.
    pub fn to_body(&self) -> String {
        serde_json::json!({
            "contract": PROBE_CONTRACT,
            "version": 1,
            "probe_id": self.probe_id,
            "sent_at": self.sent_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        })
        .to_string()
    }
}

pub fn valid_probe_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Pause and probe bookkeeping for the queue trees of one process.
pub struct QueueControl {
    db: Db,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, bool)>>,
}

impl QueueControl {
    pub fn new(db: Db) -> Self {
        Self::with_ttl(db, PAUSE_CACHE_TTL)
    }

    pub fn with_ttl(db: Db, ttl: Duration) -> Self {
        Self {
            db,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `queue` is paused (cached; the last known state when the table is unreadable).
    pub async fn is_paused(&self, queue: &str) -> bool {
        let cached = self.cache.lock().unwrap().get(queue).copied();
        if let Some((at, paused)) = cached {
            if at.elapsed() < self.ttl {
                return paused;
            }
        }
        match self.read_paused(queue).await {
            Ok(paused) => {
                self.cache
                    .lock()
                    .unwrap()
                    .insert(queue.to_string(), (Instant::now(), paused));
                events::paused_state(queue, paused);
                paused
            }
            Err(e) => {
                events::pause_state_unreadable(queue, &e);
                cached.map(|(_, p)| p).unwrap_or(false)
            }
        }
    }

    async fn read_paused(&self, queue: &str) -> anyhow::Result<bool> {
        let row = self
            .db
            .get()
            .await?
            .query_opt("SELECT 1 FROM queue_pauses WHERE queue = $1", &[&queue])
            .await
            .context("reading queue_pauses")?;
        Ok(row.is_some())
    }

    /// Records that this process's tree for `queue` consumed `probe` (idempotent).
    pub async fn record_probe(&self, queue: &str, probe: &Probe) -> anyhow::Result<()> {
        self.db
            .get()
            .await?
            .execute(
                "INSERT INTO queue_probes (probe_id, queue, sent_at) VALUES ($1, $2, $3)
                 ON CONFLICT (probe_id) DO NOTHING",
                &[&probe.probe_id, &queue, &probe.sent_at],
            )
            .await
            .context("recording the probe")?;
        Ok(())
    }
}

/// Pauses `queue` (idempotent; a second pause keeps the first time and updates the reason).
pub async fn pause(db: &Db, queue: &str, reason: &str) -> anyhow::Result<DateTime<Utc>> {
    let row = db
        .get()
        .await?
        .query_one(
            "INSERT INTO queue_pauses (queue, reason) VALUES ($1, $2)
             ON CONFLICT (queue) DO UPDATE SET reason = EXCLUDED.reason
             RETURNING paused_at",
            &[&queue, &reason],
        )
        .await
        .context("writing queue_pauses (has `datamailer migrate` run?)")?;
    Ok(row.get(0))
}

/// Notes on `queue`'s pause that it disabled this Lambda event source mapping.
pub async fn note_disabled_mapping(db: &Db, queue: &str, mapping: &str) -> anyhow::Result<()> {
    db.get()
        .await?
        .execute(
            "UPDATE queue_pauses SET disabled_mapping = $2 WHERE queue = $1",
            &[&queue, &mapping],
        )
        .await
        .context("writing queue_pauses")?;
    Ok(())
}

/// What `resume` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The Lambda event source mapping the pause disabled, to enable again ("" for none).
    pub disabled_mapping: String,
}

/// Resumes `queue`; `None` if it was not paused.
pub async fn resume(db: &Db, queue: &str) -> anyhow::Result<Option<Resumed>> {
    let row = db
        .get()
        .await?
        .query_opt(
            "DELETE FROM queue_pauses WHERE queue = $1 RETURNING disabled_mapping",
            &[&queue],
        )
        .await
        .context("writing queue_pauses (has `datamailer migrate` run?)")?;
    Ok(row.map(|r| Resumed {
        disabled_mapping: r.get(0),
    }))
}

/// Every paused queue: (queue, paused_at, reason).
pub async fn paused_queues(db: &Db) -> anyhow::Result<Vec<(String, DateTime<Utc>, String)>> {
    let rows = db
        .get()
        .await?
        .query(
            "SELECT queue, paused_at, reason FROM queue_pauses ORDER BY queue",
            &[],
        )
        .await
        .context("reading queue_pauses")?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_probes_and_nothing_else() {
        let probe = Probe {
            probe_id: "smoke-123e4567-e89b".into(),
            sent_at: Some(Utc::now()),
        };
        let body = probe.to_body();
        let parsed = Probe::parse(&body).expect("a probe");
        assert_eq!(parsed.probe_id, probe.probe_id);
        assert!(parsed.sent_at.is_some());
        let no_time = r#"{"contract":"datamailer-probe","version":1,"probe_id":"p1"}"#;
        assert_eq!(Probe::parse(no_time).unwrap().sent_at, None);
        for not in [
            r#"{"contract":"transactional-email","version":1,"probe_id":"p1"}"#,
            r#"{"contract":"datamailer-probe","version":2,"probe_id":"p1"}"#,
            r#"{"contract":"datamailer-probe","version":1}"#,
            r#"{"contract":"datamailer-probe","version":1,"probe_id":""}"#,
            r#"{"contract":"datamailer-probe","version":1,"probe_id":"a b"}"#,
            r#"not json datamailer-probe"#,
            "",
        ] {
            assert_eq!(Probe::parse(not), None, "{not}");
        }
    }
}
