//! The contact upsert engine behind `POST /api/contacts`, subscribe, and the JSON and CSV
//! imports: a batch of inputs for one scope is written in a fixed number of statements
//! (insert missing contacts, lock and read all, update changed contacts, upsert changed
//! subscriptions, add tags, append events), never a round trip per contact.
//!
//! Semantics are the original's `upsert_contact_for_client` (facts §4.3): the client
//! subscription is overwritten (status; `verified_at` kept if set, else now when verified,
//! else cleared; `unsubscribed_at`; reason reset), tags are only added, validation and
//! suppression inputs apply field by field, and unsubscribed → subscribed appends a
//! `subscribe` event (which the client-webhook trigger turns into a callback).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, SubsecRound, Utc};
use datamailer_core::email;
use datamailer_core::fields::FieldErrors;
use datamailer_core::slug::slugify;
use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::model::{self, ContactState, SubState, SUBSCRIPTION_STATUSES, VALIDATION_STATUSES};

/// What an input asks for the client subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionChange {
    /// `POST /api/contacts`: the status given (default pending) and the verified flag.
    Overwrite { status: String, verified: bool },
    /// `POST /api/subscriptions/subscribe`: subscribed and verified now.
    Subscribe,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidationInput {
    pub status: String,
    pub reason: String,
    /// `Some` when `validated_at` was given (its value, possibly null).
    pub validated_at: Option<Option<DateTime<Utc>>>,
}

/// One contact to upsert (already validated).
#[derive(Debug, Clone)]
pub struct ContactInput {
    /// Stripped, as given.
    pub email: String,
    pub normalized: String,
    pub subscription: SubscriptionChange,
    /// Tag names, stripped (slugified on write).
    pub tags: Vec<String>,
    pub validation: Option<ValidationInput>,
    /// `(global_unsubscribed, hard_bounced, complained)`, each `Some` when given.
    pub suppression: [Option<bool>; 3],
}

/// How an upsert changed its contact, as the import reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Updated,
    Unchanged,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
        }
    }
}

fn one(field: &str, reason: &str) -> FieldErrors {
    let mut errors = FieldErrors::new();
    errors.insert(field, reason);
    errors
}

/// The original's `validate_tags`: absent/null/"" is none; otherwise a list of non-empty
/// strings.
pub fn parse_tags(value: Option<&Value>) -> Result<Vec<String>, FieldErrors> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| match t.as_str().map(str::trim) {
                Some(t) if !t.is_empty() => Ok(t.to_string()),
                _ => Err(one("tags", "must_be_non_empty_strings")),
            })
            .collect(),
        Some(_) => Err(one("tags", "must_be_list")),
    }
}

/// An ISO 8601 timestamp (`must_be_iso_datetime`); a naive one is read as UTC.
pub fn parse_timestamp(value: &Value, field: &str) -> Result<Option<DateTime<Utc>>, FieldErrors> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => parse_datetime(s)
            .map(Some)
            .ok_or_else(|| one(field, "must_be_iso_datetime")),
        _ => Err(one(field, "must_be_iso_datetime")),
    }
}

/// Django's `parse_datetime`: `YYYY-MM-DD[T ]HH:MM[:SS[.ffffff]][Z|±HH[:MM]]`.
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M%:z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Some(dt.with_timezone(&Utc));
        }
    }
    let naive = s.strip_suffix('Z').unwrap_or(s);
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(naive, fmt) {
            return Some(dt.and_utc());
        }
    }
    None
}

fn reason_field(value: Option<&Value>, field: &str) -> Result<String, FieldErrors> {
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(_) => Err(one(field, "must_be_string")),
    }
}

/// A validation status (absent/"" is `unknown`).
pub fn parse_validation_status(value: Option<&Value>, field: &str) -> Result<String, FieldErrors> {
    match value {
        None | Some(Value::Null) => Ok("unknown".into()),
        Some(Value::String(s)) if s.is_empty() => Ok("unknown".into()),
        Some(Value::String(s)) if VALIDATION_STATUSES.contains(&s.as_str()) => Ok(s.clone()),
        Some(_) => Err(one(field, "invalid")),
    }
}

