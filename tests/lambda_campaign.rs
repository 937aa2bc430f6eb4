//! The campaign-email function of the template under the Lambda emulator (real bootstrap,
//! SQS on moto): the web queues a campaign (its fan-out message goes to SQS), one invocation
//! snapshots it and puts its batches on the queue, a second invocation sends them; the
//! campaign ends `sent` with every recipient mailed once.

mod support;

use std::collections::HashMap;

use datamailer_runtime::producer::{Producer, SqsProducer};
use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use support::*;

const CAMPAIGN_QUEUE: &str = "campaign-email";

#[tokio::test]
async fn the_campaign_function_fans_out_and_sends_a_campaign_from_sqs_records() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(cargo_lambda) = find_cargo_lambda() else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let aws = sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queues = create_queues(&sqs, &unique("dm-lambda-campaign")).await;
    let queue_arn = queue_arn(&sqs, &queues.url).await;

    let scope = provision(&db.pool, "news@example.com").await;
    sqlx::raw_sql(&format!(
        "WITH a AS (SELECT id FROM audiences WHERE slug = 'news'),
         c AS (INSERT INTO contacts (email, normalized_email, verified_at)
               SELECT 'l' || g || '@example.com', 'l' || g || '@example.com', now()
                 FROM generate_series(1, 25) g RETURNING id)
         INSERT INTO subscriptions (contact_id, audience_id, client_id, status)
         SELECT c.id, a.id, {}, 'subscribed' FROM c, a",
        scope.client_id
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let urls: HashMap<String, String> = [(CAMPAIGN_QUEUE.to_string(), queues.url.clone())].into();
    let web = start_web(
        db.pool.clone(),
        Producer::Sqs(SqsProducer::new(sqs.clone(), urls)),
        &scope.api_key,
    )
    .await;
    let call = |method: reqwest::Method, path: &str, body: Value| {
        web.http
            .request(method, format!("{}{path}", web.base))
            .bearer_auth(&web.api_key)
            .json(&body)
            .send()
    };
    let scope_body = json!({"audience": "news", "client": "shop"});
    let resp = call(
        reqwest::Method::PUT,
        "/api/campaigns/lambda",
        json!({"audience": "news", "client": "shop", "subject": "Hi", "text_body": "Hello"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = call(
        reqwest::Method::POST,
        "/api/campaigns/lambda/queue",
        scope_body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);

    let (mut emulator, port) = start_lambda_emulator(&cargo_lambda).await;
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("lambda");
    lambda_function_env(&mut cmd, port, "campaign-test");
    aws_env(&mut cmd, &endpoint);
    cmd.env("DATABASE_URL", &db.url)
        .env("DATAMAILER_QUEUE", CAMPAIGN_QUEUE)
        .env("DATAMAILER_QUEUE_BACKEND", "sqs")
        .env("DATAMAILER_MAILER", "capture")
        .env("DATAMAILER_CAMPAIGN_BATCH_SIZE", "10")
        .env("SQS_TRANSACTIONAL_EMAIL_QUEUE_URL", &queues.url)
        .env("SQS_CAMPAIGN_EMAIL_QUEUE_URL", &queues.url)
        .env("SQS_CAMPAIGN_EMAIL_DLQ_URL", &queues.dlq_url)
        .env("RUST_LOG", "info");
    let mut function = Process::spawn("datamailer lambda", cmd);

    // The fan-out record: snapshot, then three batches of at most 10 on the queue.
    let fanout = receive_messages(&sqs, &queues.url, 1).await;
    assert!(fanout[0].body().unwrap().contains("campaign-fanout"));
    let (status, answer) = invoke_lambda(
        port,
        &sqs_event(&fanout, &queue_arn),
        &mut [&mut emulator, &mut function],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!({"batchItemFailures": []})
    );
    let batches = receive_messages(&sqs, &queues.url, 3).await;
    let ids: usize = batches
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            body["campaign_recipient_ids"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(ids, 25);

    let (status, answer) = invoke_lambda(
        port,
        &sqs_event(&batches, &queue_arn),
        &mut [&mut emulator, &mut function],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!({"batchItemFailures": []})
    );
    let (status, sent, mailed): (String, i32, i64) = sqlx::query_as(
        "SELECT status, sent_count,
                (SELECT count(DISTINCT to_addresses) FROM captured_messages)
           FROM campaigns WHERE external_key = 'lambda'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), sent, mailed), ("sent", 25, 25));
    assert_eq!(queue_depth(&sqs, &queues.dlq_url).await, (0, 0));
    db.drop_db().await;
}
