//! `overload`: everything at once on a starved process. `serve` with
//! `DATAMAILER_DB_MAX_CONNECTIONS=4`, a slow fake SES (`latency_ms`), a campaign draining,
//! transactional sends arriving, and a throttling storm (every send answered 429) for
//! `storm_s` seconds in the middle. Nothing may be lost, sent twice or dead-lettered; the
//! connection cap holds; the send rate comes back after the storm.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::transactional::{drive, end_to_end, wait_fake};
use super::{serve, wait_campaign, Harness};
use crate::pg;
use crate::report::{Goal, RunReport, Target};
use crate::sample::{ses_progress, Sampler};
use datamailer_testkit::fake_ses::{self, Behaviour, FakeSes};

pub const CONNECTION_CAP: u32 = 4;
pub const RECOVERY_TARGET_S: f64 = 10.0;

pub async fn run(
    h: &Harness,
    recipients: u64,
    latency_ms: u64,
    storm_s: u64,
) -> anyhow::Result<Vec<RunReport>> {
    let mut report = RunReport::new(
        "overload",
        &format!("cap{CONNECTION_CAP}"),
        "`serve` capped at 4 Postgres connections, a slow fake SES, a campaign and steady \
         transactional sends, and a throttling storm (every send 429) in the middle; recovery = \
         seconds from the storm's end until a second's sends are back to 80 % of the rate before it.",
    );
    let mut s = h.setup("overload").await?;
    pg::seed_subscribers(&s.sql, recipients).await?;
    let latency = Duration::from_millis(latency_ms);
    let fake = FakeSes::start(
        0,
        Behaviour {
            latency,
            ..Default::default()
        },
    )
    .await?;
    // A ceiling, so the limiter's AIMD reacts to the storm as it would to SES's.
    s.dm.ses(&fake.endpoint(), 2_000.0)
        .set("DATAMAILER_DB_MAX_CONNECTIONS", CONNECTION_CAP);
    report
        .config("recipients", recipients)
        .config("db_max_connections", CONNECTION_CAP)
        .config("ses_latency_ms", latency_ms)
        .config("storm_s", storm_s)
        .config("ses_max_send_rate", 2000);
    let (p, api, _) = serve(&s.dm, "overload").await?;
    api.put_load_template(&s.key).await?;
    let progress = ses_progress(&fake);
    let sampler = Sampler::start(
        "overload",
        s.db.admin().await?,
        &s.db.name,
        progress,
        recipients,
    );
    sampler.watch(p.pid);
    api.start_campaign(&s.key, "bench").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let driver = {
        let (api, key, stop, accepted) =
            (api.clone(), s.key.clone(), stop.clone(), accepted.clone());
        // 2 clients at 10/s each.
        tokio::spawn(async move {
            drive(
                &api,
                &key,
                "ov",
                2,
                Some(Duration::from_millis(100)),
                stop,
                accepted,
            )
            .await
        })
    };
    // Steady state, then the storm, then recovery.
    let window = Duration::from_secs(storm_s);
    tokio::time::sleep(window).await;
    let before_start = Instant::now();
    tokio::time::sleep(window).await;
    let storm_start = Instant::now();
    fake.set_storm(true);
    tokio::time::sleep(window).await;
    fake.set_storm(false);
    let storm_end = Instant::now();
    let times = wait_campaign(&s.sql, "bench", Duration::from_secs(900)).await;
    stop.store(true, Ordering::Relaxed);
    let (_, rejected) = driver.await?;
    let times = times?;
    let accepted = accepted.lock().expect("acc").clone();
    wait_fake(
        &fake,
        recipients + accepted.len() as u64,
        Duration::from_secs(120),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let observed = sampler.finish();
    p.stop(Duration::from_secs(30)).await?;

    let sends = fake.sends();
    let mut expected = pg::subscriber_addresses(recipients);
    expected.extend(accepted.keys().cloned());
    report.delivery = fake_ses::delivery(&sends, expected.iter().map(String::as_str));
    report.emails = report.delivery.delivered;
    report.emails_per_s = times.sent as f64 / times.fanout_s.max(1e-9);
    report.latencies("transactional request → SES", end_to_end(&fake, &accepted));
    report.observed(observed);
    let dead = pg::dead_lettered(&s.sql).await?;
    let failed: i64 = s
        .sql
        .query_one(
            "SELECT (SELECT count(*) FROM campaign_recipients WHERE status <> 'sent')
                  + (SELECT count(*) FROM transactional_messages WHERE status <> 'sent')",
            &[],
        )
        .await?
        .get(0);
    let arrivals: Vec<Instant> = sends.iter().map(|s| s.at).collect();
    let count =
        |from: Instant, to: Instant| arrivals.iter().filter(|a| **a >= from && **a < to).count();
    let before = count(before_start, storm_start) as f64 / window.as_secs_f64();
    let during = count(storm_start, storm_end) as f64 / window.as_secs_f64();
    // The first whole second after the storm that is back to 80 % of the rate before it.
    let recovery_s = (0..600u64)
        .find(|i| {
            let from = storm_end + Duration::from_secs(*i);
            count(from, from + Duration::from_secs(1)) as f64 >= 0.8 * before
        })
        .map(|i| i as f64 + 1.0)
        .unwrap_or(f64::INFINITY);
    report
        .figure(
            "sends/s before / during the storm",
            format!("{before:.0} / {during:.0}"),
        )
        .figure(
            "seconds after the storm until the rate was back to 80 %",
            recovery_s,
        )
        .figure("throttled answers", fake.throttled())
        .figure(
            "transactional sends / non-202",
            format!("{} / {rejected}", accepted.len()),
        )
        .figure("dead-lettered", dead)
        .figure("rows not sent", failed);
    report.delivery_targets();
    report.target(Target::new(
        "dead-lettered",
        Goal::AtMost(0.0),
        "messages",
        dead as f64,
    ));
    report.target(Target::new(
        "rows not sent",
        Goal::AtMost(0.0),
        "rows",
        failed as f64,
    ));
    report.target(Target::new(
        "peak Postgres connections",
        Goal::AtMost(CONNECTION_CAP as f64),
        "connections",
        report.peak_pg_connections as f64,
    ));
    report.target(Target::new(
        "back to 80 % of the rate after the storm",
        Goal::AtMost(RECOVERY_TARGET_S),
        "s",
        recovery_s,
    ));
    s.db.drop().await?;
    Ok(vec![report])
}
