//! `datamailer validate-infra` passes on the shipped template and parameter files, and each
//! mutated copy fails with a line naming the resource and the rule.

use std::path::{Path, PathBuf};

use datamailer_deploy::validate::{validate, Options};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn shipped_template() -> Value {
    let text =
        std::fs::read_to_string(repo().join("infra/cloudformation/datamailer-mvp.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A copy of infra/ in a fresh temp dir, with the template replaced by `template`.
struct Copy {
    root: PathBuf,
}

impl Copy {
    fn new(template: &Value) -> Copy {
        let root = std::env::temp_dir().join(format!("validate-infra-{}", uuid::Uuid::new_v4()));
        for dir in ["infra/cloudformation", "infra/config", "infra/host"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(
            root.join("infra/cloudformation/datamailer-mvp.json"),
            serde_json::to_string_pretty(template).unwrap(),
        )
        .unwrap();
        for entry in std::fs::read_dir(repo().join("infra/config")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // Only what the repository ships: a developer's private files stay out of the test.
            if name.ends_with(".example.json") || name == "web.env.example" {
                std::fs::copy(&path, root.join("infra/config").join(&name)).unwrap();
            }
        }
        std::fs::copy(
            repo().join("infra/host/amazon-cloudwatch-agent.json"),
            root.join("infra/host/amazon-cloudwatch-agent.json"),
        )
        .unwrap();
        Copy { root }
    }

    fn config(&self, name: &str) -> PathBuf {
        self.root.join("infra/config").join(name)
    }

    fn failures(&self) -> Vec<String> {
        let opts = Options::new(
            self.root.join("infra/cloudformation/datamailer-mvp.json"),
            self.root.join("infra/config"),
        );
        validate(&opts).failures
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The failures of a mutated template: asserts exactly one kind of failure appears.
fn failures_after(mutate: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut t = shipped_template();
    mutate(&mut t);
    Copy::new(&t).failures()
}

fn assert_fails_with(failures: &[String], needle: &str) {
    assert!(
        failures.iter().any(|f| f.contains(needle)),
        "expected a failure containing {needle:?}, got:\n{}",
        failures.join("\n")
    );
}

fn statement<'a>(t: &'a mut Value, role: &str, sid: &str) -> &'a mut Value {
    t["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["Sid"] == sid)
        .unwrap_or_else(|| panic!("{role} has no statement {sid}"))
}

#[test]
fn the_shipped_template_and_parameter_files_pass() {
    let opts = Options::new(
        repo().join("infra/cloudformation/datamailer-mvp.json"),
        repo().join("infra/config"),
    );
    let report = validate(&opts);
    assert!(
        report.ok(),
        "validate-infra failed on the shipped files:\n{}",
        report.failures.join("\n")
    );
    assert!(report.checks > 100, "only {} checks ran", report.checks);
    // The same through a copy (what every mutation test starts from).
    let copy = Copy::new(&shipped_template()).failures();
    assert!(copy.is_empty(), "{}", copy.join("\n"));
}

#[test]
fn the_web_role_switches_only_this_stacks_mappings() {
    let f = failures_after(|t| {
        statement(t, "WebRole", "PauseResumeMappings")["Resource"] = json!("*");
    });
    assert_fails_with(
        &f,
        "WebRole: lambda actions on resource * in statement PauseResumeMappings",
    );
    let f = failures_after(|t| {
        statement(t, "WebRole", "PauseResumeMappings")["Action"] =
            json!(["lambda:UpdateEventSourceMapping", "lambda:InvokeFunction"]);
    });
    assert_fails_with(
        &f,
        "WebRole: lambda:InvokeFunction in statement PauseResumeMappings",
    );
}

#[test]
fn a_queue_without_a_redrive_policy_fails() {
    let f = failures_after(|t| {
        t["Resources"]["TransactionalEmailQueue"]["Properties"]
            .as_object_mut()
            .unwrap()
            .remove("RedrivePolicy");
    });
    assert_fails_with(&f, "TransactionalEmailQueue: no RedrivePolicy");
}

#[test]
fn an_iam_resource_widened_to_star_fails() {
    let f = failures_after(|t| {
        statement(t, "TransactionalEmailWorkerRole", "ConsumeOwnQueue")["Resource"] = json!("*");
    });
    assert_fails_with(
        &f,
        "TransactionalEmailWorkerRole: sqs:ReceiveMessage on resource * in statement ConsumeOwnQueue",
    );
    // Another queue is as wrong as `*`.
    let f = failures_after(|t| {
        statement(t, "SesWebhooksWorkerRole", "DeadLetterToOwnDlq")["Resource"] =
            json!({"Fn::GetAtt": ["TransactionalEmailQueue", "Arn"]});
    });
    assert_fails_with(
        &f,
        "SesWebhooksWorkerRole: sqs:SendMessage on GetAtt TransactionalEmailQueue.Arn in statement DeadLetterToOwnDlq; only its own DLQ SesWebhooksDLQ is allowed",
    );
}

#[test]
fn ses_for_a_non_sender_or_by_from_address_fails() {
    let f = failures_after(|t| {
        let stmts = t["Resources"]["EmailEventsWorkerRole"]["Properties"]["Policies"][0]
            ["PolicyDocument"]["Statement"]
            .as_array_mut()
            .unwrap();
        stmts.push(
            json!({"Sid": "Send", "Effect": "Allow", "Action": "ses:SendEmail",
                          "Resource": {"Fn::Sub": "arn:aws:ses:us-east-1:1:identity/x.com"}}),
        );
    });
    assert_fails_with(
        &f,
        "EmailEventsWorkerRole: ses:SendEmail: only the transactional and campaign workers may send mail",
    );
    let f = failures_after(|t| {
        statement(t, "CampaignEmailWorkerRole", "SendAsVerifiedIdentities")["Condition"] =
            json!({"StringEquals": {"ses:FromAddress": {"Ref": "DefaultFromEmail"}}});
    });
    assert_fails_with(
        &f,
        "CampaignEmailWorkerRole: statement SendAsVerifiedIdentities restricts ses:FromAddress",
    );
}

#[test]
fn maximum_concurrency_one_fails() {
    let f = failures_after(|t| {
        t["Resources"]["CampaignEmailEventSourceMapping"]["Properties"]["ScalingConfig"]
            ["MaximumConcurrency"] = json!(1);
    });
    assert_fails_with(
        &f,
        "CampaignEmailEventSourceMapping: ScalingConfig.MaximumConcurrency 1 is outside AWS's range 2..=1000",
    );
    // Above the function's reserved concurrency.
    let f = failures_after(|t| {
        t["Resources"]["SesWebhooksEventSourceMapping"]["Properties"]["ScalingConfig"]
            ["MaximumConcurrency"] = json!(3);
    });
    assert_fails_with(&f, "SesWebhooksEventSourceMapping: ScalingConfig.MaximumConcurrency 3 exceeds SesWebhooksWorker's ReservedConcurrentExecutions 2");
}

#[test]
fn a_visibility_timeout_below_six_times_the_function_timeout_fails() {
    let f = failures_after(|t| {
        t["Resources"]["CampaignEmailWorker"]["Properties"]["Timeout"] = json!(300);
    });
    assert_fails_with(
        &f,
        "CampaignEmailQueue: VisibilityTimeout 900 s is below 6 × CampaignEmailWorker's Timeout 300 s",
    );
}

#[test]
fn reserved_concurrency_past_the_connection_budget_fails() {
    let f = failures_after(|t| {
        t["Resources"]["TransactionalEmailWorker"]["Properties"]["ReservedConcurrentExecutions"] =
            json!(40);
    });
    assert_fails_with(
        &f,
        "connection budget (db.t4g.micro, template default): web 8 + ",
    );
    assert_fails_with(&f, "transactional-email 40×2 + ");
    assert_fails_with(
        &f,
        "maintenance 1×4 + migrate 1×1 = 105 > max_connections 81 − headroom 10 = 71",
    );
    assert_fails_with(
        &f,
        "connection budget (db.t4g.micro, staging.parameters.example.json)",
    );
}

#[test]
fn a_metric_no_code_emits_fails() {
    let f = failures_after(|t| {
        t["Resources"]["WebHealthAlarm"]["Properties"]["MetricName"] =
            json!("datamailer_web_up_ratio");
    });
    assert_fails_with(
        &f,
        "WebHealthAlarm: metric datamailer_web_up_ratio is not emitted by the code",
    );
    // The dashboard is checked too.
    let f = failures_after(|t| {
        let body = &mut t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"];
        let text = body.as_str().unwrap().replace(
            "datamailer_ses_throttles_total",
            "datamailer_ses_bounces_total",
        );
        *body = json!(text);
    });
    assert_fails_with(
        &f,
        "Dashboard: metric datamailer_ses_bounces_total is not emitted by the code",
    );
}

#[test]
fn a_parameter_file_missing_a_parameter_fails() {
    let copy = Copy::new(&shipped_template());
    let path = copy.config("staging.parameters.example.json");
    let mut params: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    params.retain(|p| p["ParameterKey"] != "VpcId");
    params.push(json!({"ParameterKey": "NoSuchParameter", "ParameterValue": "x"}));
    std::fs::write(&path, serde_json::to_string_pretty(&params).unwrap()).unwrap();
    let f = copy.failures();
    assert_fails_with(
        &f,
        "staging.parameters.example.json: parameter VpcId has no default and is not given",
    );
    assert_fails_with(
        &f,
        "staging.parameters.example.json: unknown parameter NoSuchParameter",
    );
}

#[test]
fn a_private_parameter_file_with_replace_left_fails() {
    let copy = Copy::new(&shipped_template());
    let example =
        std::fs::read_to_string(copy.config("production.parameters.example.json")).unwrap();
    let mut params: Vec<Value> = serde_json::from_str(&example).unwrap();
    // Fill everything but the VPC.
    for p in &mut params {
        if p["ParameterKey"] != "VpcId" {
            let v = p["ParameterValue"]
                .as_str()
                .unwrap()
                .replace("REPLACE", "filled");
            p["ParameterValue"] = json!(v);
        }
    }
    std::fs::write(
        copy.config("production.parameters.private.json"),
        serde_json::to_string_pretty(&params).unwrap(),
    )
    .unwrap();
    let f = copy.failures();
    assert_fails_with(
        &f,
        "production.parameters.private.json: VpcId still holds a REPLACE placeholder",
    );
    assert_eq!(f.len(), 1, "{}", f.join("\n"));
}

fn statements<'a>(t: &'a mut Value, role: &str) -> &'a mut Vec<Value> {
    t["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("{role} has no inline statements"))
}

fn env<'a>(t: &'a mut Value, function: &str) -> &'a mut serde_json::Map<String, Value> {
    t["Resources"][function]["Properties"]["Environment"]["Variables"]
        .as_object_mut()
        .unwrap_or_else(|| panic!("{function} has no environment"))
}

fn remove_resource(t: &mut Value, id: &str) {
    t["Resources"]
        .as_object_mut()
        .unwrap()
        .remove(id)
        .unwrap_or_else(|| panic!("no resource {id}"));
}

#[test]
fn only_the_migrate_function_may_read_the_master_secret() {
    // The web host, as before this release.
    let f = failures_after(|t| {
        statement(t, "WebRole", "ReadAppDatabaseSecret")["Resource"] =
            json!([{"Ref": "AppDatabaseSecret"}, {"Ref": "DatabaseMasterSecret"}]);
    });
    assert_fails_with(
        &f,
        "WebRole: secretsmanager:GetSecretValue on Ref DatabaseMasterSecret in statement ReadAppDatabaseSecret reaches the database master secret; only the migrate function's role (MigrateFunctionRole) may read it",
    );
    // A worker, through a wildcard action on a wildcard secret ARN.
    let f = failures_after(|t| {
        statements(t, "SesWebhooksWorkerRole").push(json!({"Sid": "AllSecrets", "Effect": "Allow",
            "Action": "secretsmanager:*",
            "Resource": {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:/datamailer/*"}}));
    });
    assert_fails_with(
        &f,
        "SesWebhooksWorkerRole: secretsmanager:* on Sub arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:/datamailer/* in statement AllSecrets reaches the database master secret",
    );
    // The web host reads only the app secret (the worker's is not its business either).
    let f = failures_after(|t| {
        statement(t, "WebRole", "ReadAppDatabaseSecret")["Resource"] =
            json!([{"Ref": "AppDatabaseSecret"}, {"Ref": "WorkerDatabaseSecret"}]);
    });
    assert_fails_with(
        &f,
        "WebRole: secretsmanager:GetSecretValue on Ref WorkerDatabaseSecret in statement ReadAppDatabaseSecret; the web host may read only the app database secret (AppDatabaseSecret)",
    );
}

#[test]
fn the_web_role_may_invoke_only_the_migrate_function() {
    let f = failures_after(|t| {
        statement(t, "WebRole", "RunMigrations")["Resource"] =
            json!({"Fn::GetAtt": ["MaintenanceFunction", "Arn"]});
    });
    assert_fails_with(
        &f,
        "WebRole: lambda:InvokeFunction in statement RunMigrations on GetAtt MaintenanceFunction.Arn; the web host may invoke only MigrateFunction",
    );
    assert_fails_with(
        &f,
        "WebRole: lacks lambda:InvokeFunction on GetAtt MigrateFunction.Arn (release.sh runs the migrations through it)",
    );
    // A worker may invoke nothing.
    let f = failures_after(|t| {
        statements(t, "TransactionalEmailWorkerRole").push(json!({"Sid": "Invoke", "Effect": "Allow",
            "Action": "lambda:InvokeFunction", "Resource": {"Fn::GetAtt": ["MigrateFunction", "Arn"]}}));
    });
    assert_fails_with(
        &f,
        "TransactionalEmailWorkerRole: lambda:InvokeFunction in statement Invoke on GetAtt MigrateFunction.Arn; only the web host (the migrate function) and the maintenance schedule (the maintenance function) may invoke functions",
    );
    // Nor through a resource policy.
    let f = failures_after(|t| {
        t["Resources"]["OpenMigrate"] = json!({"Type": "AWS::Lambda::Permission", "Properties": {
            "FunctionName": {"Ref": "MigrateFunction"}, "Action": "lambda:InvokeFunction",
            "Principal": {"Ref": "AWS::AccountId"}}});
    });
    assert_fails_with(&f, "OpenMigrate: a resource policy on Ref MigrateFunction");
}

#[test]
fn the_migrate_function_and_its_role_are_scoped_exactly() {
    let f = failures_after(|t| {
        statements(t, "MigrateFunctionRole").push(json!({"Sid": "Queue", "Effect": "Allow",
            "Action": "sqs:SendMessage", "Resource": {"Fn::GetAtt": ["TransactionalEmailQueue", "Arn"]}}));
        statement(t, "MigrateFunctionRole", "ReadDatabaseSecrets")["Resource"] =
            json!([{"Ref": "DatabaseMasterSecret"}, {"Ref": "AppDatabaseSecret"}]);
    });
    assert_fails_with(
        &f,
        "MigrateFunctionRole: sqs:SendMessage is not needed by the migrate function's role (statement Queue)",
    );
    assert_fails_with(
        &f,
        "MigrateFunctionRole: lacks secretsmanager:GetSecretValue on WorkerDatabaseSecret",
    );
    let f = failures_after(|t| {
        t["Resources"]["MigrateFunction"]["Properties"]["ReservedConcurrentExecutions"] = json!(3);
        env(t, "MigrateFunction").insert(
            "DATAMAILER_DATABASE_SECRET_ARN".into(),
            json!({"Ref": "AppDatabaseSecret"}),
        );
        t["Resources"]["MigrateFunction"]["Properties"]["VpcConfig"]["SecurityGroupIds"] =
            json!([{"Ref": "WebSecurityGroup"}]);
    });
    assert_fails_with(
        &f,
        "MigrateFunction: ReservedConcurrentExecutions must be 1 (one migrate at a time), not 3",
    );
    assert_fails_with(
        &f,
        "MigrateFunction: DATAMAILER_DATABASE_SECRET_ARN must be the master secret (the database's MasterUserPassword), not AppDatabaseSecret",
    );
    assert_fails_with(&f, "MigrateFunction: VpcConfig must be the queue workers'");
    let f = failures_after(|t| remove_resource(t, "MigrateFunction"));
    assert_fails_with(
        &f,
        "template: needs exactly one function with DATAMAILER_LAMBDA_JOB=migrate, found 0",
    );
}

#[test]
fn the_maintenance_function_and_its_role_are_scoped_exactly() {
    let f = failures_after(|t| {
        statement(t, "MaintenanceFunctionRole", "ReenqueueToSourceQueues")["Resource"] = json!([
            {"Fn::GetAtt": ["TransactionalEmailQueue", "Arn"]},
            {"Fn::GetAtt": ["CampaignEmailQueue", "Arn"]},
            {"Fn::GetAtt": ["SesWebhooksQueue", "Arn"]},
            {"Fn::GetAtt": ["TransactionalEmailDLQ", "Arn"]},
        ]);
        statement(t, "MaintenanceFunctionRole", "ReadWorkerDatabaseSecret")["Resource"] =
            json!([{"Ref": "WorkerDatabaseSecret"}, {"Ref": "AppDatabaseSecret"}]);
        statements(t, "MaintenanceFunctionRole").push(json!({"Sid": "Ses", "Effect": "Allow",
            "Action": "ses:SendEmail", "Resource": {"Ref": "SESSenderIdentityArns"}}));
    });
    assert_fails_with(
        &f,
        "MaintenanceFunctionRole: sqs:SendMessage on GetAtt TransactionalEmailDLQ.Arn in statement ReenqueueToSourceQueues; only TransactionalEmailQueue, CampaignEmailQueue, SesWebhooksQueue, EmailEventsQueue are allowed",
    );
    assert_fails_with(
        &f,
        "MaintenanceFunctionRole: lacks sqs:sendmessage on EmailEventsQueue",
    );
    assert_fails_with(
        &f,
        "MaintenanceFunctionRole: secretsmanager:GetSecretValue on Ref AppDatabaseSecret in statement ReadWorkerDatabaseSecret; only WorkerDatabaseSecret is allowed",
    );
    assert_fails_with(
        &f,
        "MaintenanceFunctionRole: ses:SendEmail is not needed by the maintenance function's role",
    );
    let f = failures_after(|t| {
        let e = env(t, "MaintenanceFunction");
        e.remove("SQS_EMAIL_EVENTS_QUEUE_URL");
        e.insert(
            "DATAMAILER_DATABASE_HOST".into(),
            json!("db.example.internal"),
        );
        t["Resources"]["MaintenanceFunction"]["Properties"]["Timeout"] = json!(300);
        remove_resource(t, "MaintenanceFunctionInvokeConfig");
    });
    assert_fails_with(
        &f,
        "MaintenanceFunction: SQS_EMAIL_EVENTS_QUEUE_URL must be Ref EmailEventsQueue",
    );
    assert_fails_with(
        &f,
        "MaintenanceFunction: DATAMAILER_DATABASE_HOST must be the queue workers'",
    );
    assert_fails_with(
        &f,
        "MaintenanceFunction: Timeout must be 60 s (one run per minute), not 300",
    );
    assert_fails_with(
        &f,
        "MaintenanceFunction: needs an AWS::Lambda::EventInvokeConfig with MaximumRetryAttempts 0",
    );
    let f = failures_after(|t| remove_resource(t, "MaintenanceFunction"));
    assert_fails_with(
        &f,
        "template: needs exactly one function with DATAMAILER_LAMBDA_JOB=maintenance, found 0",
    );
}

#[test]
fn the_maintenance_schedule_runs_every_minute_through_a_role_that_only_invokes_it() {
    let f = failures_after(|t| {
        let p = &mut t["Resources"]["MaintenanceSchedule"]["Properties"];
        p["ScheduleExpression"] = json!("rate(5 minutes)");
        p["FlexibleTimeWindow"] = json!({"Mode": "FLEXIBLE", "MaximumWindowInMinutes": 5});
        p["Target"]["RetryPolicy"]["MaximumRetryAttempts"] = json!(3);
    });
    assert_fails_with(
        &f,
        "MaintenanceSchedule: ScheduleExpression must be rate(1 minute), not rate(5 minutes); FlexibleTimeWindow.Mode must be OFF (run at the minute); Target.RetryPolicy.MaximumRetryAttempts must be 0",
    );
    let f = failures_after(|t| {
        statement(t, "MaintenanceScheduleRole", "InvokeMaintenance")["Resource"] =
            json!({"Fn::GetAtt": ["TransactionalEmailWorker", "Arn"]});
        statements(t, "MaintenanceScheduleRole").push(json!({"Sid": "Sqs", "Effect": "Allow",
            "Action": "sqs:SendMessage", "Resource": {"Fn::GetAtt": ["TransactionalEmailQueue", "Arn"]}}));
    });
    assert_fails_with(
        &f,
        "MaintenanceScheduleRole: lambda:InvokeFunction in statement InvokeMaintenance on GetAtt TransactionalEmailWorker.Arn; the maintenance schedule may invoke only MaintenanceFunction",
    );
    assert_fails_with(
        &f,
        "MaintenanceScheduleRole: lacks lambda:InvokeFunction on GetAtt MaintenanceFunction.Arn",
    );
    assert_fails_with(
        &f,
        "MaintenanceScheduleRole: sqs:SendMessage in statement Sqs; the schedule's role may only invoke the maintenance function",
    );
    let f = failures_after(|t| {
        t["Resources"]["MaintenanceScheduleRole"]["Properties"]["AssumeRolePolicyDocument"]
            ["Statement"][0]["Principal"]["Service"] = json!("events.amazonaws.com");
    });
    assert_fails_with(
        &f,
        "MaintenanceScheduleRole: only scheduler.amazonaws.com may assume the schedule's role",
    );
    let f = failures_after(|t| remove_resource(t, "MaintenanceSchedule"));
    assert_fails_with(
        &f,
        "MaintenanceFunction: needs exactly one AWS::Scheduler::Schedule targeting it (GetAtt MaintenanceFunction.Arn), found 0",
    );
}

#[test]
fn the_maintenance_alarms_fire_on_errors_and_on_silence() {
    let f = failures_after(|t| {
        t["Resources"]["MaintenanceNotRunningAlarm"]["Properties"]["TreatMissingData"] =
            json!("notBreaching");
        t["Resources"]["MaintenanceErrorsAlarm"]["Properties"]["DatapointsToAlarm"] = json!(3);
    });
    assert_fails_with(
        &f,
        "MaintenanceNotRunningAlarm: TreatMissingData must be breaching (a schedule that stopped sends no data)",
    );
    assert_fails_with(
        &f,
        "MaintenanceErrorsAlarm: must evaluate 2 of 3 periods of 300 s",
    );
    let f = failures_after(|t| {
        remove_resource(t, "MaintenanceNotRunningAlarm");
        remove_resource(t, "MaintenanceErrorsAlarm");
    });
    assert_fails_with(
        &f,
        "MaintenanceFunction: no \"not running\" alarm on its AWS/Lambda Invocations",
    );
    assert_fails_with(&f, "MaintenanceFunction: no alarm on its AWS/Lambda Errors");
}

#[test]
fn multi_az_is_a_parameter_that_production_turns_on() {
    let f = failures_after(|t| {
        t["Resources"]["DatabaseInstance"]["Properties"]["MultiAZ"] = json!(false);
    });
    assert_fails_with(
        &f,
        "DatabaseInstance: MultiAZ is false; it must be Ref a parameter with AllowedValues true/false (DBMultiAZ)",
    );
    let copy = Copy::new(&shipped_template());
    let path = copy.config("production.parameters.example.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut params: Vec<Value> = serde_json::from_str(&text).unwrap();
    let multi_az = params
        .iter_mut()
        .find(|p| p["ParameterKey"] == "DBMultiAZ")
        .expect("the production example sets DBMultiAZ");
    multi_az["ParameterValue"] = json!("false");
    std::fs::write(&path, serde_json::to_string_pretty(&params).unwrap()).unwrap();
    assert_fails_with(
        &copy.failures(),
        "production.parameters.example.json: DBMultiAZ must be true",
    );
}

#[test]
fn a_queue_worker_timeout_must_leave_room_for_the_send_deadline_margin() {
    let f = failures_after(|t| {
        t["Resources"]["TransactionalEmailWorker"]["Properties"]["Timeout"] = json!(20);
        env(t, "CampaignEmailWorker").insert("DATAMAILER_SES_TIMEOUT_SECONDS".into(), json!("60"));
    });
    assert_fails_with(
        &f,
        "TransactionalEmailWorker: Timeout 20 s is below 2 × (SES timeout 10 s + 5 s) = 30 s",
    );
    assert_fails_with(
        &f,
        "CampaignEmailWorker: Timeout 120 s is below 2 × (SES timeout 60 s + 5 s) = 130 s",
    );
    // A timeout long enough for the margin still needs the queue's visibility to follow.
    let f = failures_after(|t| {
        t["Resources"]["SesWebhooksWorker"]["Properties"]["Timeout"] = json!(40);
    });
    assert_fails_with(
        &f,
        "SesWebhooksQueue: VisibilityTimeout 180 s is below 6 × SesWebhooksWorker's Timeout 40 s = 240 s",
    );
    assert!(
        !f.iter().any(|l| l.contains("SES timeout")),
        "{}",
        f.join("\n")
    );
}

#[test]
fn the_connection_budget_counts_the_maintenance_and_migrate_functions() {
    let f = failures_after(|t| {
        env(t, "MaintenanceFunction").insert("DATAMAILER_DB_MAX_CONNECTIONS".into(), json!("45"));
    });
    assert_fails_with(
        &f,
        "maintenance 1×47 + migrate 1×1 = 76 > max_connections 81 − headroom 10 = 71",
    );
}

#[test]
fn the_lambda_concurrency_quota_is_a_human_check_with_the_reserved_total() {
    let opts = Options::new(
        repo().join("infra/cloudformation/datamailer-mvp.json"),
        repo().join("infra/config"),
    );
    let report = validate(&opts);
    let expected = "lambda concurrency quota: the template reserves 12; the account quota must be >= 112 (aws service-quotas get-service-quota --service-code lambda --quota-code L-B99A9384)";
    assert!(
        report.human.iter().any(|h| h == expected),
        "{:?}",
        report.human
    );
    let mut t = shipped_template();
    t["Resources"]["TransactionalEmailWorker"]["Properties"]["ReservedConcurrentExecutions"] =
        json!(10);
    assert_eq!(datamailer_deploy::validate::reserved_concurrency(&t), 18);
}

#[test]
fn the_maintenance_function_gets_the_outbound_settings_and_a_nat_check() {
    let f = failures_after(|t| {
        env(t, "MaintenanceFunction").remove("DATAMAILER_OUTBOUND_ALLOW_HOSTS");
    });
    assert_fails_with(
        &f,
        "MaintenanceFunction: DATAMAILER_OUTBOUND_ALLOW_HOSTS must be set (client webhooks and import jobs run here)",
    );
    let opts = Options::new(
        repo().join("infra/cloudformation/datamailer-mvp.json"),
        repo().join("infra/config"),
    );
    let report = validate(&opts);
    assert!(
        report
            .human
            .iter()
            .any(|h| h.starts_with("maintenance egress: MaintenanceFunction") && h.contains("NAT")),
        "{:?}",
        report.human
    );
}