/// `{status, reason, validated_at?}` with the given field prefix (`email_validation.` or none).
pub fn parse_validation(
    obj: &Map<String, Value>,
    prefix: &str,
) -> Result<ValidationInput, FieldErrors> {
    let status = parse_validation_status(obj.get("status"), &format!("{prefix}status"))?;
    let reason = reason_field(obj.get("reason"), &format!("{prefix}reason"))?;
    let validated_at = match obj.get("validated_at") {
        None => None,
        Some(v) => Some(parse_timestamp(v, &format!("{prefix}validated_at"))?),
    };
    Ok(ValidationInput {
        status,
        reason,
        validated_at,
    })
}

pub const SUPPRESSION_KEYS: [&str; 3] = ["global_unsubscribed", "hard_bounced", "complained"];

/// `{global_unsubscribed?, hard_bounced?, complained?}`, each a required boolean when present.
pub fn parse_suppression(
    obj: &Map<String, Value>,
    prefix: &str,
) -> Result<[Option<bool>; 3], FieldErrors> {
    let mut out = [None; 3];
    for (i, key) in SUPPRESSION_KEYS.iter().enumerate() {
        match obj.get(*key) {
            None => {}
            Some(Value::Null) => return Err(one(&format!("{prefix}{key}"), "required")),
            Some(Value::Bool(b)) => out[i] = Some(*b),
            Some(_) => return Err(one(&format!("{prefix}{key}"), "must_be_boolean")),
        }
    }
    Ok(out)
}

/// The non-scope fields of a `POST /api/contacts` body, in the original's order (the first
/// error wins, as its exceptions do). `email` is the already-validated scope email.
pub fn parse_contact(
    data: &Map<String, Value>,
    email_given: &str,
) -> Result<ContactInput, FieldErrors> {
    let tags = parse_tags(data.get("tags"))?;
    let status = match data.get("status") {
        None | Some(Value::Null) => "pending".to_string(),
        Some(Value::String(s)) if s.is_empty() => "pending".to_string(),
        Some(Value::String(s)) if SUBSCRIPTION_STATUSES.contains(&s.as_str()) => s.clone(),
        Some(_) => return Err(one("status", "invalid")),
    };
    let verified = match data.get("verified") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(one("verified", "must_be_boolean")),
    };
    let validation = match data.get("email_validation") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::Object(obj)) => Some(parse_validation(obj, "email_validation.")?),
        Some(_) => return Err(one("email_validation", "must_be_object")),
    };
    let suppression = match data.get("suppression") {
        None | Some(Value::Null) => [None; 3],
        Some(Value::String(s)) if s.is_empty() => [None; 3],
        Some(Value::Object(obj)) => parse_suppression(obj, "suppression.")?,
        Some(_) => return Err(one("suppression", "must_be_object")),
    };
    Ok(ContactInput {
        email: email_given.trim().to_string(),
        normalized: email::normalize(email_given),
        subscription: SubscriptionChange::Overwrite { status, verified },
        tags,
        validation,
        suppression,
    })
}

/// What the import compares to call an item created, updated or unchanged.
#[derive(Debug, PartialEq)]
struct Snapshot<'a> {
    email: &'a str,
    verified_at: Option<DateTime<Utc>>,
    validation: (&'a str, &'a str, Option<DateTime<Utc>>),
    suppression: [Option<DateTime<Utc>>; 3],
    sub: &'a SubState,
    tags: &'a [String],
}

fn snapshot(c: &ContactState) -> Option<Snapshot<'_>> {
    Some(Snapshot {
        email: &c.email,
        verified_at: c.verified_at,
        validation: (&c.validation_status, &c.validation_reason, c.validated_at),
        suppression: [c.global_unsubscribed_at, c.hard_bounced_at, c.complained_at],
        sub: c.client_sub.as_ref()?,
        tags: &c.tags,
    })
}

