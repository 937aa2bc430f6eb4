//! The transactional-email handler (facts §3.3, with its gaps fixed).
//!
//! Per batch, set-wise:
//! 1. Parse each message against the `transactional-email` v1 contract; a malformed one is
//!    poison and goes to the dead-letter queue at once, with the reason.
//! 2. Claim: one statement moves every `queued` row of the batch to `sending` with a lease
//!    (bumping `send_attempts`, which fences the claim), and returns every row's state, its contact's suppression flags and
//!    its client's fallback sender. Rows already terminal are acknowledged; a payload that does
//!    not match its row fails the row (`queue_payload_mismatch`); a row another delivery holds
//!    is **deferred until its lease ends** (never counted, never dead-lettered).
//! 3. A `sending` row whose lease has expired (its worker died between SES and the database)
//!    is reclaimed (`send_attempts` bumped again) and reconciled against the send ledger first: if the provider
//!    accepted it, it is recorded as sent without sending again. For SES the ledger learns
//!    from `Send` events, so a row is reclaimed only [`Sender::ledger_delay`] after its lease
//!    ended; before that it is deferred.
//! 4. Hard suppression is re-checked at send time: a contact that bounced or complained since
//!    the API accepted the message is skipped, not mailed.
//! 5. Send the rest through the shared sender (transactional lane: first in the SES budget).
//!    Once the batch's context says stop (deadline, shutdown), nothing new is sent: the rows
//!    not sent are released back to `queued` and their messages deferred.
//! 6. Record every result in one statement (row state + its event), fenced by `send_attempts`:
//!    a holder whose lease was taken over records nothing. If that write fails, the rows stay
//!    `sending` under their lease, so a redelivery does not send them again.
//!
//! Errors that say SES or Postgres is down answer `Unavailable` (the tree's circuit breaker
//! pauses instead of dead-lettering); when the runtime gives up on a message after its last
//! receive, [`Handler::gave_up`] marks its row `failed` (`retries_exhausted`) so maintenance
//! does not bring it back forever.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::Utc;
use datamailer_core::contracts::TransactionalEmailV1;
use datamailer_runtime::db::{self, Db};
use datamailer_runtime::ledger::{SendLedger, ID_TAG, KIND_TAG};
use datamailer_runtime::mailer::{Lane, OutgoingEmail, Part, SendError, Sender};
use datamailer_runtime::{Delivery, Handler, HandlerContext, Outcome};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;

/// Settings from configuration.
#[derive(Debug, Clone)]
pub struct TransactionalSettings {
    /// The last-resort sender (`DEFAULT_FROM_EMAIL`).
    pub default_from_email: String,
    /// `AWS_SES_CONFIGURATION_SET`, when set.
    pub configuration_set: Option<String>,
    /// How long a claim protects a `sending` row from other deliveries.
    pub lease: Duration,
}

impl Default for TransactionalSettings {
    fn default() -> Self {
        Self {
            default_from_email: "newsletter@example.com".into(),
            configuration_set: None,
            lease: Duration::from_secs(900),
        }
    }
}

/// The send ledger's `kind` (and the `datamailer_kind` tag) of transactional sends.
pub const KIND: &str = "transactional";

pub struct TransactionalHandler {
    db: Db,
    sender: Sender,
    ledger: SendLedger,
    settings: TransactionalSettings,
}

impl TransactionalHandler {
    pub fn new(db: Db, sender: Sender, settings: TransactionalSettings) -> Self {
        Self {
            ledger: SendLedger::new(db.clone()),
            db,
            sender,
            settings,
        }
    }
}

/// One row as the claim statement sees it.
struct Row {
    id: i64,
    found: bool,
    matches: bool,
    status: String,
    /// Seconds until the row's lease ends (negative once it has ended).
    lease_left: f64,
    claimed: bool,
    /// Our claim's fence: the row's `send_attempts` as our claim left it (every claim bumps
    /// it), when we hold the row.
    token: Option<i32>,
    client_id: i64,
    idempotency_key: String,
    email: String,
    from_email: String,
    client_from_email: String,
    subject: String,
    html_body: String,
    text_body: String,
    metadata: Value,
    hard_bounced: bool,
    complained: bool,
}

