//! The runtime's recovery guarantees (issue: recovery that holds without an operator), each
//! against the failure that broke it before:
//!
//! * a deferred message (another holder's lease) is never dead-lettered and spends no receive;
//! * a stale holder's receipt settles nothing on the embedded queue (fencing);
//! * a settle failure neither crashes the worker nor drops the acknowledgements after it;
//! * a downstream outage pauses the tree (circuit breaker) instead of draining it into the DLQ,
//!   and the tree resumes by itself;
//! * nothing a tree spawned (the visibility heartbeat) survives the tree being killed;
//! * a batch past its deadline stops cooperatively, and a hung one is abandoned;
//! * a Lambda invocation stops starting work before its deadline and reports the rest;
//! * every worker statement runs under a timeout.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datamailer_runtime::backoff::Backoff;
use datamailer_runtime::db::{self, Db, PoolSettings};
use datamailer_runtime::lambda::{run_invocation, Invocation};
use datamailer_runtime::producer::PG_ENQUEUE_MANY_SQL;
use datamailer_runtime::source::postgres::{list_dead_letters, PostgresQueue};
use datamailer_runtime::source::{Delivery, Outcome, Received, SettleReport, Settlement, Source};
use datamailer_runtime::tree::breaker::BreakerState;
use datamailer_runtime::tree::{BreakerSettings, CircuitBreaker};
use datamailer_runtime::{Handler, HandlerContext, QueueTree, TreeExit, TreeSpec};
use datamailer_testkit::TestDb;

const Q: &str = "recovery-queue";

async fn setup() -> Option<(TestDb, Db)> {
    let test_db = TestDb::create().await?;
    let db = Db::connect(&test_db.url, &PoolSettings::default()).unwrap();
    Some((test_db, db))
}

async fn enqueue(db: &Db, bodies: impl IntoIterator<Item = String>) {
    let bodies: Vec<String> = bodies.into_iter().collect();
    db.get()
        .await
        .unwrap()
        .execute(PG_ENQUEUE_MANY_SQL, &[&Q, &bodies])
        .await
        .unwrap();
}

async fn count(db: &Db, sql: &str) -> i64 {
    db.get()
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A handler made of a closure over each delivery and its context.
struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(HandlerContext, Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    async fn handle(&self, ctx: &HandlerContext, batch: &[Delivery]) -> Vec<Outcome> {
        let mut out = Vec::new();
        for d in batch {
            out.push((self.0)(ctx.clone(), d.clone()).await);
        }
        out
    }
}

fn pg_queue(db: &Db) -> PostgresQueue {
    PostgresQueue::new(db.clone(), Q)
        .with_visibility_timeout(Duration::from_secs(2))
        .with_idle_poll(Duration::from_millis(20))
}

fn spec(source: Arc<dyn Source>, handler: Arc<dyn Handler>) -> TreeSpec {
    let mut spec = TreeSpec::new(Q, source, handler);
    spec.concurrency = 2;
    spec.batch_size = 5;
    spec.max_receives = 2;
    spec.backoff = Backoff::exponential(Duration::from_millis(20), Duration::from_millis(50));
    spec
}

/// An in-memory source (no database, so no background connection tasks): hands out its
/// messages once, counts heartbeats, records settlements, and can refuse the first settles.
#[derive(Default)]
struct MemSource {
    pending: Mutex<VecDeque<Delivery>>,
    extends: AtomicUsize,
    settled: Mutex<Vec<(String, Settlement)>>,
    refuse_settles: AtomicUsize,
    visibility: Duration,
}

impl MemSource {
    fn with(bodies: &[&str], visibility: Duration) -> Arc<Self> {
        let pending = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| Delivery {
                id: format!("m{i}"),
                receipt: format!("r{i}"),
                body: b.to_string(),
                receive_count: 1,
                sent_at: None,
            })
            .collect();
        Arc::new(Self {
            pending: Mutex::new(pending),
            visibility,
            ..Default::default()
        })
    }

    fn acked(&self) -> usize {
        self.settled
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s == Settlement::Ack)
            .count()
    }
}

