//! PostgreSQL over TLS with `sslmode=verify-full` (sqlx, rustls): a PostgreSQL server of the
//! test's own that accepts TLS connections only, its certificate signed by a CA made in the
//! test. The sign-up runs end to end through it; a root certificate that does not verify stops
//! both programs at start naming `DB_SOURCE`, as do a refused login, a missing database and an
//! unreadable `sslrootcert`; the password in `DB_SOURCE` is never shown.

use rcgen::ExtendedKeyUsagePurpose;
use simplebank_core::testing::{PostgresServer, TempDir, TestRedis};
use sqlx::Connection;

use crate::{
    certs::{Ca, write},
    stores::{binary, run_to_exit, sign_up_end_to_end},
};

const PASSWORD: &str = "pg-Pa55word-never-logged";

/// `DB_SOURCE` for database `db` of `server`, verified against `root_cert`.
fn db_source(server: &PostgresServer, db: &str, root_cert: &str) -> String {
    format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=verify-full&sslrootcert={root_cert}",
        server.port
    )
}

/// A TLS-only PostgreSQL with a `simple_bank` database, its certificate for the host `names`,
/// and the CA file that verifies it.
async fn tls_postgres(dir: &TempDir, names: &[&str]) -> (PostgresServer, String) {
    let ca = Ca::new("simplebank postgres CA");
    let (cert, key) = ca.issue(names, ExtendedKeyUsagePurpose::ServerAuth);
    let server = PostgresServer::start_tls(&cert, &key, PASSWORD);
    let ca_file = write(dir, "pg-ca.pem", &ca.cert_pem);
    let mut admin = sqlx::PgConnection::connect(&db_source(&server, "postgres", &ca_file))
        .await
        .unwrap_or_else(|e| panic!("connect over TLS: {e}\n{}", server.log()));
    sqlx::query("CREATE DATABASE simple_bank")
        .execute(&mut admin)
        .await
        .expect("create database");
    admin.close().await.ok();
    (server, ca_file)
}

#[tokio::test]
async fn a_sign_up_runs_end_to_end_on_postgres_with_verify_full() {
    let (dir, redis) = (TempDir::new(), TestRedis::new());
    let (server, ca_file) = tls_postgres(&dir, &["localhost", "127.0.0.1"]).await;
    let env = [
        ("DB_SOURCE", db_source(&server, "simple_bank", &ca_file)),
        ("REDIS_ADDRESS", redis.address.clone()),
        ("REDIS_NAMESPACE", redis.namespace.as_str().to_owned()),
    ];
    // The server accepts TLS connections only (hostssl): the sign-up's rows, the worker's
    // record and its email prove both programs went over verified TLS.
    let logs = sign_up_end_to_end(&env, "pg_tls_alice").await;
    assert!(
        !logs.contains(PASSWORD),
        "the password in a log line:\n{logs}"
    );

    let mut conn = sqlx::PgConnection::connect(&db_source(&server, "simple_bank", &ca_file))
        .await
        .expect("connect");
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM verify_emails WHERE username = 'pg_tls_alice' \
         AND email_sent_at IS NOT NULL",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count");
    assert_eq!(sent, 1);
}

/// Both programs with `env` stop at start (exit 2), naming `DB_SOURCE` and saying
/// `expected`, and show no password (the right one or the wrong one tried).
async fn refused_at_start(env: &[(&str, String)], expected: &str) {
    for program in ["simplebank-server", "simplebank-worker"] {
        let (code, stderr) = run_to_exit(&binary(program), env).await;
        assert_eq!(code, Some(2), "{program} {env:?}: {stderr}");
        assert!(stderr.contains("DB_SOURCE"), "{program}: {stderr}");
        assert!(stderr.contains(expected), "{program} {expected}: {stderr}");
        assert!(!stderr.contains(PASSWORD), "{program}: {stderr}");
        assert!(!stderr.contains("not-the-password"), "{program}: {stderr}");
    }
}

#[tokio::test]
async fn a_postgres_certificate_that_does_not_verify_stops_both_programs_at_start() {
    let (dir, redis) = (TempDir::new(), TestRedis::new());
    let (server, ca_file) = tls_postgres(&dir, &["127.0.0.1"]).await;
    let other_ca = write(&dir, "other-ca.pem", &Ca::new("some other CA").cert_pem);
    // Another CA; and the right CA for a host name the certificate does not carry.
    let wrong_host = db_source(&server, "simple_bank", &ca_file).replace("127.0.0.1", "localhost");
    for source in [db_source(&server, "simple_bank", &other_ca), wrong_host] {
        let env = [
            ("DB_SOURCE", source),
            ("REDIS_ADDRESS", redis.address.clone()),
            ("REDIS_NAMESPACE", redis.namespace.as_str().to_owned()),
        ];
        refused_at_start(&env, "does not verify").await;
    }
}

/// What waiting cannot fix stops both programs at start naming `DB_SOURCE`, the password never
/// shown: a wrong password, a database that does not exist, `sslmode=disable` against a
/// server that takes TLS connections only, and an `sslrootcert` file that is not there.
#[tokio::test]
async fn a_postgres_that_refuses_the_login_stops_both_programs_at_start() {
    let (dir, redis) = (TempDir::new(), TestRedis::new());
    let (tls_server, ca_file) = tls_postgres(&dir, &["127.0.0.1"]).await;
    let plain = PostgresServer::start(PASSWORD);
    let plain_source = |password: &str, db: &str| {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/{db}?sslmode=disable",
            plain.port
        )
    };
    let missing = dir.0.join("no-such-ca.pem");
    let cases = [
        (plain_source("not-the-password", "postgres"), "28P01"),
        (plain_source(PASSWORD, "no_such_database"), "3D000"),
        (
            db_source(&tls_server, "simple_bank", &ca_file)
                .replace("sslmode=verify-full", "sslmode=disable"),
            "28000",
        ),
        (
            db_source(&tls_server, "simple_bank", &missing.display().to_string()),
            "sslrootcert file cannot be read",
        ),
    ];
    for (source, expected) in cases {
        let env = [
            ("DB_SOURCE", source),
            ("REDIS_ADDRESS", redis.address.clone()),
            ("REDIS_NAMESPACE", redis.namespace.as_str().to_owned()),
        ];
        refused_at_start(&env, expected).await;
    }
}
