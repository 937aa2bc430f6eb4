//! Client webhooks (the original's CMP callbacks, facts §3.9, with its gaps fixed).
//!
//! * **Enqueue** is not here: a trigger on `email_events` (migration 0006) writes the
//!   `cmp_callbacks` row in the event's own transaction, whoever writes the event.
//! * **Dispatch** is a supervised tree over the `cmp_callbacks` outbox
//!   ([`OutboxSource`]: `FOR UPDATE SKIP LOCKED` claims and a receipt fence, so two dispatchers
//!   never send one callback twice, and a dispatcher that lost its claim records nothing). It
//!   runs as the maintenance task [`DispatchWebhooks`]: every maintenance tick in `serve` and
//!   `worker`, in the scheduled maintenance Lambda, and in `datamailer maintain --once`, each
//!   time draining what is due within a budget.
//! * Each callback is POSTed as JSON with `Authorization: Bearer <token>` and
//!   `X-Datamailer-Signature: t=<unix>,v1=<hex HMAC-SHA256(token, "<t>." + body)>` over the
//!   exact bytes sent, through the SSRF-guarded [`OutboundClient`]. The URL and token are read
//!   at dispatch time (the client's when both are set, else the global fallback), as the
//!   original did; none left means the attempt fails with the original's message.
//! * A 2xx answer delivers it (`attempt_count`, `delivered_at`, the real `response_status`).
//!   Anything else is retried after the original's table (60 s, 5 min, 15 min, 1 h, 3 h, 6 h,
//!   12 h, then 12 h) and `failed` once `max_attempts` (8) attempts are spent, with the status
//!   and `last_error` of the last one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use datamailer_core::webhooks;
use datamailer_runtime::backoff::Backoff;
use datamailer_runtime::db::Db;
use datamailer_runtime::maintenance::{MaintenanceTask, TaskReport};
use datamailer_runtime::outbound::OutboundClient;
use datamailer_runtime::source::outbox::{OutboxSource, OutboxTable};
use datamailer_runtime::tree::{QueueTree, TreeExit, TreeSpec, TreeStopper};
use datamailer_runtime::{Delivery, Handler, HandlerContext, Outcome};
use serde_json::Value;

use crate::events::webhooks as events;

/// The name of the dispatcher's tree (its metrics' `queue` label and its logs).
pub const TREE: &str = "client-webhooks";

/// The last error of an attempt that found no URL and token (the original's words).
pub const NOT_CONFIGURED: &str = "CMP webhook is not configured for this client.";

/// The `cmp_callbacks` table as an outbox. The body carries what the handler needs besides
/// the URL and token (read per batch, so they never travel in a runtime message).
pub const CALLBACKS: OutboxTable = OutboxTable {
    table: "cmp_callbacks",
    body: "json_build_object('client_id', t.client_id, 'max_attempts', t.max_attempts, \
           'payload', t.payload)",
    receivable: &["pending"],
    in_flight_status: None,
    done_status: "delivered",
    done_at: Some("delivered_at"),
    failed_status: "failed",
};

/// `CMP_WEBHOOK_TIMEOUT_SECONDS` unless set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// How the dispatcher reaches receivers.
#[derive(Clone)]
pub struct WebhookSettings {
    /// The SSRF-guarded client (`DATAMAILER_OUTBOUND_ALLOW_HOSTS`), built once per process.
    pub http: OutboundClient,
    /// `CMP_WEBHOOK_TIMEOUT_SECONDS`: the most one POST may take.
    pub timeout: Duration,
    /// Handler workers of the dispatch tree (each sends one batch concurrently).
    pub concurrency: usize,
    /// Callbacks per batch.
    pub batch_size: usize,
    /// How long one dispatch run may take before it stops receiving (what is left waits for
    /// the next run); kept under the maintainer lease's lifetime.
    pub budget: Duration,
}

impl WebhookSettings {
    pub fn new(http: OutboundClient) -> Self {
        Self {
            http,
            timeout: DEFAULT_TIMEOUT,
            concurrency: 4,
            batch_size: 25,
            budget: Duration::from_secs(30),
        }
    }
}

