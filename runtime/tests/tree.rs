//! The queue tree against the real embedded queue (Postgres): acknowledgement, poison and
//! retry handling, panic isolation, supervision and its restart limit, backpressure,
//! graceful shutdown, the connection cap, pauses and probes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsMessage;
use datamailer_runtime::backoff::Backoff;
use datamailer_runtime::control::{Probe, QueueControl};
use datamailer_runtime::db::{Db, PoolSettings};
use datamailer_runtime::lambda::{run_invocation, Invocation};
use datamailer_runtime::producer::PG_ENQUEUE_MANY_SQL;
use datamailer_runtime::source::lambda::deliveries;
use datamailer_runtime::source::postgres::{list_dead_letters, redrive, PostgresQueue};
use datamailer_runtime::source::{Delivery, Outcome, Received, SettleReport, Settlement, Source};
use datamailer_runtime::{Handler, HandlerContext, QueueTree, RestartPolicy, TreeExit, TreeSpec};
use datamailer_testkit::TestDb;

const Q: &str = "test-queue";

async fn setup(max_connections: usize) -> Option<(TestDb, Db)> {
    let test_db = TestDb::create().await?;
    let db = Db::connect(
        &test_db.url,
        &PoolSettings {
            max_connections,
            ..Default::default()
        },
    )
    .unwrap();
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

fn queue(db: &Db) -> PostgresQueue {
    PostgresQueue::new(db.clone(), Q)
        .with_visibility_timeout(Duration::from_secs(2))
        .with_idle_poll(Duration::from_millis(20))
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
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A handler made of a closure over each delivery.
struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    async fn handle(&self, _ctx: &HandlerContext, batch: &[Delivery]) -> Vec<Outcome> {
        let mut out = Vec::new();
        for d in batch {
            out.push((self.0)(d.clone()).await);
        }
        out
    }
}

fn spec(source: Arc<dyn Source>, handler: Arc<dyn Handler>) -> TreeSpec {
    let mut spec = TreeSpec::new(Q, source, handler);
    spec.concurrency = 2;
    spec.batch_size = 5;
    spec.backoff = Backoff::exponential(Duration::from_millis(50), Duration::from_millis(200));
    spec
}

#[tokio::test]
async fn acks_every_handled_message() {
    let Some((test_db, db)) = setup(4).await else {
        return;
    };
    enqueue(&db, (0..25).map(|i| format!("m{i}"))).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = FnHandler(move |d: Delivery| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(d.body);
            Outcome::Ack
        }
    });
    let tree = QueueTree::start(spec(Arc::new(queue(&db)), Arc::new(handler)))
        .await
        .unwrap();
    eventually("all 25 are handled", || async {
        seen.lock().unwrap().len() == 25
    })
    .await;
    assert_eq!(
        tree.shutdown(Duration::from_secs(5)).await,
        TreeExit::Drained
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM queue_messages").await,
        0,
        "acked messages are deleted"
    );
    let mut bodies = seen.lock().unwrap().clone();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 25, "each message handled once");
    test_db.drop_db().await;
}

#[tokio::test]
async fn poison_goes_to_the_dead_letter_queue_at_once_with_its_reason() {
    let Some((test_db, db)) = setup(4).await else {
        return;
    };
    enqueue(&db, ["good".to_string(), "poison".to_string()]).await;
    let handler = FnHandler(|d: Delivery| async move {
        if d.body == "poison" {
            Outcome::DeadLetter("invalid message: missing required field 'client_id'".into())
        } else {
            Outcome::Ack
        }
    });
    let tree = QueueTree::start(spec(Arc::new(queue(&db)), Arc::new(handler)))
        .await
        .unwrap();
    eventually("the poison message is dead-lettered", || async {
        !list_dead_letters(&db, Q).await.unwrap().is_empty()
    })
    .await;
    tree.shutdown(Duration::from_secs(5)).await;
    let dead = list_dead_letters(&db, Q).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "poison");
    assert_eq!(dead[0].receive_count, 1, "no retries burnt on poison");
    assert!(
        dead[0]
            .reason
            .contains("missing required field 'client_id'"),
        "{}",
        dead[0].reason
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM queue_messages WHERE dead_lettered_at IS NULL"
        )
        .await,
        0
    );

    assert_eq!(redrive(&db, Q).await.unwrap(), 1);
    assert!(list_dead_letters(&db, Q).await.unwrap().is_empty());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM queue_messages WHERE receive_count = 0"
        )
        .await,
        1
    );
    test_db.drop_db().await;
}

