//! Finding, creating and migrating the database.

use anyhow::{bail, Context};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::config::Config;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Makes sure the database exists. With `DATABASE_URL` unset we use the local Postgres and
/// create the `datamailer` database on first run; with it set, the database must exist.
pub async fn ensure_database(config: &Config) -> anyhow::Result<()> {
    let url = config.database_url();
    match PgConnection::connect(url).await {
        Ok(conn) => {
            conn.close().await.ok();
            Ok(())
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") && config.database_url.is_none() => {
            let (base, params) = url.split_once('?').unwrap_or((url, ""));
            let (server, name) = base.rsplit_once('/').expect("url has a database");
            let params = if params.is_empty() { String::new() } else { format!("?{params}") };
            let mut admin = PgConnection::connect(&format!("{server}/postgres{params}"))
                .await
                .context("connecting to the local Postgres to create the datamailer database")?;
            admin.execute(format!("CREATE DATABASE \"{name}\"").as_str()).await?;
            tracing::info!(database = name, "created the local database");
            Ok(())
        }
        Err(e) if config.database_url.is_none() => bail!(
            "cannot reach the local Postgres at 127.0.0.1:5432 ({e}). Start it (on Debian: \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or set DATABASE_URL"
        ),
        Err(e) => bail!("cannot connect to DATABASE_URL: {e}"),
    }
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(config.database_url())
        .await
        .context("connecting to the database")?;
    MIGRATOR
        .run(&mut conn)
        .await
        .context("applying migrations")?;
    Ok(())
}

/// The web side's pool (sqlx).
pub async fn web_pool(config: &Config, max_connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(std::time::Duration::from_secs(5))
        // sqlx pings a connection on every acquire by default: a round trip per query. A dead
        // connection surfaces as a query error instead, and the pool replaces it.
        .test_before_acquire(false)
        .connect(config.database_url())
        .await
        .context("connecting the web pool")
}
