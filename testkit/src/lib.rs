//! Test support shared by every crate's integration tests.
//!
//! * [`TestDb`]: a fresh, migrated Postgres database per test, cloned from a template database
//!   that is migrated once per migration set (so tests run in parallel and cost one `CREATE
//!   DATABASE ... TEMPLATE` each).
//! * [`aws_endpoint`]: the SQS/SES-compatible test server (moto in server mode).
//! * [`fake_ses`]: a fake SES v2 endpoint with latency, throttling and errors, recording every
//!   send (rate, exactly-once and load checks).
//!
//! Under `CI=true` a missing service is a failure, never a skip.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, Executor, PgConnection, PgPool};

pub mod fake_ses;
pub mod ses;

/// The server that tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("DATAMAILER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Says why a service-backed test cannot run: panics under CI, otherwise prints and returns
/// `None` so the caller can return early.
pub fn unavailable(what: &str, why: impl std::fmt::Display) -> Option<std::convert::Infallible> {
    if in_ci() {
        panic!("{what} is required under CI=true but is unavailable: {why}");
    }
    eprintln!("SKIPPED: {what} unavailable: {why}");
    None
}

/// A throwaway database with the full schema. Dropped (best effort) by [`TestDb::drop_db`].
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database url has a path");
    format!("{base}/{db}")
}

/// A stable name for the current migration set, so a changed migration gets a new template.
fn template_name() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("migrations dir")
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        p.file_name().hash(&mut h);
        std::fs::read(&p).unwrap().hash(&mut h);
    }
    format!("dm_template_{:x}", h.finish() & 0xffff_ffff)
}

impl TestDb {
    /// Creates a migrated database, or returns `None` (outside CI) when Postgres is down.
    pub async fn create() -> Option<TestDb> {
        let admin = admin_url();
        let mut conn = match PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => {
                unavailable("Postgres", e);
                return None;
            }
        };
        let template = template_name();
        // One process migrates the template; the advisory lock makes the others wait for it.
        conn.execute("SELECT pg_advisory_lock(74617461)")
            .await
            .unwrap();
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&template)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if !exists {
            conn.execute(format!("CREATE DATABASE {template}").as_str())
                .await
                .unwrap();
            let url = with_db(&admin, &template);
            let mut t = PgConnection::connect(&url).await.unwrap();
            sqlx::migrate!("../migrations").run(&mut t).await.unwrap();
            t.close().await.unwrap();
        }
        let name = format!(
            "dm_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        conn.execute(format!("CREATE DATABASE {name} TEMPLATE {template}").as_str())
            .await
            .unwrap();
        conn.execute("SELECT pg_advisory_unlock(74617461)")
            .await
            .unwrap();
        let url = with_db(&admin, &name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        Some(TestDb { name, url, pool })
    }

    /// Drops the database (call at the end of a test; leftovers are harmless).
    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await;
        }
    }
}

/// The SQS/SES-compatible server for tests (`DATAMAILER_TEST_AWS_ENDPOINT`, e.g. moto on
/// http://127.0.0.1:5055). `None` (outside CI) when it is not set or not answering.
pub async fn aws_endpoint() -> Option<String> {
    let Ok(url) = std::env::var("DATAMAILER_TEST_AWS_ENDPOINT") else {
        unavailable(
            "the SQS/SES test server",
            "DATAMAILER_TEST_AWS_ENDPOINT is not set",
        );
        return None;
    };
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    match tokio::net::TcpStream::connect(&addr).await {
        Ok(_) => Some(url),
        Err(e) => {
            unavailable("the SQS/SES test server", format!("{url}: {e}"));
            None
        }
    }
}
