//! Smoke probes read back over HTTP, and the host metrics the CloudWatch alarms use
//! (`datamailer_health_check_ok`, `datamailer_campaign_sending_age_seconds`).

mod common;

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::Value;

#[tokio::test]
async fn probes_are_read_back_and_host_metrics_are_exported() {
    let Some(ctx) = setup().await else { return };

    // A probe no worker has consumed yet is 404; once recorded it is 200 with its queue.
    let (status, _) = ctx
        .raw(Method::GET, "/health/probes/smoke-abc", None, "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    sqlx::query(
        "INSERT INTO queue_probes (probe_id, queue) VALUES ('smoke-abc', 'transactional-email')",
    )
    .execute(ctx.pool())
    .await
    .unwrap();
    let (status, text) = ctx
        .raw(Method::GET, "/health/probes/smoke-abc", None, "")
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["probe_id"], "smoke-abc");
    assert_eq!(body["queue"], "transactional-email");
    assert!(body["received_at"].as_str().is_some(), "{body}");
    let (status, _) = ctx
        .raw(Method::GET, "/health/probes/not%20an%20id", None, "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The oldest campaign in `sending`, 0 when none.
    let db = ctx.pool();
    assert_eq!(
        datamailer_web::health::campaign_sending_age(db)
            .await
            .unwrap(),
        0.0
    );
    for (status, age) in [("sending", 100), ("sending", 40), ("sent", 9000)] {
        sqlx::query(
            "INSERT INTO campaigns (client_id, audience_id, subject, status, sending_started_at)
             VALUES ($1, $2, 'Hi', $3, now() - make_interval(secs => $4))",
        )
        .bind(ctx.a.client_id)
        .bind(ctx.a.audience_id)
        .bind(status)
        .bind(age as f64)
        .execute(db)
        .await
        .unwrap();
    }
    let age = datamailer_web::health::campaign_sending_age(db)
        .await
        .unwrap();
    assert!((100.0..110.0).contains(&age), "age {age}");

    // Both gauges are on /metrics after a refresh (the background task's one pass).
    datamailer_web::health::refresh_host_metrics(db).await;
    let (status, text) = ctx.raw(Method::GET, "/metrics", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("datamailer_health_check_ok 1"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("datamailer_campaign_sending_age_seconds "))
        .unwrap_or_else(|| panic!("no campaign age in {text}"));
    let exported: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(exported >= 100.0, "{line}");
    ctx.db.drop_db().await;
}
