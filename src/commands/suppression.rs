//! `datamailer suppression import|list|add|remove`: the operator's view of who we no longer
//! mail.
//!
//! Our suppression is the contact's `hard_bounced_at` / `complained_at` (the ses-webhooks tree
//! sets them from SES's events; every send path checks them). `import` pulls SES's own
//! account-level suppression list (`ListSuppressedDestinations`) into it, so mail SES would
//! refuse is never attempted; addresses we have no contact for get one, suppressed.

use std::collections::BTreeMap;

use anyhow::Context;
use aws_sdk_sesv2::types::SuppressionListReason;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::commands::queues::small_db;
use crate::config::Config;

/// Which suppression a command means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reason {
    Bounce,
    Complaint,
}

impl Reason {
    fn column(self) -> &'static str {
        match self {
            Reason::Bounce => "hard_bounced_at",
            Reason::Complaint => "complained_at",
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Reason::Bounce => "bounce",
            Reason::Complaint => "complaint",
        }
    }
}

/// When an address was suppressed for a bounce and for a complaint, per SES's list.
#[derive(Debug, Default, Clone, Copy)]
struct Listed {
    bounced: Option<DateTime<Utc>>,
    complained: Option<DateTime<Utc>>,
}

/// Rows written per statement by `import`.
const IMPORT_CHUNK: usize = 1000;

/// Addresses suppressed as of the list (the first suppression of a kind is kept), contacts
/// made for addresses we did not know. Returns (created, newly suppressed).
const IMPORT_SQL: &str = "
WITH s AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS s(email, bounced, complained)
),
already AS (
    SELECT c.normalized_email FROM contacts c JOIN s ON s.email = c.normalized_email
     WHERE (s.bounced IS NULL OR c.hard_bounced_at IS NOT NULL)
       AND (s.complained IS NULL OR c.complained_at IS NOT NULL)
),
up AS (
    INSERT INTO contacts (email, normalized_email, hard_bounced_at, complained_at)
    SELECT email, email, bounced, complained FROM s
    ON CONFLICT (normalized_email) DO UPDATE
       SET hard_bounced_at = coalesce(contacts.hard_bounced_at, EXCLUDED.hard_bounced_at),
           complained_at = coalesce(contacts.complained_at, EXCLUDED.complained_at),
           updated_at = now()
    RETURNING normalized_email, xmax = 0 AS created
)
SELECT count(*) FILTER (WHERE created),
       count(*) FILTER (WHERE normalized_email NOT IN (SELECT normalized_email FROM already))
  FROM up";

pub async fn import(config: Config, dry_run: bool) -> anyhow::Result<()> {
    let aws = crate::services::aws_config(&config).await;
    let ses = aws_sdk_sesv2::Client::new(&aws);
    // Merged across the list's pages: one entry per address.
    let mut wanted: BTreeMap<String, Listed> = BTreeMap::new();
    let mut pages = ses
        .list_suppressed_destinations()
        .page_size(1000)
        .into_paginator()
        .send();
    let mut read = 0usize;
    while let Some(page) = pages.next().await {
        let page = page.context("ListSuppressedDestinations")?;
        for s in page.suppressed_destination_summaries() {
            read += 1;
            let email = datamailer_core::email::normalize(s.email_address());
            if email.is_empty() {
                continue;
            }
            let at = DateTime::<Utc>::from_timestamp(
                s.last_update_time().secs(),
                s.last_update_time().subsec_nanos(),
            )
            .unwrap_or_else(Utc::now);
            let entry = wanted.entry(email).or_default();
            match s.reason() {
                SuppressionListReason::Bounce => entry.bounced = Some(at),
                SuppressionListReason::Complaint => entry.complained = Some(at),
                other => {
                    tracing::warn!(reason = ?other, "skipping a suppression of an unknown reason")
                }
            }
        }
    }
    println!(
        "SES account suppression list: {read} entries, {} addresses",
        wanted.len()
    );
    if dry_run {
        println!("dry run: nothing written");
        return Ok(());
    }
    let db = small_db(&config)?;
    let conn = db.get().await?;
    let (mut created, mut suppressed) = (0i64, 0i64);
    let entries: Vec<_> = wanted.into_iter().collect();
    for chunk in entries.chunks(IMPORT_CHUNK) {
        let emails: Vec<&str> = chunk.iter().map(|(e, _)| e.as_str()).collect();
        let bounced: Vec<Option<DateTime<Utc>>> = chunk.iter().map(|(_, l)| l.bounced).collect();
        let complained: Vec<Option<DateTime<Utc>>> =
            chunk.iter().map(|(_, l)| l.complained).collect();
        let row = conn
            .query_one(IMPORT_SQL, &[&emails, &bounced, &complained])
            .await
            .context("writing the imported suppressions")?;
        created += row.get::<_, i64>(0);
        suppressed += row.get::<_, i64>(1);
    }
    println!("imported: {suppressed} addresses newly suppressed ({created} of them new contacts)");
    Ok(())
}

