//! One pooled connection a group-commit sink keeps while it is busy, so its writes never
//! queue behind the API's reads for a connection, and gives back when it idles or after an
//! error (the connection may be broken).

use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

pub struct HeldConnection {
    db: PgPool,
    conn: Mutex<Option<PoolConnection<Postgres>>>,
}

impl HeldConnection {
    pub fn new(db: PgPool) -> Self {
        Self {
            db,
            conn: Mutex::new(None),
        }
    }

    /// The held connection, taken from the pool first if none is held; `who` names the
    /// holder in the error.
    pub async fn get(
        &self,
        who: &str,
    ) -> anyhow::Result<MappedMutexGuard<'_, PoolConnection<Postgres>>> {
        let mut held = self.conn.lock().await;
        if held.is_none() {
            let conn = self
                .db
                .acquire()
                .await
                .with_context(|| format!("acquire a connection for the {who}"))?;
            *held = Some(conn);
        }
        Ok(MutexGuard::map(held, |c| c.as_mut().expect("held above")))
    }

    /// Gives the connection back to the pool.
    pub async fn release(&self) {
        *self.conn.lock().await = None;
    }
}
