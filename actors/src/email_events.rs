//! The email-events tree: opens and clicks the tracking endpoints enqueued (async tracking),
//! applied in one statement per batch through `campaign_engage` (migration 0017), the same
//! function the endpoints call directly. Each message's idempotency key becomes its event's
//! `provider_event_id`, so a redelivered message counts nothing twice.

use async_trait::async_trait;
use datamailer_core::contracts::{EmailEventType, EmailEventV1};
use datamailer_runtime::db::{self, Db};
use datamailer_runtime::{Delivery, Handler, HandlerContext, Outcome};

pub struct EmailEventsHandler {
    db: Db,
}

impl EmailEventsHandler {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

const APPLY_SQL: &str = "
SELECT campaign_engage(e.recipient, e.kind, e.head, e.url, e.at, e.key)
  FROM unnest($1::bigint[], $2::text[], $3::bool[], $4::text[], $5::timestamptz[], $6::text[])
       WITH ORDINALITY AS e(recipient, kind, head, url, at, key, n)
 ORDER BY e.n";

#[async_trait]
impl Handler for EmailEventsHandler {
    async fn handle(&self, _ctx: &HandlerContext, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut index = Vec::new();
        let (mut recipients, mut kinds, mut heads, mut urls, mut ats, mut keys) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for (i, delivery) in batch.iter().enumerate() {
            let event = match EmailEventV1::parse(&delivery.body) {
                Ok(e) => e,
                Err(e) => {
                    outcomes[i] = Some(Outcome::DeadLetter(format!(
                        "invalid email-events message: {e}"
                    )));
                    continue;
                }
            };
            let (Some(recipient), EmailEventType::Open | EmailEventType::Click) =
                (event.campaign_recipient_id, event.event_type)
            else {
                outcomes[i] = Some(Outcome::DeadLetter(
                    "only campaign opens and clicks are applied from this queue (unsubscribes are \
                     applied by the unsubscribe endpoint itself)"
                        .into(),
                ));
                continue;
            };
            let Some(at) = datamailer_core::fields::parse_iso_datetime(&event.occurred_at) else {
                outcomes[i] = Some(Outcome::DeadLetter(format!(
                    "invalid field 'occurred_at': {}",
                    event.occurred_at
                )));
                continue;
            };
            let head = event
                .metadata
                .as_ref()
                .and_then(|m| m.get("head"))
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            index.push(i);
            recipients.push(recipient);
            kinds.push(event.event_type.as_str().to_string());
            heads.push(head);
            urls.push(event.url.unwrap_or_default());
            ats.push(at);
            keys.push(format!("email-events:{}", event.idempotency_key));
        }
        if !index.is_empty() {
            let result = async {
                let conn = self.db.get().await?;
                let apply = conn.prepare_cached(APPLY_SQL).await?;
                conn.query(&apply, &[&recipients, &kinds, &heads, &urls, &ats, &keys])
                    .await?;
                anyhow::Ok(())
            }
            .await;
            let outcome = match result {
                // A recipient that no longer exists (its campaign deleted) has nothing to count.
                Ok(()) => Outcome::Ack,
                Err(e) if db::is_unavailable(&e) => Outcome::Unavailable(format!("{e:#}")),
                Err(e) => Outcome::Retry(format!("{e:#}")),
            };
            for i in index {
                outcomes[i] = Some(outcome.clone());
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Retry("not handled".into())))
            .collect()
    }
}
