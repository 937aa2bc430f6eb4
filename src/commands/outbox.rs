//! `datamailer outbox`: what the capture mailer stored instead of sending.

use anyhow::Context;
use sqlx::Row;

use crate::config::Config;
use crate::database;

pub async fn outbox(config: Config, json: bool, limit: i64) -> anyhow::Result<()> {
    let pool = database::web_pool(&config, 1).await?;
    let rows = sqlx::query(
        "SELECT id, provider_message_id, from_email, to_addresses, cc_addresses, bcc_addresses, reply_to, subject,
                text_body, html_body, headers, tags, configuration_set, raw_mime, created_at
         FROM captured_messages ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&pool)
    .await
    .context("reading the outbox (has `datamailer migrate` run?)")?;
    for r in rows.iter().rev() {
        let created: chrono::DateTime<chrono::Utc> = r.get("created_at");
        if json {
            let line = serde_json::json!({
                "id": r.get::<i64, _>("id"),
                "message_id": r.get::<String, _>("provider_message_id"),
                "from": r.get::<String, _>("from_email"),
                "to": r.get::<serde_json::Value, _>("to_addresses"),
                "cc": r.get::<serde_json::Value, _>("cc_addresses"),
                "bcc": r.get::<serde_json::Value, _>("bcc_addresses"),
                "reply_to": r.get::<serde_json::Value, _>("reply_to"),
                "subject": r.get::<String, _>("subject"),
                "text_body": r.get::<String, _>("text_body"),
                "html_body": r.get::<String, _>("html_body"),
                "headers": r.get::<serde_json::Value, _>("headers"),
                "tags": r.get::<serde_json::Value, _>("tags"),
                "configuration_set": r.get::<String, _>("configuration_set"),
                "raw_mime": r.get::<Option<String>, _>("raw_mime"),
                "created_at": datamailer_core::time::iso(created),
            });
            println!("{line}");
        } else {
            let to: serde_json::Value = r.get("to_addresses");
            println!(
                "#{:<6} {}  {} -> {}\n        Subject: {}\n{}\n",
                r.get::<i64, _>("id"),
                datamailer_core::time::iso(created),
                r.get::<String, _>("from_email"),
                to.as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                r.get::<String, _>("subject"),
                indent(&r.get::<String, _>("text_body")),
            );
        }
    }
    if !json && rows.is_empty() {
        println!("(the outbox is empty)");
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("        {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
