//! `datamailer validate-infra`: offline checks of the CloudFormation template and its parameter
//! files (no AWS calls). Every failure is one line naming the resource (or file) and the rule;
//! the command exits 1 on any failure and prints a summary line on success.
//!
//! What is checked:
//! * template structure: JSON with `Parameters`, `Resources` and `Outputs`;
//! * every `*.parameters.example.json` / `*.parameters.private.json` in the config dir gives every
//!   parameter without a `Default`, no unknown one, values within `AllowedValues`; a private file
//!   has no `REPLACE` placeholder left;
//! * each worker (a Lambda function with `DATAMAILER_QUEUE`): the `provided.al2023` bootstrap, its
//!   queue with a DLQ and a `RedrivePolicy` pointing at it, `VisibilityTimeout ≥ 6 × Timeout`,
//!   reserved concurrency set, its event source mapping with `ReportBatchItemFailures` and
//!   `MaximumConcurrency` within 2..=1000 and ≤ reserved concurrency, the queue/DLQ/secret env vars
//!   pointing at its own resources, and an exactly scoped role (see [`check_role`]);
//! * the SES event path: SNS subscription of the ses-webhooks queue (raw delivery off) and the
//!   queue policy letting the topic send;
//! * each queue worker's deadline margin: it stops starting SES sends at deadline − (SES timeout
//!   + 5 s), so `Timeout ≥ 2 × (DATAMAILER_SES_TIMEOUT_SECONDS (default 10) + 5)`;
//! * the migrate and maintenance functions, the maintenance schedule and its alarms, each role
//!   exactly scoped ([`jobs`]);
//! * who may read which database secret and invoke which function ([`access`]): only the migrate
//!   function's role reads the master secret; the web host reads only the app secret and invokes
//!   only the migrate function; the scheduler invokes only the maintenance function;
//! * the database: encrypted, private, snapshot on delete/replace, `MultiAZ` a parameter (true in
//!   the production files);
//! * the Postgres connection budget for the default instance class and each parameter file's,
//!   counting the maintenance and migrate functions;
//! * HUMAN (printed, never failing): the account's Lambda concurrency quota must leave
//!   [`UNRESERVED_MINIMUM`] unreserved after the template's reservations;
//! * every custom metric (`Datamailer` namespace) used by an alarm or the dashboard is emitted by
//!   the code (`datamailer_runtime::telemetry::EMITTED_METRICS`, which a test keeps equal to the
//!   names in the code), listed in [`INFRA_METRICS`], and — for web-host metrics — selected by
//!   the CloudWatch agent configuration; it is named with exactly the dimensions it is published
//!   with (a Lambda metric's labels, [`crate::dashboards::METRIC_LABELS`]; the agent's dimension
//!   sets for a web-host one);
//! * the dashboard's body is the one [`crate::dashboards`] generates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Map, Value};

mod access;
mod jobs;

/// How a custom metric reaches CloudWatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricSource {
    /// Scraped from the web host's `/metrics` by the CloudWatch agent (dimension `job`).
    WebHostScrape,
    /// Written by the Lambda workers as Embedded Metric Format lines (labels become dimensions).
    LambdaEmf,
}

/// The one list of custom metrics the alarms and the dashboard may use, with how each reaches
/// CloudWatch. Each must also be in the runtime's `EMITTED_METRICS` (i.e. emitted by the code).
pub const INFRA_METRICS: &[(&str, MetricSource)] = &[
    ("datamailer_health_check_ok", MetricSource::WebHostScrape),
    (
        "datamailer_campaign_sending_age_seconds",
        MetricSource::WebHostScrape,
    ),
    // The web service's requests (dimensions job and status; the agent drops histograms).
    (
        "datamailer_http_requests_total",
        MetricSource::WebHostScrape,
    ),
    // The queue workers' trees (dimension queue; received also by source).
    ("datamailer_queue_lag_seconds", MetricSource::LambdaEmf),
    (
        "datamailer_messages_received_total",
        MetricSource::LambdaEmf,
    ),
    ("datamailer_messages_acked_total", MetricSource::LambdaEmf),
    ("datamailer_messages_failed_total", MetricSource::LambdaEmf),
    (
        "datamailer_messages_deferred_total",
        MetricSource::LambdaEmf,
    ),
    (
        "datamailer_messages_dead_lettered_total",
        MetricSource::LambdaEmf,
    ),
    ("datamailer_messages_in_flight", MetricSource::LambdaEmf),
    (
        "datamailer_handler_duration_seconds",
        MetricSource::LambdaEmf,
    ),
    ("datamailer_tree_state", MetricSource::LambdaEmf),
    (
        "datamailer_tree_breaker_trips_total",
        MetricSource::LambdaEmf,
    ),
    ("datamailer_tree_failures_total", MetricSource::LambdaEmf),
    ("datamailer_actor_restarts_total", MetricSource::LambdaEmf),
    ("datamailer_writer_restarts_total", MetricSource::LambdaEmf),
    ("datamailer_queue_paused", MetricSource::LambdaEmf),
    // The sender (the transactional-email and campaign-email workers).
    ("datamailer_ses_sends_total", MetricSource::LambdaEmf),
    ("datamailer_ses_throttles_total", MetricSource::LambdaEmf),
    (
        "datamailer_ses_send_duration_seconds",
        MetricSource::LambdaEmf,
    ),
    ("datamailer_limiter_wait_seconds", MetricSource::LambdaEmf),
    ("datamailer_limiter_rate", MetricSource::LambdaEmf),
    (
        "datamailer_campaign_recipients_sent_total",
        MetricSource::LambdaEmf,
    ),
    // The workers' pool (per Lambda environment).
    ("datamailer_db_pool_connections", MetricSource::LambdaEmf),
    (
        "datamailer_db_pool_max_connections",
        MetricSource::LambdaEmf,
    ),
    ("datamailer_db_pool_wait_seconds", MetricSource::LambdaEmf),
    // The maintenance function's client-webhook dispatch.
    ("datamailer_client_webhooks_total", MetricSource::LambdaEmf),
    (
        "datamailer_client_webhook_post_duration_seconds",
        MetricSource::LambdaEmf,
    ),
    // The ses-webhooks worker's, and the maintenance function's reputation guard.
    ("datamailer_ses_events_total", MetricSource::LambdaEmf),
    ("datamailer_ses_suppressions_total", MetricSource::LambdaEmf),
    ("datamailer_ses_event_lag_seconds", MetricSource::LambdaEmf),
    ("datamailer_reputation_rate", MetricSource::LambdaEmf),
    (
        "datamailer_reputation_campaigns_paused",
        MetricSource::LambdaEmf,
    ),
    // Campaign pauses by the workers' guards (`by` = bounce_rate, complaint_rate,
    // account_reputation; the client's pauses happen on the web host and are not published).
    ("datamailer_campaign_pauses_total", MetricSource::LambdaEmf),
];

/// The CloudWatch namespace our code publishes into.
pub const CUSTOM_NAMESPACE: &str = "Datamailer";

