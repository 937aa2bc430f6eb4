//! The ses-webhooks handler against real Postgres (facts §6.6 written for our code, with the
//! original's gaps fixed): every SES event type in all three shapes the queue carries,
//! correlation, classification, suppression of whom the event names, dedupe under concurrency,
//! reordering, reconciliation of a lost record by the `Send` event, client webhooks, and both
//! reputation guards.

mod common;

use common::{ctx, delivery, fixture, Fixture};
use datamailer_actors::reputation::{self, ReputationGuard};
use datamailer_actors::ses_webhooks::{FeedbackSettings, SesWebhooksHandler};
use datamailer_core::ses_events;
use datamailer_runtime::maintenance::MaintenanceTask;
use datamailer_runtime::{Handler, Outcome};
use datamailer_testkit::ses::{self, Mail, EVENT_TYPES};
use serde_json::{json, Value};
use sqlx::Row;

const AT: &str = "2026-12-04T10:00:03.000Z";

fn settings() -> FeedbackSettings {
    FeedbackSettings {
        min_sample: 100,
        ..Default::default()
    }
}

/// The three shapes of one event: the contract (what `POST /webhooks/ses` enqueues), the raw
/// SNS envelope, the bare SES event.
fn shapes(event: &Value, sns_id: &str) -> [String; 3] {
    let envelope = ses::envelope(event, sns_id);
    let contract =
        ses_events::normalize(envelope.as_object().unwrap(), "2026-12-04T10:00:06+00:00").unwrap();
    [contract.to_json(), envelope.to_string(), event.to_string()]
}

async fn apply(handler: &SesWebhooksHandler, bodies: &[String]) -> Vec<Outcome> {
    let batch: Vec<_> = bodies.iter().map(|b| delivery(b)).collect();
    handler.handle(&ctx(), &batch).await
}

async fn apply_ok(handler: &SesWebhooksHandler, bodies: &[String]) {
    let outcomes = apply(handler, bodies).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Ack), "{outcomes:?}");
}

/// Gives the fixture's client a webhook, so events make callbacks.
async fn with_client_webhook(fx: &Fixture) {
    sqlx::query("UPDATE clients SET cmp_webhook_url = 'https://cmp.example.com/hook', cmp_webhook_token = 't'")
        .execute(fx.pool())
        .await
        .unwrap();
}

/// A transactional message recorded as sent with `ses_id`; returns (message id, contact id).
async fn sent_message(fx: &Fixture, email: &str, ses_id: &str) -> (i64, i64) {
    let (id, _) = fx.queued(email, json!({"order": 7})).await;
    let row = sqlx::query(
        "UPDATE transactional_messages SET status = 'sent', ses_message_id = $2, sent_at = now()
          WHERE id = $1 RETURNING contact_id",
    )
    .bind(id)
    .bind(ses_id)
    .fetch_one(fx.pool())
    .await
    .unwrap();
    (id, row.get(0))
}

/// A `sending` campaign of `n` recipients already sent (`sent_count` = n); returns its id
/// and its recipients' (id, email).
async fn sent_campaign(fx: &Fixture, n: i64) -> (i64, Vec<(i64, String)>) {
    let pool = fx.pool();
    let audience: i64 = sqlx::query_scalar(
        "INSERT INTO audiences (organization_id, name, slug)
         SELECT organization_id, 'News', 'news-' || floor(random() * 1e9)::text FROM clients WHERE id = $1
         RETURNING id",
    )
    .bind(fx.client_id)
    .fetch_one(pool)
    .await
    .unwrap();
    let campaign: i64 = sqlx::query_scalar(
        "INSERT INTO campaigns (client_id, audience_id, subject, status, sending_started_at, sent_count, recipient_count)
         VALUES ($1, $2, 'Hello', 'sending', now(), $3, $3) RETURNING id",
    )
    .bind(fx.client_id)
    .bind(audience)
    .bind(n as i32)
    .fetch_one(pool)
    .await
    .unwrap();
    let rows = sqlx::query(
        "WITH c AS (
           INSERT INTO contacts (email, normalized_email, verified_at)
           SELECT 'r' || g || '-' || $1 || '@example.com', 'r' || g || '-' || $1 || '@example.com', now()
             FROM generate_series(1, $2) g
           RETURNING id, email)
         INSERT INTO campaign_recipients (campaign_id, contact_id, email, status, ses_message_id, sent_at)
         SELECT $1, c.id, c.email, 'sent', 'ses-c' || $1 || '-' || c.email, now() FROM c
         RETURNING id, email",
    )
    .bind(campaign)
    .bind(n)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut recipients: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    recipients.sort();
    (campaign, recipients)
}

