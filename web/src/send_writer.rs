//! The transactional send writer: application-level group commit.
//!
//! A commit costs one WAL flush (milliseconds on ordinary disks), so one transaction per
//! request caps a pool of four connections at a few hundred sends per second. Instead, send
//! handlers hand their validated, rendered message to this writer; each writer task takes
//! every message waiting (up to [`MAX_BATCH`]) and persists them in ONE transaction with
//! set-based statements: upsert the contacts (and read their suppression flags), read the
//! category preferences, insert messages and events (`ON CONFLICT DO NOTHING` on the
//! idempotency key), enqueue on the embedded queue, commit. Under load batches grow by
//! themselves; when idle a batch is one message and nothing waits for a timer.
//!
//! Rows are written in a fixed order (contacts by normalized email, messages by
//! (client, idempotency key)), so concurrent writers cannot deadlock each other. If a batch
//! fails, each of its messages is retried alone, so one bad message fails only itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use datamailer_core::contracts::TransactionalEmailV1;
use datamailer_core::transactional::{decide, CategoryCheck, ContactFlags, DeliveryDecision};
use datamailer_runtime::producer::{Producer, PG_ENQUEUE_MANY_SQL};
use serde_json::{json, Map, Value};
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot, Mutex};

/// The queue transactional messages go to.
pub const QUEUE: &str = "transactional-email";
/// Most messages persisted in one transaction.
pub const MAX_BATCH: usize = 128;
/// Writer tasks (each uses at most one connection at a time).
pub const WRITERS: usize = 2;
/// Sends waiting for a writer before handlers wait for room (backpressure).
const CHANNEL_CAPACITY: usize = 4096;

const ENQUEUE_FAILURES_TOTAL: &str = "datamailer_enqueue_failures_total";
const BATCH_SIZE: &str = "datamailer_transactional_write_batch_size";
const BATCH_FAILURES_TOTAL: &str = "datamailer_transactional_write_batch_failures_total";

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
    /// Present when the send names a category; the audience is resolved by then.
    pub category_tag: Option<String>,
    pub audience_id: Option<i64>,
}

/// What happened to one message.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// The row was written (`queued` or `skipped` per the decision).
    Inserted {
        message_id: i64,
        created_at: DateTime<Utc>,
        decision: DeliveryDecision,
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
            tokio::spawn(run(db.clone(), producer.clone(), rx.clone()));
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

async fn run(db: PgPool, producer: Producer, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            jobs.push(first);
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        metrics::histogram!(BATCH_SIZE).record(jobs.len() as f64);
        process(&db, &producer, jobs).await;
    }
}

async fn process(db: &PgPool, producer: &Producer, jobs: Vec<Job>) {
    let messages: Vec<&NewMessage> = jobs.iter().map(|j| &j.message).collect();
    match write_batch(db, producer, &messages).await {
        Ok(outcomes) => {
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                let _ = job.reply.send(Ok(outcome));
            }
        }
        Err(err) if jobs.len() > 1 => {
            metrics::counter!(BATCH_FAILURES_TOTAL).increment(1);
            tracing::warn!(error = %format!("{err:#}"), size = jobs.len(),
                "send batch failed; retrying its messages one by one");
            for job in jobs {
                let result = write_batch(db, producer, &[&job.message])
                    .await
                    .map(|mut o| o.remove(0))
                    .map_err(|e| format!("{e:#}"));
                let _ = job.reply.send(result);
            }
        }
        Err(err) => {
            metrics::counter!(BATCH_FAILURES_TOTAL).increment(1);
            for job in jobs {
                let _ = job.reply.send(Err(format!("{err:#}")));
            }
        }
    }
}

const UPSERT_CONTACTS_SQL: &str = "\
INSERT INTO contacts (email, normalized_email)
SELECT e, n FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(e, n, ord) ORDER BY ord
ON CONFLICT (normalized_email) DO UPDATE SET updated_at = now()
RETURNING normalized_email, id, hard_bounced_at IS NOT NULL AS hard_bounced,
          complained_at IS NOT NULL AS complained,
          global_unsubscribed_at IS NOT NULL AS global_unsubscribed";

const DISABLED_CATEGORIES_SQL: &str = "\
SELECT u.ord FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[])
    WITH ORDINALITY AS u(contact_id, audience_id, client_id, tag, ord)
