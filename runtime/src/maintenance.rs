//! The runtime's maintenance: the periodic work that makes recovery the system's job, not an
//! operator's (re-enqueueing rows no message will bring back, and, as the other trees land,
//! scheduling campaigns, reconciling leases against SES `Send` events, dispatching outboxes).
//!
//! * Work comes as [`MaintenanceTask`]s (each with its interval), registered by the domain
//!   crate; the runtime only runs them.
//! * A pass takes the **maintainer lease** (a row in `maintenance_lease`) so only one
//!   maintainer acts at a time across every process and Lambda environment; a pass that finds
//!   the lease held elsewhere does nothing and says so. The lease expires by itself if its
//!   holder hangs, and is free at once when the holder's process dies (its database session
//!   is gone).
//! * Which tasks are due is kept in Postgres (`maintenance_runs`), so a scheduled Lambda
//!   invocation (stateless) and a long-lived process agree, and operators can see when each
//!   task last ran, how it went and what it did.
//! * Where it runs: in `serve`/`worker` as a supervised tree fed by a clock
//!   ([`crate::source::tick::TickSource`]), with the same restarts, deadlines and shutdown as
//!   any queue; on AWS as a scheduled Lambda invocation (the CloudFormation template's
//!   EventBridge schedule) whose one-record batch is one pass; by hand, `datamailer maintain
//!   --once`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;

use crate::db::Db;
use crate::events::maintenance as events;
use crate::source::tick::TickSource;
use crate::source::{Delivery, Outcome};
use crate::tree::{Handler, HandlerContext, TreeSpec};

/// The name the maintenance tree uses for its metrics and logs (like a queue's).
pub const QUEUE: &str = "maintenance";
/// How often a long-lived maintainer looks for due tasks: short, because dispatching client
/// webhooks is a task that runs every pass, and callbacks should go out within seconds.
pub const TICK: Duration = Duration::from_secs(2);
/// The lease outlives a couple of missed ticks, then another maintainer may take over (a
/// maintainer that stops gracefully gives it back at once; one that is killed loses it as
/// soon as its database session ends).
pub const LEASE_TTL: Duration = Duration::from_secs(45);

/// What a task did in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskReport {
    /// Rows (or messages) it acted on: re-enqueued, scheduled, reconciled...
    pub acted_on: u64,
    pub detail: String,
}

/// One piece of periodic recovery work. Tasks must be idempotent and safe to run
/// concurrently with the workers (the lease keeps maintainers apart, not workers).
#[async_trait]
pub trait MaintenanceTask: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// How often it is due.
    fn every(&self) -> Duration;
    /// Runs once; should stop early when `ctx.should_stop()`.
    async fn run(&self, ctx: &HandlerContext) -> anyhow::Result<TaskReport>;
    /// True when acting on rows is the task's normal work (dispatching an outbox), not a
    /// recovery worth a warning.
    fn routine(&self) -> bool {
        false
    }
}

/// Which tasks a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassMode {
    /// Those whose interval has passed since they last started.
    Due,
    /// All of them (by hand).
    All,
}

/// One task's run in a pass.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskRun {
    pub task: &'static str,
    pub ok: bool,
    pub acted_on: u64,
    pub detail: String,
    pub seconds: f64,
    /// The task's work is routine ([`MaintenanceTask::routine`]): acting on rows is logged at
    /// info, not as recovered work.
    #[serde(skip)]
    pub routine: bool,
}

/// What a pass did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "pass", rename_all = "snake_case")]
pub enum PassReport {
    /// Another maintainer holds the lease.
    Skipped {
        holder: String,
    },
    Ran {
        tasks: Vec<TaskRun>,
    },
}

impl PassReport {
    /// The failed tasks' errors, if any.
    pub fn failures(&self) -> Vec<String> {
        match self {
            PassReport::Skipped { .. } => Vec::new(),
            PassReport::Ran { tasks } => tasks
                .iter()
                .filter(|t| !t.ok)
                .map(|t| format!("{}: {}", t.task, t.detail))
                .collect(),
        }
    }
}

