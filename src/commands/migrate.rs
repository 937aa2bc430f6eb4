//! `datamailer migrate`: apply the SQL migrations (creating the local database if needed).
//! `datamailer migrate --check`: apply and create nothing; list what differs from this binary's
//! migrations and fail if anything does (the restore drill and rollbacks use it).
//! The migrate Lambda job (`DATAMAILER_LAMBDA_JOB=migrate`): migrations and the login roles, run
//! with the master credential by the only function whose role may read it.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::config::{var, Config};
use crate::database::{self, MIGRATOR};
use crate::roles::{self, Access, LoginRole};
use crate::secrets::{self, SECRET_ARN_ENV};
use crate::services;

/// The secret of the web's login role (`datamailer_app`).
pub const APP_SECRET_ARN_ENV: &str = "DATAMAILER_APP_DATABASE_SECRET_ARN";
/// The secret of the workers' login role (`datamailer_worker`).
pub const WORKER_SECRET_ARN_ENV: &str = "DATAMAILER_WORKER_DATABASE_SECRET_ARN";

pub async fn migrate(config: Config, check: bool) -> anyhow::Result<()> {
    if check {
        return check_only(&config).await;
    }
    database::ensure_database(&config).await?;
    database::migrate(&config).await?;
    println!("migrations applied");
    Ok(())
}

/// `migrate --check`: one line per difference on stdout, an error if there is any.
async fn check_only(config: &Config) -> anyhow::Result<()> {
    // Never `ensure_database`: a check creates nothing, not even the local database.
    let mut conn = PgConnection::connect(config.database_url())
        .await
        .context("connecting to the database (migrate --check creates nothing)")?;
    let status = Status::read(&mut conn).await?;
    conn.close().await.ok();
    let lines = status.problems();
    if lines.is_empty() {
        println!("no pending migrations");
        return Ok(());
    }
    for line in &lines {
        println!("{line}");
    }
    anyhow::bail!(
        "migrate --check: {} migration(s) differ from this binary's ({} pending)",
        lines.len(),
        status.pending.len()
    )
}

/// The database's migrations against the binary's.
struct Status {
    /// In the binary, not applied: (version, description).
    pending: Vec<(i64, String)>,
    /// Applied with a checksum other than the binary's.
    changed: Vec<(i64, String)>,
    /// Applied, but unknown to this binary (a newer release migrated the database).
    unknown: Vec<i64>,
    /// Recorded as failed part-way.
    failed: Vec<i64>,
}

impl Status {
    /// Reads `_sqlx_migrations` without creating it: no table means nothing is applied.
    async fn read(conn: &mut PgConnection) -> anyhow::Result<Status> {
        let has_table: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&mut *conn)
                .await
                .context("looking for _sqlx_migrations")?;
        let applied: Vec<(i64, Vec<u8>, bool)> = if has_table {
            sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
                .fetch_all(&mut *conn)
                .await
                .context("reading _sqlx_migrations")?
        } else {
            vec![]
        };
        let applied: BTreeMap<i64, (Vec<u8>, bool)> = applied
            .into_iter()
            .map(|(v, checksum, ok)| (v, (checksum, ok)))
            .collect();
        let mut status = Status {
            pending: vec![],
            changed: vec![],
            unknown: vec![],
            failed: vec![],
        };
        for m in MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
        {
            match applied.get(&m.version) {
                None => status.pending.push((m.version, m.description.to_string())),
                Some((_, false)) => status.failed.push(m.version),
                Some((checksum, true)) if checksum[..] != m.checksum[..] => {
                    status.changed.push((m.version, m.description.to_string()))
                }
                Some(_) => {}
            }
        }
        for (version, (_, ok)) in &applied {
            if !MIGRATOR.iter().any(|m| m.version == *version) {
                if *ok {
                    status.unknown.push(*version);
                } else {
                    status.failed.push(*version);
                }
            }
        }
        Ok(status)
    }

    /// What `migrate` would refuse to run over (everything but pending migrations).
    fn blocking(&self) -> Vec<String> {
        let mut out = vec![];
        for (v, d) in &self.changed {
            out.push(format!(
                "changed: {v} {d} (the database's checksum differs from this binary's)"
            ));
        }
        for v in &self.unknown {
            out.push(format!(
                "unknown: {v} is applied but not in this binary (a newer release migrated this database)"
            ));
        }
        for v in &self.failed {
            out.push(format!(
                "failed: {v} is recorded as failed part-way; repair it by hand"
            ));
        }
        out
    }

    fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .pending
            .iter()
            .map(|(v, d)| format!("pending: {v} {d}"))
            .collect();
        out.extend(self.blocking());
        out
    }
}