#[tokio::test]
async fn retries_back_off_then_dead_letter_with_the_last_reason() {
    let Some((test_db, db)) = setup(4).await else {
        return;
    };
    enqueue(&db, ["flaky".to_string()]).await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let handler = FnHandler(move |_d: Delivery| {
        let a = a.clone();
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            Outcome::Retry("SES timed out".into())
        }
    });
    let mut spec = spec(Arc::new(queue(&db)), Arc::new(handler));
    spec.max_receives = 3;
    let tree = QueueTree::start(spec).await.unwrap();
    eventually("the message is dead-lettered", || async {
        !list_dead_letters(&db, Q).await.unwrap().is_empty()
    })
    .await;
    tree.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "tried exactly max_receives times"
    );
    let dead = list_dead_letters(&db, Q).await.unwrap();
    assert_eq!(dead[0].reason, "gave up after 3 receives: SES timed out");
    test_db.drop_db().await;
}

#[tokio::test]
async fn a_panic_fails_only_the_message_that_caused_it() {
    let Some((test_db, db)) = setup(4).await else {
        return;
    };
    enqueue(&db, ["a", "b", "boom", "c", "d"].map(String::from)).await;
    let handled = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let h = handled.clone();
    let handler = FnHandler(move |d: Delivery| {
        let h = h.clone();
        async move {
            if d.body == "boom" {
                panic!("handler bug on {}", d.body);
            }
            *h.lock().unwrap().entry(d.body).or_default() += 1;
            Outcome::Ack
        }
    });
    let mut spec = spec(Arc::new(queue(&db)), Arc::new(handler));
    spec.concurrency = 1;
    spec.max_receives = 1;
    let tree = QueueTree::start(spec).await.unwrap();
    eventually("the panicking message is dead-lettered", || async {
        !list_dead_letters(&db, Q).await.unwrap().is_empty()
    })
    .await;
    eventually("the others are acked", || async {
        count(&db, "SELECT count(*) FROM queue_messages").await == 1
    })
    .await;
    assert_eq!(
        tree.shutdown(Duration::from_secs(5)).await,
        TreeExit::Drained,
        "the worker survived the panic"
    );
    let dead = list_dead_letters(&db, Q).await.unwrap();
    assert_eq!(dead[0].body, "boom");
    assert!(
        dead[0]
            .reason
            .contains("handler panicked: handler bug on boom"),
        "{}",
        dead[0].reason
    );
    let handled = handled.lock().unwrap().clone();
    for body in ["a", "b", "c", "d"] {
        assert!(
            handled.get(body).copied().unwrap_or(0) >= 1,
            "{body} was not handled"
        );
    }
    test_db.drop_db().await;
}

/// Wraps a source; can make `settle` panic (a worker crash) and tracks in-flight messages.
struct Instrumented {
    inner: PostgresQueue,
    panic_settles: AtomicUsize,
    outstanding: AtomicUsize,
    max_outstanding: AtomicUsize,
}

