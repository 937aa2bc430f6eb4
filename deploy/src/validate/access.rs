//! Who may read which database secret and invoke which function, across every role of the
//! template: the database master secret is readable by the migrate function's role alone; the
//! web host (the role EC2 assumes) reads only the app secret and invokes only the migrate
//! function; the maintenance schedule's role invokes only the maintenance function; Lambda
//! permissions are otherwise only the web host's switch of this stack's event source mappings.

use serde_json::Value;

use super::jobs::Jobs;
use super::{as_list, getatt_of, master_secret_ids, ref_of, show, sub_text, Report, Template};

const MAPPING_ACTIONS: [&str; 2] = [
    "lambda:GetEventSourceMapping",
    "lambda:UpdateEventSourceMapping",
];

/// Whether only `service` may assume the role.
fn trusted_by(t: &Template, rid: &str, service: &str) -> bool {
    let statements = as_list(&t.props(rid)["AssumeRolePolicyDocument"]["Statement"]);
    !statements.is_empty()
        && statements.iter().all(|st| {
            as_list(&st["Principal"]["Service"])
                .iter()
                .all(|v| *v == service)
        })
}

/// The Allow statements that apply to a role: its inline policies and policy resources
/// attached to it.
fn statements<'a>(t: &Template<'a>, rid: &str) -> Vec<&'a Value> {
    let mut docs: Vec<&Value> = as_list(&t.props(rid)["Policies"])
        .into_iter()
        .map(|p| &p["PolicyDocument"])
        .collect();
    for ty in [
        "AWS::IAM::Policy",
        "AWS::IAM::ManagedPolicy",
        "AWS::IAM::RolePolicy",
    ] {
        for (_, pol) in t.of_type(ty) {
            let pp = &pol["Properties"];
            if as_list(&pp["Roles"]).iter().any(|v| ref_of(v) == Some(rid))
                || ref_of(&pp["RoleName"]) == Some(rid)
            {
                docs.push(&pp["PolicyDocument"]);
            }
        }
    }
    docs.into_iter()
        .flat_map(|d| as_list(&d["Statement"]))
        .filter(|st| st["Effect"] == "Allow")
        .collect()
}

/// An IAM action pattern (`*` wildcards, case-insensitive) matching `action`.
fn action_matches(pattern: &str, action: &str) -> bool {
    let re = format!(
        "^{}$",
        regex::escape(&pattern.to_ascii_lowercase()).replace("\\*", ".*")
    );
    regex::Regex::new(&re).is_ok_and(|re| re.is_match(&action.to_ascii_lowercase()))
}

fn grants<'a>(st: &'a Value, action: &str) -> Option<&'a Value> {
    as_list(&st["Action"])
        .into_iter()
        .find(|a| a.as_str().is_some_and(|p| action_matches(p, action)))
}

/// Whether a statement resource may name the master secret: `*`, the secret itself, or a
/// wildcard secret ARN.
fn may_be_master(res: &Value, masters: &std::collections::BTreeSet<String>) -> bool {
    *res == "*"
        || ref_of(res).is_some_and(|id| masters.contains(id))
        || sub_text(res).is_some_and(|s| s.contains(":secret:") && s.contains('*'))
}

pub(super) fn check_secret_readers(t: &Template, jobs: &Jobs, r: &mut Report) {
    let masters = master_secret_ids(t);
    let migrate_role = jobs.migrate.as_ref().and_then(|m| m.role.as_deref());
    let app = jobs.app_secret.as_deref();
    for (rid, _) in t.of_type("AWS::IAM::Role") {
        let web = trusted_by(t, rid, "ec2.amazonaws.com");
        for st in statements(t, rid) {
            let Some(action) = grants(st, "secretsmanager:GetSecretValue") else {
                continue;
            };
            let action = show(action);
            let sid = st["Sid"].as_str().unwrap_or("(no Sid)");
            for res in as_list(&st["Resource"]) {
                if may_be_master(res, &masters) {
                    r.check(Some(rid) == migrate_role, || {
                        format!(
                            "{rid}: {action} on {} in statement {sid} reaches the database master secret; only the migrate function's role ({}) may read it",
                            show(res),
                            migrate_role.unwrap_or("none in this template")
                        )
                    });
                } else if web {
                    r.check(app.is_some() && ref_of(res) == app, || {
                        format!(
                            "{rid}: {action} on {} in statement {sid}; the web host may read only the app database secret ({})",
                            show(res),
                            app.unwrap_or("the migrate function's DATAMAILER_APP_DATABASE_SECRET_ARN")
                        )
                    });
                }
            }
        }
    }
    for (pid, p) in t.of_type("AWS::SecretsManager::ResourcePolicy") {
        let target = ref_of(&p["Properties"]["SecretId"]);
        r.check(!target.is_some_and(|s| masters.contains(s)), || {
            format!("{pid}: a resource policy on the database master secret; only the migrate function's role may read it (through IAM)")
        });
    }
}

