//! The original's database, read-only: Postgres (its deployments) or the SQLite file its
//! sandbox runs on. Both hand over batches as one JSON text (an array of rows, each an array
//! of column values as text or null), so the target casts them in a single statement and no
//! row passes through Rust on its own.

use anyhow::{bail, Context};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, PgConnection, SqliteConnection};

pub enum Source {
    /// Inside one REPEATABLE READ transaction: every table is read from the same snapshot,
    /// so rows written to the original during the run cannot break a foreign key here.
    Postgres(PgConnection),
    /// Inside one read transaction, which is a snapshot too.
    Sqlite(SqliteConnection),
}

/// One batch: the highest source id in it and its rows as JSON text.
pub struct Batch {
    pub last_id: i64,
    pub rows: usize,
    pub json: String,
}

impl Source {
    /// `postgres://...` / `postgresql://...`, `sqlite:///relative` / `sqlite:////absolute`
    /// (dj-database-url's forms, as the original's DATABASE_URL), or a path to the SQLite file.
    pub async fn open(from: &str) -> anyhow::Result<Source> {
        if from.starts_with("postgres://") || from.starts_with("postgresql://") {
            let mut conn = PgConnection::connect(from).await.with_context(|| {
                format!("connecting to the original's database {}", redact(from))
            })?;
            sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut conn)
                .await?;
            return Ok(Source::Postgres(conn));
        }
        let path = match from.strip_prefix("sqlite://") {
            Some(rest) => rest.strip_prefix('/').unwrap_or(rest),
            None => from,
        };
        if !std::path::Path::new(path).is_file() {
            bail!("--from: {path} is neither a postgres:// URL nor an existing SQLite file");
        }
        let options = SqliteConnectOptions::new().filename(path).read_only(true);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .with_context(|| format!("opening the original's SQLite database {path}"))?;
        sqlx::raw_sql("BEGIN").execute(&mut conn).await?;
        Ok(Source::Sqlite(conn))
    }

    /// The table's columns in order, or `None` when the original has no such table (an older
    /// version of it).
    pub async fn columns(&mut self, table: &str) -> anyhow::Result<Option<Vec<String>>> {
        let columns: Vec<String> = match self {
            Source::Postgres(conn) => {
                sqlx::query_scalar(
                    "SELECT column_name::text FROM information_schema.columns
                      WHERE table_schema = current_schema() AND table_name = $1
                      ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(conn)
                .await?
            }
            Source::Sqlite(conn) => {
                sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                    .bind(table)
                    .fetch_all(conn)
                    .await?
            }
        };
        Ok((!columns.is_empty()).then_some(columns))
    }

    /// Rows and highest id.
    pub async fn count(&mut self, table: &str) -> anyhow::Result<(i64, i64)> {
        let sql = format!(
            "SELECT count(*), coalesce(max(id), 0) FROM {}",
            quote(table)
        );
        let counts = match self {
            Source::Postgres(conn) => sqlx::query_as(&sql).fetch_one(conn).await?,
            Source::Sqlite(conn) => sqlx::query_as(&sql).fetch_one(conn).await?,
        };
        Ok(counts)
    }

    /// Up to `limit` rows with an id above `after`, in id order (Django gives every table an
    /// `id`): keyset pages, so a batch costs the same at the end of a table as at its start.
    pub async fn batch(
        &mut self,
        table: &str,
        columns: &[String],
        after: i64,
        limit: i64,
    ) -> anyhow::Result<Option<Batch>> {
        let table = quote(table);
        let (last_id, rows, json): (Option<i64>, i64, Option<String>) = match self {
            Source::Postgres(conn) => {
                let values = columns
                    .iter()
                    .map(|c| format!("{}::text", quote(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "SELECT max(id), count(*), json_agg(json_build_array({values}))::text
                       FROM (SELECT * FROM {table} WHERE id > $1 ORDER BY id LIMIT $2) page"
                );
                sqlx::query_as(&sql)
                    .bind(after)
                    .bind(limit)
                    .fetch_one(conn)
                    .await?
            }
            Source::Sqlite(conn) => {
                // SQLite's json_array keeps integers as numbers and text as strings; the target
                // reads every value with ->> (as text) and casts it, so both arrive alike.
                let values = columns
                    .iter()
                    .map(|c| quote(c))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "SELECT max(id), count(*), json_group_array(json_array({values}))
                       FROM (SELECT * FROM {table} WHERE id > ? ORDER BY id LIMIT ?)"
                );
                sqlx::query_as(&sql)
                    .bind(after)
                    .bind(limit)
                    .fetch_one(conn)
                    .await?
            }
        };
        Ok(match (last_id, json) {
            (Some(last_id), Some(json)) if rows > 0 => Some(Batch {
                last_id,
                rows: rows as usize,
                json,
            }),
            _ => None,
        })
    }
}

/// An identifier as SQL (both dialects accept double quotes).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The source as it is recorded and printed: no password.
pub fn redact(from: &str) -> String {
    match (from.find("://"), from.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &from[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &from[..scheme + 3], &from[at + 1..])
        }
        _ => from.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_leaves_the_url() {
        assert_eq!(
            redact("postgres://dm:s3cr:et@db.internal:5432/datamailer"),
            "postgres://dm@db.internal:5432/datamailer"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact("/var/lib/db.sqlite3"), "/var/lib/db.sqlite3");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("key"), "\"key\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