#[async_trait]
impl Source for MemSource {
    fn kind(&self) -> &'static str {
        "memory"
    }
    async fn receive(&self, max: usize) -> anyhow::Result<Received> {
        let mut pending = self.pending.lock().unwrap();
        let n = max.min(pending.len());
        Ok(Received::Messages(pending.drain(..n).collect()))
    }
    fn idle_wait(&self) -> Duration {
        Duration::from_millis(10)
    }
    async fn extend(&self, _: &[Delivery], _: Duration) -> anyhow::Result<()> {
        self.extends.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn settle(&self, settled: Vec<(Delivery, Settlement)>) -> SettleReport {
        if self.refuse_settles.load(Ordering::SeqCst) > 0 {
            self.refuse_settles.fetch_sub(1, Ordering::SeqCst);
            // The refused messages come back, as after a visibility timeout.
            let mut pending = self.pending.lock().unwrap();
            for (d, _) in &settled {
                pending.push_back(d.clone());
            }
            return SettleReport::all_failed(&settled, "SQS refused the batch");
        }
        let mut log = self.settled.lock().unwrap();
        for (d, s) in settled {
            log.push((d.id, s));
        }
        SettleReport::default()
    }
    fn visibility_timeout(&self) -> Duration {
        self.visibility
    }
}

#[tokio::test]
async fn a_deferred_message_is_never_dead_lettered_and_spends_no_receives() {
    let Some((test_db, db)) = setup().await else {
        return;
    };
    enqueue(&db, ["leased".to_string()]).await;
    // Another holder's lease ends in ~1 s; until then every delivery is deferred.
    let lease_ends = Instant::now() + Duration::from_secs(1);
    let deliveries = Arc::new(AtomicUsize::new(0));
    let n = deliveries.clone();
    let handler = FnHandler(move |_ctx, _d| {
        let n = n.clone();
        async move {
            n.fetch_add(1, Ordering::SeqCst);
            match lease_ends.checked_duration_since(Instant::now()) {
                Some(_) => Outcome::Defer {
                    reason: "being sent by another delivery".into(),
                    delay: Duration::from_millis(100),
                },
                None => Outcome::Ack,
            }
        }
    });
    let tree = QueueTree::start(spec(Arc::new(pg_queue(&db)), Arc::new(handler)))
        .await
        .unwrap();
    eventually(
        "the message is acknowledged once the lease ends",
        || async { count(&db, "SELECT count(*) FROM queue_messages").await == 0 },
    )
    .await;
    tree.shutdown(Duration::from_secs(5)).await;
    assert!(
        deliveries.load(Ordering::SeqCst) > 2,
        "deferred more times than max_receives (2)"
    );
    assert!(list_dead_letters(&db, Q).await.unwrap().is_empty());
    test_db.drop_db().await;
}

#[tokio::test]
async fn a_stale_receipt_settles_nothing_on_the_embedded_queue() {
    let Some((test_db, db)) = setup().await else {
        return;
    };
    enqueue(&db, ["m".to_string()]).await;
    let queue = pg_queue(&db).with_visibility_timeout(Duration::from_millis(200));
    let Received::Messages(first) = queue.receive(1).await.unwrap() else {
        panic!()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Its visibility ran out: a second consumer receives it with a new receipt.
    let Received::Messages(second) = queue.receive(1).await.unwrap() else {
        panic!()
    };
    assert_eq!(first[0].id, second[0].id);
    assert_ne!(first[0].receipt, second[0].receipt);
    // The first (stale) holder's ack changes nothing and says so.
    let report = queue
        .settle(vec![(first[0].clone(), Settlement::Ack)])
        .await;
    assert_eq!(report.failures.len(), 1);
    assert!(
        report.failures[0].error.contains("stale receipt"),
        "{report:?}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM queue_messages").await, 1);
    // The current holder settles.
    assert!(queue
        .settle(vec![(second[0].clone(), Settlement::Ack)])
        .await
        .is_ok());
    assert_eq!(count(&db, "SELECT count(*) FROM queue_messages").await, 0);
    test_db.drop_db().await;
}

#[tokio::test]
async fn an_uncounted_retry_gives_its_receive_back() {
    let Some((test_db, db)) = setup().await else {
        return;
    };
    enqueue(&db, ["m".to_string()]).await;
    let queue = pg_queue(&db).with_max_receives(1);
    for _ in 0..3 {
        let Received::Messages(got) = queue.receive(1).await.unwrap() else {
            panic!()
        };
        assert_eq!(got.len(), 1, "the message was dead-lettered on receive");
        let report = queue
            .settle(vec![(
                got[0].clone(),
                Settlement::Retry {
                    delay: Duration::ZERO,
                    reason: "waiting".into(),
                    counted: false,
                },
            )])
            .await;
        assert!(report.is_ok(), "{report:?}");
    }
    assert_eq!(
        count(&db, "SELECT receive_count::bigint FROM queue_messages").await,
        0
    );
    test_db.drop_db().await;
}

