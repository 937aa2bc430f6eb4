//! Database credentials from AWS Secrets Manager: when `DATABASE_URL` is unset and
//! `DATAMAILER_DATABASE_SECRET_ARN` names a secret, the URL is built from the secret's JSON
//! (`username`, `password`, `host`, `port`, `dbname`: the shape of an RDS database secret)
//! once per process, i.e. once per Lambda execution environment.

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{var, Config};
use crate::services;

/// The environment variable that names the secret.
pub const SECRET_ARN_ENV: &str = "DATAMAILER_DATABASE_SECRET_ARN";

#[derive(Deserialize)]
struct DbSecret {
    username: String,
    password: String,
    #[serde(default)]
    host: String,
    /// A number or a string; 5432 when absent.
    #[serde(default)]
    port: Option<Value>,
    dbname: String,
}

/// How URLs built from the secret use TLS: `sslmode` and the CA file `sslrootcert` names.
pub const SSLMODE_ENV: &str = "DATAMAILER_DATABASE_SSLMODE";
pub const SSLROOTCERT_ENV: &str = "DATAMAILER_DATABASE_SSLROOTCERT";
/// The RDS CA bundle's name in the Lambda zip (`RDS_CA_BUNDLE=… make lambda-artifact`), under
/// `LAMBDA_TASK_ROOT`.
pub const BUNDLED_CA: &str = "rds-ca.pem";

/// The URL query for the TLS settings. Unset, the mode is `verify-full` against `bundled_ca`
/// when the zip carries the RDS CA bundle, else `require` (RDS forces TLS; the certificate is
/// then not checked).
pub fn tls_query(
    sslmode: Option<&str>,
    sslrootcert: Option<&str>,
    bundled_ca: Option<&str>,
) -> String {
    let (mode, root) = match (sslmode, sslrootcert, bundled_ca) {
        (Some(mode), root, _) => (mode, root),
        (None, Some(root), _) => ("verify-full", Some(root)),
        (None, None, Some(bundle)) => ("verify-full", Some(bundle)),
        (None, None, None) => ("require", None),
    };
    let mut query = format!("?sslmode={}", encode(mode));
    if let Some(path) = root {
        query.push_str(&format!("&sslrootcert={}", encode(path)));
    }
    query
}

/// `$LAMBDA_TASK_ROOT/rds-ca.pem` when the deployment zip carries it.
fn bundled_ca() -> Option<String> {
    let root = std::env::var("LAMBDA_TASK_ROOT").ok()?;
    let path = std::path::Path::new(&root).join(BUNDLED_CA);
    path.is_file().then(|| path.to_string_lossy().into_owned())
}

