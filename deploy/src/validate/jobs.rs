//! The functions that are not queue workers: the migrate job (`DATAMAILER_LAMBDA_JOB=migrate`,
//! the only holder of the database master credential) and the scheduled maintenance
//! (`DATAMAILER_LAMBDA_JOB=maintenance`), with its schedule, the schedule's role and its alarms.

use serde_json::Value;

use super::{
    as_int, as_list, check_role_basics, env_name, getatt_of, master_secret_ids, own_log_group,
    ref_of, show, sub_text, Report, Template, Worker, ENI_ACTIONS, LAMBDA_POOL_DEFAULT,
    LOG_ACTIONS, MIGRATE_POOL, QUEUES,
};

/// A job function and its role (logical ids).
pub(super) struct JobFn {
    pub function: String,
    pub role: Option<String>,
}

/// What the other checks need to know about the jobs.
#[derive(Default)]
pub(super) struct Jobs {
    pub migrate: Option<JobFn>,
    /// The app secret the migrate function sets up: the only one the web host may read.
    pub app_secret: Option<String>,
    pub maintenance: Option<JobFn>,
    /// Roles of schedules that target the maintenance function.
    pub scheduler_roles: Vec<String>,
    /// (name, reserved concurrency, pool) terms of the connection budget.
    pub budget: Vec<(String, u32, u32)>,
}

const JOBS: &[&str] = &["migrate", "maintenance"];
/// Actions the maintenance role needs on each source queue (it re-enqueues rows).
const REENQUEUE_ACTIONS: &[&str] = &["sqs:sendmessage", "sqs:getqueueattributes"];

pub(super) fn check_jobs(t: &Template, workers: &[Worker], r: &mut Report) -> Jobs {
    let mut jobs = Jobs::default();
    let mut found: Vec<(&str, &str)> = vec![];
    for (fid, f) in t.of_type("AWS::Lambda::Function") {
        let env = &f["Properties"]["Environment"]["Variables"];
        match (env["DATAMAILER_QUEUE"].as_str(), env["DATAMAILER_LAMBDA_JOB"].as_str()) {
            (Some(_), _) => {} // a queue worker (check_workers)
            (None, Some(job)) if JOBS.contains(&job) => found.push((fid, job)),
            (None, Some(job)) => r.fail(format!(
                "{fid}: DATAMAILER_LAMBDA_JOB={job} is not a job the binary runs ({})",
                JOBS.join(", ")
            )),
            (None, None) => r.fail(format!(
                "{fid}: sets neither DATAMAILER_QUEUE nor DATAMAILER_LAMBDA_JOB; every function here is a queue worker or a job"
            )),
        }
    }
    for job in JOBS {
        let n = found.iter().filter(|(_, j)| j == job).count();
        r.check(n == 1, || {
            format!(
                "template: needs exactly one function with DATAMAILER_LAMBDA_JOB={job}, found {n}"
            )
        });
    }
    let reference = workers.first().map(|w| t.props(&w.function));
    for (fid, job) in found {
        let common = check_job_function(t, r, fid, job, reference);
        match job {
            "migrate" => check_migrate(t, workers, r, fid, &common, &mut jobs),
            _ => check_maintenance(t, workers, r, fid, &common, &mut jobs),
        }
    }
    jobs
}

/// What every job function shares with the workers, checked once.
struct Common {
    reserved: Option<i64>,
    log_group: Option<(String, String)>,
    role: Option<String>,
}

