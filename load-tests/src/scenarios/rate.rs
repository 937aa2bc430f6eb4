//! `rate`: the configured SES rate is held, by one process and by three sharing the account
//! (`DATAMAILER_SES_RATE_SCOPE=account`, the default: one schedule row in Postgres). A campaign
//! of `rate × seconds` recipients drains through the fake SES (0 ms) with
//! `DATAMAILER_SES_MAX_SEND_RATE=rate`; the fake's arrival times are cut into one-second
//! windows (starting half a slot before the first send, so a send on schedule never sits on a
//! window's edge) and every full window is compared with the rate.

use std::time::{Duration, Instant};

use super::{serve, wait_campaign, Harness};
use crate::datamailer::Process;
use crate::pg;
use crate::report::{Goal, RunReport, Target};
use crate::sample::{ses_progress, Sampler};
use datamailer_testkit::fake_ses::{self, Behaviour, FakeSes};

pub async fn run(h: &Harness, rates: &[f64], seconds: u64) -> anyhow::Result<Vec<RunReport>> {
    let mut out = vec![];
    for &rate in rates {
        for processes in [1usize, 3] {
            out.push(one(h, rate, processes, seconds).await?);
        }
    }
    Ok(out)
}

/// Sends per full one-second window.
pub fn windows(arrivals: &[Instant], rate: f64) -> Vec<u64> {
    let Some(first) = arrivals.first() else {
        return vec![];
    };
    let origin = first
        .checked_sub(Duration::from_secs_f64(0.5 / rate))
        .unwrap_or(*first);
    let last = arrivals.iter().max().copied().unwrap_or(*first);
    let full = last.duration_since(origin).as_secs_f64().floor() as usize;
    let mut counts = vec![0u64; full];
    for a in arrivals {
        let i = a.duration_since(origin).as_secs_f64().floor() as usize;
        if i < full {
            counts[i] += 1;
        }
    }
    counts
}

async fn one(h: &Harness, rate: f64, processes: usize, seconds: u64) -> anyhow::Result<RunReport> {
    let n = (rate * seconds as f64).round() as u64;
    let variant = format!("{rate}-per-s-x{processes}");
    let mut report = RunReport::new(
        "rate",
        &variant,
        "A campaign through the fake SES (0 ms) with DATAMAILER_SES_MAX_SEND_RATE set; one-second \
         windows of the fake's arrival times compared with the rate (`serve`, plus `worker --queue \
         campaign-email` processes when more than one).",
    );
    let mut s = h
        .setup(&format!("rate_{}_{processes}", rate as u64))
        .await?;
    pg::seed_subscribers(&s.sql, n).await?;
    let fake = FakeSes::start(0, Behaviour::default()).await?;
    s.dm.ses(&fake.endpoint(), rate);
    report
        .config("rate", rate)
        .config("processes", processes)
        .config("recipients", n)
        .config("scope", "account");
    let progress = ses_progress(&fake);
    let sampler = Sampler::start(
        &format!("rate {variant}"),
        s.db.admin().await?,
        &s.db.name,
        progress,
        n,
    );
    let (first, api, _) = serve(&s.dm, &format!("rate-{variant}-serve")).await?;
    sampler.watch(first.pid);
    let mut procs: Vec<Process> = vec![first];
    for i in 1..processes {
        let mut dm = s.dm.clone();
        dm.set(
            "DATAMAILER_METRICS_ADDR",
            format!("127.0.0.1:{}", super::free_port()),
        );
        let p = dm.spawn(
            &format!("rate-{variant}-worker{i}"),
            &["worker", "--queue", "campaign-email"],
        )?;
        sampler.watch(p.pid);
        procs.push(p);
    }
    // Give the workers a moment to start polling before the fan-out begins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.start_campaign(&s.key, "bench").await?;
    let times = wait_campaign(&s.sql, "bench", Duration::from_secs(seconds * 4 + 60)).await?;
    let observed = sampler.finish();
    for p in procs {
        p.stop(Duration::from_secs(30)).await?;
    }
    let sends = fake.sends();
    let arrivals: Vec<Instant> = sends.iter().map(|s| s.at).collect();
    let counts = windows(&arrivals, rate);
    let busiest = counts.iter().copied().max().unwrap_or(0) as f64;
    let quietest = counts.iter().copied().min().unwrap_or(0) as f64;
    let mean = if arrivals.len() > 1 {
        let span = arrivals
            .last()
            .unwrap()
            .duration_since(arrivals[0])
            .as_secs_f64();
        (arrivals.len() - 1) as f64 / span
    } else {
        0.0
    };
    let addresses = pg::subscriber_addresses(n);
    report.delivery = fake_ses::delivery(&sends, addresses.iter().map(String::as_str));
    report.emails = times.sent as u64;
    report.emails_per_s = mean;
    report.observed(observed);
    report
        .figure("full one-second windows", counts.len())
        .figure(
            "busiest / quietest window",
            format!("{busiest} / {quietest}"),
        )
        .figure("windows", format!("{counts:?}"));
    report.target(Target::new(
        "mean rate (−2 %)",
        Goal::AtLeast(rate * 0.98),
        "sends/s",
        mean,
    ));
    report.target(Target::new(
        "mean rate (+2 %)",
        Goal::AtMost(rate * 1.02),
        "sends/s",
        mean,
    ));
    report.target(Target::new(
        "busiest one-second window",
        Goal::AtMost(rate),
        "sends",
        busiest,
    ));
    report.target(Target::new(
        "quietest one-second window (−2 %)",
        Goal::AtLeast((rate * 0.98).floor()),
        "sends",
        quietest,
    ));
    report.delivery_targets();
    s.db.drop().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_hold_sends_on_schedule_exactly() {
        let t0 = Instant::now();
        let rate = 14.0;
        let arrivals: Vec<Instant> = (0..140)
            .map(|k| t0 + Duration::from_secs_f64(k as f64 / rate))
            .collect();
        let w = windows(&arrivals, rate);
        assert_eq!(w.len(), 9, "the last, partial window is left out");
        assert!(w.iter().all(|c| *c == 14), "{w:?}");
    }
}