/// RDS for PostgreSQL's default `max_connections` is `LEAST({DBInstanceClassMemory/9531392}, 5000)`
/// (AWS Prescriptive Guidance, "tuning PostgreSQL parameters: max_connections").
/// `DBInstanceClassMemory` is below the nominal RAM (the OS and RDS processes take their share),
/// so these are the values observed on the classes, not nominal-RAM arithmetic.
pub const MAX_CONNECTIONS: &[(&str, u32)] = &[
    ("db.t4g.micro", 81),
    ("db.t4g.small", 189),
    ("db.t4g.medium", 405),
    ("db.t4g.large", 823),
];

/// Connections kept free for superuser slots, migrations, psql and monitoring.
pub const CONNECTION_HEADROOM: u32 = 10;
/// The worker pool per Lambda environment when the function sets no `DATAMAILER_DB_MAX_CONNECTIONS`.
pub const LAMBDA_POOL_DEFAULT: u32 = 2;
/// The migrate job holds one connection.
pub const MIGRATE_POOL: u32 = 1;
/// `DATAMAILER_SES_TIMEOUT_SECONDS` when a function does not set it.
pub const SES_TIMEOUT_DEFAULT: i64 = 10;
/// A queue worker stops starting SES sends this long (plus the SES timeout) before its deadline.
pub const SEND_STOP_MARGIN: i64 = 5;
/// Lambda refuses reservations that leave fewer unreserved executions than this.
pub const UNRESERVED_MINIMUM: i64 = 100;
/// The web pool when web.env.example sets no `DATAMAILER_DB_MAX_CONNECTIONS` (src/config.rs).
pub const WEB_POOL_DEFAULT: u32 = 8;
/// The queues whose workers send mail (and alone may call SES).
pub const SENDER_QUEUES: &[&str] = &["transactional-email", "campaign-email"];
/// Every queue the runtime knows; each needs a worker in the template.
pub const QUEUES: &[&str] = &[
    "transactional-email",
    "campaign-email",
    "ses-webhooks",
    "email-events",
];

const ENI_ACTIONS: &[&str] = &[
    "ec2:createnetworkinterface",
    "ec2:describenetworkinterfaces",
    "ec2:describesubnets",
    "ec2:deletenetworkinterface",
    "ec2:assignprivateipaddresses",
    "ec2:unassignprivateipaddresses",
];
const CONSUME_ACTIONS: &[&str] = &[
    "sqs:receivemessage",
    "sqs:deletemessage",
    "sqs:changemessagevisibility",
    "sqs:getqueueattributes",
];
const LOG_ACTIONS: &[&str] = &["logs:createlogstream", "logs:putlogevents"];
const SES_ACTIONS: &[&str] = &["ses:sendemail", "ses:sendrawemail"];

/// Where to look.
#[derive(Debug, Clone)]
pub struct Options {
    pub template: PathBuf,
    pub config_dir: PathBuf,
    /// The host files (CloudWatch agent configuration); default: `<config_dir>/../host`.
    pub host_dir: PathBuf,
    /// The metric names the code emits; default: the runtime's registry.
    pub emitted_metrics: Vec<String>,
}

impl Options {
    pub fn new(template: impl Into<PathBuf>, config_dir: impl Into<PathBuf>) -> Options {
        let config_dir = config_dir.into();
        let host_dir = config_dir
            .parent()
            .map(|p| p.join("host"))
            .unwrap_or_else(|| PathBuf::from("infra/host"));
        Options {
            template: template.into(),
            config_dir,
            host_dir,
            emitted_metrics: datamailer_runtime::telemetry::EMITTED_METRICS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// The outcome: how many checks ran and the failures, one line each.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: usize,
    pub failures: Vec<String>,
    /// What only a person can check, one `<check>: <detail>` each (printed as `HUMAN: ...`).
    pub human: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.failures.push(failure());
        }
    }
    fn fail(&mut self, failure: String) {
        self.checks += 1;
        self.failures.push(failure);
    }
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The command: prints each failure on stderr (`FAIL: ...`), or a summary line on stdout.
pub fn run(template: &Path, config_dir: &Path) -> ExitCode {
    let opts = Options::new(template, config_dir);
    let report = validate(&opts);
    for h in &report.human {
        println!("HUMAN: {h}");
    }
    if report.ok() {
        println!(
            "validate-infra: OK: {} checks passed ({}, {})",
            report.checks,
            opts.template.display(),
            opts.config_dir.display()
        );
        ExitCode::SUCCESS
    } else {
        for f in &report.failures {
            eprintln!("FAIL: {f}");
        }
        eprintln!(
            "validate-infra: {} of {} checks failed",
            report.failures.len(),
            report.checks
        );
        ExitCode::FAILURE
    }
}

/// Runs every check.
pub fn validate(opts: &Options) -> Report {
    let mut r = Report::default();
    let text = match std::fs::read_to_string(&opts.template) {
        Ok(t) => t,
        Err(e) => {
            r.fail(format!("{}: cannot read: {e}", opts.template.display()));
            return r;
        }
    };
    let template: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            r.fail(format!("{}: not valid JSON: {e}", opts.template.display()));
            return r;
        }
    };
    let mut structure_ok = true;
    for section in ["Parameters", "Resources", "Outputs"] {
        let ok = template
            .get(section)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty());
        r.check(ok, || {
            format!("template: the {section} section is missing or empty")
        });
        structure_ok &= ok;
    }
    if !structure_ok {
        return r;
    }
    let t = Template::new(&template);
    let param_files = check_parameter_files(&t, &opts.config_dir, &mut r);
    let workers = check_workers(&t, &mut r);
    let jobs = jobs::check_jobs(&t, &workers, &mut r);
    access::check_secret_readers(&t, &jobs, &mut r);
    access::check_lambda_permissions(&t, &jobs, &mut r);
    check_ses_event_path(&t, &mut r);
    check_database(&t, &param_files, &mut r);
    check_connection_budget(&t, &workers, &jobs, &opts.config_dir, &param_files, &mut r);
    check_metrics(&t, opts, &mut r);
    r.human
        .push(concurrency_quota(reserved_concurrency(&template)));
    r
}

/// Σ ReservedConcurrentExecutions over the template's functions (literal numbers only).
pub fn reserved_concurrency(template: &Value) -> i64 {
    template["Resources"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|r| r["Type"] == "AWS::Lambda::Function")
        .filter_map(|f| as_int(&f["Properties"]["ReservedConcurrentExecutions"]))
        .sum()
}

/// The HUMAN line about the account's Lambda concurrency quota (`validate-infra` and `smoke`).
pub fn concurrency_quota(reserved: i64) -> String {
    format!(
        "lambda concurrency quota: the template reserves {reserved}; the account quota must be >= {} (aws service-quotas get-service-quota --service-code lambda --quota-code L-B99A9384)",
        reserved + UNRESERVED_MINIMUM
    )
}

// ------------------------------------------------------------------------------- template access

struct Template<'a> {
    params: &'a Map<String, Value>,
    resources: &'a Map<String, Value>,
}

