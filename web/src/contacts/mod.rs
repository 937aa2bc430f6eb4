//! The contacts API (facts §4.3): upsert, status, listing and exports, imports, erase,
//! preferences, and the per-contact tag, verification, validation, suppression and history
//! endpoints. Contacts are global; everything a client sees of one is through its own
//! subscription in an audience of its organization ([`crate::scope`]).

use axum::extract::State;
use axum::Json;
use serde_json::{Map, Value};

use crate::auth::AuthClient;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonObject;
use crate::scope::{self, QueryMap};
use crate::AppState;

pub mod by_id;
pub mod erase;
pub mod io;
pub mod model;
pub mod preferences;
pub mod upsert;
pub mod writer;

/// `POST /api/contacts`: upsert one contact and its client subscription.
pub async fn upsert_contact(
    State(state): State<AppState>,
    auth: AuthClient,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let data = as_map(&body);
    let scope = scope::resolve(&state, &auth, data, true).await?;
    let input = upsert::parse_contact(data, &scope.email)?;
    // Committed together with the other upserts waiting (group commit).
    let done = state
        .contact_writer()
        .write(writer::ContactUpsert {
            audience_id: scope.audience_id,
            client_id: scope.client_id,
            input,
        })
        .await?;
    Ok(Json(model::contact_payload(
        Some(&done.state),
        &scope.audience_slug,
        &scope.client_slug,
        &scope.email,
    )))
}

/// `GET /api/contacts/status`.
pub async fn status(
    State(state): State<AppState>,
    auth: AuthClient,
    QueryMap(query): QueryMap,
) -> ApiResult<Json<Value>> {
    let scope = scope::resolve(&state, &auth, &query, true).await?;
    let contact = model::load_by_email(
        &state.db,
        &scope.normalized_email(),
        scope.audience_id,
        scope.client_id,
    )
    .await?;
    Ok(Json(Value::Object(model::status_payload(
        contact.as_ref(),
        &scope.audience_slug,
        &scope.client_slug,
        &scope.email,
    ))))
}

pub(crate) fn as_map(body: &Value) -> &Map<String, Value> {
    body.as_object().expect("JsonObject holds an object")
}

/// One field error (400).
pub(crate) fn invalid(field: &str, reason: &str) -> ApiError {
    ApiError::field(field, reason)
}