pub async fn list(config: Config, reason: Option<Reason>, limit: i64) -> anyhow::Result<()> {
    let db = small_db(&config)?;
    let filter = match reason {
        None => "hard_bounced_at IS NOT NULL OR complained_at IS NOT NULL".to_string(),
        Some(r) => format!("{} IS NOT NULL", r.column()),
    };
    let rows = db
        .get()
        .await?
        .query(
            &format!(
                "SELECT normalized_email, hard_bounced_at, complained_at FROM contacts
                  WHERE {filter} ORDER BY greatest(hard_bounced_at, complained_at) DESC LIMIT $1"
            ),
            &[&limit],
        )
        .await
        .context("reading suppressed contacts")?;
    for row in &rows {
        let email: String = row.get(0);
        let bounced: Option<DateTime<Utc>> = row.get(1);
        let complained: Option<DateTime<Utc>> = row.get(2);
        let mut why = Vec::new();
        if let Some(at) = bounced {
            why.push(format!("bounce since {}", datamailer_core::time::iso(at)));
        }
        if let Some(at) = complained {
            why.push(format!(
                "complaint since {}",
                datamailer_core::time::iso(at)
            ));
        }
        println!("{email}\t{}", why.join(", "));
    }
    eprintln!("{} suppressed (at most {limit} shown)", rows.len());
    Ok(())
}

pub async fn add(
    config: Config,
    email: String,
    reason: Reason,
    note: String,
) -> anyhow::Result<()> {
    let email = valid_email(&email)?;
    let db = small_db(&config)?;
    let column = reason.column();
    // The event keeps who did it in the contact's history (and tells the client's webhook).
    let row = db
        .get()
        .await?
        .query_one(
            &format!(
                "WITH c AS (
                    INSERT INTO contacts (email, normalized_email, {column}) VALUES ($1, $1, now())
                    ON CONFLICT (normalized_email) DO UPDATE
                       SET {column} = coalesce(contacts.{column}, now()), updated_at = now()
                    RETURNING id, {column} = now() AS changed
                 ),
                 e AS (
                    INSERT INTO email_events (contact_id, event_type, metadata)
                    SELECT id, $2, $3 FROM c WHERE changed
                 )
                 SELECT changed FROM c"
            ),
            &[
                &email,
                &reason.event_type(),
                &json!({"source": "operator", "reason": note}),
            ],
        )
        .await
        .context("suppressing the contact")?;
    let changed: bool = row.get(0);
    println!(
        "{email}: {}",
        if changed {
            format!("suppressed ({})", reason.event_type())
        } else {
            "was already suppressed".to_string()
        }
    );
    Ok(())
}

pub async fn remove(
    config: Config,
    email: String,
    reason: Option<Reason>,
    also_ses: bool,
) -> anyhow::Result<()> {
    let email = valid_email(&email)?;
    let db = small_db(&config)?;
    let set = match reason {
        None => "hard_bounced_at = NULL, complained_at = NULL".to_string(),
        Some(r) => format!("{} = NULL", r.column()),
    };
    let changed = db
        .get()
        .await?
        .execute(
            &format!(
                "UPDATE contacts SET {set}, updated_at = now()
                  WHERE normalized_email = $1 AND (hard_bounced_at IS NOT NULL OR complained_at IS NOT NULL)"
            ),
            &[&email],
        )
        .await
        .context("clearing the suppression")?;
    println!(
        "{email}: {}",
        if changed > 0 {
            "no longer suppressed here"
        } else {
            "was not suppressed here"
        }
    );
    if also_ses {
        let aws = crate::services::aws_config(&config).await;
        let ses = aws_sdk_sesv2::Client::new(&aws);
        match ses
            .delete_suppressed_destination()
            .email_address(&email)
            .send()
            .await
        {
            Ok(_) => println!("{email}: removed from the SES account suppression list"),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_not_found_exception()) =>
            {
                println!("{email}: was not on the SES account suppression list")
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context("DeleteSuppressedDestination"));
            }
        }
    }
    Ok(())
}

fn valid_email(email: &str) -> anyhow::Result<String> {
    let email = datamailer_core::email::normalize(email);
    if !datamailer_core::email::is_valid(&email) {
        anyhow::bail!("'{email}' is not an email address");
    }
    Ok(email)
}
