//! The transactional send writer: the API's sends persisted by group commit.
//!
//! Send handlers hand their validated, rendered and decided message to a
//! [`datamailer_runtime::writer::BatchWriter`] over [`SendSink`]; the writer takes every message
//! waiting and persists them with ONE statement, atomic on its own: its CTEs upsert the
//! contacts, insert the messages (`ON CONFLICT DO NOTHING` on the idempotency key), their events
//! and, on the embedded queue, their queue messages. Batching, dedupe of repeated idempotency
//! keys in a batch (a replay of the first), isolation of a failed batch and restarts are the
//! runtime writer's.
//!
//! The queue body is built by `datamailer-core` with placeholder ids; the statement sets the
//! message and contact ids it generated (`body::jsonb || {...}`), so the body needs no extra
//! round trip. For SQS the bodies are built after the commit from the returned ids.
//!
//! Rows are written in a fixed order (contacts by normalized email, messages by
//! (client, idempotency key)), so concurrent writers cannot deadlock each other. The sink keeps
//! one pooled connection while there is work (so writes never queue behind reads for a
//! connection) and gives it back when the writer goes idle.

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datamailer_core::contracts::TransactionalEmailV1;
use datamailer_core::transactional::DeliveryDecision;
use datamailer_runtime::producer::Producer;
use datamailer_runtime::writer::{BatchSink, BatchWriter, WriterSettings};
use serde_json::{json, Map, Value};
use sqlx::{PgConnection, PgPool, Row};

use crate::held_connection::HeldConnection;

/// The queue transactional messages go to.
pub const QUEUE: &str = "transactional-email";
/// Most messages persisted in one transaction.
pub const MAX_BATCH: usize = 128;

const ENQUEUE_FAILURES_TOTAL: &str = "datamailer_enqueue_failures_total";

/// A validated, rendered message ready to persist.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub client_id: i64,
    /// The email as given (trimmed) and its normalized form.
    pub raw_email: String,
    pub email: String,
    pub template_id: i64,
    pub template_key: String,
    pub from_email_id: String,
    pub from_email: String,
    pub idempotency_key: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    pub context: Value,
    pub metadata: Map<String, Value>,
    /// Keys added to the message's `queued`/`skipped` event (a list send names its list).
    pub event_metadata: Map<String, Value>,
    /// The delivery decision (from the contact's flags read by the handler; the worker
    /// re-checks suppression at send time).
    pub decision: DeliveryDecision,
}

/// What happened to one message.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// The row was written (`queued` or `skipped` per the decision).
    Inserted {
        message_id: i64,
        created_at: DateTime<Utc>,
        /// True when the queue message is on its queue (written in the transaction, or sent
        /// after the commit).
        enqueued: bool,
    },
    /// Another send already holds this (client, idempotency key): answer it as a replay.
    Conflict,
}

/// The group-commit writer of transactional sends.
pub type SendWriter = BatchWriter<SendSink>;

/// Starts the writer (call inside a Tokio runtime).
pub fn start(db: PgPool, producer: Producer) -> SendWriter {
    BatchWriter::start(
        SendSink {
            conn: HeldConnection::new(db),
            producer,
        },
        WriterSettings {
            max_batch: MAX_BATCH,
            ..Default::default()
        },
    )
}

pub struct SendSink {
    /// Kept while the writer is busy; given back when it idles or after an error.
    conn: HeldConnection,
    producer: Producer,
}

#[async_trait]
impl BatchSink for SendSink {
    type Item = NewMessage;
    type Output = WriteOutcome;
    type Key = (i64, String);

    fn name(&self) -> &'static str {
        "transactional-send"
    }

    async fn write(&self, messages: &[&NewMessage]) -> anyhow::Result<Vec<WriteOutcome>> {
        let mut conn = self.conn.get("send writer").await?;
        write_batch(&mut conn, &self.producer, messages).await
    }

    /// A repeated (client, idempotency key) in one batch is a replay of the first.
    fn dedupe_key(&self, m: &NewMessage) -> Option<(i64, String)> {
        Some((m.client_id, m.idempotency_key.clone()))
    }

    fn duplicate(&self, _first: &WriteOutcome) -> WriteOutcome {
        WriteOutcome::Conflict
    }

    async fn idle(&self) {
        self.conn.release().await;
    }

    /// The connection may be broken: take a fresh one next time.
    async fn reset(&self) {
        self.conn.release().await;
    }
}

