//! `mixed`: a password reset must not wait behind a newsletter. A campaign of `recipients`
//! drains through the fake SES (50 ms) while a client posts transactional sends at a steady
//! `tx_rate`; the figure is each transactional message's time from request to SES.

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

pub const TX_P99_TARGET_MS: f64 = 250.0;

pub async fn run(
    h: &Harness,
    recipients: u64,
    tx_rate: u64,
    latency_ms: u64,
) -> anyhow::Result<Vec<RunReport>> {
    let mut report = RunReport::new(
        "mixed",
        &format!("{recipients}"),
        "A campaign drains through the fake SES while a client posts transactional sends at a \
         steady rate on `serve`; latency = transactional request → the fake SES receives it.",
    );
    let mut s = h.setup("mixed").await?;
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
    s.dm.ses(&fake.endpoint(), 0.0);
    report
        .config("recipients", recipients)
        .config("transactional_per_s", tx_rate)
        .config("ses_latency_ms", latency_ms)
        .config("db_max_connections", 8);
    let (p, api, _) = serve(&s.dm, "mixed").await?;
    api.put_load_template(&s.key).await?;
    let progress = ses_progress(&fake);
    let sampler = Sampler::start(
        "mixed",
        s.db.admin().await?,
        &s.db.name,
        progress,
        recipients,
    );
    sampler.watch(p.pid);

    api.start_campaign(&s.key, "bench").await?;
    // Let the fan-out get going before the first transactional send.
    while fake.accepted() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // Four clients, each at a quarter of the rate.
    let workers = 4usize;
    let pace = Duration::from_secs_f64(workers as f64 / tx_rate.max(1) as f64);
    let driver = {
        let (api, key, stop, accepted) =
            (api.clone(), s.key.clone(), stop.clone(), accepted.clone());
        tokio::spawn(
            async move { drive(&api, &key, "mx", workers, Some(pace), stop, accepted).await },
        )
    };
    let times = wait_campaign(&s.sql, "bench", Duration::from_secs(900)).await;
    stop.store(true, Ordering::Relaxed);
    let (_, rejected) = driver.await?;
    let times = times?;
    let accepted = accepted.lock().expect("acc").clone();
    wait_fake(
        &fake,
        recipients + accepted.len() as u64,
        Duration::from_secs(60),
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
    report
        .figure("transactional messages during the fan-out", accepted.len())
        .figure("transactional non-202 answers", rejected)
        .figure("campaign fan-out (s)", format!("{:.2}", times.fanout_s));
    let p99 = report.latency_ms.map(|p| p.p99).unwrap_or(f64::INFINITY);
    report.target(Target::new(
        "transactional p99 during the campaign",
        Goal::Below(TX_P99_TARGET_MS),
        "ms",
        p99,
    ));
    report.delivery_targets();
    s.db.drop().await?;
    Ok(vec![report])
}