fn check_job_function(
    t: &Template,
    r: &mut Report,
    fid: &str,
    job: &str,
    worker: Option<&Value>,
) -> Common {
    let p = t.props(fid);
    r.check(
        p["Runtime"] == "provided.al2023" && p["Handler"] == "bootstrap",
        || format!("{fid}: Runtime must be provided.al2023 with Handler bootstrap (the datamailer binary)"),
    );
    let arch_ok = p["Architectures"]
        .as_array()
        .is_some_and(|a| a.len() == 1 && ref_of(&a[0]) == Some("LambdaArchitecture"));
    r.check(arch_ok, || {
        format!("{fid}: Architectures must be [Ref LambdaArchitecture]")
    });
    r.check(
        ref_of(&p["Code"]["S3Bucket"]) == Some("LambdaArtifactBucket")
            && ref_of(&p["Code"]["S3Key"]) == Some("LambdaArtifactKey"),
        || format!("{fid}: Code must be the workers' artifact (S3Bucket Ref LambdaArtifactBucket, S3Key Ref LambdaArtifactKey)"),
    );
    if let Some(w) = worker {
        // The subnets may be the egress ones (`Fn::If [cond, Ref MaintenanceSubnetIds,
        // the workers' subnets]`); the security group must be the one the database admits.
        let (vpc, worker_vpc) = (&p["VpcConfig"], &w["VpcConfig"]);
        let egress_subnets = vpc["SubnetIds"]["Fn::If"].as_array().is_some_and(|a| {
            a.len() == 3
                && ref_of(&a[1]) == Some("MaintenanceSubnetIds")
                && a[2] == worker_vpc["SubnetIds"]
        });
        let ok = vpc["SecurityGroupIds"] == worker_vpc["SecurityGroupIds"]
            && (vpc["SubnetIds"] == worker_vpc["SubnetIds"] || egress_subnets);
        r.check(ok, || {
            format!(
                "{fid}: VpcConfig must be the queue workers' (the private subnets, or MaintenanceSubnetIds when set, and the worker security group, the one the database admits), not {}",
                p["VpcConfig"]
            )
        });
    }
    let reserved = as_int(&p["ReservedConcurrentExecutions"]);
    r.check(reserved == Some(1), || {
        format!(
            "{fid}: ReservedConcurrentExecutions must be 1 (one {job} at a time), not {}",
            show(&p["ReservedConcurrentExecutions"])
        )
    });
    let log_group = own_log_group(t, p);
    match &log_group {
        None => r.fail(format!(
            "{fid}: needs its own AWS::Logs::LogGroup (LoggingConfig.LogGroup or /aws/lambda/<function name>)"
        )),
        Some((lid, _)) => r.check(!t.props(lid)["RetentionInDays"].is_null(), || {
            format!("{lid}: RetentionInDays must be set")
        }),
    }
    let role = match getatt_of(&p["Role"]) {
        Some((rid, "Arn")) if t.is_type(rid, "AWS::IAM::Role") => {
            let shared: Vec<&str> = t
                .of_type("AWS::Lambda::Function")
                .into_iter()
                .filter(|(other, f)| {
                    *other != fid && getatt_of(&f["Properties"]["Role"]) == Some((rid, "Arn"))
                })
                .map(|(other, _)| other)
                .collect();
            r.check(shared.is_empty(), || {
                format!(
                    "{rid}: shared by {fid} and {}: the {job} function needs its own role",
                    shared.join(", ")
                )
            });
            Some(rid.to_string())
        }
        _ => {
            r.fail(format!(
                "{fid}: Role must be GetAtt <its own role>.Arn of a role in this template"
            ));
            None
        }
    };
    Common {
        reserved,
        log_group,
        role,
    }
}

/// The secret a variable names (`Ref <AWS::SecretsManager::Secret>`), or a failure.
fn secret_env(t: &Template, r: &mut Report, fid: &str, env: &Value, name: &str) -> Option<String> {
    let id = ref_of(&env[name]).filter(|s| t.is_type(s, "AWS::SecretsManager::Secret"));
    if id.is_none() {
        r.fail(format!(
            "{fid}: {name} must be Ref <a database secret of this template>, not {}",
            show(&env[name])
        ));
    }
    id.map(str::to_string)
}

/// The secret every queue worker reads (they share one).
fn workers_secret(workers: &[Worker]) -> Option<&str> {
    workers.iter().find_map(|w| w.secret.as_deref())
}