/// What happened to a row, to be written in the record statement.
struct Recorded {
    id: i64,
    /// Our claim's fence (None for a row we never claimed: only a `queued` row is changed).
    token: Option<i32>,
    status: &'static str,
    ses_message_id: String,
    error: String,
    event_type: Option<&'static str>,
    event_metadata: Value,
}

const CLAIM_SQL: &str = "
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS t(id, client_id, idempotency_key)
),
claimed AS (
    UPDATE transactional_messages m
    SET status = 'sending', lease_expires_at = now() + make_interval(secs => $4),
        send_attempts = m.send_attempts + 1, last_error = '', updated_at = now()
    FROM input i
    WHERE m.id = i.id AND m.client_id = i.client_id AND m.idempotency_key = i.idempotency_key
      AND m.status = 'queued'
    RETURNING m.id, m.send_attempts
)
SELECT i.id, m.id IS NOT NULL,
       coalesce(m.client_id = i.client_id AND m.idempotency_key = i.idempotency_key, false),
       coalesce(m.status, ''),
       coalesce(extract(epoch FROM m.lease_expires_at - now())::float8, 0), c.id IS NOT NULL,
       coalesce(m.email, ''), coalesce(m.from_email, ''), coalesce(cl.default_from_email, ''),
       coalesce(m.subject, ''), coalesce(m.html_body, ''), coalesce(m.text_body, ''),
       coalesce(m.metadata, '{}'::jsonb),
       coalesce(ct.hard_bounced_at IS NOT NULL, false), coalesce(ct.complained_at IS NOT NULL, false),
       c.send_attempts
FROM input i
LEFT JOIN transactional_messages m ON m.id = i.id
LEFT JOIN claimed c ON c.id = i.id
LEFT JOIN contacts ct ON ct.id = m.contact_id
LEFT JOIN clients cl ON cl.id = m.client_id";

/// Takes over `sending` rows whose lease ended more than `$3` seconds ago (their worker is
/// gone, and the provider's word about them has had time to arrive).
const RECLAIM_SQL: &str = "
UPDATE transactional_messages
SET lease_expires_at = now() + make_interval(secs => $2),
    send_attempts = send_attempts + 1, updated_at = now()
WHERE id = ANY($1) AND status = 'sending'
  AND lease_expires_at < now() - make_interval(secs => $3)
RETURNING id, send_attempts";

/// Records results: the row's new state and its event, in one statement. Fenced: a claimed
/// row changes only while its `send_attempts` is still our claim's (a holder whose lease was taken
/// over writes nothing); an unclaimed row only while it is still `queued`.
const RECORD_SQL: &str = "
WITH r AS (
    SELECT u.*, $7::timestamptz AS at
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $8::int[])
        AS u(id, status, ses_message_id, error, event_type, event_metadata, token)
),
updated AS (
    UPDATE transactional_messages m
    SET status = r.status,
        ses_message_id = CASE WHEN r.status = 'sent' THEN r.ses_message_id ELSE m.ses_message_id END,
        sent_at = CASE WHEN r.status = 'sent' THEN r.at ELSE m.sent_at END,
        last_error = r.error,
        lease_expires_at = NULL,
        updated_at = now()
    FROM r
    WHERE m.id = r.id
      AND CASE WHEN r.token IS NULL THEN m.status = 'queued'
               ELSE m.status = 'sending' AND m.send_attempts = r.token END
    RETURNING m.id, m.client_id, m.contact_id, r.event_type, r.event_metadata
)
INSERT INTO email_events (transactional_message_id, client_id, contact_id, event_type, metadata)
SELECT id, client_id, contact_id, event_type, event_metadata FROM updated WHERE event_type IS NOT NULL";

