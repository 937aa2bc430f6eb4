//! A handler worker: runs the queue's handler over one batch at a time, then settles it.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::supervisor::SupervisorMsg;
use super::{Handler, TreeSpec};
use crate::control::Probe;
use crate::events;
use crate::source::{Delivery, Outcome, Settlement};

pub enum WorkerMsg {
    Work(Vec<Delivery>),
}

pub struct WorkerArgs {
    pub index: usize,
    pub spec: TreeSpec,
    pub supervisor: ActorRef<SupervisorMsg>,
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
        // A settle failure crashes this worker (the supervisor restarts it); the batch's
        // messages then come back after their visibility timeout.
        run_batch(&state.spec, batch).await?;
        state
            .supervisor
            .cast(SupervisorMsg::WorkerDone(state.index))?;
        Ok(())
    }
}

/// Handles and settles one batch. Probes ([`crate::control::Probe`]) are taken out first:
/// recorded and acknowledged, never given to the handler.
pub(super) async fn run_batch(spec: &TreeSpec, batch: Vec<Delivery>) -> anyhow::Result<()> {
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

    // Heartbeat: keep the batch invisible while the handler works on it.
    let heartbeat = {
        let (source, batch) = (spec.source.clone(), batch.clone());
        let every = spec.source.visibility_timeout() / 2;
        tokio::spawn(async move {
            if every.is_zero() {
                return;
            }
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if let Err(e) = source.extend(&batch, every * 2).await {
                    tracing::warn!(error = %e, "visibility heartbeat failed");
                }
            }
        })
    };
    let mut settled: Vec<(Delivery, Settlement)> = Vec::new();
    let mut work = Vec::with_capacity(batch.len());
    for d in batch {
        match Probe::parse(&d.body) {
            Some(probe) => {
                let s = probe_settlement(spec, &d, &probe).await;
                events::settled(queue, &d.id, &s);
                settled.push((d, s));
            }
            None => work.push(d),
        }
    }
    if !work.is_empty() {
        let outcomes = handle_isolated(spec.handler.as_ref(), &work).await;
        events::handled(queue, started.elapsed().as_secs_f64());
        settled.extend(work.into_iter().zip(outcomes).map(|(d, outcome)| {
            let s = settlement(spec, &d, outcome);
            events::settled(queue, &d.id, &s);
            (d, s)
        }));
    }
    heartbeat.abort();
    let result = spec.source.settle(settled).await;
    events::in_flight(queue, -n);
    result
}

/// A probe is acknowledged once recorded; if recording fails it is retried, never
/// dead-lettered (a probe is nobody's poison).
async fn probe_settlement(spec: &TreeSpec, d: &Delivery, probe: &Probe) -> Settlement {
    let queue = spec.queue.as_str();
    let Some(control) = &spec.control else {
        tracing::info!(queue, probe_id = %probe.probe_id, "probe acknowledged (no control database to record it in)");
        events::probe_received(queue);
        return Settlement::Ack;
    };
    match control.record_probe(queue, probe).await {
        Ok(()) => {
            tracing::info!(queue, probe_id = %probe.probe_id, id = %d.id, "probe recorded and acknowledged");
            events::probe_received(queue);
            Settlement::Ack
        }
        Err(e) => Settlement::Retry {
            delay: Duration::from_secs(5),
            reason: format!("recording probe {}: {e:#}", probe.probe_id),
        },
    }
}

/// Turns a handler's outcome into what the source should do, with retry timing.
fn settlement(spec: &TreeSpec, d: &Delivery, outcome: Outcome) -> Settlement {
    match outcome {
        Outcome::Ack => Settlement::Ack,
        Outcome::DeadLetter(reason) => Settlement::DeadLetter { reason },
        Outcome::Retry(reason) if d.receive_count >= spec.max_receives => Settlement::DeadLetter {
            reason: format!("gave up after {} receives: {reason}", d.receive_count),
        },
        Outcome::Retry(reason) => Settlement::Retry {
            delay: spec.backoff.delay(d.receive_count),
            reason,
        },
    }
}

/// Runs the handler so that a panic fails only the message that caused it: a batch that
/// panics is re-run one message at a time (handlers are idempotent), and only the messages
/// that panic alone are failed.
pub(crate) async fn handle_isolated(handler: &dyn Handler, batch: &[Delivery]) -> Vec<Outcome> {
    match AssertUnwindSafe(handler.handle(batch)).catch_unwind().await {
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
                    match AssertUnwindSafe(handler.handle(one)).catch_unwind().await {
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
