//! `POST /webhooks/ses` against real Postgres, with messages signed the way SNS signs them
//! (RSA keys and X.509 certificates made by the test; SignatureVersion 1 and 2; all three
//! message types). AWS's certificate host cannot be reached here, so a stand-in serves the
//! test certificates by URL and records what was fetched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use datamailer_runtime::producer::Producer;
use datamailer_testkit::TestDb;
use datamailer_web::ses_ingress::{SignatureMode, SnsHttp, SnsIngress};
use datamailer_web::{router, AppState, WebConfig};
use http_body_util::BodyExt;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{json, Value};
use tower::ServiceExt;

/// A key pair and its self-signed certificate (PEM), as SNS's signing certificate would be.
struct TestSigner {
    key: rsa::RsaPrivateKey,
    cert: String,
}

fn make_signer(name: &str) -> TestSigner {
    use std::str::FromStr;
    use x509_cert::builder::{Builder, CertificateBuilder, Profile};
    use x509_cert::der::EncodePem;
    use x509_cert::spki::SubjectPublicKeyInfoOwned;
    // 2048 bits: SNS's size, and the least the verifier (ring) accepts.
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let signing = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
    let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).unwrap();
    let cert = CertificateBuilder::new(
        Profile::Root,
        x509_cert::serial_number::SerialNumber::from(1u32),
        x509_cert::time::Validity::from_now(std::time::Duration::from_secs(3600)).unwrap(),
        x509_cert::name::Name::from_str(&format!("CN={name}")).unwrap(),
        spki,
        &signing,
    )
    .unwrap()
    .build::<rsa::pkcs1v15::Signature>()
    .unwrap();
    TestSigner {
        key,
        cert: cert.to_pem(x509_cert::der::pem::LineEnding::LF).unwrap(),
    }
}

/// The key that signs the test's messages, and one that signed nothing here.
fn signers() -> &'static (TestSigner, TestSigner) {
    static SIGNERS: std::sync::OnceLock<(TestSigner, TestSigner)> = std::sync::OnceLock::new();
    SIGNERS.get_or_init(|| {
        (
            make_signer("sns.amazonaws.com"),
            make_signer("someone else"),
        )
    })
}
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:dm-ses-events";
const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-good.pem";
/// Serves a certificate whose key did not sign anything here.
const OTHER_CERT_URL: &str =
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-other.pem";
const SUBSCRIBE_URL: &str =
    "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=t&Token=tok";

/// AWS's certificate host and subscription endpoint, by URL.
#[derive(Default)]
struct AwsStandIn {
    fetched: Mutex<Vec<String>>,
}

#[async_trait]
impl SnsHttp for AwsStandIn {
    async fn get(&self, url: &str) -> anyhow::Result<String> {
        self.fetched.lock().unwrap().push(url.to_string());
        let (signer, other) = signers();
        let pages: HashMap<&str, &str> = [
            (CERT_URL, signer.cert.as_str()),
            (OTHER_CERT_URL, other.cert.as_str()),
            (SUBSCRIBE_URL, "<ConfirmSubscriptionResponse/>"),
        ]
        .into();
        pages
            .get(url)
            .map(|p| p.to_string())
            .ok_or_else(|| anyhow::anyhow!("connection refused"))
    }
}

struct Ingress {
    db: TestDb,
    app: axum::Router,
    aws: Arc<AwsStandIn>,
}

async fn ingress(mode: SignatureMode, allow_confirmation: bool) -> Option<Ingress> {
    let db = TestDb::create().await?;
    let aws = Arc::new(AwsStandIn::default());
    let state = AppState::new(
        db.pool.clone(),
        Producer::Postgres,
        WebConfig {
            public_base_url: "http://localhost:8000".into(),
        },
    )
    .with_sns_ingress(
        SnsIngress::new(mode, vec![TOPIC.to_string()], allow_confirmation).with_http(aws.clone()),
    );
    Some(Ingress {
        app: router(state),
        db,
        aws,
    })
}

