//! A contact as one scope sees it — the contact row, its audience-level and client
//! subscriptions and its audience tags, read in one query — and the payloads built from it
//! (facts §4.2: "contact status", "contact payload", and the export row).

use chrono::{DateTime, Utc};
use datamailer_core::email;
use datamailer_core::time::{iso, iso_opt};
use serde_json::{json, Map, Value};
use sqlx::postgres::PgRow;
use sqlx::Row;

/// Validation statuses that block marketing (not transactional) mail.
pub const NON_DELIVERABLE: &[&str] = &[
    "invalid_syntax",
    "no_mx",
    "disposable",
    "risky",
    "manually_invalid",
];

/// Every `EmailValidationStatus`.
pub const VALIDATION_STATUSES: &[&str] = &[
    "unknown",
    "valid",
    "invalid_syntax",
    "no_mx",
    "disposable",
    "risky",
    "manually_invalid",
    "externally_validated",
];

/// Every subscription status.
pub const SUBSCRIPTION_STATUSES: &[&str] = &["pending", "subscribed", "unsubscribed"];

#[derive(Debug, Clone, PartialEq)]
pub struct SubState {
    pub status: String,
    pub verified_at: Option<DateTime<Utc>>,
    pub unsubscribed_at: Option<DateTime<Utc>>,
    pub unsubscribe_reason: String,
}

#[derive(Debug, Clone)]
pub struct ContactState {
    pub id: i64,
    pub email: String,
    pub normalized_email: String,
    pub verified_at: Option<DateTime<Utc>>,
    pub validation_status: String,
    pub validation_reason: String,
    pub validated_at: Option<DateTime<Utc>>,
    pub global_unsubscribed_at: Option<DateTime<Utc>>,
    pub hard_bounced_at: Option<DateTime<Utc>>,
    pub complained_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub audience_sub: Option<SubState>,
    pub client_sub: Option<SubState>,
    /// Slugs of the contact's tags in the audience, sorted.
    pub tags: Vec<String>,
}

/// A contact row's own columns (what [`ContactState::created`] reads).
pub const CONTACT_COLUMNS: &str =
    "id, email, normalized_email, verified_at, email_validation_status, \
     email_validation_reason, email_validated_at, global_unsubscribed_at, hard_bounced_at, \
     complained_at, created_at, updated_at";

/// The columns of a [`ContactState`]; `$A` is the audience id and `$C` the client id
/// placeholders, replaced by [`state_sql`].
const STATE_SELECT: &str = "\
SELECT c.id, c.email, c.normalized_email, c.verified_at, c.email_validation_status,
       c.email_validation_reason, c.email_validated_at, c.global_unsubscribed_at,
       c.hard_bounced_at, c.complained_at, c.created_at, c.updated_at,
       sa.status AS a_status, sa.verified_at AS a_verified_at,
       sa.unsubscribed_at AS a_unsubscribed_at, sa.unsubscribe_reason AS a_reason,
       sc.status AS c_status, sc.verified_at AS c_verified_at,
       sc.unsubscribed_at AS c_unsubscribed_at, sc.unsubscribe_reason AS c_reason,
       ARRAY(SELECT t.slug FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
             WHERE ct.contact_id = c.id AND t.audience_id = $A ORDER BY t.slug) AS tags
FROM contacts c
LEFT JOIN LATERAL (SELECT s.status, s.verified_at, s.unsubscribed_at, s.unsubscribe_reason
                   FROM subscriptions s
                   WHERE s.contact_id = c.id AND s.audience_id = $A AND s.client_id IS NULL LIMIT 1) sa ON true
";

/// A state query: the select, the client-subscription join (`LEFT` or inner) and a tail
/// (`WHERE ...`), with the audience and client ids at the given placeholder numbers.
pub fn state_sql(audience_param: u8, client_param: u8, inner: bool, tail: &str) -> String {
    // LATERAL lookups keyed by the contact (`LIMIT 1` keeps the planner from flattening them
    // into a join), so a batch of thousands costs an index probe per contact whatever the
    // statistics say: a bulk import outruns autovacuum, and with stale statistics a join
    // scanned every subscription of the scope once per contact. The client test is written
    // `IS NOT DISTINCT FROM` (not indexable, same meaning for a non-null id) so that without
    // statistics the planner cannot prefer the (audience, client, status) index and filter
    // the whole scope by contact on every probe.
    let join = if inner { "JOIN" } else { "LEFT JOIN" };
    format!(
        "{STATE_SELECT}{join} LATERAL (SELECT s.status, s.verified_at, s.unsubscribed_at, s.unsubscribe_reason
                   FROM subscriptions s
                   WHERE s.contact_id = c.id AND s.audience_id = $A
                     AND s.client_id IS NOT DISTINCT FROM $C LIMIT 1) sc ON true\n{tail}"
    )
    .replace("$A", &format!("${audience_param}"))
    .replace("$C", &format!("${client_param}"))
}