#[tokio::test]
async fn settle_failures_neither_crash_the_worker_nor_drop_later_acks() {
    let source = MemSource::with(&["a", "b", "c", "d", "e", "f"], Duration::ZERO);
    // More refusals than the restart policy allows crashes (5 in 60 s).
    source.refuse_settles.store(8, Ordering::SeqCst);
    let handler = FnHandler(|_ctx, _d| async { Outcome::Ack });
    let mut spec = spec(source.clone(), Arc::new(handler));
    spec.batch_size = 1;
    let tree = QueueTree::start(spec).await.unwrap();
    eventually("every message is acknowledged", || async {
        source.acked() == 6
    })
    .await;
    assert_eq!(source.refuse_settles.load(Ordering::SeqCst), 0);
    assert_eq!(
        tree.shutdown(Duration::from_secs(5)).await,
        TreeExit::Drained,
        "the tree survived the settle failures"
    );
}

#[tokio::test]
async fn an_outage_pauses_the_tree_and_it_resumes_by_itself() {
    let Some((test_db, db)) = setup().await else {
        return;
    };
    enqueue(&db, (0..30).map(|i| format!("m{i}"))).await;
    let down = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (d, a) = (down.clone(), attempts.clone());
    let handler = FnHandler(move |_ctx, _m| {
        let (d, a) = (d.clone(), a.clone());
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            if d.load(Ordering::SeqCst) {
                Outcome::Unavailable("SendingPausedException: sending paused".into())
            } else {
                Outcome::Ack
            }
        }
    });
    let breaker = Arc::new(CircuitBreaker::new(
        Q,
        BreakerSettings {
            trip_after: 3,
            base_cooldown: Duration::from_millis(100),
            max_cooldown: Duration::from_millis(300),
        },
    ));
    let mut spec = spec(Arc::new(pg_queue(&db)), Arc::new(handler));
    spec.max_receives = 3;
    spec.breaker = Some(breaker.clone());
    let tree = QueueTree::start(spec).await.unwrap();
    // Three seconds of outage: far more than 3 receives' worth of backoff.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        list_dead_letters(&db, Q).await.unwrap().is_empty(),
        "the outage dead-lettered messages"
    );
    assert_ne!(breaker.state(), BreakerState::Closed);
    let during = attempts.load(Ordering::SeqCst);
    assert!(
        during < 60,
        "{during} attempts: the tree kept hammering the dependency"
    );
    down.store(false, Ordering::SeqCst);
    eventually("every message is handled after the outage", || async {
        count(&db, "SELECT count(*) FROM queue_messages").await == 0
    })
    .await;
    assert_eq!(breaker.state(), BreakerState::Closed);
    tree.shutdown(Duration::from_secs(5)).await;
    test_db.drop_db().await;
}

