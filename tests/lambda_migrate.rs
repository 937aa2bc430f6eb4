//! The migrate job (`DATAMAILER_LAMBDA_JOB=migrate`) under the Lambda runtime emulator
//! (cargo-lambda, as in `tests/lambda_bootstrap.rs`), against the real local Postgres with its
//! three secrets on moto, and `datamailer migrate --check`.
//!
//! The master user is an RDS-like one: a role with CREATEROLE (not a superuser) that owns the
//! database. Role names are unique per test, since roles are cluster-global. The local server
//! trusts every login, so the passwords are proven against the stored SCRAM verifiers.

mod support;

use std::process::Command;

use datamailer_testkit::TestDb;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use support::*;

/// The versions of the migrations in `migrations/` (what a fresh database has pending).
fn migration_versions() -> Vec<i64> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    let mut versions: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.ends_with(".sql")
                .then(|| name.split('_').next().unwrap().parse().unwrap())
        })
        .collect();
    versions.sort();
    versions
}

/// A role name unique to this test run (`prefix_pid_n_nanos`).
fn role_name(prefix: &str) -> String {
    unique(prefix).replace('-', "_")
}

fn url_as(db: &EmptyDb, user: &str, password: &str) -> String {
    let encoded: String = password
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!(
        "postgres://{user}:{encoded}@127.0.0.1:5432/{}?sslmode=disable",
        db.name
    )
}

async fn admin(db: &EmptyDb) -> PgConnection {
    PgConnection::connect(&db.url)
        .await
        .expect("admin connection")
}

/// The emulator, and `datamailer lambda` as the migrate function reading its three secrets.
struct MigrateFunction {
    emulator: Process,
    function: Process,
    port: u16,
}

impl MigrateFunction {
    async fn start(
        endpoint: &str,
        cargo_lambda: &std::path::Path,
        master: &str,
        app: &str,
        worker: &str,
    ) -> MigrateFunction {
        let (emulator, port) = start_lambda_emulator(cargo_lambda).await;
        let mut cmd = Command::new(BIN);
        cmd.arg("lambda").env_clear();
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        lambda_function_env(&mut cmd, port, "datamailer-test-migrate");
        aws_env(&mut cmd, endpoint);
        cmd.env("DATAMAILER_LAMBDA_JOB", "migrate")
            .env("DATAMAILER_DATABASE_SECRET_ARN", master)
            .env("DATAMAILER_APP_DATABASE_SECRET_ARN", app)
            .env("DATAMAILER_WORKER_DATABASE_SECRET_ARN", worker)
            .env("RUST_LOG", "info");
        let function = Process::spawn("datamailer lambda (migrate)", cmd);
        MigrateFunction {
            emulator,
            function,
            port,
        }
    }

    async fn invoke(&mut self) -> (u16, String) {
        invoke_lambda(
            self.port,
            &json!({"source": "test"}),
            &mut [&mut self.function, &mut self.emulator],
        )
        .await
    }

    /// An invocation that must succeed: its JSON answer.
    async fn invoke_ok(&mut self) -> Value {
        let (status, body) = self.invoke().await;
        assert_eq!(status, 200, "invoke answered {status}: {body}");
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("answer {body:?} is not JSON: {e}"));
        assert!(
            answer.get("errorMessage").is_none(),
            "the job failed: {answer}\n{}",
            self.function.log()
        );
        answer
    }
}

/// The role attributes the job sets: (can login, superuser, createrole, createdb, conn limit).
async fn role_attributes(conn: &mut PgConnection, role: &str) -> (bool, bool, bool, bool, i32) {
    sqlx::query_as(
        "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolconnlimit FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_one(conn)
    .await
    .unwrap_or_else(|e| panic!("role {role}: {e}"))
}

async fn stored_verifier(conn: &mut PgConnection, role: &str) -> String {
    sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(role)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("pg_authid for {role}: {e}"))
}

