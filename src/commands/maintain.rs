//! `datamailer maintain [--once]`: the runtime's maintenance by hand, and its Lambda job.
//!
//! * `--once`: one pass over every task now (whether due or not), one JSON line per task,
//!   exit 1 if a task failed. The lease is given back at the end.
//! * without `--once`: the maintenance tree alone (what `serve` and `worker` also run), until
//!   a signal.
//! * `DATAMAILER_LAMBDA_JOB=maintenance`: each scheduled invocation is one pass over the due
//!   tasks, run as a tree over a one-record batch (the invocation's deadline applies); a
//!   failed task fails the invocation, which the template's alarm watches.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use chrono::Utc;
use datamailer_runtime::db::PoolSettings;
use datamailer_runtime::lambda::{run_invocation, Invocation};
use datamailer_runtime::maintenance::{self, PassMode, PassReport};
use datamailer_runtime::source::tick::TICK_BODY;
use datamailer_runtime::source::Delivery;
use datamailer_runtime::HandlerContext;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::Config;
use crate::database;
use crate::services::Services;

/// How long a Lambda maintainer's lease lasts (it gives it back after each pass anyway).
const LAMBDA_LEASE_TTL: Duration = Duration::from_secs(120);
/// Left at the end of a maintenance invocation to record the last task's result.
const LAMBDA_STOP_MARGIN: Duration = Duration::from_secs(5);

pub async fn maintain(config: Config, once: bool) -> anyhow::Result<()> {
    database::ensure_database(&config).await?;
    let services = Services::build(
        &config,
        PoolSettings {
            max_connections: 2,
            ..Default::default()
        },
    )
    .await?;
    if !once {
        datamailer_runtime::telemetry::install_prometheus();
        let (stop_tx, stop_rx) = watch::channel(false);
        let result = super::run::run_workers(&services, &[], stop_tx, stop_rx).await;
        services.db.close();
        return result;
    }
    let maintainer = services.maintainer().releasing_after_each_pass();
    let report = maintainer
        .run_pass(&HandlerContext::unbounded(1), PassMode::All)
        .await?;
    services.db.close();
    match &report {
        PassReport::Skipped { holder } => {
            println!("{}", json!({"pass": "skipped", "holder": holder}));
            eprintln!("another maintainer ({holder}) holds the lease; nothing done");
        }
        PassReport::Ran { tasks } => {
            for t in tasks {
                println!("{}", serde_json::to_string(t)?);
            }
        }
    }
    let failures = report.failures();
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("maintenance task(s) failed: {}", failures.join("; "))
    }
}

/// `datamailer lambda` with `DATAMAILER_LAMBDA_JOB=maintenance`.
pub async fn run_lambda(config: Config) -> anyhow::Result<()> {
    let function =
        std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "maintenance".into());
    datamailer_runtime::telemetry::install_emf(&function)?;
    let services = Services::build(
        &config,
        PoolSettings {
            max_connections: 2,
            verify_on_recycle: true,
            ..Default::default()
        },
    )
    .await?;
    let maintainer = std::sync::Arc::new(
        services
            .maintainer()
            .releasing_after_each_pass()
            .with_lease_ttl(LAMBDA_LEASE_TTL),
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let maintainer = maintainer.clone();
        async move {
            let time_left = crate::lambda::time_budget(event.context.deadline(), SystemTime::now());
            let tick = Delivery {
                id: event.context.request_id.clone(),
                receipt: String::new(),
                body: TICK_BODY.to_string(),
                receive_count: 1,
                sent_at: Some(Utc::now()),
            };
            let result = run_invocation(Invocation {
                queue: maintenance::QUEUE.to_string(),
                handler: maintainer.clone(),
                records: vec![tick],
                sqs: None,
                control: None,
                breaker: None,
                time_left,
                stop_margin: LAMBDA_STOP_MARGIN,
                max_receives: 1,
            })
            .await;
            datamailer_runtime::telemetry::flush_emf();
            let result = result.context("running the maintenance pass")?;
            let report = maintainer.last_report();
            if !result.failures.is_empty() {
                let why = report
                    .map(|r| r.failures().join("; "))
                    .filter(|w| !w.is_empty())
                    .unwrap_or_else(|| format!("the pass did not finish ({:?})", result.exit));
                return Err(lambda_runtime::Error::from(format!(
                    "maintenance failed: {why}"
                )));
            }
            Ok::<Value, lambda_runtime::Error>(json!({ "report": report }))
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
