//! `GET|PUT /api/client/webhook`: where the client's webhooks go (the original's per-client
//! `cmp_webhook_url` / `cmp_webhook_token`, which it could only set in its operator UI), and
//! the global fallback (`CMP_WEBHOOK_URL` / `CMP_WEBHOOK_TOKEN`) the web-serving processes
//! store for the `email_events` trigger.
//!
//! * `PUT {"url": "https://…", "token": "…"}` sets both; the token may be left out to keep the
//!   stored one. `{"url": ""}`, `{"url": null}` or `{}` clears both.
//! * `GET` answers `{"url": "…", "token_set": true}`. The token is never returned.
//! * A URL must be http(s), at most 2048 characters, and its host must not be a literal
//!   loopback, private, link-local (…) address or `localhost`, unless the host is in
//!   `DATAMAILER_OUTBOUND_ALLOW_HOSTS` (names resolving to such addresses are refused when a
//!   webhook is sent).

use axum::extract::State;
use axum::Json;
use datamailer_core::fields::{self, FieldErrors};
use datamailer_core::reasons::Reason;
use datamailer_runtime::outbound::OutboundPolicy;
use serde_json::{json, Map, Value};

use crate::auth::AuthClient;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonObject;
use crate::AppState;

pub const MAX_URL_CHARS: usize = 2048;
pub const MAX_TOKEN_CHARS: usize = 255;

/// What a PUT (or `datamailer provision --webhook-url/--webhook-token`) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookChange {
    /// Clear the URL and the token.
    Clear,
    /// Set the URL; the token too, or keep the stored one when `None`.
    Set { url: String, token: Option<String> },
}

