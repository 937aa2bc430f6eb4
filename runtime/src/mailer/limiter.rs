//! The SES rate limit, shared by every tree in the process, with transactional mail first.
//!
//! SES quotas are per account and count recipients, so one GCRA limiter (governor) guards all
//! sends of the process. Campaign sends wait while any transactional send is waiting, so a
//! newsletter never delays a password reset. A throttle from SES halves the effective rate for
//! a few seconds (cool-down) before we go back to the configured rate.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};

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

#[derive(Clone)]
pub struct SendLimiter {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    limiter: DefaultDirectRateLimiter,
    rate: f64,
    transactional_waiting: AtomicUsize,
    /// Until when (ms since `epoch`) sends pace at half rate after a throttle.
    cool_until_ms: AtomicU64,
    epoch: Instant,
}

/// Counts a waiting transactional send; the count drops even if the wait is cancelled.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inner {
    fn cooling(&self) -> bool {
        (self.epoch.elapsed().as_millis() as u64) < self.cool_until_ms.load(Ordering::SeqCst)
    }

    /// A campaign send takes a cell only when no transactional send is waiting for one; it
    /// re-checks after every wait, so a password reset that arrives meanwhile goes first.
    async fn campaign_cell(&self) {
        let clock = DefaultClock::default();
        loop {
            if self.transactional_waiting.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            match self.limiter.check() {
                Ok(()) => return,
                Err(not_until) => tokio::time::sleep(not_until.wait_time_from(clock.now())).await,
            }
        }
    }
}

impl SendLimiter {
    /// `rate` sends (recipients) per second; `None` or ≤ 0 disables limiting.
    pub fn new(rate: Option<f64>) -> Self {
        let Some(rate) = rate.filter(|r| *r > 0.0) else {
            return Self { inner: None };
        };
        // governor counts whole cells: express fractional rates as one cell per period.
        let period = Duration::from_secs_f64(1.0 / rate);
        let quota = Quota::with_period(period)
            .expect("positive period")
            .allow_burst(NonZeroU32::MIN);
        Self {
            inner: Some(Arc::new(Inner {
                limiter: RateLimiter::direct(quota),
                rate,
                transactional_waiting: AtomicUsize::new(0),
                cool_until_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            })),
        }
    }

    pub fn unlimited() -> Self {
        Self { inner: None }
    }

    /// The configured sends per second, if limited.
    pub fn rate(&self) -> Option<f64> {
        self.inner.as_ref().map(|i| i.rate)
    }

    /// Waits until `recipients` sends may start on `lane`.
    pub async fn acquire(&self, lane: Lane, recipients: u32) {
        let Some(inner) = &self.inner else { return };
        let started = Instant::now();
        let jitter = Jitter::up_to(Duration::from_millis(5));
        for _ in 0..recipients.max(1) {
            let cells = if inner.cooling() { 2 } else { 1 };
            for _ in 0..cells {
                match lane {
                    Lane::Transactional => {
                        let _waiting = Waiting::enter(&inner.transactional_waiting);
                        inner.limiter.until_ready_with_jitter(jitter).await;
                    }
                    Lane::Campaign => inner.campaign_cell().await,
                }
            }
        }
        metrics::histogram!("datamailer_limiter_wait_seconds", "lane" => lane.as_str())
            .record(started.elapsed().as_secs_f64());
    }

    /// SES said we were too fast: pace at half rate for the next five seconds.
    pub fn cool_down(&self) {
        if let Some(inner) = &self.inner {
            let until = inner.epoch.elapsed().as_millis() as u64 + 5_000;
            inner.cool_until_ms.fetch_max(until, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_sends_at_the_configured_rate() {
        let limiter = SendLimiter::new(Some(20.0));
        let started = Instant::now();
        for _ in 0..11 {
            limiter.acquire(Lane::Transactional, 1).await;
        }
        // 11 sends at 20/s: the first is free, the other ten take ~0.5 s.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(450), "too fast: {took:?}");
        assert!(took < Duration::from_millis(1500), "too slow: {took:?}");
    }

    #[tokio::test]
    async fn transactional_goes_before_waiting_campaign_sends() {
        let limiter = SendLimiter::new(Some(10.0));
        limiter.acquire(Lane::Campaign, 1).await; // use the burst
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (l, o) = (limiter.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                l.acquire(Lane::Campaign, 1).await;
                o.lock().unwrap().push(format!("c{i}"));
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (l, o) = (limiter.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            l.acquire(Lane::Transactional, 1).await;
            o.lock().unwrap().push("t".to_string());
        }));
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let t_pos = order.iter().position(|x| x == "t").unwrap();
        assert!(
            t_pos <= 1,
            "transactional send was not prioritised: {order:?}"
        );
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let limiter = SendLimiter::new(None);
        let started = Instant::now();
        for _ in 0..1000 {
            limiter.acquire(Lane::Campaign, 1).await;
        }
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
