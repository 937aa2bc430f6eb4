//! The capture mailer: stores each message whole in `captured_messages` instead of sending it.
//! The local default, so a developer sees exactly what SES would have received
//! (`datamailer outbox`). A batch is one INSERT. Its rows are the capture mailer's own word
//! that it accepted a send: the send ledger ([`crate::ledger`]) reads them by our tags.

use async_trait::async_trait;
use rand::Rng;
use serde_json::json;

use super::{mime, Mailer, OutgoingEmail, SendError, SendReceipt};
use crate::db::Db;

pub struct CaptureMailer {
    db: Db,
}

impl CaptureMailer {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

fn new_message_id() -> String {
    let n: u128 = rand::thread_rng().gen();
    format!("capture-{n:032x}")
}

/// A batch is one statement: the messages ride in one JSON array.
const INSERT_SQL: &str = "
INSERT INTO captured_messages (provider_message_id, from_email, to_addresses, cc_addresses,
    bcc_addresses, reply_to, subject, text_body, html_body, headers, tags, configuration_set, raw_mime)
SELECT r.provider_message_id, r.from_email, r.to_addresses, r.cc_addresses, r.bcc_addresses,
    r.reply_to, r.subject, r.text_body, r.html_body, r.headers, r.tags, r.configuration_set, r.raw_mime
FROM jsonb_to_recordset($1::jsonb) AS r(provider_message_id text, from_email text,
    to_addresses jsonb, cc_addresses jsonb, bcc_addresses jsonb, reply_to jsonb, subject text,
    text_body text, html_body text, headers jsonb, tags jsonb, configuration_set text, raw_mime text)";

#[async_trait]
impl Mailer for CaptureMailer {
    fn kind(&self) -> &'static str {
        "capture"
    }

    fn rate_limited(&self) -> bool {
        false
    }

    /// The captured row is the ledger's entry, written with the message.
    fn ledger_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError> {
        self.send_many(std::slice::from_ref(email)).await.remove(0)
    }

    async fn send_many(&self, emails: &[OutgoingEmail]) -> Vec<Result<SendReceipt, SendError>> {
        let ids: Vec<String> = emails.iter().map(|_| new_message_id()).collect();
        let rows: Vec<serde_json::Value> = emails
            .iter()
            .zip(&ids)
            .map(|(e, id)| {
                json!({
                    "provider_message_id": id,
                    "from_email": e.from,
                    "to_addresses": e.to,
                    "cc_addresses": e.cc,
                    "bcc_addresses": e.bcc,
                    "reply_to": e.reply_to,
                    "subject": e.subject,
                    "text_body": e.text_body,
                    "html_body": e.html_body,
                    "headers": e.headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "tags": e.tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "configuration_set": e.configuration_set.clone().unwrap_or_default(),
                    "raw_mime": e.needs_raw().then(|| mime::build(e)),
                })
            })
            .collect();
        let result = async {
            let conn = self.db.get().await?;
            let insert = conn.prepare_cached(INSERT_SQL).await?;
            conn.execute(&insert, &[&serde_json::Value::Array(rows)])
                .await?;
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => ids
                .into_iter()
                .map(|message_id| Ok(SendReceipt { message_id }))
                .collect(),
            Err(e) => {
                let err = SendError::Transient {
                    code: "CaptureFailed".into(),
                    message: e.to_string(),
                };
                emails.iter().map(|_| Err(err.clone())).collect()
            }
        }
    }
}
