//! The poller: receives from the source when (and only as much as) the supervisor asks, and
//! only what the queue's pause and circuit breaker allow. Receive errors back off instead of
//! crashing; shutdown cuts the pauses short, not a receive (so shutting down waits for at most
//! one SQS long poll, ≤ 20 s).

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;

use super::breaker::Admission;
use super::supervisor::SupervisorMsg;
use super::TreeSpec;
use crate::events::tree as events;
use crate::source::Received;

pub enum PollerMsg {
    Poll { max: usize },
}

pub struct Poller;

/// Sleeps for `d`, or less if shutdown begins.
async fn pause(stopping: &mut watch::Receiver<bool>, d: Duration) {
    if d.is_zero() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {},
        _ = stopping.wait_for(|s| *s) => {},
    }
}

pub struct State {
    spec: TreeSpec,
    supervisor: ActorRef<SupervisorMsg>,
    /// Set by the supervisor on shutdown; read here even in the middle of a long poll (the
    /// mailbox is not read while we wait on the source).
    stopping: watch::Receiver<bool>,
    failures: u32,
    /// The pause state last seen, to log transitions once.
    paused: bool,
}

impl Actor for Poller {
    type Msg = PollerMsg;
    type State = State;
    type Arguments = (TreeSpec, ActorRef<SupervisorMsg>, watch::Receiver<bool>);

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        (spec, supervisor, stopping): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(State {
            spec,
            supervisor,
            stopping,
            failures: 0,
            paused: false,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let PollerMsg::Poll { max } = message;
        let mut stopping = state.stopping.clone();
        if let Some(control) = &state.spec.control {
            let paused = control.is_paused(&state.spec.queue).await;
            if paused != state.paused {
                state.paused = paused;
                events::pause_changed(&state.spec.queue, paused);
            }
            if paused {
                // Receive nothing; the empty answer makes the supervisor poll again.
                pause(&mut stopping, state.spec.pause_recheck).await;
                state.supervisor.cast(SupervisorMsg::Received(Vec::new()))?;
                return Ok(());
            }
        }
        if state.spec.source.is_exhausted() {
            state.supervisor.cast(SupervisorMsg::Exhausted)?;
            return Ok(());
        }
        let mut max = max;
        let mut probing = false;
        if let Some(breaker) = &state.spec.breaker {
            match breaker.admit() {
                Admission::Receive => {}
                Admission::Probe => {
                    max = max.min(1);
                    probing = true;
                }
                Admission::Wait(d) => {
                    // Nothing until the cooldown ends or a probe is decided.
                    let mut changed = breaker.subscribe();
                    tokio::select! {
                        _ = pause(&mut stopping, d) => {},
                        _ = changed.changed() => {},
                    }
                    state.supervisor.cast(SupervisorMsg::Received(Vec::new()))?;
                    return Ok(());
                }
            }
        }
        // Not raced against shutdown: a receive cut short could leave its messages invisible
        // until their timeout. Only the pauses between receives are interruptible.
        let reply = match state.spec.source.receive(max).await {
            Ok(Received::Messages(messages)) => {
                state.failures = 0;
                if messages.is_empty() {
                    if probing {
                        if let Some(b) = &state.spec.breaker {
                            b.probe_found_nothing();
                        }
                    }
                    pause(&mut stopping, state.spec.source.idle_wait()).await;
                } else {
                    events::received(&state.spec.queue, state.spec.source.kind(), messages.len());
                }
                SupervisorMsg::Received(messages)
            }
            Ok(Received::Exhausted) => SupervisorMsg::Exhausted,
            Err(e) => {
                if probing {
                    if let Some(b) = &state.spec.breaker {
                        b.probe_found_nothing();
                    }
                }
                events::receive_failed(&state.spec.queue, &e);
                state.failures += 1;
                pause(
                    &mut stopping,
                    Duration::from_millis(250 * 2u64.pow(state.failures.min(7))),
                )
                .await;
                SupervisorMsg::Received(Vec::new())
            }
        };
        state.supervisor.cast(reply)?;
        Ok(())
    }
}
