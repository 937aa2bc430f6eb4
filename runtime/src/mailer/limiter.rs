//! The SES rate limit, shared by every tree in the process, with transactional mail first.
//!
//! SES quotas are per account and count recipients, so one pacer guards all sends of the
//! process: each send reserves the next free slot (GCRA's virtual schedule, one slot every
//! `1 / rate` seconds, no burst) and sleeps until it, so the rate is held in every window and
//! nothing polls; a send that wakes late keeps its slot (see `Pace::reserve`).
//!
//! * **Priority.** A transactional send reserves its slot as soon as it asks. A campaign send
//!   only takes a slot that is free *now*: it sleeps until the next free slot and checks
//!   again, so a password reset that arrives meanwhile takes that slot first. Campaign senders
//!   queue behind one another on a fair lock, so only one of them is ever waiting on a slot.
//!   A transactional send therefore waits at most for the transactional sends ahead of it
//!   plus one slot.
//! * **Adaptive rate (AIMD).** A throttle from SES halves the pace (at most once per
//!   half-second, down to 5 % of the ceiling); the pace then creeps back up by 5 % of the
//!   ceiling per second. The ceiling is the configured rate, or the share leased for this
//!   process ([`SendLimiter::set_ceiling`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::events::mailer as events;

/// Which traffic a send belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Transactional,
    Campaign,
}

impl Lane {
    pub fn as_str(&self) -> &'static str {
        match self {
            Lane::Transactional => "transactional",
            Lane::Campaign => "campaign",
        }
    }
}

/// The lowest pace, as a share of the ceiling.
const FLOOR_SHARE: f64 = 0.05;
/// How fast the pace recovers: this share of the ceiling per second.
const RECOVERY_SHARE_PER_SECOND: f64 = 0.05;
/// How late a send may take its slot and keep the schedule (see `Pace::reserve`).
pub const LATE_TOLERANCE: Duration = Duration::from_millis(50);
/// Throttles closer together than this count once (one burst, one decrease).
const DECREASE_EVERY: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct SendLimiter {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    pace: Mutex<Pace>,
    /// One campaign sender at a time waits on a slot; the others queue here, in order.
    campaign_turn: tokio::sync::Mutex<()>,
}

struct Pace {
    ceiling: f64,
    rate: f64,
    next_free: Instant,
    updated: Instant,
    last_decrease: Option<Instant>,
}

impl Pace {
    /// Additive increase since the last look.
    fn recover(&mut self, now: Instant) {
        if self.rate < self.ceiling {
            let secs = now.saturating_duration_since(self.updated).as_secs_f64();
            self.rate =
                (self.rate + self.ceiling * RECOVERY_SHARE_PER_SECOND * secs).min(self.ceiling);
        }
        self.updated = now;
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }

    /// Takes `cells` slots starting at the next free one; returns when the first starts.
    ///
    /// A send that wakes up a little after its slot (timers fire a millisecond or so late,
    /// the shared schedule adds a database round trip) keeps the schedule where it was:
    /// restarting it from `now` would add that lateness to every interval (500/s became
    /// 310/s in the load harness's `rate` scenario). Only a schedule idle for longer than
    /// [`LATE_TOLERANCE`] (or one interval, if longer) restarts from `now`, so an idle
    /// limiter grants no burst beyond that.
    fn reserve(&mut self, now: Instant, cells: u32) -> Instant {
        let tolerance = self.interval().max(LATE_TOLERANCE);
        let at = if now <= self.next_free + tolerance {
            self.next_free
        } else {
            now
        };
        self.next_free = at + self.interval() * cells;
        at
    }
}

impl SendLimiter {
    /// `rate` sends (recipients) per second; `None` or ≤ 0 disables limiting.
    pub fn new(rate: Option<f64>) -> Self {
        let Some(rate) = rate.filter(|r| *r > 0.0 && r.is_finite()) else {
            return Self { inner: None };
        };
        let now = Instant::now();
        Self {
            inner: Some(Arc::new(Inner {
                pace: Mutex::new(Pace {
                    ceiling: rate,
                    rate,
                    next_free: now,
                    updated: now,
                    last_decrease: None,
                }),
                campaign_turn: tokio::sync::Mutex::new(()),
            })),
        }
    }

    pub fn unlimited() -> Self {
        Self { inner: None }
    }

    /// The ceiling (configured rate or leased share), if limited.
    pub fn rate(&self) -> Option<f64> {
        self.inner.as_ref().map(|i| i.pace.lock().unwrap().ceiling)
    }

    /// The pace right now (below the ceiling after throttles), if limited.
    pub fn current_rate(&self) -> Option<f64> {
        self.inner.as_ref().map(|i| {
            let mut pace = i.pace.lock().unwrap();
            pace.recover(Instant::now());
            pace.rate
        })
    }

    /// Changes the ceiling (a new rate share); the pace follows it down at once and up by
    /// the usual recovery.
    pub fn set_ceiling(&self, rate: f64) {
        if let Some(inner) = &self.inner {
            if rate > 0.0 && rate.is_finite() {
                let mut pace = inner.pace.lock().unwrap();
                pace.recover(Instant::now());
                pace.ceiling = rate;
                pace.rate = pace.rate.min(rate);
                events::limiter_rate(pace.rate);
            }
        }
    }

