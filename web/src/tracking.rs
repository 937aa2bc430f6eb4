//! Public tracking and unsubscribe endpoints (facts §3.8, with its gaps fixed; no Bearer).
//!
//! * `GET /t/o/{token}.gif`: the open pixel. `GET /t/c/{token}?u=&s=`: the click redirect,
//!   only to the destination our signature `s` names. A token we did not sign is refused
//!   before any database work.
//! * `GET /unsubscribe/{token}` only shows the page (link scanners unsubscribe nobody);
//!   `POST` unsubscribes: RFC 8058 one-click (`List-Unsubscribe=One-Click`, the client scope)
//!   or the page's form with its `scope`.
//! * Links in mail the original sent before the move carry its tokens (43 random characters,
//!   stored hashed; `import-original` copies the hashes): they keep working, looked up by
//!   hash. Their click links are not signed, so they redirect only to a host the campaign's
//!   HTML links to. Until some imported recipient has a token, such a token costs no query.
//! * Machine traffic is recorded but kept out of the counters: a HEAD request, or a hit
//!   within 3 s of the send (`campaign_engage`, migration 0017) (mail scanners and privacy proxies fetch at
//!   delivery, people do not). Its event carries `machine: true` and why.

use axum::extract::{Path, Query, RawForm, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use datamailer_core::contracts::{EmailEventType, EmailEventV1};
use datamailer_core::queue::QueueName;
use datamailer_core::tracking::{
    campaign_links_to_host, is_allowed_destination, legacy_token_hash, Purpose,
};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;

/// The 43-byte transparent GIF.
const GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

fn gif(status: StatusCode) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "image/gif"),
            (
                header::CACHE_CONTROL,
                "no-store, no-cache, must-revalidate, max-age=0",
            ),
            (header::PRAGMA, "no-cache"),
        ],
        GIF.as_slice(),
    )
        .into_response()
}

/// 302, as the original answers.
fn found(url: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, url)]).into_response()
}

fn invalid_redirect() -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"code": "invalid_tracking_redirect"}})),
    )
        .into_response()
}

/// An open or click: applied now by `campaign_engage` (migration 0017: counters, unique
/// counts, the event, machine hits flagged), or with async tracking on, enqueued as an
/// `email-events` message the email-events tree applies with the same function. Async answers
/// `true` without knowing whether the recipient still exists.
async fn engage(
    state: &AppState,
    recipient: i64,
    kind: EmailEventType,
    head: bool,
    url: &str,
) -> anyhow::Result<bool> {
    if !state.tracking_async {
        let exists: bool = sqlx::query_scalar("SELECT campaign_engage($1, $2, $3, $4, now(), '')")
            .bind(recipient)
            .bind(kind.as_str())
            .bind(head)
            .bind(url)
            .fetch_one(&state.db)
            .await?;
        return Ok(exists);
    }
    let key = uuid::Uuid::new_v4().to_string();
    let mut metadata = serde_json::Map::new();
    metadata.insert("head".into(), json!(head));
    let body = EmailEventV1 {
        event_id: key.clone(),
        occurred_at: datamailer_core::time::iso(chrono::Utc::now()),
        idempotency_key: key,
        event_type: kind,
        campaign_id: None,
        campaign_recipient_id: Some(recipient),
        transactional_message_id: None,
        contact_id: None,
        client_id: None,
        audience_id: None,
        tracking_token: None,
        url: (!url.is_empty()).then(|| url.to_string()),
        metadata: Some(metadata),
    }
    .to_json();
    state.enqueue(QueueName::EmailEvents.as_str(), body).await?;
    Ok(true)
}

/// Whether any recipient carries one of the original's token hashes, read at most once a
/// minute (so an import made while the web runs is seen within a minute).
#[derive(Default)]
pub struct LegacyTokens {
    checked: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

impl LegacyTokens {
    async fn present(&self, db: &sqlx::PgPool) -> bool {
        if let Some((at, present)) = *self.checked.lock().expect("legacy flag") {
            if at.elapsed() < std::time::Duration::from_secs(60) {
                return present;
            }
        }
        let present = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM campaign_recipients WHERE tracking_token_hash IS NOT NULL)",
        )
        .fetch_one(db)
        .await
        .unwrap_or(false);
        *self.checked.lock().expect("legacy flag") = Some((std::time::Instant::now(), present));
        present
    }
}

/// Which of the original's two token columns a token is looked up in.
#[derive(Clone, Copy)]
enum LegacyColumn {
    Tracking,
    Unsubscribe,
}