fn check_migrate(
    t: &Template,
    workers: &[Worker],
    r: &mut Report,
    fid: &str,
    common: &Common,
    jobs: &mut Jobs,
) {
    let env = &t.props(fid)["Environment"]["Variables"];
    let masters = master_secret_ids(t);
    let master = secret_env(t, r, fid, env, "DATAMAILER_DATABASE_SECRET_ARN");
    if let Some(m) = &master {
        r.check(masters.contains(m), || {
            format!("{fid}: DATAMAILER_DATABASE_SECRET_ARN must be the master secret (the database's MasterUserPassword), not {m}")
        });
    }
    let app = secret_env(t, r, fid, env, "DATAMAILER_APP_DATABASE_SECRET_ARN");
    let worker = secret_env(t, r, fid, env, "DATAMAILER_WORKER_DATABASE_SECRET_ARN");
    for (name, s) in [
        ("DATAMAILER_APP_DATABASE_SECRET_ARN", &app),
        ("DATAMAILER_WORKER_DATABASE_SECRET_ARN", &worker),
    ] {
        if let Some(s) = s {
            r.check(!masters.contains(s), || {
                format!("{fid}: {name} must not be the master secret {s} (the login roles are their own)")
            });
        }
    }
    r.check(app.is_none() || app != worker, || {
        format!("{fid}: the app and worker secrets must differ (two roles, two privilege sets)")
    });
    if let (Some(w), Some(expected)) = (&worker, workers_secret(workers)) {
        r.check(w == expected, || {
            format!("{fid}: DATAMAILER_WORKER_DATABASE_SECRET_ARN is {w}, but the queue workers read {expected}")
        });
    }
    r.check(env["DATAMAILER_DATABASE_HOST"].is_null(), || {
        format!("{fid}: DATAMAILER_DATABASE_HOST must be unset: migrations go to the instance (the secret's host); RDS Proxy holds no master credential")
    });
    let secrets: Vec<&str> = [&master, &app, &worker]
        .into_iter()
        .filter_map(|s| s.as_deref())
        .collect();
    if let Some(rid) = &common.role {
        check_job_role(
            t,
            r,
            &JobScope {
                role: rid,
                what: "the migrate function's role",
                log_group: common.log_group.as_ref(),
                secrets: &secrets,
                queues: &[],
            },
        );
    }
    jobs.app_secret = app;
    jobs.migrate = Some(JobFn {
        function: fid.to_string(),
        role: common.role.clone(),
    });
    jobs.budget.push((
        "migrate".into(),
        common.reserved.unwrap_or(0).max(0) as u32,
        MIGRATE_POOL,
    ));
}

/// Connections the maintenance process's recipient-list import jobs may hold besides its
/// `DATAMAILER_DB_MAX_CONNECTIONS` pool (`src/services.rs`, `IMPORT_JOBS_POOL`).
const IMPORT_JOBS_POOL: u32 = 2;