/// Where the job's three secrets are, read from the environment once per execution environment.
struct JobSecrets {
    /// `None` when `DATABASE_URL` is set (tests, or an operator running the job by hand).
    master_arn: Option<String>,
    app_arn: String,
    worker_arn: String,
}

impl JobSecrets {
    fn from_env() -> anyhow::Result<JobSecrets> {
        let required = |name: &str| {
            var(name).with_context(|| {
                format!("{name} must name the Secrets Manager secret of that login role")
            })
        };
        let master_arn = if var("DATABASE_URL").is_some() {
            None
        } else {
            Some(var(SECRET_ARN_ENV).with_context(|| {
                format!(
                    "{SECRET_ARN_ENV} must name the master database secret (or set DATABASE_URL)"
                )
            })?)
        };
        Ok(JobSecrets {
            master_arn,
            app_arn: required(APP_SECRET_ARN_ENV)?,
            worker_arn: required(WORKER_SECRET_ARN_ENV)?,
        })
    }
}

/// `datamailer lambda` with `DATAMAILER_LAMBDA_JOB=migrate`. Each invocation reads the master
/// secret afresh, applies the migrations, creates or updates the app and worker login roles,
/// closes its one connection and answers
/// `{"applied": [versions], "pending_before": N, "roles": [app, worker]}`; any error fails the
/// invocation. The master URL `main.rs` resolved at start is dropped here: between invocations
/// the process holds no master credential.
pub async fn run_lambda(mut config: Config) -> anyhow::Result<()> {
    let explicit_url = var("DATABASE_URL");
    config.database_url = None;
    let secrets = Arc::new(JobSecrets::from_env()?);
    let aws = Arc::new(services::aws_config(&config).await);
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
        let (aws, secrets, explicit_url) = (aws.clone(), secrets.clone(), explicit_url.clone());
        async move {
            match run_job(&aws, &secrets, explicit_url.as_deref()).await {
                Ok(answer) => Ok(answer),
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "the migrate job failed");
                    Err(lambda_runtime::Error::from(format!("{e:#}")))
                }
            }
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}

/// One run of the job. The secrets are read and the role names checked before anything is
/// written; the master URL lives only for the duration of this call.
async fn run_job(
    aws: &aws_config::SdkConfig,
    s: &JobSecrets,
    explicit_url: Option<&str>,
) -> anyhow::Result<Value> {
    let master_url = match (explicit_url, &s.master_arn) {
        (Some(url), _) => url.to_string(),
        (None, Some(arn)) => {
            let json = secrets::read_secret(aws, arn, SECRET_ARN_ENV).await?;
            let host = var(secrets::HOST_ENV);
            secrets::database_url(&json, host.as_deref(), &secrets::tls_from_env())
                .with_context(|| format!("the master secret {arn} ({SECRET_ARN_ENV})"))?
        }
        (None, None) => anyhow::bail!("{SECRET_ARN_ENV} must name the master database secret"),
    };
    let role = |env: &'static str, arn: String, limit: i32, access: Access| async move {
        let json = secrets::read_secret(aws, &arn, env).await?;
        let login = secrets::login(&json).with_context(|| format!("the secret {arn} ({env})"))?;
        anyhow::Ok(LoginRole {
            source: env.to_string(),
            name: login.username,
            password: login.password,
            connection_limit: limit,
            access,
        })
    };
    let login_roles = [
        role(
            APP_SECRET_ARN_ENV,
            s.app_arn.clone(),
            roles::APP_CONNECTION_LIMIT,
            Access::ReadWriteDelete,
        )
        .await?,
        role(
            WORKER_SECRET_ARN_ENV,
            s.worker_arn.clone(),
            roles::WORKER_CONNECTION_LIMIT,
            Access::ReadWrite,
        )
        .await?,
    ];

    let mut conn = PgConnection::connect(&master_url)
        .await
        .context("connecting to the database as the master user")?;
    drop(master_url);
    let master_user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await?;
    roles::check_names(&login_roles, &master_user)?;
    let before = Status::read(&mut conn).await?;
    let blocking = before.blocking();
    anyhow::ensure!(
        blocking.is_empty(),
        "refusing to migrate: {}",
        blocking.join("; ")
    );
    MIGRATOR
        .run(&mut conn)
        .await
        .context("applying migrations")?;
    roles::ensure(&mut conn, &login_roles).await?;
    conn.close().await.ok();

    let applied: Vec<i64> = before.pending.iter().map(|(v, _)| *v).collect();
    let names: Vec<&str> = login_roles.iter().map(|r| r.name.as_str()).collect();
    tracing::info!(?applied, roles = ?names, "migrations and login roles in place");
    Ok(json!({
        "applied": applied,
        "pending_before": before.pending.len(),
        "roles": names,
    }))
}
