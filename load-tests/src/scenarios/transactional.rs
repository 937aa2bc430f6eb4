//! `transactional`: the client API under load and the path behind it, through the fake SES
//! (real SDK, 0 ms, rate limit off).
//!
//! * `api`: `concurrency` clients post `POST /api/transactional/send` for `seconds`, each
//!   request to a new recipient (so contact upserts never contend), while `serve`'s workers
//!   send. Accept rate and API latency from the client side; end to end (request → the fake
//!   SES receives it) per message; then waits until every accepted message reached SES.
//! * `burndown`: `backlog` messages written with SQL exactly as the API writes them, then a
//!   fresh `serve` drains them: the workers' rate with no API traffic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{serve, Api, Harness};
use crate::pg;
use crate::report::{Goal, RunReport, Target};
use crate::sample::{ses_progress, Sampler};
use datamailer_testkit::fake_ses::{self, Behaviour, FakeSes};

pub const API_TARGET: f64 = 1_000.0;
pub const E2E_TARGET: f64 = 1_000.0;

pub async fn run(
    h: &Harness,
    seconds: u64,
    concurrency: usize,
    backlog: u64,
) -> anyhow::Result<Vec<RunReport>> {
    Ok(vec![
        api(h, seconds, concurrency).await?,
        burndown(h, backlog).await?,
    ])
}

/// Sent-at times of accepted requests, by recipient.
type Accepted = Arc<Mutex<HashMap<String, Instant>>>;