impl<'a> Template<'a> {
    fn new(v: &'a Value) -> Template<'a> {
        Template {
            params: v["Parameters"].as_object().expect("checked"),
            resources: v["Resources"].as_object().expect("checked"),
        }
    }
    fn of_type(&self, ty: &str) -> Vec<(&'a str, &'a Value)> {
        self.resources
            .iter()
            .filter(|(_, r)| r["Type"] == ty)
            .map(|(id, r)| (id.as_str(), r))
            .collect()
    }
    fn is_type(&self, id: &str, ty: &str) -> bool {
        self.resources.get(id).is_some_and(|r| r["Type"] == ty)
    }
    fn props(&self, id: &str) -> &'a Value {
        &self.resources[id]["Properties"]
    }
}

fn ref_of(v: &Value) -> Option<&str> {
    v.get("Ref").and_then(Value::as_str)
}

fn getatt_of(v: &Value) -> Option<(&str, &str)> {
    match v.get("Fn::GetAtt")? {
        Value::Array(a) if a.len() == 2 => Some((a[0].as_str()?, a[1].as_str()?)),
        Value::String(s) => s.split_once('.'),
        _ => None,
    }
}

/// The template string of an `Fn::Sub` (either form), or a plain string.
fn sub_text(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => match o.get("Fn::Sub")? {
            Value::String(s) => Some(s),
            Value::Array(a) => a.first()?.as_str(),
            _ => None,
        },
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Null => vec![],
        other => vec![other],
    }
}

/// A short, readable rendering of a value for messages.
fn show(v: &Value) -> String {
    if let Some(s) = v.as_str() {
        return s.to_string();
    }
    if let Some(r) = ref_of(v) {
        return format!("Ref {r}");
    }
    if let Some((id, a)) = getatt_of(v) {
        return format!("GetAtt {id}.{a}");
    }
    if let Some(s) = sub_text(v) {
        return format!("Sub {s}");
    }
    v.to_string()
}

fn env_name(queue: &str) -> String {
    queue.to_ascii_uppercase().replace('-', "_")
}

// ----------------------------------------------------------------------------- parameter files

/// A parameter file: its name and key → value.
struct ParamFile {
    name: String,
    values: BTreeMap<String, String>,
}

fn check_parameter_files(t: &Template, dir: &Path, r: &mut Report) -> Vec<ParamFile> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.ends_with(".parameters.example.json")
                        || n.ends_with(".parameters.private.json")
                })
            })
            .collect(),
        Err(e) => {
            r.fail(format!(
                "{}: cannot read the config dir: {e}",
                dir.display()
            ));
            return vec![];
        }
    };
    files.sort();
    r.check(
        files
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".parameters.example.json")),
        || format!("{}: no *.parameters.example.json", dir.display()),
    );
    let mut out = vec![];
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let private = name.ends_with(".parameters.private.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                r.fail(format!("{name}: cannot read: {e}"));
                continue;
            }
        };
        let list: Vec<Value> = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(a)) => a,
            Ok(_) => {
                r.fail(format!(
                    "{name}: must be a JSON list of {{ParameterKey, ParameterValue}}"
                ));
                continue;
            }
            Err(e) => {
                r.fail(format!("{name}: not valid JSON: {e}"));
                continue;
            }
        };
        let mut values = BTreeMap::new();
        for item in &list {
            let (Some(k), Some(v)) = (
                item["ParameterKey"].as_str(),
                item["ParameterValue"].as_str(),
            ) else {
                r.fail(format!(
                    "{name}: entry {item} needs string ParameterKey and ParameterValue"
                ));
                continue;
            };
            if values.insert(k.to_string(), v.to_string()).is_some() {
                r.fail(format!("{name}: parameter {k} is given twice"));
            }
        }
        for (key, def) in t.params {
            if def.get("Default").is_none() {
                r.check(values.contains_key(key), || {
                    format!("{name}: parameter {key} has no default and is not given")
                });
            }
        }
        for (key, value) in &values {
            let Some(def) = t.params.get(key) else {
                r.fail(format!(
                    "{name}: unknown parameter {key} (not in the template)"
                ));
                continue;
            };
            if let Some(allowed) = def["AllowedValues"].as_array() {
                let ok = allowed.iter().any(|a| match a {
                    Value::String(s) => s == value,
                    Value::Number(n) => n.to_string() == value.as_str(),
                    _ => false,
                });
                r.check(ok, || {
                    format!("{name}: {key}={value} is not one of its AllowedValues")
                });
            }
            if private {
                r.check(!value.contains("REPLACE"), || {
                    format!("{name}: {key} still holds a REPLACE placeholder ({value})")
                });
            }
        }
        if let Some(env) = name.split('.').next() {
            if ["staging", "production"].contains(&env) {
                r.check(
                    values.get("EnvironmentName").map(String::as_str) == Some(env),
                    || format!("{name}: EnvironmentName must be {env}"),
                );
            }
        }
        out.push(ParamFile { name, values });
    }
    out
}

// ------------------------------------------------------------------------------------ workers

/// What the budget and the maintenance checks need to know about a worker.
struct Worker {
    queue: String,
    function: String,
    reserved: Option<i64>,
    pool: u32,
    /// The queue it consumes (logical id).
    queue_id: Option<String>,
    /// `DATAMAILER_DATABASE_SECRET_ARN` (a secret's logical id).
    secret: Option<String>,
    /// `DATAMAILER_DATABASE_HOST`, as written in the template.
    db_host: Value,
}