fn sub_from(row: &PgRow, prefix: &str) -> Result<Option<SubState>, sqlx::Error> {
    let status: Option<String> = row.try_get(format!("{prefix}_status").as_str())?;
    Ok(match status {
        None => None,
        Some(status) => Some(SubState {
            status,
            verified_at: row.try_get(format!("{prefix}_verified_at").as_str())?,
            unsubscribed_at: row.try_get(format!("{prefix}_unsubscribed_at").as_str())?,
            unsubscribe_reason: row.try_get(format!("{prefix}_reason").as_str())?,
        }),
    })
}

impl ContactState {
    /// A contact just inserted: its row's columns, no subscriptions, no tags.
    pub fn created(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            normalized_email: row.try_get("normalized_email")?,
            verified_at: row.try_get("verified_at")?,
            validation_status: row.try_get("email_validation_status")?,
            validation_reason: row.try_get("email_validation_reason")?,
            validated_at: row.try_get("email_validated_at")?,
            global_unsubscribed_at: row.try_get("global_unsubscribed_at")?,
            hard_bounced_at: row.try_get("hard_bounced_at")?,
            complained_at: row.try_get("complained_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            audience_sub: None,
            client_sub: None,
            tags: Vec::new(),
        })
    }

    /// A contact with its subscriptions in scope and its tags (a [`state_sql`] row).
    pub fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            audience_sub: sub_from(row, "a")?,
            client_sub: sub_from(row, "c")?,
            tags: row.try_get("tags")?,
            ..Self::created(row)?
        })
    }

    pub fn hard_suppressed(&self) -> bool {
        self.hard_bounced_at.is_some() || self.complained_at.is_some()
    }

    pub fn suppression_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self.global_unsubscribed_at.is_some() {
            reasons.push("global_unsubscribed");
        }
        if self.hard_bounced_at.is_some() {
            reasons.push("hard_bounce");
        }
        if self.complained_at.is_some() {
            reasons.push("complaint");
        }
        reasons
    }

    pub fn can_send_marketing(&self) -> bool {
        let verified = self.verified_at.is_some()
            || self
                .audience_sub
                .as_ref()
                .is_some_and(|s| s.verified_at.is_some())
            || self
                .client_sub
                .as_ref()
                .is_some_and(|s| s.verified_at.is_some());
        verified
            && self.suppression_reasons().is_empty()
            && !NON_DELIVERABLE.contains(&self.validation_status.as_str())
            && self
                .client_sub
                .as_ref()
                .is_some_and(|s| s.status == "subscribed")
    }
}

/// Loads the states of `ids` in one scope.
pub async fn load<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    ids: &[i64],
    audience_id: i64,
    client_id: i64,
) -> Result<Vec<ContactState>, sqlx::Error> {
    let sql = state_sql(2, 3, false, "WHERE c.id = ANY($1) ORDER BY c.id");
    let rows = sqlx::query(&sql)
        .bind(ids)
        .bind(audience_id)
        .bind(client_id)
        .fetch_all(db)
        .await?;
    rows.iter().map(ContactState::from_row).collect()
}

/// Loads the state of one address in one scope.
pub async fn load_by_email<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    normalized_email: &str,
    audience_id: i64,
    client_id: i64,
) -> Result<Option<ContactState>, sqlx::Error> {
    let sql = state_sql(2, 3, false, "WHERE c.normalized_email = $1");
    let row = sqlx::query(&sql)
        .bind(normalized_email)
        .bind(audience_id)
        .bind(client_id)
        .fetch_optional(db)
        .await?;
    row.as_ref().map(ContactState::from_row).transpose()
}

fn sub_payload(slug: &str, sub: Option<&SubState>) -> Value {
    match sub {
        None => json!({
            "slug": slug,
            "subscribed": false,
            "status": null,
            "verified": false,
            "verified_at": null,
            "unsubscribed_at": null,
            "unsubscribe_reason": "",
        }),
        Some(s) => json!({
            "slug": slug,
            "subscribed": s.status == "subscribed",
            "status": s.status,
            "verified": s.verified_at.is_some(),
            "verified_at": iso_opt(s.verified_at),
            "unsubscribed_at": iso_opt(s.unsubscribed_at),
            "unsubscribe_reason": s.unsubscribe_reason,
        }),
    }
}