/// Tasks alive on this runtime now.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test]
async fn no_task_survives_a_killed_tree() {
    let before = alive_tasks();
    // A visibility of 100 ms: the heartbeat extends every 50 ms while the handler works.
    let source = MemSource::with(&["slow", "slow"], Duration::from_millis(100));
    let handler = FnHandler(|_ctx, _d| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Outcome::Ack
    });
    let tree = QueueTree::start(spec(source.clone(), Arc::new(handler)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(source.extends.load(Ordering::SeqCst) > 0, "heartbeat ran");
    tree.stopper().kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_kill = source.extends.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        source.extends.load(Ordering::SeqCst),
        after_kill,
        "a heartbeat kept extending after the tree was killed"
    );
    assert_eq!(alive_tasks(), before, "tasks outlived the killed tree");
    assert!(source.settled.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_batch_past_its_deadline_stops_starting_work_and_a_hung_one_is_abandoned() {
    let source = MemSource::with(&["a", "b", "c", "d"], Duration::ZERO);
    // Each "send" takes 100 ms; the batch's soft deadline is 250 ms.
    let handler = FnHandler(|ctx: HandlerContext, d: Delivery| async move {
        if d.body == "hang" {
            std::future::pending::<()>().await;
        }
        if ctx.should_stop() {
            return Outcome::Defer {
                reason: "stopped before sending".into(),
                delay: Duration::ZERO,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Outcome::Ack
    });
    let mut spec = spec(source.clone(), Arc::new(handler));
    spec.concurrency = 1;
    spec.batch_size = 4;
    spec.handler_timeout = Duration::from_millis(250);
    spec.handler_grace = Duration::from_millis(300);
    let tree = QueueTree::start(spec).await.unwrap();
    eventually("the batch is settled", || async {
        source.settled.lock().unwrap().len() >= 4
    })
    .await;
    let settled = source.settled.lock().unwrap().clone();
    let acks = settled
        .iter()
        .filter(|(_, s)| *s == Settlement::Ack)
        .count();
    assert_eq!(acks, 3, "three sends fit the deadline: {settled:?}");
    assert!(
        matches!(&settled[3].1, Settlement::Retry { counted: false, .. }),
        "{settled:?}"
    );
    // A handler that never returns is abandoned after the grace; the worker carries on.
    source.pending.lock().unwrap().push_back(Delivery {
        id: "h".into(),
        receipt: "rh".into(),
        body: "hang".into(),
        receive_count: 1,
        sent_at: None,
    });
    eventually("the hung batch is abandoned", || async {
        source
            .settled
            .lock()
            .unwrap()
            .iter()
            .any(|(id, _)| id == "h")
    })
    .await;
    let settled = source.settled.lock().unwrap().clone();
    assert!(
        matches!(settled.iter().find(|(id, _)| id == "h"), Some((_, Settlement::Retry { counted: true, reason, .. })) if reason.contains("did not finish")),
        "{settled:?}"
    );
    assert_eq!(
        tree.shutdown(Duration::from_secs(2)).await,
        TreeExit::Drained
    );
}

fn records(n: usize) -> Vec<Delivery> {
    (0..n)
        .map(|i| Delivery {
            id: format!("rec-{i}"),
            receipt: format!("rh-{i}"),
            body: format!("b{i}"),
            receive_count: 1,
            sent_at: None,
        })
        .collect()
}

#[tokio::test]
async fn a_lambda_invocation_stops_before_its_deadline_and_reports_the_rest() {
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let handler = Arc::new(FnHandler(move |ctx: HandlerContext, _d| {
        let s = s.clone();
        async move {
            if ctx.should_stop() {
                return Outcome::Defer {
                    reason: "deadline".into(),
                    delay: Duration::ZERO,
                };
            }
            s.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(400)).await; // an SES call
            Outcome::Ack
        }
    }));
    let begun = Instant::now();
    let result = run_invocation(Invocation {
        queue: Q.into(),
        handler,
        records: records(10),
        sqs: None,
        control: None,
        breaker: None,
        time_left: Duration::from_secs(3),
        stop_margin: Duration::from_millis(1500),
        max_receives: 5,
    })
    .await
    .unwrap();
    let took = begun.elapsed();
    // Soft deadline at 1.5 s: sends started before it finish (≤ 0.4 s more); the rest stop,
    // well before the hard stop at 2 s.
    let n = started.load(Ordering::SeqCst);
    assert!((3..=4).contains(&n), "{n} sends started");
    assert_eq!(result.failures.len(), 10 - n, "{result:?}");
    assert_eq!(result.failures[0], format!("rec-{n}"));
    assert_eq!(
        result.exit,
        TreeExit::Drained,
        "stopped cooperatively, not killed"
    );
    assert!(took < Duration::from_millis(1900), "took {took:?}");
}

#[tokio::test]
async fn an_open_breaker_hands_a_lambda_batch_straight_back() {
    let breaker = Arc::new(CircuitBreaker::new(Q, BreakerSettings::default()));
    breaker.record(&[
        Outcome::Unavailable("down".into()),
        Outcome::Unavailable("down".into()),
        Outcome::Unavailable("down".into()),
    ]);
    let called = Arc::new(AtomicBool::new(false));
    let c = called.clone();
    let handler = Arc::new(FnHandler(move |_ctx, _d| {
        let c = c.clone();
        async move {
            c.store(true, Ordering::SeqCst);
            Outcome::Ack
        }
    }));
    let result = run_invocation(Invocation {
        queue: Q.into(),
        handler,
        records: records(3),
        sqs: None,
        control: None,
        breaker: Some(breaker),
        time_left: Duration::from_secs(3),
        stop_margin: Duration::from_secs(1),
        max_receives: 5,
    })
    .await
    .unwrap();
    assert!(!called.load(Ordering::SeqCst), "handled during an outage");
    assert_eq!(result.failures.len(), 3);
}

#[tokio::test]
async fn every_worker_statement_runs_under_a_timeout() {
    let Some((test_db, _)) = setup().await else {
        return;
    };
    let db = Db::connect(
        &test_db.url,
        &PoolSettings {
            statement_timeout: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .unwrap();
    let started = Instant::now();
    let err = db
        .get()
        .await
        .unwrap()
        .execute("SELECT pg_sleep(5)", &[])
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("57014"),
        "cancelled by statement_timeout: {err}"
    );
    assert!(db::is_unavailable(&anyhow::Error::new(err)));
    test_db.drop_db().await;
}