fn check_workers(t: &Template, r: &mut Report) -> Vec<Worker> {
    let master_secrets = master_secret_ids(t);
    let mut workers = vec![];
    let mut consumed_queues = BTreeSet::new();
    let mut dlqs = BTreeSet::new();
    for (fid, f) in t.of_type("AWS::Lambda::Function") {
        let p = &f["Properties"];
        let env = &p["Environment"]["Variables"];
        let Some(queue) = env["DATAMAILER_QUEUE"].as_str() else {
            continue;
        };
        if env["DATAMAILER_LAMBDA_JOB"]
            .as_str()
            .is_some_and(|j| j != "queue")
        {
            r.fail(format!(
                "{fid}: sets both DATAMAILER_QUEUE and DATAMAILER_LAMBDA_JOB={}; a function does one job",
                show(&env["DATAMAILER_LAMBDA_JOB"])
            ));
            continue;
        }
        let queue = queue.to_string();
        r.check(QUEUES.contains(&queue.as_str()), || {
            format!("{fid}: DATAMAILER_QUEUE={queue} is not a queue the runtime knows")
        });
        r.check(p["Runtime"] == "provided.al2023", || {
            format!(
                "{fid}: Runtime must be provided.al2023 (the datamailer binary is the bootstrap)"
            )
        });
        r.check(p["Handler"] == "bootstrap", || {
            format!("{fid}: Handler must be bootstrap")
        });
        let arch_ok = p["Architectures"]
            .as_array()
            .is_some_and(|a| a.len() == 1 && ref_of(&a[0]) == Some("LambdaArchitecture"));
        r.check(arch_ok, || {
            format!("{fid}: Architectures must be [Ref LambdaArchitecture]")
        });
        r.check(env["DATAMAILER_QUEUE_BACKEND"] == "sqs", || {
            format!("{fid}: DATAMAILER_QUEUE_BACKEND must be sqs")
        });
        let sender = SENDER_QUEUES.contains(&queue.as_str());
        if sender {
            r.check(env["DATAMAILER_MAILER"] == "ses", || {
                format!("{fid}: a sender worker needs DATAMAILER_MAILER=ses")
            });
            r.check(!env["DATAMAILER_SES_MAX_SEND_RATE"].is_null(), || {
                format!("{fid}: a sender worker needs DATAMAILER_SES_MAX_SEND_RATE (the per-instance SES rate)")
            });
        } else {
            r.check(env["DATAMAILER_MAILER"] != "ses", || {
                format!("{fid}: only the transactional and campaign workers send mail (DATAMAILER_MAILER=ses)")
            });
        }
        let timeout = match &p["Timeout"] {
            Value::Null => 3,
            v => as_int(v).unwrap_or_else(|| {
                r.fail(format!("{fid}: Timeout must be a literal number"));
                3
            }),
        };
        // The deadline margin: sends stop at deadline − (SES timeout + 5 s), which must leave
        // at least as long again for the batch's work.
        let ses_timeout = match &env["DATAMAILER_SES_TIMEOUT_SECONDS"] {
            Value::Null => SES_TIMEOUT_DEFAULT,
            v => as_int(v).unwrap_or_else(|| {
                r.fail(format!(
                    "{fid}: DATAMAILER_SES_TIMEOUT_SECONDS must be a literal number"
                ));
                SES_TIMEOUT_DEFAULT
            }),
        };
        let margin = ses_timeout + SEND_STOP_MARGIN;
        r.check(timeout >= 2 * margin, || {
            format!(
                "{fid}: Timeout {timeout} s is below 2 × (SES timeout {ses_timeout} s + {SEND_STOP_MARGIN} s) = {} s: the worker stops starting SES sends {margin} s before its deadline, which must leave at least as long for the batch",
                2 * margin
            )
        });
        let reserved = as_int(&p["ReservedConcurrentExecutions"]);
        r.check(reserved.is_some_and(|n| n >= 1), || {
            format!("{fid}: ReservedConcurrentExecutions must be a literal number ≥ 1 (it bounds Postgres connections)")
        });
        let pool = match &env["DATAMAILER_DB_MAX_CONNECTIONS"] {
            Value::Null => LAMBDA_POOL_DEFAULT,
            v => as_int(v).map(|n| n.max(0) as u32).unwrap_or_else(|| {
                r.fail(format!(
                    "{fid}: DATAMAILER_DB_MAX_CONNECTIONS must be a literal number"
                ));
                LAMBDA_POOL_DEFAULT
            }),
        };

        // The event source mapping.
        let mappings: Vec<(&str, &Value)> = t
            .of_type("AWS::Lambda::EventSourceMapping")
            .into_iter()
            .filter(|(_, m)| {
                let f = &m["Properties"]["FunctionName"];
                ref_of(f) == Some(fid) || getatt_of(f).is_some_and(|(id, _)| id == fid)
            })
            .collect();
        r.check(mappings.len() == 1, || {
            format!(
                "{fid}: needs exactly one event source mapping, found {}",
                mappings.len()
            )
        });
        let mut queue_id = None;
        for (mid, m) in &mappings {
            let mp = &m["Properties"];
            let frt = mp["FunctionResponseTypes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "ReportBatchItemFailures"));
            r.check(frt, || {
                format!("{mid}: FunctionResponseTypes must include ReportBatchItemFailures (partial batch failures)")
            });
            match &mp["ScalingConfig"]["MaximumConcurrency"] {
                Value::Null => {}
                v => match as_int(v) {
                    Some(n) => {
                        r.check((2..=1000).contains(&n), || {
                            format!("{mid}: ScalingConfig.MaximumConcurrency {n} is outside AWS's range 2..=1000")
                        });
                        if let Some(res) = reserved {
                            r.check(n <= res, || {
                                format!("{mid}: ScalingConfig.MaximumConcurrency {n} exceeds {fid}'s ReservedConcurrentExecutions {res} (throttles would push messages to the DLQ)")
                            });
                        }
                    }
                    None => r.fail(format!(
                        "{mid}: ScalingConfig.MaximumConcurrency must be a literal number"
                    )),
                },
            }
            match getatt_of(&mp["EventSourceArn"]) {
                Some((qid, "Arn")) if t.is_type(qid, "AWS::SQS::Queue") => {
                    queue_id = Some(qid.to_string())
                }
                _ => r.fail(format!(
                    "{mid}: EventSourceArn must be GetAtt <queue>.Arn of a queue in this template"
                )),
            }
        }

        // Its queue, DLQ and redrive.
        let mut dlq_id = None;
        if let Some(qid) = &queue_id {
            consumed_queues.insert(qid.clone());
            let qp = t.props(qid);
            r.check(
                sub_text(&qp["QueueName"]).is_some_and(|n| n.ends_with(queue.as_str())),
                || format!("{qid}: QueueName must end with {queue} (the queue {fid} works)"),
            );
            match &qp["RedrivePolicy"] {
                Value::Null => r.fail(format!(
                    "{qid}: no RedrivePolicy: a message that keeps failing would cycle forever instead of landing in a DLQ"
                )),
                rp => {
                    match getatt_of(&rp["deadLetterTargetArn"]) {
                        Some((d, "Arn")) if t.is_type(d, "AWS::SQS::Queue") && d != qid => {
                            dlq_id = Some(d.to_string());
                            dlqs.insert(d.to_string());
                        }
                        _ => r.fail(format!(
                            "{qid}: RedrivePolicy.deadLetterTargetArn must be GetAtt <its DLQ>.Arn of another queue in this template"
                        )),
                    }
                    let mrc = as_int(&rp["maxReceiveCount"]);
                    r.check(mrc.is_some_and(|n| (1..=10).contains(&n)), || {
                        format!("{qid}: RedrivePolicy.maxReceiveCount must be a number from 1 to 10")
                    });
                }
            }
            let visibility = match &qp["VisibilityTimeout"] {
                Value::Null => Some(30),
                v => as_int(v),
            };
            match visibility {
                Some(v) => r.check(v >= 6 * timeout, || {
                    format!("{qid}: VisibilityTimeout {v} s is below 6 × {fid}'s Timeout {timeout} s = {} s", 6 * timeout)
                }),
                None => r.fail(format!("{qid}: VisibilityTimeout must be a literal number")),
            }
            let qenv = env_name(&queue);
            r.check(
                ref_of(&env[format!("SQS_{qenv}_QUEUE_URL")]) == Some(qid.as_str()),
                || format!("{fid}: SQS_{qenv}_QUEUE_URL must be Ref {qid}"),
            );
            if dlq_id.is_none() {
                // Without a redrive policy (reported above) the function's DLQ variable still
                // says which queue is its DLQ, so the role check does not report it twice.
                dlq_id = ref_of(&env[format!("SQS_{qenv}_DLQ_URL")])
                    .filter(|d| t.is_type(d, "AWS::SQS::Queue"))
                    .map(str::to_string);
            } else if let Some(d) = &dlq_id {
                r.check(
                    ref_of(&env[format!("SQS_{qenv}_DLQ_URL")]) == Some(d.as_str()),
                    || format!("{fid}: SQS_{qenv}_DLQ_URL must be Ref {d}"),
                );
            }
        }

        // The database secret.
        let secret_id = ref_of(&env["DATAMAILER_DATABASE_SECRET_ARN"])
            .filter(|s| t.is_type(s, "AWS::SecretsManager::Secret"))
            .map(str::to_string);
        match &secret_id {
            None => r.fail(format!(
                "{fid}: DATAMAILER_DATABASE_SECRET_ARN must be Ref <the worker database secret>"
            )),
            Some(s) => r.check(!master_secrets.contains(s), || {
                format!("{fid}: DATAMAILER_DATABASE_SECRET_ARN must not be the master secret {s} (workers use datamailer_worker)")
            }),
        }

        // Its log group.
        let log_group = own_log_group(t, p);
        match &log_group {
            None => r.fail(format!(
                "{fid}: needs its own AWS::Logs::LogGroup (LoggingConfig.LogGroup or /aws/lambda/<function name>)"
            )),
            Some((lid, _)) => r.check(!t.props(lid)["RetentionInDays"].is_null(), || {
                format!("{lid}: RetentionInDays must be set")
            }),
        }

        // Its role.
        match getatt_of(&p["Role"]) {
            Some((rid, "Arn")) if t.is_type(rid, "AWS::IAM::Role") => check_role(
                t,
                r,
                &RoleScope {
                    role: rid,
                    function: fid,
                    queue: queue_id.as_deref(),
                    dlq: dlq_id.as_deref(),
                    log_group: log_group
                        .as_ref()
                        .map(|(id, name)| (id.as_str(), name.as_str())),
                    secret: secret_id.as_deref(),
                    sender,
                },
            ),
            _ => r.fail(format!(
                "{fid}: Role must be GetAtt <its own role>.Arn of a role in this template"
            )),
        }
        workers.push(Worker {
            queue,
            function: fid.to_string(),
            reserved,
            pool,
            queue_id,
            secret: secret_id,
            db_host: env["DATAMAILER_DATABASE_HOST"].clone(),
        });
    }
    // One worker per queue, one role per worker.
    for q in QUEUES {
        let n = workers.iter().filter(|w| w.queue == *q).count();
        r.check(n == 1, || {
            format!("template: queue {q} needs exactly one worker function, found {n}")
        });
    }
    let mut roles = BTreeMap::new();
    for w in &workers {
        if let Some((rid, _)) = getatt_of(&t.props(&w.function)["Role"]) {
            if let Some(other) = roles.insert(rid.to_string(), w.function.clone()) {
                r.fail(format!(
                    "{rid}: shared by {other} and {}: each worker needs its own role",
                    w.function
                ));
            }
        }
    }
    // Any other queue that is not a DLQ needs a redrive policy too.
    for (qid, q) in t.of_type("AWS::SQS::Queue") {
        if consumed_queues.contains(qid) || dlqs.contains(qid) || qid.ends_with("DLQ") {
            continue;
        }
        r.check(!q["Properties"]["RedrivePolicy"].is_null(), || {
            format!("{qid}: no RedrivePolicy (every queue that is not a DLQ needs one)")
        });
    }
    workers
}

/// The secrets used as the DB master credentials (referenced by the DB instance).
fn master_secret_ids(t: &Template) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, db) in t.of_type("AWS::RDS::DBInstance") {
        for key in ["MasterUserPassword", "MasterUsername"] {
            if let Some(s) = sub_text(&db["Properties"][key]) {
                if let Some(rest) = s.split("{{resolve:secretsmanager:${").nth(1) {
                    if let Some(id) = rest.split('}').next() {
                        out.insert(id.to_string());
                    }
                }
            }
        }
    }
    out
}