    /// Waits until `recipients` sends may start on `lane`.
    pub async fn acquire(&self, lane: Lane, recipients: u32) {
        let Some(inner) = &self.inner else { return };
        let started = Instant::now();
        let cells = recipients.max(1);
        match lane {
            Lane::Transactional => {
                let at = {
                    let mut pace = inner.pace.lock().unwrap();
                    let now = Instant::now();
                    pace.recover(now);
                    pace.reserve(now, cells)
                };
                tokio::time::sleep_until(at).await;
            }
            Lane::Campaign => {
                let _turn = inner.campaign_turn.lock().await;
                loop {
                    let free_at = {
                        let mut pace = inner.pace.lock().unwrap();
                        let now = Instant::now();
                        pace.recover(now);
                        if pace.next_free <= now {
                            pace.reserve(now, cells);
                            break;
                        }
                        pace.next_free
                    };
                    // Wake when that slot starts; a transactional send may take it first.
                    tokio::time::sleep_until(free_at).await;
                }
            }
        }
        events::limiter_waited(lane.as_str(), started.elapsed().as_secs_f64());
    }

    /// SES said we were too fast: halve the pace (multiplicative decrease). Returns the new
    /// pace.
    pub fn throttled(&self) -> Option<f64> {
        let inner = self.inner.as_ref()?;
        let mut pace = inner.pace.lock().unwrap();
        let now = Instant::now();
        pace.recover(now);
        if pace
            .last_decrease
            .is_none_or(|t| now.saturating_duration_since(t) >= DECREASE_EVERY)
        {
            pace.rate = (pace.rate / 2.0).max(pace.ceiling * FLOOR_SHARE);
            pace.last_decrease = Some(now);
            // Nothing starts before one new interval from now.
            pace.next_free = pace.next_free.max(now + pace.interval());
            events::limiter_rate(pace.rate);
        }
        Some(pace.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_sends_at_the_configured_rate() {
        let limiter = SendLimiter::new(Some(20.0));
        let started = Instant::now();
        for _ in 0..11 {
            limiter.acquire(Lane::Transactional, 1).await;
        }
        // 11 sends at 20/s: the first is free, the other ten take 0.5 s.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(499) && took <= Duration::from_millis(510),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_rate_in_any_second() {
        let limiter = SendLimiter::new(Some(50.0));
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (l, t) = (limiter.clone(), times.clone());
            let lane = if i % 4 == 0 {
                Lane::Transactional
            } else {
                Lane::Campaign
            };
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    l.acquire(lane, 1).await;
                    t.lock().unwrap().push(Instant::now());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let times = times.lock().unwrap();
        assert_eq!(times.len(), 400);
        for (i, start) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .filter(|t| t.duration_since(*start) < Duration::from_secs(1))
                .count();
            assert!(in_window <= 50, "{in_window} sends in one second");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_halve_the_pace_which_creeps_back_up() {
        let limiter = SendLimiter::new(Some(100.0));
        assert_eq!(limiter.throttled(), Some(50.0));
        // A second throttle from the same burst does not count twice.
        assert_eq!(limiter.throttled(), Some(50.0));
        tokio::time::sleep(DECREASE_EVERY).await;
        let after_two = limiter.throttled().unwrap();
        assert!((after_two - 26.25).abs() < 0.5, "{after_two}");
        // +5 per second: about 15 s back to the ceiling.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let later = limiter.current_rate().unwrap();
        assert!((later - 51.25).abs() < 0.5, "{later}");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(limiter.current_rate(), Some(100.0));
        // Never below the floor.
        for _ in 0..20 {
            tokio::time::sleep(DECREASE_EVERY).await;
            limiter.throttled();
        }
        assert!(limiter.current_rate().unwrap() >= 5.0);
    }

    #[tokio::test(start_paused = true)]
    async fn transactional_waits_stay_bounded_while_campaigns_saturate_the_rate() {
        let rate = 100.0;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let limiter = SendLimiter::new(Some(rate));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let campaign_sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut campaign = Vec::new();
        for _ in 0..50 {
            let (l, s, n) = (limiter.clone(), stop.clone(), campaign_sent.clone());
            campaign.push(tokio::spawn(async move {
                while !s.load(std::sync::atomic::Ordering::SeqCst) {
                    l.acquire(Lane::Campaign, 1).await;
                    n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut worst = Duration::ZERO;
        for _ in 0..40 {
            let started = Instant::now();
            limiter.acquire(Lane::Transactional, 1).await;
            worst = worst.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(37)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in campaign {
            c.await.unwrap();
        }
        // At most the one slot a campaign send had already taken, plus its own.
        assert!(
            worst <= interval * 2,
            "a transactional send waited {worst:?}"
        );
        // And the campaign lane still got the rest of the rate.
        let sent = campaign_sent.load(std::sync::atomic::Ordering::SeqCst);
        assert!(sent >= 200, "campaign sends starved: {sent}");
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let limiter = SendLimiter::new(None);
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            limiter.acquire(Lane::Campaign, 1).await;
        }
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
