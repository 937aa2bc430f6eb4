//! CloudWatch Embedded Metric Format inside Lambda: an invocation's metrics come out as EMF
//! JSON lines when flushed. Its own test binary, since the EMF recorder is process-global.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsMessage;
use datamailer_runtime::lambda::{run_invocation, Invocation};
use datamailer_runtime::source::lambda::deliveries;
use datamailer_runtime::source::{Delivery, Outcome};
use datamailer_runtime::telemetry::{self, EMF_NAMESPACE};
use datamailer_runtime::{Handler, HandlerContext};
use serde_json::Value;

struct AckAll;

#[async_trait]
impl Handler for AckAll {
    async fn handle(&self, _ctx: &HandlerContext, batch: &[Delivery]) -> Vec<Outcome> {
        batch
            .iter()
            .map(|d| {
                if d.body == "poison" {
                    Outcome::DeadLetter("bad".into())
                } else {
                    Outcome::Ack
                }
            })
            .collect()
    }
}

fn record(id: &str, body: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.receipt_handle = Some(format!("rh-{id}"));
    m.body = Some(body.into());
    let sent = chrono::Utc::now().timestamp_millis() - 2_000;
    m.attributes
        .insert("SentTimestamp".into(), sent.to_string());
    m.attributes
        .insert("ApproximateReceiveCount".into(), "1".into());
    m
}

fn flush() -> Vec<Value> {
    let mut buf = Vec::new();
    telemetry::flush_emf_to(&mut buf).unwrap();
    String::from_utf8(buf)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The EMF document that carries `metric` for `queue`.
fn find<'a>(docs: &'a [Value], metric: &str, queue: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["queue"] == queue && d.get(metric).is_some())
}

#[tokio::test]
async fn an_invocation_flushes_its_metrics_as_emf_lines() {
    telemetry::install_emf("datamailer-staging-transactional").unwrap();
    let records = [record("1", "a"), record("2", "b"), record("3", "poison")];
    let failures = run_invocation(Invocation {
        queue: "transactional-email".into(),
        handler: Arc::new(AckAll),
        records: deliveries(&records),
        sqs: None,
        control: None,
        breaker: None,
        time_left: Duration::from_secs(5),
        stop_margin: Duration::from_secs(1),
        max_receives: 5,
    })
    .await
    .unwrap()
    .failures;
    // No SQS client to dead-letter with: the poison record is reported as a failure.
    assert_eq!(failures, vec!["3".to_string()]);

    let docs = flush();
    let acked = find(
        &docs,
        "datamailer_messages_acked_total",
        "transactional-email",
    )
    .unwrap_or_else(|| panic!("no acked metric in {docs:#?}"));
    let directive = &acked["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], EMF_NAMESPACE);
    assert_eq!(directive["Namespace"], "Datamailer");
    assert_eq!(directive["Dimensions"][0], serde_json::json!(["queue"]));
    assert_eq!(acked["datamailer_messages_acked_total"], 2);
    assert_eq!(acked["function"], "datamailer-staging-transactional");
    assert!(acked["_aws"]["Timestamp"].as_u64().is_some());
    let names: Vec<&str> = directive["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    for name in [
        "datamailer_messages_acked_total",
        "datamailer_messages_dead_lettered_total",
        "datamailer_queue_lag_seconds",
    ] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    assert_eq!(acked["datamailer_messages_dead_lettered_total"], 1);
    let lag = acked["datamailer_queue_lag_seconds"].as_array().unwrap();
    assert_eq!(lag.len(), 3);
    assert!(lag.iter().all(|v| v.as_f64().unwrap() >= 1.5), "{lag:?}");
    let unit = directive["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Name"] == "datamailer_queue_lag_seconds")
        .unwrap()["Unit"]
        .clone();
    assert_eq!(unit, "Seconds");

    // Counters are per flush (per invocation): a second flush has no new acks.
    let again = flush();
    assert!(
        find(
            &again,
            "datamailer_messages_acked_total",
            "transactional-email"
        )
        .is_none(),
        "{again:#?}"
    );
}
