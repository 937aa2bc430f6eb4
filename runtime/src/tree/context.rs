//! What a handler knows about the batch it is working on: when to stop and how many tries a
//! message has left.
//!
//! A handler must stop starting new work once [`HandlerContext::should_stop`] says so (the
//! batch's soft deadline passed: the per-batch timeout, or a Lambda invocation's deadline
//! minus its margin; or the tree is being stopped). What it claimed but did not start, it
//! releases and answers [`crate::Outcome::Defer`], so nothing is left leased. Work already
//! started (an SES call in flight) finishes: the margin is sized to fit it.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::source::Delivery;

#[derive(Clone, Debug)]
pub struct HandlerContext {
    cancel: CancellationToken,
    deadline: Option<Instant>,
    max_receives: u32,
}

impl HandlerContext {
    pub fn new(cancel: CancellationToken, deadline: Option<Instant>, max_receives: u32) -> Self {
        Self {
            cancel,
            deadline,
            max_receives,
        }
    }

    /// A context that never stops (tests, one-off calls).
    pub fn unbounded(max_receives: u32) -> Self {
        Self::new(CancellationToken::new(), None, max_receives)
    }

    /// True once the batch should start nothing new.
    pub fn should_stop(&self) -> bool {
        self.cancel.is_cancelled() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Resolves when [`Self::should_stop`] becomes true.
    pub async fn stopped(&self) {
        match self.deadline {
            Some(d) => tokio::select! {
                _ = self.cancel.cancelled() => {},
                _ = tokio::time::sleep_until(d) => {},
            },
            None => self.cancel.cancelled().await,
        }
    }

    /// Time until the soft deadline, if there is one.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// True when this is the message's last receive: a counted retry now dead-letters it.
    pub fn is_last_receive(&self, d: &Delivery) -> bool {
        d.receive_count >= self.max_receives
    }

    pub fn max_receives(&self) -> u32 {
        self.max_receives
    }
}
