//! Starting the real binary: a Redis that refuses the server stops it naming `REDIS_ADDRESS`;
//! one that is down or hung does not, and sign-ups work meanwhile (the outbox holds their tasks).

use std::{process::Stdio, time::Duration};

use simplebank_core::testing::{
    RedisServer, TestDb, TestRedis, free_port, refusing_redis, stop_gracefully,
};

use crate::helpers::{connect_when_up, request};

fn server() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_simplebank-server"));
    command
        .env("ADMIN_GRPC_ADDRESS", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn a_redis_that_refuses_the_server_stops_it_naming_redis_address() {
    let db = TestDb::create().await;
    let (_redis, refusals) = refusing_redis().await;
    for (address, reason) in refusals {
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            server()
                .env("DB_SOURCE", db.url.expose())
                .env("REDIS_ADDRESS", &address)
                .env("GRPC_SERVER_ADDRESS", format!("127.0.0.1:{}", free_port()))
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{address}: still running after 30 s"))
        .expect("run the server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{address}: {stderr}");
        assert!(stderr.contains("REDIS_ADDRESS"), "{address}: {stderr}");
        assert!(stderr.contains(reason), "{address}: {stderr}");
        assert!(
            !stderr.contains("pw@") && !stderr.contains("wrong"),
            "{stderr}"
        );
    }
}

/// A bad OTLP setting stops the server at start (exit code 2) naming the variable, never
/// showing an endpoint's value (it may hold a password).
#[tokio::test]
async fn a_bad_otlp_setting_stops_the_server_naming_the_variable() {
    let db = TestDb::create().await;
    let redis = TestRedis::new();
    for (var, value) in [
        ("OTEL_METRIC_EXPORT_INTERVAL", "1"),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "https://otel-user:s3cret-pw@sink-host.invalid:4317",
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://sink-host.invalid:99999",
        ),
    ] {
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            server()
                .env("DB_SOURCE", db.url.expose())
                .env("REDIS_ADDRESS", &redis.address)
                .env("REDIS_NAMESPACE", redis.namespace.as_str())
                .env("GRPC_SERVER_ADDRESS", format!("127.0.0.1:{}", free_port()))
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
                .env(var, value)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{var}={value}: still running after 30 s"))
        .expect("run the server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
        for secret in ["s3cret-pw", "otel-user", "sink-host"] {
            assert!(!stderr.contains(secret), "{var}={value}: {stderr}");
        }
    }
}

#[tokio::test]
async fn a_redis_down_or_hung_at_start_does_not_stop_the_server_from_taking_sign_ups() {
    let db = TestDb::create().await;
    let redis_server = RedisServer::start().await;
    let hung = TestRedis::at(redis_server.address());
    redis_server.pause();
    let down = format!("127.0.0.1:{}", free_port());
    for (n, redis_address) in [down, hung.address.clone()].into_iter().enumerate() {
        let address = format!("127.0.0.1:{}", free_port());
        let mut child = server()
            .env("DB_SOURCE", db.url.expose())
            .env("REDIS_ADDRESS", &redis_address)
            .env("REDIS_NAMESPACE", hung.namespace.as_str())
            .env("GRPC_SERVER_ADDRESS", &address)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .expect("start simplebank-server");
        let mut client = connect_when_up(&address).await;
        let created = client
            .create_user(request(
                &format!("no_redis_{n}"),
                &format!("r{n}@example.com"),
            ))
            .await;
        let still_running = child.try_wait().expect("wait").is_none();
        assert!(created.is_ok(), "{redis_address}: {created:?}");
        assert!(still_running, "{redis_address}: the server kept running");
        stop_gracefully(&mut child).await;
    }
    redis_server.resume();
}
