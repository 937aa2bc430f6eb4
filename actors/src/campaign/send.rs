//! Sending one `campaign-email` batch (facts §3.6, with its gaps fixed):
//!
//! 1. One statement claims every `pending` recipient of the batch (`sending`, a lease, the
//!    attempt counter bumped as the fence) while the campaign is `sending` and not paused, and
//!    re-checks each contact's suppression and unsubscribes as of now. Ids that are not this
//!    campaign's are ignored, not fatal: one bad recipient never fails its batch.
//! 2. Recipients whose lease expired (their worker died around the SES call) are reclaimed and
//!    reconciled against the send ledger before they may be sent again.
//! 3. Sends go out in chunks of about a second's sending through the shared sender (campaign
//!    lane); between chunks the campaign's status is read again, so pause and cancel take
//!    effect within a second.
//! 4. One statement records every result (fenced by the attempt counter), moves the counters
//!    by increments and appends the events. Rows not sent go back to `pending`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use datamailer_core::campaign::{list_unsubscribe_headers, recipient_links, recipient_tokens};
use datamailer_core::contracts::CampaignEmailV1;
use datamailer_core::tracking::TrackingKeys;
use datamailer_runtime::db::{self, Db};
use datamailer_runtime::ledger::{SendLedger, ID_TAG, KIND_TAG};
use datamailer_runtime::mailer::{Lane, OutgoingEmail, SendError};
use datamailer_runtime::{HandlerContext, Outcome};

use super::{CampaignHandler, PreparedCampaign, KIND};

/// Recipients sent between two looks at the campaign's status: about a second of sending at
/// the limiter's rate (at least 10), the whole batch when nothing limits the rate.
fn chunk_size(rate: Option<f64>) -> usize {
    match rate {
        Some(rate) => (rate.ceil() as usize).clamp(10, 1000),
        None => usize::MAX,
    }
}

const CLAIM_SQL: &str = "
WITH c AS (
    SELECT id, audience_id, client_id, category_tag FROM campaigns
     WHERE id = $1 AND status = 'sending' AND paused_at IS NULL
),
claimed AS (
    -- `IS TRUE` keeps the campaign and status tests out of the (campaign_id, status) index:
    -- with statistics older than the snapshot the planner would otherwise scan every pending
    -- row of the campaign for each batch (quadratic); this way the ids go by primary key.
    UPDATE campaign_recipients r
       SET status = 'sending', lease_expires_at = now() + make_interval(secs => $3),
           send_attempts = r.send_attempts + 1, updated_at = now()
      FROM c
     WHERE r.id = ANY ($2) AND (r.campaign_id = c.id AND r.status = 'pending') IS TRUE
    RETURNING r.id, r.send_attempts, r.contact_id, r.email
)
SELECT cl.id, cl.send_attempts, cl.email,
       CASE
           WHEN ct.hard_bounced_at IS NOT NULL THEN 'hard_bounce'
           WHEN ct.complained_at IS NOT NULL THEN 'complaint'
           WHEN ct.global_unsubscribed_at IS NOT NULL THEN 'global_unsubscribe'
           WHEN aud.status = 'unsubscribed' THEN 'audience_unsubscribe'
           WHEN cli.status = 'unsubscribed' THEN 'client_unsubscribe'
           WHEN c.category_tag <> '' AND EXISTS (
               SELECT 1 FROM category_preferences p
                WHERE p.contact_id = cl.contact_id AND p.audience_id = c.audience_id
                  AND p.client_id = c.client_id AND p.tag = c.category_tag AND NOT p.enabled)
               THEN 'client_unsubscribe'
           ELSE ''
       END
  FROM claimed cl
  CROSS JOIN c
  JOIN contacts ct ON ct.id = cl.contact_id
  LEFT JOIN subscriptions aud ON aud.contact_id = cl.contact_id AND aud.audience_id = c.audience_id
                             AND aud.client_id IS NULL
  LEFT JOIN subscriptions cli ON cli.contact_id = cl.contact_id AND cli.audience_id = c.audience_id
                             AND cli.client_id = c.client_id";