/// The new state of one contact under one input.
fn apply(before: &ContactState, input: &ContactInput, now: DateTime<Utc>) -> ContactState {
    let mut after = before.clone();
    after.email = input.email.clone();
    if let Some(v) = &input.validation {
        let validated_at = match v.validated_at {
            Some(given) => given,
            None if v.status == "unknown" => None,
            None if before.validation_status == v.status
                && before.validation_reason == v.reason =>
            {
                Some(before.validated_at.unwrap_or(now))
            }
            None => Some(now),
        };
        after.validation_status = v.status.clone();
        after.validation_reason = v.reason.clone();
        after.validated_at = validated_at;
    }
    let flags = [
        &mut after.global_unsubscribed_at,
        &mut after.hard_bounced_at,
        &mut after.complained_at,
    ];
    for (flag, wanted) in flags.into_iter().zip(input.suppression) {
        match wanted {
            Some(true) if flag.is_none() => *flag = Some(now),
            Some(false) => *flag = None,
            _ => {}
        }
    }
    let existing = before.client_sub.as_ref();
    after.client_sub = Some(match &input.subscription {
        SubscriptionChange::Overwrite { status, verified } => SubState {
            status: status.clone(),
            verified_at: verified.then(|| existing.and_then(|s| s.verified_at).unwrap_or(now)),
            unsubscribed_at: (status == "unsubscribed")
                .then(|| existing.and_then(|s| s.unsubscribed_at).unwrap_or(now)),
            unsubscribe_reason: String::new(),
        },
        SubscriptionChange::Subscribe => SubState {
            status: "subscribed".into(),
            verified_at: Some(now),
            unsubscribed_at: None,
            unsubscribe_reason: String::new(),
        },
    });
    let mut tags: BTreeSet<String> = before.tags.iter().cloned().collect();
    for name in &input.tags {
        let slug = slugify(name);
        if !slug.is_empty() {
            tags.insert(slug);
        }
    }
    after.tags = tags.into_iter().collect();
    after
}

/// One upserted contact.
#[derive(Debug, Clone)]
pub struct Upserted {
    pub state: ContactState,
    pub action: Action,
}

