//! The poller: receives from the source when (and only as much as) the supervisor asks.
//! A long poll is cut short by shutdown; receive errors back off instead of crashing.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;

use super::supervisor::SupervisorMsg;
use super::TreeSpec;
use crate::events;
use crate::source::Received;

pub enum PollerMsg {
    Poll { max: usize },
}

pub struct Poller;

pub struct State {
    spec: TreeSpec,
    supervisor: ActorRef<SupervisorMsg>,
    /// Set by the supervisor on shutdown; read here even in the middle of a long poll (the
    /// mailbox is not read while we wait on the source).
    stopping: watch::Receiver<bool>,
    failures: u32,
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
        let received = tokio::select! {
            biased;
            _ = stopping.wait_for(|s| *s) => Ok(Received::Messages(Vec::new())),
            r = state.spec.source.receive(max) => r,
        };
        let reply = match received {
            Ok(Received::Messages(messages)) => {
                state.failures = 0;
                if !messages.is_empty() {
                    events::received(&state.spec.queue, state.spec.source.kind(), messages.len());
                }
                SupervisorMsg::Received(messages)
            }
            Ok(Received::Exhausted) => SupervisorMsg::Exhausted,
            Err(e) => {
                events::receive_failed(&state.spec.queue, &e);
                state.failures += 1;
                let pause = Duration::from_millis(250 * 2u64.pow(state.failures.min(7)));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {},
                    _ = stopping.wait_for(|s| *s) => {},
                }
                SupervisorMsg::Received(Vec::new())
            }
        };
        state.supervisor.cast(reply)?;
        Ok(())
    }
}
