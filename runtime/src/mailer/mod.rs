//! Sending email: the message shape, the error classes, the two mailers (SES v2 and the local
//! capture outbox) and the [`Sender`] that puts the shared rate limiter and our own retries in
//! front of them.

pub mod capture;
pub mod limiter;
pub mod mime;
pub mod schedule;
pub mod ses;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::events::mailer as events;
use crate::tree::HandlerContext;

pub use limiter::{Lane, SendLimiter};

/// An attachment or extra body part (text/* only, as the API allows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub content_type: String,
    pub content: String,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default = "attachment")]
    pub disposition: String,
}

fn attachment() -> String {
    "attachment".to_string()
}

/// Everything a mailer needs to send one message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutgoingEmail {
    /// "addr" or "Display Name <addr>".
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: Vec<String>,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    /// Custom headers (already validated: no CR/LF, no reserved names).
    pub headers: Vec<(String, String)>,
    pub parts: Vec<Part>,
    /// SES message tags: kind and our row id, so SES events can be traced back to the row.
    pub tags: Vec<(String, String)>,
    pub configuration_set: Option<String>,
}

impl OutgoingEmail {
    /// Custom headers or extra parts need a raw MIME message.
    pub fn needs_raw(&self) -> bool {
        !self.headers.is_empty() || !self.parts.is_empty()
    }
}

/// Proof that the provider accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    pub message_id: String,
}

/// Why a send did not go through, classified for the caller's decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The message itself is wrong (rejected address, bad parameters): never retry.
    #[error("{code}: {message}")]
    Permanent { code: String, message: String },
    /// The provider or network failed this time (5xx, timeout, connection): retry later.
    #[error("{code}: {message}")]
    Transient { code: String, message: String },
    /// We went over the provider's rate: slow down and retry.
    #[error("{code}: {message}")]
    Throttled { code: String, message: String },
    /// The account cannot send at all right now (paused, suspended): retry much later.
    #[error("{code}: {message}")]
    Paused { code: String, message: String },
    /// Never sent: the batch was told to stop before this send started.
    #[error("not sent: {reason}")]
    NotAttempted { reason: String },
}

impl SendError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Permanent { .. })
    }

    /// True when the error says more about SES (or the network) than about this message:
    /// paused account, throttling that outlasted our retries, 5xx, timeouts. Handlers answer
    /// these `Outcome::Unavailable`, so a storm of them pauses the tree instead of walking
    /// every message into the dead-letter queue.
    /// The outcome of a message whose send did not happen: deferred (uncounted) when we
    /// stopped before sending it, `Unavailable` when SES or the network failed (the tree's
    /// breaker decides), a plain retry otherwise.
    pub fn not_sent_outcome(&self) -> crate::Outcome {
        match self {
            SendError::NotAttempted { reason } => crate::Outcome::Defer {
                reason: reason.clone(),
                delay: Duration::ZERO,
            },
            e if e.is_downstream() => crate::Outcome::Unavailable(e.to_string()),
            e => crate::Outcome::Retry(e.to_string()),
        }
    }

    pub fn is_downstream(&self) -> bool {
        matches!(
            self,
            SendError::Paused { .. } | SendError::Throttled { .. } | SendError::Transient { .. }
        )
    }

    fn outcome_label(&self) -> &'static str {
        match self {
            SendError::Permanent { .. } => "permanent_error",
            SendError::Transient { .. } => "transient_error",
            SendError::Throttled { .. } => "throttled",
            SendError::Paused { .. } => "paused",
            SendError::NotAttempted { .. } => "not_attempted",
        }
    }
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// A short name for logs and metrics ("ses", "capture").
    fn kind(&self) -> &'static str;

    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError>;

    /// Sends many; mailers that can write a batch at once override this.
    async fn send_many(&self, emails: &[OutgoingEmail]) -> Vec<Result<SendReceipt, SendError>> {
        let mut results = Vec::with_capacity(emails.len());
        for chunk in emails.chunks(16) {
            results.extend(futures::future::join_all(chunk.iter().map(|e| self.send(e))).await);
        }
        results
    }

    /// Whether this mailer applies the SES rate limit (the capture outbox does not).
    fn rate_limited(&self) -> bool {
        true
    }

    /// How long after accepting a send the provider's word about it may take to reach the
    /// send ledger ([`crate::ledger`]): SES reports it through its `Send` event.
    fn ledger_delay(&self) -> Duration {
        crate::ledger::SES_EVENT_GRACE
    }

    /// The account's sending quota, when the provider has one (SES v2 `GetAccount`).
    async fn quota(&self) -> Option<anyhow::Result<Quota>> {
        None
    }
}

/// An account's sending quota (SES v2 `GetAccount.SendQuota`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub max_send_rate: f64,
    pub max_24_hour_send: f64,
    pub sent_last_24_hours: f64,
}

/// Campaign mail may use the 24-hour quota down to this reserve (a share of
/// `Max24HourSend`), which stays for transactional mail.
#[derive(Debug, Default)]
struct DailyBudget {
    /// Campaign recipients that may still go out before the reserve; `None`: no quota known.
    campaign_left: Option<f64>,
    refreshed: Option<Instant>,
}

