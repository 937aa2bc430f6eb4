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
//! * A worker runs the queue's [`Handler`] over one batch, with a visibility heartbeat and a
//!   deadline, catches panics (a panicking batch is retried message by message so one poison
//!   message fails alone), turns outcomes into settlements (backoff by receive count,
//!   dead-letter after the last receive; deferrals and outages uncounted) and settles them with
//!   the source. Everything a batch runs (handler, heartbeat) is one future owned by the
//!   worker: killing the tree leaves no task behind.
//! * A circuit breaker ([`breaker`]) turns a run of `Unavailable` outcomes into a pause of the
//!   whole tree with probes, instead of a queue drained into its DLQ.
//! * A crashed poller or worker is restarted; more than `max_restarts` within `within` and the
//!   tree fails loudly ([`TreeExit::Failed`]), like an OTP supervisor's restart intensity.
//! * A paused queue ([`crate::control`]) receives nothing until resumed; probe messages are
//!   recorded and acknowledged by the worker before the handler sees the batch.
//! * Shutdown stops the receiving, lets in-flight batches finish and settle, then stops.
//!   Messages received after shutdown began are handed back at once.
//!
//! Sender and Db are shared services rather than actors: the SES quota and the connection cap
//! are per process, so one limiter and one pool serve every tree (docs/architecture.md).

pub mod breaker;
mod context;
mod poller;
mod supervisor;
mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::control::QueueControl;
use crate::source::{Delivery, Outcome, Source};

pub use breaker::{BreakerSettings, CircuitBreaker};
pub use context::HandlerContext;
pub use supervisor::SupervisorMsg;

/// What a queue does with its messages. Handlers get a whole batch so they can claim, send and
/// record set-wise (one statement for many rows); they return one outcome per delivery, in order.
/// Handlers must be idempotent: every queue is at-least-once. They must stop starting new work
/// once `ctx.should_stop()` (see [`HandlerContext`]).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, ctx: &HandlerContext, batch: &[Delivery]) -> Vec<Outcome>;

    /// The runtime spent these messages' receives on failures and is dead-lettering them
    /// (with the reason): record the end on the rows they stand for, so nothing else brings
    /// them back. Called before the messages leave the queue; errors are the handler's to log.
    async fn gave_up(&self, _ctx: &HandlerContext, _messages: &[(Delivery, String)]) {}
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
    /// A batch's soft deadline: past it the handler starts nothing new (see
    /// [`HandlerContext`]).
    pub handler_timeout: Duration,
    /// How long after the soft deadline a batch is abandoned (its messages retried; rows it
    /// leased come back when their lease ends).
    pub handler_grace: Duration,
    /// An absolute soft deadline for every batch (a Lambda invocation's deadline minus its
    /// margin); the earlier of this and `handler_timeout` applies.
    pub deadline: Option<tokio::time::Instant>,
    /// Pauses the tree when its dependencies are down. Shared so that it outlives one tree
    /// (a Lambda execution environment). Without it `Unavailable` is a plain counted retry.
    pub breaker: Option<Arc<CircuitBreaker>>,
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
            handler_timeout: Duration::from_secs(120),
            handler_grace: Duration::from_secs(30),
            deadline: None,
            breaker: None,
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

/// Stops a tree: gracefully ([`TreeStopper::shutdown`]), cooperatively
/// ([`TreeStopper::cancel`]: handlers start nothing new) or at once ([`TreeStopper::kill`]).
#[derive(Clone)]
pub struct TreeStopper {
    supervisor: ActorRef<SupervisorMsg>,
    cancel: CancellationToken,
}

impl TreeStopper {
    /// Stop receiving; in-flight batches finish.
    pub fn shutdown(&self) {
        let _ = self.supervisor.cast(SupervisorMsg::Shutdown);
    }

    /// Tell in-flight handlers to start nothing new and release what they claimed.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Stop everything now; unsettled messages return after their visibility timeout.
    pub fn kill(&self) {
        self.supervisor.kill();
    }
}

/// A running tree.
pub struct QueueTree {
    queue: String,
    supervisor: ActorRef<SupervisorMsg>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    exit: Arc<Mutex<Option<TreeExit>>>,
}

impl QueueTree {
    pub async fn start(spec: TreeSpec) -> anyhow::Result<QueueTree> {
        let exit = Arc::new(Mutex::new(None));
        let queue = spec.queue.clone();
        let cancel = CancellationToken::new();
        let (supervisor, handle) = Actor::spawn(
            None,
            supervisor::QueueSupervisor,
            (spec, exit.clone(), cancel.clone()),
        )
        .await?;
        tracing::info!(queue, "queue tree started");
        Ok(QueueTree {
            queue,
            supervisor,
            cancel,
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
            cancel: self.cancel.clone(),
        }
    }

    /// Waits until the tree ends by itself (source exhausted, or failure).
    pub async fn wait(mut self) -> TreeExit {
        let _ = (&mut self.handle).await;
        self.exit()
    }

    /// How the (ended) tree ended.
    fn exit(&self) -> TreeExit {
        self.exit
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| TreeExit::Failed("supervisor stopped unexpectedly".into()))
    }

    /// Stops receiving, finishes in-flight work, then ends. Past three quarters of `grace`
    /// handlers are told to stop (they release what they have not started); after `grace` the
    /// tree is killed and whatever was still running returns to its queue after the
    /// visibility timeout.
    pub async fn shutdown(mut self, grace: Duration) -> TreeExit {
        let _ = self.supervisor.cast(SupervisorMsg::Shutdown);
        let soft = grace.mul_f64(0.75);
        if tokio::time::timeout(soft, &mut self.handle).await.is_ok() {
            return self.exit();
        }
        self.cancel.cancel();
        self.wait_or_kill(grace.saturating_sub(soft)).await
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
        self.exit()
    }
}