fn check_maintenance(
    t: &Template,
    workers: &[Worker],
    r: &mut Report,
    fid: &str,
    common: &Common,
    jobs: &mut Jobs,
) {
    let p = t.props(fid);
    let env = &p["Environment"]["Variables"];
    r.check(env["DATAMAILER_QUEUE_BACKEND"] == "sqs", || {
        format!("{fid}: DATAMAILER_QUEUE_BACKEND must be sqs (it re-enqueues to the SQS queues)")
    });
    r.check(env["DATAMAILER_MAILER"] != "ses", || {
        format!("{fid}: maintenance sends no mail (DATAMAILER_MAILER=ses)")
    });
    r.check(as_int(&p["Timeout"]) == Some(60), || {
        format!(
            "{fid}: Timeout must be 60 s (one run per minute), not {}",
            show(&p["Timeout"])
        )
    });
    r.check(as_int(&p["MemorySize"]) == Some(256), || {
        format!(
            "{fid}: MemorySize must be 256, not {}",
            show(&p["MemorySize"])
        )
    });
    let secret = secret_env(t, r, fid, env, "DATAMAILER_DATABASE_SECRET_ARN");
    if let (Some(s), Some(expected)) = (&secret, workers_secret(workers)) {
        r.check(s == expected, || {
            format!("{fid}: DATAMAILER_DATABASE_SECRET_ARN is {s}; maintenance uses the queue workers' secret {expected} (datamailer_worker)")
        });
    }
    for w in workers {
        r.check(env["DATAMAILER_DATABASE_HOST"] == w.db_host, || {
            format!(
                "{fid}: DATAMAILER_DATABASE_HOST must be the queue workers' ({} has {}, not {})",
                w.function,
                show(&w.db_host),
                show(&env["DATAMAILER_DATABASE_HOST"])
            )
        });
    }
    let mut queues = vec![];
    for q in QUEUES {
        let var = format!("SQS_{}_QUEUE_URL", env_name(q));
        let Some(qid) = workers
            .iter()
            .find(|w| w.queue == *q)
            .and_then(|w| w.queue_id.as_deref())
        else {
            continue; // reported by check_workers
        };
        r.check(ref_of(&env[var.as_str()]) == Some(qid), || {
            format!("{fid}: {var} must be Ref {qid} (maintenance re-enqueues to every queue)")
        });
        queues.push(qid);
    }
    // Client webhooks and import URLs are its calls that leave AWS: the SSRF allow list and
    // the webhook timeout must reach it, and its subnets need a NAT route (a human check).
    for var in [
        "DATAMAILER_OUTBOUND_ALLOW_HOSTS",
        "CMP_WEBHOOK_TIMEOUT_SECONDS",
    ] {
        r.check(!env[var].is_null(), || {
            format!("{fid}: {var} must be set (client webhooks and import jobs run here)")
        });
    }
    r.human.push(format!(
        "maintenance egress: {fid} POSTs client webhooks and fetches import URLs from its VpcConfig subnets (MaintenanceSubnetIds, else PrivateSubnetIds): they need a route through a NAT gateway; the VPC endpoints do not carry them"
    ));
    let pool = match &env["DATAMAILER_DB_MAX_CONNECTIONS"] {
        Value::Null => LAMBDA_POOL_DEFAULT,
        v => as_int(v).map(|n| n.max(0) as u32).unwrap_or_else(|| {
            r.fail(format!(
                "{fid}: DATAMAILER_DB_MAX_CONNECTIONS must be a literal number"
            ));
            LAMBDA_POOL_DEFAULT
        }),
    };
    // Scheduler invokes asynchronously: without this, Lambda retries a failed run twice and
    // keeps throttled events for up to 6 hours, queueing runs behind reserved concurrency 1.
    let invoke_config = t
        .of_type("AWS::Lambda::EventInvokeConfig")
        .into_iter()
        .any(|(_, c)| {
            let cp = &c["Properties"];
            ref_of(&cp["FunctionName"]) == Some(fid)
                && as_int(&cp["MaximumRetryAttempts"]) == Some(0)
                && as_int(&cp["MaximumEventAgeInSeconds"]).is_some_and(|s| s <= 60)
        });
    r.check(invoke_config, || {
        format!("{fid}: needs an AWS::Lambda::EventInvokeConfig with MaximumRetryAttempts 0 and MaximumEventAgeInSeconds ≤ 60 (else Lambda retries failed runs and queues throttled ones for hours)")
    });
    if let Some(rid) = &common.role {
        let secrets: Vec<&str> = secret.as_deref().into_iter().collect();
        check_job_role(
            t,
            r,
            &JobScope {
                role: rid,
                what: "the maintenance function's role",
                log_group: common.log_group.as_ref(),
                secrets: &secrets,
                queues: &queues,
            },
        );
    }
    jobs.scheduler_roles = check_schedule(t, r, fid);
    check_alarms(t, r, fid);
    jobs.maintenance = Some(JobFn {
        function: fid.to_string(),
        role: common.role.clone(),
    });
    // Its import jobs hold a pool of their own (src/services.rs `audience_tasks`).
    jobs.budget.push((
        "maintenance".into(),
        common.reserved.unwrap_or(0).max(0) as u32,
        pool + IMPORT_JOBS_POOL,
    ));
}