/// The mailer plus the process-wide limiter and our retry policy for throttling.
///
/// The SDK's own retries are off (see [`ses::client`]), so every attempt passes through the
/// limiter and is counted; a throttle also slows the limiter down for a while.
#[derive(Clone)]
pub struct Sender {
    mailer: Arc<dyn Mailer>,
    limiter: SendLimiter,
    throttle_retries: u32,
    /// The account-wide rate across processes ([`schedule`]), when configured.
    shared: Option<schedule::SharedSchedule>,
    budget: Arc<std::sync::Mutex<DailyBudget>>,
    /// The share of the 24-hour quota kept for transactional mail, when the quota is read.
    quota_reserve: Option<f64>,
}

/// How often the account's quota is read again.
pub const QUOTA_REFRESH: Duration = Duration::from_secs(300);

/// SES calls one batch keeps in flight (the embedded queue's batches hold up to 50).
pub const SENDS_IN_FLIGHT: usize = 50;

impl Sender {
    pub fn new(mailer: Arc<dyn Mailer>, limiter: SendLimiter) -> Self {
        Self {
            mailer,
            limiter,
            throttle_retries: 3,
            shared: None,
            budget: Arc::default(),
            quota_reserve: None,
        }
    }

    /// Reads the account's quota (at the first send, then every [`QUOTA_REFRESH`]) and keeps
    /// `reserve` of the 24-hour quota for transactional mail.
    pub fn with_quota_reserve(mut self, reserve: f64) -> Self {
        self.quota_reserve = Some(reserve);
        self
    }