fn campaign_mail(campaign: i64, recipient: &(i64, String)) -> Mail {
    Mail::new(&format!("ses-c{campaign}-{}", recipient.1), &recipient.1)
        .tagged("campaign", recipient.0)
}

async fn campaign_counts(fx: &Fixture, id: i64) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('sent', sent_count, 'failed', failed_count, 'delivered', delivered_count,
                'bounce', bounce_count, 'complaint', complaint_count, 'open', open_count,
                'unique_open', unique_open_count, 'click', click_count, 'unique_click', unique_click_count,
                'paused', paused_at IS NOT NULL, 'pause_reason', pause_reason)
           FROM campaigns WHERE id = $1",
    )
    .bind(id)
    .fetch_one(fx.pool())
    .await
    .unwrap()
}

async fn contact_suppression(fx: &Fixture, email: &str) -> (bool, bool) {
    let row = sqlx::query(
        "SELECT hard_bounced_at IS NOT NULL, complained_at IS NOT NULL FROM contacts WHERE normalized_email = $1",
    )
    .bind(email)
    .fetch_one(fx.pool())
    .await
    .unwrap();
    (row.get(0), row.get(1))
}

async fn events_of(fx: &Fixture, column: &str, id: i64) -> Vec<(String, String, Value)> {
    sqlx::query(&format!(
        "SELECT event_type, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), metadata
           FROM email_events WHERE {column} = $1 AND provider_event_id <> '' ORDER BY id"
    ))
    .bind(id)
    .fetch_all(fx.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test]
async fn every_event_type_in_every_shape_is_recorded_on_its_row_at_its_own_time() {
    let Some(fx) = fixture().await else { return };
    let handler = SesWebhooksHandler::new(fx.db.clone(), settings());
    let wanted = [
        ("Send", "sent"),
        ("Reject", "failed"),
        ("Bounce", "bounce"),
        ("Complaint", "complaint"),
        ("Delivery", "delivered"),
        ("Open", "open"),
        ("Click", "click"),
        ("DeliveryDelay", "delivery_delay"),
        ("Rendering Failure", "rendering_failure"),
        ("Subscription", "subscription"),
    ];
    assert_eq!(wanted.len(), EVENT_TYPES.len());
    for (shape, name) in ["contract", "envelope", "bare"].iter().enumerate() {
        for (kind, recorded) in wanted {
            let email = format!(
                "{}-{}@example.com",
                name,
                kind.replace(' ', "").to_lowercase()
            );
            let ses_id = format!("ses-{email}");
            let (id, _) = sent_message(&fx, &email, &ses_id).await;
            // Tags on the contract and bare shapes; the envelope goes by SES message id.
            let mut mail = Mail::new(&ses_id, &email);
            if shape != 1 {
                mail = mail.tagged("transactional", id);
            }
            let body = shapes(&ses::event(kind, &mail, AT), &format!("sns-{email}"))[shape].clone();
            apply_ok(&handler, &[body]).await;
            let events = events_of(&fx, "transactional_message_id", id).await;
            assert_eq!(events.len(), 1, "{name} {kind}: {events:?}");
            let (event_type, at, metadata) = &events[0];
            assert_eq!(event_type, recorded, "{name} {kind}");
            // The event's time (mail time for Send/Reject/Rendering Failure, which have none).
            let expected_at = if ["Send", "Reject", "Rendering Failure"].contains(&kind) {
                "2026-12-04T10:00:00.000Z"
            } else {
                AT
            };
            assert_eq!(at, expected_at, "{name} {kind}");
            assert_eq!(metadata["ses_message_id"], ses_id.as_str());
        }
    }
    // What each changed, once per shape.
    let statuses: Vec<(String, i64)> = sqlx::query(
        "SELECT status, count(*) FROM transactional_messages GROUP BY status ORDER BY status",
    )
    .fetch_all(fx.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(
        statuses,
        vec![
            ("bounced".to_string(), 3),
            ("complained".to_string(), 3),
            ("failed".to_string(), 6),
            ("sent".to_string(), 18)
        ]
    );
    fx.test_db.drop_db().await;
}

#[tokio::test]
async fn a_hard_bounce_suppresses_whom_it_names_and_counts_once_however_often_it_comes() {
    let Some(fx) = fixture().await else { return };
    with_client_webhook(&fx).await;
    let handler = SesWebhooksHandler::new(fx.db.clone(), settings());
    let (campaign, recipients) = sent_campaign(&fx, 3).await;
    let r = &recipients[0];
    let mail = campaign_mail(campaign, r);
    let bounce = ses::bounce(&mail, "Permanent", "General", &[&r.1], AT);
    let [contract, envelope, _] = shapes(&bounce, "sns-hard-1");
    // The contract and the envelope of one SNS message, twice each.
    apply_ok(
        &handler,
        &[contract.clone(), envelope.clone(), contract, envelope],
    )
    .await;
    let status: String = sqlx::query_scalar("SELECT status FROM campaign_recipients WHERE id = $1")
        .bind(r.0)
        .fetch_one(fx.pool())
        .await
        .unwrap();
    assert_eq!(status, "bounced");
    assert_eq!(contact_suppression(&fx, &r.1).await, (true, false));
    assert_eq!(
        contact_suppression(&fx, &recipients[1].1).await,
        (false, false)
    );
    let counts = campaign_counts(&fx, campaign).await;
    assert_eq!(counts["bounce"], 1, "{counts}");
    let events = events_of(&fx, "campaign_recipient_id", r.0).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].2["bounce_class"], "hard");
    assert_eq!(events[0].2["bounce_type"], "Permanent");
    // The client hears of it once, with the audience, the client and the bounce type.
    let callbacks: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM cmp_callbacks WHERE event_type = 'contact.hard_bounced'",
    )
    .fetch_all(fx.pool())
    .await
    .unwrap();
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    assert_eq!(callbacks[0]["email"], r.1.as_str());
    assert!(callbacks[0]["audience"]
        .as_str()
        .unwrap()
        .starts_with("news-"));
    assert_eq!(callbacks[0]["client"], "c");
    assert_eq!(callbacks[0]["metadata"]["bounce_type"], "Permanent");
    assert_eq!(callbacks[0]["metadata"]["campaign_id"], campaign);

    // A transactional message whose cc bounced: the cc is suppressed, the primary is not.
    let (id, contact) = sent_message(&fx, "primary@example.com", "ses-cc").await;
    sqlx::query("INSERT INTO contacts (email, normalized_email) VALUES ('cc@example.com', 'cc@example.com')")
        .execute(fx.pool())
        .await
        .unwrap();
    let mail = Mail::new("ses-cc", "primary@example.com").tagged("transactional", id);
    let cc_bounce = ses::bounce(&mail, "Permanent", "NoEmail", &["CC@Example.com"], AT);
    apply_ok(&handler, &[shapes(&cc_bounce, "sns-cc")[1].clone()]).await;
    assert_eq!(
        contact_suppression(&fx, "cc@example.com").await,
        (true, false)
    );
    assert_eq!(
        contact_suppression(&fx, "primary@example.com").await,
        (false, false)
    );
    let row = sqlx::query("SELECT status, contact_id FROM transactional_messages WHERE id = $1")
        .bind(id)
        .fetch_one(fx.pool())
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "sent");
    assert_eq!(row.get::<i64, _>(1), contact);
    fx.test_db.drop_db().await;
}