/// Upserts `inputs` (distinct normalized emails) in one scope, inside the caller's
/// transaction. Returns one result per input, in input order.
pub async fn upsert(
    tx: &mut PgConnection,
    audience_id: i64,
    client_id: i64,
    inputs: &[ContactInput],
) -> Result<Vec<Upserted>, sqlx::Error> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now().trunc_subsecs(6);
    // Sorted, so concurrent batches take row locks in one order.
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by(|a, b| inputs[*a].normalized.cmp(&inputs[*b].normalized));
    let emails: Vec<&str> = order.iter().map(|i| inputs[*i].email.as_str()).collect();
    let normalized: Vec<&str> = order
        .iter()
        .map(|i| inputs[*i].normalized.as_str())
        .collect();
    // Contacts this statement creates come back whole (the tombstone trigger may have set
    // their suppression) and have no subscriptions or tags yet: only the others need the
    // state read, whose per-contact probes are most of a fresh import's read cost.
    let sql = format!(
        "INSERT INTO contacts (email, normalized_email)
         SELECT e, n FROM unnest($1::text[], $2::text[]) AS u(e, n)
         ON CONFLICT (normalized_email) DO NOTHING
         RETURNING {}",
        model::CONTACT_COLUMNS
    );
    let created = sqlx::query(&sql)
        .bind(&emails)
        .bind(&normalized)
        .fetch_all(&mut *tx)
        .await?;
    let mut before: HashMap<String, ContactState> = HashMap::with_capacity(inputs.len());
    for row in &created {
        let state = ContactState::created(row)?;
        before.insert(state.normalized_email.clone(), state);
    }
    let existing: Vec<&str> = normalized
        .iter()
        .copied()
        .filter(|n| !before.contains_key(*n))
        .collect();
    if !existing.is_empty() {
        let sql = model::state_sql(
            2,
            3,
            false,
            "WHERE c.normalized_email = ANY($1) ORDER BY c.normalized_email FOR UPDATE OF c",
        );
        let rows = sqlx::query(&sql)
            .bind(&existing)
            .bind(audience_id)
            .bind(client_id)
            .fetch_all(&mut *tx)
            .await?;
        for row in &rows {
            let state = ContactState::from_row(row)?;
            before.insert(state.normalized_email.clone(), state);
        }
    }

    let mut results = Vec::with_capacity(inputs.len());
    let mut contact_rows = ContactWrites::default();
    let mut sub_rows = SubWrites::default();
    let (mut tag_contacts, mut tag_slugs, mut tag_names) = (Vec::new(), Vec::new(), Vec::new());
    let mut resubscribed = Vec::new();
    for input in inputs {
        let old = before
            .get(&input.normalized)
            .ok_or_else(|| sqlx::Error::RowNotFound)?;
        let new = apply(old, input, now);
        let contact_changed = old.email != new.email
            || old.validation_status != new.validation_status
            || old.validation_reason != new.validation_reason
            || old.validated_at != new.validated_at
            || old.global_unsubscribed_at != new.global_unsubscribed_at
            || old.hard_bounced_at != new.hard_bounced_at
            || old.complained_at != new.complained_at;
        if contact_changed {
            contact_rows.push(&new);
        }
        if old.client_sub != new.client_sub {
            sub_rows.push(&new);
        }
        for name in &input.tags {
            let slug = slugify(name);
            if !slug.is_empty() && !old.tags.contains(&slug) {
                tag_contacts.push(new.id);
                tag_slugs.push(slug);
                tag_names.push(name.clone());
            }
        }
        if old
            .client_sub
            .as_ref()
            .is_some_and(|s| s.status == "unsubscribed")
            && new
                .client_sub
                .as_ref()
                .is_some_and(|s| s.status == "subscribed")
        {
            resubscribed.push(new.id);
        }
        let action = match (snapshot(old), snapshot(&new)) {
            (None, _) => Action::Created,
            (a, b) if a == b => Action::Unchanged,
            _ => Action::Updated,
        };
        let mut state = new;
        if contact_changed {
            state.updated_at = now;
        }
        results.push(Upserted { state, action });
    }

    contact_rows.write(tx, now).await?;
    sub_rows.write(tx, audience_id, client_id, now).await?;
    add_tags(tx, audience_id, &tag_contacts, &tag_slugs, &tag_names).await?;
    if !resubscribed.is_empty() {
        sqlx::query(
            "INSERT INTO email_events (contact_id, client_id, audience_id, event_type, metadata)
             SELECT id, $2, $3, 'subscribe', '{\"source\": \"api\"}'::jsonb FROM unnest($1::bigint[]) AS id",
        )
        .bind(&resubscribed)
        .bind(client_id)
        .bind(audience_id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(results)
}

#[derive(Default)]
struct ContactWrites {
    id: Vec<i64>,
    email: Vec<String>,
    status: Vec<String>,
    reason: Vec<String>,
    validated_at: Vec<Option<DateTime<Utc>>>,
    global_unsubscribed_at: Vec<Option<DateTime<Utc>>>,
    hard_bounced_at: Vec<Option<DateTime<Utc>>>,
    complained_at: Vec<Option<DateTime<Utc>>>,
}

impl ContactWrites {
    fn push(&mut self, c: &ContactState) {
        self.id.push(c.id);
        self.email.push(c.email.clone());
        self.status.push(c.validation_status.clone());
        self.reason.push(c.validation_reason.clone());
        self.validated_at.push(c.validated_at);
        self.global_unsubscribed_at.push(c.global_unsubscribed_at);
        self.hard_bounced_at.push(c.hard_bounced_at);
        self.complained_at.push(c.complained_at);
    }

    async fn write(&self, tx: &mut PgConnection, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        if self.id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE contacts c SET email = u.e, email_validation_status = u.vs,
                    email_validation_reason = u.vr, email_validated_at = u.va,
                    global_unsubscribed_at = u.gu, hard_bounced_at = u.hb, complained_at = u.co,
                    updated_at = $9
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                         $6::timestamptz[], $7::timestamptz[], $8::timestamptz[])
                  AS u(id, e, vs, vr, va, gu, hb, co)
             WHERE c.id = u.id",
        )
        .bind(&self.id)
        .bind(&self.email)
        .bind(&self.status)
        .bind(&self.reason)
        .bind(&self.validated_at)
        .bind(&self.global_unsubscribed_at)
        .bind(&self.hard_bounced_at)
        .bind(&self.complained_at)
        .bind(now)
        .execute(tx)
        .await?;
        Ok(())
    }
}

#[derive(Default)]
struct SubWrites {
    contact: Vec<i64>,
    status: Vec<String>,
    verified_at: Vec<Option<DateTime<Utc>>>,
    unsubscribed_at: Vec<Option<DateTime<Utc>>>,
    reason: Vec<String>,
}

impl SubWrites {
    fn push(&mut self, c: &ContactState) {
        let s = c
            .client_sub
            .as_ref()
            .expect("upserts always set the client subscription");
        self.contact.push(c.id);
        self.status.push(s.status.clone());
        self.verified_at.push(s.verified_at);
        self.unsubscribed_at.push(s.unsubscribed_at);
        self.reason.push(s.unsubscribe_reason.clone());
    }

    async fn write(
        &self,
        tx: &mut PgConnection,
        audience_id: i64,
        client_id: i64,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        if self.contact.is_empty() {
            return Ok(());
        }
        write_subscriptions(
            tx,
            audience_id,
            Some(client_id),
            &self.contact,
            &self.status,
            &self.verified_at,
            &self.unsubscribed_at,
            &self.reason,
            now,
        )
        .await
    }
}