impl Ingress {
    async fn post(&self, body: &str) -> (StatusCode, Value) {
        let resp = self
            .app
            .clone()
            .oneshot(
                Request::post("/webhooks/ses")
                    .header("content-type", "text/plain; charset=UTF-8")
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn queued(&self) -> Vec<Value> {
        let bodies: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM queue_messages WHERE queue = 'ses-webhooks' ORDER BY id",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }

    fn fetched(&self) -> Vec<String> {
        self.aws.fetched.lock().unwrap().clone()
    }
}

/// `msg` signed as SNS signs it.
fn signed(mut msg: Value, version: &str) -> Value {
    msg["SignatureVersion"] = json!(version);
    if msg.get("SigningCertURL").is_none() {
        msg["SigningCertURL"] = json!(CERT_URL);
    }
    let canonical = datamailer_core::sns::canonical_string(msg.as_object().unwrap()).unwrap();
    let key = signers().0.key.clone();
    let signature = match version {
        "1" => rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(key)
            .sign(canonical.as_bytes())
            .to_vec(),
        _ => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key)
            .sign(canonical.as_bytes())
            .to_vec(),
    };
    msg["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(signature));
    msg
}

fn notification(id: &str, event: Value) -> Value {
    json!({
        "Type": "Notification",
        "MessageId": id,
        "TopicArn": TOPIC,
        "Subject": "Amazon SES Email Event Notification",
        "Message": event.to_string(),
        "Timestamp": "2026-12-03T12:00:00.000Z",
    })
}

fn delivery() -> Value {
    json!({"eventType": "Delivery",
           "mail": {"messageId": "ses-1", "timestamp": "2026-12-03T11:59:58.000Z", "source": "news@example.com",
                    "tags": {"datamailer_kind": ["campaign"], "datamailer_id": ["42"]}},
           "delivery": {"timestamp": "2026-12-03T11:59:59.500Z", "recipients": ["ada@example.com"]}})
}

fn confirmation(kind: &str) -> Value {
    json!({
        "Type": kind, "MessageId": "c-1", "Token": "tok", "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic.",
        "SubscribeURL": SUBSCRIBE_URL, "Timestamp": "2026-12-03T12:00:00.000Z",
    })
}

#[tokio::test]
async fn signed_notifications_are_enqueued_as_the_contract_and_nothing_else_is_written() {
    let Some(t) = ingress(SignatureMode::Strict, false).await else {
        return;
    };
    for (id, version) in [("sns-v1", "1"), ("sns-v2", "2")] {
        let msg = signed(notification(id, delivery()), version);
        let (status, body) = t.post(&msg.to_string()).await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        assert_eq!(
            body,
            json!({"status": "ok", "type": "Notification", "enqueued": true, "confirmed": false})
        );
    }
    let queued = t.queued().await;
    assert_eq!(queued.len(), 2);
    let first = &queued[0];
    assert_eq!(first["contract"], "ses-webhooks");
    assert_eq!(first["provider_event_id"], "sns-v1");
    assert_eq!(first["notification_type"], "delivery");
    assert_eq!(first["ses_message_id"], "ses-1");
    assert_eq!(first["metadata"]["sns_topic_arn"], TOPIC);
    assert_eq!(
        first["metadata"]["event_timestamp"],
        "2026-12-03T11:59:59.500Z"
    );
    assert_eq!(first["metadata"]["tags"]["datamailer_id"], json!(["42"]));
    assert_eq!(
        t.fetched(),
        vec![CERT_URL],
        "the certificate is fetched once"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM email_events")
        .fetch_one(&t.db.pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "the ingress only enqueues");

    // An SES event type the contract does not know goes on as the envelope itself.
    let odd = signed(
        notification("sns-odd", json!({"eventType": "Teleport", "mail": {}})),
        "2",
    );
    assert_eq!(t.post(&odd.to_string()).await.0, StatusCode::OK);
    let queued = t.queued().await;
    assert_eq!(queued[2]["Type"], "Notification");
    assert_eq!(queued[2]["MessageId"], "sns-odd");
    t.db.drop_db().await;
}

#[tokio::test]
async fn every_refusal_says_why_and_nothing_is_enqueued() {
    let Some(t) = ingress(SignatureMode::Strict, false).await else {
        return;
    };
    let good = || signed(notification("sns-1", delivery()), "2");
    let with = |mut msg: Value, key: &str, value: Value| {
        msg[key] = value;
        msg
    };
    let resign_with =
        |key: &str, value: Value| signed(with(notification("sns-1", delivery()), key, value), "2");
    let cases: Vec<(&str, String, StatusCode, &str, &str)> = vec![
        (
            "not JSON",
            "{nope".into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "",
        ),
        (
            "a JSON array",
            "[]".into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "",
        ),
        (
            "an unknown Type",
            with(good(), "Type", json!("Surprise")).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_sns_message",
            "Type must be",
        ),
        (
            "a topic not allowed, however well signed",
            resign_with(
                "TopicArn",
                json!("arn:aws:sns:us-east-1:999999999999:other"),
            )
            .to_string(),
            StatusCode::FORBIDDEN,
            "sns_topic_not_allowed",
            "is not one of DATAMAILER_SNS_TOPIC_ARNS",
        ),
        (
            "a certificate off SNS's hosts",
            resign_with(
                "SigningCertURL",
                json!("https://sns.us-east-1.amazonaws.com.evil.test/c.pem"),
            )
            .to_string(),
            StatusCode::FORBIDDEN,
            "invalid_sns_signature",
            "SigningCertURL must be on sns.<region>.amazonaws.com",
        ),
        (
            "a changed message",
            with(
                good(),
                "Message",
                json!(json!({"eventType": "Bounce", "mail": {"messageId": "ses-1"}}).to_string()),
            )
            .to_string(),
            StatusCode::FORBIDDEN,
            "invalid_sns_signature",
            "the signature does not match the message",
        ),
        (
            "another certificate's key",
            with(good(), "SigningCertURL", json!(OTHER_CERT_URL)).to_string(),
            StatusCode::FORBIDDEN,
            "invalid_sns_signature",
            "the signature does not match the message",
        ),
        (
            "an unknown signature version",
            with(good(), "SignatureVersion", json!("3")).to_string(),
            StatusCode::FORBIDDEN,
            "invalid_sns_signature",
            "SignatureVersion must be 1 or 2",
        ),
        (
            "no signature",
            {
                let mut m = good();
                m.as_object_mut().unwrap().remove("Signature");
                m.to_string()
            },
            StatusCode::BAD_REQUEST,
            "invalid_sns_message",
            "Signature is missing",
        ),
        (
            "a certificate host that does not answer",
            resign_with(
                "SigningCertURL",
                json!("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-gone.pem"),
            )
            .to_string(),
            StatusCode::BAD_GATEWAY,
            "sns_certificate_unavailable",
            "retry",
        ),
    ];
    for (what, body, status, code, says) in cases {
        let (got, answer) = t.post(&body).await;
        assert_eq!(got, status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(says),
            "{what}: {answer}"
        );
    }
    assert!(
        t.queued().await.is_empty(),
        "nothing enqueued for a refusal"
    );
    t.db.drop_db().await;
}

#[tokio::test]
async fn subscriptions_are_confirmed_only_when_allowed() {
    let Some(t) = ingress(SignatureMode::Strict, false).await else {
        return;
    };
    let confirm = signed(confirmation("SubscriptionConfirmation"), "1");
    let (status, body) = t.post(&confirm.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["confirmed"], false);
    assert_eq!(t.fetched(), vec![CERT_URL], "SubscribeURL not visited");
    let bye = signed(confirmation("UnsubscribeConfirmation"), "2");
    let (status, body) = t.post(&bye.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "ok", "type": "UnsubscribeConfirmation", "enqueued": false, "confirmed": false})
    );
    t.db.drop_db().await;

    let Some(t) = ingress(SignatureMode::Strict, true).await else {
        return;
    };
    let (status, body) = t.post(&confirm.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["confirmed"], true);
    assert_eq!(t.fetched(), vec![CERT_URL, SUBSCRIBE_URL]);
    let elsewhere = signed(
        with_field(
            confirmation("SubscriptionConfirmation"),
            "SubscribeURL",
            "https://evil.test/confirm",
        ),
        "2",
    );
    let (status, body) = t.post(&elsewhere.to_string()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "invalid_subscribe_url");
    assert_eq!(t.fetched().len(), 2, "no request to a host that is not SNS");
    assert!(t.queued().await.is_empty());
    t.db.drop_db().await;
}

fn with_field(mut msg: Value, key: &str, value: &str) -> Value {
    msg[key] = json!(value);
    msg
}

#[tokio::test]
async fn insecure_mode_takes_unsigned_messages_for_local_testing() {
    let Some(t) = ingress(SignatureMode::Insecure, false).await else {
        return;
    };
    let unsigned = with_field(notification("sns-local", delivery()), "TopicArn", "arn:any");
    let (status, body) = t.post(&unsigned.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(t.queued().await.len(), 1);
    assert!(t.fetched().is_empty());
    t.db.drop_db().await;
}

/// Every type a configuration set publishes, signed (SignatureVersion 2) in its SNS envelope,
/// through the ingress and then the ses-webhooks handler: each is recorded on its message.
#[tokio::test]
async fn every_ses_event_type_goes_from_the_ingress_to_its_messages_history() {
    use datamailer_actors::ses_webhooks::{FeedbackSettings, SesWebhooksHandler};
    use datamailer_runtime::{Delivery, Handler, HandlerContext, Outcome};
    use datamailer_testkit::ses::{self, Mail, EVENT_TYPES};
    let Some(t) = ingress(SignatureMode::Strict, false).await else {
        return;
    };
    let pool = &t.db.pool;
    let message: i64 = sqlx::query_scalar(
        "WITH o AS (INSERT INTO organizations (name, slug) VALUES ('o', 'o') RETURNING id),
              cl AS (INSERT INTO clients (organization_id, name, slug) SELECT id, 'c', 'c' FROM o RETURNING id),
              ct AS (INSERT INTO contacts (email, normalized_email) VALUES ('ada@example.com', 'ada@example.com') RETURNING id),
              tp AS (INSERT INTO email_templates (client_id, key, name, subject, text_body)
                     SELECT id, 'k', 'k', 's', 'b' FROM cl RETURNING id, client_id)
         INSERT INTO transactional_messages (client_id, contact_id, template_id, email, template_key, subject,
                                             status, ses_message_id, sent_at)
         SELECT tp.client_id, ct.id, tp.id, 'ada@example.com', 'k', 's', 'sent', 'ses-every', now() FROM tp, ct
         RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let mail = Mail::new("ses-every", "ada@example.com").tagged("transactional", message);
    for (n, kind) in EVENT_TYPES.iter().enumerate() {
        let mut envelope = ses::envelope(
            &ses::event(kind, &mail, "2026-12-04T10:00:03.000Z"),
            &format!("sns-every-{n}"),
        );
        envelope["TopicArn"] = json!(TOPIC);
        let envelope = envelope.as_object_mut().unwrap();
        for unsigned in ["SignatureVersion", "Signature", "SigningCertURL"] {
            envelope.remove(unsigned);
        }
        let msg = signed(Value::Object(envelope.clone()), "2");
        let (status, body) = t.post(&msg.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{kind}: {body}");
        assert_eq!(body["enqueued"], true, "{kind}");
    }
    let queued: Vec<String> = t.queued().await.iter().map(Value::to_string).collect();
    assert_eq!(queued.len(), EVENT_TYPES.len());
    let db = datamailer_runtime::db::Db::connect(&t.db.url, &Default::default()).unwrap();
    let handler = SesWebhooksHandler::new(db, FeedbackSettings::default());
    let batch: Vec<Delivery> = queued
        .iter()
        .enumerate()
        .map(|(i, body)| Delivery {
            id: i.to_string(),
            receipt: String::new(),
            body: body.clone(),
            receive_count: 1,
            sent_at: None,
        })
        .collect();
    let outcomes = handler.handle(&HandlerContext::unbounded(5), &batch).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Ack), "{outcomes:?}");
    let mut recorded: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM email_events WHERE transactional_message_id = $1",
    )
    .bind(message)
    .fetch_all(pool)
    .await
    .unwrap();
    recorded.sort();
    assert_eq!(
        recorded,
        [
            "bounce",
            "click",
            "complaint",
            "delivered",
            "delivery_delay",
            "failed",
            "open",
            "rendering_failure",
            "sent",
            "subscription"
        ]
    );
}