#[tokio::test]
async fn transient_general_is_soft_undetermined_is_recorded_and_repeated_soft_bounces_suppress() {
    let Some(fx) = fixture().await else { return };
    with_client_webhook(&fx).await;
    let handler = SesWebhooksHandler::new(
        fx.db.clone(),
        FeedbackSettings {
            soft_bounce_limit: 3,
            ..settings()
        },
    );
    let (id, _) = sent_message(&fx, "soft@example.com", "ses-soft").await;
    let mail = Mail::new("ses-soft", "soft@example.com").tagged("transactional", id);
    let soft = |n: u32, sub: &str| {
        let at = format!("2026-12-04T10:0{n}:00.000Z");
        shapes(
            &ses::bounce(&mail, "Transient", sub, &["soft@example.com"], &at),
            &format!("sns-soft-{n}"),
        )[0]
        .clone()
    };
    // Transient/General (the original called it hard) and Transient/MailboxFull: soft.
    apply_ok(&handler, &[soft(1, "General"), soft(2, "MailboxFull")]).await;
    let row = sqlx::query("SELECT status, last_error FROM transactional_messages WHERE id = $1")
        .bind(id)
        .fetch_one(fx.pool())
        .await
        .unwrap();
    assert_eq!(
        (row.get::<String, _>(0), row.get::<String, _>(1)),
        ("sent".into(), "soft_bounce".into())
    );
    assert_eq!(
        contact_suppression(&fx, "soft@example.com").await,
        (false, false)
    );
    // A delivery after them starts the count again...
    let delivered = ses::event("Delivery", &mail, "2026-12-04T10:03:00.000Z");
    apply_ok(&handler, &[shapes(&delivered, "sns-soft-d")[0].clone()]).await;
    apply_ok(&handler, &[soft(4, "General"), soft(5, "General")]).await;
    assert_eq!(
        contact_suppression(&fx, "soft@example.com").await,
        (false, false),
        "two soft bounces since the delivery"
    );
    // ... and the third since it suppresses.
    apply_ok(&handler, &[soft(6, "MailboxFull")]).await;
    assert_eq!(
        contact_suppression(&fx, "soft@example.com").await,
        (true, false)
    );
    let events = events_of(&fx, "transactional_message_id", id).await;
    assert_eq!(events.last().unwrap().2["suppressed"], "soft_bounce_limit");

    // Undetermined: the event and nothing else.
    let (other, _) = sent_message(&fx, "undetermined@example.com", "ses-und").await;
    let mail = Mail::new("ses-und", "undetermined@example.com").tagged("transactional", other);
    let undetermined = ses::bounce(
        &mail,
        "Undetermined",
        "Undetermined",
        &["undetermined@example.com"],
        AT,
    );
    apply_ok(&handler, &[shapes(&undetermined, "sns-und")[2].clone()]).await;
    let events = events_of(&fx, "transactional_message_id", other).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].2["bounce_class"], "undetermined");
    // The client hears of the delivery and of the soft bounce that suppressed the contact,
    // not of the other soft bounces or the undetermined one as hard ones.
    let callbacks: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM cmp_callbacks ORDER BY id")
            .fetch_all(fx.pool())
            .await
            .unwrap();
    assert_eq!(callbacks, ["message.delivered", "contact.hard_bounced"]);
    assert_eq!(
        contact_suppression(&fx, "undetermined@example.com").await,
        (false, false)
    );
    fx.test_db.drop_db().await;
}