/// The recipient (and its campaign's HTML) one of the original's tokens names.
async fn legacy_recipient(
    state: &AppState,
    column: LegacyColumn,
    token: &str,
) -> Option<(i64, String)> {
    let hash = legacy_token_hash(token)?;
    if !state.legacy_tokens.present(&state.db).await {
        return None;
    }
    let column = match column {
        LegacyColumn::Tracking => "tracking_token_hash",
        LegacyColumn::Unsubscribe => "unsubscribe_token_hash",
    };
    sqlx::query_as(&format!(
        "SELECT r.id, c.html_body FROM campaign_recipients r JOIN campaigns c ON c.id = r.campaign_id
          WHERE r.{column} = $1"
    ))
        .bind(hash)
        .fetch_optional(&state.db)
        .await
        .ok()
        .flatten()
}

/// `GET /t/o/{token}.gif` (HEAD too, as a machine hit).
pub async fn open_pixel(
    State(state): State<AppState>,
    method: Method,
    Path(file): Path<String>,
) -> Response {
    let Some(token) = file.strip_suffix(".gif") else {
        return gif(StatusCode::NOT_FOUND);
    };
    let Ok(keys) = state.tracking_keys().await else {
        return gif(StatusCode::SERVICE_UNAVAILABLE);
    };
    let recipient = match keys.verify(Purpose::Tracking, token) {
        Some(id) => id,
        None => match legacy_recipient(&state, LegacyColumn::Tracking, token).await {
            Some((id, _)) => id,
            None => return gif(StatusCode::NOT_FOUND),
        },
    };
    match engage(
        &state,
        recipient,
        EmailEventType::Open,
        method == Method::HEAD,
        "",
    )
    .await
    {
        Ok(true) => gif(StatusCode::OK),
        Ok(false) => gif(StatusCode::NOT_FOUND),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "recording an open failed");
            gif(StatusCode::OK)
        }
    }
}

#[derive(Deserialize)]
pub struct ClickQuery {
    #[serde(default)]
    u: String,
    #[serde(default)]
    s: String,
}

/// `GET /t/c/{token}?u=&s=`: 302 to `u`, if we signed it for this token.
pub async fn click(
    State(state): State<AppState>,
    method: Method,
    Path(token): Path<String>,
    Query(q): Query<ClickQuery>,
) -> Response {
    if !is_allowed_destination(&q.u) {
        return invalid_redirect();
    }
    let Ok(keys) = state.tracking_keys().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let recipient = match keys.verify(Purpose::Tracking, &token) {
        Some(id) if keys.verify_click(&token, &q.u, &q.s) => id,
        Some(_) => return invalid_redirect(),
        None => match legacy_recipient(&state, LegacyColumn::Tracking, &token).await {
            Some((id, html)) if campaign_links_to_host(&html, &q.u) => id,
            _ => return invalid_redirect(),
        },
    };
    match engage(
        &state,
        recipient,
        EmailEventType::Click,
        method == Method::HEAD,
        &q.u,
    )
    .await
    {
        Ok(true) => found(&q.u),
        Ok(false) => invalid_redirect(),
        Err(e) => {
            // The visitor still gets where the link goes.
            tracing::error!(error = format!("{e:#}"), "recording a click failed");
            found(&q.u)
        }
    }
}

/// Who an unsubscribe token names.
#[derive(sqlx::FromRow)]
struct Recipient {
    id: i64,
    email: String,
    client_name: String,
    audience_name: String,
}

async fn recipient_for(state: &AppState, token: &str) -> Option<Recipient> {
    let keys = state.tracking_keys().await.ok()?;
    let id = match keys.verify(Purpose::Unsubscribe, token) {
        Some(id) => id,
        None => {
            legacy_recipient(state, LegacyColumn::Unsubscribe, token)
                .await?
                .0
        }
    };
    sqlx::query_as(
        "SELECT r.id, r.email, cl.name AS client_name, a.name AS audience_name
           FROM campaign_recipients r
           JOIN campaigns c ON c.id = r.campaign_id
           JOIN clients cl ON cl.id = c.client_id
           JOIN audiences a ON a.id = c.audience_id
          WHERE r.id = $1",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await
    .ok()
    .flatten()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head><body><main><h1>{title}</h1>{body}</main></body></html>"
    )
}

fn gone() -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(page(
            "Link not available",
            "<p>This unsubscribe link is no longer available.</p>",
        )),
    )
        .into_response()
}

