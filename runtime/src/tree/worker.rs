//! A handler worker: runs the queue's handler over one batch at a time, then settles it.
//!
//! Everything a batch needs while it runs (the handler, the visibility heartbeat, the
//! deadline) is one future inside the worker's message handler, never a spawned task, so a
//! killed worker (or tree, or a Lambda invocation that returned) leaves nothing behind that
//! could keep extending or settling messages it no longer owns.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::context::HandlerContext;
use super::supervisor::SupervisorMsg;
use super::{Handler, TreeSpec};
use crate::control::Probe;
use crate::events::tree as events;
use crate::source::{Delivery, Outcome, Settlement, Source};

pub enum WorkerMsg {
    Work(Vec<Delivery>),
}

pub struct WorkerArgs {
    pub index: usize,
    pub spec: TreeSpec,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// The tree's cooperative stop.
    pub cancel: CancellationToken,
}

pub struct Worker;

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: WorkerArgs,
    ) -> Result<WorkerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Work(batch) = message;
        run_batch(&state.spec, &state.cancel, batch).await;
        state
            .supervisor
            .cast(SupervisorMsg::WorkerDone(state.index))?;
        Ok(())
    }
}

/// Handles and settles one batch. Probes ([`crate::control::Probe`]) are taken out first:
/// recorded and acknowledged, never given to the handler. Settle failures are counted and
/// logged per message; they never crash the worker (the messages come back after their
/// visibility timeout).
pub(super) async fn run_batch(spec: &TreeSpec, cancel: &CancellationToken, batch: Vec<Delivery>) {
    let queue = spec.queue.as_str();
    let n = batch.len() as f64;
    let now = Utc::now();
    for d in &batch {
        if let Some(sent) = d.sent_at {
            events::queue_lag(queue, (now - sent).num_milliseconds() as f64 / 1000.0);
        }
    }
    events::in_flight(queue, n);
    let started = Instant::now();

    let work = async {
        let mut settled: Vec<(Delivery, Settlement)> = Vec::new();
        let mut work = Vec::with_capacity(batch.len());
        for d in batch.iter().cloned() {
            match Probe::parse(&d.body) {
                Some(probe) => {
                    let s = probe_settlement(spec, &d, &probe).await;
                    settled.push((d, s));
                }
                None => work.push(d),
            }
        }
        if !work.is_empty() {
            let ctx = context(spec, cancel);
            let hard = ctx.time_left().unwrap_or(spec.handler_timeout) + spec.handler_grace;
            let outcomes = match tokio::time::timeout(
                hard,
                handle_isolated(spec.handler.as_ref(), &ctx, &work),
            )
            .await
            {
                Ok(outcomes) => outcomes,
                Err(_) => {
                    let why = format!("the handler did not finish within {hard:?}");
                    events::handler_timed_out(queue, &why);
                    work.iter().map(|_| Outcome::Retry(why.clone())).collect()
                }
            };
            events::handled(queue, started.elapsed().as_secs_f64());
            let open = spec.breaker.as_ref().and_then(|b| b.record(&outcomes));
            let mut gave_up = Vec::new();
            for (d, outcome) in work.into_iter().zip(outcomes) {
                let exhausted = matches!(outcome, Outcome::Retry(_) | Outcome::Unavailable(_));
                let s = settlement(spec, &d, outcome, open);
                if let (true, Settlement::DeadLetter { reason }) = (exhausted, &s) {
                    gave_up.push((d.clone(), reason.clone()));
                }
                settled.push((d, s));
            }
            if !gave_up.is_empty() {
                spec.handler.gave_up(&ctx, &gave_up).await;
            }
        }
        settled
    };
    let settled = with_heartbeat(queue, spec.source.as_ref(), &batch, work).await;
    for (d, s) in &settled {
        events::settled(queue, &d.id, s);
    }
    let report = spec.source.settle(settled).await;
    events::settle_failures(queue, &report);
    events::in_flight(queue, -n);
}

/// The batch's context: the tree's stop, and the earlier of the per-batch timeout and the
/// tree's absolute deadline.
fn context(spec: &TreeSpec, cancel: &CancellationToken) -> HandlerContext {
    let timeout = tokio::time::Instant::now() + spec.handler_timeout;
    let deadline = match spec.deadline {
        Some(d) => d.min(timeout),
        None => timeout,
    };
    HandlerContext::new(cancel.child_token(), Some(deadline), spec.max_receives)
}