#[tokio::test]
async fn a_complaint_blocks_the_contact_and_feeds_the_clients_webhook() {
    let Some(fx) = fixture().await else { return };
    with_client_webhook(&fx).await;
    let handler = SesWebhooksHandler::new(fx.db.clone(), settings());
    let (id, contact) = sent_message(&fx, "angry@example.com", "ses-angry").await;
    let mail = Mail::new("ses-angry", "angry@example.com");
    apply_ok(
        &handler,
        &[
            shapes(&ses::event("Delivery", &mail, AT), "sns-angry-d")[1].clone(),
            shapes(&ses::event("Complaint", &mail, AT), "sns-angry-c")[1].clone(),
        ],
    )
    .await;
    let row = sqlx::query(
        "SELECT status, delivered_at IS NOT NULL FROM transactional_messages WHERE id = $1",
    )
    .bind(id)
    .fetch_one(fx.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), "complained");
    assert!(row.get::<bool, _>(1));
    assert_eq!(
        contact_suppression(&fx, "angry@example.com").await,
        (false, true)
    );
    let callbacks: Vec<(String, Value)> = sqlx::query(
        "SELECT event_type, payload FROM cmp_callbacks WHERE contact_id = $1 ORDER BY id",
    )
    .bind(contact)
    .fetch_all(fx.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let types: Vec<&str> = callbacks.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["message.delivered", "contact.complained"]);
    assert_eq!(
        callbacks[1].1["metadata"]["order"], 7,
        "the message's metadata"
    );
    assert_eq!(
        callbacks[1].1["metadata"]["complaint_feedback_type"],
        "abuse"
    );
    // The suppression reaches sending: the API's check and the campaign claim read these.
    let blocked: bool = sqlx::query_scalar(
        "SELECT complained_at IS NOT NULL OR hard_bounced_at IS NOT NULL FROM contacts WHERE id = $1",
    )
    .bind(contact)
    .fetch_one(fx.pool())
    .await
    .unwrap();
    assert!(blocked);
    fx.test_db.drop_db().await;
}