WHERE EXISTS (SELECT 1 FROM category_preferences p
              WHERE p.contact_id = u.contact_id AND p.audience_id = u.audience_id
                AND p.client_id = u.client_id AND p.tag = u.tag AND NOT p.enabled)";

const INSERT_MESSAGES_SQL: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::text[], $12::text[], $13::jsonb[], $14::jsonb[], $15::text[],
                         $16::text[], $17::jsonb[])
        WITH ORDINALITY AS u(client_id, contact_id, template_id, email, from_email_id,
                             from_email, template_key, status, idempotency_key, subject,
                             html_body, text_body, context, metadata, last_error,
                             event_type, event_metadata, ord)
), m AS (
    INSERT INTO transactional_messages (client_id, contact_id, template_id, email,
        from_email_id, from_email, template_key, status, idempotency_key, subject, html_body,
        text_body, context, metadata, last_error)
    SELECT client_id, contact_id, template_id, email, from_email_id, from_email, template_key,
           status, idempotency_key, subject, html_body, text_body, context, metadata, last_error
    FROM input ORDER BY ord
    ON CONFLICT (client_id, idempotency_key) WHERE idempotency_key <> '' DO NOTHING
    RETURNING id, client_id, idempotency_key, created_at
), e AS (
    INSERT INTO email_events (transactional_message_id, contact_id, client_id, event_type, metadata)
    SELECT m.id, i.contact_id, i.client_id, i.event_type, i.event_metadata
    FROM m JOIN input i ON i.client_id = m.client_id AND i.idempotency_key = m.idempotency_key
)
SELECT i.ord, m.id, m.created_at
FROM m JOIN input i ON i.client_id = m.client_id AND i.idempotency_key = m.idempotency_key";

/// Per-message columns for [`INSERT_MESSAGES_SQL`], in statement order.
#[derive(Default)]
struct Columns {
    client_id: Vec<i64>,
    contact_id: Vec<i64>,
    template_id: Vec<i64>,
    email: Vec<String>,
    from_email_id: Vec<String>,
    from_email: Vec<String>,
    template_key: Vec<String>,
    status: Vec<String>,
    idempotency_key: Vec<String>,
    subject: Vec<String>,
    html_body: Vec<String>,
    text_body: Vec<String>,
    context: Vec<Value>,
    metadata: Vec<Value>,
    last_error: Vec<String>,
    event_type: Vec<String>,
    event_metadata: Vec<Value>,
}

