//! The membership tree (facts §4.5): a member of `a:b:c` is also a member of `a:b`, `a` and
//! `<all>` through a cascade row (`cascade-contact:<id>`) that lists its reasons; a cascade
//! row without reasons is inactive, an explicit member keeps its own flag. Every function
//! works inside the caller's transaction, so a request or an import job applies atomically.

use datamailer_core::email;
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::model::{
    self, ancestor_defaults, ListDefaults, ListRow, MemberInput, MemberRow, CASCADE_PREFIX,
    LIST_COLUMNS, MEMBER_COLUMNS,
};

/// A list's place: its client and audience.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub client_id: i64,
    pub audience_id: i64,
}

pub async fn find_list<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    owner: Owner,
    key: &str,
) -> Result<Option<ListRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {LIST_COLUMNS} FROM recipient_lists WHERE client_id = $1 AND audience_id = $2 AND key = $3"
    );
    let row = sqlx::query(&sql)
        .bind(owner.client_id)
        .bind(owner.audience_id)
        .bind(key)
        .fetch_optional(db)
        .await?;
    row.as_ref().map(ListRow::from_row).transpose()
}

/// Creates the list, or (with `overwrite`) updates its type, name and metadata.
pub async fn put_list(
    tx: &mut PgConnection,
    owner: Owner,
    key: &str,
    d: &ListDefaults,
    overwrite: bool,
) -> Result<(ListRow, bool), sqlx::Error> {
    let on_conflict = if overwrite {
        "DO UPDATE SET type = EXCLUDED.type, name = EXCLUDED.name, metadata = EXCLUDED.metadata,
                       updated_at = now()"
    } else {
        // A no-op update, so the row comes back (and is locked) either way.
        "DO UPDATE SET key = EXCLUDED.key"
    };
    let sql = format!(
        "INSERT INTO recipient_lists (client_id, audience_id, key, type, name, metadata)
         VALUES ($1, $2, $3, $4, left($5, 255), $6)
         ON CONFLICT (client_id, audience_id, key) {on_conflict}
         RETURNING {LIST_COLUMNS}, (xmax = 0) AS created"
    );
    let row = sqlx::query(&sql)
        .bind(owner.client_id)
        .bind(owner.audience_id)
        .bind(key)
        .bind(&d.list_type)
        .bind(&d.name)
        .bind(&d.metadata)
        .fetch_one(&mut *tx)
        .await?;
    use sqlx::Row;
    Ok((ListRow::from_row(&row)?, row.try_get("created")?))
}

pub async fn refresh_counts(tx: &mut PgConnection, list_id: i64) -> Result<ListRow, sqlx::Error> {
    let sql = format!(
        "UPDATE recipient_lists l SET
             member_count = (SELECT count(*) FROM recipient_list_members m WHERE m.recipient_list_id = l.id),
             active_member_count = (SELECT count(*) FROM recipient_list_members m
                                    WHERE m.recipient_list_id = l.id AND m.active),
             updated_at = now()
         WHERE l.id = $1 RETURNING {LIST_COLUMNS}"
    );
    let row = sqlx::query(&sql).bind(list_id).fetch_one(&mut *tx).await?;
    ListRow::from_row(&row)
}

pub async fn upsert_contact(tx: &mut PgConnection, email_given: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO contacts (email, normalized_email) VALUES ($1, $2)
         ON CONFLICT (normalized_email) DO UPDATE SET email = EXCLUDED.email
         RETURNING id",
    )
    .bind(email_given.trim())
    .bind(email::normalize(email_given))
    .fetch_one(tx)
    .await
}

async fn member_where(
    tx: &mut PgConnection,
    list_id: i64,
    source_object_key: Option<&str>,
    contact_id: Option<i64>,
) -> Result<Option<MemberRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {MEMBER_COLUMNS} FROM recipient_list_members
         WHERE recipient_list_id = $1 AND ($2::text IS NULL OR source_object_key = $2)
           AND ($3::bigint IS NULL OR contact_id = $3) FOR UPDATE"
    );
    let row = sqlx::query(&sql)
        .bind(list_id)
        .bind(source_object_key)
        .bind(contact_id)
        .fetch_optional(&mut *tx)
        .await?;
    row.as_ref().map(MemberRow::from_row).transpose()
}

pub async fn member_by_source(
    tx: &mut PgConnection,
    list_id: i64,
    source_object_key: &str,
) -> Result<Option<MemberRow>, sqlx::Error> {
    member_where(tx, list_id, Some(source_object_key), None).await
}

async fn member_by_contact(
    tx: &mut PgConnection,
    list_id: i64,
    contact_id: i64,
) -> Result<Option<MemberRow>, sqlx::Error> {
    member_where(tx, list_id, None, Some(contact_id)).await
}

#[allow(clippy::too_many_arguments)]
async fn save_member(
    tx: &mut PgConnection,
    list_id: i64,
    existing: Option<i64>,
    contact_id: i64,
    email: &str,
    source_object_key: &str,
    metadata: &Value,
    active: bool,
) -> Result<MemberRow, sqlx::Error> {
    let sql = match existing {
        Some(_) => format!(
            "UPDATE recipient_list_members SET contact_id = $2, email = $3, source_object_key = $4,
                    metadata = $5, active = $6,
                    removed_at = CASE WHEN $6 THEN NULL ELSE COALESCE(removed_at, now()) END,
                    updated_at = now()
             WHERE id = $7 AND recipient_list_id = $1 RETURNING {MEMBER_COLUMNS}"
        ),
        None => format!(
            "INSERT INTO recipient_list_members (recipient_list_id, contact_id, email, source_object_key,
                                                 metadata, active, removed_at)
             VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 THEN NULL ELSE now() END)
             RETURNING {MEMBER_COLUMNS}"
        ),
    };
    let mut q = sqlx::query(&sql)
        .bind(list_id)
        .bind(contact_id)
        .bind(email)
        .bind(source_object_key)
        .bind(metadata)
        .bind(active);
    if let Some(id) = existing {
        q = q.bind(id);
    }
    let row = q.fetch_one(&mut *tx).await?;
    MemberRow::from_row(&row)
}