/// Posts sends from `concurrency` tasks until `stop` is set; returns the API latencies (ms)
/// and the count of non-202 answers.
pub async fn drive(
    api: &Api,
    key: &str,
    tag: &str,
    concurrency: usize,
    pace: Option<Duration>,
    stop: Arc<AtomicBool>,
    accepted: Accepted,
) -> (Vec<f64>, u64) {
    let rejected = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = vec![];
    for w in 0..concurrency {
        let (api, key, tag) = (api.clone(), key.to_string(), tag.to_string());
        let (stop, accepted, rejected, latencies) = (
            stop.clone(),
            accepted.clone(),
            rejected.clone(),
            latencies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            let mut tick = pace.map(tokio::time::interval);
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                i += 1;
                let email = format!("{tag}-{w}-{i}@load.example.com");
                let sent = Instant::now();
                match api.send(&key, &email, i).await {
                    Ok(true) => {
                        latencies
                            .lock()
                            .expect("lat")
                            .push(sent.elapsed().as_secs_f64() * 1000.0);
                        accepted.lock().expect("acc").insert(email, sent);
                    }
                    _ => {
                        rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let l = latencies.lock().expect("lat").clone();
    (l, rejected.load(Ordering::Relaxed))
}

/// Request → SES arrival per accepted message (ms), from the fake's records.
pub fn end_to_end(fake: &FakeSes, accepted: &HashMap<String, Instant>) -> Vec<f64> {
    fake.sends()
        .iter()
        .filter_map(|s| {
            accepted
                .get(&s.to)
                .map(|t| s.at.saturating_duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect()
}

/// Waits until the fake SES has received `n` sends.
pub async fn wait_fake(fake: &FakeSes, n: u64, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while fake.accepted() < n {
        if start.elapsed() > timeout {
            anyhow::bail!(
                "fake SES saw {} of {n} sends after {timeout:?}",
                fake.accepted()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn api(h: &Harness, seconds: u64, concurrency: usize) -> anyhow::Result<RunReport> {
    let mut report = RunReport::new(
        "transactional",
        "api",
        "Clients post `POST /api/transactional/send` (a new recipient each) for a fixed time while \
         `serve`'s workers send through the fake SES (0 ms, real SDK, limiter off); rate = messages \
         that reached SES / (last arrival − first request).",
    );
    let mut s = h.setup("tx_api").await?;
    let fake = FakeSes::start(0, Behaviour::default()).await?;
    s.dm.ses(&fake.endpoint(), 0.0);
    report
        .config("seconds", seconds)
        .config("concurrency", concurrency)
        .config("mailer", "ses (fake, 0 ms)")
        .config("db_max_connections", 8);
    let (p, api, _) = serve(&s.dm, "transactional-api").await?;
    api.put_load_template(&s.key).await?;
    let sampler = Sampler::start(
        "transactional api",
        s.db.admin().await?,
        &s.db.name,
        ses_progress(&fake),
        0,
    );
    sampler.watch(p.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Accepted = Arc::default();
    let started = Instant::now();
    let driver = {
        let (api, key, stop, accepted) =
            (api.clone(), s.key.clone(), stop.clone(), accepted.clone());
        tokio::spawn(
            async move { drive(&api, &key, "lt", concurrency, None, stop, accepted).await },
        )
    };
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (api_latencies, rejected) = driver.await?;
    let api_elapsed = started.elapsed().as_secs_f64();
    let accepted = accepted.lock().expect("acc").clone();
    let backlog_at_stop = (accepted.len() as u64).saturating_sub(fake.accepted());
    wait_fake(&fake, accepted.len() as u64, Duration::from_secs(120)).await?;
    // A little longer: a duplicate would arrive after the count was reached.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let observed = sampler.finish();
    p.stop(Duration::from_secs(30)).await?;

    let sends = fake.sends();
    report.delivery = fake_ses::delivery(&sends, accepted.keys().map(String::as_str));
    let last = sends.iter().map(|s| s.at).max().unwrap_or(started);
    let e2e_s = last.duration_since(started).as_secs_f64();
    report.emails = report.delivery.delivered;
    report.emails_per_s = report.emails as f64 / e2e_s;
    let api_rate = accepted.len() as f64 / api_elapsed;
    let api_p = crate::report::Percentiles::of(api_latencies).unwrap_or_default();
    report.latencies("request → SES", end_to_end(&fake, &accepted));
    report.observed(observed);
    report
        .figure("API accepted (req/s)", format!("{api_rate:.1}"))
        .figure(
            "API latency p50 / p95 / p99 / max (ms)",
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1}",
                api_p.p50, api_p.p95, api_p.p99, api_p.max
            ),
        )
        .figure("non-202 answers or errors", rejected)
        .figure("not yet at SES when the clients stopped", backlog_at_stop);
    report.target(Target::new(
        "API accept rate",
        Goal::AtLeast(API_TARGET),
        "req/s",
        api_rate,
    ));
    report.target(Target::new(
        "end to end",
        Goal::AtLeast(E2E_TARGET),
        "emails/s",
        report.emails_per_s,
    ));
    report.delivery_targets();
    s.db.drop().await?;
    Ok(report)
}

async fn burndown(h: &Harness, backlog: u64) -> anyhow::Result<RunReport> {
    let mut report = RunReport::new(
        "transactional",
        "burndown",
        "A backlog written with SQL exactly as the API writes it, drained by a fresh `serve` through \
         the fake SES (0 ms); rate = messages / (first → last arrival at SES).",
    );
    let mut s = h.setup("tx_burndown").await?;
    let fake = FakeSes::start(0, Behaviour::default()).await?;
    s.dm.ses(&fake.endpoint(), 0.0);
    report
        .config("backlog", backlog)
        .config("mailer", "ses (fake, 0 ms)")
        .config("db_max_connections", 8);
    // The template first (through the API, as a client would), then the backlog.
    let (p, api, _) = serve(&s.dm, "transactional-setup").await?;
    api.put_load_template(&s.key).await?;
    p.stop(Duration::from_secs(30)).await?;
    pg::seed_transactional_backlog(&s.sql, backlog, "bd").await?;

    let sampler = Sampler::start(
        "transactional burndown",
        s.db.admin().await?,
        &s.db.name,
        ses_progress(&fake),
        backlog,
    );
    let (p, _, _) = serve(&s.dm, "transactional-burndown").await?;
    sampler.watch(p.pid);
    wait_fake(&fake, backlog, Duration::from_secs(300)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let observed = sampler.finish();
    p.stop(Duration::from_secs(30)).await?;
    let sends = fake.sends();
    let expected: Vec<String> = s
        .sql
        .query("SELECT email FROM transactional_messages", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    report.delivery = fake_ses::delivery(&sends, expected.iter().map(String::as_str));
    let (first, last) = (sends.first().map(|s| s.at), sends.last().map(|s| s.at));
    if let (Some(a), Some(b)) = (first, last) {
        report.emails = report.delivery.delivered;
        report.emails_per_s = report.emails as f64 / b.duration_since(a).as_secs_f64().max(1e-9);
    }
    report.observed(observed);
    report.figure("dead-lettered", pg::dead_lettered(&s.sql).await?);
    report.delivery_targets();
    s.db.drop().await?;
    Ok(report)
}
