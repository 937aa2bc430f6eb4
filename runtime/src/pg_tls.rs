//! TLS for the workers' Postgres connections, with libpq's `sslmode` meanings, so one
//! `DATABASE_URL` means the same thing to the workers (tokio-postgres) and the web (sqlx).
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require` and leaves certificate
//! checks to the TLS connector, so the two TLS parameters are taken out of the URL here:
//!
//! | `sslmode`                  | connection                  | server certificate                 |
//! |----------------------------|-----------------------------|------------------------------------|
//! | `disable`                  | plain                       | —                                  |
//! | `allow`, `prefer` (default)| TLS when the server offers it | not checked (as libpq)           |
//! | `require`                  | TLS or fail                 | checked only with `sslrootcert`    |
//! | `verify-ca`, `verify-full` | TLS or fail                 | chain and host name checked        |
//!
//! Checked certificates chain to `sslrootcert` (a PEM file, e.g. the RDS CA bundle) or, without
//! it, to the webpki roots (which cover RDS Proxy's certificates but not an RDS instance's).
//! `verify-ca` is checked like `verify-full`: rustls always checks the host name.

use std::sync::Arc;

use anyhow::Context;
use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> anyhow::Result<Mode> {
        Ok(match value {
            "disable" => Mode::Disable,
            "allow" => Mode::Allow,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => anyhow::bail!(
                "DATABASE_URL: sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ),
        })
    }
}

/// A worker connection's settings: where to connect and how to secure it.
pub struct Connect {
    pub config: tokio_postgres::Config,
    pub mode: Mode,
    pub tls: MakeRustlsConnect,
}

/// Parses a `postgres://` URL (or a libpq key=value string without TLS parameters).
pub fn parse(database_url: &str) -> anyhow::Result<Connect> {
    let (rest, mode, root_cert) = split_tls_params(database_url)?;
    let mut config: tokio_postgres::Config = rest.parse().context("invalid DATABASE_URL")?;
    config.ssl_mode(match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Allow | Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    });
    let verify = matches!(mode, Mode::VerifyCa | Mode::VerifyFull)
        || (mode == Mode::Require && root_cert.is_some());
    let tls = MakeRustlsConnect::new(client_config(verify, root_cert.as_deref())?);
    Ok(Connect { config, mode, tls })
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query string.
fn split_tls_params(url: &str) -> anyhow::Result<(String, Mode, Option<String>)> {
    let Some((base, query)) = url.split_once('?').filter(|_| url.contains("://")) else {
        return Ok((url.to_string(), Mode::Prefer, None));
    };
    let (mut mode, mut root_cert, mut kept) = (Mode::Prefer, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = percent_decode_str(value).decode_utf8_lossy();
        match key {
            "sslmode" => mode = Mode::parse(&decoded)?,
            "sslrootcert" => root_cert = Some(decoded.into_owned()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root_cert))
}

fn provider() -> Arc<CryptoProvider> {
    // Named explicitly: the process links both ring and aws-lc-rs (the AWS SDK's), so rustls
    // has no unambiguous default.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(verify: bool, root_cert: Option<&str>) -> anyhow::Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    if !verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
            .with_no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("DATABASE_URL: reading sslrootcert {path}"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            anyhow::ensure!(
                added > 0,
                "DATABASE_URL: sslrootcert {path} holds no usable certificate"
            );
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `prefer`/`require` without a root certificate: encrypt, accept any certificate (libpq's
/// meaning of those modes), but still check the handshake signatures.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_tls_parameters_out_of_the_url() {
        let (rest, mode, root) = split_tls_params(
            "postgres://u:p@db:5432/dm?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Frds.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/dm?application_name=x");
        assert_eq!(mode, Mode::VerifyFull);
        assert_eq!(root.as_deref(), Some("/etc/rds.pem"));

        let (rest, mode, root) = split_tls_params("postgres://u@db/dm?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://u@db/dm", Mode::Require, None)
        );

        let (_, mode, _) = split_tls_params("postgres://u@db/dm").unwrap();
        assert_eq!(mode, Mode::Prefer);
    }

    #[test]
    fn names_a_bad_sslmode() {
        let err = parse("postgres://u@db/dm?sslmode=on").err().unwrap();
        assert!(err.to_string().contains("sslmode \"on\""), "{err}");
    }

    #[test]
    fn names_a_missing_root_certificate() {
        let err = parse("postgres://u@db/dm?sslmode=verify-full&sslrootcert=/nonexistent.pem")
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("sslrootcert /nonexistent.pem"),
            "{err:#}"
        );
    }
}