/// The function's log group: (logical id, name template).
fn own_log_group(t: &Template, p: &Value) -> Option<(String, String)> {
    let name_of = |lid: &str| {
        sub_text(&t.props(lid)["LogGroupName"])
            .unwrap_or_default()
            .to_string()
    };
    if let Some(lid) = ref_of(&p["LoggingConfig"]["LogGroup"]) {
        if t.is_type(lid, "AWS::Logs::LogGroup") {
            return Some((lid.to_string(), name_of(lid)));
        }
    }
    let fname = sub_text(&p["FunctionName"])?;
    let want = format!("/aws/lambda/{fname}");
    t.of_type("AWS::Logs::LogGroup")
        .into_iter()
        .find(|(lid, _)| name_of(lid) == want)
        .map(|(lid, _)| (lid.to_string(), want))
}

/// Every role of a function or service is trusted by that service alone and keeps its
/// permissions inline: no managed policies, no separate policy resources attached to it.
fn check_role_basics(t: &Template, r: &mut Report, rid: &str, service: &str, what: &str) {
    let p = t.props(rid);
    let trust_ok = as_list(&p["AssumeRolePolicyDocument"]["Statement"])
        .iter()
        .all(|st| {
            as_list(&st["Principal"]["Service"])
                .iter()
                .all(|v| *v == service)
                && st["Principal"].get("AWS").is_none()
        });
    r.check(trust_ok, || {
        format!("{rid}: only {service} may assume {what}")
    });
    r.check(
        p["ManagedPolicyArns"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        || format!("{rid}: no managed policies on {what} (they grant more than it needs)"),
    );
    for (pid, pol) in t
        .of_type("AWS::IAM::Policy")
        .into_iter()
        .chain(t.of_type("AWS::IAM::ManagedPolicy"))
        .chain(t.of_type("AWS::IAM::RolePolicy"))
    {
        let pp = &pol["Properties"];
        let attaches = as_list(&pp["Roles"]).iter().any(|v| ref_of(v) == Some(rid))
            || ref_of(&pp["RoleName"]) == Some(rid);
        r.check(!attaches, || {
            format!("{pid}: attaches a policy to {what} {rid}; keep its permissions in the role's inline policy")
        });
    }
}

struct RoleScope<'a> {
    role: &'a str,
    function: &'a str,
    queue: Option<&'a str>,
    dlq: Option<&'a str>,
    log_group: Option<(&'a str, &'a str)>,
    secret: Option<&'a str>,
    sender: bool,
}

