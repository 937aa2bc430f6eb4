//! Recovery on the AWS parts (SQS on moto, through the real SDK): a message whose row another
//! delivery holds waits for the lease without walking into the DLQ through the redrive policy,
//! and one refused entry of a settle batch does not sink the others.
//!
//! The Lambda side (deadline, maintenance schedule) is in tests/lambda_recovery.rs.

mod support;

use std::sync::Arc;
use std::time::Duration;

use datamailer_actors::{TransactionalHandler, TransactionalSettings};
use datamailer_runtime::db::{Db, PoolSettings};
use datamailer_runtime::mailer::capture::CaptureMailer;
use datamailer_runtime::mailer::{SendLimiter, Sender};
use datamailer_runtime::source::sqs::SqsQueue;
use datamailer_runtime::source::{Received, Settlement, Source};
use datamailer_runtime::{QueueTree, TreeExit, TreeSpec};
use datamailer_testkit::TestDb;
use support::*;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_row_leased_by_a_dead_delivery_waits_on_sqs_without_reaching_the_dlq() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let aws = sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    // The redrive policy moves a message on its 3rd receive: a wait that counted receives
    // would put it in the DLQ.
    let queues = create_queues_with(&sqs, &unique("dm-lease"), 2).await;
    let scope = provision(&db.pool, "support@example.com").await;
    let web = start_web(
        db.pool.clone(),
        sqs_producer(&sqs, &queues.url),
        &scope.api_key,
    )
    .await;
    web.put_template("welcome").await;
    // Nothing works the queue yet; the API enqueues the message.
    let (status, body) = web.send("leased@example.com", "welcome", "Ada").await;
    assert_eq!(status, 202, "{body}");
    let id = body["message"]["id"].as_i64().unwrap();
    // A delivery claimed the row and died; its lease ends in 4 s.
    sqlx::query("UPDATE transactional_messages SET status = 'sending', send_attempts = send_attempts + 1, lease_expires_at = now() + interval '4 seconds' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();

    let source = SqsQueue::connect(sqs.clone(), QUEUE, queues.url.clone(), None)
        .await
        .unwrap()
        .with_wait(Duration::from_secs(1));
    let worker_db = Db::connect(&db.url, &PoolSettings::default()).unwrap();
    let sender = Sender::new(
        Arc::new(CaptureMailer::new(worker_db.clone())),
        SendLimiter::unlimited(),
    );
    let handler = TransactionalHandler::new(worker_db, sender, TransactionalSettings::default());
    let mut spec = TreeSpec::new(QUEUE, Arc::new(source), Arc::new(handler));
    spec.max_receives = 2;
    let tree = QueueTree::start(spec).await.unwrap();
    let row = wait_terminal(&db.pool, id, LIMIT).await;
    assert_eq!(row.status, "sent", "{row:?}");
    assert_eq!(
        tree.shutdown(Duration::from_secs(10)).await,
        TreeExit::Drained
    );
    assert_eq!(
        queue_depth(&sqs, &queues.dlq_url).await,
        (0, 0),
        "the wait walked the message into the DLQ"
    );
    assert_eq!(queue_depth(&sqs, &queues.url).await, (0, 0));
    let captured: i64 = sqlx::query_scalar("SELECT count(*) FROM captured_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(captured, 1, "sent exactly once");
    db.drop_db().await;
}

#[tokio::test]
async fn one_refused_entry_does_not_sink_the_other_settlements() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let aws = sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queues = create_queues(&sqs, &unique("dm-settle")).await;
    for body in ["a", "b", "c"] {
        sqs.send_message()
            .queue_url(&queues.url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let source = SqsQueue::connect(sqs.clone(), QUEUE, queues.url.clone(), None)
        .await
        .unwrap()
        .with_wait(Duration::from_secs(1));
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Received::Messages(m) = source.receive(10).await.unwrap() {
            got.extend(m);
        }
    }
    let mut bogus = got[0].clone();
    bogus.id = "bogus".into();
    bogus.receipt = "not-a-receipt-handle".into();
    let mut settled: Vec<_> = got.into_iter().map(|d| (d, Settlement::Ack)).collect();
    // The refused entry comes first: the acks after it must still happen.
    settled.insert(0, (bogus, Settlement::Ack));
    let report = source.settle(settled).await;
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].id, "bogus");
    assert_eq!(
        queue_depth(&sqs, &queues.url).await,
        (0, 0),
        "acks were dropped"
    );
}
