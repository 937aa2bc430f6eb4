//! The scenarios, and what they share: a fresh database per run, migrated and provisioned by
//! the binary itself, and a small client for datamailer's HTTP API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::datamailer::{Datamailer, Process};
use crate::pg::Database;

pub mod campaign;
pub mod feedback;
pub mod lambda;
pub mod mixed;
pub mod overload;
pub mod rate;
pub mod transactional;

/// What every scenario needs from the command line.
#[derive(Clone)]
pub struct Harness {
    pub bin: PathBuf,
    pub pg: String,
    pub out: PathBuf,
    pub keep_databases: bool,
    /// Smaller sizes, for a smoke run of the harness itself.
    pub quick: bool,
}

/// One run's database and binary, migrated and provisioned (org `bench`, audience `news`,
/// client `shop`, sender `news=news@example.com`).
pub struct Setup {
    pub db: Database,
    pub sql: Arc<Client>,
    pub dm: Datamailer,
    pub key: String,
}

impl Harness {
    pub async fn setup(&self, slug: &str) -> anyhow::Result<Setup> {
        let name = format!("dm_lt_{}_{}", slug.replace('-', "_"), std::process::id());
        let db = Database::create(&self.pg, &name, self.keep_databases).await?;
        let dm = Datamailer::new(&self.bin, &self.out, &db.url);
        dm.run(&["migrate"]).await?;
        let out = dm
            .run(&[
                "provision",
                "--org",
                "bench",
                "--audience",
                "news",
                "--client",
                "shop",
                "--sender",
                "news=news@example.com",
            ])
            .await?;
        let key = out
            .lines()
            .last()
            .context("provision printed no API key")?
            .trim()
            .to_string();
        let sql = Arc::new(db.client().await?);
        Ok(Setup { db, sql, dm, key })
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `datamailer serve` on fresh ports and waits for `/health/`.
pub async fn serve(dm: &Datamailer, name: &str) -> anyhow::Result<(Process, Api, String)> {
    let (http, metrics) = (free_port(), free_port());
    let mut dm = dm.clone();
    dm.set("DATAMAILER_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .set("DATAMAILER_METRICS_ADDR", format!("127.0.0.1:{metrics}"));
    let mut p = dm.spawn(name, &["serve"])?;
    let base = format!("http://127.0.0.1:{http}");
    p.wait_ready(&format!("{base}/health/")).await?;
    Ok((
        p,
        Api::new(&base),
        format!("http://127.0.0.1:{metrics}/metrics"),
    ))
}

/// datamailer's client API, as a client application calls it.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Self {
            base: base.to_string(),
            http,
        }
    }

    pub async fn call(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let method: reqwest::Method = method.parse()?;
        let r = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The transactional template `load` (`Hi {{ n }}`).
    pub async fn put_load_template(&self, key: &str) -> anyhow::Result<()> {
        self.call(
            key,
            "PUT",
            "/api/transactional/templates/load",
            json!({"name": "Load", "subject": "Hi {{ n }}",
                   "text_body": "Hello {{ n }}, this is a load test.",
                   "html_body": "<p>Hello <b>{{ n }}</b>, this is a load test.</p>"}),
        )
        .await?;
        Ok(())
    }

    /// One transactional send; `Ok(true)` when accepted (202).
    pub async fn send(&self, key: &str, email: &str, n: u64) -> anyhow::Result<bool> {
        let r = self
            .http
            .post(format!("{}/api/transactional/send", self.base))
            .bearer_auth(key)
            .json(&json!({"email": email, "template_key": "load", "context": {"n": n}}))
            .send()
            .await?;
        Ok(r.status() == reqwest::StatusCode::ACCEPTED)
    }

    /// Creates the campaign `key` for the audience `news` and queues it.
    pub async fn start_campaign(&self, api_key: &str, campaign: &str) -> anyhow::Result<()> {
        let who = json!({"audience": "news", "client": "shop"});
        let mut body = json!({
            "subject": "Benchmark",
            "html_body": "<p>Hello, read <a href=\"https://blog.example.com/post\">this</a>.</p>",
            "text_body": "Hello",
        });
        body.as_object_mut()
            .expect("object")
            .extend(who.as_object().expect("object").clone());
        self.call(api_key, "PUT", &format!("/api/campaigns/{campaign}"), body)
            .await?;
        self.call(
            api_key,
            "POST",
            &format!("/api/campaigns/{campaign}/queue"),
            who,
        )
        .await?;
        Ok(())
    }
}

/// The campaign's own timestamps and counters once it is done.
#[derive(Debug, Clone, Copy, Default)]
pub struct CampaignTimes {
    pub recipients: i64,
    pub sent: i64,
    pub snapshot_s: f64,
    pub fanout_s: f64,
    pub queue_to_sent_s: f64,
}

/// Waits until the campaign is `sent` (or fails on `failed`/`timeout`).
pub async fn wait_campaign(
    sql: &Client,
    campaign: &str,
    timeout: Duration,
) -> anyhow::Result<CampaignTimes> {
    let start = std::time::Instant::now();
    loop {
        let row = sql
            .query_opt(
                "SELECT status FROM campaigns WHERE external_key = $1",
                &[&campaign],
            )
            .await?;
        let status: Option<String> = row.map(|r| r.get(0));
        match status.as_deref() {
            Some("sent") => break,
            Some("failed") => bail!("campaign {campaign} failed"),
            _ if start.elapsed() > timeout => {
                bail!("campaign {campaign} not sent within {timeout:?} (status {status:?})")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let r = sql
        .query_one(
            "SELECT recipient_count::int8, sent_count::int8,
                    extract(epoch FROM snapshot_finished_at - snapshot_started_at)::float8,
                    extract(epoch FROM sent_at - snapshot_finished_at)::float8,
                    extract(epoch FROM sent_at - queued_at)::float8
               FROM campaigns WHERE external_key = $1",
            &[&campaign],
        )
        .await?;
    Ok(CampaignTimes {
        recipients: r.get(0),
        sent: r.get(1),
        snapshot_s: r.get(2),
        fanout_s: r.get(3),
        queue_to_sent_s: r.get(4),
    })
}
