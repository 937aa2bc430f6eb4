//! The tree's circuit breaker: a dependency that is down (SES paused or failing, Postgres
//! unreachable) pauses the tree as a whole instead of failing its messages one by one into
//! the dead-letter queue.
//!
//! ```text
//!   closed ──(trip_after Unavailable outcomes in a row)──► open ──(cooldown)──► half-open
//!     ▲                                                    ▲                      │
//!     └──────────────(the probe batch works)───────────────┼──────────────────────┤
//!                                                          └─(the probe fails: cooldown ×2)
//! ```
//!
//! * **Closed**: receive as usual. An `Unavailable` outcome is a counted retry until the
//!   breaker trips (a lone timeout may be the message's own fault and must still reach the
//!   DLQ eventually).
//! * **Open**: receive nothing until the cooldown ends. Outcomes that arrive while open (the
//!   batches already in flight) are retried uncounted, to come back after the cooldown.
//! * **Half-open**: receive one message (a Lambda invocation: its batch) as a probe; nothing
//!   else until it is decided.
//!
//! The breaker outlives a tree (a Lambda execution environment keeps it across invocations),
//! so it is shared through [`crate::TreeSpec::breaker`]. State changes are logged and exported
//! as `datamailer_tree_state{queue}` (0 closed, 1 half-open, 2 open).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::tree as events;
use crate::source::Outcome;

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// `Unavailable` outcomes in a row (no healthy outcome between) that open the breaker.
    pub trip_after: u32,
    /// The first cooldown; each failed probe doubles it up to `max_cooldown`.
    pub base_cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            trip_after: 3,
            base_cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
        }
    }
}

/// What the poller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Receive as usual.
    Receive,
    /// Receive one message as a probe.
    Probe,
    /// Receive nothing for this long (or until the breaker changes).
    Wait(Duration),
}

/// The breaker's state, as exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

struct Inner {
    state: BreakerState,
    /// Until when the breaker stays open.
    open_until: Instant,
    cooldown: Duration,
    in_a_row: u32,
    probe_out: bool,
    reason: String,
}

pub struct CircuitBreaker {
    queue: String,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    /// Bumped on every change, so a waiting poller wakes as soon as a probe is decided.
    changed: watch::Sender<u64>,
}