#[async_trait]
impl Handler for TransactionalHandler {
    async fn handle(&self, ctx: &HandlerContext, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        // The first message per row id is handled; duplicates in the same batch share its fate.
        let mut first_for_id: HashMap<i64, usize> = HashMap::new();
        let mut duplicates = Vec::new();
        let mut payloads = Vec::new();
        for (i, d) in batch.iter().enumerate() {
            match TransactionalEmailV1::parse(&d.body) {
                Ok(p) => match first_for_id.get(&p.transactional_message_id) {
                    Some(&first) => duplicates.push((i, first)),
                    None => {
                        first_for_id.insert(p.transactional_message_id, i);
                        payloads.push((i, p));
                    }
                },
                Err(e) => {
                    outcomes[i] = Some(Outcome::DeadLetter(format!(
                        "invalid transactional-email message: {e}"
                    )))
                }
            }
        }
        if !payloads.is_empty() {
            match self.process(ctx, &payloads).await {
                Ok(results) => {
                    for (i, o) in results {
                        outcomes[i] = Some(o);
                    }
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    let down = db::is_unavailable(&e);
                    for (i, _) in &payloads {
                        outcomes[*i] = Some(if down {
                            Outcome::Unavailable(why.clone())
                        } else {
                            Outcome::Retry(why.clone())
                        });
                    }
                }
            }
        }
        for (i, first) in duplicates {
            outcomes[i] = outcomes[first].clone();
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Retry("not handled".into())))
            .collect()
    }

    /// Rows whose message the runtime dead-letters after its last receive: `failed` with the
    /// reason, unless something else already finished (or holds) them.
    async fn gave_up(&self, _ctx: &HandlerContext, messages: &[(Delivery, String)]) {
        let (ids, reasons): (Vec<i64>, Vec<String>) = messages
            .iter()
            .filter_map(|(d, why)| {
                Some((
                    TransactionalEmailV1::parse(&d.body)
                        .ok()?
                        .transactional_message_id,
                    why.clone(),
                ))
            })
            .unzip();
        if ids.is_empty() {
            return;
        }
        let result = async {
            self.db
                .get()
                .await?
                .execute(GAVE_UP_SQL, &params(&[&ids, &reasons]))
                .await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(
                error = format!("{e:#}"),
                ?ids,
                "could not mark rows failed after their last retry"
            );
        }
    }
}

/// Rows given up on: `failed` (`retries_exhausted`) with the last error, and their event.
const GAVE_UP_SQL: &str = "
WITH g AS (SELECT * FROM unnest($1::bigint[], $2::text[]) AS g(id, reason)),
failed AS (
    UPDATE transactional_messages m
    SET status = 'failed', last_error = g.reason, lease_expires_at = NULL,
        updated_at = now()
    FROM g WHERE m.id = g.id AND m.status = 'queued'
    RETURNING m.id, m.client_id, m.contact_id, g.reason
)
INSERT INTO email_events (transactional_message_id, client_id, contact_id, event_type, metadata)
SELECT id, client_id, contact_id, 'failed', jsonb_build_object('reason', 'retries_exhausted', 'error', reason)
FROM failed";

