//! The maintainer against a real Postgres: one maintainer at a time (the lease), due tasks
//! only, takeover when a holder dies, and the supervised clock-driven tree.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datamailer_runtime::db::{Db, PoolSettings};
use datamailer_runtime::maintenance::{
    self, Maintainer, MaintenanceTask, PassMode, PassReport, TaskReport,
};
use datamailer_runtime::{HandlerContext, QueueTree, TreeExit};
use datamailer_testkit::TestDb;

/// Counts its runs; takes `work` per run; fails when told to.
struct Counting {
    name: &'static str,
    runs: AtomicUsize,
    work: Duration,
    every: Duration,
    fail: bool,
}

impl Counting {
    fn new(name: &'static str, every: Duration) -> Arc<Self> {
        Arc::new(Self {
            name,
            runs: AtomicUsize::new(0),
            work: Duration::ZERO,
            every,
            fail: false,
        })
    }
}

#[async_trait]
impl MaintenanceTask for Counting {
    fn name(&self) -> &'static str {
        self.name
    }
    fn every(&self) -> Duration {
        self.every
    }
    async fn run(&self, _ctx: &HandlerContext) -> anyhow::Result<TaskReport> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.work).await;
        if self.fail {
            anyhow::bail!("the task broke");
        }
        Ok(TaskReport {
            acted_on: 1,
            detail: "did one thing".into(),
        })
    }
}

async fn setup() -> Option<(TestDb, Db)> {
    let test_db = TestDb::create().await?;
    let db = Db::connect(&test_db.url, &PoolSettings::default()).unwrap();
    Some((test_db, db))
}

fn ctx() -> HandlerContext {
    HandlerContext::unbounded(1)
}

#[tokio::test]
async fn only_one_maintainer_acts_at_a_time() {
    let Some((test_db, db)) = setup().await else {
        return;
    };
    let task = Arc::new(Counting {
        work: Duration::from_millis(300),
        ..Arc::into_inner(Counting::new("slow", Duration::from_secs(60))).unwrap()
    });
    let a = Arc::new(Maintainer::new(db.clone(), vec![task.clone()]));
    let b = Arc::new(Maintainer::new(db.clone(), vec![task.clone()]));
    let c = ctx();
    let (ra, rb) = tokio::join!(a.run_pass(&c, PassMode::All), b.run_pass(&c, PassMode::All));
    let reports = [ra.unwrap(), rb.unwrap()];
    let skipped = reports
        .iter()
        .filter(|r| matches!(r, PassReport::Skipped { .. }))
        .count();
    assert_eq!(skipped, 1, "{reports:?}");
    assert_eq!(task.runs.load(Ordering::SeqCst), 1);
    test_db.drop_db().await;
}