    async fn refresh_quota_if_due(&self) {
        let Some(reserve) = self.quota_reserve else {
            return;
        };
        let due = {
            let mut budget = self.budget.lock().expect("budget");
            let due = budget
                .refreshed
                .is_none_or(|at| at.elapsed() >= QUOTA_REFRESH);
            if due {
                budget.refreshed = Some(Instant::now());
            }
            due
        };
        if due {
            if let Err(e) = self.refresh_quota(reserve).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not read the SES account's quota"
                );
            }
        }
    }

    /// Paces every send on the account-wide schedule too (see [`schedule`]).
    pub fn with_shared_schedule(mut self, schedule: schedule::SharedSchedule) -> Self {
        self.shared = Some(schedule);
        self
    }

    /// Reads the account's quota and applies it: the rate is never configured above
    /// `MaxSendRate`, and campaign mail stops `reserve` (a share of `Max24HourSend`) short of
    /// the 24-hour quota, which stays for transactional mail. Call at start and on a timer.
    pub async fn refresh_quota(&self, reserve: f64) -> anyhow::Result<Option<Quota>> {
        let Some(quota) = self.mailer.quota().await else {
            return Ok(None);
        };
        let quota = quota?;
        if let Some(rate) = self.limiter.rate() {
            if quota.max_send_rate > 0.0 && rate > quota.max_send_rate {
                tracing::warn!(
                    configured = rate,
                    max_send_rate = quota.max_send_rate,
                    "the configured SES rate is above the account's MaxSendRate: using the account's"
                );
                self.limiter.set_ceiling(quota.max_send_rate);
            }
        }
        if let Some(shared) = &self.shared {
            if quota.max_send_rate > 0.0 {
                shared.cap_rate(quota.max_send_rate);
            }
        }
        let left =
            quota.max_24_hour_send * (1.0 - reserve.clamp(0.0, 1.0)) - quota.sent_last_24_hours;
        self.budget.lock().expect("budget").campaign_left =
            (quota.max_24_hour_send > 0.0).then_some(left);
        metrics::gauge!("datamailer_ses_campaign_quota_left").set(left.max(0.0));
        Ok(Some(quota))
    }

    pub fn mailer_kind(&self) -> &'static str {
        self.mailer.kind()
    }

    /// See [`Mailer::ledger_delay`].
    pub fn ledger_delay(&self) -> Duration {
        self.mailer.ledger_delay()
    }

    /// The process-wide limiter (for rate shares).
    pub fn limiter(&self) -> &SendLimiter {
        &self.limiter
    }

    /// Sends a batch: in one call when the mailer takes batches (capture), else one SES call
    /// per message, concurrently, each through the limiter. Results are in `emails` order.
    /// Once `ctx` says stop, sends not yet started (waiting for the limiter included) answer
    /// [`SendError::NotAttempted`]; sends already in flight finish.
    pub async fn send_batch(
        &self,
        lane: Lane,
        emails: &[OutgoingEmail],
        ctx: &HandlerContext,
    ) -> Vec<Result<SendReceipt, SendError>> {
        if emails.is_empty() {
            return Vec::new();
        }
        if ctx.should_stop() {
            return emails.iter().map(|_| Err(not_attempted())).collect();
        }
        if !self.mailer.rate_limited() {
            let started = Instant::now();
            let results = self.mailer.send_many(emails).await;
            let per = started.elapsed().as_secs_f64() / emails.len() as f64;
            for r in &results {
                self.observe(lane, r, per);
            }
            return results;
        }
        self.refresh_quota_if_due().await;
        // At most SENDS_IN_FLIGHT calls per batch, a new one starting as each finishes; the
        // limiter paces them all, so this only bounds sockets and memory. (A plain loop: a
        // closure-mapped stream here makes the handlers' futures fail the `Send` check.)
        use futures::StreamExt;
        let mut in_flight = futures::stream::FuturesOrdered::new();
        let mut results = Vec::with_capacity(emails.len());
        for email in emails {
            if in_flight.len() == SENDS_IN_FLIGHT {
                results.extend(in_flight.next().await);
            }
            in_flight.push_back(self.send_one(lane, email, ctx));
        }
        while let Some(result) = in_flight.next().await {
            results.push(result);
        }
        results
    }

    /// Takes `n` from the campaign lane's share of the 24-hour quota, if one is known.
    fn take_campaign_budget(&self, n: u32) -> bool {
        let mut budget = self.budget.lock().expect("budget");
        match budget.campaign_left.as_mut() {
            None => true,
            Some(left) if *left >= f64::from(n) => {
                *left -= f64::from(n);
                true
            }
            Some(_) => false,
        }
    }

    async fn send_one(
        &self,
        lane: Lane,
        email: &OutgoingEmail,
        ctx: &HandlerContext,
    ) -> Result<SendReceipt, SendError> {
        let mut attempt = 0;
        loop {
            let recipients = (email.to.len() + email.cc.len() + email.bcc.len()).max(1) as u32;
            // Before any rate slot: a send the quota refuses must not take one.
            if lane == Lane::Campaign && !self.take_campaign_budget(recipients) {
                return Err(SendError::Paused {
                    code: "DailyQuotaReserved".into(),
                    message: "the rest of the 24-hour SES quota is reserved for transactional mail"
                        .into(),
                });
            }
            tokio::select! {
                biased;
                _ = ctx.stopped() => return Err(not_attempted()),
                _ = self.limiter.acquire(lane, recipients) => {}
            }
            if let Some(shared) = &self.shared {
                tokio::select! {
                    biased;
                    _ = ctx.stopped() => return Err(not_attempted()),
                    reserved = shared.acquire(lane, recipients) => if let Err(e) = reserved {
                        return Err(SendError::Transient {
                            code: "SendScheduleUnavailable".into(),
                            message: format!("{e:#}"),
                        });
                    }
                }
            }
            let started = Instant::now();
            let result = self.mailer.send(email).await;
            self.observe(lane, &result, started.elapsed().as_secs_f64());
            match result {
                Err(SendError::Throttled { .. }) if attempt < self.throttle_retries => {
                    attempt += 1;
                    let rate = self.limiter.throttled();
                    events::throttled(lane.as_str(), attempt, rate);
                    let base = Duration::from_millis(200 * (1 << attempt));
                    let jitter = Duration::from_millis(
                        rand::thread_rng().gen_range(0..=base.as_millis() as u64),
                    );
                    tokio::select! {
                        _ = ctx.stopped() => return Err(not_attempted()),
                        _ = tokio::time::sleep(base + jitter) => {}
                    }
                }
                other => return other,
            }
        }
    }

    fn observe(&self, lane: Lane, result: &Result<SendReceipt, SendError>, seconds: f64) {
        let outcome = match result {
            Ok(_) => "sent",
            Err(e) => e.outcome_label(),
        };
        events::send_attempted(lane.as_str(), self.mailer.kind(), outcome, seconds);
    }
}

fn not_attempted() -> SendError {
    SendError::NotAttempted {
        reason: "the batch was told to stop before this send started".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Answers each send after a delay that shrinks with the subject's number, so later sends
    /// finish first, and counts how many are in flight at once.
    #[derive(Default)]
    struct SlowMailer {
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    #[async_trait]
    impl Mailer for SlowMailer {
        fn kind(&self) -> &'static str {
            "slow"
        }

        async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let n: u64 = email.subject.parse().unwrap();
            tokio::time::sleep(Duration::from_millis(20 - n % 20)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(SendReceipt {
                message_id: email.subject.clone(),
            })
        }
    }

    #[tokio::test]
    async fn a_batch_keeps_its_order_and_bounds_its_calls_in_flight() {
        let mailer = Arc::new(SlowMailer::default());
        let sender = Sender::new(mailer.clone(), SendLimiter::unlimited());
        let emails: Vec<OutgoingEmail> = (0..130)
            .map(|n| OutgoingEmail {
                subject: n.to_string(),
                ..Default::default()
            })
            .collect();
        let results = sender
            .send_batch(Lane::Transactional, &emails, &HandlerContext::unbounded(5))
            .await;
        let ids: Vec<String> = results.into_iter().map(|r| r.unwrap().message_id).collect();
        let expected: Vec<String> = (0..130).map(|n: u32| n.to_string()).collect();
        assert_eq!(ids, expected);
        assert_eq!(mailer.max_in_flight.load(Ordering::SeqCst), SENDS_IN_FLIGHT);
    }
}
