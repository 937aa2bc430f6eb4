//! `feedback`: a burst of SES events about an already-sent campaign, as SNS envelopes on the
//! embedded `ses-webhooks` queue (70 % Delivery, 10 % Open, 10 % Send, 5 % soft bounce, 3 %
//! hard bounce, 2 % complaint), drained by `datamailer worker --queue ses-webhooks`. Run at
//! two campaign sizes: the rate must not fall as the campaign grows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Harness;
use crate::pg;
use crate::report::{Goal, RunReport, Target};
use crate::sample::{Progress, Sampler};

pub const EVENTS_TARGET: f64 = 5_000.0;

pub async fn run(h: &Harness, sizes: &[u64], events: u64) -> anyhow::Result<Vec<RunReport>> {
    let mut out = vec![];
    for &n in sizes {
        out.push(one(h, n, events).await?);
    }
    if let [small, .., large] = out.as_slice() {
        let ratio = large.emails_per_s / small.emails_per_s.max(1e-9);
        let note = format!("{ratio:.2}× the rate at {} recipients", small.variant);
        out.last_mut()
            .expect("runs")
            .figure("rate vs the smallest campaign", note);
    }
    Ok(out)
}

async fn one(h: &Harness, n: u64, events: u64) -> anyhow::Result<RunReport> {
    let variant = format!("{n}-recipients");
    let mut report = RunReport::new(
        "feedback",
        &variant,
        "SES events (SNS envelopes) on the embedded ses-webhooks queue, drained by `worker --queue \
         ses-webhooks`; rate = events / (first → last queue message settled, sampled every 200 ms).",
    );
    let s = h.setup(&format!("feedback_{n}")).await?;
    pg::seed_feedback(&s.sql, n, events).await?;
    report
        .config("recipients", n)
        .config("events", events)
        .config("db_max_connections", 8);
    let sql = s.sql.clone();
    let progress: Progress = Arc::new(move || {
        let sql = sql.clone();
        Box::pin(async move {
            let left: i64 = sql
                .query_one(
                    "SELECT count(*) FROM queue_messages WHERE queue = 'ses-webhooks' AND dead_lettered_at IS NULL",
                    &[],
                )
                .await?
                .get(0);
            Ok(events.saturating_sub(left as u64))
        })
    });
    let sampler = Sampler::start(
        &format!("feedback {variant}"),
        s.db.admin().await?,
        &s.db.name,
        progress.clone(),
        events,
    );
    let mut dm = s.dm.clone();
    dm.set(
        "DATAMAILER_METRICS_ADDR",
        format!("127.0.0.1:{}", super::free_port()),
    );
    let mut p = dm.spawn(
        &format!("feedback-{variant}"),
        &["worker", "--queue", "ses-webhooks"],
    )?;
    sampler.watch(p.pid);
    let started = Instant::now();
    let mut first: Option<(Instant, u64)> = None;
    let end;
    loop {
        let done = progress().await?;
        if first.is_none() && done > 0 {
            first = Some((Instant::now(), done));
        }
        if done >= events {
            end = Instant::now();
            break;
        }
        if p.exited() {
            anyhow::bail!("the ses-webhooks worker exited; see its log");
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("{done} of {events} events after 10 minutes");
        }
        // As often as the sampler: each look counts the queue, which costs Postgres time.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let observed = sampler.finish();
    p.stop(Duration::from_secs(30)).await?;
    let (t0, e0) = first.expect("progress was seen");
    report.emails = events;
    report.emails_per_s = (events - e0) as f64 / end.duration_since(t0).as_secs_f64().max(1e-9);
    report.observed(observed);
    let counts = s
        .sql
        .query_one(
            "SELECT delivered_count::int8, bounce_count::int8, complaint_count::int8, open_count::int8,
                    (SELECT count(*) FROM contacts WHERE hard_bounced_at IS NOT NULL),
                    (SELECT count(*) FROM contacts WHERE complained_at IS NOT NULL)
               FROM campaigns WHERE external_key = 'bench'",
            &[],
        )
        .await?;
    let dead = pg::dead_lettered(&s.sql).await?;
    report
        .figure(
            "campaign delivered / bounce / complaint / open",
            format!(
                "{} / {} / {} / {}",
                counts.get::<_, i64>(0),
                counts.get::<_, i64>(1),
                counts.get::<_, i64>(2),
                counts.get::<_, i64>(3)
            ),
        )
        .figure(
            "contacts hard-bounced / complained",
            format!("{} / {}", counts.get::<_, i64>(4), counts.get::<_, i64>(5)),
        )
        .figure("dead-lettered", dead);
    report.target(Target::new(
        "events applied",
        Goal::AtLeast(EVENTS_TARGET),
        "events/s",
        report.emails_per_s,
    ));
    report.target(Target::new(
        "dead-lettered",
        Goal::AtMost(0.0),
        "messages",
        dead as f64,
    ));
    s.db.drop().await?;
    Ok(report)
}