#[tokio::test]
async fn a_pass_runs_only_due_tasks_and_records_each_run() {
    let Some((test_db, db)) = setup().await else {
        return;
    };
    let hourly = Counting::new("hourly", Duration::from_secs(3600));
    let often = Counting::new("often", Duration::from_millis(100));
    let broken = Arc::new(Counting {
        fail: true,
        ..Arc::into_inner(Counting::new("broken", Duration::from_secs(3600))).unwrap()
    });
    let m = Maintainer::new(
        db.clone(),
        vec![hourly.clone(), often.clone(), broken.clone()],
    );
    let first = m.run_pass(&ctx(), PassMode::Due).await.unwrap();
    assert_eq!(first.failures(), vec!["broken: the task broke".to_string()]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    m.run_pass(&ctx(), PassMode::Due).await.unwrap();
    assert_eq!(
        hourly.runs.load(Ordering::SeqCst),
        1,
        "not due again for an hour"
    );
    assert_eq!(often.runs.load(Ordering::SeqCst), 2);
    m.run_pass(&ctx(), PassMode::All).await.unwrap();
    assert_eq!(
        hourly.runs.load(Ordering::SeqCst),
        2,
        "--once runs everything"
    );
    let conn = db.get().await.unwrap();
    let row = conn
        .query_one(
            "SELECT last_ok, last_detail, failures_total, runs_total FROM maintenance_runs WHERE task = 'broken'",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "the task broke");
    assert_eq!(row.get::<_, i64>(2), 2);
    assert_eq!(row.get::<_, i64>(3), 2);
    test_db.drop_db().await;
}

#[tokio::test]
async fn a_dead_holders_lease_expires_and_another_maintainer_takes_over() {
    let Some((test_db, db)) = setup().await else {
        return;
    };
    let task = Counting::new("t", Duration::ZERO);
    let a =
        Maintainer::new(db.clone(), vec![task.clone()]).with_lease_ttl(Duration::from_millis(500));
    let b =
        Maintainer::new(db.clone(), vec![task.clone()]).with_lease_ttl(Duration::from_millis(500));
    a.run_pass(&ctx(), PassMode::All).await.unwrap();
    // `a` keeps its lease (a long-lived maintainer) and then dies.
    assert!(matches!(
        b.run_pass(&ctx(), PassMode::All).await.unwrap(),
        PassReport::Skipped { holder } if holder == a.holder()
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        b.run_pass(&ctx(), PassMode::All).await.unwrap(),
        PassReport::Ran { .. }
    ));
    // A one-off maintainer gives the lease back: the next one need not wait.
    let once = Maintainer::new(db.clone(), vec![task.clone()]).releasing_after_each_pass();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        once.run_pass(&ctx(), PassMode::All).await.unwrap(),
        PassReport::Ran { .. }
    ));
    assert!(matches!(
        a.run_pass(&ctx(), PassMode::All).await.unwrap(),
        PassReport::Ran { .. }
    ));
    assert_eq!(task.runs.load(Ordering::SeqCst), 4);
    test_db.drop_db().await;
}

/// A holder killed outright (its connections close as its process dies) frees the lease at
/// once: the next maintainer does not wait out the TTL.
#[tokio::test]
async fn a_killed_holders_lease_is_taken_without_waiting_for_its_ttl() {
    let Some((test_db, db)) = setup().await else {
        return;
    };
    let task = Counting::new("t", Duration::ZERO);
    let doomed_db = Db::connect(&test_db.url, &PoolSettings::default()).unwrap();
    let doomed = Maintainer::new(doomed_db.clone(), vec![task.clone()])
        .with_lease_ttl(Duration::from_secs(600));
    let b = Maintainer::new(db.clone(), vec![task.clone()]);
    doomed.run_pass(&ctx(), PassMode::All).await.unwrap();
    assert!(matches!(
        b.run_pass(&ctx(), PassMode::All).await.unwrap(),
        PassReport::Skipped { holder } if holder == doomed.holder()
    ));
    drop(doomed);
    drop(doomed_db); // every connection of the "process" closes
    let started = std::time::Instant::now();
    loop {
        // Postgres ends the backend as it reads the closed socket: within moments.
        match b.run_pass(&ctx(), PassMode::All).await.unwrap() {
            PassReport::Ran { .. } => break,
            PassReport::Skipped { .. } => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "the dead holder's lease was not taken (TTL 600 s)"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(task.runs.load(Ordering::SeqCst), 2);
    test_db.drop_db().await;
}

#[tokio::test]
async fn the_maintenance_tree_runs_passes_on_its_clock_until_shut_down() {
    let Some((test_db, db)) = setup().await else {
        return;
    };
    let task = Counting::new("tick", Duration::ZERO);
    let spec = maintenance::tree_spec(
        Arc::new(Maintainer::new(db.clone(), vec![task.clone()])),
        Duration::from_millis(100),
    );
    let tree = QueueTree::start(spec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(650)).await;
    assert_eq!(
        tree.shutdown(Duration::from_secs(2)).await,
        TreeExit::Drained
    );
    let runs = task.runs.load(Ordering::SeqCst);
    assert!((4..=8).contains(&runs), "{runs} passes in 650 ms at 100 ms");
    test_db.drop_db().await;
}