pub struct Maintainer {
    db: Db,
    holder: String,
    /// The last pass's report (a Lambda invocation answers with it).
    last_report: std::sync::Mutex<Option<PassReport>>,
    tasks: Vec<Arc<dyn MaintenanceTask>>,
    lease_ttl: Duration,
    /// Give the lease back after each pass (one-off passes: `--once`, Lambda), so the next
    /// maintainer need not wait for it to expire.
    release_after_pass: bool,
}

/// Ours when we hold it, it expired, or the session that last renewed it is gone (its
/// process died; migration 0018). A live holder whose renewing connection was merely closed
/// loses the lease too: it sees so at its next renewal and stops.
const TAKE_LEASE_SQL: &str = "
INSERT INTO maintenance_lease (name, holder, acquired_at, expires_at, holder_pid)
VALUES ('maintainer', $1, now(), now() + make_interval(secs => $2), pg_backend_pid())
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at, holder_pid = EXCLUDED.holder_pid,
    acquired_at = CASE WHEN maintenance_lease.holder = EXCLUDED.holder
                       THEN maintenance_lease.acquired_at ELSE now() END
WHERE maintenance_lease.holder = EXCLUDED.holder OR maintenance_lease.expires_at < now()
   OR NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = maintenance_lease.holder_pid)
RETURNING holder";

const DUE_SQL: &str = "
SELECT t.name FROM unnest($1::text[], $2::float8[]) AS t(name, every)
LEFT JOIN maintenance_runs r ON r.task = t.name
WHERE r.last_started_at IS NULL OR r.last_started_at < now() - make_interval(secs => t.every)";

const STARTED_SQL: &str = "
INSERT INTO maintenance_runs (task, last_started_at, holder) VALUES ($1, now(), $2)
ON CONFLICT (task) DO UPDATE SET last_started_at = now(), holder = EXCLUDED.holder";

const FINISHED_SQL: &str = "
UPDATE maintenance_runs
SET last_finished_at = now(), last_ok = $2, last_detail = $3, last_acted_on = $4,
    runs_total = runs_total + 1, failures_total = failures_total + CASE WHEN $2 THEN 0 ELSE 1 END,
    last_success_at = CASE WHEN $2 THEN now() ELSE last_success_at END
WHERE task = $1";

impl Maintainer {
    pub fn new(db: Db, tasks: Vec<Arc<dyn MaintenanceTask>>) -> Self {
        let host = std::env::var("AWS_LAMBDA_LOG_STREAM_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "host".into());
        Self {
            db,
            holder: format!(
                "{host}:{}:{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            last_report: std::sync::Mutex::new(None),
            tasks,
            lease_ttl: LEASE_TTL,
            release_after_pass: false,
        }
    }

    /// Gives the lease back after every pass (one-off maintainers).
    pub fn releasing_after_each_pass(mut self) -> Self {
        self.release_after_pass = true;
        self
    }

    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// What the last pass did, if one ran.
    pub fn last_report(&self) -> Option<PassReport> {
        self.last_report.lock().unwrap().clone()
    }

    pub fn task_names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|t| t.name()).collect()
    }

    /// One pass: take (or renew) the lease, run the tasks `mode` selects, record each run.
    /// Errors only when the bookkeeping itself fails (the database is unreachable); a task's
    /// failure is in the report.
    pub async fn run_pass(
        &self,
        ctx: &HandlerContext,
        mode: PassMode,
    ) -> anyhow::Result<PassReport> {
        let report = self.pass(ctx, mode).await?;
        *self.last_report.lock().unwrap() = Some(report.clone());
        Ok(report)
    }

    async fn pass(&self, ctx: &HandlerContext, mode: PassMode) -> anyhow::Result<PassReport> {
        if let Some(holder) = self.take_lease().await? {
            events::pass_skipped(&self.holder, &holder);
            return Ok(PassReport::Skipped { holder });
        }
        let due = match mode {
            PassMode::All => self.task_names(),
            PassMode::Due => self.due().await?,
        };
        let mut runs = Vec::new();
        for task in self.tasks.iter().filter(|t| due.contains(&t.name())) {
            if ctx.should_stop() {
                break;
            }
            // Renew between tasks so a long pass keeps its lease.
            if let Some(holder) = self.take_lease().await? {
                events::lease_lost(&self.holder, &holder);
                break;
            }
            runs.push(self.run_task(task.as_ref(), ctx).await?);
        }
        if self.release_after_pass {
            self.release().await;
        }
        Ok(PassReport::Ran { tasks: runs })
    }

