//! HTTP request metrics: `datamailer_http_requests_total{route,method,status}` and
//! `datamailer_http_request_duration_seconds{route}`. The route is the matched path template
//! (never a raw id); unmatched requests count as `unmatched`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

pub const REQUESTS_TOTAL: &str = "datamailer_http_requests_total";
pub const REQUEST_DURATION: &str = "datamailer_http_request_duration_seconds";

pub async fn record(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(REQUESTS_TOTAL, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "route" => route).record(start.elapsed().as_secs_f64());
    response
}
