//! One supervised actor tree per queue.
//!
//! ```text
//! QueueSupervisor ── Poller ──► Worker × concurrency ──► Sender (SES / capture, shared limiter)
//!                                        └────────────► Db (Postgres pool, shared cap)
//! ```
//!
//! * The supervisor is the coordinator: it knows which workers are idle and asks the poller for
//!   exactly as many messages as they can take (`idle workers × batch size`). Nothing is ever
//!   received that no worker is free to start: that is the backpressure, and no mailbox grows.
//! * A worker runs the queue's [`Handler`] over one batch, with a visibility heartbeat, catches
//!   panics (a panicking batch is retried message by message so one poison message fails
//!   alone), turns outcomes into settlements (backoff by receive count, dead-letter after the
//!   last receive) and settles them with the source.
//! * A crashed poller or worker is restarted; more than `max_restarts` within `within` and the
//!   tree fails loudly ([`TreeExit::Failed`]), like an OTP supervisor's restart intensity.
//! * A paused queue ([`crate::control`]) receives nothing until resumed; probe messages are
//!   recorded and acknowledged by the worker before the handler sees the batch.
//! * Shutdown stops the receiving, lets in-flight batches finish and settle, then stops.
//!   Messages received after shutdown began are handed back at once.
//!
//! Sender and Db are shared services rather than actors: the SES quota and the connection cap
//! are per process, so one limiter and one pool serve every tree (docs/architecture.md).

mod poller;
mod supervisor;
mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::control::QueueControl;
use crate::source::{Delivery, Outcome, Source};

pub use supervisor::SupervisorMsg;

/// What a queue does with its messages. Handlers get a whole batch so they can claim, send and
/// record set-wise (one statement for many rows); they return one outcome per delivery, in order.
/// Handlers must be idempotent: every queue is at-least-once.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, batch: &[Delivery]) -> Vec<Outcome>;
}

/// Restart intensity: more than `max_restarts` within `within` fails the tree.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub within: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within: Duration::from_secs(60),
        }
    }
}

/// Everything a tree needs.
#[derive(Clone)]
pub struct TreeSpec {
    pub queue: String,
    pub source: Arc<dyn Source>,
    pub handler: Arc<dyn Handler>,
    /// Handler workers: the queue's reserved concurrency.
    pub concurrency: usize,
    /// Messages per worker batch: the source's [`Source::max_batch`] unless set.
    pub batch_size: usize,
    pub backoff: Backoff,
    /// A retry on this receive (or later) dead-letters instead, keeping the reason.
    pub max_receives: u32,
    pub restart: RestartPolicy,
    /// Pauses and probes (see [`crate::control`]). Without it the tree never pauses and
    /// acknowledges probes without recording them.
    pub control: Option<Arc<QueueControl>>,
    /// How long a paused poller waits before checking again.
    pub pause_recheck: Duration,
}

impl TreeSpec {
    pub fn new(
        queue: impl Into<String>,
        source: Arc<dyn Source>,
        handler: Arc<dyn Handler>,
    ) -> Self {
        Self {
            queue: queue.into(),
            batch_size: source.max_batch(),
            source,
            handler,
            concurrency: 1,
            backoff: Backoff::default(),
            max_receives: 5,
            restart: RestartPolicy::default(),
            control: None,
            pause_recheck: crate::control::PAUSE_RECHECK,
        }
    }
}

/// How a tree ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeExit {
    /// Shut down or ran out of messages, with everything in flight settled.
    Drained,
    /// Gave up (restart limit) or was killed: unsettled messages return after their timeout.
    Failed(String),
}

/// Stops a tree: gracefully ([`TreeStopper::shutdown`]) or at once ([`TreeStopper::kill`]).
#[derive(Clone)]
pub struct TreeStopper {
    supervisor: ActorRef<SupervisorMsg>,
}

impl TreeStopper {
    pub fn shutdown(&self) {
        let _ = self.supervisor.cast(SupervisorMsg::Shutdown);
    }

    pub fn kill(&self) {
        self.supervisor.kill();
    }
}

/// A running tree.
pub struct QueueTree {
    queue: String,
    supervisor: ActorRef<SupervisorMsg>,
    handle: JoinHandle<()>,
    exit: Arc<Mutex<Option<TreeExit>>>,
}

impl QueueTree {
    pub async fn start(spec: TreeSpec) -> anyhow::Result<QueueTree> {
        let exit = Arc::new(Mutex::new(None));
        let queue = spec.queue.clone();
        let (supervisor, handle) =
            Actor::spawn(None, supervisor::QueueSupervisor, (spec, exit.clone())).await?;
        tracing::info!(queue, "queue tree started");
        Ok(QueueTree {
            queue,
            supervisor,
            handle,
            exit,
        })
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// A handle to stop the tree from elsewhere while another task waits on it.
    pub fn stopper(&self) -> TreeStopper {
        TreeStopper {
            supervisor: self.supervisor.clone(),
        }
    }

    /// Waits until the tree ends by itself (source exhausted, or failure).
    pub async fn wait(self) -> TreeExit {
        let _ = self.handle.await;
        self.exit
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| TreeExit::Failed("supervisor stopped unexpectedly".into()))
    }

    /// Stops receiving, finishes in-flight work, then ends. After `grace` the tree is killed
    /// and whatever was still running returns to its queue after the visibility timeout.
    pub async fn shutdown(self, grace: Duration) -> TreeExit {
        let _ = self.supervisor.cast(SupervisorMsg::Shutdown);
        self.wait_or_kill(grace).await
    }

    /// Waits up to `limit` for the tree to end by itself; then kills it.
    pub async fn wait_or_kill(mut self, limit: Duration) -> TreeExit {
        if tokio::time::timeout(limit, &mut self.handle).await.is_err() {
            tracing::warn!(queue = %self.queue, "tree did not finish in time; stopping it");
            self.supervisor.kill();
            let _ = self.handle.await;
            let mut exit = self.exit.lock().unwrap();
            exit.get_or_insert(TreeExit::Failed(
                "stopped before in-flight work finished".into(),
            ));
            return exit.clone().unwrap();
        }
        self.exit
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| TreeExit::Failed("supervisor stopped unexpectedly".into()))
    }
}