    async fn run_task(
        &self,
        task: &dyn MaintenanceTask,
        ctx: &HandlerContext,
    ) -> anyhow::Result<TaskRun> {
        let name = task.name();
        let conn = self.db.get().await?;
        conn.execute(STARTED_SQL, &[&name, &self.holder])
            .await
            .context("recording a maintenance run")?;
        drop(conn);
        let started = Instant::now();
        let result = task.run(ctx).await;
        let seconds = started.elapsed().as_secs_f64();
        let run = match result {
            Ok(report) => TaskRun {
                task: name,
                ok: true,
                acted_on: report.acted_on,
                detail: report.detail,
                seconds,
                routine: task.routine(),
            },
            Err(e) => TaskRun {
                task: name,
                ok: false,
                acted_on: 0,
                detail: format!("{e:#}"),
                seconds,
                routine: task.routine(),
            },
        };
        events::task_ran(&run);
        let conn = self.db.get().await?;
        conn.execute(
            FINISHED_SQL,
            &[&name, &run.ok, &run.detail, &(run.acted_on as i64)],
        )
        .await
        .context("recording a maintenance run")?;
        Ok(run)
    }

    /// `None` when we hold the lease now; else who does.
    async fn take_lease(&self) -> anyhow::Result<Option<String>> {
        let conn = self.db.get().await?;
        let took = conn
            .query_opt(
                TAKE_LEASE_SQL,
                &[&self.holder, &self.lease_ttl.as_secs_f64()],
            )
            .await
            .context("taking the maintainer lease (has `datamailer migrate` run?)")?;
        if took.is_some() {
            return Ok(None);
        }
        let holder = conn
            .query_opt(
                "SELECT holder FROM maintenance_lease WHERE name = 'maintainer'",
                &[],
            )
            .await?
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_default();
        Ok(Some(holder))
    }

    /// Gives the lease back (if we hold it), so the next maintainer need not wait for it to
    /// expire: at the end of one-off passes and when a long-lived maintainer shuts down.
    pub async fn release(&self) {
        let released = async {
            self.db
                .get()
                .await?
                .execute(
                    "UPDATE maintenance_lease SET expires_at = now() WHERE name = 'maintainer' AND holder = $1",
                    &[&self.holder],
                )
                .await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = released {
            // It expires by itself.
            events::release_failed(&e);
        }
    }

    async fn due(&self) -> anyhow::Result<Vec<&'static str>> {
        let names = self.task_names();
        let every: Vec<f64> = self.tasks.iter().map(|t| t.every().as_secs_f64()).collect();
        let conn = self.db.get().await?;
        let rows = conn
            .query(DUE_SQL, &[&names, &every])
            .await
            .context("reading maintenance_runs")?;
        let due: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(names
            .into_iter()
            .filter(|n| due.iter().any(|d| d == n))
            .collect())
    }
}

/// A tick (or a scheduled invocation's record) is one pass over the due tasks.
#[async_trait]
impl Handler for Maintainer {
    async fn handle(&self, ctx: &HandlerContext, batch: &[Delivery]) -> Vec<Outcome> {
        let outcome = match self.run_pass(ctx, PassMode::Due).await {
            Ok(report) => match report.failures() {
                failures if failures.is_empty() => Outcome::Ack,
                failures => Outcome::Retry(failures.join("; ")),
            },
            Err(e) => Outcome::Unavailable(format!("{e:#}")),
        };
        batch.iter().map(|_| outcome.clone()).collect()
    }
}

/// The maintenance tree for a long-lived process: a clock that ticks every `every`, one pass
/// per tick. Call [`Maintainer::release`] once the tree has stopped.
pub fn tree_spec(maintainer: Arc<Maintainer>, every: Duration) -> TreeSpec {
    let mut spec = TreeSpec::new(QUEUE, Arc::new(TickSource::new(every)), maintainer);
    spec.concurrency = 1;
    spec
}
