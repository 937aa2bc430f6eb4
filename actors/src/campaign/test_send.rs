//! Test sends (`campaign-test-send`): the campaign as recipients get it, to the addresses the
//! client asked for, with tokens that name no recipient (signed for id 0, which nothing
//! accepts), so its links and pixel are inert, as the original's were. Sent on the
//! transactional lane: someone is waiting for it.

use anyhow::Context;
use datamailer_core::contracts::CampaignTestSendV1;
use datamailer_runtime::ledger::{ID_TAG, KIND_TAG};
use datamailer_runtime::mailer::{Lane, OutgoingEmail};
use datamailer_runtime::{HandlerContext, Outcome};

use super::CampaignHandler;

/// The `datamailer_kind` tag of test mail (its id tag is the test send's row).
pub const TEST_KIND: &str = "campaign_test";

impl CampaignHandler {
    pub(super) async fn test_send(
        &self,
        ctx: &HandlerContext,
        message: &CampaignTestSendV1,
    ) -> anyhow::Result<Outcome> {
        let Some(campaign) = self.campaign(message.campaign_id).await? else {
            return Ok(Outcome::DeadLetter(format!(
                "campaign {} does not exist",
                message.campaign_id
            )));
        };
        let rows: Vec<(i64, String)> = self
            .db
            .get()
            .await?
            .query(
                "SELECT id, email FROM campaign_test_sends
                  WHERE id = ANY ($1) AND campaign_id = $2 AND status = 'queued' ORDER BY id",
                &[&message.test_send_ids, &message.campaign_id],
            )
            .await
            .context("reading test sends")?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if rows.is_empty() {
            return Ok(Outcome::Ack);
        }
        let keys = self.keys().await?;
        let emails: Vec<OutgoingEmail> = rows
            .iter()
            .map(|(id, to)| {
                let mut email = self.email_to(&campaign, keys, 0, to);
                email.tags = vec![
                    (KIND_TAG.into(), TEST_KIND.into()),
                    (ID_TAG.into(), id.to_string()),
                    (
                        "datamailer_campaign".into(),
                        message.campaign_id.to_string(),
                    ),
                ];
                email
            })
            .collect();
        let results = self
            .sender
            .send_batch(Lane::Transactional, &emails, ctx)
            .await;
        let mut ids = Vec::new();
        let mut statuses = Vec::new();
        let mut ses_ids = Vec::new();
        let mut errors = Vec::new();
        for ((id, _), result) in rows.iter().zip(results) {
            ids.push(*id);
            match result {
                Ok(receipt) => {
                    statuses.push("sent");
                    ses_ids.push(receipt.message_id);
                    errors.push(String::new());
                }
                Err(e) => {
                    statuses.push("failed");
                    ses_ids.push(String::new());
                    errors.push(e.to_string());
                }
            }
        }
        self.db
            .get()
            .await?
            .execute(
                "UPDATE campaign_test_sends t
                    SET status = r.status, ses_message_id = r.ses, error = r.error,
                        sent_at = CASE WHEN r.status = 'sent' THEN now() END
                   FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS r(id, status, ses, error)
                  WHERE t.id = r.id",
                &[&ids, &statuses, &ses_ids, &errors],
            )
            .await
            .context("recording test sends")?;
        Ok(Outcome::Ack)
    }
}