/// `sending` rows of the batch whose lease ended more than the ledger's delay ago.
const RECLAIM_SQL: &str = "
UPDATE campaign_recipients
   SET lease_expires_at = now() + make_interval(secs => $3),
       send_attempts = send_attempts + 1, updated_at = now()
 WHERE id = ANY ($2) AND campaign_id = $1 AND status = 'sending'
   AND lease_expires_at < now() - make_interval(secs => $4)
RETURNING id, send_attempts, email";

/// Rows of the batch another delivery holds, and how long until their lease (plus the
/// ledger's delay) ends.
const HELD_SQL: &str = "
SELECT coalesce(max(extract(epoch FROM lease_expires_at - now())), 0)::float8, count(*)
  FROM campaign_recipients WHERE id = ANY ($1) AND campaign_id = $2 AND status = 'sending'";

/// Every result in one statement: the row (fenced), the campaign's counters, the events.
const RECORD_SQL: &str = "
WITH r AS (
    SELECT * FROM unnest($2::bigint[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[])
        AS r(id, token, status, ses_message_id, error, skip_reason)
),
updated AS (
    UPDATE campaign_recipients cr
       SET status = r.status,
           ses_message_id = CASE WHEN r.status = 'sent' THEN r.ses_message_id ELSE cr.ses_message_id END,
           sent_at = CASE WHEN r.status = 'sent' THEN now() ELSE cr.sent_at END,
           skip_reason = CASE WHEN r.status = 'skipped' THEN r.skip_reason ELSE cr.skip_reason END,
           last_error = r.error, lease_expires_at = NULL, updated_at = now()
      FROM r
     WHERE cr.id = r.id AND cr.campaign_id = $1 AND cr.status = 'sending' AND cr.send_attempts = r.token
    RETURNING cr.id, cr.contact_id, cr.status, cr.ses_message_id, r.skip_reason, r.error
),
counted AS (
    UPDATE campaigns c
       SET sent_count = c.sent_count + (SELECT count(*) FROM updated WHERE status = 'sent'),
           failed_count = c.failed_count + (SELECT count(*) FROM updated WHERE status = 'failed'),
           skipped_count = c.skipped_count + (SELECT count(*) FROM updated WHERE status = 'skipped'),
           recipient_count = c.recipient_count - (SELECT count(*) FROM updated WHERE status = 'skipped'),
           updated_at = now()
     WHERE c.id = $1 AND EXISTS (SELECT 1 FROM updated WHERE status <> 'pending')
    RETURNING c.client_id, c.audience_id
)
INSERT INTO email_events (campaign_id, campaign_recipient_id, contact_id, client_id, audience_id,
                          event_type, metadata)
SELECT $1, u.id, u.contact_id, k.client_id, k.audience_id,
       CASE u.status WHEN 'sent' THEN 'sent' WHEN 'failed' THEN 'failed' ELSE 'skipped' END,
       CASE u.status
           WHEN 'sent' THEN jsonb_build_object('ses_message_id', u.ses_message_id)
           WHEN 'failed' THEN jsonb_build_object('error', u.error)
           ELSE jsonb_build_object('reason', u.skip_reason, 'stage', 'send')
       END
  FROM updated u CROSS JOIN counted k
 WHERE u.status <> 'pending'";

/// Rows given back to `pending` (`$2`, or every pending row when `$2` is NULL) of a campaign
/// cancelled meanwhile are skipped as the cancel skipped the others (no event). Run after
/// the record commits; what a cancel racing both statements leaves behind, the `campaigns`
/// maintenance task skips with this same statement.
pub(super) const SKIP_CANCELLED_SQL: &str = "
WITH s AS (
    UPDATE campaign_recipients r
       SET status = 'skipped', skip_reason = 'campaign_cancelled', last_error = 'campaign_cancelled',
           updated_at = now()
      FROM campaigns c
     WHERE c.id = $1 AND c.status = 'cancelled' AND r.campaign_id = c.id AND r.status = 'pending'
       AND ($2::bigint[] IS NULL OR r.id = ANY ($2))
    RETURNING 1
)
UPDATE campaigns
   SET skipped_count = skipped_count + (SELECT count(*) FROM s),
       recipient_count = greatest(recipient_count - (SELECT count(*) FROM s), 0), updated_at = now()
 WHERE id = $1 AND EXISTS (SELECT 1 FROM s)";

/// A recipient we hold.
struct Claim {
    id: i64,
    token: i32,
    email: String,
}

/// A result to record.
struct SendResult {
    id: i64,
    token: i32,
    status: &'static str,
    ses_message_id: String,
    error: String,
    skip_reason: String,
}

impl CampaignHandler {
    pub(super) async fn send_batch(
        &self,
        ctx: &HandlerContext,
        batch: &CampaignEmailV1,
    ) -> anyhow::Result<Outcome> {
        let campaign_id = batch.campaign_id;
        let Some(campaign) = self.campaign(campaign_id).await? else {
            return Ok(Outcome::DeadLetter(format!(
                "campaign {campaign_id} does not exist"
            )));
        };
        let ids = &batch.campaign_recipient_ids;
        let lease = self.settings.lease.as_secs_f64();
        let grace = self.sender.ledger_delay().as_secs_f64();

        let conn = self
            .db
            .get()
            .await
            .context("getting a database connection")?;
        let claim = conn.prepare_cached(CLAIM_SQL).await?;
        let mut claims = Vec::new();
        let mut results = Vec::new();
        for row in conn
            .query(&claim, &[&campaign_id, ids, &lease])
            .await
            .context("claiming campaign recipients")?
        {
            let skip: String = row.get(3);
            let claim = Claim {
                id: row.get(0),
                token: row.get(1),
                email: row.get(2),
            };
            if skip.is_empty() {
                claims.push(claim);
            } else {
                results.push(SendResult {
                    id: claim.id,
                    token: claim.token,
                    status: "skipped",
                    ses_message_id: String::new(),
                    error: String::new(),
                    skip_reason: skip,
                });
            }
        }
        // Orphaned claims: reconcile with the ledger before sending again.
        let mut reclaimed = Vec::new();
        for row in conn
            .query(RECLAIM_SQL, &[&campaign_id, ids, &lease, &grace])
            .await
            .context("reclaiming expired campaign leases")?
        {
            reclaimed.push(Claim {
                id: row.get(0),
                token: row.get(1),
                email: row.get(2),
            });
        }
        drop(conn);
        if !reclaimed.is_empty() {
            let reclaimed_ids: Vec<i64> = reclaimed.iter().map(|c| c.id).collect();
            tracing::warn!(campaign_id, ids = ?reclaimed_ids, "reclaiming campaign recipients whose lease expired");
            let accepted = self.ledger.accepted(KIND, &reclaimed_ids).await?;
            for claim in reclaimed {
                match accepted.get(&claim.id) {
                    Some(ses_id) => results.push(SendResult {
                        id: claim.id,
                        token: claim.token,
                        status: "sent",
                        ses_message_id: ses_id.clone(),
                        error: String::new(),
                        skip_reason: String::new(),
                    }),
                    None => claims.push(claim),
                }
            }
        }

        let keys = self.keys().await?;
        let chunk_len = chunk_size(self.sender.limiter().rate());
        let mut outcome = Outcome::Ack;
        let mut pending = claims.into_iter().peekable();
        let mut first = true;
        while pending.peek().is_some() {
            // The claim has just checked the campaign; later chunks look again.
            if !first && !self.still_sending(campaign_id).await? {
                break;
            }
            first = false;
            let chunk: Vec<Claim> = pending.by_ref().take(chunk_len).collect();
            let emails: Vec<OutgoingEmail> = chunk
                .iter()
                .map(|c| self.email_for(&campaign, keys, c))
                .collect();
            let sent = self.sender.send_batch(Lane::Campaign, &emails, ctx).await;
            for (claim, result) in chunk.into_iter().zip(sent) {
                results.push(match result {
                    Ok(receipt) => SendResult {
                        id: claim.id,
                        token: claim.token,
                        status: "sent",
                        ses_message_id: receipt.message_id,
                        error: String::new(),
                        skip_reason: String::new(),
                    },
                    Err(e @ SendError::Permanent { .. }) => SendResult {
                        id: claim.id,
                        token: claim.token,
                        status: "failed",
                        ses_message_id: String::new(),
                        error: truncate(&e.to_string()),
                        skip_reason: String::new(),
                    },
                    Err(e) => {
                        outcome = e.not_sent_outcome();
                        release(claim, &e.to_string())
                    }
                });
            }
            if !matches!(outcome, Outcome::Ack) {
                break;
            }
        }
        // Not reached (paused, cancelled, stopped, or SES failing): back to pending.
        for claim in pending {
            results.push(release(claim, ""));
        }
        record(&self.db, campaign_id, &results).await?;
        let released: Vec<i64> = results
            .iter()
            .filter(|r| r.status == "pending")
            .map(|r| r.id)
            .collect();
        if !released.is_empty() {
            self.db
                .get()
                .await?
                .execute(SKIP_CANCELLED_SQL, &[&campaign_id, &Some(released)])
                .await
                .context("skipping the given-back rows of a cancelled campaign")?;
        }

        // Rows held by another delivery (only possible when some id was neither claimed nor
        // reclaimed here): come back when their lease ends.
        let conn = self.db.get().await?;
        let (left, count): (f64, i64) = if results.len() < ids.len() {
            let held = conn.query_one(HELD_SQL, &[ids, &campaign_id]).await?;
            (held.get(0), held.get(1))
        } else {
            (0.0, 0)
        };
        if count > 0 && matches!(outcome, Outcome::Ack) {
            outcome = Outcome::Defer {
                reason: format!(
                    "{count} recipients of this batch are being sent by another delivery"
                ),
                delay: Duration::from_secs_f64(left.max(0.0) + grace + 1.0),
            };
        }
        conn.execute(super::fanout::FINISH_SQL, &[&campaign_id])
            .await?;
        Ok(outcome)
    }

    /// Whether the campaign may still send (not paused, cancelled or finished).
    async fn still_sending(&self, campaign_id: i64) -> anyhow::Result<bool> {
        let conn = self.db.get().await?;
        let row = conn
            .query_opt(
                "SELECT 1 FROM campaigns WHERE id = $1 AND status = 'sending' AND paused_at IS NULL",
                &[&campaign_id],
            )
            .await?;
        Ok(row.is_some())
    }

    fn email_for(
        &self,
        campaign: &PreparedCampaign,
        keys: &TrackingKeys,
        claim: &Claim,
    ) -> OutgoingEmail {
        self.email_to(campaign, keys, claim.id, &claim.email)
    }

    /// The campaign's mail to `to`, with the tokens of `recipient_id`.
    pub(super) fn email_to(
        &self,
        campaign: &PreparedCampaign,
        keys: &TrackingKeys,
        recipient_id: i64,
        to: &str,
    ) -> OutgoingEmail {
        let (tracking, unsubscribe) = recipient_tokens(keys, recipient_id);
        let (html, text) = campaign.body.render(
            &self.settings.public_base_url,
            keys,
            &tracking,
            &unsubscribe,
        );
        let links = recipient_links(&self.settings.public_base_url, &tracking, &unsubscribe);
        OutgoingEmail {
            from: campaign.from.clone(),
            to: vec![to.to_string()],
            cc: Vec::new(),
            bcc: Vec::new(),
            reply_to: Vec::new(),
            subject: campaign.subject.clone(),
            html_body: html,
            text_body: text,
            headers: list_unsubscribe_headers(
                &links.unsubscribe,
                self.settings.unsubscribe_mailto.as_deref(),
            ),
            parts: Vec::new(),
            tags: vec![
                (KIND_TAG.into(), KIND.into()),
                (ID_TAG.into(), recipient_id.to_string()),
                ("datamailer_campaign".into(), campaign.id.to_string()),
            ],
            configuration_set: self.settings.configuration_set.clone(),
        }
    }
}

/// Writes the results, retrying briefly: a failure here is what could cause a double send
/// (the rows stay `sending` under their lease, so a redelivery does not send them again).
async fn record(db: &Db, campaign_id: i64, results: &[SendResult]) -> anyhow::Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = results.iter().map(|r| r.id).collect();
    let tokens: Vec<i32> = results.iter().map(|r| r.token).collect();
    let statuses: Vec<&str> = results.iter().map(|r| r.status).collect();
    let ses: Vec<&str> = results.iter().map(|r| r.ses_message_id.as_str()).collect();
    let errors: Vec<&str> = results.iter().map(|r| r.error.as_str()).collect();
    let skips: Vec<&str> = results.iter().map(|r| r.skip_reason.as_str()).collect();
    db::with_retries(|| async {
        let conn = db.get().await?;
        let record = conn.prepare_cached(RECORD_SQL).await?;
        conn.execute(
            &record,
            &[
                &campaign_id,
                &ids,
                &tokens,
                &statuses,
                &ses,
                &errors,
                &skips,
            ],
        )
        .await?;
        anyhow::Ok(())
    })
    .await
    .context("recording campaign send results")?;
    let sent = statuses.iter().filter(|s| **s == "sent").count();
    metrics::counter!("datamailer_campaign_recipients_sent_total").increment(sent as u64);
    Ok(())
}

