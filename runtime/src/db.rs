//! The worker side's Postgres pool: one per process, one hard cap shared by every tree.
//!
//! deadpool waits forever by default; we set wait, create and recycle timeouts so a saturated
//! pool fails a message (which is retried) instead of hanging a worker. Below the pool, every
//! worker connection runs with a `statement_timeout` (and an idle-in-transaction timeout), so a
//! hung query cannot hold a worker, its connection and its hidden messages forever.

use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, Timeouts,
};

use crate::events::db as events;
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
    /// The server cancels any statement running longer than this.
    pub statement_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 4,
            verify_on_recycle: false,
            wait_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
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
        // Appended to whatever `options` the URL carries; later settings win.
        let timeouts = format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            settings.statement_timeout.as_millis(),
            (settings.statement_timeout * 2).as_millis()
        );
        let options = match pg.get_options() {
            Some(existing) if !existing.is_empty() => format!("{existing} {timeouts}"),
            _ => timeouts,
        };
        pg.options(&options);
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
        let status = self.pool.status();
        events::pool_checked_out(
            started.elapsed().as_secs_f64(),
            status.size,
            status.available,
            status.max_size,
        );
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

/// True when `error` says the database is unreachable or overloaded (no connection, a broken
/// one, a statement cancelled by its timeout, the server shutting down) rather than that a
/// statement was wrong: a reason to pause a tree ([`crate::Outcome::Unavailable`]), not to fail
/// a message.
/// Runs `attempt` up to three times (100 ms, then 400 ms apart): for the writes whose loss
/// would cost a double send (recording that a send happened).
pub async fn with_retries<T, F, Fut>(mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut last = None;
    for n in 0..3u32 {
        if n > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100 * 4u64.pow(n - 1))).await;
        }
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("three attempts"))
}

pub fn is_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if cause.downcast_ref::<PoolError>().is_some()
            || cause.downcast_ref::<std::io::Error>().is_some()
        {
            return true;
        }
        match cause.downcast_ref::<tokio_postgres::Error>() {
            Some(e) if e.is_closed() => true,
            Some(e) => e.code().is_some_and(|c| {
                let c = c.code();
                // 08: connection exception; 53: insufficient resources; 57: operator
                // intervention (57014: statement timeout, 57P01..03: shutdown, recovery).
                c.starts_with("08") || c.starts_with("53") || c.starts_with("57")
            }),
            None => false,
        }
    })
}
