//! `datamailer smoke`: after a deploy, check what can be checked from outside, and print what
//! only people can check.
//!
//! Every check prints one line, `PASS|FAIL|HUMAN: <check>: <detail>`; the exit code is 1 if
//! any check failed (HUMAN lines never fail the run).
//!
//! * **web health**: `GET <base>/health/` within 10 s.
//! * **queue round trip**: sends a `datamailer-probe` message (see
//!   `datamailer_runtime::control`) to the transactional queue and polls
//!   `GET <base>/health/probes/{probe_id}` until the worker has recorded it. Smoke never
//!   receives from or deletes anything on the live queue; the worker acknowledges probes
//!   without calling the handler, so a probe is never emailed and never dead-lettered.
//! * with `--stack-name` (and credentials), from the stack's outputs ([`outputs`]):
//!   SES production access and send quota (`GetAccount`), the sender identity's verification
//!   and DKIM status (`GetEmailIdentity`), the configuration set's SNS event destination for
//!   bounces, complaints and deliveries (`GetConfigurationSetEventDestinations`) and a
//!   confirmed subscription of the SES events topic to the ses-webhooks queue
//!   (`ListSubscriptionsByTopic`).
//! * HUMAN: DNS records, SES sandbox exit approval, alarm routing to on-call, restore drill, and
//!   the account's Lambda concurrency quota against what the template (the one this binary was
//!   built with) reserves.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context;
use datamailer_runtime::control::Probe;

/// The CloudFormation stack outputs smoke reads.
pub mod outputs {
    /// URL of the transactional-email queue (when `--transactional-queue-url` is not given).
    pub const TRANSACTIONAL_QUEUE_URL: &str = "TransactionalEmailQueueUrl";
    /// The SES sender identity (a domain or an address).
    pub const SES_IDENTITY: &str = "SesIdentity";
    /// The SES configuration set every send uses.
    pub const SES_CONFIGURATION_SET: &str = "SesConfigurationSetName";
    /// The SNS topic the configuration set publishes events to.
    pub const SES_EVENTS_TOPIC_ARN: &str = "SesEventsTopicArn";
    /// The ses-webhooks queue subscribed to that topic (else derived from its URL).
    pub const SES_WEBHOOKS_QUEUE_ARN: &str = "SesWebhooksQueueArn";
    pub const SES_WEBHOOKS_QUEUE_URL: &str = "SesWebhooksQueueUrl";
    /// The fallback for [`SES_IDENTITY`]: this address's domain.
    pub const DEFAULT_FROM_EMAIL: &str = "DefaultFromEmail";
}

/// `arn:aws:sqs:<region>:<account>:<name>` from `https://sqs.<region>.amazonaws.com/<account>/<name>`.
pub fn queue_arn_from_url(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let mut parts = rest.split('/');
    let host = parts.next()?;
    let (account, name) = (parts.next()?, parts.next()?);
    let region = host.strip_prefix("sqs.")?.split('.').next()?;
    let partition = if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    };
    (!account.is_empty() && !name.is_empty())
        .then(|| format!("arn:{partition}:sqs:{region}:{account}:{name}"))
}

/// The SES identity to check: the `SesIdentity` output, else the domain of `DefaultFromEmail`
/// (which may be `Name <addr@domain>`).
fn identity_from(outs: &HashMap<String, String>) -> Option<String> {
    if let Some(i) = outs.get(outputs::SES_IDENTITY) {
        return Some(i.clone());
    }
    let from = outs.get(outputs::DEFAULT_FROM_EMAIL)?;
    let addr = from
        .rsplit_once('<')
        .map(|(_, a)| a.trim_end_matches('>'))
        .unwrap_or(from);
    addr.rsplit_once('@').map(|(_, d)| d.trim().to_string())
}

/// The SES event types whose destination the webhooks pipeline needs.
pub const REQUIRED_EVENT_TYPES: [&str; 3] = ["BOUNCE", "COMPLAINT", "DELIVERY"];