/// Exactly one EventBridge Scheduler schedule runs maintenance once a minute, at the minute,
/// without retries (the next run comes a minute later), through a role that may do nothing else.
/// Returns the schedules' roles.
fn check_schedule(t: &Template, r: &mut Report, fid: &str) -> Vec<String> {
    let schedules: Vec<(&str, &Value)> = t
        .of_type("AWS::Scheduler::Schedule")
        .into_iter()
        .filter(|(_, s)| getatt_of(&s["Properties"]["Target"]["Arn"]) == Some((fid, "Arn")))
        .collect();
    r.check(schedules.len() == 1, || {
        format!(
            "{fid}: needs exactly one AWS::Scheduler::Schedule targeting it (GetAtt {fid}.Arn), found {}",
            schedules.len()
        )
    });
    let mut roles = vec![];
    for (sid, s) in schedules {
        let p = &s["Properties"];
        let target = &p["Target"];
        let mut wrong = vec![];
        if p["ScheduleExpression"] != "rate(1 minute)" {
            wrong.push(format!(
                "ScheduleExpression must be rate(1 minute), not {}",
                show(&p["ScheduleExpression"])
            ));
        }
        if p["FlexibleTimeWindow"]["Mode"] != "OFF" {
            wrong.push("FlexibleTimeWindow.Mode must be OFF (run at the minute)".to_string());
        }
        if !(p["State"].is_null() || p["State"] == "ENABLED") {
            wrong.push(format!("State must be ENABLED, not {}", show(&p["State"])));
        }
        if as_int(&target["RetryPolicy"]["MaximumRetryAttempts"]) != Some(0) {
            wrong.push(
                "Target.RetryPolicy.MaximumRetryAttempts must be 0 (the next run is a minute away)"
                    .to_string(),
            );
        }
        if as_int(&target["RetryPolicy"]["MaximumEventAgeInSeconds"]) != Some(60) {
            wrong.push("Target.RetryPolicy.MaximumEventAgeInSeconds must be 60".to_string());
        }
        r.check(wrong.is_empty(), || format!("{sid}: {}", wrong.join("; ")));
        match getatt_of(&target["RoleArn"]) {
            Some((rid, "Arn")) if t.is_type(rid, "AWS::IAM::Role") => {
                check_scheduler_role(t, r, rid, fid);
                roles.push(rid.to_string());
            }
            _ => r.fail(format!(
                "{sid}: Target.RoleArn must be GetAtt <its own role>.Arn of a role in this template"
            )),
        }
    }
    roles
}

/// The schedule's role: trusted by the scheduler only, and only `lambda:InvokeFunction` (whose
/// target the access checks pin to the maintenance function).
fn check_scheduler_role(t: &Template, r: &mut Report, rid: &str, fid: &str) {
    check_role_basics(t, r, rid, "scheduler.amazonaws.com", "the schedule's role");
    let mut invokes = false;
    for st in allow_statements(t, rid) {
        let sid = st["Sid"].as_str().unwrap_or("(no Sid)");
        for action in as_list(&st["Action"]) {
            let a = action.as_str().unwrap_or_default().to_ascii_lowercase();
            if a == "lambda:invokefunction" {
                invokes |= as_list(&st["Resource"])
                    .iter()
                    .any(|v| getatt_of(v) == Some((fid, "Arn")));
            } else if !a.starts_with("lambda:") {
                r.fail(format!(
                    "{rid}: {} in statement {sid}; the schedule's role may only invoke the maintenance function",
                    show(action)
                ));
            }
        }
    }
    r.check(invokes, || {
        format!("{rid}: lacks lambda:InvokeFunction on GetAtt {fid}.Arn (the schedule could not run maintenance)")
    });
}