/// Persists `messages` in one transaction; one outcome per message, in order.
async fn write_batch(
    db: &PgPool,
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

    // Contacts, deduplicated and sorted by normalized email.
    let mut contacts: BTreeMap<&str, &str> = BTreeMap::new();
    for &i in &primaries {
        contacts
            .entry(messages[i].email.as_str())
            .or_insert(messages[i].raw_email.as_str());
    }
    let normalized: Vec<&str> = contacts.keys().copied().collect();
    let raw: Vec<&str> = contacts.values().copied().collect();

    let mut tx = db.begin().await.context("begin send batch")?;
    let rows = sqlx::query(UPSERT_CONTACTS_SQL)
        .bind(&raw)
        .bind(&normalized)
        .fetch_all(&mut *tx)
        .await
        .context("upsert contacts")?;
    let mut contact_rows: HashMap<String, (i64, ContactFlags)> = HashMap::with_capacity(rows.len());
    for row in rows {
        contact_rows.insert(
            row.try_get("normalized_email")?,
            (
                row.try_get("id")?,
                ContactFlags {
                    hard_bounced: row.try_get("hard_bounced")?,
                    complained: row.try_get("complained")?,
                    global_unsubscribed: row.try_get("global_unsubscribed")?,
                },
            ),
        );
    }
    let contact = |i: usize| {
        contact_rows
            .get(&messages[i].email)
            .copied()
            .context("contact missing after upsert")
    };

    // Category preferences, only for sends that name a category.
    let categorized: Vec<usize> = primaries
        .iter()
        .copied()
        .filter(|&i| messages[i].category_tag.is_some() && messages[i].audience_id.is_some())
        .collect();
    let mut disabled = HashSet::new();
    if !categorized.is_empty() {
        let mut contact_ids = Vec::new();
        for &i in &categorized {
            contact_ids.push(contact(i)?.0);
        }
        let audience_ids: Vec<i64> = categorized
            .iter()
            .map(|&i| messages[i].audience_id.unwrap_or_default())
            .collect();
        let client_ids: Vec<i64> = categorized.iter().map(|&i| messages[i].client_id).collect();
        let tags: Vec<&str> = categorized
            .iter()
            .map(|&i| messages[i].category_tag.as_deref().unwrap_or_default())
            .collect();
        let ords: Vec<i64> = sqlx::query_scalar(DISABLED_CATEGORIES_SQL)
            .bind(&contact_ids)
            .bind(&audience_ids)
            .bind(&client_ids)
            .bind(&tags)
            .fetch_all(&mut *tx)
            .await
            .context("read category preferences")?;
        for ord in ords {
            disabled.insert(categorized[(ord - 1) as usize]);
        }
    }

    // Messages and their events.
    let mut cols = Columns::default();
    let mut decisions = Vec::with_capacity(primaries.len());
    let mut contact_ids = Vec::with_capacity(primaries.len());
    for &i in &primaries {
        let m = messages[i];
        let (contact_id, flags) = contact(i)?;
        let category = m.category_tag.as_ref().map(|_| CategoryCheck {
            has_scope: m.audience_id.is_some(),
            category_disabled: disabled.contains(&i),
        });
        let decision = decide(flags, category);
        let reason = decision.reason.unwrap_or("");
        cols.client_id.push(m.client_id);
        cols.contact_id.push(contact_id);
        cols.template_id.push(m.template_id);
        cols.email.push(m.email.clone());
        cols.from_email_id.push(m.from_email_id.clone());
        cols.from_email.push(m.from_email.clone());
        cols.template_key.push(m.template_key.clone());
        cols.idempotency_key.push(m.idempotency_key.clone());
        cols.subject.push(m.subject.clone());
        cols.html_body.push(m.html_body.clone());
        cols.text_body.push(m.text_body.clone());
        cols.context.push(m.context.clone());
        cols.metadata.push(Value::Object(m.metadata.clone()));
        cols.last_error.push(reason.to_string());
        if decision.allowed {
            cols.status.push("queued".into());
            cols.event_type.push("queued".into());
            cols.event_metadata
                .push(json!({"template_key": m.template_key}));
        } else {
            cols.status.push("skipped".into());
            cols.event_type.push("skipped".into());
            cols.event_metadata.push(json!({"reason": reason}));
        }
        decisions.push(decision);
        contact_ids.push(contact_id);
    }
    let inserted = sqlx::query(INSERT_MESSAGES_SQL)
        .bind(&cols.client_id)
        .bind(&cols.contact_id)
        .bind(&cols.template_id)
        .bind(&cols.email)
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
        .fetch_all(&mut *tx)
        .await
        .context("insert messages")?;

    // Queue bodies for the inserted, allowed messages.
    let mut bodies = Vec::new();
    let mut queued = Vec::new();
    for row in &inserted {
        let ord: i64 = row.try_get("ord")?;
        let k = (ord - 1) as usize;
        let i = primaries[k];
        let m = messages[i];
        let message_id: i64 = row.try_get("id")?;
        let decision = decisions[k];
        if decision.allowed {
            bodies.push(
                TransactionalEmailV1 {
                    transactional_message_id: message_id,
                    client_id: m.client_id,
                    idempotency_key: m.idempotency_key.clone(),
                    contact_id: Some(contact_ids[k]),
                    template_id: Some(m.template_id),
                    template_key: Some(m.template_key.clone()),
                    metadata: Some(m.metadata.clone()),
                }
                .to_json(),
            );
            queued.push(i);
        }
        outcomes[i] = Some(WriteOutcome::Inserted {
            message_id,
            created_at: row.try_get("created_at")?,
            decision,
            enqueued: decision.allowed,
        });
    }
    if producer.writes_in_transaction() && !bodies.is_empty() {
        sqlx::query(PG_ENQUEUE_MANY_SQL)
            .bind(QUEUE)
            .bind(&bodies)
            .execute(&mut *tx)
            .await
            .context("enqueue")?;
    }
    tx.commit().await.context("commit send batch")?;

    if !producer.writes_in_transaction() && !bodies.is_empty() {
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

    // Primaries not returned by the insert lost to a committed row with the same key.
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(WriteOutcome::Conflict))
        .collect())
}