/// A worker role is scoped exactly: trusted by Lambda only; inline policies only (no managed
/// policies, no separate policy resources); the consume actions on its own queue, SendMessage on
/// its own DLQ, log writes on its own log group, GetSecretValue on the worker secret, SES sends
/// only for the two senders (on identity / configuration-set ARNs, without the
/// `ses:FromAddress` condition that blocked per-client senders), the VPC ENI actions — the only
/// ones allowed on `*` — and nothing else.
fn check_role(t: &Template, r: &mut Report, s: &RoleScope) {
    let rid = s.role;
    let p = t.props(rid);
    check_role_basics(t, r, rid, "lambda.amazonaws.com", "a worker role");

    let mut granted: BTreeSet<String> = BTreeSet::new();
    for policy in as_list(&p["Policies"]) {
        for st in as_list(&policy["PolicyDocument"]["Statement"]) {
            if st["Effect"] != "Allow" {
                continue;
            }
            let sid = st["Sid"].as_str().unwrap_or("(no Sid)");
            if st.get("NotAction").is_some() || st.get("NotResource").is_some() {
                r.fail(format!(
                    "{rid}: statement {sid} uses NotAction/NotResource, which grants everything else"
                ));
                continue;
            }
            let resources = as_list(&st["Resource"]);
            let has_from_condition = st["Condition"].to_string().contains("ses:FromAddress");
            for action in as_list(&st["Action"]) {
                let Some(action) = action.as_str() else {
                    r.fail(format!("{rid}: statement {sid} has a non-string action"));
                    continue;
                };
                let a = action.to_ascii_lowercase();
                if a.contains('*') {
                    r.fail(format!(
                        "{rid}: wildcard action {action} in statement {sid}; list the actions"
                    ));
                    continue;
                }
                let eni = ENI_ACTIONS.contains(&a.as_str());
                for res in &resources {
                    if *res == "*" && !eni {
                        r.fail(format!("{rid}: {action} on resource * in statement {sid}: only the VPC ENI actions may use *"));
                    }
                }
                let only = |r: &mut Report, ok: &dyn Fn(&Value) -> bool, what: &str| {
                    for res in &resources {
                        if *res != "*" && !ok(res) {
                            r.fail(format!(
                                "{rid}: {action} on {} in statement {sid}; only {what} is allowed",
                                show(res)
                            ));
                        }
                    }
                };
                if CONSUME_ACTIONS.contains(&a.as_str()) {
                    let q = s.queue.unwrap_or("?");
                    only(
                        r,
                        &|v| getatt_of(v) == Some((q, "Arn")),
                        &format!("its own queue {q}"),
                    );
                    granted.insert(a.clone());
                } else if a == "sqs:sendmessage" {
                    let d = s.dlq.unwrap_or("?");
                    only(
                        r,
                        &|v| getatt_of(v) == Some((d, "Arn")),
                        &format!("its own DLQ {d}"),
                    );
                    granted.insert("sqs:sendmessage".into());
                } else if a.starts_with("sqs:") {
                    r.fail(format!(
                        "{rid}: {action} is not needed by a worker (statement {sid})"
                    ));
                } else if LOG_ACTIONS.contains(&a.as_str()) {
                    let (lid, name) = s.log_group.unwrap_or(("?", "?"));
                    only(
                        r,
                        &|v| {
                            getatt_of(v) == Some((lid, "Arn"))
                                || sub_text(v).is_some_and(|t| {
                                    t.contains(&format!(":log-group:{name}:"))
                                        || t.ends_with(&format!(":log-group:{name}"))
                                })
                        },
                        &format!("its own log group {lid}"),
                    );
                    granted.insert(a.clone());
                } else if a.starts_with("logs:") {
                    r.fail(format!("{rid}: {action} is not needed by a worker (its log group is created by the template; statement {sid})"));
                } else if SES_ACTIONS.contains(&a.as_str()) {
                    if !s.sender {
                        r.fail(format!("{rid}: {action}: only the transactional and campaign workers may send mail"));
                        continue;
                    }
                    if has_from_condition {
                        r.fail(format!("{rid}: statement {sid} restricts ses:FromAddress, which blocks the clients' own sender addresses; scope by identity and configuration-set ARNs instead"));
                    }
                    only(
                        r,
                        &|v| {
                            ref_of(v).is_some_and(|p| t.params.contains_key(p))
                                || sub_text(v).is_some_and(|t| {
                                    t.contains(":identity/") || t.contains(":configuration-set/")
                                })
                        },
                        "SES identity or configuration-set ARNs",
                    );
                    granted.insert("ses".into());
                } else if a.starts_with("ses:") {
                    r.fail(format!(
                        "{rid}: {action} is not needed by a worker (statement {sid})"
                    ));
                } else if a == "secretsmanager:getsecretvalue" {
                    let sec = s.secret.unwrap_or("?");
                    only(
                        r,
                        &|v| ref_of(v) == Some(sec),
                        &format!("the worker database secret {sec}"),
                    );
                    granted.insert("secret".into());
                } else if eni {
                    granted.insert("eni".into());
                } else {
                    r.fail(format!(
                        "{rid}: {action} is not allowed for a worker (statement {sid})"
                    ));
                }
            }
        }
    }
    let fid = s.function;
    for a in CONSUME_ACTIONS {
        r.check(granted.contains(*a), || {
            format!("{rid}: lacks {a} on its queue ({fid} could not work it)")
        });
    }
    r.check(granted.contains("sqs:sendmessage"), || {
        format!(
            "{rid}: lacks sqs:SendMessage on its DLQ (poison messages could not be dead-lettered)"
        )
    });
    for a in LOG_ACTIONS {
        r.check(granted.contains(*a), || {
            format!("{rid}: lacks {a} on its log group")
        });
    }
    r.check(granted.contains("secret"), || {
        format!("{rid}: lacks secretsmanager:GetSecretValue on the worker database secret")
    });
    r.check(granted.contains("eni"), || {
        format!("{rid}: lacks the VPC ENI actions a function in a VPC needs")
    });
    if s.sender {
        r.check(granted.contains("ses"), || {
            format!("{rid}: a sender worker lacks ses:SendEmail/ses:SendRawEmail")
        });
    }
}

// ----------------------------------------------------------------------------- SES event path

fn check_ses_event_path(t: &Template, r: &mut Report) {
    let Some(qid) = t
        .of_type("AWS::Lambda::Function")
        .into_iter()
        .find_map(|(fid, f)| {
            (f["Properties"]["Environment"]["Variables"]["DATAMAILER_QUEUE"] == "ses-webhooks")
                .then(|| {
                    t.of_type("AWS::Lambda::EventSourceMapping")
                        .into_iter()
                        .find(|(_, m)| ref_of(&m["Properties"]["FunctionName"]) == Some(fid))
                        .and_then(|(_, m)| getatt_of(&m["Properties"]["EventSourceArn"]))
                        .map(|(q, _)| q)
                })
                .flatten()
        })
    else {
        return; // reported by check_workers
    };
    let subs: Vec<(&str, &Value)> = t
        .of_type("AWS::SNS::Subscription")
        .into_iter()
        .filter(|(_, s)| getatt_of(&s["Properties"]["Endpoint"]) == Some((qid, "Arn")))
        .collect();
    r.check(!subs.is_empty(), || {
        format!("{qid}: no SNS subscription delivers the SES events topic to it")
    });
    for (sid, s) in &subs {
        let sp = &s["Properties"];
        r.check(sp["Protocol"] == "sqs", || {
            format!("{sid}: Protocol must be sqs")
        });
        r.check(
            sp["RawMessageDelivery"].is_null()
                || sp["RawMessageDelivery"] == false
                || sp["RawMessageDelivery"] == "false",
            || format!("{sid}: RawMessageDelivery must be off (the worker reads the SNS envelope)"),
        );
        let Some(topic) = ref_of(&sp["TopicArn"]) else {
            r.fail(format!(
                "{sid}: TopicArn must be Ref <the SES events topic>"
            ));
            continue;
        };
        let allowed = t
            .of_type("AWS::SQS::QueuePolicy")
            .into_iter()
            .any(|(_, qp)| {
                let pp = &qp["Properties"];
                as_list(&pp["Queues"])
                    .iter()
                    .any(|q| ref_of(q) == Some(qid))
                    && as_list(&pp["PolicyDocument"]["Statement"])
                        .iter()
                        .any(|st| {
                            st["Effect"] == "Allow"
                                && as_list(&st["Action"])
                                    .iter()
                                    .any(|a| *a == "sqs:SendMessage")
                                && st["Condition"]
                                    .to_string()
                                    .contains(&format!("{{\"Ref\":\"{topic}\"}}"))
                        })
            });
        r.check(allowed, || {
            format!("{qid}: no queue policy lets topic {topic} sqs:SendMessage to it (with aws:SourceArn)")
        });
        let destination = t
            .of_type("AWS::SES::ConfigurationSetEventDestination")
            .into_iter()
            .any(|(_, d)| {
                ref_of(&d["Properties"]["EventDestination"]["SnsDestination"]["TopicARN"])
                    == Some(topic)
            });
        r.check(destination, || {
            format!("{topic}: no SES configuration set event destination publishes to it")
        });
    }
}