/// Errors > 0 in 2 of 3 five-minute periods, and "not running": fewer than 1 invocation in 10
/// minutes with missing data breaching; both notify the operators.
fn check_alarms(t: &Template, r: &mut Report, fid: &str) {
    let on = |metric: &str| -> Vec<(&str, &Value)> {
        t.of_type("AWS::CloudWatch::Alarm")
            .into_iter()
            .filter(|(_, a)| {
                let p = &a["Properties"];
                p["Namespace"] == "AWS/Lambda"
                    && p["MetricName"] == metric
                    && as_list(&p["Dimensions"])
                        .iter()
                        .any(|d| d["Name"] == "FunctionName" && ref_of(&d["Value"]) == Some(fid))
            })
            .collect()
    };
    let notifies = |p: &Value| {
        as_list(&p["AlarmActions"])
            .iter()
            .any(|a| ref_of(a) == Some("OperatorAlarmTopicArn"))
    };
    let errors = on("Errors");
    r.check(!errors.is_empty(), || {
        format!("{fid}: no alarm on its AWS/Lambda Errors (Sum > 0 in 2 of 3 five-minute periods → OperatorAlarmTopicArn)")
    });
    for (aid, a) in errors {
        let p = &a["Properties"];
        let mut wrong = vec![];
        if p["Statistic"] != "Sum"
            || p["ComparisonOperator"] != "GreaterThanThreshold"
            || as_int(&p["Threshold"]) != Some(0)
        {
            wrong.push("must fire on Sum > 0".to_string());
        }
        if as_int(&p["Period"]) != Some(300)
            || as_int(&p["EvaluationPeriods"]) != Some(3)
            || as_int(&p["DatapointsToAlarm"]) != Some(2)
        {
            wrong.push("must evaluate 2 of 3 periods of 300 s (Period 300, EvaluationPeriods 3, DatapointsToAlarm 2)".to_string());
        }
        if !notifies(p) {
            wrong.push("AlarmActions must include Ref OperatorAlarmTopicArn".to_string());
        }
        r.check(wrong.is_empty(), || format!("{aid}: {}", wrong.join("; ")));
    }
    let idle = on("Invocations");
    r.check(!idle.is_empty(), || {
        format!("{fid}: no \"not running\" alarm on its AWS/Lambda Invocations (Sum < 1 over 10 minutes, missing data breaching → OperatorAlarmTopicArn)")
    });
    for (aid, a) in idle {
        let p = &a["Properties"];
        let mut wrong = vec![];
        if p["Statistic"] != "Sum"
            || p["ComparisonOperator"] != "LessThanThreshold"
            || as_int(&p["Threshold"]) != Some(1)
        {
            wrong.push("must fire on Sum < 1".to_string());
        }
        let (period, evaluations) = (
            as_int(&p["Period"]).unwrap_or(0),
            as_int(&p["EvaluationPeriods"]).unwrap_or(0),
        );
        let datapoints = as_int(&p["DatapointsToAlarm"]).unwrap_or(evaluations);
        if period * evaluations != 600 || datapoints != evaluations {
            wrong.push(format!(
                "must cover 10 minutes with every period breaching (Period × EvaluationPeriods = 600 s, not {period} × {evaluations})"
            ));
        }
        if p["TreatMissingData"] != "breaching" {
            wrong.push(
                "TreatMissingData must be breaching (a schedule that stopped sends no data)"
                    .to_string(),
            );
        }
        if !notifies(p) {
            wrong.push("AlarmActions must include Ref OperatorAlarmTopicArn".to_string());
        }
        r.check(wrong.is_empty(), || format!("{aid}: {}", wrong.join("; ")));
    }
}

/// The Allow statements of a role's inline policies.
pub(super) fn allow_statements<'a>(t: &Template<'a>, rid: &str) -> Vec<&'a Value> {
    as_list(&t.props(rid)["Policies"])
        .into_iter()
        .flat_map(|p| as_list(&p["PolicyDocument"]["Statement"]))
        .filter(|st| st["Effect"] == "Allow")
        .collect()
}