impl Instrumented {
    fn new(inner: PostgresQueue) -> Self {
        Self {
            inner,
            panic_settles: AtomicUsize::new(0),
            outstanding: AtomicUsize::new(0),
            max_outstanding: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl Source for Instrumented {
    fn kind(&self) -> &'static str {
        "instrumented"
    }
    async fn receive(&self, max: usize) -> anyhow::Result<Received> {
        let r = self.inner.receive(max).await?;
        if let Received::Messages(m) = &r {
            let now = self.outstanding.fetch_add(m.len(), Ordering::SeqCst) + m.len();
            self.max_outstanding.fetch_max(now, Ordering::SeqCst);
        }
        Ok(r)
    }
    async fn extend(&self, d: &[Delivery], for_: Duration) -> anyhow::Result<()> {
        self.inner.extend(d, for_).await
    }
    async fn settle(&self, settled: Vec<(Delivery, Settlement)>) -> SettleReport {
        self.outstanding.fetch_sub(settled.len(), Ordering::SeqCst);
        if self.panic_settles.load(Ordering::SeqCst) > 0 {
            self.panic_settles.fetch_sub(1, Ordering::SeqCst);
            panic!("a bug while settling");
        }
        self.inner.settle(settled).await
    }
    fn visibility_timeout(&self) -> Duration {
        self.inner.visibility_timeout()
    }
}

#[tokio::test]
async fn a_crashed_worker_is_restarted_and_its_batch_comes_back() {
    let Some((test_db, db)) = setup(4).await else {
        return;
    };
    enqueue(&db, (0..3).map(|i| format!("m{i}"))).await;
    let source = Arc::new(Instrumented::new(
        queue(&db).with_visibility_timeout(Duration::from_secs(1)),
    ));
    source.panic_settles.store(1, Ordering::SeqCst);
    let handler = FnHandler(|_d: Delivery| async { Outcome::Ack });
    let mut spec = spec(source.clone(), Arc::new(handler));
    spec.concurrency = 1;
    let tree = QueueTree::start(spec).await.unwrap();
    // The first settle panics and crashes the worker; after the visibility timeout the messages
    // come back and the restarted worker acks them.
    eventually("every message is acked after the restart", || async {
        count(&db, "SELECT count(*) FROM queue_messages").await == 0
    })
    .await;
    assert_eq!(
        source.panic_settles.load(Ordering::SeqCst),
        0,
        "the crash happened"
    );
    assert_eq!(
        tree.shutdown(Duration::from_secs(5)).await,
        TreeExit::Drained
    );
    test_db.drop_db().await;
}

#[tokio::test]
async fn restarts_past_the_limit_fail_the_tree_loudly() {
    let Some((test_db, db)) = setup(4).await else {
        return;
    };
    enqueue(&db, (0..20).map(|i| format!("m{i}"))).await;
    let source = Arc::new(Instrumented::new(queue(&db)));
    source.panic_settles.store(usize::MAX, Ordering::SeqCst);
    let handler = FnHandler(|_d: Delivery| async { Outcome::Ack });
    let mut spec = spec(source, Arc::new(handler));
    spec.concurrency = 4;
    spec.batch_size = 1;
    spec.restart = RestartPolicy {
        max_restarts: 2,
        within: Duration::from_secs(60),
    };
    let tree = QueueTree::start(spec).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), tree.wait())
        .await
        .expect("tree gave up");
    match exit {
        TreeExit::Failed(why) => assert!(why.contains("3 restarts within"), "{why}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    // Nothing was acknowledged: every message is still there for the next process.
    assert_eq!(count(&db, "SELECT count(*) FROM queue_messages").await, 20);
    test_db.drop_db().await;
}

#[tokio::test]
async fn a_slow_sender_never_lets_the_poller_run_ahead() {
    let Some((test_db, db)) = setup(4).await else {
        return;
    };
    enqueue(&db, (0..60).map(|i| format!("m{i}"))).await;
    let source = Arc::new(Instrumented::new(queue(&db)));
    let done = Arc::new(AtomicUsize::new(0));
    let d2 = done.clone();
    let handler = FnHandler(move |_d: Delivery| {
        let done = d2.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await; // a slow SES
            done.fetch_add(1, Ordering::SeqCst);
            Outcome::Ack
        }
    });
    let mut spec = spec(source.clone(), Arc::new(handler));
    spec.concurrency = 2;
    spec.batch_size = 3;
    let tree = QueueTree::start(spec).await.unwrap();
    eventually("all 60 are handled", || async {
        done.load(Ordering::SeqCst) == 60
    })
    .await;
    tree.shutdown(Duration::from_secs(5)).await;
    let max = source.max_outstanding.load(Ordering::SeqCst);
    assert!(
        max <= 6,
        "received {max} messages ahead of 2 workers × batch 3"
    );
    assert!(
        max >= 3,
        "the workers were never both busy (max in flight {max})"
    );
    test_db.drop_db().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_work_and_loses_nothing() {
    let Some((test_db, db)) = setup(4).await else {
        return;
    };
    enqueue(&db, (0..40).map(|i| format!("m{i}"))).await;
    let handled = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let make_handler = |handled: Arc<Mutex<HashMap<String, usize>>>| {
        FnHandler(move |d: Delivery| {
            let h = handled.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                *h.lock().unwrap().entry(d.body).or_default() += 1;
                Outcome::Ack
            }
        })
    };
    let tree = QueueTree::start(spec(
        Arc::new(queue(&db)),
        Arc::new(make_handler(handled.clone())),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        tree.shutdown(Duration::from_secs(10)).await,
        TreeExit::Drained
    );
    let first_run = handled.lock().unwrap().len();
    assert!(
        first_run > 0 && first_run < 40,
        "shutdown came mid-way ({first_run} handled)"
    );
    // Whatever was not handled is still on the queue, visible now: nothing in flight was lost.
    assert_eq!(
        count(&db, "SELECT count(*) FROM queue_messages").await as usize,
        40 - first_run
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM queue_messages WHERE visible_at > now()"
        )
        .await,
        0
    );

    let tree = QueueTree::start(spec(
        Arc::new(queue(&db)),
        Arc::new(make_handler(handled.clone())),
    ))
    .await
    .unwrap();
    eventually("the rest is handled", || async {
        handled.lock().unwrap().len() == 40
    })
    .await;
    tree.shutdown(Duration::from_secs(10)).await;
    assert!(
        handled.lock().unwrap().values().all(|&n| n == 1),
        "a message was handled twice"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM queue_messages").await, 0);
    test_db.drop_db().await;
}

#[tokio::test]
async fn the_pool_never_exceeds_its_connection_cap() {
    let Some((test_db, db)) = setup(3).await else {
        return;
    };
    enqueue(&db, (0..200).map(|i| format!("m{i}"))).await;
    let handler_db = db.clone();
    let handler = FnHandler(move |_d: Delivery| {
        let db = handler_db.clone();
        async move {
            match db.get().await {
                Ok(conn) => {
                    conn.execute("SELECT pg_sleep(0.005)", &[]).await.unwrap();
                    Outcome::Ack
                }
                Err(e) => Outcome::Retry(e.to_string()),
            }
        }
    });
    let mut spec = spec(Arc::new(queue(&db)), Arc::new(handler));
    spec.concurrency = 8;
    spec.batch_size = 2;
    let tree = QueueTree::start(spec).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (url, stop) = (test_db.url.clone(), stop.clone());
        tokio::spawn(async move {
            let admin = Db::connect(
                &format!("{url}?application_name=sampler"),
                &PoolSettings::default(),
            )
            .unwrap();
            let mut max = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let n: i64 = admin
                    .get()
                    .await
                    .unwrap()
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'datamailer-worker' AND datname = current_database()",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                max = max.max(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        })
    };
    eventually("all 200 are handled", || async {
        count(&db, "SELECT count(*) FROM queue_messages").await == 0
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    tree.shutdown(Duration::from_secs(5)).await;
    let max = sampler.await.unwrap();
    assert!(max <= 3, "{max} worker connections were open; the cap is 3");
    assert!(max >= 2, "the test never loaded the pool ({max})");
    assert!(db.open_connections() <= 3);
    test_db.drop_db().await;
}

#[tokio::test]
async fn a_paused_queue_receives_nothing_until_resumed() {
    let Some((test_db, db)) = setup(4).await else {
        return;
    };
    datamailer_runtime::control::pause(&db, Q, "rollback")
        .await
        .unwrap();
    enqueue(&db, (0..5).map(|i| format!("m{i}"))).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let handler = FnHandler(move |_d: Delivery| {
        let s = s.clone();
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            Outcome::Ack
        }
    });
    let mut spec = spec(Arc::new(queue(&db)), Arc::new(handler));
    spec.control = Some(Arc::new(QueueControl::with_ttl(
        db.clone(),
        Duration::from_millis(100),
    )));
    spec.pause_recheck = Duration::from_millis(100);
    let tree = QueueTree::start(spec).await.unwrap();

    // Paused: nothing is received (the messages stay visible and unclaimed).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM queue_messages WHERE receive_count > 0"
        )
        .await,
        0
    );

    assert!(datamailer_runtime::control::resume(&db, Q)
        .await
        .unwrap()
        .is_some());
    eventually("all 5 are handled after resume", || async {
        seen.load(Ordering::SeqCst) == 5
    })
    .await;
    assert_eq!(
        tree.shutdown(Duration::from_secs(5)).await,
        TreeExit::Drained
    );
    test_db.drop_db().await;
}

#[tokio::test]
async fn probes_are_recorded_and_acknowledged_never_handled() {
    let Some((test_db, db)) = setup(4).await else {
        return;
    };
    let probe = Probe {
        probe_id: "smoke-tree-1".into(),
        sent_at: Some(chrono::Utc::now()),
    };
    enqueue(&db, [probe.to_body(), "real".to_string()]).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h = handled.clone();
    let handler = FnHandler(move |d: Delivery| {
        let h = h.clone();
        async move {
            h.lock().unwrap().push(d.body);
            // Would dead-letter anything it does not know, a probe included.
            Outcome::Ack
        }
    });
    let mut spec = spec(Arc::new(queue(&db)), Arc::new(handler));
    spec.control = Some(Arc::new(QueueControl::new(db.clone())));
    let tree = QueueTree::start(spec).await.unwrap();
    eventually("the probe is recorded", || async {
        count(&db, "SELECT count(*) FROM queue_probes WHERE probe_id = 'smoke-tree-1' AND queue = 'test-queue' AND sent_at IS NOT NULL").await == 1
    })
    .await;
    eventually("the queue is empty", || async {
        count(&db, "SELECT count(*) FROM queue_messages").await == 0
    })
    .await;
    assert_eq!(*handled.lock().unwrap(), vec!["real".to_string()]);
    assert!(list_dead_letters(&db, Q).await.unwrap().is_empty());
    assert_eq!(
        tree.shutdown(Duration::from_secs(5)).await,
        TreeExit::Drained
    );
    test_db.drop_db().await;
}

#[tokio::test]
async fn a_paused_lambda_invocation_hands_every_record_back() {
    let Some((test_db, db)) = setup(2).await else {
        return;
    };
    let records: Vec<SqsMessage> = ["1", "2", "3"]
        .iter()
        .map(|id| {
            let mut m = SqsMessage::default();
            m.message_id = Some(id.to_string());
            m.receipt_handle = Some(format!("rh-{id}"));
            m.body = Some(format!("body {id}"));
            m
        })
        .collect();
    let called = Arc::new(AtomicBool::new(false));
    let c = called.clone();
    let handler: Arc<dyn Handler> = Arc::new(FnHandler(move |_d: Delivery| {
        let c = c.clone();
        async move {
            c.store(true, Ordering::SeqCst);
            Outcome::Ack
        }
    }));
    let control = Arc::new(QueueControl::with_ttl(db.clone(), Duration::ZERO));
    datamailer_runtime::control::pause(&db, Q, "")
        .await
        .unwrap();
    let invocation = |handler: Arc<dyn Handler>, control: Arc<QueueControl>| Invocation {
        queue: Q.into(),
        handler,
        records: deliveries(&records),
        sqs: None,
        control: Some(control),
        breaker: None,
        time_left: Duration::from_secs(5),
        stop_margin: Duration::from_secs(1),
        max_receives: 5,
    };
    let failures = run_invocation(invocation(handler.clone(), control.clone()))
        .await
        .unwrap()
        .failures;
    assert_eq!(failures, vec!["1", "2", "3"]);
    assert!(
        !called.load(Ordering::SeqCst),
        "a paused queue handles nothing"
    );

    datamailer_runtime::control::resume(&db, Q).await.unwrap();
    let failures = run_invocation(invocation(handler, control))
        .await
        .unwrap()
        .failures;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(called.load(Ordering::SeqCst));
    test_db.drop_db().await;
}