pub(super) fn check_lambda_permissions(t: &Template, jobs: &Jobs, r: &mut Report) {
    let migrate = jobs.migrate.as_ref().map(|j| j.function.as_str());
    let maintenance = jobs.maintenance.as_ref().map(|j| j.function.as_str());
    for (rid, _) in t.of_type("AWS::IAM::Role") {
        // Who may invoke what: the web host the migrate function (release.sh), the schedule the
        // maintenance function; nobody else anything.
        let web = trusted_by(t, rid, "ec2.amazonaws.com");
        let (who, may_invoke) = if web {
            ("the web host", migrate)
        } else if jobs.scheduler_roles.iter().any(|s| s == rid) {
            ("the maintenance schedule", maintenance)
        } else {
            ("this role", None)
        };
        let mut invokes_own = false;
        for st in statements(t, rid) {
            let actions: Vec<&str> = as_list(&st["Action"])
                .into_iter()
                .filter_map(Value::as_str)
                .filter(|a| a.to_ascii_lowercase().starts_with("lambda:") || *a == "*")
                .collect();
            if actions.is_empty() {
                continue;
            }
            let sid = st["Sid"].as_str().unwrap_or("(no Sid)");
            let resources = as_list(&st["Resource"]);
            let mut mapping_actions = false;
            for action in &actions {
                if MAPPING_ACTIONS.contains(action) {
                    mapping_actions = true;
                } else if *action == "lambda:InvokeFunction" {
                    for res in &resources {
                        let ok = may_invoke.is_some_and(|f| getatt_of(res) == Some((f, "Arn")));
                        invokes_own |= ok;
                        r.check(ok, || match may_invoke {
                            Some(f) => format!(
                                "{rid}: lambda:InvokeFunction in statement {sid} on {}; {who} may invoke only {f}",
                                show(res)
                            ),
                            None => format!(
                                "{rid}: lambda:InvokeFunction in statement {sid} on {}; only the web host (the migrate function) and the maintenance schedule (the maintenance function) may invoke functions",
                                show(res)
                            ),
                        });
                    }
                } else {
                    r.fail(format!(
                        "{rid}: {action} in statement {sid}; only Get/UpdateEventSourceMapping (this stack's mappings) and InvokeFunction (see above) may be granted on Lambda"
                    ));
                }
            }
            if mapping_actions {
                for resource in &resources {
                    let mapping = sub_text(resource)
                        .and_then(|s| s.split(":event-source-mapping:${").nth(1))
                        .and_then(|rest| rest.strip_suffix('}'));
                    let ok =
                        mapping.is_some_and(|m| t.is_type(m, "AWS::Lambda::EventSourceMapping"));
                    r.check(ok, || {
                        format!(
                            "{rid}: lambda actions on resource {} in statement {sid}; allow them only on this stack's event source mappings",
                            show(resource)
                        )
                    });
                }
            }
        }
        if let (true, Some(f)) = (web, migrate) {
            r.check(invokes_own, || {
                format!("{rid}: lacks lambda:InvokeFunction on GetAtt {f}.Arn (release.sh runs the migrations through it)")
            });
        }
    }
    for (pid, p) in t.of_type("AWS::Lambda::Permission") {
        let f = &p["Properties"]["FunctionName"];
        let target = ref_of(f).or_else(|| getatt_of(f).map(|(id, _)| id));
        r.check(target.is_none() || (target != migrate && target != maintenance), || {
            format!(
                "{pid}: a resource policy on {}; the migrate and maintenance functions are invoked only through their callers' IAM roles",
                show(f)
            )
        });
    }
}