struct JobScope<'a> {
    role: &'a str,
    what: &'a str,
    log_group: Option<&'a (String, String)>,
    /// The secrets it reads, each required.
    secrets: &'a [&'a str],
    /// Queues it re-enqueues to (SendMessage and GetQueueAttributes on each, required).
    queues: &'a [&'a str],
}

/// A job role is scoped exactly: trusted by Lambda only, inline policies only, GetSecretValue on
/// its secrets, the re-enqueue actions on its queues, log writes on its own log group, the VPC
/// ENI actions (the only ones on `*`), and nothing else.
fn check_job_role(t: &Template, r: &mut Report, s: &JobScope) {
    let (rid, what) = (s.role, s.what);
    check_role_basics(t, r, rid, "lambda.amazonaws.com", what);
    let mut granted: Vec<String> = vec![];
    for st in allow_statements(t, rid) {
        let sid = st["Sid"].as_str().unwrap_or("(no Sid)");
        if st.get("NotAction").is_some() || st.get("NotResource").is_some() {
            r.fail(format!(
                "{rid}: statement {sid} uses NotAction/NotResource, which grants everything else"
            ));
            continue;
        }
        let resources = as_list(&st["Resource"]);
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
            if eni {
                granted.push("eni".into());
                continue;
            }
            let allowed: Vec<String> = if LOG_ACTIONS.contains(&a.as_str()) {
                granted.push(a.clone());
                let Some((lid, name)) = s.log_group else {
                    continue;
                };
                for res in &resources {
                    let ok = getatt_of(res) == Some((lid.as_str(), "Arn"))
                        || sub_text(res).is_some_and(|t| {
                            t.contains(&format!(":log-group:{name}:"))
                                || t.ends_with(&format!(":log-group:{name}"))
                        });
                    r.check(ok, || {
                        format!("{rid}: {action} on {} in statement {sid}; only its own log group {lid} is allowed", show(res))
                    });
                }
                continue;
            } else if a == "secretsmanager:getsecretvalue" && !s.secrets.is_empty() {
                s.secrets.iter().map(|x| x.to_string()).collect()
            } else if REENQUEUE_ACTIONS.contains(&a.as_str()) && !s.queues.is_empty() {
                s.queues.iter().map(|x| x.to_string()).collect()
            } else {
                r.fail(format!(
                    "{rid}: {action} is not needed by {what} (statement {sid})"
                ));
                continue;
            };
            for res in &resources {
                let target = ref_of(res).or_else(|| {
                    getatt_of(res)
                        .filter(|(_, att)| *att == "Arn")
                        .map(|(id, _)| id)
                });
                match target.filter(|id| allowed.iter().any(|x| x == id)) {
                    Some(id) => granted.push(format!("{a} {id}")),
                    None => r.fail(format!(
                        "{rid}: {action} on {} in statement {sid}; only {} allowed",
                        show(res),
                        if allowed.len() == 1 {
                            format!("{} is", allowed[0])
                        } else {
                            format!("{} are", allowed.join(", "))
                        }
                    )),
                }
            }
        }
    }
    let has = |g: &str| granted.iter().any(|x| x == g);
    for secret in s.secrets {
        r.check(
            has(&format!("secretsmanager:getsecretvalue {secret}")),
            || format!("{rid}: lacks secretsmanager:GetSecretValue on {secret}"),
        );
    }
    for q in s.queues {
        for a in REENQUEUE_ACTIONS {
            r.check(has(&format!("{a} {q}")), || {
                format!("{rid}: lacks {a} on {q} (maintenance re-enqueues rows to every queue)")
            });
        }
    }
    for a in LOG_ACTIONS {
        r.check(has(a), || format!("{rid}: lacks {a} on its log group"));
    }
    r.check(has("eni"), || {
        format!("{rid}: lacks the VPC ENI actions a function in a VPC needs")
    });
}