/// `postgres://user:password@host:port/dbname?<tls>` from the secret's JSON, with the user, the
/// password and the database name percent-encoded; `host` replaces the secret's host.
pub fn database_url(secret_json: &str, host: Option<&str>, tls: &str) -> anyhow::Result<String> {
    let s: DbSecret = serde_json::from_str(secret_json).context(
        "the database secret must be JSON with username, password, host, port and dbname",
    )?;
    let port: u16 = match &s.port {
        None | Some(Value::Null) => 5432,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .context("the database secret's port is not a port number")?,
        Some(Value::String(p)) => p
            .trim()
            .parse()
            .context("the database secret's port is not a port number")?,
        Some(_) => anyhow::bail!("the database secret's port is not a port number"),
    };
    let host = host.unwrap_or(&s.host).trim();
    anyhow::ensure!(!host.is_empty(), "the database secret has an empty host");
    Ok(format!(
        "postgres://{}:{}@{}:{}/{}{tls}",
        encode(&s.username),
        encode(&s.password),
        host,
        port,
        encode(&s.dbname)
    ))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A login from a database secret: the role name and its password.
#[derive(Debug, Clone)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// The `username` and `password` of a database secret's JSON.
pub fn login(secret_json: &str) -> anyhow::Result<Login> {
    #[derive(Deserialize)]
    struct Fields {
        username: String,
        password: String,
    }
    let s: Fields = serde_json::from_str(secret_json)
        .context("the database secret must be JSON with username and password")?;
    anyhow::ensure!(
        !s.username.trim().is_empty(),
        "the database secret's username is empty"
    );
    anyhow::ensure!(
        !s.password.is_empty(),
        "the database secret's password is empty"
    );
    Ok(Login {
        username: s.username,
        password: s.password,
    })
}

/// The `SecretString` of a secret; `env` names the variable that pointed at it, for the error.
pub async fn read_secret(
    aws: &aws_config::SdkConfig,
    arn: &str,
    env: &str,
) -> anyhow::Result<String> {
    let client = aws_sdk_secretsmanager::Client::new(aws);
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .with_context(|| format!("reading the database secret {arn} ({env})"))?;
    out.secret_string()
        .map(str::to_string)
        .with_context(|| format!("the database secret {arn} ({env}) has no SecretString"))
}

/// Reads the secret and returns the database URL it describes.
pub async fn fetch_database_url(
    aws: &aws_config::SdkConfig,
    arn: &str,
    host: Option<&str>,
    tls: &str,
) -> anyhow::Result<String> {
    let json = read_secret(aws, arn, SECRET_ARN_ENV).await?;
    database_url(&json, host, tls).with_context(|| format!("the database secret {arn}"))
}

/// The TLS query for URLs built from a secret, from `DATAMAILER_DATABASE_SSLMODE`,
/// `DATAMAILER_DATABASE_SSLROOTCERT` and the bundled RDS CA (see [`tls_query`]).
pub fn tls_from_env() -> String {
    tls_query(
        var(SSLMODE_ENV).as_deref(),
        var(SSLROOTCERT_ENV).as_deref(),
        bundled_ca().as_deref(),
    )
}

/// Overrides the secret's `host` (e.g. the RDS Proxy endpoint; the secret names the instance).
pub const HOST_ENV: &str = "DATAMAILER_DATABASE_HOST";

/// Fills `config.database_url` from the secret when `DATABASE_URL` is unset and
/// `DATAMAILER_DATABASE_SECRET_ARN` is set (with the host from `DATAMAILER_DATABASE_HOST`
/// when that is set); otherwise leaves the configuration alone.
pub async fn resolve(config: &mut Config) -> anyhow::Result<()> {
    if config.database_url.is_some() {
        return Ok(());
    }
    let Some(arn) = config.database_secret_arn.clone() else {
        return Ok(());
    };
    let aws = services::aws_config(config).await;
    let host = var(HOST_ENV);
    let tls = tls_from_env();
    config.database_url = Some(fetch_database_url(&aws, &arn, host.as_deref(), &tls).await?);
    tracing::info!(secret = %arn, tls = tls.trim_start_matches('?'), "database credentials read from Secrets Manager");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_url_and_encodes_the_password() {
        let url = database_url(
            r#"{"username":"datamailer_worker","password":"p@ss:w/rd%?#&= é","host":"db.example.internal","port":5432,"dbname":"datamailer","engine":"postgres"}"#,
            None,
            "",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://datamailer_worker:p%40ss%3Aw%2Frd%25%3F%23%26%3D%20%C3%A9@db.example.internal:5432/datamailer"
        );
        // tokio-postgres (worker pool) decodes it back to the same password.
        let pg: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(pg.get_password(), Some("p@ss:w/rd%?#&= é".as_bytes()));
        assert_eq!(pg.get_user(), Some("datamailer_worker"));
        assert_eq!(pg.get_dbname(), Some("datamailer"));
    }

    #[test]
    fn port_may_be_a_string_or_absent() {
        let s = |port: &str| {
            database_url(
                &format!(r#"{{"username":"u","password":"p","host":"h"{port},"dbname":"d"}}"#),
                None,
                "",
            )
        };
        assert_eq!(s(r#","port":"6543""#).unwrap(), "postgres://u:p@h:6543/d");
        assert_eq!(s("").unwrap(), "postgres://u:p@h:5432/d");
        assert!(s(r#","port":"x""#).is_err());
        assert!(s(r#","port":70000"#).is_err());
        assert!(database_url(r#"{"username":"u"}"#, None, "").is_err());
        // The proxy endpoint replaces the instance host.
        assert_eq!(
            database_url(
                r#"{"username":"u","password":"p","host":"instance","port":5432,"dbname":"d"}"#,
                Some("proxy.internal"),
                ""
            )
            .unwrap(),
            "postgres://u:p@proxy.internal:5432/d"
        );
    }

    #[test]
    fn urls_from_the_secret_use_tls() {
        assert_eq!(tls_query(None, None, None), "?sslmode=require");
        // A zip that carries the RDS CA bundle verifies by default; settings still win.
        assert_eq!(
            tls_query(None, None, Some("/var/task/rds-ca.pem")),
            "?sslmode=verify-full&sslrootcert=%2Fvar%2Ftask%2Frds-ca.pem"
        );
        assert_eq!(
            tls_query(Some("require"), None, Some("/var/task/rds-ca.pem")),
            "?sslmode=require"
        );
        // Through RDS Proxy (ACM certificate): verify-full against the public roots.
        assert_eq!(
            tls_query(Some("verify-full"), None, Some("/var/task/rds-ca.pem")),
            "?sslmode=verify-full"
        );
        let tls = tls_query(Some("verify-full"), Some("/var/task/rds ca.pem"), None);
        assert_eq!(
            tls,
            "?sslmode=verify-full&sslrootcert=%2Fvar%2Ftask%2Frds%20ca.pem"
        );
        let url = database_url(
            r#"{"username":"u","password":"p","host":"h","dbname":"d"}"#,
            None,
            &tls,
        )
        .unwrap();
        // The worker pool reads both parameters back (an absent CA file is named).
        let err = datamailer_runtime::pg_tls::parse(&url).err().unwrap();
        assert!(
            format!("{err:#}").contains("sslrootcert /var/task/rds ca.pem"),
            "{err:#}"
        );
        let ok = datamailer_runtime::pg_tls::parse(
            &database_url(
                r#"{"username":"u","password":"p","host":"h","dbname":"d"}"#,
                None,
                &tls_query(None, None, None),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(ok.mode, datamailer_runtime::pg_tls::Mode::Require);
    }
}
