//! Redis over TLS (`rediss://`, rustls): a redis-server of the test's own with a TLS port, its
//! certificate signed by a CA made in the test. The sign-up runs end to end through it with a
//! client certificate (`tls-auth-clients yes`); a certificate that does not verify, a missing
//! client certificate and unusable TLS settings stop both programs at start, naming what to fix.

use simplebank_core::testing::{RedisServer, TempDir, TestDb, TestRedis, free_port};
use simplebank_queue::QueueName;

use crate::{
    certs::{Ca, write},
    stores::{binary, run_to_exit, sign_up_end_to_end},
};

/// A redis-server with a plaintext port (for the test's own checks) and a TLS port serving a
/// certificate of `ca` for `localhost` and `127.0.0.1`; clients need a certificate `ca`
/// signed when `client_certificates`.
async fn tls_redis(dir: &TempDir, ca: &Ca, client_certificates: bool) -> (RedisServer, String) {
    let (cert, key) = ca.server_cert();
    let tls_port = free_port().to_string();
    let server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &write(dir, "redis.pem", &cert),
        "--tls-key-file",
        &write(dir, "redis.key", &key),
        "--tls-ca-cert-file",
        &write(dir, "redis-ca.pem", &ca.cert_pem),
        "--tls-auth-clients",
        if client_certificates { "yes" } else { "no" },
    ])
    .await;
    (server, format!("rediss://127.0.0.1:{tls_port}"))
}

#[tokio::test]
async fn a_sign_up_runs_end_to_end_over_redis_tls_with_a_client_certificate() {
    let (db, dir) = (TestDb::create().await, TempDir::new());
    let ca = Ca::new("simplebank redis CA");
    let (server, address) = tls_redis(&dir, &ca, true).await;
    let plain = TestRedis::at(server.address());
    let (client_cert, client_key) = ca.client_cert("simplebank");
    let env = [
        ("DB_SOURCE", db.url.expose().clone()),
        ("REDIS_ADDRESS", address),
        ("REDIS_NAMESPACE", plain.namespace.as_str().to_owned()),
        ("REDIS_TLS_CA_FILE", write(&dir, "ca.pem", &ca.cert_pem)),
        (
            "REDIS_TLS_CERT_FILE",
            write(&dir, "client.pem", &client_cert),
        ),
        ("REDIS_TLS_KEY_FILE", write(&dir, "client.key", &client_key)),
    ];
    // The programs know only the TLS port: the email proves publisher and worker went over it,
    // the health check the server's PING, and the throttle's key below its sign-in counter.
    let logs = sign_up_end_to_end(&env, "tls_alice").await;

    let mut conn = plain.conn().await;
    let throttled: i64 = redis::cmd("EXISTS")
        .arg(format!(
            "{{{}}}:login_failures:username:tls_alice",
            plain.namespace.as_str()
        ))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(throttled, 1, "the failed sign-in was counted over TLS");
    let stream = plain
        .keys()
        .stream(&QueueName::parse("critical").expect("queue"));
    let left: i64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(left, 0, "the worker acknowledged and deleted the task");
    assert!(!logs.contains("BEGIN PRIVATE KEY"), "{logs}");
}

#[tokio::test]
async fn a_redis_certificate_that_does_not_verify_stops_both_programs_at_start() {
    let dir = TempDir::new();
    let ca = Ca::new("simplebank redis CA");
    let (_server, address) = tls_redis(&dir, &ca, false).await;
    let other_ca = write(&dir, "other-ca.pem", &Ca::new("some other CA").cert_pem);
    // Another CA, and none at all (the system's roots do not know the test's CA).
    for extra in [vec![("REDIS_TLS_CA_FILE", other_ca)], vec![]] {
        let mut env = vec![("REDIS_ADDRESS", address.clone())];
        env.extend(extra);
        for program in ["simplebank-server", "simplebank-worker"] {
            let (code, stderr) = run_to_exit(&binary(program), &env).await;
            assert_eq!(code, Some(2), "{program} {env:?}: {stderr}");
            for needle in ["REDIS_ADDRESS", "REDIS_TLS_CA_FILE", "does not verify"] {
                assert!(stderr.contains(needle), "{program}: {needle:?} in {stderr}");
            }
        }
    }
}

#[tokio::test]
async fn a_redis_that_requires_a_client_certificate_stops_a_program_without_a_good_one() {
    let dir = TempDir::new();
    let ca = Ca::new("simplebank redis CA");
    let (_server, address) = tls_redis(&dir, &ca, true).await;
    let ca_file = write(&dir, "ca.pem", &ca.cert_pem);
    let (rogue_cert, rogue_key) = Ca::new("rogue CA").client_cert("simplebank");
    let rogue = vec![
        ("REDIS_TLS_CERT_FILE", write(&dir, "rogue.pem", &rogue_cert)),
        ("REDIS_TLS_KEY_FILE", write(&dir, "rogue.key", &rogue_key)),
    ];
    for extra in [vec![], rogue] {
        let mut env = vec![
            ("REDIS_ADDRESS", address.clone()),
            ("REDIS_TLS_CA_FILE", ca_file.clone()),
        ];
        env.extend(extra);
        for program in ["simplebank-server", "simplebank-worker"] {
            let (code, stderr) = run_to_exit(&binary(program), &env).await;
            assert_eq!(code, Some(2), "{program} {env:?}: {stderr}");
            for needle in ["REDIS_ADDRESS", "REDIS_TLS_CERT_FILE", "client certificate"] {
                assert!(stderr.contains(needle), "{program}: {needle:?} in {stderr}");
            }
        }
    }
}