/// What one dispatch run did.
#[derive(Debug, Default)]
pub struct DispatchCounts {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub deferred: AtomicU64,
}

impl DispatchCounts {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The dispatch handler: one batch of due callbacks → one config lookup, concurrent POSTs,
/// one statement recording every attempt, then the outcomes the source settles.
pub struct WebhookDispatcher {
    db: Db,
    settings: WebhookSettings,
    counts: Arc<DispatchCounts>,
}

#[derive(serde::Deserialize)]
struct Body {
    client_id: Option<i64>,
    max_attempts: u32,
    payload: Value,
}

/// A URL and token to POST with.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    token: String,
}

/// One attempt's result, for the record and the outcome.
struct Attempt {
    /// `None`: not attempted (stopped, malformed); the outcome says why.
    url: Option<String>,
    status: Option<i32>,
    outcome: Outcome,
}

const CONFIG_SQL: &str = "
SELECT c.id, btrim(c.cmp_webhook_url), btrim(c.cmp_webhook_token)
FROM clients c WHERE c.id = ANY($1)
UNION ALL
SELECT NULL, btrim(f.url), btrim(f.token) FROM client_webhook_fallback f";

/// Fenced by the receipt: a dispatcher whose claim was taken over records nothing.
const RECORD_SQL: &str = "
UPDATE cmp_callbacks t SET
    last_attempt_at = now(),
    response_status = a.status,
    callback_url = CASE WHEN a.url <> '' THEN a.url ELSE t.callback_url END,
    last_error = CASE WHEN a.ok THEN '' ELSE t.last_error END,
    updated_at = now()
FROM unnest($1::bigint[], $2::bigint[], $3::int4[], $4::text[], $5::bool[])
    AS a(id, receipt, status, url, ok)
WHERE t.id = a.id AND t.receipt = a.receipt";

impl WebhookDispatcher {
    pub fn new(db: Db, settings: WebhookSettings) -> Self {
        Self {
            db,
            settings,
            counts: Arc::new(DispatchCounts::default()),
        }
    }

    pub fn counts(&self) -> Arc<DispatchCounts> {
        self.counts.clone()
    }

    /// The target of each client id in `ids` (and of `None`, the fallback), by the
    /// original's rule: the client's URL and token when both are set, else the fallback.
    async fn targets(&self, ids: &[i64]) -> anyhow::Result<HashMap<Option<i64>, Target>> {
        let conn = self.db.get().await?;
        let rows = conn.query(CONFIG_SQL, &[&ids]).await?;
        let mut fallback = None;
        let mut own = HashMap::new();
        for r in rows {
            let id: Option<i64> = r.get(0);
            let (url, token): (String, String) = (r.get(1), r.get(2));
            if url.is_empty() || token.is_empty() {
                continue;
            }
            let target = Target { url, token };
            match id {
                Some(id) => {
                    own.insert(Some(id), target);
                }
                None => fallback = Some(target),
            }
        }
        let mut out = HashMap::new();
        for id in ids.iter().copied().map(Some).chain([None]) {
            if let Some(t) = own.get(&id).or(fallback.as_ref()) {
                out.insert(id, t.clone());
            }
        }
        Ok(out)
    }

    async fn attempt(&self, d: &Delivery, body: &Body, target: Option<&Target>) -> Attempt {
        let last = d.receive_count >= body.max_attempts;
        let fail = |why: String| {
            if last {
                Outcome::DeadLetter(why)
            } else {
                Outcome::Retry(why)
            }
        };
        let Some(target) = target else {
            return Attempt {
                url: Some(String::new()),
                status: None,
                outcome: fail(NOT_CONFIGURED.to_string()),
            };
        };
        let raw = serde_json::to_vec(&body.payload).expect("a JSON value serializes");
        let signature = webhooks::signature(&target.token, chrono::Utc::now().timestamp(), &raw);
        let headers = [
            ("Authorization", format!("Bearer {}", target.token)),
            (webhooks::SIGNATURE_HEADER, signature),
        ];
        let started = Instant::now();
        let answer = self
            .settings
            .http
            .post_json(&target.url, &headers, raw, self.settings.timeout)
            .await;
        events::posted(started.elapsed().as_secs_f64());
        let (status, outcome) = match answer {
            Ok(a) if (200..300).contains(&a.status) => (Some(a.status as i32), Outcome::Ack),
            Ok(a) => {
                let why = if a.body.trim().is_empty() {
                    format!("HTTP {}", a.status)
                } else {
                    format!("HTTP {}: {}", a.status, a.body.trim())
                };
                (Some(a.status as i32), fail(why))
            }
            Err(e) => (None, fail(format!("{e:#}"))),
        };
        Attempt {
            url: Some(target.url.clone()),
            status,
            outcome,
        }
    }