#[tokio::test]
async fn the_migrate_job_migrates_and_sets_up_both_login_roles_idempotently() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(cargo_lambda) = find_cargo_lambda() else {
        return;
    };
    let (master, app, worker) = (
        role_name("dm_master"),
        role_name("dm_app"),
        role_name("dm_worker"),
    );
    let Some(mut probe) = PgConnection::connect(&datamailer_testkit::admin_url())
        .await
        .map_err(|e| datamailer_testkit::unavailable("Postgres", e))
        .ok()
    else {
        return;
    };
    // RDS's master: CREATEROLE and CREATEDB, not a superuser, owner of the database.
    sqlx::raw_sql(&format!(
        "CREATE ROLE {master} LOGIN CREATEROLE CREATEDB PASSWORD 'unused'"
    ))
    .execute(&mut probe)
    .await
    .unwrap();
    probe.close().await.ok();
    let db = EmptyDb::create(Some(&master))
        .await
        .expect("empty database");
    let aws = sdk_config(&endpoint).await;
    let (app_pw, worker_pw) = ("app p@ss:w/rd%?#&='é", "worker-Pw_0~*\"!");
    // The secret URLs use TLS (`sslmode=require`: the local server has a certificate).
    let master_arn = login_secret(&aws, &master, "unused", "127.0.0.1", &db.name).await;
    let app_arn = login_secret(&aws, &app, app_pw, "127.0.0.1", &db.name).await;
    let worker_arn = login_secret(&aws, &worker, worker_pw, "127.0.0.1", &db.name).await;

    let mut f =
        MigrateFunction::start(&endpoint, &cargo_lambda, &master_arn, &app_arn, &worker_arn).await;
    let versions = migration_versions();
    let first = f.invoke_ok().await;
    assert_eq!(
        first,
        json!({"applied": versions, "pending_before": versions.len(), "roles": [app, worker]})
    );

    let mut conn = admin(&db).await;
    let recorded: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        versions.iter().map(|v| (*v, true)).collect::<Vec<_>>()
    );
    // The master user ran them, so it owns the tables (default privileges hang on that).
    let owner: String = sqlx::query_scalar(
        "SELECT tableowner::text FROM pg_tables WHERE tablename = 'queue_pauses'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(owner, master);
    assert_eq!(
        role_attributes(&mut conn, &app).await,
        (true, false, false, false, 12)
    );
    assert_eq!(
        role_attributes(&mut conn, &worker).await,
        (true, false, false, false, 26)
    );
    let app_verifier = stored_verifier(&mut conn, &app).await;
    let worker_verifier = stored_verifier(&mut conn, &worker).await;
    assert!(
        scram_verifier_matches(&app_verifier, app_pw),
        "{app}: {app_verifier}"
    );
    assert!(scram_verifier_matches(&worker_verifier, worker_pw));
    assert!(!scram_verifier_matches(&app_verifier, worker_pw));
    // The job sent verifiers, never a password, so none reached the server's view of queries.
    assert!(
        !f.function.log().contains("p@ss"),
        "the function logged a password"
    );

    // Both roles log in (as their secrets say) and work on the tables.
    let mut as_app = PgConnection::connect(&url_as(&db, &app, app_pw))
        .await
        .expect("app login");
    sqlx::raw_sql(
        "INSERT INTO organizations (name, slug) VALUES ('Acme', 'acme');
         INSERT INTO queue_pauses (queue, reason) VALUES ('campaign-email', 'test');
         UPDATE queue_pauses SET reason = 'still' WHERE queue = 'campaign-email';
         DELETE FROM queue_pauses WHERE queue = 'campaign-email';",
    )
    .execute(&mut as_app)
    .await
    .expect("the app role reads, writes and deletes");
    let mut as_worker = PgConnection::connect(&url_as(&db, &worker, worker_pw))
        .await
        .expect("worker login");
    sqlx::raw_sql(
        "INSERT INTO organizations (name, slug) VALUES ('Beta', 'beta');
         INSERT INTO queue_pauses (queue) VALUES ('ses-webhooks');
         UPDATE queue_pauses SET reason = 'worker' WHERE queue = 'ses-webhooks';",
    )
    .execute(&mut as_worker)
    .await
    .expect("the worker role reads and writes");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM organizations")
        .fetch_one(&mut as_worker)
        .await
        .unwrap();
    assert_eq!(n, 2);
    for forbidden in [
        "DELETE FROM queue_pauses",
        "TRUNCATE queue_pauses",
        "CREATE TABLE worker_ddl (x int)",
    ] {
        let err = sqlx::raw_sql(forbidden)
            .execute(&mut as_worker)
            .await
            .expect_err(forbidden);
        assert!(
            err.to_string().contains("permission denied"),
            "{forbidden}: {err}"
        );
    }
    // A table a later migration creates (as the master user) is covered by default privileges.
    let mut as_master = PgConnection::connect(&url_as(&db, &master, "unused"))
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE later_table (id bigint GENERATED BY DEFAULT AS IDENTITY, v text)")
        .execute(&mut as_master)
        .await
        .unwrap();
    sqlx::raw_sql("INSERT INTO later_table (v) VALUES ('app'); DELETE FROM later_table")
        .execute(&mut as_app)
        .await
        .expect("default privileges for the app role");
    sqlx::raw_sql("INSERT INTO later_table (v) VALUES ('worker')")
        .execute(&mut as_worker)
        .await
        .expect("default privileges for the worker role");

    // The second invocation is a no-op that succeeds; the passwords still hold.
    let second = f.invoke_ok().await;
    assert_eq!(
        second,
        json!({"applied": [], "pending_before": 0, "roles": [app, worker]})
    );
    assert!(scram_verifier_matches(
        &stored_verifier(&mut conn, &app).await,
        app_pw
    ));
    assert!(scram_verifier_matches(
        &stored_verifier(&mut conn, &worker).await,
        worker_pw
    ));
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(applied, versions.len() as i64);

    for c in [as_app, as_worker, as_master, conn] {
        c.close().await.ok();
    }
    drop(f);
    db.drop_db(&[&app, &worker, &master]).await;
}