impl TransactionalHandler {
    async fn process(
        &self,
        ctx: &HandlerContext,
        payloads: &[(usize, TransactionalEmailV1)],
    ) -> anyhow::Result<Vec<(usize, Outcome)>> {
        let ids: Vec<i64> = payloads
            .iter()
            .map(|(_, p)| p.transactional_message_id)
            .collect();
        let clients: Vec<i64> = payloads.iter().map(|(_, p)| p.client_id).collect();
        let keys: Vec<String> = payloads
            .iter()
            .map(|(_, p)| p.idempotency_key.clone())
            .collect();
        let lease = self.settings.lease.as_secs_f64();
        let grace = self.sender.ledger_delay().as_secs_f64();

        let conn = self
            .db
            .get()
            .await
            .context("getting a database connection")?;
        let claim = conn
            .prepare_cached(CLAIM_SQL)
            .await
            .context("preparing the claim")?;
        let rows: Vec<Row> = conn
            .query(&claim, &params(&[&ids, &clients, &keys, &lease]))
            .await
            .context("claiming transactional messages")?
            .iter()
            .map(|r| Row {
                id: r.get(0),
                found: r.get(1),
                matches: r.get(2),
                status: r.get(3),
                lease_left: r.get(4),
                claimed: r.get(5),
                email: r.get(6),
                from_email: r.get(7),
                client_from_email: r.get(8),
                subject: r.get(9),
                html_body: r.get(10),
                text_body: r.get(11),
                metadata: r.get(12),
                hard_bounced: r.get(13),
                complained: r.get(14),
                token: r.get(15),
                client_id: 0,
                idempotency_key: String::new(),
            })
            .collect();
        let mut rows: HashMap<i64, Row> = rows.into_iter().map(|r| (r.id, r)).collect();
        for (_, p) in payloads {
            if let Some(row) = rows.get_mut(&p.transactional_message_id) {
                row.client_id = p.client_id;
                row.idempotency_key = p.idempotency_key.clone();
            }
        }

        // Rows orphaned in `sending` whose lease (plus the ledger's delay) has ended: take
        // them over, then reconcile.
        let expired: Vec<i64> = rows
            .values()
            .filter(|r| r.found && r.matches && r.status == "sending" && r.lease_left + grace < 0.0)
            .map(|r| r.id)
            .collect();
        if !expired.is_empty() {
            let reclaimed = conn
                .query(RECLAIM_SQL, &params(&[&expired, &lease, &grace]))
                .await
                .context("reclaiming expired leases")?;
            for r in reclaimed {
                let id: i64 = r.get(0);
                if let Some(row) = rows.get_mut(&id) {
                    tracing::warn!(id, "reclaiming a transactional message whose lease expired");
                    row.claimed = true;
                    row.token = r.get(1);
                }
            }
        }
        drop(conn);

        let now = Utc::now();
        let mut outcomes = Vec::with_capacity(payloads.len());
        let mut records = Vec::new();
        let mut to_send: Vec<(usize, i64, OutgoingEmail)> = Vec::new();
        let mut reconcile: Vec<i64> = Vec::new();
        for (i, p) in payloads {
            let id = p.transactional_message_id;
            let row = &rows[&id];
            if !row.found {
                outcomes.push((
                    *i,
                    Outcome::Retry(format!("transactional message {id} not found")),
                ));
            } else if datamailer_core::transactional::is_worker_terminal(&row.status) {
                outcomes.push((*i, Outcome::Ack));
            } else if !row.matches {
                let error =
                    "queue payload does not match transactional message client_id/idempotency_key";
                records.push(Recorded {
                    id,
                    token: None,
                    status: "failed",
                    ses_message_id: String::new(),
                    error: error.into(),
                    event_type: Some("failed"),
                    event_metadata: json!({
                        "reason": "queue_payload_mismatch",
                        "queued_client_id": p.client_id,
                        "queued_idempotency_key": p.idempotency_key,
                        "error": error,
                    }),
                });
                outcomes.push((*i, Outcome::Ack));
            } else if !row.claimed {
                // Another delivery holds the row: wait for its lease (and the ledger's word)
                // to end, then this message takes over if the holder never finished.
                let wait = (row.lease_left + grace).max(0.0) + 1.0;
                outcomes.push((
                    *i,
                    Outcome::Defer {
                        reason: format!(
                            "transactional message {id} is being sent by another delivery"
                        ),
                        delay: Duration::from_secs_f64(wait),
                    },
                ));
            } else if row.hard_bounced || row.complained {
                let reason = if row.hard_bounced {
                    "hard_bounce"
                } else {
                    "complaint"
                };
                records.push(Recorded {
                    id,
                    token: row.token,
                    status: "skipped",
                    ses_message_id: String::new(),
                    error: reason.into(),
                    event_type: Some("skipped"),
                    event_metadata: json!({"reason": reason, "stage": "send"}),
                });
                outcomes.push((*i, Outcome::Ack));
            } else {
                if row.status == "sending" {
                    reconcile.push(id);
                }
                to_send.push((*i, id, self.email_for(row)));
            }
        }

        // Reconcile reclaimed rows: the provider may have accepted them already.
        if !reconcile.is_empty() {
            let found = self.ledger.accepted(KIND, &reconcile).await?;
            to_send.retain(|(i, id, _)| match found.get(id) {
                Some(ses_id) => {
                    records.push(sent_record(*id, rows[id].token, ses_id.clone(), now));
                    outcomes.push((*i, Outcome::Ack));
                    false
                }
                None => true,
            });
        }

        let emails: Vec<OutgoingEmail> = to_send.iter().map(|(_, _, e)| e.clone()).collect();
        let results = self
            .sender
            .send_batch(Lane::Transactional, &emails, ctx)
            .await;
        let mut sent_indices = Vec::new();
        for ((i, id, _), result) in to_send.iter().zip(results) {
            let token = rows[id].token;
            match result {
                Ok(receipt) => {
                    records.push(sent_record(*id, token, receipt.message_id, now));
                    sent_indices.push(*i);
                }
                Err(e @ SendError::Permanent { .. }) => {
                    records.push(Recorded {
                        id: *id,
                        token,
                        status: "failed",
                        ses_message_id: String::new(),
                        error: e.to_string(),
                        event_type: Some("failed"),
                        event_metadata: json!({"reason": "ses_permanent_failure", "error": e.to_string()}),
                    });
                    outcomes.push((*i, Outcome::Ack));
                }
                Err(e) => {
                    // Not sent: give the row back to `queued` (no event) and let the message
                    // come back: at once when we stopped before sending it, after the tree's
                    // backoff when SES failed.
                    records.push(Recorded {
                        id: *id,
                        token,
                        status: "queued",
                        ses_message_id: String::new(),
                        error: e.to_string(),
                        event_type: None,
                        event_metadata: Value::Null,
                    });
                    outcomes.push((*i, e.not_sent_outcome()));
                }
            }
        }

        match self.record(&records, now).await {
            Ok(()) => outcomes.extend(sent_indices.into_iter().map(|i| (i, Outcome::Ack))),
            Err(e) => {
                // The rows we sent stay `sending` under their lease: a redelivery will not send
                // them again. Everything else recorded here is retried too (idempotent).
                tracing::error!(
                    error = format!("{e:#}"),
                    "recording transactional results failed"
                );
                let why = format!("recording the send result failed: {e:#}");
                let down = db::is_unavailable(&e);
                outcomes.retain(|(_, o)| !matches!(o, Outcome::Ack));
                let kept: std::collections::HashSet<usize> =
                    outcomes.iter().map(|(i, _)| *i).collect();
                for (i, _) in payloads {
                    if !kept.contains(i) {
                        outcomes.push((
                            *i,
                            if down {
                                Outcome::Unavailable(why.clone())
                            } else {
                                Outcome::Retry(why.clone())
                            },
                        ));
                    }
                }
            }
        }
        Ok(outcomes)
    }