/// The whole batch in one statement. Inputs are parallel arrays in write order.
const WRITE_BATCH_SQL: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::text[], $12::text[], $13::jsonb[], $14::jsonb[], $15::text[],
                         $16::text[], $17::jsonb[], $18::text[])
        WITH ORDINALITY AS u(client_id, raw_email, email, template_id, from_email_id,
                             from_email, template_key, status, idempotency_key, subject,
                             html_body, text_body, context, metadata, last_error,
                             event_type, event_metadata, queue_body, ord)
), c AS (
    INSERT INTO contacts (email, normalized_email)
    SELECT DISTINCT ON (email) raw_email, email FROM input ORDER BY email, ord
    ON CONFLICT (normalized_email) DO UPDATE SET updated_at = now()
    RETURNING id, normalized_email
), m AS (
    INSERT INTO transactional_messages (client_id, contact_id, template_id, email,
        from_email_id, from_email, template_key, status, idempotency_key, subject, html_body,
        text_body, context, metadata, last_error)
    SELECT i.client_id, c.id, i.template_id, i.email, i.from_email_id, i.from_email,
           i.template_key, i.status, i.idempotency_key, i.subject, i.html_body, i.text_body,
           i.context, i.metadata, i.last_error
    FROM input i JOIN c ON c.normalized_email = i.email
    ORDER BY i.ord
    ON CONFLICT (client_id, idempotency_key) WHERE idempotency_key <> '' DO NOTHING
    RETURNING id, client_id, contact_id, idempotency_key, created_at
), mi AS (
    SELECT m.id, m.contact_id, m.created_at, i.client_id, i.event_type, i.event_metadata,
           i.queue_body, i.ord
    FROM m JOIN input i ON i.client_id = m.client_id AND i.idempotency_key = m.idempotency_key
), e AS (
    INSERT INTO email_events (transactional_message_id, contact_id, client_id, event_type, metadata)
    SELECT id, contact_id, client_id, event_type, event_metadata FROM mi ORDER BY ord
), q AS (
    INSERT INTO queue_messages (queue, body)
    SELECT $19, (queue_body::jsonb || jsonb_build_object(
                     'transactional_message_id', id, 'contact_id', contact_id))::text
    FROM mi WHERE queue_body IS NOT NULL ORDER BY ord
)
SELECT ord, id, contact_id, created_at FROM mi";

/// Per-message columns for [`WRITE_BATCH_SQL`], in statement order.
#[derive(Default)]
struct Columns {
    client_id: Vec<i64>,
    raw_email: Vec<String>,
    email: Vec<String>,
    template_id: Vec<i64>,
    from_email_id: Vec<String>,
    from_email: Vec<String>,
    template_key: Vec<String>,
    status: Vec<&'static str>,
    idempotency_key: Vec<String>,
    subject: Vec<String>,
    html_body: Vec<String>,
    text_body: Vec<String>,
    context: Vec<Value>,
    metadata: Vec<Value>,
    last_error: Vec<&'static str>,
    event_type: Vec<&'static str>,
    event_metadata: Vec<Value>,
    queue_body: Vec<Option<String>>,
}

/// The contract body of a message; `ids` = (message, contact), placeholders (0) when the
/// statement fills them in.
fn queue_body(m: &NewMessage, message_id: i64, contact_id: i64) -> String {
    TransactionalEmailV1 {
        transactional_message_id: message_id,
        client_id: m.client_id,
        idempotency_key: m.idempotency_key.clone(),
        contact_id: Some(contact_id),
        template_id: Some(m.template_id),
        template_key: Some(m.template_key.clone()),
        metadata: Some(m.metadata.clone()),
    }
    .to_json()
}

/// An event's metadata: `base`, then the message's extra event keys.
fn event_metadata(mut base: Value, m: &NewMessage) -> Value {
    if let Value::Object(map) = &mut base {
        map.extend(m.event_metadata.clone());
    }
    base
}

