//! Shared helpers: a fresh migrated database, a provisioned client scope and an in-process
//! router driven with `tower::ServiceExt::oneshot`.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use datamailer_core::transactional::SenderIdentity;
use datamailer_runtime::producer::Producer;
use datamailer_testkit::TestDb;
use datamailer_web::provision::{provision, ProvisionRequest, Provisioned};
use datamailer_web::{router, AppState, WebConfig};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub struct Ctx {
    pub db: TestDb,
    pub app: Router,
    /// Client A: org `acme`, audience `news`, client `shop`, senders `support` (default) and
    /// `billing` (display name).
    pub a: Provisioned,
}

pub fn sender(id: &str, email: &str) -> SenderIdentity {
    SenderIdentity {
        id: id.to_string(),
        email: email.to_string(),
    }
}

pub fn scope(
    org: &str,
    audience: &str,
    client: &str,
    senders: Vec<SenderIdentity>,
) -> ProvisionRequest {
    ProvisionRequest {
        org: org.into(),
        audience: audience.into(),
        client: client.into(),
        senders,
        default_sender: None,
        key_name: None,
    }
}

pub async fn setup() -> Option<Ctx> {
    let db = TestDb::create().await?;
    let app = router(AppState::new(
        db.pool.clone(),
        Producer::Postgres,
        WebConfig {
            public_base_url: "http://localhost:8000".into(),
        },
    ));
    let a = provision(
        &db.pool,
        &scope(
            "acme",
            "news",
            "shop",
            vec![
                sender("support", "support@example.com"),
                sender("billing", "Billing Team <billing@example.com>"),
            ],
        ),
    )
    .await
    .unwrap();
    Some(Ctx { db, app, a })
}

impl Ctx {
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.db.pool
    }

    /// A raw request; `body` is sent verbatim.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: &str,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// A JSON request authenticated with `key`; the response body as JSON (null if empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let auth = format!("Bearer {key}");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) = self.raw(method, path, Some(&auth), &body).await;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, value)
    }

    pub async fn send(&self, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/api/transactional/send",
            &self.a.api_key,
            Some(body),
        )
        .await
    }

    pub async fn put_template(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let path = format!("/api/transactional/templates/{key}");
        self.call(Method::PUT, &path, &self.a.api_key, Some(body))
            .await
    }

    /// The `welcome` template: needs `name` and `reset_url`.
    pub async fn welcome_template(&self) {
        let (status, body) = self
            .put_template(
                "welcome",
                json!({
                    "name": "Welcome",
                    "subject": "Hello {{ name }}",
                    "html_body": "<p>Hi {{ name }}, reset: {{ reset_url }}</p>",
                    "text_body": "Hi {{ name }}, reset: {{ reset_url }}",
                    "required_context": ["name", {"name": "reset_url", "description": "link"}],
                    "example_context": {"name": "Ada", "reset_url": "https://x"},
                }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(self.pool())
            .await
            .unwrap()
    }

    /// (contacts, transactional_messages, email_events, queue_messages).
    pub async fn counts(&self) -> (i64, i64, i64, i64) {
        (
            self.count("contacts").await,
            self.count("transactional_messages").await,
            self.count("email_events").await,
            self.count("queue_messages").await,
        )
    }

    pub async fn queue_bodies(&self) -> Vec<Value> {
        let bodies: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM queue_messages WHERE queue = 'transactional-email' ORDER BY id",
        )
        .fetch_all(self.pool())
        .await
        .unwrap();
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }
}

pub fn send_body(email: &str) -> Value {
    json!({
        "email": email,
        "template_key": "welcome",
        "context": {"name": "Ada", "reset_url": "https://example.com/reset"},
    })
}