/// The original's `upsert_member`: matched by source key or contact (the contact's row wins
/// when they differ); a member with cascade reasons stays active.
pub async fn upsert_member(
    tx: &mut PgConnection,
    list: &ListRow,
    source_object_key: &str,
    input: &MemberInput,
) -> Result<(MemberRow, bool), sqlx::Error> {
    let contact_id = upsert_contact(tx, &input.email).await?;
    let by_source = member_by_source(tx, list.id, source_object_key).await?;
    let by_contact = member_by_contact(tx, list.id, contact_id).await?;
    let member = match (by_source, by_contact) {
        (Some(s), Some(c)) if s.id != c.id => {
            sqlx::query("DELETE FROM recipient_list_members WHERE id = $1")
                .bind(s.id)
                .execute(&mut *tx)
                .await?;
            Some(c)
        }
        (s, c) => s.or(c),
    };
    let existing_reasons = member
        .as_ref()
        .map(|m| model::reasons(&m.metadata))
        .unwrap_or_default();
    let active = input.active || !existing_reasons.is_empty();
    let mut metadata = input.metadata.clone();
    if !existing_reasons.is_empty() {
        metadata["membership_reasons"] = Value::Array(existing_reasons);
    }
    let created = member.is_none();
    let saved = save_member(
        tx,
        list.id,
        member.map(|m| m.id),
        contact_id,
        &email::normalize(&input.email),
        source_object_key,
        &metadata,
        active,
    )
    .await?;
    Ok((saved, created))
}

/// Brings every ancestor's cascade row in line with `member` (of `list`).
pub async fn cascade(
    tx: &mut PgConnection,
    owner: Owner,
    list: &ListRow,
    member: &MemberRow,
) -> Result<(), sqlx::Error> {
    let reason = json!({"list_key": list.key, "source_object_key": member.source_object_key});
    for key in model::ancestors(&list.key) {
        let ancestor = if member.active {
            put_list(tx, owner, &key, &ancestor_defaults(&key), false)
                .await?
                .0
        } else {
            match find_list(&mut *tx, owner, &key).await? {
                Some(l) => l,
                None => continue,
            }
        };
        let existing = member_by_contact(tx, ancestor.id, member.contact_id).await?;
        match existing {
            None if !member.active => {}
            None => {
                save_member(
                    tx,
                    ancestor.id,
                    None,
                    member.contact_id,
                    &member.email,
                    &format!("{CASCADE_PREFIX}{}", member.contact_id),
                    &json!({"membership_reasons": [reason.clone()]}),
                    true,
                )
                .await?;
            }
            Some(row) => {
                let mut reasons: Vec<Value> = model::reasons(&row.metadata)
                    .into_iter()
                    .filter(|r| *r != reason)
                    .collect();
                if member.active {
                    reasons.push(reason.clone());
                }
                let mut metadata = if row.metadata.is_object() {
                    row.metadata.clone()
                } else {
                    json!({})
                };
                metadata["membership_reasons"] = Value::Array(reasons.clone());
                let active = if !reasons.is_empty() {
                    true
                } else if row.source_object_key.starts_with(CASCADE_PREFIX) {
                    false
                } else {
                    row.active
                };
                save_member(
                    tx,
                    ancestor.id,
                    Some(row.id),
                    row.contact_id,
                    &member.email,
                    &row.source_object_key,
                    &metadata,
                    active,
                )
                .await?;
            }
        }
        refresh_counts(tx, ancestor.id).await?;
    }
    Ok(())
}

/// Removes an active member (kept active while cascade reasons remain) and cascades.
pub async fn remove_member(
    tx: &mut PgConnection,
    owner: Owner,
    list: &ListRow,
    member: &MemberRow,
) -> Result<MemberRow, sqlx::Error> {
    let reasons = model::reasons(&member.metadata);
    let saved = if reasons.is_empty() {
        save_member(
            tx,
            list.id,
            Some(member.id),
            member.contact_id,
            &member.email,
            &member.source_object_key,
            &member.metadata,
            false,
        )
        .await?
    } else {
        save_member(
            tx,
            list.id,
            Some(member.id),
            member.contact_id,
            &member.email,
            &member.source_object_key,
            &json!({"membership_reasons": reasons}),
            true,
        )
        .await?
    };
    cascade(tx, owner, list, &saved).await?;
    Ok(saved)
}

/// Deactivates the list's active members whose source keys are not in `keep`, cascading.
/// Returns how many.
pub async fn remove_absent(
    tx: &mut PgConnection,
    owner: Owner,
    list: &ListRow,
    keep: &[String],
) -> Result<usize, sqlx::Error> {
    let sql = format!(
        "SELECT {MEMBER_COLUMNS} FROM recipient_list_members
         WHERE recipient_list_id = $1 AND active AND NOT (source_object_key = ANY($2))
         ORDER BY id FOR UPDATE"
    );
    let rows = sqlx::query(&sql)
        .bind(list.id)
        .bind(keep)
        .fetch_all(&mut *tx)
        .await?;
    for row in &rows {
        let member = MemberRow::from_row(row)?;
        let saved = save_member(
            tx,
            list.id,
            Some(member.id),
            member.contact_id,
            &member.email,
            &member.source_object_key,
            &member.metadata,
            false,
        )
        .await?;
        cascade(tx, owner, list, &saved).await?;
    }
    Ok(rows.len())
}