/// Persists `messages` with one statement; one outcome per message, in order.
async fn write_batch(
    conn: &mut PgConnection,
    producer: &Producer,
    messages: &[&NewMessage],
) -> anyhow::Result<Vec<WriteOutcome>> {
    let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; messages.len()];

    // Fixed write order (the writer already folded repeated keys into their first).
    let mut primaries: Vec<usize> = (0..messages.len()).collect();
    primaries.sort_by(|&a, &b| {
        let (a, b) = (messages[a], messages[b]);
        (a.client_id, &a.idempotency_key).cmp(&(b.client_id, &b.idempotency_key))
    });

    let in_tx = producer.writes_in_transaction();
    let mut cols = Columns::default();
    for &i in &primaries {
        let m = messages[i];
        let reason = m.decision.reason.unwrap_or("");
        cols.client_id.push(m.client_id);
        cols.raw_email.push(m.raw_email.clone());
        cols.email.push(m.email.clone());
        cols.template_id.push(m.template_id);
        cols.from_email_id.push(m.from_email_id.clone());
        cols.from_email.push(m.from_email.clone());
        cols.template_key.push(m.template_key.clone());
        cols.idempotency_key.push(m.idempotency_key.clone());
        cols.subject.push(m.subject.clone());
        cols.html_body.push(m.html_body.clone());
        cols.text_body.push(m.text_body.clone());
        cols.context.push(m.context.clone());
        cols.metadata.push(Value::Object(m.metadata.clone()));
        cols.last_error.push(reason);
        if m.decision.allowed {
            cols.status.push("queued");
            cols.event_type.push("queued");
            cols.event_metadata
                .push(event_metadata(json!({"template_key": m.template_key}), m));
            cols.queue_body.push(in_tx.then(|| queue_body(m, 0, 0)));
        } else {
            cols.status.push("skipped");
            cols.event_type.push("skipped");
            cols.event_metadata
                .push(event_metadata(json!({"reason": reason}), m));
            cols.queue_body.push(None);
        }
    }
    let rows = sqlx::query(WRITE_BATCH_SQL)
        .bind(&cols.client_id)
        .bind(&cols.raw_email)
        .bind(&cols.email)
        .bind(&cols.template_id)
        .bind(&cols.from_email_id)
        .bind(&cols.from_email)
        .bind(&cols.template_key)
        .bind(&cols.status)
        .bind(&cols.idempotency_key)
        .bind(&cols.subject)
        .bind(&cols.html_body)
        .bind(&cols.text_body)
        .bind(&cols.context)
        .bind(&cols.metadata)
        .bind(&cols.last_error)
        .bind(&cols.event_type)
        .bind(&cols.event_metadata)
        .bind(&cols.queue_body)
        .bind(QUEUE)
        .fetch_all(&mut *conn)
        .await
        .context("write send batch")?;

    let mut bodies = Vec::new();
    let mut queued = Vec::new();
    for row in &rows {
        let ord: i64 = row.try_get("ord")?;
        let i = primaries[(ord - 1) as usize];
        let m = messages[i];
        let message_id: i64 = row.try_get("id")?;
        if m.decision.allowed && !in_tx {
            bodies.push(queue_body(m, message_id, row.try_get("contact_id")?));
            queued.push(i);
        }
        outcomes[i] = Some(WriteOutcome::Inserted {
            message_id,
            created_at: row.try_get("created_at")?,
            enqueued: m.decision.allowed,
        });
    }

    if !bodies.is_empty() {
        let count = bodies.len();
        if let Err(err) = producer.send_after_commit(QUEUE, bodies).await {
            // The rows stay `queued`; the runtime's maintenance re-enqueues them.
            tracing::warn!(error = %format!("{err:#}"), count, "enqueue after commit failed");
            metrics::counter!(ENQUEUE_FAILURES_TOTAL, "queue" => QUEUE).increment(count as u64);
            for i in queued {
                if let Some(WriteOutcome::Inserted { enqueued, .. }) = outcomes[i].as_mut() {
                    *enqueued = false;
                }
            }
        }
    }

    // Primaries the insert did not return lost to a committed row with the same key.
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(WriteOutcome::Conflict))
        .collect())
}
