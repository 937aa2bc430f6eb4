//! The worker pool's TLS against the local Postgres, which serves TLS with Debian's self-signed
//! "snakeoil" certificate (CN and SAN `localhost`): each `sslmode` does what libpq's does.

use datamailer_runtime::db::{Db, PoolSettings};
use datamailer_testkit::TestDb;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// Whether the pool's connection is encrypted, as the server sees it.
async fn encrypted(url: &str) -> anyhow::Result<bool> {
    let db = Db::connect(url, &PoolSettings::default())?;
    let conn = db.get().await?;
    let row = conn
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

async fn server_has_tls(url: &str) -> bool {
    let db = Db::connect(
        &with_params(url, "sslmode=disable"),
        &PoolSettings::default(),
    )
    .unwrap();
    let conn = db.get().await.unwrap();
    let on: String = conn.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    on == "on"
}

#[tokio::test]
async fn sslmode_means_what_it_means_to_libpq() {
    let Some(test_db) = TestDb::create().await else {
        return;
    };
    let url = &test_db.url;
    assert!(
        server_has_tls(url).await,
        "these tests need the local Postgres to serve TLS (ssl = on)"
    );

    assert!(!encrypted(&with_params(url, "sslmode=disable"))
        .await
        .unwrap());
    // prefer (the default) and require encrypt without checking the self-signed certificate.
    assert!(encrypted(url).await.unwrap());
    assert!(encrypted(&with_params(url, "sslmode=require"))
        .await
        .unwrap());

    // verify-full checks the chain and the name: the snakeoil certificate names `localhost`.
    let localhost = url.replace("127.0.0.1", "localhost");
    assert!(encrypted(&with_params(
        &localhost,
        &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}")
    ))
    .await
    .unwrap());
    let wrong_name = encrypted(&with_params(
        &url.replace("localhost", "127.0.0.1"),
        &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"),
    ))
    .await
    .expect_err("127.0.0.1 is not a name the certificate holds");
    assert!(
        format!("{wrong_name:#}").contains("certificate"),
        "{wrong_name:#}"
    );
    // Without sslrootcert the public roots are used, and they do not vouch for snakeoil.
    let untrusted = encrypted(&with_params(&localhost, "sslmode=verify-full"))
        .await
        .expect_err("a self-signed certificate is not publicly trusted");
    assert!(
        format!("{untrusted:#}").contains("certificate"),
        "{untrusted:#}"
    );
    // require with a root certificate checks it, as libpq does.
    assert!(encrypted(&with_params(
        &url.replace("localhost", "127.0.0.1"),
        &format!("sslmode=require&sslrootcert={SNAKEOIL}")
    ))
    .await
    .is_err());

    test_db.drop_db().await;
}

/// The web side's pool (sqlx) reads the same URL parameters.
#[tokio::test]
async fn the_web_pool_encrypts_too() {
    let Some(test_db) = TestDb::create().await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&with_params(&test_db.url, "sslmode=require"))
        .await
        .unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(ssl);
    pool.close().await;
    test_db.drop_db().await;
}