/// `sending` rows of cancelled campaigns whose lease ended (their worker died around the SES
/// call after the cancel): `sent` when the ledger saw SES accept them, else skipped as
/// cancelled; then any `pending` row a cancelled campaign still has is skipped. No cancelled
/// campaign is left with a recipient pending or in flight.
const CANCELLED_IN_FLIGHT_SQL: &str = "
SELECT r.campaign_id, r.id, r.send_attempts
  FROM campaign_recipients r JOIN campaigns c ON c.id = r.campaign_id
 WHERE c.status = 'cancelled' AND r.status = 'sending'
   AND r.lease_expires_at < now() - make_interval(secs => $1)
 ORDER BY r.campaign_id LIMIT 1000";

pub(super) async fn settle_cancelled(
    db: &Db,
    ledger: &SendLedger,
    ledger_delay: Duration,
) -> anyhow::Result<u64> {
    let rows = db
        .get()
        .await?
        .query(CANCELLED_IN_FLIGHT_SQL, &[&ledger_delay.as_secs_f64()])
        .await
        .context("finding in-flight recipients of cancelled campaigns")?;
    let mut by_campaign: BTreeMap<i64, Vec<(i64, i32)>> = BTreeMap::new();
    for row in &rows {
        by_campaign
            .entry(row.get(0))
            .or_default()
            .push((row.get(1), row.get(2)));
    }
    for (campaign_id, claims) in by_campaign {
        let ids: Vec<i64> = claims.iter().map(|(id, _)| *id).collect();
        let accepted = ledger.accepted(KIND, &ids).await?;
        let results: Vec<SendResult> = claims
            .into_iter()
            .map(|(id, token)| match accepted.get(&id) {
                Some(ses_id) => SendResult {
                    id,
                    token,
                    status: "sent",
                    ses_message_id: ses_id.clone(),
                    error: String::new(),
                    skip_reason: String::new(),
                },
                // Given back: the record skips it, the campaign being cancelled.
                None => release(
                    Claim {
                        id,
                        token,
                        email: String::new(),
                    },
                    "",
                ),
            })
            .collect();
        record(db, campaign_id, &results).await?;
    }
    // Rows given back to `pending` here, or by a send racing the cancel.
    let conn = db.get().await?;
    let mut skipped = 0;
    for row in conn
        .query(CANCELLED_PENDING_SQL, &[])
        .await
        .context("finding pending recipients of cancelled campaigns")?
    {
        let campaign_id: i64 = row.get(0);
        skipped += conn
            .execute(SKIP_CANCELLED_SQL, &[&campaign_id, &None::<Vec<i64>>])
            .await
            .context("skipping pending recipients of a cancelled campaign")?;
    }
    Ok(rows.len() as u64 + skipped)
}

const CANCELLED_PENDING_SQL: &str = "
SELECT id FROM campaigns c
 WHERE status = 'cancelled'
   AND EXISTS (SELECT 1 FROM campaign_recipients r WHERE r.campaign_id = c.id AND r.status = 'pending')";

/// A claimed row given back: `pending`, no event.
fn release(claim: Claim, error: &str) -> SendResult {
    SendResult {
        id: claim.id,
        token: claim.token,
        status: "pending",
        ses_message_id: String::new(),
        error: truncate(error),
        skip_reason: String::new(),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(2000).collect()
}
