//! `POST /api/subscriptions/subscribe` and `.../unsubscribe` (facts §4.4). Fixing the
//! original's gap, an API unsubscribe writes its `unsubscribe` event (and so its client
//! webhook) as the public unsubscribe page does — once per actual change.

use axum::extract::State;
use axum::Json;
use chrono::{SubsecRound, Utc};
use serde_json::{json, Value};

use crate::auth::AuthClient;
use crate::contacts::upsert::{self, ContactInput, SubscriptionChange};
use crate::contacts::{as_map, invalid, model};
use crate::error::ApiResult;
use crate::json::JsonObject;
use crate::scope;
use crate::AppState;

/// Subscribe: the client subscription becomes `subscribed`, verified now; tags are added.
pub async fn subscribe(
    State(state): State<AppState>,
    auth: AuthClient,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let data = as_map(&body);
    let scope = scope::resolve(&state, &auth, data, true).await?;
    let tags = upsert::parse_tags(data.get("tags"))?;
    let input = ContactInput {
        email: scope.email.clone(),
        normalized: scope.normalized_email(),
        subscription: SubscriptionChange::Subscribe,
        tags,
        validation: None,
        suppression: [None; 3],
    };
    let mut tx = state.db.begin().await?;
    let done = upsert::upsert(&mut tx, scope.audience_id, scope.client_id, &[input]).await?;
    tx.commit().await?;
    Ok(Json(model::contact_payload(
        done.first().map(|u| &u.state),
        &scope.audience_slug,
        &scope.client_slug,
        &scope.email,
    )))
}

/// Unsubscribe with `scope`: `client` (the client subscription), `audience` (the
/// audience-level one) or `global` (the contact).
pub async fn unsubscribe(
    State(state): State<AppState>,
    auth: AuthClient,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let data = as_map(&body);
    let which = match data.get("scope").and_then(Value::as_str) {
        Some(s @ ("client" | "audience" | "global")) => s.to_string(),
        _ => return Err(invalid("scope", "invalid")),
    };
    let scope = scope::resolve(&state, &auth, data, true).await?;
    let reason = match data.get("reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("reason", "must_be_string")),
    };
    let now = Utc::now().trunc_subsecs(6);
    let mut tx = state.db.begin().await?;
    let contact_id: i64 = sqlx::query_scalar(
        "INSERT INTO contacts (email, normalized_email) VALUES ($1, $2)
         ON CONFLICT (normalized_email) DO UPDATE SET email = EXCLUDED.email
         RETURNING id",
    )
    .bind(&scope.email)
    .bind(scope.normalized_email())
    .fetch_one(&mut *tx)
    .await?;
    let changed = if which == "global" {
        sqlx::query(
            "UPDATE contacts SET global_unsubscribed_at = $2, updated_at = now()
             WHERE id = $1 AND global_unsubscribed_at IS NULL",
        )
        .bind(contact_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0
    } else {
        let client_id = (which == "client").then_some(scope.client_id);
        let current: Option<(String, Option<chrono::DateTime<Utc>>, String)> = sqlx::query_as(
            "SELECT status, unsubscribed_at, unsubscribe_reason FROM subscriptions
             WHERE contact_id = $1 AND audience_id = $2 AND client_id IS NOT DISTINCT FROM $3
             FOR UPDATE",
        )
        .bind(contact_id)
        .bind(scope.audience_id)
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?;
        let already = current
            .as_ref()
            .is_some_and(|(s, _, r)| s == "unsubscribed" && *r == reason);
        if !already {
            let since = current
                .as_ref()
                .filter(|(s, ..)| s == "unsubscribed")
                .and_then(|(_, at, _)| *at)
                .unwrap_or(now);
            let verified: Option<chrono::DateTime<Utc>> = sqlx::query_scalar(
                "SELECT verified_at FROM subscriptions
                 WHERE contact_id = $1 AND audience_id = $2 AND client_id IS NOT DISTINCT FROM $3",
            )
            .bind(contact_id)
            .bind(scope.audience_id)
            .bind(client_id)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
            upsert::write_subscriptions(
                &mut tx,
                scope.audience_id,
                client_id,
                &[contact_id],
                &["unsubscribed".to_string()],
                &[verified],
                &[Some(since)],
                std::slice::from_ref(&reason),
                now,
            )
            .await?;
        }
        current.as_ref().is_none_or(|(s, ..)| s != "unsubscribed")
    };
    if changed {
        sqlx::query(
            "INSERT INTO email_events (contact_id, client_id, audience_id, event_type, metadata)
             VALUES ($1, $2, $3, 'unsubscribe',
                     jsonb_build_object('scope', $4::text, 'source', 'api', 'reason', $5::text))",
        )
        .bind(contact_id)
        .bind(scope.client_id)
        .bind(scope.audience_id)
        .bind(&which)
        .bind(&reason)
        .execute(&mut *tx)
        .await?;
    }
    let state_now =
        model::load(&mut *tx, &[contact_id], scope.audience_id, scope.client_id).await?;
    tx.commit().await?;
    let mut payload = model::status_payload(
        state_now.first(),
        &scope.audience_slug,
        &scope.client_slug,
        &scope.email,
    );
    payload.insert("scope".into(), json!(which));
    Ok(Json(Value::Object(payload)))
}