#[derive(Debug, Clone)]
pub struct SmokeOptions {
    /// The public base URL of the web service, e.g. `https://mail.example.com`.
    pub base_url: String,
    pub stack_name: Option<String>,
    pub transactional_queue_url: Option<String>,
    pub region: String,
    /// An AWS endpoint override (tests: moto).
    pub endpoint_url: Option<String>,
    /// How long to wait for the worker to record the probe.
    pub probe_wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Human,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub status: Status,
    pub name: String,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Human => "HUMAN",
        };
        write!(f, "{status}: {}: {}", self.name, self.detail)
    }
}

/// Collects checks and prints each as it is decided.
struct Report {
    checks: Vec<Check>,
    print: bool,
}

impl Report {
    fn add(&mut self, status: Status, name: &str, detail: impl Into<String>) {
        let check = Check {
            status,
            name: name.to_string(),
            detail: detail.into(),
        };
        if self.print {
            println!("{check}");
        }
        self.checks.push(check);
    }
}

/// Runs every check, printing each line as it is decided when `print`. Returns the checks.
pub async fn run(opts: &SmokeOptions, print: bool) -> Vec<Check> {
    let mut r = Report {
        checks: Vec::new(),
        print,
    };
    let base = opts.base_url.trim_end_matches('/').to_string();
    let http = reqwest::Client::new();

    // 1. Web health.
    match http
        .get(format!("{base}/health/"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(resp) => {
            let status = resp.status();
            let body: String = resp
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(120)
                .collect();
            let ok = status.is_success();
            r.add(
                if ok { Status::Pass } else { Status::Fail },
                "web health",
                format!("GET {base}/health/ answered {} {body}", status.as_u16()),
            );
        }
        Err(e) => r.add(
            Status::Fail,
            "web health",
            format!("GET {base}/health/: {e}"),
        ),
    }

    let needs_aws = opts.stack_name.is_some() || opts.transactional_queue_url.is_some();
    let aws = if needs_aws {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(opts.region.clone()));
        if let Some(url) = &opts.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        Some(loader.load().await)
    } else {
        None
    };

    // Stack outputs.
    let mut outs: HashMap<String, String> = HashMap::new();
    if let (Some(stack), Some(aws)) = (&opts.stack_name, &aws) {
        match stack_outputs(aws, stack).await {
            Ok(o) => {
                r.add(
                    Status::Pass,
                    "stack outputs",
                    format!("{stack}: {} output(s)", o.len()),
                );
                outs = o;
            }
            Err(e) => r.add(Status::Fail, "stack outputs", format!("{stack}: {e:#}")),
        }
    }

    // 2. Queue round trip.
    let queue_url = opts
        .transactional_queue_url
        .clone()
        .or_else(|| outs.get(outputs::TRANSACTIONAL_QUEUE_URL).cloned());
    match (&queue_url, &aws) {
        (Some(url), Some(aws)) => {
            let sqs = aws_sdk_sqs::Client::new(aws);
            let (status, detail) = round_trip(&http, &base, &sqs, url, opts.probe_wait).await;
            r.add(status, "queue round trip", detail);
        }
        _ => r.add(
            Status::Human,
            "queue round trip",
            "skipped: no --transactional-queue-url and no stack output TransactionalEmailQueueUrl",
        ),
    }

    // 3. SES and SNS, from the stack outputs.
    if let (Some(_), Some(aws)) = (&opts.stack_name, &aws) {
        let ses = aws_sdk_sesv2::Client::new(aws);
        ses_account(&mut r, &ses).await;
        match identity_from(&outs) {
            Some(identity) => ses_identity(&mut r, &ses, &identity).await,
            None => r.add(
                Status::Fail,
                "SES identity",
                format!(
                    "the stack has neither a {} nor a {} output",
                    outputs::SES_IDENTITY,
                    outputs::DEFAULT_FROM_EMAIL
                ),
            ),
        }
        match outs.get(outputs::SES_CONFIGURATION_SET) {
            Some(set) => {
                ses_event_destination(
                    &mut r,
                    &ses,
                    set,
                    outs.get(outputs::SES_EVENTS_TOPIC_ARN).map(String::as_str),
                )
                .await
            }
            None => r.add(
                Status::Fail,
                "SES event destination",
                format!("the stack has no {} output", outputs::SES_CONFIGURATION_SET),
            ),
        }
        let webhooks_arn = outs
            .get(outputs::SES_WEBHOOKS_QUEUE_ARN)
            .cloned()
            .or_else(|| {
                outs.get(outputs::SES_WEBHOOKS_QUEUE_URL)
                    .and_then(|u| queue_arn_from_url(u))
            });
        match (outs.get(outputs::SES_EVENTS_TOPIC_ARN), webhooks_arn) {
            (Some(topic), Some(queue)) => {
                let sns = aws_sdk_sns::Client::new(aws);
                let (status, detail) = sns_subscription(&sns, topic, &queue).await;
                r.add(status, "SNS subscription", detail);
            }
            _ => r.add(
                Status::Fail,
                "SNS subscription",
                format!(
                    "the stack needs the outputs {} and {} (or {})",
                    outputs::SES_EVENTS_TOPIC_ARN,
                    outputs::SES_WEBHOOKS_QUEUE_ARN,
                    outputs::SES_WEBHOOKS_QUEUE_URL
                ),
            ),
        }
    } else {
        r.add(
            Status::Human,
            "SES and SNS",
            "skipped: pass --stack-name (with AWS credentials) to check SES access, identity, DKIM, the event destination and the SNS subscription",
        );
    }

    // 4. What only people can check.
    for (name, detail) in HUMAN_CHECKS {
        r.add(Status::Human, name, *detail);
    }
    if let Some((name, detail)) = concurrency_quota_check() {
        r.add(Status::Human, name, detail);
    }
    r.checks
}

