//! Shared fixture of the transactional handler tests: a provisioned client and template in a
//! throwaway database, queued rows as the API writes them, and a scripted mailer where a test
//! needs an SES error class on demand.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datamailer_actors::{TransactionalHandler, TransactionalSettings};
use datamailer_core::contracts::TransactionalEmailV1;
use datamailer_runtime::db::{Db, PoolSettings};
use datamailer_runtime::mailer::capture::CaptureMailer;
use datamailer_runtime::mailer::{
    Mailer, OutgoingEmail, SendError, SendLimiter, SendReceipt, Sender,
};
use datamailer_runtime::{Delivery, HandlerContext};
use datamailer_testkit::TestDb;
use serde_json::Value;
use sqlx::{PgPool, Row};

pub struct Fixture {
    pub test_db: TestDb,
    pub db: Db,
    pub client_id: i64,
    pub template_id: i64,
}

pub async fn fixture() -> Option<Fixture> {
    let test_db = TestDb::create().await?;
    let pool = &test_db.pool;
    let org: i64 =
        sqlx::query_scalar("INSERT INTO organizations (name, slug) VALUES ('o', 'o') RETURNING id")
            .fetch_one(pool)
            .await
            .unwrap();
    let client_id: i64 = sqlx::query_scalar(
        "INSERT INTO clients (organization_id, name, slug, sender_emails, default_sender_id)
         VALUES ($1, 'c', 'c', '[{\"id\":\"news\",\"email\":\"News <news@example.com>\"}]', 'news') RETURNING id",
    )
    .bind(org)
    .fetch_one(pool)
    .await
    .unwrap();
    let template_id: i64 = sqlx::query_scalar(
        "INSERT INTO email_templates (client_id, key, name, subject, text_body)
         VALUES ($1, 'reset', 'Reset', 'template subject', 'template body') RETURNING id",
    )
    .bind(client_id)
    .fetch_one(pool)
    .await
    .unwrap();
    let db = Db::connect(&test_db.url, &PoolSettings::default()).unwrap();
    Some(Fixture {
        test_db,
        db,
        client_id,
        template_id,
    })
}

impl Fixture {
    pub fn pool(&self) -> &PgPool {
        &self.test_db.pool
    }

    /// A queued message as the API would have written it; returns (id, queue body).
    pub async fn queued(&self, email: &str, metadata: Value) -> (i64, String) {
        let contact: i64 = sqlx::query_scalar(
            "INSERT INTO contacts (email, normalized_email) VALUES ($1, $1)
             ON CONFLICT (normalized_email) DO UPDATE SET updated_at = now() RETURNING id",
        )
        .bind(email)
        .fetch_one(self.pool())
        .await
        .unwrap();
        let key = format!("key-{email}-{}", rand_suffix());
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO transactional_messages (client_id, contact_id, template_id, email, from_email_id, from_email,
                 template_key, idempotency_key, subject, html_body, text_body, metadata)
             VALUES ($1, $2, $3, $4, 'news', 'News <news@example.com>', 'reset', $5,
                 'Persisted subject', '<p>persisted html</p>', 'persisted text', $6) RETURNING id",
        )
        .bind(self.client_id)
        .bind(contact)
        .bind(self.template_id)
        .bind(email)
        .bind(&key)
        .bind(&metadata)
        .fetch_one(self.pool())
        .await
        .unwrap();
        let body = TransactionalEmailV1 {
            transactional_message_id: id,
            client_id: self.client_id,
            idempotency_key: key,
            contact_id: Some(contact),
            template_id: Some(self.template_id),
            template_key: Some("reset".into()),
            metadata: metadata.as_object().cloned(),
        }
        .to_json();
        (id, body)
    }

    pub async fn row(&self, id: i64) -> sqlx::postgres::PgRow {
        sqlx::query("SELECT status, ses_message_id, last_error, sent_at FROM transactional_messages WHERE id = $1")
            .bind(id)
            .fetch_one(self.pool())
            .await
            .unwrap()
    }

    pub async fn events(&self, id: i64) -> Vec<(String, Value, Option<i64>, Option<i64>)> {
        sqlx::query("SELECT event_type, metadata, client_id, contact_id FROM email_events WHERE transactional_message_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(self.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    pub async fn captured(&self) -> Vec<sqlx::postgres::PgRow> {
        sqlx::query("SELECT * FROM captured_messages ORDER BY id")
            .fetch_all(self.pool())
            .await
            .unwrap()
    }

    pub fn capture_handler(&self) -> TransactionalHandler {
        let sender = Sender::new(
            Arc::new(CaptureMailer::new(self.db.clone())),
            SendLimiter::unlimited(),
        );
        TransactionalHandler::new(self.db.clone(), sender, TransactionalSettings::default())
    }

    pub fn scripted_handler(&self, mailer: Arc<ScriptedMailer>) -> TransactionalHandler {
        let sender = Sender::new(mailer, SendLimiter::unlimited());
        TransactionalHandler::new(self.db.clone(), sender, TransactionalSettings::default())
    }
}

pub fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A batch context that never stops.
pub fn ctx() -> HandlerContext {
    HandlerContext::unbounded(5)
}

pub fn delivery(body: &str) -> Delivery {
    Delivery {
        id: format!("msg-{}", rand_suffix()),
        receipt: String::new(),
        body: body.into(),
        receive_count: 1,
        sent_at: None,
    }
}

/// Stands in for SES where a test needs an error class on demand (see the module comment).
#[derive(Default)]
pub struct ScriptedMailer {
    pub script: Mutex<VecDeque<Result<SendReceipt, SendError>>>,
    pub sent: Mutex<Vec<OutgoingEmail>>,
}

impl ScriptedMailer {
    pub fn answering(results: Vec<Result<SendReceipt, SendError>>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(results.into()),
            sent: Mutex::default(),
        })
    }
}

#[async_trait]
impl Mailer for ScriptedMailer {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError> {
        self.sent.lock().unwrap().push(email.clone());
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(SendReceipt {
                message_id: "ses-default".into(),
            }))
    }
}
