//! The campaign-email function of the template under the Lambda emulator (real bootstrap,
//! SQS on moto): the web queues a campaign (its fan-out message goes to SQS), one invocation
//! snapshots it and puts its batches on the queue, a second invocation sends them; the
//! campaign ends `sent` with every recipient mailed once. And an invocation that reaches its
//! deadline mid-batch (SES through moto, paced slowly) releases what it did not send, reports
//! the record for retry and leaves no row `sending`; the retries finish the campaign.

mod support;

use std::collections::HashMap;

use datamailer_runtime::producer::{Producer, SqsProducer};
use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use support::*;

const CAMPAIGN_QUEUE: &str = "campaign-email";

/// A campaign queued through the web (on SQS) to `n` subscribers at `domain`.
struct Queued {
    db: TestDb,
    sqs: aws_sdk_sqs::Client,
    queues: Queues,
    queue_arn: String,
    _web: Web,
}

async fn queued_campaign(endpoint: &str, n: i64, domain: &str) -> Option<Queued> {
    let db = TestDb::create().await?;
    let aws = sdk_config(endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queues = create_queues(&sqs, &unique("dm-lambda-campaign")).await;
    let queue_arn = queue_arn(&sqs, &queues.url).await;

    let scope = provision(&db.pool, "news@example.com").await;
    sqlx::raw_sql(&format!(
        "WITH a AS (SELECT id FROM audiences WHERE slug = 'news'),
         c AS (INSERT INTO contacts (email, normalized_email, verified_at)
               SELECT 'l' || g || '@{domain}', 'l' || g || '@{domain}', now()
                 FROM generate_series(1, {n}) g RETURNING id)
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
        json!({"audience": "news", "client": "shop"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);
    Some(Queued {
        db,
        sqs,
        queues,
        queue_arn,
        _web: web,
    })
}

/// `datamailer lambda` as the campaign function, polling the emulator on `port`.
fn campaign_function(q: &Queued, endpoint: &str, port: u16, env: &[(&str, &str)]) -> Process {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("lambda");
    lambda_function_env(&mut cmd, port, "campaign-test");
    aws_env(&mut cmd, endpoint);
    cmd.env("DATABASE_URL", &q.db.url)
        .env("DATAMAILER_QUEUE", CAMPAIGN_QUEUE)
        .env("DATAMAILER_QUEUE_BACKEND", "sqs")
        .env("DATAMAILER_MAILER", "capture")
        .env("DATAMAILER_CAMPAIGN_BATCH_SIZE", "10")
        .env("SQS_TRANSACTIONAL_EMAIL_QUEUE_URL", &q.queues.url)
        .env("SQS_CAMPAIGN_EMAIL_QUEUE_URL", &q.queues.url)
        .env("SQS_CAMPAIGN_EMAIL_DLQ_URL", &q.queues.dlq_url)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied());
    Process::spawn("datamailer lambda", cmd)
}

fn failures(answer: &str) -> Vec<String> {
    let body: Value = serde_json::from_str(answer).unwrap();
    body["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_campaign_function_fans_out_and_sends_a_campaign_from_sqs_records() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(cargo_lambda) = find_cargo_lambda() else {
        return;
    };
    let Some(q) = queued_campaign(&endpoint, 25, "example.com").await else {
        return;
    };
    let (sqs, queues, queue_arn) = (&q.sqs, &q.queues, &q.queue_arn);
    let (mut emulator, port) = start_lambda_emulator(&cargo_lambda).await;
    let mut function = campaign_function(&q, &endpoint, port, &[]);

    // The fan-out record: snapshot, then three batches of at most 10 on the queue.
    let fanout = receive_messages(sqs, &queues.url, 1).await;
    assert!(fanout[0].body().unwrap().contains("campaign-fanout"));
    let (status, answer) = invoke_lambda(
        port,
        &sqs_event(&fanout, queue_arn),
        &mut [&mut emulator, &mut function],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!({"batchItemFailures": []})
    );
    let batches = receive_messages(sqs, &queues.url, 3).await;
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
        &sqs_event(&batches, queue_arn),
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
    .fetch_one(&q.db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), sent, mailed), ("sent", 25, 25));
    assert_eq!(queue_depth(sqs, &queues.dlq_url).await, (0, 0));
    q.db.drop_db().await;
}

/// The emulator gives each invocation 3 s (src/lambda.rs), so handlers stop starting sends
/// after 1.5 s; at 4 sends/s a batch of 25 cannot finish in one invocation.
#[tokio::test]
async fn an_invocation_at_its_deadline_releases_unsent_recipients_and_the_retries_finish() {
    const N: i64 = 25;
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(cargo_lambda) = find_cargo_lambda() else {
        return;
    };
    let domain = format!("{}.test", unique("deadline"));
    let Some(q) = queued_campaign(&endpoint, N, &domain).await else {
        return;
    };
    let ses = aws_sdk_sesv2::Client::new(&sdk_config(&endpoint).await);
    verify_identity(&ses, "news@example.com").await;
    verify_identity(&ses, "newsletter@example.com").await;
    let (sqs, queues, queue_arn) = (&q.sqs, &q.queues, &q.queue_arn);
    let (mut emulator, port) = start_lambda_emulator(&cargo_lambda).await;
    let mut function = campaign_function(
        &q,
        &endpoint,
        port,
        &[
            ("DATAMAILER_MAILER", "ses"),
            ("DATAMAILER_SES_MAX_SEND_RATE", "4"),
            ("DATAMAILER_CAMPAIGN_BATCH_SIZE", "25"),
            ("DEFAULT_FROM_EMAIL", "newsletter@example.com"),
        ],
    );
    // Campaign mail carries List-Unsubscribe headers, so it goes as raw MIME: moto keeps it
    // under `ses.RawMessage`, one entry per accepted send.
    let mailed = || async {
        let data: Value = reqwest::get(format!("{endpoint}/moto-api/data.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        data["ses"]["RawMessage"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m["destinations"][0].as_str().map(str::to_string))
            .filter(|to| to.ends_with(&domain))
            .collect::<Vec<String>>()
    };
    let rows = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT status, count(*) FROM campaign_recipients GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&q.db.pool)
        .await
        .unwrap()
    };

    let fanout = receive_messages(sqs, &queues.url, 1).await;
    let (status, answer) = invoke_lambda(
        port,
        &sqs_event(&fanout, queue_arn),
        &mut [&mut emulator, &mut function],
    )
    .await;
    assert_eq!((status, failures(&answer)), (200, vec![]), "{answer}");

    let mut invocations = 0;
    let mut first = true;
    loop {
        let batch = receive_messages(sqs, &queues.url, 1).await;
        let (status, answer) = invoke_lambda(
            port,
            &sqs_event(&batch, queue_arn),
            &mut [&mut emulator, &mut function],
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        invocations += 1;
        let rows = rows().await;
        assert!(
            rows.iter().all(|(s, _)| s != "sending"),
            "no row left sending after invocation {invocations}: {rows:?}"
        );
        let sent: i64 = rows
            .iter()
            .filter(|(s, _)| s == "sent")
            .map(|(_, n)| *n)
            .sum();
        assert_eq!(
            mailed().await.len() as i64,
            sent,
            "SES accepted exactly the rows recorded sent: {rows:?}"
        );
        if first {
            first = false;
            assert!(
                sent > 0 && sent < N,
                "the first invocation stopped mid-batch: {rows:?}"
            );
            assert_eq!(
                failures(&answer),
                vec![batch[0].message_id().unwrap().to_string()],
                "the unfinished record is reported for retry"
            );
        }
        if sent == N {
            break;
        }
        assert!(invocations < 12, "the retries did not finish: {rows:?}");
        // What Lambda's event source mapping does with a reported failure: receive it again
        // once it is visible (the handler's defer made it visible at once, or sent a copy).
    }
    let mut to = mailed().await;
    to.sort_unstable();
    to.dedup();
    assert_eq!(to.len() as i64, N, "every recipient once");
    let (status, sent): (String, i32) =
        sqlx::query_as("SELECT status, sent_count FROM campaigns WHERE external_key = 'lambda'")
            .fetch_one(&q.db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), sent), ("sent", N as i32));
    assert_eq!(
        queue_depth(sqs, &queues.dlq_url).await,
        (0, 0),
        "nothing dead-lettered"
    );
    q.db.drop_db().await;
}