    /// Writes the results, retrying briefly: a failure here is what could cause a double send.
    async fn record(&self, records: &[Recorded], now: chrono::DateTime<Utc>) -> anyhow::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
        let statuses: Vec<&str> = records.iter().map(|r| r.status).collect();
        let ses_ids: Vec<&str> = records.iter().map(|r| r.ses_message_id.as_str()).collect();
        let errors: Vec<&str> = records.iter().map(|r| r.error.as_str()).collect();
        let event_types: Vec<Option<&str>> = records.iter().map(|r| r.event_type).collect();
        let metas: Vec<&Value> = records.iter().map(|r| &r.event_metadata).collect();
        let tokens: Vec<Option<i32>> = records.iter().map(|r| r.token).collect();
        db::with_retries(|| async {
            let conn = self.db.get().await?;
            let record = conn.prepare_cached(RECORD_SQL).await?;
            conn.execute(
                &record,
                &params(&[
                    &ids,
                    &statuses,
                    &ses_ids,
                    &errors,
                    &event_types,
                    &metas,
                    &now,
                    &tokens,
                ]),
            )
            .await?;
            anyhow::Ok(())
        })
        .await
    }

    fn email_for(&self, row: &Row) -> OutgoingEmail {
        let meta = &row.metadata;
        let strings = |key: &str| -> Vec<String> {
            match &meta[key] {
                Value::String(s) if !s.is_empty() => vec![s.clone()],
                Value::Array(items) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let headers = meta["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let parts: Vec<Part> =
            serde_json::from_value(meta["message_parts"].clone()).unwrap_or_default();
        let from = [
            &row.from_email,
            &row.client_from_email,
            &self.settings.default_from_email,
        ]
        .into_iter()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_default();
        OutgoingEmail {
            from,
            to: vec![row.email.clone()],
            cc: strings("cc"),
            bcc: strings("bcc"),
            reply_to: strings("reply_to"),
            subject: row.subject.clone(),
            html_body: row.html_body.clone(),
            text_body: row.text_body.clone(),
            headers,
            parts,
            tags: vec![
                (KIND_TAG.into(), KIND.into()),
                (ID_TAG.into(), row.id.to_string()),
            ],
            configuration_set: self.settings.configuration_set.clone(),
        }
    }
}

/// Statement parameters as an owned list: borrowing a temporary slice of trait objects across
/// an await trips the compiler's `Send` check in async trait methods.
fn params<'a>(p: &[&'a (dyn ToSql + Sync)]) -> Vec<&'a (dyn ToSql + Sync)> {
    p.to_vec()
}

