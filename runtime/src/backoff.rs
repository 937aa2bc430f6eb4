//! Retry timing by receive count: exponential with full jitter on the upper half, capped.
//!
//! Retrying on the queue (visibility timeout) rather than in memory means a retry survives a
//! crash, and the queue's receive count tells us how many tries came before.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// A fixed schedule instead (seconds after the 1st, 2nd, ... failure; the last repeats),
    /// for outboxes that keep the original's table (client webhooks).
    pub steps: Option<&'static [u64]>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            max: Duration::from_secs(900),
            steps: None,
        }
    }
}

impl Backoff {
    /// Exponential from `base`, capped at `max`.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            steps: None,
        }
    }

    /// A fixed schedule, exactly (no jitter).
    pub fn steps(steps: &'static [u64]) -> Self {
        Self {
            steps: Some(steps),
            ..Self::default()
        }
    }

    /// The delay before the next try, after `receive_count` receives (1 = first try failed).
    /// Half of the exponential step is fixed and half is random, so retries spread out; a
    /// fixed schedule is taken as is.
    pub fn delay(&self, receive_count: u32) -> Duration {
        if let Some(steps) = self.steps.filter(|s| !s.is_empty()) {
            let i = (receive_count.max(1) as usize - 1).min(steps.len() - 1);
            return Duration::from_secs(steps[i]);
        }
        let exp = receive_count.saturating_sub(1).min(20);
        let step = self.base.saturating_mul(1u32 << exp).min(self.max);
        let half = step / 2;
        let jitter = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_receive_count_and_is_capped() {
        let b = Backoff::exponential(Duration::from_secs(10), Duration::from_secs(100));
        for _ in 0..50 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_secs(5) && d1 <= Duration::from_secs(10));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_secs(20) && d3 <= Duration::from_secs(40));
            let d9 = b.delay(9);
            assert!(d9 >= Duration::from_secs(50) && d9 <= Duration::from_secs(100));
        }
    }

    #[test]
    fn a_fixed_schedule_is_followed_and_its_last_step_repeats() {
        let b = Backoff::steps(&[60, 300, 900]);
        assert_eq!(b.delay(1), Duration::from_secs(60));
        assert_eq!(b.delay(2), Duration::from_secs(300));
        assert_eq!(b.delay(3), Duration::from_secs(900));
        assert_eq!(b.delay(7), Duration::from_secs(900));
    }
}
