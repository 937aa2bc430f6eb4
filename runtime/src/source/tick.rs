//! A clock as a source: one `tick` message every interval, so periodic work (the runtime's
//! maintenance) runs as a supervised tree like any queue: restarts, deadlines, shutdown and
//! metrics come with it. The first tick is due at once.
//!
//! Ticks are not stored anywhere: a tick that fails is not retried (the next one comes at the
//! next interval), and settling is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Delivery, Received, SettleReport, Settlement, Source};

/// The body of every tick.
pub const TICK_BODY: &str = "tick";

pub struct TickSource {
    every: Duration,
    next: Mutex<Instant>,
    count: AtomicU64,
}

impl TickSource {
    pub fn new(every: Duration) -> Self {
        Self {
            every: every.max(Duration::from_millis(10)),
            next: Mutex::new(Instant::now()),
            count: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl Source for TickSource {
    fn kind(&self) -> &'static str {
        "tick"
    }

    async fn receive(&self, max: usize) -> anyhow::Result<Received> {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap();
        if max == 0 || now < *next {
            return Ok(Received::Messages(Vec::new()));
        }
        *next = now + self.every;
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Received::Messages(vec![Delivery {
            id: format!("tick-{n}"),
            receipt: String::new(),
            body: TICK_BODY.to_string(),
            receive_count: 1,
            sent_at: Some(chrono::Utc::now()),
        }]))
    }

    fn max_batch(&self) -> usize {
        1
    }

    /// Until the next tick is due (the pause is cut short by shutdown).
    fn idle_wait(&self) -> Duration {
        self.next
            .lock()
            .unwrap()
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    async fn extend(&self, _: &[Delivery], _: Duration) -> anyhow::Result<()> {
        Ok(())
    }

    async fn settle(&self, _: Vec<(Delivery, Settlement)>) -> SettleReport {
        SettleReport::default()
    }

    /// No visibility to keep: no heartbeat.
    fn visibility_timeout(&self) -> Duration {
        Duration::ZERO
    }
}
