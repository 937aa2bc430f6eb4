//! The queue supervisor: starts the poller and the workers, routes received batches to idle
//! workers, restarts crashed children within the restart policy, and drives shutdown.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::poller::{Poller, PollerMsg};
use super::worker::{Worker, WorkerArgs, WorkerMsg};
use super::{TreeExit, TreeSpec};
use crate::events::tree as events;
use crate::source::{Delivery, Settlement};

pub enum SupervisorMsg {
    /// The poller's answer to a poll.
    Received(Vec<Delivery>),
    /// The source has nothing more, ever (a Lambda batch).
    Exhausted,
    /// A worker finished its batch.
    WorkerDone(usize),
    /// Stop receiving, finish in-flight work, then stop.
    Shutdown,
}

pub struct QueueSupervisor;

pub struct State {
    spec: TreeSpec,
    exit: Arc<Mutex<Option<TreeExit>>>,
    poller: ActorRef<PollerMsg>,
    workers: Vec<ActorRef<WorkerMsg>>,
    idle: Vec<usize>,
    poll_outstanding: bool,
    stopping: bool,
    exhausted: bool,
    restarts: VecDeque<Instant>,
    stopping_tx: watch::Sender<bool>,
    /// Cancelled when the tree is told to stop cooperatively; every batch's context derives
    /// from it.
    cancel: CancellationToken,
}

impl State {
    fn all_idle(&self) -> bool {
        self.idle.len() == self.workers.len()
    }
}

async fn spawn_worker(
    spec: &TreeSpec,
    index: usize,
    myself: &ActorRef<SupervisorMsg>,
    cancel: &CancellationToken,
) -> Result<ActorRef<WorkerMsg>, ActorProcessingErr> {
    let args = WorkerArgs {
        index,
        spec: spec.clone(),
        supervisor: myself.clone(),
        cancel: cancel.clone(),
    };
    let (worker, _) = Actor::spawn_linked(None, Worker, args, myself.get_cell()).await?;
    Ok(worker)
}

async fn spawn_poller(
    spec: &TreeSpec,
    myself: &ActorRef<SupervisorMsg>,
    stopping: watch::Receiver<bool>,
) -> Result<ActorRef<PollerMsg>, ActorProcessingErr> {
    let args = (spec.clone(), myself.clone(), stopping);
    let (poller, _) = Actor::spawn_linked(None, Poller, args, myself.get_cell()).await?;
    Ok(poller)
}

impl QueueSupervisor {
    /// Asks for as many messages as the idle workers can start, unless a poll is already out.
    fn maybe_poll(state: &mut State) {
        if state.poll_outstanding || state.stopping || state.exhausted || state.idle.is_empty() {
            return;
        }
        let max = state.idle.len() * state.spec.batch_size;
        if state.poller.cast(PollerMsg::Poll { max }).is_ok() {
            state.poll_outstanding = true;
        }
    }

    /// Ends the tree once nothing is in flight and nothing more will come.
    fn maybe_finish(myself: &ActorRef<SupervisorMsg>, state: &mut State) {
        if (state.stopping || state.exhausted) && state.all_idle() && !state.poll_outstanding {
            state.exit.lock().unwrap().get_or_insert(TreeExit::Drained);
            tracing::info!(queue = %state.spec.queue, "queue tree drained");
            myself.stop(None);
        }
    }

