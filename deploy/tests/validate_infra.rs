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
    assert_fails_with(
        &f,
        "transactional-email 40×2 = 100 > max_connections 81 − headroom 10 = 71",
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
