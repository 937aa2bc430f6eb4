//! The run's own database: created fresh, seeded with SQL where a scenario needs volume the
//! API would take minutes to build, watched through `pg_stat_activity`, dropped at the end.

use anyhow::Context;
use tokio_postgres::{Client, NoTls};

/// Connections the harness opens name themselves so the samplers leave them out.
pub const HARNESS_APP: &str = "dm-loadtest";

pub struct Database {
    pub name: String,
    pub url: String,
    base: String,
    keep: bool,
}

impl Database {
    /// Drops any leftover database of this name and creates it empty.
    pub async fn create(base: &str, name: &str, keep: bool) -> anyhow::Result<Self> {
        let admin = connect(&format!("{base}/postgres")).await?;
        // Two statements: neither may run inside the implicit transaction of a batch.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating the database {name}"))?;
        Ok(Self {
            name: name.to_string(),
            url: format!("{base}/{name}"),
            base: base.to_string(),
            keep,
        })
    }

    /// A connection of the harness's own.
    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.url).await
    }

    /// A connection to `postgres`, for watching this database from outside.
    pub async fn admin(&self) -> anyhow::Result<Client> {
        connect(&format!("{}/postgres", self.base)).await
    }

    pub async fn drop(self) -> anyhow::Result<()> {
        if self.keep {
            eprintln!("kept database {}", self.name);
            return Ok(());
        }
        let admin = self.admin().await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(())
    }
}

pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}application_name={HARNESS_APP}");
    let (client, conn) = tokio_postgres::connect(&url, NoTls)
        .await
        .with_context(|| format!("connecting to {url} (is Postgres running?)"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The database's connections that are not the harness's, and their backend pids.
pub async fn backends(admin: &Client, database: &str) -> anyhow::Result<Vec<u32>> {
    let rows = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name <> $2",
            &[&database, &HARNESS_APP],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
}

/// `n` verified subscribers of the audience `news` through the client `shop` (as
/// `provision --org bench --audience news --client shop` creates them), addresses
/// `r<i>@example.com`.
pub async fn seed_subscribers(db: &Client, n: u64) -> anyhow::Result<()> {
    db.batch_execute(&format!(
        "WITH a AS (SELECT id FROM audiences WHERE slug = 'news'),
              cl AS (SELECT id FROM clients WHERE slug = 'shop'),
              c AS (INSERT INTO contacts (email, normalized_email, verified_at)
                    SELECT 'r' || g || '@example.com', 'r' || g || '@example.com', now()
                      FROM generate_series(1, {n}) g RETURNING id)
         INSERT INTO subscriptions (contact_id, audience_id, client_id, status, verified_at)
         SELECT c.id, a.id, cl.id, 'subscribed', now() FROM c, a, cl;
         ANALYZE;"
    ))
    .await
    .context("seeding subscribers")
}

/// The subscribers' addresses, for the exactly-once check.
pub fn subscriber_addresses(n: u64) -> Vec<String> {
    (1..=n).map(|i| format!("r{i}@example.com")).collect()
}

/// `n` transactional messages `queued` exactly as the API writes them (contact, row, its
/// `queued` event and a `transactional-email` v1 queue message), addresses
/// `<tag>-<i>@load.example.com`; for burn-down runs.
pub async fn seed_transactional_backlog(db: &Client, n: u64, tag: &str) -> anyhow::Result<()> {
    db.batch_execute(&format!(
        "WITH p AS (
            SELECT c.id AS client_id, t.id AS template_id, t.key AS template_key
              FROM clients c JOIN email_templates t ON t.client_id = c.id AND t.key = 'load'
             ORDER BY c.id LIMIT 1
        ), ct AS (
            INSERT INTO contacts (email, normalized_email)
            SELECT e, e FROM (SELECT '{tag}-' || g || '@load.example.com' AS e
                                FROM generate_series(1, {n}) g) x
            RETURNING id, email
        ), m AS (
            INSERT INTO transactional_messages (client_id, contact_id, template_id, email,
                from_email_id, from_email, template_key, status, idempotency_key, subject,
                html_body, text_body, context)
            SELECT p.client_id, ct.id, p.template_id, ct.email, 'news', 'news@example.com',
                   p.template_key, 'queued', '{tag}-' || ct.id, 'Hi ' || ct.id,
                   '<p>Hello ' || ct.id || '</p>', 'Hello ' || ct.id, jsonb_build_object('n', ct.id)
              FROM ct CROSS JOIN p
            RETURNING id, client_id, contact_id, template_id, template_key, idempotency_key
        ), e AS (
            INSERT INTO email_events (transactional_message_id, contact_id, client_id, event_type, metadata)
            SELECT id, contact_id, client_id, 'queued', jsonb_build_object('template_key', template_key) FROM m
        )
        INSERT INTO queue_messages (queue, body)
        SELECT 'transactional-email',
               jsonb_build_object('contract', 'transactional-email', 'version', 1,
                   'transactional_message_id', id, 'client_id', client_id,
                   'idempotency_key', idempotency_key, 'contact_id', contact_id,
                   'template_id', template_id, 'template_key', template_key,
                   'metadata', '{{}}'::jsonb)::text
          FROM m;
        ANALYZE;"
    ))
    .await
    .context("seeding the transactional backlog")
}

/// A campaign of `n` recipients already sent (as `seed_subscribers` names them), and `events`
/// SES events about them as SNS envelopes on the embedded `ses-webhooks` queue: 70 % Delivery,
/// 10 % Open, 10 % Send, 5 % soft bounce, 3 % hard bounce, 2 % complaint, tagged as our sends
/// are, interleaved as they arrive in production.
pub async fn seed_feedback(db: &Client, n: u64, events: u64) -> anyhow::Result<()> {
    db.batch_execute(&format!(
        "WITH a AS (SELECT id FROM audiences WHERE slug = 'news'), cl AS (SELECT id FROM clients WHERE slug = 'shop'),
        camp AS (INSERT INTO campaigns (client_id, audience_id, external_key, subject, status, sending_started_at,
                                        recipient_count, sent_count)
                 SELECT cl.id, a.id, 'bench', 'Benchmark', 'sending', now(), {n}, {n} FROM cl, a RETURNING id),
        c AS (INSERT INTO contacts (email, normalized_email, verified_at)
              SELECT 'r' || g || '@example.com', 'r' || g || '@example.com', now() FROM generate_series(1, {n}) g
              RETURNING id, email)
        INSERT INTO campaign_recipients (campaign_id, contact_id, email, status, ses_message_id, sent_at)
        SELECT camp.id, c.id, c.email, 'sent', 'ses-' || c.id, now() FROM c, camp;

        WITH r AS (SELECT id, email, ses_message_id, row_number() OVER (ORDER BY id) AS n FROM campaign_recipients),
        ev AS (
          SELECT g, r.*, CASE WHEN g % 100 < 70 THEN 'Delivery' WHEN g % 100 < 80 THEN 'Open'
                              WHEN g % 100 < 90 THEN 'Send' WHEN g % 100 < 95 THEN 'SoftBounce'
                              WHEN g % 100 < 98 THEN 'Bounce' ELSE 'Complaint' END AS kind
            FROM generate_series(1, {events}) g JOIN r ON r.n = (g * 7919) % {n} + 1
        ),
        msg AS (
          SELECT g, jsonb_build_object(
              'eventType', CASE kind WHEN 'SoftBounce' THEN 'Bounce' ELSE kind END,
              'mail', jsonb_build_object('messageId', ses_message_id, 'timestamp', '2026-12-04T10:00:00.000Z',
                         'source', 'news@example.com', 'destination', jsonb_build_array(email),
                         'tags', jsonb_build_object('datamailer_kind', jsonb_build_array('campaign'),
                                                    'datamailer_id', jsonb_build_array(id::text))))
            || CASE kind
                 WHEN 'Delivery' THEN jsonb_build_object('delivery', jsonb_build_object(
                     'timestamp', '2026-12-04T10:00:02.000Z', 'recipients', jsonb_build_array(email),
                     'smtpResponse', '250 ok'))
                 WHEN 'Open' THEN jsonb_build_object('open', jsonb_build_object(
                     'timestamp', '2026-12-04T10:05:00.000Z', 'ipAddress', '192.0.2.1', 'userAgent', 'Mozilla/5.0'))
                 WHEN 'Send' THEN jsonb_build_object('send', '{{}}'::jsonb)
                 WHEN 'SoftBounce' THEN jsonb_build_object('bounce', jsonb_build_object('bounceType', 'Transient',
                     'bounceSubType', 'MailboxFull', 'timestamp', '2026-12-04T10:00:02.000Z',
                     'bouncedRecipients', jsonb_build_array(jsonb_build_object('emailAddress', email))))
                 WHEN 'Bounce' THEN jsonb_build_object('bounce', jsonb_build_object('bounceType', 'Permanent',
                     'bounceSubType', 'General', 'timestamp', '2026-12-04T10:00:02.000Z',
                     'bouncedRecipients', jsonb_build_array(jsonb_build_object('emailAddress', email))))
                 ELSE jsonb_build_object('complaint', jsonb_build_object('timestamp', '2026-12-04T10:01:00.000Z',
                     'complaintFeedbackType', 'abuse',
                     'complainedRecipients', jsonb_build_array(jsonb_build_object('emailAddress', email))))
               END AS event
            FROM ev
        )
        INSERT INTO queue_messages (queue, body)
        SELECT 'ses-webhooks', jsonb_build_object('Type', 'Notification', 'MessageId', 'bench-' || g,
                 'TopicArn', 'arn:aws:sns:us-east-1:123456789012:ses-events',
                 'Timestamp', '2026-12-04T10:00:05.000Z', 'Message', event::text)::text
          FROM msg ORDER BY g;
        ANALYZE;"
    ))
    .await
    .context("seeding the feedback events")
}

/// Queue messages that were dead-lettered (the embedded queue's DLQ).
pub async fn dead_lettered(db: &Client) -> anyhow::Result<i64> {
    Ok(db
        .query_one(
            "SELECT count(*) FROM queue_messages WHERE dead_lettered_at IS NOT NULL",
            &[],
        )
        .await?
        .get(0))
}
