//! `campaign`: N verified subscribers (SQL), one campaign created and queued through the API
//! on `serve`, timed from the campaign's own transition timestamps: the snapshot
//! (`snapshot_started_at` → `snapshot_finished_at`) and the fan-out (snapshot done → every
//! recipient `sent`). Once into the capture outbox, once through the fake SES at 50 ms.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{serve, wait_campaign, Harness};
use crate::pg;
use crate::report::{Goal, RunReport, Target};
use crate::sample::{ses_progress, sql_progress, Progress, Sampler};
use datamailer_testkit::fake_ses::{self, Behaviour, FakeSes, Send};

pub const SNAPSHOT_TARGET_S: f64 = 5.0;
pub const CAPTURE_TARGET: f64 = 5_000.0;
pub const SES_TARGET: f64 = 2_000.0;

pub async fn run(h: &Harness, recipients: u64, latency_ms: u64) -> anyhow::Result<Vec<RunReport>> {
    Ok(vec![
        one(h, recipients, None).await?,
        one(h, recipients, Some(Duration::from_millis(latency_ms))).await?,
    ])
}

async fn one(h: &Harness, n: u64, ses: Option<Duration>) -> anyhow::Result<RunReport> {
    let variant = match ses {
        None => "capture".to_string(),
        Some(l) => format!("ses-{}ms", l.as_millis()),
    };
    let mut report = RunReport::new(
        "campaign",
        &variant,
        "N verified subscribers, one campaign queued through the API on `serve` \
         (DATAMAILER_DB_MAX_CONNECTIONS=8); rate = recipients / (snapshot finished → campaign sent).",
    );
    let mut s = h.setup(&format!("campaign_{variant}")).await?;
    pg::seed_subscribers(&s.sql, n).await?;
    let fake = match ses {
        Some(latency) => {
            let fake = FakeSes::start(
                0,
                Behaviour {
                    latency,
                    ..Default::default()
                },
            )
            .await?;
            s.dm.ses(&fake.endpoint(), 0.0);
            Some(fake)
        }
        None => None,
    };
    report
        .config("recipients", n)
        .config(
            "mailer",
            if ses.is_some() {
                "ses (fake)"
            } else {
                "capture"
            },
        )
        .config("ses_latency_ms", ses.map(|l| l.as_millis()).unwrap_or(0))
        .config("ses_rate_limit", "off")
        .config("db_max_connections", 8);
    let (p, api, _) = serve(&s.dm, &format!("campaign-{variant}")).await?;
    let progress: Progress = match &fake {
        Some(f) => ses_progress(f),
        None => sql_progress(
            s.sql.clone(),
            "SELECT coalesce(sum(sent_count), 0)::int8 FROM campaigns",
        ),
    };
    let sampler = Sampler::start(
        &format!("campaign {variant}"),
        s.db.admin().await?,
        &s.db.name,
        progress,
        n,
    );
    sampler.watch(p.pid);
    let started = Instant::now();
    api.start_campaign(&s.key, "bench").await?;
    let times = wait_campaign(&s.sql, "bench", Duration::from_secs(600)).await?;
    let observed = sampler.finish();
    let wall = started.elapsed();
    p.stop(Duration::from_secs(30)).await?;

    let sends = match &fake {
        Some(f) => f.sends(),
        None => captured(&s.sql).await?,
    };
    let addresses = pg::subscriber_addresses(n);
    report.delivery = fake_ses::delivery(&sends, addresses.iter().map(String::as_str));
    report.emails = times.sent as u64;
    report.emails_per_s = times.sent as f64 / times.fanout_s.max(1e-9);
    report.observed(observed);
    report
        .figure(
            "snapshot of the audience (s)",
            format!("{:.2}", times.snapshot_s),
        )
        .figure(
            "fan-out: snapshot done → sent (s)",
            format!("{:.2}", times.fanout_s),
        )
        .figure("queue → sent (s)", format!("{:.2}", times.queue_to_sent_s))
        .figure(
            "API call → sent, as the harness saw it (s)",
            format!("{:.2}", wall.as_secs_f64()),
        )
        .figure(
            "campaign recipients / sent",
            format!("{} / {}", times.recipients, times.sent),
        );
    if n == 100_000 {
        report.target(Target::new(
            "snapshot of 100,000",
            Goal::Below(SNAPSHOT_TARGET_S),
            "s",
            times.snapshot_s,
        ));
    }
    let (name, floor) = match ses {
        None => ("fan-out into the capture outbox", CAPTURE_TARGET),
        Some(_) => ("fan-out through fake SES at 50 ms", SES_TARGET),
    };
    report.target(Target::new(
        name,
        Goal::AtLeast(floor),
        "emails/s",
        report.emails_per_s,
    ));
    report.delivery_targets();
    s.db.drop().await?;
    Ok(report)
}

/// What the capture outbox holds, as sends (first To address each).
pub async fn captured(sql: &Client) -> anyhow::Result<Vec<Send>> {
    let now = Instant::now();
    Ok(sql
        .query("SELECT to_addresses->>0 FROM captured_messages", &[])
        .await?
        .iter()
        .map(|r| Send {
            to: r.get::<_, Option<String>>(0).unwrap_or_default(),
            at: now,
        })
        .collect())
}
