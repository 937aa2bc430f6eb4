//! The transactional send writer: application-level group commit.
//!
//! A commit costs one WAL flush (milliseconds on ordinary disks), so one transaction per
//! request caps a pool of four connections at a few hundred sends per second. Instead, send
//! handlers hand their validated, rendered and decided message to this writer; the writer takes
//! every message waiting (up to [`MAX_BATCH`]) and persists them with ONE statement, atomic on
//! its own: its CTEs upsert the contacts, insert the messages (`ON CONFLICT DO NOTHING` on the
//! idempotency key), their events and, on the embedded queue, their queue messages. Under load
//! batches grow by themselves; when idle a batch is one message and nothing waits for a timer.
//!
//! The queue body is built by `datamailer-core` with placeholder ids; the statement sets the
//! message and contact ids it generated (`body::jsonb || {...}`), so the body needs no extra
//! round trip. For SQS the bodies are built after the commit from the returned ids.
//!
//! Rows are written in a fixed order (contacts by normalized email, messages by
//! (client, idempotency key)), so concurrent writers cannot deadlock each other. If a batch
//! fails, each of its messages is retried alone, so one bad message fails only itself.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use datamailer_core::contracts::TransactionalEmailV1;
use datamailer_core::transactional::DeliveryDecision;
use datamailer_runtime::producer::Producer;
use serde_json::{json, Map, Value};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use tokio::sync::{mpsc, oneshot, Mutex};

/// The queue transactional messages go to.
pub const QUEUE: &str = "transactional-email";
/// Most messages persisted in one transaction.
pub const MAX_BATCH: usize = 128;
/// Writer tasks. Each keeps one pooled connection while there is work (so writes never queue
/// behind reads for a connection) and gives it back after [`IDLE_RELEASE`] without work.
pub const WRITERS: usize = 1;
/// How long an idle writer keeps its connection.
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(1);
/// Sends waiting for a writer before handlers wait for room (backpressure).
const CHANNEL_CAPACITY: usize = 4096;

const ENQUEUE_FAILURES_TOTAL: &str = "datamailer_enqueue_failures_total";
const BATCH_SIZE: &str = "datamailer_transactional_write_batch_size";
const BATCH_FAILURES_TOTAL: &str = "datamailer_transactional_write_batch_failures_total";
const WRITER_RESTARTS_TOTAL: &str = "datamailer_transactional_writer_restarts_total";

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

type Reply = oneshot::Sender<Result<WriteOutcome, String>>;

struct Job {
    message: NewMessage,
    reply: Reply,
}

/// Handle to the writer tasks.
#[derive(Clone)]
pub struct SendWriter {
    jobs: mpsc::Sender<Job>,
}

impl SendWriter {
    /// Starts the writer tasks (call inside a Tokio runtime).
    pub fn start(db: PgPool, producer: Producer) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(supervise(db.clone(), producer.clone(), rx.clone()));
        }
        SendWriter { jobs: tx }
    }

    /// Persists one message (together with whatever else is waiting).
    pub async fn write(&self, message: NewMessage) -> anyhow::Result<WriteOutcome> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { message, reply })
            .await
            .map_err(|_| anyhow::anyhow!("send writer stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("send writer dropped the message"))?
            .map_err(|e| anyhow::anyhow!(e))
    }
}

/// Restarts a writer that panicked (the senders of its batch get an error; later sends are
/// unaffected). Returns when the channel closes.
async fn supervise(db: PgPool, producer: Producer, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        match tokio::spawn(run(db.clone(), producer.clone(), rx.clone())).await {
            Ok(()) => return,
            Err(err) => {
                tracing::error!(error = %err, "send writer crashed; restarting it");
                metrics::counter!(WRITER_RESTARTS_TOTAL).increment(1);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn run(db: PgPool, producer: Producer, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut conn: Option<PoolConnection<Postgres>> = None;
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = rx.lock().await;
            let first = if conn.is_some() {
                match tokio::time::timeout(IDLE_RELEASE, rx.recv()).await {
                    Ok(job) => job,
                    Err(_) => {
                        conn = None; // idle: give the connection back to the pool
                        rx.recv().await
                    }
                }
            } else {
                rx.recv().await
            };
            let Some(first) = first else { return };
            jobs.push(first);
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        metrics::histogram!(BATCH_SIZE).record(jobs.len() as f64);
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match db.acquire().await {
                Ok(c) => conn.insert(c),
                Err(err) => {
                    let err = format!("acquire a connection for the send writer: {err}");
                    for job in jobs {
                        let _ = job.reply.send(Err(err.clone()));
                    }
                    continue;
                }
            },
        };
        if !process(c, &producer, jobs).await {
            conn = None; // the connection may be broken: take a fresh one next time
        }
    }
}

/// Writes a batch and answers its senders; false when the batch hit a database error.
async fn process(conn: &mut PgConnection, producer: &Producer, jobs: Vec<Job>) -> bool {
    let messages: Vec<&NewMessage> = jobs.iter().map(|j| &j.message).collect();
    match write_batch(conn, producer, &messages).await {
        Ok(outcomes) => {
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                let _ = job.reply.send(Ok(outcome));
            }
            true
        }
        Err(err) if jobs.len() > 1 => {
            metrics::counter!(BATCH_FAILURES_TOTAL).increment(1);
            tracing::warn!(error = %format!("{err:#}"), size = jobs.len(),
                "send batch failed; retrying its messages one by one");
            for job in jobs {
                let result = write_batch(conn, producer, &[&job.message])
                    .await
                    .map(|mut o| o.remove(0))
                    .map_err(|e| format!("{e:#}"));
                let _ = job.reply.send(result);
            }
            false
        }
        Err(err) => {
            metrics::counter!(BATCH_FAILURES_TOTAL).increment(1);
            for job in jobs {
                let _ = job.reply.send(Err(format!("{err:#}")));
            }
            false
        }
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

/// Persists `messages` with one statement; one outcome per message, in order.
async fn write_batch(
    conn: &mut PgConnection,
    producer: &Producer,
    messages: &[&NewMessage],
) -> anyhow::Result<Vec<WriteOutcome>> {
    let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; messages.len()];

    // Fixed write order; a repeated (client, key) inside the batch is a replay of the first.
    let mut order: Vec<usize> = (0..messages.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (messages[a], messages[b]);
        (a.client_id, &a.idempotency_key).cmp(&(b.client_id, &b.idempotency_key))
    });
    let mut seen = HashSet::new();
    let mut primaries = Vec::with_capacity(order.len());
    for i in order {
        let m = messages[i];
        if seen.insert((m.client_id, m.idempotency_key.as_str())) {
            primaries.push(i);
        } else {
            outcomes[i] = Some(WriteOutcome::Conflict);
        }
    }

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
                .push(json!({"template_key": m.template_key}));
            cols.queue_body.push(in_tx.then(|| queue_body(m, 0, 0)));
        } else {
            cols.status.push("skipped");
            cols.event_type.push("skipped");
            cols.event_metadata.push(json!({"reason": reason}));
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
            // The rows stay `queued`; the worker's stale-row sweeper re-enqueues them.
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