/// The "contact status" payload. A contact is shown only when it has a client subscription
/// in this scope; otherwise the answer is the same as for an unknown address.
pub fn status_payload(
    state: Option<&ContactState>,
    audience_slug: &str,
    client_slug: &str,
    requested_email: &str,
) -> Map<String, Value> {
    let visible = state.filter(|s| s.client_sub.is_some());
    let body = match visible {
        None => json!({
            "contact_id": null,
            "email": email::normalize(requested_email),
            "exists": false,
            "verified": false,
            "verified_at": null,
            "email_validation": {"status": "unknown", "reason": "", "validated_at": null},
            "global_unsubscribed": false,
            "hard_bounced": false,
            "complained": false,
            "audience": sub_payload(audience_slug, None),
            "client": sub_payload(client_slug, None),
            "can_send_marketing": false,
            "can_send_transactional": false,
        }),
        Some(c) => json!({
            "contact_id": c.id,
            "email": c.normalized_email,
            "exists": true,
            "verified": c.verified_at.is_some(),
            "verified_at": iso_opt(c.verified_at),
            "email_validation": {
                "status": c.validation_status,
                "reason": c.validation_reason,
                "validated_at": iso_opt(c.validated_at),
            },
            "global_unsubscribed": c.global_unsubscribed_at.is_some(),
            "hard_bounced": c.hard_bounced_at.is_some(),
            "complained": c.complained_at.is_some(),
            "audience": sub_payload(audience_slug, c.audience_sub.as_ref()),
            "client": sub_payload(client_slug, c.client_sub.as_ref()),
            "can_send_marketing": c.can_send_marketing(),
            "can_send_transactional": !c.hard_suppressed(),
        }),
    };
    match body {
        Value::Object(map) => map,
        _ => unreachable!("json! object"),
    }
}

/// The "contact payload": the status plus the contact's sorted audience tags (only for a
/// visible contact: tags are scoped data).
pub fn contact_payload(
    state: Option<&ContactState>,
    audience_slug: &str,
    client_slug: &str,
    requested_email: &str,
) -> Value {
    let mut map = status_payload(state, audience_slug, client_slug, requested_email);
    let tags = state
        .filter(|s| s.client_sub.is_some())
        .map(|s| s.tags.clone())
        .unwrap_or_default();
    map.insert("tags".into(), json!(tags));
    Value::Object(map)
}

/// A contact as `GET /api/contacts` lists it.
pub fn export_payload(state: &ContactState, audience_slug: &str, client_slug: &str) -> Value {
    let Value::Object(mut map) = contact_payload(Some(state), audience_slug, client_slug, "")
    else {
        unreachable!("object")
    };
    let sub = state.client_sub.as_ref();
    map.insert("subscription_status".into(), json!(sub.map(|s| &s.status)));
    map.insert(
        "unsubscribed".into(),
        json!(sub.is_some_and(|s| s.status == "unsubscribed")),
    );
    map.insert(
        "unsubscribed_at".into(),
        sub.map_or(Value::Null, |s| iso_opt(s.unsubscribed_at)),
    );
    map.insert(
        "unsubscribe_reason".into(),
        json!(sub.map_or("", |s| s.unsubscribe_reason.as_str())),
    );
    map.insert("created_at".into(), json!(iso(state.created_at)));
    map.insert("updated_at".into(), json!(iso(state.updated_at)));
    Value::Object(map)
}

/// The export CSV's columns, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "email",
    "audience",
    "client",
    "tags",
    "subscription_status",
    "verified",
    "verified_at",
    "email_validation_status",
    "email_validation_reason",
    "email_validated_at",
    "global_unsubscribed",
    "hard_bounced",
    "complained",
    "unsubscribed",
    "unsubscribed_at",
    "unsubscribe_reason",
    "updated_at",
];

fn py_bool(b: bool) -> String {
    if b { "True" } else { "False" }.to_string()
}

fn iso_or_blank(dt: Option<DateTime<Utc>>) -> String {
    dt.map(iso).unwrap_or_default()
}

/// One export CSV row (booleans as Python prints them, `True`/`False`, which the importer
/// reads back).
pub fn csv_row(state: &ContactState, audience_slug: &str, client_slug: &str) -> Vec<String> {
    let sub = state.client_sub.as_ref();
    let verified_at = state.verified_at.or(sub.and_then(|s| s.verified_at));
    vec![
        state.normalized_email.clone(),
        audience_slug.to_string(),
        client_slug.to_string(),
        state.tags.join(";"),
        sub.map(|s| s.status.clone()).unwrap_or_default(),
        py_bool(verified_at.is_some()),
        iso_or_blank(verified_at),
        state.validation_status.clone(),
        state.validation_reason.clone(),
        iso_or_blank(state.validated_at),
        py_bool(state.global_unsubscribed_at.is_some()),
        py_bool(state.hard_bounced_at.is_some()),
        py_bool(state.complained_at.is_some()),
        py_bool(sub.is_some_and(|s| s.status == "unsubscribed")),
        iso_or_blank(sub.and_then(|s| s.unsubscribed_at)),
        sub.map(|s| s.unsubscribe_reason.clone())
            .unwrap_or_default(),
        iso(state.updated_at),
    ]
}