#[tokio::test]
async fn the_migrate_job_fails_the_invocation_and_writes_nothing_on_a_bad_secret() {
    let Some(endpoint) = datamailer_testkit::aws_endpoint().await else {
        return;
    };
    let Some(cargo_lambda) = find_cargo_lambda() else {
        return;
    };
    let Some(db) = EmptyDb::create(None).await else {
        return;
    };
    let aws = sdk_config(&endpoint).await;
    let worker = role_name("dm_worker");
    let master_arn = login_secret(&aws, "postgres", "unused", "127.0.0.1", &db.name).await;
    // The app secret names the master user: the job must refuse before touching anything.
    let app_arn = login_secret(&aws, "postgres", "pw", "127.0.0.1", &db.name).await;
    let worker_arn = login_secret(&aws, &worker, "pw", "127.0.0.1", &db.name).await;
    let mut f =
        MigrateFunction::start(&endpoint, &cargo_lambda, &master_arn, &app_arn, &worker_arn).await;
    let (status, body) = f.invoke().await;
    assert!(
        body.contains("DATAMAILER_APP_DATABASE_SECRET_ARN: username 'postgres' is the master user"),
        "status {status}: {body}"
    );
    assert_ne!(status, 200, "an error must fail the invocation: {body}");
    let mut conn = admin(&db).await;
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!migrated, "nothing may be migrated after a refused run");
    let worker_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(&worker)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(!worker_exists);
    // The function is still alive for the next invocation (an error fails one invocation).
    f.function.assert_running();
    conn.close().await.ok();
    drop(f);
    db.drop_db(&[&worker]).await;
}

fn migrate_cli(db_url: &str, check: bool) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("migrate")
        .env("DATABASE_URL", db_url)
        .env_remove("DATAMAILER_DATABASE_SECRET_ARN")
        .env("RUST_LOG", "warn");
    if check {
        cmd.arg("--check");
    }
    cmd.output().expect("run datamailer migrate")
}

#[tokio::test]
async fn migrate_check_lists_pending_and_changed_migrations_and_applies_nothing() {
    let Some(db) = EmptyDb::create(None).await else {
        return;
    };
    let url = format!("{}?sslmode=disable", db.url);
    let versions = migration_versions();

    // A fresh database: every migration pending, exit non-zero, nothing created.
    let out = migrate_cli(&url, true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let pending: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("pending: "))
        .collect();
    assert_eq!(pending.len(), versions.len(), "{stdout}");
    assert!(stdout.contains("pending: 1 core schema"), "{stdout}");
    let mut conn = admin(&db).await;
    let created: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!created, "--check must not create the migrations table");

    // After `migrate`: nothing pending, exit 0.
    let out = migrate_cli(&url, false);
    assert!(out.status.success(), "{:?}", out);
    let out = migrate_cli(&url, true);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no pending migrations"
    );

    // A migration whose SQL changed since it was applied, and one from a newer release.
    sqlx::raw_sql(
        "UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 1;
         INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', true, '\\x00', 1);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let out = migrate_cli(&url, true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("changed: 1 core schema"), "{stdout}");
    assert!(stdout.contains("unknown: 9999"), "{stdout}");
    conn.close().await.ok();
    db.drop_db(&[]).await;

    // A database that does not exist is reported, not created.
    let missing = role_name("dm_missing");
    let out = migrate_cli(
        &format!(
            "{}/{missing}?sslmode=disable",
            datamailer_testkit::admin_url().rsplit_once('/').unwrap().0
        ),
        true,
    );
    assert_eq!(out.status.code(), Some(1));
    let mut conn = PgConnection::connect(&datamailer_testkit::admin_url())
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&missing)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(!exists);
}

/// The schema `TestDb` builds and the one the job builds agree (both are `migrations/`).
#[tokio::test]
async fn a_testkit_database_has_nothing_pending() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let out = migrate_cli(&db.url, true);
    assert!(out.status.success(), "{out:?}");
    db.drop_db().await;
}