/// The template this binary ships with (its reservations are what the account must allow).
const TEMPLATE: &str = include_str!("../../infra/cloudformation/datamailer-mvp.json");

/// `(check, detail)` of the Lambda concurrency quota line, as `validate-infra` prints it.
pub fn concurrency_quota_check() -> Option<(&'static str, String)> {
    let template: serde_json::Value = serde_json::from_str(TEMPLATE).ok()?;
    let line = crate::validate::concurrency_quota(crate::validate::reserved_concurrency(&template));
    let (name, detail) = line.split_once(": ")?;
    (name == "lambda concurrency quota").then(|| ("lambda concurrency quota", detail.to_string()))
}

/// Checks no API can settle (docs/operations.md explains each).
pub const HUMAN_CHECKS: &[(&str, &str)] = &[
    ("DNS records", "the SES DKIM CNAMEs, the MAIL FROM MX/SPF records and DMARC are published in the domain's DNS"),
    ("SES sandbox exit", "AWS approved production access for this account and region (a support case; staging may stay in the sandbox)"),
    ("alarm routing", "the alarm topic has a confirmed on-call subscription and a test notification reached a person"),
    ("restore drill", "a snapshot of the database was restored to a new instance, `datamailer migrate --check` passed against it and the data was verified, with start and end times recorded (docs/operations.md, Postgres restore drill)"),
];

/// True when any check failed.
pub fn any_failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

async fn stack_outputs(
    aws: &aws_config::SdkConfig,
    stack: &str,
) -> anyhow::Result<HashMap<String, String>> {
    let cfn = aws_sdk_cloudformation::Client::new(aws);
    let out = cfn
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .context("CloudFormation DescribeStacks")?;
    let s = out.stacks().first().context("no such stack")?;
    Ok(s.outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
        .collect())
}

