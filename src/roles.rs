//! The deployment's two Postgres login roles: the web's (`datamailer_app`) and the workers'
//! (`datamailer_worker`, also the maintenance job's). CloudFormation cannot make Postgres roles,
//! so whoever holds the master credential (the migrate Lambda job) creates or updates them on
//! every run: idempotent, in one transaction. Their names and passwords come from their secrets.
//!
//! Passwords are sent as SCRAM-SHA-256 verifiers computed here, never in clear text, so they
//! cannot end up in the server's statement log or `pg_stat_activity`.

use anyhow::{bail, ensure, Context};
use postgres_protocol::escape::{escape_identifier, escape_literal};
use sqlx::{Connection, PgConnection};

/// The web pool (8) plus operator commands on the web host.
pub const APP_CONNECTION_LIMIT: i32 = 12;
/// Σ over the queue workers (reserved concurrency × pool 2 = 20) plus the maintenance job
/// (1 × (pool 2 + import jobs 2)), with a margin; `validate-infra` checks the template against
/// the same budget.
pub const WORKER_CONNECTION_LIMIT: i32 = 26;

/// What a role may do with the rows of the `public` schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The web: the API reads and writes every table.
    ReadWriteDelete,
    /// Workers: read and write rows, never DELETE or TRUNCATE.
    ReadWrite,
}

impl Access {
    fn table_privileges(self) -> &'static str {
        match self {
            Access::ReadWriteDelete => "SELECT, INSERT, UPDATE, DELETE",
            Access::ReadWrite => "SELECT, INSERT, UPDATE",
        }
    }
}

/// A login role to create or update.
#[derive(Clone)]
pub struct LoginRole {
    /// Where the role came from (e.g. the secret's variable), for error messages.
    pub source: String,
    pub name: String,
    pub password: String,
    pub connection_limit: i32,
    pub access: Access,
}

impl std::fmt::Debug for LoginRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRole")
            .field("source", &self.source)
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("connection_limit", &self.connection_limit)
            .field("access", &self.access)
            .finish()
    }
}

/// Refuses role names that would hit an administrator or a built-in role (`ALTER ROLE … NOSUPERUSER`
/// on the master user would lock the deployment out), and two roles with one name.
pub fn check_names(roles: &[LoginRole], master_user: &str) -> anyhow::Result<()> {
    for (i, role) in roles.iter().enumerate() {
        let (name, source) = (role.name.as_str(), role.source.as_str());
        ensure!(!name.is_empty(), "{source}: the username is empty");
        ensure!(
            name.len() <= 63,
            "{source}: username '{name}' is longer than Postgres's 63 bytes"
        );
        ensure!(
            name != master_user,
            "{source}: username '{name}' is the master user; the app and worker roles must be their own"
        );
        let lower = name.to_ascii_lowercase();
        ensure!(
            !lower.starts_with("pg_") && !lower.starts_with("rds") && lower != "public",
            "{source}: username '{name}' is reserved (pg_*, rds*, public)"
        );
        if let Some(other) = roles[..i].iter().find(|o| o.name == role.name) {
            bail!(
                "{source}: username '{name}' is also the username of {}; each role needs its own",
                other.source
            );
        }
    }
    Ok(())
}

/// Creates the roles if missing and re-applies their password, connection limit and grants
/// (also the default privileges, so tables later migrations create are covered). Runs as the
/// connection's user, which owns the tables (it ran the migrations).
pub async fn ensure(conn: &mut PgConnection, roles: &[LoginRole]) -> anyhow::Result<()> {
    let mut tx = conn.begin().await.context("starting the role setup")?;
    // One role setup at a time (CREATE ROLE races otherwise); released at commit.
    sqlx::query("SELECT pg_advisory_xact_lock(7467617201)")
        .execute(&mut *tx)
        .await
        .context("taking the role-setup lock")?;
    let (owner, database): (String, String) =
        sqlx::query_as("SELECT current_user::text, current_database()::text")
            .fetch_one(&mut *tx)
            .await?;
    let owner = escape_identifier(&owner);
    let database = escape_identifier(&database);
    let mut statements = vec![];
    for role in roles {
        let existing: Option<(bool, bool)> =
            sqlx::query_as("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = $1")
                .bind(&role.name)
                .fetch_optional(&mut *tx)
                .await
                .with_context(|| format!("looking up role {}", role.name))?;
        let ident = escape_identifier(&role.name);
        match existing {
            None => statements.push(format!("CREATE ROLE {ident} LOGIN")),
            Some((superuser, createrole)) => ensure!(
                !superuser && !createrole,
                "{}: role '{}' exists and is an administrator (SUPERUSER or CREATEROLE); refusing to change it",
                role.source,
                role.name
            ),
        }
        let verifier = postgres_protocol::password::scram_sha_256(role.password.as_bytes());
        // No NOSUPERUSER: naming that attribute at all needs a true superuser, which the RDS
        // master is not (CREATEROLE cannot make superusers, and existing ones are refused above).
        statements.push(format!(
            "ALTER ROLE {ident} WITH LOGIN NOCREATEDB NOCREATEROLE PASSWORD {} CONNECTION LIMIT {}",
            escape_literal(&verifier),
            role.connection_limit
        ));
    }
    let all = roles
        .iter()
        .map(|r| escape_identifier(&r.name))
        .collect::<Vec<_>>()
        .join(", ");
    statements.push("REVOKE CREATE ON SCHEMA public FROM PUBLIC".into());
    statements.push(format!("GRANT CONNECT ON DATABASE {database} TO {all}"));
    statements.push(format!("GRANT USAGE ON SCHEMA public TO {all}"));
    for role in roles {
        let ident = escape_identifier(&role.name);
        let tables = role.access.table_privileges();
        statements.push(format!(
            "GRANT {tables} ON ALL TABLES IN SCHEMA public TO {ident}"
        ));
        statements.push(format!(
            "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {ident}"
        ));
        statements.push(format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT {tables} ON TABLES TO {ident}"
        ));
        statements.push(format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {ident}"
        ));
    }
    for sql in &statements {
        // Simple protocol: utility statements take no parameters, and nothing here is worth
        // preparing. The statement carries a verifier, so errors name the statement's kind only.
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .with_context(|| {
                let kind: String = sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                format!("role setup: {kind} …")
            })?;
    }
    tx.commit().await.context("committing the role setup")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(source: &str, name: &str) -> LoginRole {
        LoginRole {
            source: source.into(),
            name: name.into(),
            password: "secret".into(),
            connection_limit: 1,
            access: Access::ReadWrite,
        }
    }

    #[test]
    fn names_that_would_hit_an_administrator_or_each_other_are_refused() {
        let ok = [
            role("APP", "datamailer_app"),
            role("WORKER", "datamailer_worker"),
        ];
        check_names(&ok, "postgres").unwrap();
        let err =
            |roles: &[LoginRole]| format!("{:#}", check_names(roles, "postgres").unwrap_err());
        assert!(
            err(&[role("APP", "postgres")]).contains("APP: username 'postgres' is the master user")
        );
        assert!(err(&[role("APP", "rdsadmin")]).contains("reserved"));
        assert!(err(&[role("APP", "pg_monitor")]).contains("reserved"));
        assert!(err(&[role("APP", "")]).contains("APP: the username is empty"));
        assert!(err(&[role("APP", "same"), role("WORKER", "same")])
            .contains("WORKER: username 'same' is also the username of APP"));
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let r = role("APP", "datamailer_app");
        assert!(!format!("{r:?}").contains("secret"));
    }
}