/// Validates a change: field reasons keyed `url` and `token`.
pub fn parse_change(
    body: &Map<String, Value>,
    policy: &OutboundPolicy,
) -> Result<WebhookChange, FieldErrors> {
    let mut errors = FieldErrors::new();
    let url = match fields::present(body, "url") {
        None => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(_) => {
            fields::add(&mut errors, "url", Reason::MustBeString);
            None
        }
    };
    let token = match fields::present(body, "token") {
        None => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(_) => {
            fields::add(&mut errors, "token", Reason::MustBeString);
            None
        }
    };
    if let Some(url) = &url {
        if let Err(reason) = check_url(url, policy) {
            fields::add(&mut errors, "url", reason);
        }
    }
    if url.is_some() {
        match &token {
            Some(t) if t.is_empty() => fields::add(&mut errors, "token", Reason::Required),
            Some(t) if t.chars().count() > MAX_TOKEN_CHARS => {
                fields::add(&mut errors, "token", Reason::TooLong)
            }
            _ => {}
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(match url {
        None => WebhookChange::Clear,
        Some(url) => WebhookChange::Set { url, token },
    })
}

/// Why a webhook URL is refused (`too_long` or `invalid`), if it is.
pub fn check_url(url: &str, policy: &OutboundPolicy) -> Result<(), Reason> {
    if url.chars().count() > MAX_URL_CHARS {
        return Err(Reason::TooLong);
    }
    policy
        .check_url(url)
        .map(|_| ())
        .map_err(|_| Reason::Invalid)
}

/// Applies a change to a client: its URL and whether a token is stored now. `None` when a
/// `Set` without a token meets a client that has none (answer `token: required`).
pub async fn apply_change(
    db: &sqlx::PgPool,
    client_id: i64,
    change: &WebhookChange,
) -> Result<Option<(String, bool)>, sqlx::Error> {
    let (url, token) = match change {
        WebhookChange::Clear => (String::new(), Some(String::new())),
        WebhookChange::Set { url, token } => (url.clone(), token.clone()),
    };
    sqlx::query_as(
        "UPDATE clients SET cmp_webhook_url = $2,
             cmp_webhook_token = coalesce($3, cmp_webhook_token), updated_at = now()
         WHERE id = $1 AND ($3 IS NOT NULL OR btrim(cmp_webhook_token) <> '')
         RETURNING cmp_webhook_url, btrim(cmp_webhook_token) <> ''",
    )
    .bind(client_id)
    .bind(&url)
    .bind(&token)
    .fetch_optional(db)
    .await
}

fn body(url: &str, token_set: bool) -> Value {
    json!({"url": url, "token_set": token_set})
}

pub async fn get_webhook(
    State(state): State<AppState>,
    auth: AuthClient,
) -> ApiResult<Json<Value>> {
    let (url, token_set): (String, bool) = sqlx::query_as(
        "SELECT cmp_webhook_url, btrim(cmp_webhook_token) <> '' FROM clients WHERE id = $1",
    )
    .bind(auth.client_id)
    .fetch_one(&state.db)
    .await?;
    Ok(Json(body(&url, token_set)))
}

pub async fn put_webhook(
    State(state): State<AppState>,
    auth: AuthClient,
    object: JsonObject,
) -> ApiResult<Json<Value>> {
    let change = parse_change(object.map(), &state.outbound_policy)?;
    match apply_change(&state.db, auth.client_id, &change).await? {
        Some((url, token_set)) => Ok(Json(body(&url, token_set))),
        None => Err(ApiError::field("token", Reason::Required)),
    }
}

/// Stores the global fallback for the trigger and the dispatcher: `Some((url, token))`
/// upserts it, `None` removes it. The web-serving processes call it at start.
pub async fn store_fallback(
    db: &sqlx::PgPool,
    fallback: Option<(&str, &str)>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    match fallback {
        Some((url, token)) => sqlx::query(
            "INSERT INTO client_webhook_fallback (singleton, url, token, updated_at)
             VALUES (true, $1, $2, now())
             ON CONFLICT (singleton) DO UPDATE SET url = EXCLUDED.url, token = EXCLUDED.token,
                 updated_at = now()
             WHERE (client_webhook_fallback.url, client_webhook_fallback.token)
                   IS DISTINCT FROM (EXCLUDED.url, EXCLUDED.token)",
        )
        .bind(url.trim())
        .bind(token.trim())
        .execute(db)
        .await
        .context("storing CMP_WEBHOOK_URL/CMP_WEBHOOK_TOKEN (has `datamailer migrate` run?)")?,
        None => sqlx::query("DELETE FROM client_webhook_fallback")
            .execute(db)
            .await
            .context("clearing the client-webhook fallback (has `datamailer migrate` run?)")?,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<WebhookChange, FieldErrors> {
        parse_change(v.as_object().unwrap(), &OutboundPolicy::default())
    }

    #[test]
    fn parses_sets_and_clears() {
        assert_eq!(
            parse(json!({"url": " https://example.com/hook ", "token": "t"})),
            Ok(WebhookChange::Set {
                url: "https://example.com/hook".into(),
                token: Some("t".into())
            })
        );
        assert_eq!(
            parse(json!({"url": "https://example.com/hook"})),
            Ok(WebhookChange::Set {
                url: "https://example.com/hook".into(),
                token: None
            })
        );
        for clear in [json!({"url": ""}), json!({"url": null}), json!({})] {
            assert_eq!(parse(clear), Ok(WebhookChange::Clear));
        }
    }

    #[test]
    fn names_the_bad_field() {
        let reason = |v: Value, f: &str| parse(v).unwrap_err()[f].to_string();
        assert_eq!(
            reason(json!({"url": 3, "token": "t"}), "url"),
            "must_be_string"
        );
        assert_eq!(
            reason(json!({"url": "ftp://x.example/", "token": "t"}), "url"),
            "invalid"
        );
        assert_eq!(
            reason(json!({"url": "not a url", "token": "t"}), "url"),
            "invalid"
        );
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert_eq!(
            reason(json!({"url": long, "token": "t"}), "url"),
            "too_long"
        );
        assert_eq!(
            reason(json!({"url": "https://x.example", "token": ""}), "token"),
            "required"
        );
        assert_eq!(
            reason(
                json!({"url": "https://x.example", "token": "a".repeat(256)}),
                "token"
            ),
            "too_long"
        );
        assert_eq!(
            reason(json!({"url": "https://x.example", "token": 5}), "token"),
            "must_be_string"
        );
    }

    #[test]
    fn refuses_literal_private_hosts_unless_allowed() {
        for url in [
            "http://127.0.0.1:9000/hook",
            "http://10.0.0.5/hook",
            "http://169.254.169.254/latest",
            "http://[::1]/hook",
            "http://localhost/hook",
        ] {
            assert_eq!(
                check_url(url, &OutboundPolicy::default()),
                Err(Reason::Invalid),
                "{url}"
            );
        }
        let allow = OutboundPolicy::from_allow_list("127.0.0.1,localhost");
        assert_eq!(check_url("http://127.0.0.1:9000/hook", &allow), Ok(()));
        assert_eq!(check_url("http://localhost/hook", &allow), Ok(()));
        assert_eq!(
            check_url("http://10.0.0.5/hook", &allow),
            Err(Reason::Invalid)
        );
    }
}