fn sent_record(
    id: i64,
    token: Option<i32>,
    ses_message_id: String,
    at: chrono::DateTime<Utc>,
) -> Recorded {
    Recorded {
        id,
        token,
        status: "sent",
        event_metadata: json!({"ses_message_id": ses_message_id, "sent_at": datamailer_core::time::iso(at)}),
        ses_message_id,
        error: String::new(),
        event_type: Some("sent"),
    }
}

/// Rows no queue message will bring back: `queued` rows idle for `older_than` (their
/// post-commit SQS send failed, or their message was lost) and `sending` rows whose lease (and
/// the ledger's delay) ended (their worker died and no redelivery came). Each is touched
/// (`updated_at`) as it is picked, so a row is re-enqueued at most once per `older_than`;
/// re-enqueueing is always safe: the claim is atomic and a duplicate message for a finished
/// row is simply acknowledged. With `dry_run` nothing is touched.
pub async fn stale_payloads(
    db: &Db,
    older_than: Duration,
    ledger_delay: Duration,
    limit: i64,
    dry_run: bool,
) -> anyhow::Result<Vec<TransactionalEmailV1>> {
    const STALE: &str = "
        SELECT id FROM transactional_messages
        WHERE (status = 'queued' AND updated_at < now() - make_interval(secs => $1))
           OR (status = 'sending' AND lease_expires_at < now() - make_interval(secs => $2)
               AND updated_at < now() - make_interval(secs => $1))
        ORDER BY id LIMIT $3";
    let sql = if dry_run {
        format!(
            "WITH s AS ({STALE})
             SELECT m.id, m.client_id, m.idempotency_key, m.contact_id, m.template_id, m.template_key, m.metadata
             FROM transactional_messages m JOIN s USING (id) ORDER BY m.id"
        )
    } else {
        format!(
            "WITH s AS ({STALE} FOR UPDATE SKIP LOCKED)
             UPDATE transactional_messages m SET updated_at = now() FROM s WHERE m.id = s.id
             RETURNING m.id, m.client_id, m.idempotency_key, m.contact_id, m.template_id, m.template_key, m.metadata"
        )
    };
    let conn = db.get().await?;
    let mut rows = conn
        .query(
            &sql,
            &params(&[
                &older_than.as_secs_f64(),
                &ledger_delay.as_secs_f64(),
                &limit,
            ]),
        )
        .await?;
    rows.sort_by_key(|r| r.get::<_, i64>(0));
    Ok(rows
        .iter()
        .map(|r| TransactionalEmailV1 {
            transactional_message_id: r.get(0),
            client_id: r.get(1),
            idempotency_key: r.get(2),
            contact_id: Some(r.get(3)),
            template_id: Some(r.get(4)),
            template_key: Some(r.get(5)),
            metadata: r.get::<_, Value>(6).as_object().cloned(),
        })
        .collect())
}

/// Maintenance: re-enqueue the rows [`stale_payloads`] finds, every minute.
pub struct RequeueStaleRows {
    pub db: Db,
    pub producer: datamailer_runtime::producer::Producer,
    pub ledger_delay: Duration,
    /// How long a `queued` row may sit untouched before it counts as stale.
    pub older_than: Duration,
    pub limit: i64,
}

impl RequeueStaleRows {
    /// The queue the rows' messages go to.
    pub const QUEUE: &'static str = "transactional-email";
}

#[async_trait]
impl datamailer_runtime::maintenance::MaintenanceTask for RequeueStaleRows {
    fn name(&self) -> &'static str {
        "transactional-stale-rows"
    }

    fn every(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn run(
        &self,
        _ctx: &HandlerContext,
    ) -> anyhow::Result<datamailer_runtime::maintenance::TaskReport> {
        let stale = stale_payloads(
            &self.db,
            self.older_than,
            self.ledger_delay,
            self.limit,
            false,
        )
        .await?;
        let ids: Vec<i64> = stale.iter().map(|p| p.transactional_message_id).collect();
        let bodies: Vec<String> = stale.iter().map(|p| p.to_json()).collect();
        self.producer
            .enqueue(&self.db, Self::QUEUE, bodies)
            .await
            .context("re-enqueueing stale transactional messages")?;
        Ok(datamailer_runtime::maintenance::TaskReport {
            acted_on: ids.len() as u64,
            detail: if ids.is_empty() {
                "nothing stale".into()
            } else {
                format!("re-enqueued {} message(s): {ids:?}", ids.len())
            },
        })
    }
}