/// Upserts subscription rows of one audience (client-level, or audience-level when
/// `client_id` is `None`).
#[allow(clippy::too_many_arguments)]
pub async fn write_subscriptions(
    tx: &mut PgConnection,
    audience_id: i64,
    client_id: Option<i64>,
    contact: &[i64],
    status: &[String],
    verified_at: &[Option<DateTime<Utc>>],
    unsubscribed_at: &[Option<DateTime<Utc>>],
    reason: &[String],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    // The audience-level row is unique by a partial index; the client row by the table's key.
    let conflict = if client_id.is_some() {
        "(contact_id, audience_id, client_id)"
    } else {
        "(contact_id, audience_id) WHERE client_id IS NULL"
    };
    let sql = format!(
        "INSERT INTO subscriptions (contact_id, audience_id, client_id, status, verified_at,
                                    unsubscribed_at, unsubscribe_reason, updated_at)
         SELECT u.c, $6, $7, u.s, u.v, u.un, u.r, $8
         FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[])
              AS u(c, s, v, un, r)
         ON CONFLICT {conflict} DO UPDATE SET status = EXCLUDED.status,
             verified_at = EXCLUDED.verified_at, unsubscribed_at = EXCLUDED.unsubscribed_at,
             unsubscribe_reason = EXCLUDED.unsubscribe_reason, updated_at = EXCLUDED.updated_at"
    );
    sqlx::query(&sql)
        .bind(contact)
        .bind(status)
        .bind(verified_at)
        .bind(unsubscribed_at)
        .bind(reason)
        .bind(audience_id)
        .bind(client_id)
        .bind(now)
        .execute(tx)
        .await?;
    Ok(())
}

/// Adds `(contact, tag)` pairs in one audience, creating missing tags (named by the first
/// name given for their slug).
pub async fn add_tags(
    tx: &mut PgConnection,
    audience_id: i64,
    contacts: &[i64],
    slugs: &[String],
    names: &[String],
) -> Result<(), sqlx::Error> {
    if contacts.is_empty() {
        return Ok(());
    }
    let mut first: HashMap<&str, &str> = HashMap::new();
    for (slug, name) in slugs.iter().zip(names) {
        first.entry(slug.as_str()).or_insert(name.as_str());
    }
    // Sorted, so concurrent writers lock tag rows in one order.
    let mut pairs: Vec<(&str, &str)> = first.into_iter().collect();
    pairs.sort_unstable();
    let (tag_slugs, tag_names): (Vec<&str>, Vec<&str>) = pairs.into_iter().unzip();
    sqlx::query(
        "INSERT INTO tags (audience_id, name, slug)
         SELECT $1, left(n, 120), s FROM unnest($2::text[], $3::text[]) AS u(s, n)
         ON CONFLICT (audience_id, slug) DO NOTHING",
    )
    .bind(audience_id)
    .bind(&tag_slugs)
    .bind(&tag_names)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO contact_tags (contact_id, tag_id)
         SELECT u.c, t.id FROM unnest($2::bigint[], $3::text[]) AS u(c, s)
         JOIN tags t ON t.audience_id = $1 AND t.slug = u.s
         ON CONFLICT DO NOTHING",
    )
    .bind(audience_id)
    .bind(contacts)
    .bind(slugs)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_as_django_does() {
        assert!(parse_datetime("2026-01-02T03:04:05Z").is_some());
        assert!(parse_datetime("2026-01-02T03:04:05.123+02:00").is_some());
        assert!(parse_datetime("2026-01-02 03:04").is_some());
        assert!(parse_datetime("yesterday").is_none());
        assert_eq!(
            parse_datetime("2026-01-02T03:04:05"),
            parse_datetime("2026-01-02T03:04:05Z")
        );
    }

    #[test]
    fn tags_must_be_a_list_of_non_empty_strings() {
        assert_eq!(
            parse_tags(Some(&Value::from(""))).unwrap(),
            Vec::<String>::new()
        );
        assert!(parse_tags(Some(&Value::from("a")))
            .unwrap_err()
            .contains_key("tags"));
        assert!(parse_tags(Some(&serde_json::json!(["a", " "]))).is_err());
        assert_eq!(
            parse_tags(Some(&serde_json::json!([" ML Zoomcamp "]))).unwrap(),
            vec!["ML Zoomcamp"]
        );
    }
}
