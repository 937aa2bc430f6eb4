//! `POST /api/contacts/erase`: erases a contact related to the caller's scope, everywhere
//! (facts §4.3), and keeps a suppression tombstone so the address cannot come back sendable
//! (migration 0007: a keyed hash of the address, no plain text).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::as_map;
use crate::auth::AuthClient;
use crate::error::ApiResult;
use crate::json::JsonObject;
use crate::scope;
use crate::AppState;

const COUNTS: [&str; 9] = [
    "subscriptions_deleted",
    "category_preferences_deleted",
    "contact_tags_deleted",
    "source_metadata_deleted",
    "recipient_list_members_deleted",
    "transactional_messages_anonymized",
    "campaign_recipients_anonymized",
    "email_events_anonymized",
    "cmp_callbacks_anonymized",
];

/// Each statement's row count lands in the counter of the same index in [`COUNTS`].
const STATEMENTS: [&str; 9] = [
    "DELETE FROM subscriptions WHERE contact_id = $1",
    "DELETE FROM category_preferences WHERE contact_id = $1",
    "DELETE FROM contact_tags WHERE contact_id = $1",
    "DELETE FROM contact_source_metadata WHERE contact_id = $1",
    "DELETE FROM recipient_list_members WHERE contact_id = $1",
    "UPDATE transactional_messages SET email = $2, context = '{}', metadata = '{\"erased\": true}',
            updated_at = now() WHERE contact_id = $1",
    "UPDATE campaign_recipients SET email = $2, updated_at = now() WHERE contact_id = $1",
    "UPDATE email_events SET metadata = '{\"erased\": true}' WHERE contact_id = $1",
    "UPDATE cmp_callbacks SET payload = '{\"erased\": true}', updated_at = now() WHERE contact_id = $1",
];

/// Whether the contact has anything in this scope (the original's
/// `contact_has_scoped_relationship`).
const RELATED_SQL: &str = "\
SELECT EXISTS (SELECT 1 FROM subscriptions WHERE contact_id = $1 AND audience_id = $2 AND client_id = $3)
    OR EXISTS (SELECT 1 FROM category_preferences WHERE contact_id = $1 AND audience_id = $2 AND client_id = $3)
    OR EXISTS (SELECT 1 FROM contact_source_metadata WHERE contact_id = $1 AND audience_id = $2 AND client_id = $3)
    OR EXISTS (SELECT 1 FROM recipient_list_members m JOIN recipient_lists l ON l.id = m.recipient_list_id
               WHERE m.contact_id = $1 AND l.audience_id = $2 AND l.client_id = $3)
    OR EXISTS (SELECT 1 FROM campaign_recipients r JOIN campaigns c ON c.id = r.campaign_id
               WHERE r.contact_id = $1 AND c.audience_id = $2 AND c.client_id = $3)
    OR EXISTS (SELECT 1 FROM transactional_messages WHERE contact_id = $1 AND client_id = $3)
    OR EXISTS (SELECT 1 FROM email_events WHERE contact_id = $1 AND audience_id = $2 AND client_id = $3)
    OR EXISTS (SELECT 1 FROM cmp_callbacks WHERE contact_id = $1 AND audience_id = $2 AND client_id = $3)";

pub async fn erase(
    State(state): State<AppState>,
    auth: AuthClient,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let scope = scope::resolve(&state, &auth, as_map(&body), true).await?;
    let normalized = scope.normalized_email();
    let mut counts = serde_json::Map::new();
    for name in COUNTS {
        counts.insert(name.into(), json!(0));
    }
    let not_erased = || {
        Json(
            json!({"email": normalized, "erased": false, "contact_id": null,
                    "counts": Value::Object(counts.clone())}),
        )
    };
    let mut tx = state.db.begin().await?;
    let contact: Option<i64> =
        sqlx::query_scalar("SELECT id FROM contacts WHERE normalized_email = $1 FOR UPDATE")
            .bind(&normalized)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(id) = contact else {
        return Ok(not_erased());
    };
    let related: bool = sqlx::query_scalar(RELATED_SQL)
        .bind(id)
        .bind(scope.audience_id)
        .bind(scope.client_id)
        .fetch_one(&mut *tx)
        .await?;
    if !related {
        return Ok(not_erased());
    }
    let erased_email = format!("erased-contact-{id}@erased.invalid");
    // The tombstone first, while the contact still holds its suppressions.
    sqlx::query(
        "INSERT INTO suppression_tombstones (email_hash, hard_bounced_at, complained_at, global_unsubscribed_at)
         SELECT datamailer_email_hash(normalized_email), hard_bounced_at, complained_at, global_unsubscribed_at
         FROM contacts WHERE id = $1
           AND (hard_bounced_at IS NOT NULL OR complained_at IS NOT NULL OR global_unsubscribed_at IS NOT NULL)
         ON CONFLICT (email_hash) DO UPDATE SET
             hard_bounced_at = COALESCE(suppression_tombstones.hard_bounced_at, EXCLUDED.hard_bounced_at),
             complained_at = COALESCE(suppression_tombstones.complained_at, EXCLUDED.complained_at),
             global_unsubscribed_at = COALESCE(suppression_tombstones.global_unsubscribed_at, EXCLUDED.global_unsubscribed_at)",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    for (name, sql) in COUNTS.iter().zip(STATEMENTS) {
        let mut q = sqlx::query(sql).bind(id);
        if sql.contains("$2") {
            q = q.bind(&erased_email);
        }
        let n = q.execute(&mut *tx).await?.rows_affected();
        counts.insert((*name).into(), json!(n));
    }
    sqlx::query(
        "UPDATE contacts SET email = $2, normalized_email = $2, verified_at = NULL,
                email_validation_status = 'unknown', email_validation_reason = '',
                email_validated_at = NULL, global_unsubscribed_at = NULL,
                hard_bounced_at = NULL, complained_at = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&erased_email)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(json!({
        "email": normalized,
        "erased": true,
        "contact_id": id,
        "counts": Value::Object(counts),
    })))
}