    async fn record(&self, batch: &[Delivery], attempts: &[Attempt]) -> anyhow::Result<()> {
        let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (d, a) in batch.iter().zip(attempts) {
            let (Some(url), Ok(id), Ok(receipt)) =
                (&a.url, d.id.parse::<i64>(), d.receipt.parse::<i64>())
            else {
                continue;
            };
            cols.0.push(id);
            cols.1.push(receipt);
            cols.2.push(a.status);
            cols.3.push(url.as_str());
            cols.4.push(a.outcome == Outcome::Ack);
        }
        if cols.0.is_empty() {
            return Ok(());
        }
        let conn = self.db.get().await?;
        let stmt = conn.prepare_cached(RECORD_SQL).await?;
        conn.execute(&stmt, &[&cols.0, &cols.1, &cols.2, &cols.3, &cols.4])
            .await
            .context("recording webhook attempts")?;
        Ok(())
    }

    fn count(&self, outcome: &Outcome) {
        events::attempt_settled(outcome);
        let c = match outcome {
            Outcome::Ack => &self.counts.delivered,
            Outcome::Retry(_) | Outcome::Unavailable(_) => &self.counts.retried,
            Outcome::DeadLetter(_) => &self.counts.failed,
            Outcome::Defer { .. } => &self.counts.deferred,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Handler for WebhookDispatcher {
    async fn handle(&self, ctx: &HandlerContext, batch: &[Delivery]) -> Vec<Outcome> {
        let bodies: Vec<Result<Body, String>> = batch
            .iter()
            .map(|d| serde_json::from_str::<Body>(&d.body).map_err(|e| e.to_string()))
            .collect();
        if ctx.should_stop() {
            // Nothing sent: every callback goes back, its attempt given back.
            return batch.iter().map(|_| stopped()).collect();
        }
        let mut ids: Vec<i64> = bodies
            .iter()
            .filter_map(|b| b.as_ref().ok()?.client_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let targets = match self.targets(&ids).await {
            Ok(t) => t,
            Err(e) => {
                // Our database, not the callback: try again soon, uncounted.
                let why = format!("reading webhook configuration: {e:#}");
                events::config_failed(&why);
                return batch
                    .iter()
                    .map(|_| Outcome::Defer {
                        reason: why.clone(),
                        delay: Duration::from_secs(5),
                    })
                    .collect();
            }
        };
        let attempts = futures::future::join_all(batch.iter().zip(&bodies).map(|(d, b)| {
            let targets = &targets;
            async move {
                match b {
                    Ok(body) => self.attempt(d, body, targets.get(&body.client_id)).await,
                    Err(e) => Attempt {
                        url: None,
                        status: None,
                        outcome: Outcome::DeadLetter(format!("malformed callback row: {e}")),
                    },
                }
            }
        }))
        .await;
        if let Err(e) = self.record(batch, &attempts).await {
            // The outcomes still settle (status, attempts, next try); only the response
            // status of these attempts is not kept.
            events::record_failed(&e);
        }
        attempts
            .into_iter()
            .map(|a| {
                self.count(&a.outcome);
                a.outcome
            })
            .collect()
    }
}

fn stopped() -> Outcome {
    Outcome::Defer {
        reason: "the dispatcher stopped before sending it".into(),
        delay: Duration::from_secs(1),
    }
}

/// The dispatch tree over the callbacks due now: it ends by itself once nothing is due
/// (`drain`), or runs until stopped.
pub fn tree_spec(db: &Db, handler: Arc<WebhookDispatcher>, drain: bool) -> TreeSpec {
    let settings = handler.settings.clone();
    let mut source = OutboxSource::new(db.clone(), CALLBACKS)
        .with_max_batch(settings.batch_size)
        // Outlives a batch (every POST of it runs at once, each within the timeout).
        .with_visibility_timeout(Duration::from_secs(60).max(settings.timeout * 4));
    if drain {
        source = source.draining();
    }
    let mut spec = TreeSpec::new(TREE, Arc::new(source), handler);
    spec.concurrency = settings.concurrency.max(1);
    spec.backoff = Backoff::steps(&webhooks::BACKOFF_SECONDS);
    // Each row's own `max_attempts` decides when it fails (the handler dead-letters then).
    spec.max_receives = u32::MAX;
    spec.handler_timeout = settings.timeout * 2 + Duration::from_secs(10);
    spec.handler_grace = settings.timeout + Duration::from_secs(5);
    spec
}

/// Kills a nested tree if its run is dropped half-way (the maintenance tree killed), so no
/// dispatcher outlives the task that started it.
struct KillOnDrop(Option<TreeStopper>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.kill();
        }
    }
}

/// One dispatch run: a draining tree over what is due, stopped (gracefully) at the budget
/// or when the maintenance pass must stop.
pub async fn dispatch_due(
    db: &Db,
    settings: &WebhookSettings,
    ctx: &HandlerContext,
) -> anyhow::Result<Arc<DispatchCounts>> {
    let handler = Arc::new(WebhookDispatcher::new(db.clone(), settings.clone()));
    let counts = handler.counts();
    let budget = ctx
        .time_left()
        .map_or(settings.budget, |left| left.min(settings.budget));
    let mut spec = tree_spec(db, handler, true);
    spec.deadline = Some(tokio::time::Instant::now() + budget);
    let tree = QueueTree::start(spec).await?;
    let stopper = tree.stopper();
    let mut guard = KillOnDrop(Some(stopper.clone()));
    let wait = tree.wait();
    tokio::pin!(wait);
    let exit = tokio::select! {
        exit = &mut wait => exit,
        _ = tokio::time::sleep(budget) => stop(&stopper, &mut wait, settings).await,
        _ = ctx.stopped() => stop(&stopper, &mut wait, settings).await,
    };
    guard.0 = None;
    match exit {
        TreeExit::Drained => Ok(counts),
        TreeExit::Failed(why) => anyhow::bail!("the {TREE} tree failed: {why}"),
    }
}

async fn stop<F: std::future::Future<Output = TreeExit> + Unpin>(
    stopper: &TreeStopper,
    wait: &mut F,
    settings: &WebhookSettings,
) -> TreeExit {
    stopper.shutdown();
    let grace = settings.timeout * 2 + Duration::from_secs(5);
    match tokio::time::timeout(grace, &mut *wait).await {
        Ok(exit) => exit,
        Err(_) => {
            stopper.cancel();
            stopper.kill();
            wait.await
        }
    }
}

/// The maintenance task that sends due client webhooks: every pass (so every maintenance
/// tick of a long-lived process, and each scheduled invocation on AWS).
pub struct DispatchWebhooks {
    pub db: Db,
    pub settings: WebhookSettings,
}

#[async_trait]
impl MaintenanceTask for DispatchWebhooks {
    fn name(&self) -> &'static str {
        "client-webhooks"
    }

    fn every(&self) -> Duration {
        Duration::ZERO
    }

    fn routine(&self) -> bool {
        true
    }

    async fn run(&self, ctx: &HandlerContext) -> anyhow::Result<TaskReport> {
        let counts = dispatch_due(&self.db, &self.settings, ctx).await?;
        let (delivered, retried, failed) = (counts.delivered(), counts.retried(), counts.failed());
        Ok(TaskReport {
            acted_on: delivered + retried + failed,
            detail: if delivered + retried + failed == 0 {
                "nothing due".into()
            } else {
                format!("delivered {delivered}, retrying {retried}, failed {failed}")
            },
        })
    }
}