#[tokio::test]
async fn opens_clicks_and_deliveries_count_exactly_under_duplicates_concurrency_and_reordering() {
    let Some(fx) = fixture().await else { return };
    let (campaign, recipients) = sent_campaign(&fx, 2).await;
    let mail = campaign_mail(campaign, &recipients[0]);
    let open = shapes(&ses::event("Open", &mail, AT), "sns-open-1")[0].clone();
    let click = shapes(&ses::event("Click", &mail, AT), "sns-click-1")[1].clone();
    let delivery = shapes(
        &ses::event("Delivery", &mail, "2026-12-04T10:00:01.000Z"),
        "sns-d-1",
    )[2]
    .clone();
    // The complaint arrives before the bounce it came after: complained wins either way.
    let bounce = shapes(
        &ses::bounce(&mail, "Permanent", "General", &[&recipients[0].1], AT),
        "sns-b-1",
    )[0]
    .clone();
    let complaint = shapes(&ses::complaint(&mail, &[&recipients[0].1], AT), "sns-c-1")[0].clone();
    // Eight workers at once (each its own writer and connection), each with every event, in
    // different orders.
    let mut tasks = Vec::new();
    for n in 0..8 {
        let handler = SesWebhooksHandler::new(fx.db.clone(), settings());
        let mut bodies = vec![
            open.clone(),
            click.clone(),
            delivery.clone(),
            complaint.clone(),
            bounce.clone(),
        ];
        bodies.rotate_left(n % 5);
        tasks.push(tokio::spawn(async move { apply(&handler, &bodies).await }));
    }
    for task in tasks {
        let outcomes = task.await.unwrap();
        assert!(
            outcomes.iter().all(|o| *o == Outcome::Ack),
            "duplicates are acknowledged, never retried: {outcomes:?}"
        );
    }
    let counts = campaign_counts(&fx, campaign).await;
    assert_eq!(
        counts,
        json!({"sent": 2, "failed": 0, "delivered": 1, "bounce": 1, "complaint": 1, "open": 1,
               "unique_open": 1, "click": 1, "unique_click": 1, "paused": false, "pause_reason": ""})
    );
    let row = sqlx::query(
        "SELECT status, open_count, click_count, first_opened_at IS NOT NULL, delivered_at FROM campaign_recipients WHERE id = $1",
    )
    .bind(recipients[0].0)
    .fetch_one(fx.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), "complained");
    assert_eq!((row.get::<i32, _>(1), row.get::<i32, _>(2)), (1, 1));
    assert!(row.get::<bool, _>(3));
    assert_eq!(
        row.get::<chrono::DateTime<chrono::Utc>, _>(4).to_rfc3339(),
        "2026-12-04T10:00:01+00:00",
        "the delivery's own time, not the mail's"
    );
    assert_eq!(
        events_of(&fx, "campaign_recipient_id", recipients[0].0)
            .await
            .len(),
        5
    );
    // A second open: counted, not unique.
    let handler = SesWebhooksHandler::new(fx.db.clone(), settings());
    let open2 = shapes(&ses::event("Open", &mail, AT), "sns-open-2")[0].clone();
    apply_ok(&handler, &[open2]).await;
    let counts = campaign_counts(&fx, campaign).await;
    assert_eq!(
        (counts["open"].clone(), counts["unique_open"].clone()),
        (json!(2), json!(1))
    );
    fx.test_db.drop_db().await;
}