impl CircuitBreaker {
    pub fn new(queue: impl Into<String>, settings: BreakerSettings) -> Self {
        let queue = queue.into();
        events::tree_state(&queue, BreakerState::Closed);
        Self {
            queue,
            settings,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                open_until: Instant::now(),
                cooldown: settings.base_cooldown,
                in_a_row: 0,
                probe_out: false,
                reason: String::new(),
            }),
            changed: watch::channel(0).0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().unwrap().state
    }

    /// Decides what the poller may do, moving open → half-open once the cooldown is over.
    pub fn admit(&self) -> Admission {
        let mut inner = self.inner.lock().unwrap();
        match inner.state {
            BreakerState::Closed => Admission::Receive,
            BreakerState::Open => {
                let left = inner.open_until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    return Admission::Wait(left);
                }
                self.set(&mut inner, BreakerState::HalfOpen);
                inner.probe_out = true;
                Admission::Probe
            }
            BreakerState::HalfOpen if inner.probe_out => {
                Admission::Wait(self.settings.max_cooldown)
            }
            BreakerState::HalfOpen => {
                inner.probe_out = true;
                Admission::Probe
            }
        }
    }

    /// The probe's receive came back empty: the next poll may probe again.
    pub fn probe_found_nothing(&self) {
        let mut inner = self.inner.lock().unwrap();
        if inner.state == BreakerState::HalfOpen {
            inner.probe_out = false;
        }
    }

    /// How long an open breaker still blocks (zero when it does not): a Lambda invocation
    /// that arrives meanwhile hands its batch straight back.
    pub fn blocking_for(&self) -> Duration {
        let inner = self.inner.lock().unwrap();
        match inner.state {
            BreakerState::Open => inner.open_until.saturating_duration_since(Instant::now()),
            _ => Duration::ZERO,
        }
    }

    /// Feeds a batch's outcomes. Returns the cooldown if the breaker is open afterwards
    /// (its `Unavailable` outcomes are then retried uncounted, after that delay).
    pub fn record(&self, outcomes: &[Outcome]) -> Option<Duration> {
        let down: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Unavailable(why) => Some(why.as_str()),
                _ => None,
            })
            .collect();
        let healthy = outcomes.len() > down.len();
        let mut inner = self.inner.lock().unwrap();
        let was_probe = inner.state == BreakerState::HalfOpen && inner.probe_out;
        if down.is_empty() {
            if healthy {
                inner.in_a_row = 0;
                if inner.state != BreakerState::Closed {
                    inner.cooldown = self.settings.base_cooldown;
                    self.set(&mut inner, BreakerState::Closed);
                }
            }
            return None;
        }
        inner.reason = down[down.len() - 1].to_string();
        inner.in_a_row = if healthy { 0 } else { inner.in_a_row } + down.len() as u32;
        match inner.state {
            BreakerState::Closed if inner.in_a_row >= self.settings.trip_after => {
                inner.cooldown = self.settings.base_cooldown;
                self.open(&mut inner);
            }
            BreakerState::HalfOpen if was_probe && !healthy => {
                inner.cooldown = (inner.cooldown * 2).min(self.settings.max_cooldown);
                self.open(&mut inner);
            }
            _ => {}
        }
        (inner.state == BreakerState::Open).then_some(inner.cooldown)
    }

    /// A receiver that changes whenever the breaker does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn open(&self, inner: &mut Inner) {
        inner.open_until = Instant::now() + inner.cooldown;
        inner.probe_out = false;
        events::breaker_opened(&self.queue, inner.cooldown, &inner.reason);
        self.set(inner, BreakerState::Open);
    }

    fn set(&self, inner: &mut Inner, state: BreakerState) {
        if inner.state != state {
            events::tree_state_changed(&self.queue, inner.state, state, &inner.reason);
        }
        inner.state = state;
        if state != BreakerState::HalfOpen {
            inner.probe_out = false;
        }
        events::tree_state(&self.queue, state);
        self.changed.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Outcome {
        Outcome::Unavailable("SES SendingPausedException".into())
    }

    fn settings() -> BreakerSettings {
        BreakerSettings {
            trip_after: 3,
            base_cooldown: Duration::from_millis(40),
            max_cooldown: Duration::from_millis(100),
        }
    }

    #[tokio::test]
    async fn trips_after_a_run_of_unavailable_and_recovers_through_a_probe() {
        let b = CircuitBreaker::new("q", settings());
        assert_eq!(
            b.record(&[down(), down()]),
            None,
            "two in a row do not trip"
        );
        assert_eq!(
            b.record(&[Outcome::Ack, down()]),
            None,
            "a healthy outcome resets the run"
        );
        assert_eq!(b.record(&[down(), down()]), Some(Duration::from_millis(40)));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.admit(), Admission::Wait(_)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.admit(), Admission::Probe);
        assert!(
            matches!(b.admit(), Admission::Wait(_)),
            "one probe at a time"
        );
        // The probe fails: open again, cooldown doubled.
        assert_eq!(b.record(&[down()]), Some(Duration::from_millis(80)));
        tokio::time::sleep(Duration::from_millis(90)).await;
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.record(&[Outcome::Ack]), None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admission::Receive);
    }

    #[tokio::test]
    async fn an_empty_probe_lets_the_next_poll_probe_again() {
        let b = CircuitBreaker::new("q", settings());
        b.record(&[down(), down(), down()]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.admit(), Admission::Probe);
        b.probe_found_nothing();
        assert_eq!(b.admit(), Admission::Probe);
    }
}