fn form(r: &Recipient, status: StatusCode, note: &str) -> Response {
    let options = [
        ("client", format!("Emails from {}", escape(&r.client_name))),
        ("audience", format!("Everything about {}", escape(&r.audience_name))),
        ("global", "All email from us".to_string()),
    ]
    .iter()
    .map(|(value, label)| {
        let checked = if *value == "client" { " checked" } else { "" };
        format!("<label><input type=\"radio\" name=\"scope\" value=\"{value}\"{checked}> {label}</label><br>")
    })
    .collect::<String>();
    let body = format!(
        "{note}<p>Unsubscribe <strong>{}</strong> from:</p><form method=\"post\">{options}<button type=\"submit\">Unsubscribe</button></form>",
        escape(&r.email)
    );
    (status, Html(page("Unsubscribe", &body))).into_response()
}

/// `GET /unsubscribe/{token}`: the page only.
pub async fn unsubscribe_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    match recipient_for(&state, &token).await {
        Some(r) => form(&r, StatusCode::OK, ""),
        None => gone(),
    }
}

/// The unsubscribe in one statement: the contact or subscription by scope, the recipient,
/// the campaign's counter (first time only), the event.
const UNSUBSCRIBE_SQL: &str = "
WITH r AS (
    SELECT r.id, r.campaign_id, r.contact_id, r.status <> 'unsubscribed' AS first,
           c.client_id, c.audience_id
      FROM campaign_recipients r JOIN campaigns c ON c.id = r.campaign_id WHERE r.id = $1
),
global AS (
    UPDATE contacts ct SET global_unsubscribed_at = coalesce(ct.global_unsubscribed_at, now()),
           updated_at = now()
      FROM r WHERE $2 = 'global' AND ct.id = r.contact_id RETURNING 1
),
audience_level AS (
    INSERT INTO subscriptions (contact_id, audience_id, client_id, status, unsubscribed_at, unsubscribe_reason)
    SELECT contact_id, audience_id, NULL, 'unsubscribed', now(), 'public_unsubscribe' FROM r WHERE $2 = 'audience'
    ON CONFLICT (contact_id, audience_id) WHERE client_id IS NULL DO UPDATE
       SET status = 'unsubscribed', unsubscribed_at = now(), unsubscribe_reason = 'public_unsubscribe',
           updated_at = now()
    RETURNING 1
),
client_level AS (
    INSERT INTO subscriptions (contact_id, audience_id, client_id, status, unsubscribed_at, unsubscribe_reason)
    SELECT contact_id, audience_id, client_id, 'unsubscribed', now(), 'public_unsubscribe' FROM r WHERE $2 = 'client'
    ON CONFLICT (contact_id, audience_id, client_id) DO UPDATE
       SET status = 'unsubscribed', unsubscribed_at = now(), unsubscribe_reason = 'public_unsubscribe',
           updated_at = now()
    RETURNING 1
),
recipient AS (
    UPDATE campaign_recipients cr SET status = 'unsubscribed', updated_at = now()
      FROM r WHERE cr.id = r.id RETURNING 1
),
campaign AS (
    UPDATE campaigns c SET unsubscribe_count = c.unsubscribe_count + 1, updated_at = now()
      FROM r WHERE c.id = r.campaign_id AND r.first RETURNING 1
)
INSERT INTO email_events (campaign_id, campaign_recipient_id, contact_id, client_id, audience_id,
                          event_type, metadata)
SELECT campaign_id, id, contact_id, client_id, audience_id, 'unsubscribe',
       jsonb_build_object('scope', $2::text, 'one_click', $3)
  FROM r";

/// `POST /unsubscribe/{token}`: one-click (RFC 8058) or the page's form.
pub async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
    RawForm(form_body): RawForm,
) -> Response {
    let Some(recipient) = recipient_for(&state, &token).await else {
        return gone();
    };
    let fields: Vec<(String, String)> = form_urlencoded::parse(&form_body).into_owned().collect();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let one_click = field("List-Unsubscribe") == Some("One-Click");
    let scope = match (one_click, field("scope")) {
        (true, _) => "client",
        (false, Some(s @ ("client" | "audience" | "global"))) => s,
        _ => {
            return form(
                &recipient,
                StatusCode::BAD_REQUEST,
                "<p>Please choose what to unsubscribe from.</p>",
            )
        }
    };
    if let Err(e) = sqlx::query(UNSUBSCRIBE_SQL)
        .bind(recipient.id)
        .bind(scope)
        .bind(one_click)
        .execute(&state.db)
        .await
    {
        tracing::error!(error = %e, "an unsubscribe failed");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(page(
                "Please try again",
                "<p>We could not record this right now.</p>",
            )),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        Html(page(
            "Unsubscribed",
            &format!(
                "<p><strong>{}</strong> will not receive these emails any more.</p>",
                escape(&recipient.email)
            ),
        )),
    )
        .into_response()
}