// ----------------------------------------------------------------------------------- database

fn check_database(t: &Template, param_files: &[ParamFile], r: &mut Report) {
    let dbs = t.of_type("AWS::RDS::DBInstance");
    r.check(dbs.len() == 1, || {
        format!(
            "template: expected one AWS::RDS::DBInstance, found {}",
            dbs.len()
        )
    });
    for (id, db) in dbs {
        let p = &db["Properties"];
        r.check(db["DeletionPolicy"] == "Snapshot", || {
            format!("{id}: DeletionPolicy must be Snapshot")
        });
        r.check(db["UpdateReplacePolicy"] == "Snapshot", || {
            format!("{id}: UpdateReplacePolicy must be Snapshot")
        });
        r.check(p["StorageEncrypted"] == true, || {
            format!("{id}: StorageEncrypted must be true")
        });
        r.check(p["PubliclyAccessible"] == false, || {
            format!("{id}: PubliclyAccessible must be false")
        });
        r.check(!p["BackupRetentionPeriod"].is_null(), || {
            format!("{id}: BackupRetentionPeriod must be set (automated backups)")
        });
        let multi_az = ref_of(&p["MultiAZ"]).filter(|name| {
            t.params.get(*name).is_some_and(|def| {
                let mut allowed: Vec<&str> = as_list(&def["AllowedValues"])
                    .into_iter()
                    .filter_map(Value::as_str)
                    .collect();
                allowed.sort();
                allowed == ["false", "true"]
            })
        });
        r.check(multi_az.is_some(), || {
            format!(
                "{id}: MultiAZ is {}; it must be Ref a parameter with AllowedValues true/false (DBMultiAZ) so production can run a standby",
                show(&p["MultiAZ"])
            )
        });
        if let Some(name) = multi_az {
            for f in param_files
                .iter()
                .filter(|f| f.name.starts_with("production."))
            {
                r.check(
                    f.values.get(name).map(String::as_str) == Some("true"),
                    || {
                        format!(
                            "{}: {name} must be true (production runs a standby in a second AZ)",
                            f.name
                        )
                    },
                );
            }
        }
        r.check(
            p["Engine"] == "postgres"
                && (ref_of(&p["EngineVersion"]).is_some()
                    || p["EngineVersion"]
                        .as_str()
                        .is_some_and(|v| v.starts_with("16"))),
            || format!("{id}: must be Postgres 16"),
        );
    }
}

// -------------------------------------------------------------------------- connection budget

fn max_connections(class: &str) -> Option<u32> {
    MAX_CONNECTIONS
        .iter()
        .find(|(c, _)| *c == class)
        .map(|(_, n)| *n)
}

fn web_pool(config_dir: &Path, r: &mut Report) -> u32 {
    let path = config_dir.join("web.env.example");
    let Ok(text) = std::fs::read_to_string(&path) else {
        r.fail(format!(
            "{}: missing (the web pool of the connection budget)",
            path.display()
        ));
        return WEB_POOL_DEFAULT;
    };
    for line in text.lines() {
        if let Some(v) = line.trim().strip_prefix("DATAMAILER_DB_MAX_CONNECTIONS=") {
            return v.trim().parse().unwrap_or_else(|_| {
                r.fail(format!(
                    "web.env.example: DATAMAILER_DB_MAX_CONNECTIONS={v} is not a number"
                ));
                WEB_POOL_DEFAULT
            });
        }
    }
    WEB_POOL_DEFAULT
}

fn check_connection_budget(
    t: &Template,
    workers: &[Worker],
    jobs: &jobs::Jobs,
    config_dir: &Path,
    param_files: &[ParamFile],
    r: &mut Report,
) {
    let web = web_pool(config_dir, r);
    let class_param = &t.params.get("DBInstanceClass");
    let Some(class_param) = class_param else {
        r.fail(
            "template: parameter DBInstanceClass is missing (the connection budget needs it)"
                .into(),
        );
        return;
    };
    for allowed in class_param["AllowedValues"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let c = allowed.as_str().unwrap_or_default();
        r.check(max_connections(c).is_some(), || {
            format!("DBInstanceClass: AllowedValue {c} has no max_connections entry in validate.rs's MAX_CONNECTIONS table")
        });
    }
    let mut sources: Vec<(String, String)> = vec![];
    if let Some(d) = class_param["Default"].as_str() {
        sources.push((d.to_string(), "template default".into()));
    }
    for f in param_files {
        if let Some(c) = f.values.get("DBInstanceClass") {
            sources.push((c.clone(), f.name.clone()));
        }
    }
    let mut terms = vec![format!("web {web}")];
    let mut total = web;
    for w in workers {
        let res = w.reserved.unwrap_or(0).max(0) as u32;
        total += res * w.pool;
        terms.push(format!("{} {res}×{}", w.queue, w.pool));
    }
    // By name: the template's resource order depends on serde_json's `preserve_order`
    // feature, which the workspace may or may not unify in.
    let mut budget: Vec<_> = jobs.budget.iter().collect();
    budget.sort();
    for (name, reserved, pool) in budget {
        total += reserved * pool;
        terms.push(format!("{name} {reserved}×{pool}"));
    }
    for (class, source) in sources {
        let Some(max) = max_connections(&class) else {
            r.fail(format!(
                "{source}: DBInstanceClass {class} is not in the max_connections table"
            ));
            continue;
        };
        let limit = max.saturating_sub(CONNECTION_HEADROOM);
        r.check(total <= limit, || {
            format!(
                "connection budget ({class}, {source}): {} = {total} > max_connections {max} − headroom {CONNECTION_HEADROOM} = {limit}; lower ReservedConcurrentExecutions or the pools, or pick a larger DBInstanceClass",
                terms.join(" + ")
            )
        });
    }
}

// ------------------------------------------------------------------------------------ metrics

/// One metric an alarm or the dashboard uses.
struct UsedMetric {
    /// The resource.
    at: String,
    namespace: String,
    name: String,
    /// The dimension names it is named with.
    dimensions: BTreeSet<String>,
}

fn alarm_dimensions(dims: &Value) -> BTreeSet<String> {
    as_list(dims)
        .iter()
        .filter_map(|d| d["Name"].as_str().map(str::to_string))
        .collect()
}

