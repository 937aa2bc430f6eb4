//! Configuration from the environment (12-factor), validated at start: every bad value is
//! reported on its own line, naming the variable and the reason.

use std::collections::HashMap;
use std::net::SocketAddr;

use datamailer_core::queue::QueueName;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueBackend {
    Postgres,
    Sqs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailerKind {
    Capture,
    Ses,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`; `None` means the local default, whose database we create if missing.
    pub database_url: Option<String>,
    /// `DATAMAILER_DATABASE_SECRET_ARN`: where the database URL comes from when
    /// `DATABASE_URL` is unset (see `secrets.rs`).
    pub database_secret_arn: Option<String>,
    pub http_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub public_base_url: String,
    pub default_from_email: String,
    pub aws_region: String,
    pub aws_endpoint_url: Option<String>,
    pub ses_configuration_set: Option<String>,
    /// Campaign sending: recipients per batch (`DATAMAILER_CAMPAIGN_BATCH_SIZE`, 100), a
    /// claim's lease (`DATAMAILER_CAMPAIGN_LEASE_SECONDS`, 900) and the age past which a
    /// pending recipient's batch counts as lost (`DATAMAILER_CAMPAIGN_BATCH_HORIZON_SECONDS`,
    /// 900).
    pub campaign_batch_size: usize,
    /// `DATAMAILER_CAMPAIGN_CONCURRENCY`: campaign batches a long-lived worker handles at once
    /// (default 4; a Lambda environment handles one, its reserved concurrency is the template's).
    pub campaign_concurrency: usize,
    /// `DATAMAILER_SES_WEBHOOKS_CONCURRENCY`: ses-webhooks batches a long-lived worker receives
    /// at once (default 4; they share one writer, so this overlaps receiving, applying and
    /// acknowledging rather than adding connections that contend).
    pub ses_webhooks_concurrency: usize,
    pub campaign_lease: std::time::Duration,
    pub campaign_batch_horizon: std::time::Duration,
    /// `DATAMAILER_TRACKING_ASYNC`: opens and clicks go through the email-events queue.
    pub tracking_async: bool,
    /// `DATAMAILER_UNSUBSCRIBE_MAILTO`: a mailto in campaign mail's List-Unsubscribe header.
    pub unsubscribe_mailto: Option<String>,
    /// `DATAMAILER_SNS_SIGNATURE_MODE` (`strict`, default, or `insecure` for local tests).
    pub sns_insecure: bool,
    /// `DATAMAILER_SNS_TOPIC_ARNS`: comma-separated topics `POST /webhooks/ses` accepts.
    pub sns_topic_arns: Vec<String>,
    /// `DATAMAILER_SNS_ALLOW_SUBSCRIPTION_CONFIRMATION`: confirm SNS subscriptions.
    pub sns_allow_subscription_confirmation: bool,
    /// Sends per second for SES; `None` disables the limiter.
    pub ses_max_send_rate: Option<f64>,
    /// `DATAMAILER_SES_RATE_SCOPE`: `account` (default; the rate holds across every process,
    /// through Postgres) or `process`.
    pub ses_rate_shared: bool,
    /// `DATAMAILER_SES_DAILY_RESERVE`: the share of SES's 24-hour quota campaign mail leaves
    /// for transactional mail (default 0.1).
    pub ses_daily_reserve: f64,
    /// `DATAMAILER_SES_TIMEOUT_SECONDS`: the most one SES call may take.
    pub ses_timeout: std::time::Duration,
    pub queue_backend: QueueBackend,
    pub mailer: MailerKind,
    pub db_max_connections: usize,
    pub sqs_queue_urls: HashMap<QueueName, String>,
    pub sqs_dlq_urls: HashMap<QueueName, String>,
    /// Per queue, the Lambda event source mapping (UUID) that `pause`/`resume` switch.
    pub event_source_mappings: HashMap<QueueName, String>,
    /// `DATAMAILER_OUTBOUND_ALLOW_HOSTS`: hosts exempt from the SSRF address rules (raw list).
    pub outbound_allow_hosts: String,
    /// `CMP_WEBHOOK_URL` and `CMP_WEBHOOK_TOKEN`: the global client-webhook fallback (both or
    /// neither). The web-serving processes copy it into `client_webhook_fallback` at start.
    pub cmp_webhook: Option<(String, String)>,
    /// `CMP_WEBHOOK_TIMEOUT_SECONDS`: the most one webhook POST may take.
    pub cmp_webhook_timeout: std::time::Duration,
    /// The SES feedback rules (`DATAMAILER_SOFT_BOUNCE_LIMIT`, `..._WINDOW_HOURS`,
    /// `DATAMAILER_BOUNCE_RATE_THRESHOLD`, `DATAMAILER_COMPLAINT_RATE_THRESHOLD`,
    /// `DATAMAILER_REPUTATION_MIN_SAMPLE`, `DATAMAILER_REPUTATION_WINDOW_SENDS`).
    pub feedback: datamailer_actors::ses_webhooks::FeedbackSettings,
}

/// The SES call timeout unless `DATAMAILER_SES_TIMEOUT_SECONDS` says otherwise.
pub const DEFAULT_SES_TIMEOUT_SECONDS: u64 = 10;

/// The local Postgres over loopback, where TLS would only cost CPU.
pub const LOCAL_DATABASE_URL: &str =
    "postgres://postgres@127.0.0.1:5432/datamailer?sslmode=disable";

/// An environment variable, trimmed; unset and blank are the same.
pub(crate) fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl Config {
    pub fn from_env() -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let mut parse_addr = |name: &str, default: &str| -> SocketAddr {
            let raw = var(name).unwrap_or_else(|| default.to_string());
            raw.parse().unwrap_or_else(|_| {
                errors.push(format!(
                    "{name}: '{raw}' is not a host:port address (e.g. 127.0.0.1:8000)"
                ));
                default.parse().unwrap()
            })
        };
        let http_addr = parse_addr("DATAMAILER_HTTP_ADDR", "127.0.0.1:8000");
        let metrics_addr = parse_addr("DATAMAILER_METRICS_ADDR", "127.0.0.1:9464");

        let public_base_url = var("PUBLIC_BASE_URL")
            .unwrap_or_else(|| "http://localhost:8000".into())
            .trim_end_matches('/')
            .to_string();
        if !(public_base_url.starts_with("http://") || public_base_url.starts_with("https://")) {
            errors.push(format!(
                "PUBLIC_BASE_URL: '{public_base_url}' must start with http:// or https://"
            ));
        }
        let default_from_email =
            var("DEFAULT_FROM_EMAIL").unwrap_or_else(|| "newsletter@example.com".into());
        if datamailer_core::email::parse_sender(&default_from_email).is_none() {
            errors.push(format!(
                "DEFAULT_FROM_EMAIL: '{default_from_email}' is not an email address"
            ));
        }
        let ses_max_send_rate = match var("DATAMAILER_SES_MAX_SEND_RATE") {
            None => Some(10.0),
            Some(raw) => match raw.parse::<f64>() {
                Ok(r) if r.is_finite() && r > 0.0 => Some(r),
                Ok(r) if r.is_finite() => None,
                _ => {
                    errors.push(format!("DATAMAILER_SES_MAX_SEND_RATE: '{raw}' is not a number (sends per second; 0 disables)"));
                    None
                }
            },
        };
        let ses_timeout = match var("DATAMAILER_SES_TIMEOUT_SECONDS") {
            None => std::time::Duration::from_secs(DEFAULT_SES_TIMEOUT_SECONDS),
            Some(raw) => match raw.parse::<u64>() {
                Ok(n) if (1..=60).contains(&n) => std::time::Duration::from_secs(n),
                _ => {
                    errors.push(format!("DATAMAILER_SES_TIMEOUT_SECONDS: '{raw}' must be a whole number of seconds from 1 to 60"));
                    std::time::Duration::from_secs(DEFAULT_SES_TIMEOUT_SECONDS)
                }
            },
        };
        let queue_backend = match var("DATAMAILER_QUEUE_BACKEND").as_deref() {
            None | Some("postgres") => QueueBackend::Postgres,
            Some("sqs") => QueueBackend::Sqs,
            Some(other) => {
                errors.push(format!(
                    "DATAMAILER_QUEUE_BACKEND: '{other}' must be postgres or sqs"
                ));
                QueueBackend::Postgres
            }
        };
        let mailer = match var("DATAMAILER_MAILER").as_deref() {
            None | Some("capture") => MailerKind::Capture,
            Some("ses") => MailerKind::Ses,
            Some(other) => {
                errors.push(format!(
                    "DATAMAILER_MAILER: '{other}' must be capture or ses"
                ));
                MailerKind::Capture
            }
        };
        let ses_rate_shared = match var("DATAMAILER_SES_RATE_SCOPE").as_deref() {
            None | Some("account") => true,
            Some("process") => false,
            Some(other) => {
                errors.push(format!(
                    "DATAMAILER_SES_RATE_SCOPE: '{other}' must be account or process"
                ));
                true
            }
        };
        let ses_daily_reserve = match var("DATAMAILER_SES_DAILY_RESERVE") {
            None => 0.1,
            Some(raw) => match raw.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    errors.push(format!(
                        "DATAMAILER_SES_DAILY_RESERVE: '{raw}' must be a share from 0 to 1"
                    ));
                    0.1
                }
            },
        };
        if let Some(mailto) = var("DATAMAILER_UNSUBSCRIBE_MAILTO") {
            if !datamailer_core::email::is_valid(&mailto) {
                errors.push(format!(
                    "DATAMAILER_UNSUBSCRIBE_MAILTO: '{mailto}' is not an email address"
                ));
            }
        }
        let db_max_connections = match var("DATAMAILER_DB_MAX_CONNECTIONS") {
            None => 8,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    errors.push(format!("DATAMAILER_DB_MAX_CONNECTIONS: '{raw}' must be a whole number from 1 to 1000"));
                    8
                }
            },
        };
        let mut sqs_queue_urls = HashMap::new();
        let mut sqs_dlq_urls = HashMap::new();
        for q in QueueName::ALL {
            for (env, map) in [
                (q.sqs_url_env(), &mut sqs_queue_urls),
                (q.sqs_dlq_url_env(), &mut sqs_dlq_urls),
            ] {
                if let Some(url) = var(env) {
                    if url.starts_with("http://") || url.starts_with("https://") {
                        map.insert(q, url);
                    } else {
                        errors.push(format!("{env}: '{url}' is not an http(s) queue URL"));
                    }
                }
            }
        }
        let event_source_mappings = QueueName::ALL
            .into_iter()
            .filter_map(|q| Some((q, var(q.event_source_mapping_env())?)))
            .collect();
        if queue_backend == QueueBackend::Sqs
            && !sqs_queue_urls.contains_key(&QueueName::TransactionalEmail)
        {
            errors.push(format!(
                "{}: required when DATAMAILER_QUEUE_BACKEND=sqs",
                QueueName::TransactionalEmail.sqs_url_env()
            ));
        }
        let cmp_webhook = match (var("CMP_WEBHOOK_URL"), var("CMP_WEBHOOK_TOKEN")) {
            (None, None) => None,
            (Some(url), Some(token)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048
                {
                    errors.push(format!(
                        "CMP_WEBHOOK_URL: '{url}' must be an http(s) URL of at most 2048 characters"
                    ));
                }
                if token.len() > 255 {
                    errors.push("CMP_WEBHOOK_TOKEN: must be at most 255 characters".into());
                }
                Some((url, token))
            }
            (Some(_), None) => {
                errors.push("CMP_WEBHOOK_TOKEN: required when CMP_WEBHOOK_URL is set".into());
                None
            }
            (None, Some(_)) => {
                errors.push("CMP_WEBHOOK_URL: required when CMP_WEBHOOK_TOKEN is set".into());
                None
            }
        };
        let seconds = |name: &str, default: u64, errors: &mut Vec<String>| match var(name) {
            None => std::time::Duration::from_secs(default),
            Some(raw) => match raw.parse::<f64>() {
                Ok(n) if n > 0.0 && n <= 86_400.0 => std::time::Duration::from_secs_f64(n),
                _ => {
                    errors.push(format!(
                        "{name}: '{raw}' must be a number of seconds above 0 and at most 86400"
                    ));
                    std::time::Duration::from_secs(default)
                }
            },
        };
        let campaign_lease = seconds("DATAMAILER_CAMPAIGN_LEASE_SECONDS", 900, &mut errors);
        let campaign_batch_horizon = seconds(
            "DATAMAILER_CAMPAIGN_BATCH_HORIZON_SECONDS",
            900,
            &mut errors,
        );
        let campaign_batch_size = match var("DATAMAILER_CAMPAIGN_BATCH_SIZE") {
            None => 100,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=500).contains(&n) => n,
                _ => {
                    errors.push(format!(
                        "DATAMAILER_CAMPAIGN_BATCH_SIZE: '{raw}' must be a whole number from 1 to 500"
                    ));
                    100
                }
            },
        };
        let mut flag = |name: &str| match var(name).as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                errors.push(format!("{name}: '{other}' must be true or false"));
                false
            }
        };
        let tracking_async = flag("DATAMAILER_TRACKING_ASYNC");
        let sns_allow_subscription_confirmation =
            flag("DATAMAILER_SNS_ALLOW_SUBSCRIPTION_CONFIRMATION");
        let sns_insecure = match var("DATAMAILER_SNS_SIGNATURE_MODE").as_deref() {
            None | Some("strict") => false,
            Some("insecure") => true,
            Some(other) => {
                errors.push(format!(
                    "DATAMAILER_SNS_SIGNATURE_MODE: '{other}' must be strict or insecure"
                ));
                false
            }
        };
        let sns_topic_arns: Vec<String> = var("DATAMAILER_SNS_TOPIC_ARNS")
            .map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let campaign_concurrency = match var("DATAMAILER_CAMPAIGN_CONCURRENCY") {
            None => 4,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => n,
                _ => {
                    errors.push(format!(
                        "DATAMAILER_CAMPAIGN_CONCURRENCY: '{raw}' must be a whole number from 1 to 64"
                    ));
                    4
                }
            },
        };
        let ses_webhooks_concurrency = match var("DATAMAILER_SES_WEBHOOKS_CONCURRENCY") {
            None => 4,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => n,
                _ => {
                    errors.push(format!(
                        "DATAMAILER_SES_WEBHOOKS_CONCURRENCY: '{raw}' must be a whole number from 1 to 64"
                    ));
                    4
                }
            },
        };
        let default_webhook_timeout = std::time::Duration::from_secs(3);
        let cmp_webhook_timeout = match var("CMP_WEBHOOK_TIMEOUT_SECONDS") {
            None => default_webhook_timeout,
            Some(raw) => match raw.parse::<f64>() {
                Ok(n) if n > 0.0 && n <= 60.0 => std::time::Duration::from_secs_f64(n),
                _ => {
                    errors.push(format!("CMP_WEBHOOK_TIMEOUT_SECONDS: '{raw}' must be a number of seconds above 0 and at most 60"));
                    default_webhook_timeout
                }
            },
        };
        let feedback = feedback_settings(&mut errors);
        let config = Config {
            database_url: var("DATABASE_URL"),
            database_secret_arn: var("DATAMAILER_DATABASE_SECRET_ARN"),
            http_addr,
            metrics_addr,
            public_base_url,
            default_from_email,
            aws_region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            aws_endpoint_url: var("AWS_ENDPOINT_URL"),
            ses_configuration_set: var("AWS_SES_CONFIGURATION_SET"),
            unsubscribe_mailto: var("DATAMAILER_UNSUBSCRIBE_MAILTO"),
            sns_insecure,
            sns_topic_arns,
            sns_allow_subscription_confirmation,
            ses_max_send_rate,
            ses_rate_shared,
            ses_daily_reserve,
            campaign_batch_size,
            campaign_concurrency,
            ses_webhooks_concurrency,
            tracking_async,
            campaign_lease,
            campaign_batch_horizon,
            ses_timeout,
            queue_backend,
            mailer,
            db_max_connections,
            sqs_queue_urls,
            sqs_dlq_urls,
            event_source_mappings,
            outbound_allow_hosts: var("DATAMAILER_OUTBOUND_ALLOW_HOSTS").unwrap_or_default(),
            cmp_webhook,
            cmp_webhook_timeout,
            feedback,
        };
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    pub fn database_url(&self) -> &str {
        self.database_url.as_deref().unwrap_or(LOCAL_DATABASE_URL)
    }

    pub fn needs_aws(&self) -> bool {
        self.queue_backend == QueueBackend::Sqs || self.mailer == MailerKind::Ses
    }
}

/// The feedback rules from the environment, each bad value reported.
fn feedback_settings(
    errors: &mut Vec<String>,
) -> datamailer_actors::ses_webhooks::FeedbackSettings {
    use datamailer_actors::ses_webhooks::FeedbackSettings;
    type Set = fn(&mut FeedbackSettings, f64);
    // (variable, least, most, whole numbers only, what it must be, where it goes)
    let rules: [(&str, f64, f64, bool, &str, Set); 6] = [
        (
            "DATAMAILER_SOFT_BOUNCE_LIMIT",
            0.0,
            100.0,
            true,
            "a whole number from 0 (off) to 100",
            |s, n| s.soft_bounce_limit = n as i32,
        ),
        (
            "DATAMAILER_SOFT_BOUNCE_WINDOW_HOURS",
            0.001,
            8760.0,
            false,
            "a number of hours above 0 and at most 8760",
            |s, h| s.soft_bounce_window = std::time::Duration::from_secs_f64(h * 3600.0),
        ),
        (
            "DATAMAILER_BOUNCE_RATE_THRESHOLD",
            0.0001,
            1.0,
            false,
            "a fraction above 0 and at most 1 (0.04 is 4 %)",
            |s, r| s.bounce_threshold = r,
        ),
        (
            "DATAMAILER_COMPLAINT_RATE_THRESHOLD",
            0.00001,
            1.0,
            false,
            "a fraction above 0 and at most 1 (0.0008 is 0.08 %)",
            |s, r| s.complaint_threshold = r,
        ),
        (
            "DATAMAILER_REPUTATION_MIN_SAMPLE",
            1.0,
            1e7,
            true,
            "a whole number of sends from 1",
            |s, n| s.min_sample = n as i32,
        ),
        (
            "DATAMAILER_REPUTATION_WINDOW_SENDS",
            1.0,
            1e7,
            true,
            "a whole number of sends from 1",
            |s, n| s.account_window = n as i64,
        ),
    ];
    let mut settings = FeedbackSettings::default();
    for (name, least, most, whole, what, set) in rules {
        let Some(raw) = var(name) else { continue };
        match raw.parse::<f64>() {
            Ok(n) if (least..=most).contains(&n) && (!whole || n.fract() == 0.0) => {
                set(&mut settings, n)
            }
            _ => errors.push(format!("{name}: '{raw}' must be {what}")),
        }
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    // The only test that sets these variables (the environment is the process's).
    #[test]
    fn feedback_rules_are_read_and_each_bad_value_named() {
        std::env::set_var("DATAMAILER_SOFT_BOUNCE_LIMIT", "5");
        std::env::set_var("DATAMAILER_BOUNCE_RATE_THRESHOLD", "0.02");
        std::env::set_var("DATAMAILER_REPUTATION_MIN_SAMPLE", "2.5");
        std::env::set_var("DATAMAILER_COMPLAINT_RATE_THRESHOLD", "2");
        let mut errors = Vec::new();
        let s = feedback_settings(&mut errors);
        for name in [
            "DATAMAILER_SOFT_BOUNCE_LIMIT",
            "DATAMAILER_BOUNCE_RATE_THRESHOLD",
            "DATAMAILER_REPUTATION_MIN_SAMPLE",
            "DATAMAILER_COMPLAINT_RATE_THRESHOLD",
        ] {
            std::env::remove_var(name);
        }
        assert_eq!((s.soft_bounce_limit, s.bounce_threshold), (5, 0.02));
        assert_eq!(s.min_sample, 1000, "a bad value keeps the default");
        assert_eq!(
            errors,
            [
                "DATAMAILER_COMPLAINT_RATE_THRESHOLD: '2' must be a fraction above 0 and at most 1 (0.0008 is 0.08 %)",
                "DATAMAILER_REPUTATION_MIN_SAMPLE: '2.5' must be a whole number of sends from 1",
            ]
        );
    }
}