async fn round_trip(
    http: &reqwest::Client,
    base: &str,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    wait: Duration,
) -> (Status, String) {
    let probe = Probe {
        probe_id: format!("smoke-{}", uuid::Uuid::new_v4()),
        sent_at: Some(chrono::Utc::now()),
    };
    if let Err(e) = sqs
        .send_message()
        .queue_url(queue_url)
        .message_body(probe.to_body())
        .send()
        .await
    {
        return (
            Status::Fail,
            format!("SendMessage to {queue_url}: {}", aws_error(&e)),
        );
    }
    let started = Instant::now();
    let url = format!("{base}/health/probes/{}", probe.probe_id);
    let mut last = String::new();
    while started.elapsed() < wait {
        match http.get(&url).timeout(Duration::from_secs(10)).send().await {
            Ok(resp) if resp.status().is_success() => {
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                return (
                    Status::Pass,
                    format!(
                        "probe {} consumed by the {} worker after {:.1} s",
                        probe.probe_id,
                        body["queue"].as_str().unwrap_or("?"),
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
            Ok(resp) => last = format!("GET answered {}", resp.status().as_u16()),
            Err(e) => last = format!("GET failed: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    (
        Status::Fail,
        format!(
            "no worker recorded probe {} within {} s ({last}); is the worker running, its event source mapping enabled, the queue not paused?",
            probe.probe_id,
            wait.as_secs()
        ),
    )
}

async fn ses_account(r: &mut Report, ses: &aws_sdk_sesv2::Client) {
    match ses.get_account().send().await {
        Ok(a) => {
            if a.production_access_enabled() {
                r.add(Status::Pass, "SES production access", "enabled");
            } else {
                r.add(
                    Status::Human,
                    "SES production access",
                    "the account is in the SES sandbox: only verified recipients get mail until AWS approves production access",
                );
            }
            match a.send_quota() {
                Some(q) => {
                    let detail = format!(
                        "max {} per 24 h, {} per second, {} sent in the last 24 h",
                        q.max24_hour_send(),
                        q.max_send_rate(),
                        q.sent_last24_hours()
                    );
                    let exhausted =
                        q.max24_hour_send() > 0.0 && q.sent_last24_hours() >= q.max24_hour_send();
                    r.add(
                        if exhausted {
                            Status::Fail
                        } else {
                            Status::Pass
                        },
                        "SES send quota",
                        detail,
                    );
                }
                None => r.add(
                    Status::Fail,
                    "SES send quota",
                    "GetAccount returned no quota",
                ),
            }
            if !a.sending_enabled() {
                r.add(
                    Status::Fail,
                    "SES sending",
                    "sending is disabled for the account",
                );
            }
        }
        Err(e) => r.add(
            Status::Fail,
            "SES account",
            format!("GetAccount: {}", aws_error(&e)),
        ),
    }
}

async fn ses_identity(r: &mut Report, ses: &aws_sdk_sesv2::Client, identity: &str) {
    match ses
        .get_email_identity()
        .email_identity(identity)
        .send()
        .await
    {
        Ok(i) => {
            r.add(
                if i.verified_for_sending_status() {
                    Status::Pass
                } else {
                    Status::Fail
                },
                "SES identity",
                format!(
                    "{identity}: verified for sending: {}",
                    i.verified_for_sending_status()
                ),
            );
            let is_domain = !identity.contains('@');
            let dkim = i
                .dkim_attributes()
                .and_then(|d| d.status())
                .map(|s| s.as_str().to_string());
            match (is_domain, dkim.as_deref()) {
                (_, Some("SUCCESS")) => r.add(Status::Pass, "SES DKIM", format!("{identity}: SUCCESS")),
                (true, status) => r.add(
                    Status::Fail,
                    "SES DKIM",
                    format!(
                        "{identity}: {} (publish the DKIM CNAME records, then wait for SES)",
                        status.unwrap_or("no DKIM attributes")
                    ),
                ),
                (false, status) => r.add(
                    Status::Human,
                    "SES DKIM",
                    format!(
                        "{identity} is an address identity (DKIM {}): send from a verified domain with DKIM in production",
                        status.unwrap_or("unknown")
                    ),
                ),
            }
        }
        Err(e) => r.add(
            Status::Fail,
            "SES identity",
            format!("GetEmailIdentity {identity}: {}", aws_error(&e)),
        ),
    }
}

async fn ses_event_destination(
    r: &mut Report,
    ses: &aws_sdk_sesv2::Client,
    set: &str,
    topic: Option<&str>,
) {
    let out = match ses
        .get_configuration_set_event_destinations()
        .configuration_set_name(set)
        .send()
        .await
    {
        Ok(o) => o,
        Err(e) => {
            return r.add(
                Status::Fail,
                "SES event destination",
                format!(
                    "GetConfigurationSetEventDestinations {set}: {}",
                    aws_error(&e)
                ),
            )
        }
    };
    let (status, detail) = event_destination_verdict(out.event_destinations(), set, topic);
    r.add(status, "SES event destination", detail);
}

/// Whether one of the configuration set's destinations is an enabled SNS destination (to
/// `topic`, when known) for every [`REQUIRED_EVENT_TYPES`].
pub fn event_destination_verdict(
    destinations: &[aws_sdk_sesv2::types::EventDestination],
    set: &str,
    topic: Option<&str>,
) -> (Status, String) {
    let mut best: Option<(String, Vec<&str>)> = None;
    for d in destinations {
        let Some(sns) = d.sns_destination() else {
            continue;
        };
        if !d.enabled() || topic.is_some_and(|t| t != sns.topic_arn()) {
            continue;
        }
        let types: Vec<&str> = d
            .matching_event_types()
            .iter()
            .map(|t| t.as_str())
            .collect();
        let missing: Vec<&str> = REQUIRED_EVENT_TYPES
            .iter()
            .copied()
            .filter(|t| !types.contains(t))
            .collect();
        if missing.is_empty() {
            return (
                Status::Pass,
                format!(
                    "{set} → {} ({}) for {}",
                    d.name(),
                    sns.topic_arn(),
                    types.join(", ")
                ),
            );
        }
        best = Some((d.name().to_string(), missing));
    }
    let detail = match best {
        Some((name, missing)) => format!("{set}: destination {name} lacks {}", missing.join(", ")),
        None => format!(
            "{set} has no enabled SNS event destination{}",
            topic.map(|t| format!(" to {t}")).unwrap_or_default()
        ),
    };
    (Status::Fail, detail)
}

async fn sns_subscription(
    sns: &aws_sdk_sns::Client,
    topic: &str,
    queue_arn: &str,
) -> (Status, String) {
    let mut token = None;
    loop {
        let out = match sns
            .list_subscriptions_by_topic()
            .topic_arn(topic)
            .set_next_token(token)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                return (
                    Status::Fail,
                    format!("ListSubscriptionsByTopic {topic}: {}", aws_error(&e)),
                )
            }
        };
        for s in out.subscriptions() {
            if s.protocol() == Some("sqs") && s.endpoint() == Some(queue_arn) {
                let arn = s.subscription_arn().unwrap_or_default();
                return if arn.starts_with("arn:") {
                    (Status::Pass, format!("{topic} → {queue_arn} (confirmed)"))
                } else {
                    (
                        Status::Fail,
                        format!("{topic} → {queue_arn} is not confirmed ({arn})"),
                    )
                };
            }
        }
        match out.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    (
        Status::Fail,
        format!("{topic} has no SQS subscription to {queue_arn}"),
    )
}

/// A short account of an AWS call's failure: the service's code and message, or the HTTP status
/// (a 404 without a code means the endpoint lacks the API), or the whole error chain.
fn aws_error<E>(
    e: &aws_sdk_sesv2::error::SdkError<E, aws_sdk_sesv2::config::http::HttpResponse>,
) -> String
where
    E: aws_sdk_sesv2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_sesv2::error::ProvideErrorMetadata;
    let status = e.raw_response().map(|r| r.status().as_u16());
    match (e.code(), status) {
        (Some(code), _) => format!("{code}: {}", e.message().unwrap_or_default()),
        (None, Some(404)) => "HTTP 404 (the endpoint does not implement this API)".into(),
        (None, Some(s)) => format!("HTTP {s}: {}", aws_sdk_sesv2::error::DisplayErrorContext(e)),
        (None, None) => aws_sdk_sesv2::error::DisplayErrorContext(e).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_sesv2::types::{EventDestination, EventType, SnsDestination};

    use super::*;

    fn dest(name: &str, topic: &str, enabled: bool, types: &[EventType]) -> EventDestination {
        EventDestination::builder()
            .name(name)
            .enabled(enabled)
            .set_matching_event_types(Some(types.to_vec()))
            .sns_destination(SnsDestination::builder().topic_arn(topic).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn the_event_destination_must_be_an_enabled_sns_one_for_every_needed_type() {
        let all = [
            EventType::Send,
            EventType::Bounce,
            EventType::Complaint,
            EventType::Delivery,
        ];
        let ok = dest("to-sns", "arn:topic", true, &all);
        let (s, d) = event_destination_verdict(std::slice::from_ref(&ok), "cs", Some("arn:topic"));
        assert_eq!(s, Status::Pass, "{d}");
        assert!(d.contains("BOUNCE") && d.contains("arn:topic"), "{d}");

        let disabled = dest("to-sns", "arn:topic", false, &all);
        assert_eq!(
            event_destination_verdict(&[disabled], "cs", None).0,
            Status::Fail
        );
        let other_topic = event_destination_verdict(&[ok], "cs", Some("arn:other"));
        assert_eq!(other_topic.0, Status::Fail);
        assert!(other_topic.1.contains("arn:other"), "{}", other_topic.1);
        let partial = dest("p", "arn:topic", true, &[EventType::Bounce]);
        let (s, d) = event_destination_verdict(&[partial], "cs", None);
        assert_eq!(s, Status::Fail);
        assert_eq!(d, "cs: destination p lacks COMPLAINT, DELIVERY");
        assert_eq!(event_destination_verdict(&[], "cs", None).0, Status::Fail);
    }

    #[test]
    fn outputs_fallbacks() {
        assert_eq!(
            queue_arn_from_url(
                "https://sqs.eu-west-1.amazonaws.com/123456789012/dm-staging-ses-webhooks"
            )
            .as_deref(),
            Some("arn:aws:sqs:eu-west-1:123456789012:dm-staging-ses-webhooks")
        );
        assert_eq!(queue_arn_from_url("http://127.0.0.1:5000/1/q"), None);
        let outs: HashMap<String, String> = [(
            "DefaultFromEmail".to_string(),
            "News <news@mail.example.com>".to_string(),
        )]
        .into();
        assert_eq!(identity_from(&outs).as_deref(), Some("mail.example.com"));
    }

    #[test]
    fn lines_read_status_check_detail() {
        let c = Check {
            status: Status::Human,
            name: "DNS records".into(),
            detail: "published".into(),
        };
        assert_eq!(c.to_string(), "HUMAN: DNS records: published");
        assert!(!any_failed(std::slice::from_ref(&c)));
    }

    #[test]
    fn the_concurrency_quota_line_carries_the_templates_reserved_total() {
        let (name, detail) = concurrency_quota_check().expect("the bundled template parses");
        let template: serde_json::Value = serde_json::from_str(TEMPLATE).unwrap();
        let reserved = crate::validate::reserved_concurrency(&template);
        assert!(reserved > 0);
        assert_eq!(name, "lambda concurrency quota");
        assert_eq!(
            detail,
            format!(
                "the template reserves {reserved}; the account quota must be >= {} (aws service-quotas get-service-quota --service-code lambda --quota-code L-B99A9384)",
                reserved + 100
            )
        );
    }
}
