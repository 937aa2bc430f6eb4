//! The one error type of the crate and its JSON responses (facts §4.1).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use datamailer_core::fields::FieldErrors;
use serde_json::{json, Value};

/// Everything a handler can answer besides success.
#[derive(Debug)]
pub enum ApiError {
    /// 400 (or 403 when a scope field is `forbidden`) `validation_error` with field reasons.
    Validation(FieldErrors),
    /// `validation_error` with an explicit status (404 not found, 409 conflicts).
    ValidationStatus(StatusCode, FieldErrors),
    /// 401 with one of the auth codes.
    Unauthorized(&'static str),
    /// 405 JSON with the allowed methods.
    MethodNotAllowed(&'static [&'static str]),
    /// 404 for an unknown route.
    NotFound,
    /// A complete response decided by the handler (e.g. the 409 suppressed send).
    Custom(StatusCode, Value),
    /// Anything unexpected: logged, answered 500 without details.
    Internal(anyhow::Error),
}

impl ApiError {
    /// One field, one reason, status 400 (403 for `forbidden`).
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        errors.insert(field.into(), reason.into());
        ApiError::Validation(errors)
    }

    /// One field, one reason, a chosen status.
    pub fn field_status(
        status: StatusCode,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        let mut errors = FieldErrors::new();
        errors.insert(field.into(), reason.into());
        ApiError::ValidationStatus(status, errors)
    }

    /// 404 `validation_error` naming the field as `not_found`.
    pub fn not_found(field: impl Into<String>) -> Self {
        Self::field_status(StatusCode::NOT_FOUND, field, "not_found")
    }
}

impl From<FieldErrors> for ApiError {
    fn from(errors: FieldErrors) -> Self {
        ApiError::Validation(errors)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        ApiError::Internal(err.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        ApiError::Internal(err)
    }
}

fn validation_body(errors: &FieldErrors) -> Value {
    json!({"error": {"code": "validation_error", "fields": errors}})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Validation(errors) => {
                let status = if errors.values().any(|r| r == "forbidden") {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::BAD_REQUEST
                };
                (status, Json(validation_body(&errors))).into_response()
            }
            ApiError::ValidationStatus(status, errors) => {
                (status, Json(validation_body(&errors))).into_response()
            }
            ApiError::Unauthorized(code) => (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {
                    "code": code,
                    "message": "Authentication credentials were not accepted.",
                }})),
            )
                .into_response(),
            ApiError::MethodNotAllowed(allowed) => {
                let mut response = (
                    StatusCode::METHOD_NOT_ALLOWED,
                    Json(json!({"error": {"code": "method_not_allowed", "allowed_methods": allowed}})),
                )
                    .into_response();
                if let Ok(value) = axum::http::HeaderValue::from_str(&allowed.join(", ")) {
                    response
                        .headers_mut()
                        .insert(axum::http::header::ALLOW, value);
                }
                response
            }
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {"code": "not_found", "message": "Not found."}})),
            )
                .into_response(),
            ApiError::Custom(status, body) => (status, Json(body)).into_response(),
            ApiError::Internal(err) => {
                tracing::error!(error = %format!("{err:#}"), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": {"code": "internal_error", "message": "Internal server error."}})),
                )
                    .into_response()
            }
        }
    }
}

/// Handler results.
pub type ApiResult<T> = Result<T, ApiError>;