/// Runs `work` while keeping `batch` invisible (an extend every half visibility timeout), in
/// the same future: when `work` ends or is dropped, the heartbeat ends with it.
async fn with_heartbeat<F: std::future::Future>(
    queue: &str,
    source: &dyn Source,
    batch: &[Delivery],
    work: F,
) -> F::Output {
    let every = source.visibility_timeout() / 2;
    if every.is_zero() {
        return work.await;
    }
    tokio::pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                if let Err(e) = source.extend(batch, every * 2).await {
                    events::heartbeat_failed(queue, &e);
                }
            }
        }
    }
}

/// A probe is acknowledged once recorded; if recording fails it is retried, never
/// dead-lettered (a probe is nobody's poison).
async fn probe_settlement(spec: &TreeSpec, d: &Delivery, probe: &Probe) -> Settlement {
    let queue = spec.queue.as_str();
    let Some(control) = &spec.control else {
        events::probe_received(queue, &probe.probe_id, &d.id, false);
        return Settlement::Ack;
    };
    match control.record_probe(queue, probe).await {
        Ok(()) => {
            events::probe_received(queue, &probe.probe_id, &d.id, true);
            Settlement::Ack
        }
        Err(e) => Settlement::Retry {
            delay: Duration::from_secs(5),
            reason: format!("recording probe {}: {e:#}", probe.probe_id),
            counted: false,
        },
    }
}

/// Turns a handler's outcome into what the source should do, with retry timing. `open` is
/// the breaker's cooldown when the batch left it open.
fn settlement(
    spec: &TreeSpec,
    d: &Delivery,
    outcome: Outcome,
    open: Option<Duration>,
) -> Settlement {
    match outcome {
        Outcome::Ack => Settlement::Ack,
        Outcome::DeadLetter(reason) => Settlement::DeadLetter { reason },
        Outcome::Defer { reason, delay } => Settlement::Retry {
            delay,
            reason,
            counted: false,
        },
        Outcome::Unavailable(reason) if open.is_some() => {
            // Back after the cooldown, spread so the queue does not return all at once.
            let cooldown = open.unwrap_or_default();
            let jitter = rand::thread_rng().gen_range(0..=cooldown.as_millis() as u64 / 2);
            Settlement::Retry {
                delay: cooldown + Duration::from_millis(jitter),
                reason: format!("dependency unavailable: {reason}"),
                counted: false,
            }
        }
        Outcome::Retry(reason) | Outcome::Unavailable(reason)
            if d.receive_count >= spec.max_receives =>
        {
            Settlement::DeadLetter {
                reason: format!("gave up after {} receives: {reason}", d.receive_count),
            }
        }
        Outcome::Retry(reason) | Outcome::Unavailable(reason) => Settlement::Retry {
            delay: spec.backoff.delay(d.receive_count),
            reason,
            counted: true,
        },
    }
}

/// Runs the handler so that a panic fails only the message that caused it: a batch that
/// panics is re-run one message at a time (handlers are idempotent), and only the messages
/// that panic alone are failed.
pub(crate) async fn handle_isolated(
    handler: &dyn Handler,
    ctx: &HandlerContext,
    batch: &[Delivery],
) -> Vec<Outcome> {
    match AssertUnwindSafe(handler.handle(ctx, batch))
        .catch_unwind()
        .await
    {
        Ok(outcomes) if outcomes.len() == batch.len() => outcomes,
        Ok(outcomes) => {
            let why = format!(
                "handler returned {} outcomes for {} messages",
                outcomes.len(),
                batch.len()
            );
            batch.iter().map(|_| Outcome::Retry(why.clone())).collect()
        }
        Err(panic) if batch.len() == 1 => vec![Outcome::Retry(format!(
            "handler panicked: {}",
            panic_message(&panic)
        ))],
        Err(_) => {
            let mut outcomes = Vec::with_capacity(batch.len());
            for d in batch {
                let one = std::slice::from_ref(d);
                outcomes.push(
                    match AssertUnwindSafe(handler.handle(ctx, one))
                        .catch_unwind()
                        .await
                    {
                        Ok(mut o) if o.len() == 1 => o.remove(0),
                        Ok(_) => Outcome::Retry("handler returned no outcome".into()),
                        Err(panic) => {
                            Outcome::Retry(format!("handler panicked: {}", panic_message(&panic)))
                        }
                    },
                );
            }
            outcomes
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
