//! The transactional handler against a real Postgres (facts §6.3 plus the fixed gaps).
//!
//! Sends go to the real capture mailer, except where a test needs an SES error class that no
//! local server produces on demand (throttling, a connection failure): there a scripted
//! mailer stands in for SES and says so. The SES client itself is tested against moto in
//! tests/aws_transactional.rs.

mod common;

use std::time::Duration;

use common::*;
use datamailer_actors::transactional::RequeueStaleRows;
use datamailer_core::contracts::TransactionalEmailV1;
use datamailer_runtime::mailer::{SendError, SendReceipt};
use datamailer_runtime::maintenance::MaintenanceTask;
use datamailer_runtime::producer::Producer;
use datamailer_runtime::{Handler, Outcome};
use serde_json::{json, Value};
use sqlx::Row;

#[tokio::test]
async fn sends_the_persisted_message_and_records_it() {
    let Some(f) = fixture().await else { return };
    let meta = json!({"reply_to": "help@example.com", "cc": ["cc@example.com"], "bcc": ["bcc@example.com"]});
    let (id, body) = f.queued("user@example.com", meta).await;
    // The template changes after the API accepted the message: the persisted copy is sent.
    sqlx::query("UPDATE email_templates SET subject = 'changed'")
        .execute(f.pool())
        .await
        .unwrap();

    let outcomes = f.capture_handler().handle(&ctx(), &[delivery(&body)]).await;
    assert_eq!(outcomes, vec![Outcome::Ack]);

    let captured = f.captured().await;
    assert_eq!(captured.len(), 1);
    let c = &captured[0];
    assert_eq!(c.get::<String, _>("subject"), "Persisted subject");
    assert_eq!(c.get::<String, _>("text_body"), "persisted text");
    assert_eq!(
        c.get::<String, _>("from_email"),
        "News <news@example.com>",
        "display-name sender kept"
    );
    assert_eq!(
        c.get::<Value, _>("to_addresses"),
        json!(["user@example.com"])
    );
    assert_eq!(c.get::<Value, _>("cc_addresses"), json!(["cc@example.com"]));
    assert_eq!(
        c.get::<Value, _>("bcc_addresses"),
        json!(["bcc@example.com"])
    );
    assert_eq!(c.get::<Value, _>("reply_to"), json!(["help@example.com"]));
    assert_eq!(
        c.get::<Value, _>("tags")["datamailer_id"],
        json!(id.to_string())
    );

    let row = f.row(id).await;
    assert_eq!(row.get::<String, _>("status"), "sent");
    let ses_id: String = row.get("ses_message_id");
    assert_eq!(ses_id, c.get::<String, _>("provider_message_id"));
    assert_eq!(row.get::<String, _>("last_error"), "");
    assert!(row
        .get::<Option<chrono::DateTime<chrono::Utc>>, _>("sent_at")
        .is_some());

    let events = f.events(id).await;
    assert_eq!(events.len(), 1);
    let (kind, meta, client, contact) = &events[0];
    assert_eq!(kind, "sent");
    assert_eq!(meta["ses_message_id"], json!(ses_id));
    assert!(meta["sent_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(*client, Some(f.client_id));
    assert!(contact.is_some());
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn headers_and_parts_make_a_raw_message() {
    let Some(f) = fixture().await else { return };
    let meta = json!({
        "headers": {"X-Course": "ml-zoomcamp"},
        "message_parts": [{"content_type": "text/calendar; method=REQUEST", "content": "BEGIN:VCALENDAR", "filename": "invite.ics", "disposition": "attachment"}]
    });
    let (_, body) = f.queued("raw@example.com", meta).await;
    assert_eq!(
        f.capture_handler().handle(&ctx(), &[delivery(&body)]).await,
        vec![Outcome::Ack]
    );
    let raw: String = f.captured().await[0]
        .get::<Option<String>, _>("raw_mime")
        .expect("raw MIME stored");
    assert!(raw.contains("X-Course: ml-zoomcamp"), "{raw}");
    assert!(
        raw.contains("text/calendar") && raw.contains("invite.ics"),
        "{raw}"
    );
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_duplicate_delivery_of_a_finished_row_is_acknowledged_without_sending() {
    let Some(f) = fixture().await else { return };
    for status in ["sent", "skipped", "bounced", "complained", "failed"] {
        let (id, body) = f.queued(&format!("{status}@example.com"), json!({})).await;
        sqlx::query("UPDATE transactional_messages SET status = $2 WHERE id = $1")
            .bind(id)
            .bind(status)
            .execute(f.pool())
            .await
            .unwrap();
        assert_eq!(
            f.capture_handler().handle(&ctx(), &[delivery(&body)]).await,
            vec![Outcome::Ack],
            "{status}"
        );
        assert!(f.events(id).await.is_empty(), "{status}: no event");
    }
    assert!(f.captured().await.is_empty(), "nothing sent");
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_payload_that_does_not_match_its_row_fails_the_row() {
    let Some(f) = fixture().await else { return };
    let (id, body) = f.queued("mismatch@example.com", json!({})).await;
    let mut payload = TransactionalEmailV1::parse(&body).unwrap();
    payload.idempotency_key = "someone-else".into();
    let outcomes = f
        .capture_handler()
        .handle(&ctx(), &[delivery(&payload.to_json())])
        .await;
    assert_eq!(outcomes, vec![Outcome::Ack]);
    let row = f.row(id).await;
    assert_eq!(row.get::<String, _>("status"), "failed");
    assert_eq!(
        row.get::<String, _>("last_error"),
        "queue payload does not match transactional message client_id/idempotency_key"
    );
    let events = f.events(id).await;
    assert_eq!(events[0].0, "failed");
    assert_eq!(events[0].1["reason"], "queue_payload_mismatch");
    assert_eq!(events[0].1["queued_idempotency_key"], "someone-else");
    assert!(f.captured().await.is_empty());
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_transient_ses_error_returns_the_row_to_queued_and_retries() {
    let Some(f) = fixture().await else { return };
    let (id, body) = f.queued("transient@example.com", json!({})).await;
    let mailer = ScriptedMailer::answering(vec![Err(SendError::Transient {
        code: "ConnectionError".into(),
        message: "Could not connect to the endpoint URL".into(),
    })]);
    let outcomes = f
        .scripted_handler(mailer)
        .handle(&ctx(), &[delivery(&body)])
        .await;
    // Not this message's fault: the tree's circuit breaker decides how it is retried.
    assert!(
        matches!(&outcomes[0], Outcome::Unavailable(why) if why.contains("Could not connect")),
        "{outcomes:?}"
    );
    let row = f.row(id).await;
    assert_eq!(row.get::<String, _>("status"), "queued");
    assert_eq!(row.get::<String, _>("ses_message_id"), "");
    assert!(row
        .get::<String, _>("last_error")
        .contains("Could not connect"));
    assert!(
        f.events(id).await.is_empty(),
        "no events for a transient failure"
    );
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_permanent_ses_error_fails_the_row_and_acknowledges() {
    let Some(f) = fixture().await else { return };
    let (id, body) = f.queued("rejected@example.com", json!({})).await;
    let mailer = ScriptedMailer::answering(vec![Err(SendError::Permanent {
        code: "MessageRejected".into(),
        message: "Address rejected".into(),
    })]);
    assert_eq!(
        f.scripted_handler(mailer)
            .handle(&ctx(), &[delivery(&body)])
            .await,
        vec![Outcome::Ack]
    );
    let row = f.row(id).await;
    assert_eq!(row.get::<String, _>("status"), "failed");
    assert_eq!(
        row.get::<String, _>("last_error"),
        "MessageRejected: Address rejected"
    );
    let events = f.events(id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "failed");
    assert_eq!(events[0].1["reason"], "ses_permanent_failure");
    assert_eq!(events[0].1["error"], "MessageRejected: Address rejected");
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_send_whose_record_failed_is_not_sent_again() {
    let Some(f) = fixture().await else { return };
    let (id, body) = f.queued("recordfail@example.com", json!({})).await;
    // Make recording the result fail, as if the database went away right after SES accepted.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_sent() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'database unavailable'; END $$;
         CREATE TRIGGER refuse_sent BEFORE UPDATE ON transactional_messages
         FOR EACH ROW WHEN (NEW.status = 'sent') EXECUTE FUNCTION refuse_sent();",
    )
    .execute(f.pool())
    .await
    .unwrap();
    let mailer = ScriptedMailer::answering(vec![]);
    let handler = f.scripted_handler(mailer.clone());
    let outcomes = handler.handle(&ctx(), &[delivery(&body)]).await;
    assert!(
        matches!(&outcomes[0], Outcome::Retry(why) if why.contains("recording the send result failed")),
        "{outcomes:?}"
    );
    assert_eq!(mailer.sent.lock().unwrap().len(), 1);
    assert_eq!(f.row(id).await.get::<String, _>("status"), "sending");

    // The redelivery finds the row claimed under its lease: no second send, no event; it
    // waits (uncounted) for the lease to end.
    let again = handler.handle(&ctx(), &[delivery(&body)]).await;
    assert!(
        matches!(&again[0], Outcome::Defer { delay, .. } if *delay > Duration::from_secs(890)),
        "{again:?}"
    );
    assert_eq!(mailer.sent.lock().unwrap().len(), 1, "sent twice");
    assert!(f.events(id).await.is_empty());
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn an_expired_lease_is_reconciled_before_sending_again() {
    let Some(f) = fixture().await else { return };
    // Row A: its worker died after the capture mailer accepted it.
    let (a, body_a) = f.queued("a@example.com", json!({})).await;
    assert_eq!(
        f.capture_handler()
            .handle(&ctx(), &[delivery(&body_a)])
            .await,
        vec![Outcome::Ack]
    );
    sqlx::query("UPDATE transactional_messages SET status = 'sending', ses_message_id = '', lease_expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(a)
        .execute(f.pool())
        .await
        .unwrap();
    // Row B: its worker died before sending.
    let (b, body_b) = f.queued("b@example.com", json!({})).await;
    sqlx::query("UPDATE transactional_messages SET status = 'sending', lease_expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(b)
        .execute(f.pool())
        .await
        .unwrap();

    let outcomes = f
        .capture_handler()
        .handle(&ctx(), &[delivery(&body_a), delivery(&body_b)])
        .await;
    assert_eq!(outcomes, vec![Outcome::Ack, Outcome::Ack]);
    let captured = f.captured().await;
    let to = |row: &sqlx::postgres::PgRow| {
        row.get::<Value, _>("to_addresses")[0]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        captured.iter().filter(|r| to(r) == "a@example.com").count(),
        1,
        "A was not sent again"
    );
    assert_eq!(
        captured.iter().filter(|r| to(r) == "b@example.com").count(),
        1,
        "B was sent"
    );
    for id in [a, b] {
        let row = f.row(id).await;
        assert_eq!(row.get::<String, _>("status"), "sent");
        assert!(!row.get::<String, _>("ses_message_id").is_empty());
    }
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn suppression_is_rechecked_at_send_time() {
    let Some(f) = fixture().await else { return };
    let (id, body) = f.queued("bounced-later@example.com", json!({})).await;
    sqlx::query("UPDATE contacts SET hard_bounced_at = now() WHERE normalized_email = 'bounced-later@example.com'")
        .execute(f.pool())
        .await
        .unwrap();
    assert_eq!(
        f.capture_handler().handle(&ctx(), &[delivery(&body)]).await,
        vec![Outcome::Ack]
    );
    assert!(
        f.captured().await.is_empty(),
        "a hard-bounced contact was mailed"
    );
    let row = f.row(id).await;
    assert_eq!(row.get::<String, _>("status"), "skipped");
    let events = f.events(id).await;
    assert_eq!(events[0].0, "skipped");
    assert_eq!(events[0].1["reason"], "hard_bounce");
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn a_mixed_batch_settles_each_message_on_its_own() {
    let Some(f) = fixture().await else { return };
    let (ok, body_ok) = f.queued("ok@example.com", json!({})).await;
    let (transient, body_transient) = f.queued("flaky@example.com", json!({})).await;
    let missing = TransactionalEmailV1 {
        transactional_message_id: 999_999,
        client_id: f.client_id,
        idempotency_key: "gone".into(),
        contact_id: None,
        template_id: None,
        template_key: None,
        metadata: None,
    }
    .to_json();
    let mailer = ScriptedMailer::answering(vec![
        Ok(SendReceipt {
            message_id: "ses-1".into(),
        }),
        Err(SendError::Throttled {
            code: "TooManyRequestsException".into(),
            message: "slow down".into(),
        }),
        Err(SendError::Throttled {
            code: "TooManyRequestsException".into(),
            message: "slow down".into(),
        }),
        Err(SendError::Throttled {
            code: "TooManyRequestsException".into(),
            message: "slow down".into(),
        }),
        Err(SendError::Throttled {
            code: "TooManyRequestsException".into(),
            message: "slow down".into(),
        }),
    ]);
    let batch = [
        delivery(&body_ok),
        delivery("{not json"),
        delivery(&body_transient),
        delivery(r#"{"contract":"transactional-email","version":1,"client_id":1}"#),
        delivery(&missing),
    ];
    let outcomes = f.scripted_handler(mailer).handle(&ctx(), &batch).await;
    assert_eq!(outcomes[0], Outcome::Ack);
    assert!(
        matches!(&outcomes[1], Outcome::DeadLetter(why) if why.contains("not valid JSON")),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(&outcomes[2], Outcome::Unavailable(why) if why.contains("TooManyRequests")),
        "{:?}",
        outcomes[2]
    );
    assert!(
        matches!(&outcomes[3], Outcome::DeadLetter(why) if why.contains("missing required field 'transactional_message_id'")),
        "{:?}",
        outcomes[3]
    );
    assert!(
        matches!(&outcomes[4], Outcome::Retry(why) if why.contains("not found")),
        "{:?}",
        outcomes[4]
    );
    assert_eq!(f.row(ok).await.get::<String, _>("status"), "sent");
    assert_eq!(f.row(transient).await.get::<String, _>("status"), "queued");
    f.test_db.drop_db().await;
}

#[tokio::test]
async fn maintenance_re_enqueues_rows_no_message_will_bring_back_once_per_interval() {
    let Some(f) = fixture().await else { return };
    let (stale, _) = f.queued("stale@example.com", json!({})).await;
    let (_fresh, _) = f.queued("fresh@example.com", json!({})).await;
    let (orphan, _) = f.queued("orphan@example.com", json!({})).await;
    let (held, _) = f.queued("held@example.com", json!({})).await;
    sqlx::query("UPDATE transactional_messages SET updated_at = now() - interval '10 minutes' WHERE id = $1")
        .bind(stale)
        .execute(f.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE transactional_messages SET status = 'sending', lease_expires_at = now() - interval '1 second', updated_at = now() - interval '20 minutes' WHERE id = $1")
        .bind(orphan)
        .execute(f.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE transactional_messages SET status = 'sending', lease_expires_at = now() + interval '10 minutes', updated_at = now() - interval '20 minutes' WHERE id = $1")
        .bind(held)
        .execute(f.pool())
        .await
        .unwrap();
    let older_than = Duration::from_secs(300);
    let dry = datamailer_actors::transactional::stale_payloads(
        &f.db,
        older_than,
        Duration::ZERO,
        100,
        true,
    )
    .await
    .unwrap();
    let ids: Vec<i64> = dry.iter().map(|p| p.transactional_message_id).collect();
    assert_eq!(ids, vec![stale, orphan]);
    assert!(dry
        .iter()
        .all(|p| TransactionalEmailV1::parse(&p.to_json()).is_ok()));
    // An orphan is left alone while the provider's word about it may still be coming.
    let within_grace = datamailer_actors::transactional::stale_payloads(
        &f.db,
        older_than,
        Duration::from_secs(60),
        100,
        true,
    )
    .await
    .unwrap();
    assert_eq!(
        within_grace.len(),
        1,
        "only the queued row: {within_grace:?}"
    );

    let task = RequeueStaleRows {
        db: f.db.clone(),
        producer: Producer::Postgres,
        ledger_delay: Duration::ZERO,
        older_than,
        limit: 100,
    };
    let report = task.run(&ctx()).await.unwrap();
    assert_eq!(report.acted_on, 2, "{report:?}");
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM queue_messages WHERE queue = 'transactional-email' ORDER BY id",
    )
    .fetch_all(f.pool())
    .await
    .unwrap();
    let queued: Vec<i64> = bodies
        .iter()
        .map(|b| {
            TransactionalEmailV1::parse(b)
                .unwrap()
                .transactional_message_id
        })
        .collect();
    assert_eq!(queued, vec![stale, orphan]);
    // Picked rows are touched: the next minute's run does not enqueue them again.
    assert_eq!(task.run(&ctx()).await.unwrap().acted_on, 0);
    f.test_db.drop_db().await;
}