    /// Counts a restart; past the policy's intensity the whole tree fails.
    fn note_restart(
        state: &mut State,
        actor: &'static str,
        why: &str,
    ) -> Result<(), ActorProcessingErr> {
        events::actor_restarted(&state.spec.queue, actor, why);
        let now = Instant::now();
        state.restarts.push_back(now);
        while state
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > state.spec.restart.within)
        {
            state.restarts.pop_front();
        }
        if state.restarts.len() > state.spec.restart.max_restarts {
            let reason = format!(
                "{} restarts within {:?} (last: {actor}: {why})",
                state.restarts.len(),
                state.spec.restart.within
            );
            events::tree_failed(&state.spec.queue, &reason);
            state
                .exit
                .lock()
                .unwrap()
                .get_or_insert(TreeExit::Failed(reason.clone()));
            return Err(reason.into());
        }
        Ok(())
    }

    async fn child_down(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut State,
        cell: ActorCell,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        let id = cell.get_id();
        if state.poller.get_id() == id {
            if state.stopping || state.exhausted {
                return Ok(());
            }
            Self::note_restart(state, "poller", &why)?;
            state.poller = spawn_poller(&state.spec, myself, state.stopping_tx.subscribe()).await?;
            state.poll_outstanding = false;
        } else if let Some(index) = state.workers.iter().position(|w| w.get_id() == id) {
            Self::note_restart(state, "worker", &why)?;
            // The crashed batch was never settled: its messages reappear after their timeout.
            state.workers[index] = spawn_worker(&state.spec, index, myself, &state.cancel).await?;
            if !state.idle.contains(&index) {
                state.idle.push(index);
            }
        }
        Self::maybe_poll(state);
        Self::maybe_finish(myself, state);
        Ok(())
    }
}

impl Actor for QueueSupervisor {
    type Msg = SupervisorMsg;
    type State = State;
    type Arguments = (TreeSpec, Arc<Mutex<Option<TreeExit>>>, CancellationToken);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (spec, exit, cancel): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        events::tree_started(&spec.queue, &["poller", "worker"]);
        let (stopping_tx, stopping_rx) = watch::channel(false);
        let poller = spawn_poller(&spec, &myself, stopping_rx).await?;
        let mut workers = Vec::with_capacity(spec.concurrency.max(1));
        for index in 0..spec.concurrency.max(1) {
            workers.push(spawn_worker(&spec, index, &myself, &cancel).await?);
        }
        let idle = (0..workers.len()).rev().collect();
        Ok(State {
            spec,
            exit,
            poller,
            workers,
            idle,
            poll_outstanding: false,
            stopping: false,
            exhausted: false,
            restarts: VecDeque::new(),
            stopping_tx,
            cancel,
        })
    }

    async fn post_start(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        Self::maybe_poll(state);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Received(deliveries) => {
                state.poll_outstanding = false;
                if state.stopping {
                    // Received while shutting down: hand them straight back, uncounted.
                    let back = deliveries
                        .into_iter()
                        .map(|d| {
                            (
                                d,
                                Settlement::Retry {
                                    delay: Default::default(),
                                    reason: "shutting down".into(),
                                    counted: false,
                                },
                            )
                        })
                        .collect();
                    let report = state.spec.source.settle(back).await;
                    events::settle_failures(&state.spec.queue, &report);
                } else {
                    let mut rest = deliveries;
                    while !rest.is_empty() {
                        let take = rest.len().min(state.spec.batch_size.max(1));
                        let batch: Vec<Delivery> = rest.drain(..take).collect();
                        let index = state
                            .idle
                            .pop()
                            .expect("never receive more than idle workers take");
                        state.workers[index].cast(WorkerMsg::Work(batch))?;
                    }
                }
            }
            SupervisorMsg::Exhausted => {
                state.poll_outstanding = false;
                state.exhausted = true;
            }
            SupervisorMsg::WorkerDone(index) => {
                if !state.idle.contains(&index) {
                    state.idle.push(index);
                }
            }
            SupervisorMsg::Shutdown => {
                state.stopping = true;
                state.stopping_tx.send_replace(true);
            }
        }
        Self::maybe_poll(state);
        Self::maybe_finish(&myself, state);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                Self::child_down(&myself, state, cell, err.to_string()).await?
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let why = reason.unwrap_or_else(|| "stopped".into());
                Self::child_down(&myself, state, cell, why).await?
            }
            _ => {}
        }
        Ok(())
    }
}