/// Every metric the alarms and the dashboard use.
fn used_metrics(t: &Template) -> Vec<UsedMetric> {
    let mut out = vec![];
    for (id, a) in t.of_type("AWS::CloudWatch::Alarm") {
        let p = &a["Properties"];
        if let (Some(ns), Some(m)) = (p["Namespace"].as_str(), p["MetricName"].as_str()) {
            out.push(UsedMetric {
                at: id.to_string(),
                namespace: ns.to_string(),
                name: m.to_string(),
                dimensions: alarm_dimensions(&p["Dimensions"]),
            });
        }
        for q in as_list(&p["Metrics"]) {
            let m = &q["MetricStat"]["Metric"];
            if let (Some(ns), Some(name)) = (m["Namespace"].as_str(), m["MetricName"].as_str()) {
                out.push(UsedMetric {
                    at: id.to_string(),
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    dimensions: alarm_dimensions(&m["Dimensions"]),
                });
            }
        }
    }
    for (id, d) in t.of_type("AWS::CloudWatch::Dashboard") {
        let Some(body) = sub_text(&d["Properties"]["DashboardBody"]) else {
            continue;
        };
        let Ok(body) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        for w in as_list(&body["widgets"]) {
            let mut prev: Vec<String> = vec![];
            for row in as_list(&w["properties"]["metrics"]) {
                let Some(items) = row.as_array() else {
                    continue;
                };
                let strs: Vec<String> = items
                    .iter()
                    .take_while(|v| v.is_string())
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect();
                let resolved: Vec<String> = strs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        if s == "." {
                            prev.get(i).cloned().unwrap_or_default()
                        } else {
                            s.clone()
                        }
                    })
                    .collect();
                if resolved.len() >= 2 {
                    out.push(UsedMetric {
                        at: id.to_string(),
                        namespace: resolved[0].clone(),
                        name: resolved[1].clone(),
                        dimensions: resolved[2..].iter().step_by(2).cloned().collect(),
                    });
                }
                prev = resolved;
            }
        }
    }
    out
}

fn check_metrics(t: &Template, opts: &Options, r: &mut Report) {
    let emitted: BTreeSet<&str> = opts.emitted_metrics.iter().map(String::as_str).collect();
    let agent = std::fs::read_to_string(opts.host_dir.join("amazon-cloudwatch-agent.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok());
    let agent_file = opts.host_dir.join("amazon-cloudwatch-agent.json");
    let mut seen = BTreeSet::new();
    let mut reported = BTreeSet::new();
    for used in used_metrics(t) {
        let UsedMetric {
            at: id,
            namespace: ns,
            name: metric,
            dimensions,
        } = used;
        if ns.starts_with("AWS/") {
            continue;
        }
        if ns != CUSTOM_NAMESPACE {
            r.fail(format!(
                "{id}: custom namespace {ns}: our code publishes only into {CUSTOM_NAMESPACE}"
            ));
            continue;
        }
        r.check(emitted.contains(metric.as_str()), || {
            format!("{id}: metric {metric} is not emitted by the code (not in datamailer_runtime::telemetry::EMITTED_METRICS)")
        });
        let source = INFRA_METRICS
            .iter()
            .find(|(n, _)| *n == metric)
            .map(|(_, s)| *s);
        r.check(source.is_some(), || {
            format!("{id}: metric {metric} is not listed in datamailer_deploy::validate::INFRA_METRICS (say how it reaches CloudWatch)")
        });
        if source == Some(MetricSource::WebHostScrape) && seen.insert(metric.clone()) {
            r.check(agent_publishes(agent.as_ref(), &metric), || {
                format!("{}: the CloudWatch agent does not publish {metric} into {CUSTOM_NAMESPACE} (prometheus emf_processor metric_selectors), so {id} would never see data", agent_file.display())
            });
        }
        // CloudWatch names a metric by all its dimensions: any other set never sees data.
        let dims = || dimensions.iter().cloned().collect::<Vec<_>>().join(",");
        match source {
            Some(MetricSource::LambdaEmf) => {
                if let Some(labels) = crate::dashboards::labels(&metric) {
                    let labels: BTreeSet<String> = labels.iter().map(|s| s.to_string()).collect();
                    if labels != dimensions && reported.insert((id.clone(), metric.clone())) {
                        r.fail(format!(
                            "{id}: metric {metric} with dimensions [{}]: the Lambda functions publish it (EMF) with its labels [{}] as dimensions",
                            dims(),
                            labels.iter().cloned().collect::<Vec<_>>().join(",")
                        ));
                    }
                }
            }
            Some(MetricSource::WebHostScrape) => {
                let sets = agent_dimension_sets(agent.as_ref(), &metric);
                if !sets.is_empty()
                    && !sets.contains(&dimensions)
                    && reported.insert((id.clone(), metric.clone()))
                {
                    r.fail(format!(
                        "{id}: metric {metric} with dimensions [{}]: the CloudWatch agent publishes it with {:?} ({})",
                        dims(),
                        sets,
                        agent_file.display()
                    ));
                }
            }
            None => {}
        }
    }
    for (name, _) in INFRA_METRICS {
        r.check(emitted.contains(name), || {
            format!("INFRA_METRICS: {name} is not emitted by the code (not in EMITTED_METRICS)")
        });
    }
    // The dashboard is generated (deploy/src/dashboards.rs), never edited in the template.
    let generated = crate::dashboards::cloudwatch_body_json();
    for (id, d) in t.of_type("AWS::CloudWatch::Dashboard") {
        let body = sub_text(&d["Properties"]["DashboardBody"]);
        r.check(body == Some(generated.as_str()), || {
            format!("{id}: DashboardBody is not what deploy/src/dashboards.rs generates (change the source, then DATAMAILER_BLESS_DASHBOARDS=1 cargo test -p datamailer-deploy --test dashboards)")
        });
    }
}

/// The dimension sets the CloudWatch agent publishes a web-host metric with.
fn agent_dimension_sets(agent: Option<&Value>, metric: &str) -> Vec<BTreeSet<String>> {
    let Some(agent) = agent else { return vec![] };
    let prom = &agent["logs"]["metrics_collected"]["prometheus"]["emf_processor"];
    let mut out = vec![];
    for d in as_list(&prom["metric_declaration"]) {
        let selected = as_list(&d["metric_selectors"]).iter().any(|sel| {
            sel.as_str()
                .and_then(|s| regex::Regex::new(s).ok())
                .is_some_and(|re| re.is_match(metric))
        });
        if selected {
            for set in as_list(&d["dimensions"]) {
                out.push(
                    as_list(set)
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                );
            }
        }
    }
    out
}

fn agent_publishes(agent: Option<&Value>, metric: &str) -> bool {
    let Some(agent) = agent else { return false };
    let prom = &agent["logs"]["metrics_collected"]["prometheus"]["emf_processor"];
    if prom["metric_namespace"] != CUSTOM_NAMESPACE {
        return false;
    }
    as_list(&prom["metric_declaration"]).iter().any(|d| {
        as_list(&d["metric_selectors"]).iter().any(|sel| {
            sel.as_str()
                .and_then(|s| regex::Regex::new(s).ok())
                .is_some_and(|re| re.is_match(metric))
        })
    })
}