#[tokio::test]
async fn an_uncorrelated_event_is_stored_without_effect_and_a_bad_record_fails_alone() {
    let Some(fx) = fixture().await else { return };
    let handler = SesWebhooksHandler::new(fx.db.clone(), settings());
    sqlx::query("INSERT INTO contacts (email, normalized_email) VALUES ('stranger@example.com', 'stranger@example.com')")
        .execute(fx.pool())
        .await
        .unwrap();
    let mail = Mail::new("ses-nobody", "stranger@example.com");
    let bounce = shapes(&ses::event("Bounce", &mail, AT), "sns-nobody")[1].clone();
    let mut no_json = ses::envelope(&json!({}), "sns-bad");
    no_json["Message"] = json!("{not json");
    let unknown = ses::envelope(
        &json!({"eventType": "Teleport", "mail": {}}),
        "sns-teleport",
    );
    let outcomes = apply(
        &handler,
        &[
            bounce,
            r#"{"contract": "ses-webhooks", "version": 999}"#.to_string(),
            no_json.to_string(),
            "[]".to_string(),
            unknown.to_string(),
        ],
    )
    .await;
    assert_eq!(outcomes[0], Outcome::Ack);
    assert!(
        matches!(&outcomes[1], Outcome::DeadLetter(why) if why.contains("version")),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(
        outcomes[2],
        Outcome::DeadLetter("invalid SES notification message: Message is not JSON".into())
    );
    assert!(matches!(&outcomes[3], Outcome::DeadLetter(_)));
    assert_eq!(
        outcomes[4],
        Outcome::Ack,
        "an unknown type is kept, not lost"
    );
    let stored: Vec<(String, Option<i64>, Value)> = sqlx::query(
        "SELECT event_type, contact_id, metadata FROM email_events ORDER BY provider_event_id",
    )
    .fetch_all(fx.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    assert_eq!(stored.len(), 2);
    assert_eq!((stored[0].0.as_str(), stored[0].1), ("bounce", None));
    assert_eq!(stored[0].2["ses_message_id"], "ses-nobody");
    assert_eq!(stored[1].0, "unknown");
    assert_eq!(
        stored[1].2["reason"],
        "unsupported SES notification type \"Teleport\""
    );
    assert_eq!(
        contact_suppression(&fx, "stranger@example.com").await,
        (false, false),
        "no suppression for an event that is not about our mail"
    );
    fx.test_db.drop_db().await;
}

#[tokio::test]
async fn a_lost_record_is_settled_by_the_send_event_and_the_row_is_not_sent_again() {
    let Some(fx) = fixture().await else { return };
    let handler = SesWebhooksHandler::new(fx.db.clone(), settings());
    // A worker claimed the row, SES accepted it, and the worker died before its record.
    let (id, body) = fx.queued("lost@example.com", json!({})).await;
    sqlx::query(
        "UPDATE transactional_messages SET status = 'sending', send_attempts = 1,
                lease_expires_at = now() + interval '10 minutes' WHERE id = $1",
    )
    .bind(id)
    .execute(fx.pool())
    .await
    .unwrap();
    let mail = Mail::new("ses-lost", "lost@example.com").tagged("transactional", id);
    apply_ok(
        &handler,
        &[shapes(&ses::event("Send", &mail, AT), "sns-lost")[1].clone()],
    )
    .await;
    let row = fx.row(id).await;
    assert_eq!(row.get::<String, _>("status"), "sent");
    assert_eq!(row.get::<String, _>("ses_message_id"), "ses-lost");
    let ledger: String = sqlx::query_scalar(
        "SELECT source FROM send_ledger WHERE kind = 'transactional' AND row_id = $1",
    )
    .bind(id)
    .fetch_one(fx.pool())
    .await
    .unwrap();
    assert_eq!(ledger, "ses-send-event");
    // The message comes back (its SQS visibility ran out): nothing is sent again.
    let outcomes = fx
        .capture_handler()
        .handle(&ctx(), &[delivery(&body)])
        .await;
    assert_eq!(outcomes, vec![Outcome::Ack]);
    assert!(fx.captured().await.is_empty(), "no second send");
    assert_eq!(fx.row(id).await.get::<String, _>("status"), "sent");

    // The same for a campaign recipient: counted once, by the event.
    let (campaign, recipients) = sent_campaign(&fx, 2).await;
    sqlx::query(
        "UPDATE campaign_recipients SET status = 'sending', send_attempts = 1, ses_message_id = '',
                lease_expires_at = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(recipients[1].0)
    .execute(fx.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE campaigns SET sent_count = 1 WHERE id = $1")
        .bind(campaign)
        .execute(fx.pool())
        .await
        .unwrap();
    let mail = campaign_mail(campaign, &recipients[1]);
    let send = shapes(&ses::event("Send", &mail, AT), "sns-lost-c")[2].clone();
    apply_ok(&handler, &[send.clone(), send]).await;
    let status: String = sqlx::query_scalar("SELECT status FROM campaign_recipients WHERE id = $1")
        .bind(recipients[1].0)
        .fetch_one(fx.pool())
        .await
        .unwrap();
    assert_eq!(status, "sent");
    assert_eq!(campaign_counts(&fx, campaign).await["sent"], 2);
    fx.test_db.drop_db().await;
}

#[tokio::test]
async fn a_campaign_pauses_itself_at_its_bounce_or_complaint_threshold() {
    let Some(fx) = fixture().await else { return };
    let handler = SesWebhooksHandler::new(fx.db.clone(), settings());
    // 100 sent (the minimum sample): 3 hard bounces stay under 4 %, the 4th reaches it.
    let (campaign, recipients) = sent_campaign(&fx, 100).await;
    let bounce = |i: usize| {
        let r = &recipients[i];
        shapes(
            &ses::bounce(
                &campaign_mail(campaign, r),
                "Permanent",
                "General",
                &[&r.1],
                AT,
            ),
            &format!("sns-pause-{i}"),
        )[0]
        .clone()
    };
    apply_ok(&handler, &[bounce(0), bounce(1), bounce(2)]).await;
    assert_eq!(campaign_counts(&fx, campaign).await["paused"], false);
    apply_ok(&handler, &[bounce(3)]).await;
    let counts = campaign_counts(&fx, campaign).await;
    assert_eq!(counts["paused"], true);
    assert_eq!(
        counts["pause_reason"],
        "bounce_rate: 4 hard bounces of 100 sent (4.000%) reached the threshold of 4.000%"
    );
    // One complaint in 1,000 sends (0.1 %) reaches 0.08 %.
    let (other, recipients) = sent_campaign(&fx, 1000).await;
    let r = &recipients[0];
    let complaint = shapes(
        &ses::complaint(&campaign_mail(other, r), &[&r.1], AT),
        "sns-pause-c",
    )[0]
    .clone();
    apply_ok(&handler, &[complaint]).await;
    let counts = campaign_counts(&fx, other).await;
    assert!(
        counts["pause_reason"]
            .as_str()
            .unwrap()
            .starts_with("complaint_rate: 1 complaints of 1000 sent"),
        "{counts}"
    );
    fx.test_db.drop_db().await;
}

#[tokio::test]
async fn the_account_guard_pauses_the_campaign_lane_until_an_operator_resumes_it() {
    let Some(fx) = fixture().await else { return };
    let settings = FeedbackSettings {
        min_sample: 50,
        account_window: 100,
        ..Default::default()
    };
    let handler = SesWebhooksHandler::new(fx.db.clone(), settings);
    let guard = ReputationGuard {
        db: fx.db.clone(),
        settings,
    };
    // 100 transactional sends, as the worker records them; 5 of them hard-bounce (5 %).
    let mut bodies = Vec::new();
    for i in 0..100 {
        let email = format!("t{i}@example.com");
        let (id, contact) = sent_message(&fx, &email, &format!("ses-t{i}")).await;
        sqlx::query(
            "INSERT INTO email_events (transactional_message_id, contact_id, client_id, event_type)
             VALUES ($1, $2, $3, 'sent')",
        )
        .bind(id)
        .bind(contact)
        .bind(fx.client_id)
        .execute(fx.pool())
        .await
        .unwrap();
        if i % 20 == 0 {
            let mail = Mail::new(&format!("ses-t{i}"), &email).tagged("transactional", id);
            bodies.push(shapes(&ses::event("Bounce", &mail, AT), &format!("sns-t{i}"))[0].clone());
        }
    }
    let (campaign, _) = sent_campaign(&fx, 10).await;
    guard.run(&ctx()).await.unwrap();
    assert_eq!(campaign_counts(&fx, campaign).await["paused"], false);
    apply_ok(&handler, &bodies).await;
    let report = guard.run(&ctx()).await.unwrap();
    assert_eq!(report.acted_on, 1, "{report:?}");
    let counts = campaign_counts(&fx, campaign).await;
    assert!(
        counts["pause_reason"]
            .as_str()
            .unwrap()
            .starts_with("account_reputation: bounce_rate: 5 hard bounces in the last 100 sends"),
        "{counts}"
    );
    // Transactional mail is not held: the transactional queue is not paused.
    let paused: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_pauses")
        .fetch_one(fx.pool())
        .await
        .unwrap();
    assert_eq!(paused, 0);
    // A campaign started while the guard holds is paused on the next pass.
    let (late, _) = sent_campaign(&fx, 10).await;
    guard.run(&ctx()).await.unwrap();
    assert_eq!(campaign_counts(&fx, late).await["paused"], true);
    // The operator resumes: both carry on, and the old bounces do not trip it again.
    assert_eq!(reputation::clear(&fx.db).await.unwrap(), (true, 2));
    guard.run(&ctx()).await.unwrap();
    assert_eq!(campaign_counts(&fx, campaign).await["paused"], false);
    assert_eq!(campaign_counts(&fx, late).await["paused"], false);
    let rates = reputation::rates(&fx.db, 100).await.unwrap();
    assert_eq!((rates.sends, rates.tripped), (0, false));
    fx.test_db.drop_db().await;
}

#[tokio::test]
async fn with_the_database_away_events_come_back_uncounted() {
    // Nothing listens on port 1: every connection attempt fails at once.
    let db = datamailer_runtime::db::Db::connect(
        "postgres://postgres@127.0.0.1:1/none",
        &datamailer_runtime::db::PoolSettings::default(),
    )
    .unwrap();
    let handler = SesWebhooksHandler::new(db, settings());
    let mail = Mail::new("ses-away", "away@example.com");
    let outcomes = apply(
        &handler,
        &[
            shapes(&ses::event("Delivery", &mail, AT), "sns-away-1")[1].clone(),
            shapes(&ses::event("Open", &mail, AT), "sns-away-2")[1].clone(),
        ],
    )
    .await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Unavailable(_))),
        "{outcomes:?}"
    );
}

#[test]
fn the_tags_read_here_are_the_ones_the_senders_write() {
    // core cannot depend on the runtime (it does no I/O), so it names the tags again.
    assert_eq!(
        datamailer_core::feedback::KIND_TAG,
        datamailer_runtime::ledger::KIND_TAG
    );
    assert_eq!(
        datamailer_core::feedback::ID_TAG,
        datamailer_runtime::ledger::ID_TAG
    );
}
