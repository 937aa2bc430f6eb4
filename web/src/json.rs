//! The API's JSON body rules: an empty body is `{}`, invalid JSON is 400
//! `{"body":"invalid_json"}`, anything but an object is 400 `{"body":"must_be_object"}`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A request body that is a JSON object (the whole object as a `Value`).
pub struct JsonObject(pub Value);

impl JsonObject {
    /// The body as a map.
    pub fn map(&self) -> &Map<String, Value> {
        self.0.as_object().expect("JsonObject holds an object")
    }
}

/// Parses a body by the API's rules.
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Value::Object(Map::new()));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|_| ApiError::field("body", "invalid_json"))?;
    if !value.is_object() {
        return Err(ApiError::field("body", "must_be_object"));
    }
    Ok(value)
}

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::Custom(
                    rejection.status(),
                    serde_json::json!({"error": {"code": "payload_too_large",
                        "message": "Request body is too large."}}),
                )
            } else {
                ApiError::field("body", "invalid_json")
            }
        })?;
        parse_body(&bytes).map(JsonObject)
    }
}
