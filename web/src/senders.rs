//! `GET|PUT /api/client/senders`: the client's sender identities (facts §4.7).

use axum::extract::State;
use axum::Json;
use datamailer_core::transactional::{parse_senders, SenderIdentity};
use serde_json::{json, Value};

use crate::auth::{senders_to_json, AuthClient};
use crate::error::ApiResult;
use crate::json::JsonObject;
use crate::AppState;

fn senders_body(auth: &AuthClient, default_sender_id: &str, senders: &[SenderIdentity]) -> Value {
    json!({
        "client": {
            "organization": auth.organization_slug,
            "slug": auth.client_slug,
            "name": auth.client_name,
        },
        "default_sender_id": default_sender_id,
        "senders": senders_to_json(senders),
    })
}

pub async fn get_senders(auth: AuthClient) -> Json<Value> {
    Json(senders_body(
        &auth,
        &auth.default_sender_id,
        &auth.sender_emails,
    ))
}

pub async fn put_senders(
    State(state): State<AppState>,
    auth: AuthClient,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let (senders, default_sender_id) = parse_senders(&body)?;
    sqlx::query(
        "UPDATE clients SET sender_emails = $2, default_sender_id = $3, updated_at = now() \
         WHERE id = $1",
    )
    .bind(auth.client_id)
    .bind(senders_to_json(&senders))
    .bind(&default_sender_id)
    .execute(&state.db)
    .await?;
    Ok(Json(senders_body(&auth, &default_sender_id, &senders)))
}
