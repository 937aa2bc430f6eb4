//! The worker side's Postgres pool: one per process, one hard cap shared by every tree.
//!
//! deadpool waits forever by default; we set wait, create and recycle timeouts so a saturated
//! pool fails a message (which is retried) instead of hanging a worker.

use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, Timeouts,
};

use crate::pg_tls;

/// How the pool is sized and checked.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// The hard cap on connections this pool opens.
    pub max_connections: usize,
    /// Check each connection with a query when it is reused: for Lambda, whose frozen
    /// processes may find their connections closed by the server.
    pub verify_on_recycle: bool,
    pub wait_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 4,
            verify_on_recycle: false,
            wait_timeout: Duration::from_secs(5),
        }
    }
}

/// A cloneable handle on the shared pool.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

impl Db {
    pub fn connect(database_url: &str, settings: &PoolSettings) -> anyhow::Result<Db> {
        let pg_tls::Connect {
            config: mut pg,
            tls,
            ..
        } = pg_tls::parse(database_url)?;
        if pg.get_application_name().is_none() {
            // Lets operators (and the connection-cap test) tell worker connections apart.
            pg.application_name("datamailer-worker");
        }
        let recycling_method = if settings.verify_on_recycle {
            RecyclingMethod::Verified
        } else {
            RecyclingMethod::Fast
        };
        let manager = Manager::from_config(pg, tls, ManagerConfig { recycling_method });
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections.max(1))
            .timeouts(Timeouts {
                wait: Some(settings.wait_timeout),
                create: Some(Duration::from_secs(5)),
                recycle: Some(Duration::from_secs(5)),
            })
            .runtime(Runtime::Tokio1)
            .build()
            .context("building the Postgres pool")?;
        Ok(Db { pool })
    }

    /// A connection, waiting at most the configured wait timeout. Records the wait and the
    /// pool's size so `/metrics` shows saturation.
    pub async fn get(&self) -> Result<Object, PoolError> {
        let started = Instant::now();
        let conn = self.pool.get().await;
        metrics::histogram!("datamailer_db_pool_wait_seconds")
            .record(started.elapsed().as_secs_f64());
        let status = self.pool.status();
        metrics::gauge!("datamailer_db_pool_connections", "state" => "open")
            .set(status.size as f64);
        metrics::gauge!("datamailer_db_pool_connections", "state" => "idle")
            .set(status.available as f64);
        metrics::gauge!("datamailer_db_pool_max_connections").set(status.max_size as f64);
        conn
    }

    /// Connections currently open (in use or idle).
    pub fn open_connections(&self) -> usize {
        self.pool.status().size
    }

    pub fn max_connections(&self) -> usize {
        self.pool.status().max_size
    }

    pub fn close(&self) {
        self.pool.close();
    }
}
