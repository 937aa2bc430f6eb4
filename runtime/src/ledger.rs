//! The send ledger: "did the provider accept row X?", answered from the provider's own word,
//! so a row whose worker died between the SES call and its record is reconciled instead of
//! blindly sent again.
//!
//! Every send carries two tags ([`KIND_TAG`], [`ID_TAG`]) naming the row it sends. The
//! provider's word comes from two places, read together by one query:
//! * `send_ledger`, written by the ses-webhooks handler from SES `Send` events (which carry
//!   our tags). Those arrive asynchronously, so a reclaimed row waits [`SES_EVENT_GRACE`] past
//!   its lease before "no entry" is taken to mean "never accepted";
//! * `captured_messages`: the capture mailer's rows, written in the statement that accepts
//!   them (exact, and nothing extra on the send path: this is read only when a lease expired).
//!
//! Handlers ask [`SendLedger::accepted`] before re-sending a row whose lease expired.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::db::Db;

/// The tag naming what kind of row a send is for (`transactional`, `campaign`).
pub const KIND_TAG: &str = "datamailer_kind";
/// The tag holding that row's id.
pub const ID_TAG: &str = "datamailer_id";

/// How long after a lease ends an SES `Send` event may still be on its way through the
/// ses-webhooks queue. A reclaimed row with no ledger entry is re-sent only after this.
pub const SES_EVENT_GRACE: Duration = Duration::from_secs(300);

/// One accepted send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub kind: String,
    pub id: i64,
    pub provider_message_id: String,
    pub accepted_at: DateTime<Utc>,
    /// Who said so (`ses-send-event`).
    pub source: &'static str,
}

/// The (kind, id) a send's tags name, if they name one.
pub fn key_from_tags(tags: &[(String, String)]) -> Option<(String, i64)> {
    let get = |name: &str| {
        tags.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    Some((get(KIND_TAG)?.to_string(), get(ID_TAG)?.parse().ok()?))
}

/// How accepted sends are recorded: `$1` kinds, `$2` ids, `$3` provider message ids, `$4`
/// accepted-at times, `$5` sources. The first word wins.
pub const RECORD_SQL: &str = "
INSERT INTO send_ledger (kind, row_id, provider_message_id, accepted_at, source)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[])
ON CONFLICT (kind, row_id) DO NOTHING";

#[derive(Clone)]
pub struct SendLedger {
    db: Db,
}

impl SendLedger {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Which of `ids` (of `kind`) the provider accepted: id → provider message id.
    pub async fn accepted(&self, kind: &str, ids: &[i64]) -> anyhow::Result<HashMap<i64, String>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let conn = self.db.get().await?;
        let lookup = conn
            .prepare_cached(
                "SELECT row_id, provider_message_id FROM send_ledger WHERE kind = $1 AND row_id = ANY($2)
                 UNION ALL
                 SELECT (tags ->> 'datamailer_id')::bigint, provider_message_id FROM captured_messages
                 WHERE tags ->> 'datamailer_kind' = $1 AND tags ->> 'datamailer_id' = ANY($3)",
            )
            .await?;
        let texts: Vec<String> = ids.iter().map(i64::to_string).collect();
        let rows = conn
            .query(&lookup, &[&kind, &ids, &texts])
            .await
            .context("reading the send ledger")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Records accepted sends (idempotent: the first entry for a row stays).
    pub async fn record(&self, entries: &[LedgerEntry]) -> anyhow::Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
        let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
        let provider: Vec<&str> = entries
            .iter()
            .map(|e| e.provider_message_id.as_str())
            .collect();
        let at: Vec<DateTime<Utc>> = entries.iter().map(|e| e.accepted_at).collect();
        let sources: Vec<&str> = entries.iter().map(|e| e.source).collect();
        let conn = self.db.get().await?;
        let record = conn.prepare_cached(RECORD_SQL).await?;
        conn.execute(&record, &[&kinds, &ids, &provider, &at, &sources])
            .await
            .context("writing the send ledger")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_row_a_send_names() {
        let tags = vec![
            (KIND_TAG.to_string(), "transactional".to_string()),
            (ID_TAG.to_string(), "42".to_string()),
        ];
        assert_eq!(key_from_tags(&tags), Some(("transactional".into(), 42)));
        assert_eq!(key_from_tags(&tags[..1]), None);
        let bad = vec![
            (KIND_TAG.to_string(), "campaign".to_string()),
            (ID_TAG.to_string(), "x".to_string()),
        ];
        assert_eq!(key_from_tags(&bad), None);
    }
}