#[tokio::test]
async fn unusable_redis_tls_settings_stop_the_programs_naming_the_variable() {
    let dir = TempDir::new();
    let ca = Ca::new("simplebank redis CA");
    let ca_file = write(&dir, "ca.pem", &ca.cert_pem);
    let (cert, _) = ca.client_cert("simplebank");
    let (_, other_key) = ca.client_cert("someone else");
    let cert = write(&dir, "client.pem", &cert);
    let other_key = write(&dir, "other.key", &other_key);
    let garbage = write(&dir, "garbage.pem", "not PEM at all\n");
    let tls = "rediss://127.0.0.1:1".to_owned();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![
                ("REDIS_ADDRESS", tls.clone()),
                ("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem".into()),
            ],
            "REDIS_TLS_CA_FILE",
        ),
        (
            vec![
                ("REDIS_ADDRESS", tls.clone()),
                ("REDIS_TLS_CA_FILE", garbage.clone()),
            ],
            "REDIS_TLS_CA_FILE",
        ),
        // Endless, and a name with CR/LF and a bidi control.
        (
            vec![
                ("REDIS_ADDRESS", tls.clone()),
                ("REDIS_TLS_CA_FILE", "/dev/zero".into()),
            ],
            "REDIS_TLS_CA_FILE",
        ),
        (
            vec![
                ("REDIS_ADDRESS", tls.clone()),
                ("REDIS_TLS_CA_FILE", "/tmp/ca\r\nx\u{202e}.pem".into()),
            ],
            "REDIS_TLS_CA_FILE",
        ),
        (
            vec![
                ("REDIS_ADDRESS", tls.clone()),
                ("REDIS_TLS_CERT_FILE", cert.clone()),
            ],
            "REDIS_TLS_KEY_FILE",
        ),
        (
            vec![
                ("REDIS_ADDRESS", tls.clone()),
                ("REDIS_TLS_KEY_FILE", other_key.clone()),
            ],
            "REDIS_TLS_CERT_FILE",
        ),
        (
            vec![
                ("REDIS_ADDRESS", tls.clone()),
                ("REDIS_TLS_CERT_FILE", cert.clone()),
                ("REDIS_TLS_KEY_FILE", other_key),
            ],
            "REDIS_TLS_KEY_FILE",
        ),
        (
            vec![
                ("REDIS_ADDRESS", tls.clone()),
                ("REDIS_TLS_CERT_FILE", garbage.clone()),
                ("REDIS_TLS_KEY_FILE", garbage),
            ],
            "REDIS_TLS_CERT_FILE",
        ),
        // TLS files with a plaintext address are refused, not ignored.
        (
            vec![
                ("REDIS_ADDRESS", "127.0.0.1:1".into()),
                ("REDIS_TLS_CA_FILE", ca_file.clone()),
            ],
            "REDIS_TLS_CA_FILE",
        ),
        (
            vec![
                ("REDIS_ADDRESS", "redis://127.0.0.1:1".into()),
                ("REDIS_TLS_CA_FILE", ca_file),
            ],
            "REDIS_TLS_CA_FILE",
        ),
        // No setting turns verification off.
        (
            vec![("REDIS_ADDRESS", format!("{tls}/#insecure"))],
            "REDIS_ADDRESS",
        ),
    ];
    for (env, var) in cases {
        for program in ["simplebank-server", "simplebank-worker"] {
            let (code, stderr) = run_to_exit(&binary(program), &env).await;
            assert_eq!(code, Some(2), "{program} {env:?}: {stderr}");
            assert!(stderr.contains(var), "{program} {env:?}: {var} in {stderr}");
        }
    }
}

#[tokio::test]
async fn a_hung_tls_redis_at_start_is_waited_for_not_mistaken_for_a_bad_certificate() {
    use tokio::io::AsyncBufReadExt;

    let dir = TempDir::new();
    let ca = Ca::new("simplebank redis CA");
    let (server, address) = tls_redis(&dir, &ca, false).await;
    // SIGSTOP: the kernel still accepts the connection, the TLS handshake gets no answer.
    server.pause();
    let env = [
        ("REDIS_ADDRESS", address),
        ("REDIS_TLS_CA_FILE", write(&dir, "ca.pem", &ca.cert_pem)),
    ];
    let mut worker = crate::stores::command(&binary("simplebank-worker"), &env)
        .env("RUST_LOG", "info")
        .spawn()
        .expect("start the worker");
    let mut lines = tokio::io::BufReader::new(worker.stderr.take().expect("stderr")).lines();
    let waiting = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("cannot reach Redis; retrying") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(waiting, Ok(true), "the worker waits for the hung Redis");
    assert!(worker.try_wait().expect("wait").is_none(), "still running");
    server.resume();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    simplebank_core::testing::stop_gracefully(&mut worker).await;
}
