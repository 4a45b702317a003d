//! The binaries' logs read like an operator's log: each cause said once, no Rust `Debug`
//! values in fields, whole milliseconds, reflection and health calls out of the INFO log, no
//! PostgreSQL notices. Run with the default log filter (`RUST_LOG` unset), as `make run` does.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use simplebank_core::testing::{
    TempDir, TestDb, TestRedis, eventually, free_port, stop_gracefully,
};
use tonic::Code;

use crate::helpers::{connect_when_up, request};

fn grpcurl() -> PathBuf {
    std::env::var("GRPCURL").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/bin/grpcurl"),
        PathBuf::from,
    )
}

fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_simplebank-server")).with_file_name(name);
    assert!(
        path.exists(),
        "build the binaries first: cargo build --workspace --bins"
    );
    path
}

fn command(program: &Path, env: &[(&str, String)], log: Option<&Path>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .kill_on_drop(true);
    match log {
        Some(path) => command.stderr(File::create(path).expect("log file")),
        None => command.stderr(Stdio::piped()),
    };
    command
}

/// Each ": "-separated part of an error text appears once.
fn assert_said_once(line: &str) {
    let Some((_, error)) = line.split_once("error=") else {
        return;
    };
    let parts: Vec<&str> = error.split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        let rest = parts[i + 1..].join(": ");
        assert!(
            part.len() < 8 || !rest.contains(part.trim()),
            "{part:?} said twice in: {line}"
        );
    }
}

fn assert_whole_milliseconds(line: &str) {
    for marker in ["duration_ms=", "\"duration_ms\":"] {
        for (at, _) in line.match_indices(marker) {
            let value: String = line[at + marker.len()..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != ',' && *c != '}')
                .collect();
            assert!(
                !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()),
                "duration {value:?} in: {line}"
            );
        }
    }
}

#[tokio::test]
async fn the_logs_read_like_an_operators_log() {
    let (db, redis, dir) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let grpc = format!("127.0.0.1:{}", free_port());
    let mail = dir.0.join("mail");
    let env = [
        ("DB_SOURCE", db.url.expose().clone()),
        ("REDIS_ADDRESS", redis.address.clone()),
        ("REDIS_NAMESPACE", redis.namespace.as_str().to_owned()),
        ("GRPC_SERVER_ADDRESS", grpc.clone()),
        ("ADMIN_GRPC_ADDRESS", "off".to_owned()),
        ("EMAIL_FILE_DIR", mail.display().to_string()),
    ];
    let server_bin = binary("simplebank-server");

    // `make run` migrates first; the server migrates again at start (the notice's occasion).
    let migrated = command(&server_bin, &env, None)
        .args(["migrate", "up"])
        .output()
        .await
        .expect("migrate up");
    assert!(migrated.status.success(), "{migrated:?}");
    let mut text = String::from_utf8_lossy(&migrated.stderr).into_owned();

    let (server_log, worker_log) = (dir.0.join("server.log"), dir.0.join("worker.log"));
    let mut server = command(&server_bin, &env, Some(&server_log))
        .spawn()
        .expect("start the server");
    let mut worker_env = env.to_vec();
    worker_env.push(("ENVIRONMENT", "production".into()));
    // Production refuses app.env's development key (found by searching parent folders).
    worker_env.push((
        "VERIFY_EMAIL_KEY",
        crate::helpers::TEST_VERIFY_EMAIL_KEY.into(),
    ));
    let mut worker = command(&binary("simplebank-worker"), &worker_env, Some(&worker_log))
        .spawn()
        .expect("start the worker");

    let mut client = connect_when_up(&grpc).await;
    for args in [
        &["-plaintext", &grpc, "list"][..],
        &["-plaintext", &grpc, "grpc.health.v1.Health/Check"][..],
    ] {
        let output = std::process::Command::new(grpcurl())
            .args(args)
            .output()
            .expect("grpcurl runs (make tools)");
        assert!(output.status.success(), "{output:?}");
    }
    client
        .create_user(request("log_reader", "logs@example.com"))
        .await
        .expect("sign-up");
    let again = client
        .create_user(request("log_reader", "logs@example.com"))
        .await
        .expect_err("a second sign-up");
    assert_eq!(again.code(), Code::AlreadyExists);
    eventually(
        "the worker processed the task",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(&worker_log).unwrap_or_default();
            async move { log.contains("processed task") }
        },
    )
    .await;
    stop_gracefully(&mut server).await;
    stop_gracefully(&mut worker).await;
    text.push_str(&std::fs::read_to_string(&server_log).expect("server log"));
    text.push_str(&std::fs::read_to_string(&worker_log).expect("worker log"));

    // A failure once running: its gRPC address is taken. (A database that does not exist is
    // a setting, refused before logging starts.)
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let mut port_taken = env.to_vec();
    port_taken[3].1 = taken.local_addr().expect("its address").to_string();
    let failed = command(&server_bin, &port_taken, None)
        .output()
        .await
        .expect("run the server");
    assert_eq!(failed.status.code(), Some(1));
    text.push_str(&String::from_utf8_lossy(&failed.stderr));

    for expected in [
        "db migrated successfully",
        "start gRPC server",
        "enqueued task",
        "processed task",
        "simplebank-server failed",
        "in use",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    for line in text.lines() {
        for debug in [
            "Some(",
            "None",
            "Queued {",
            "{ entry_id",
            "\"[",
            "=[",
            "Ok(",
            "Err(",
        ] {
            assert!(!line.contains(debug), "{debug:?} in: {line}");
        }
        assert!(!line.contains("_sqlx_migrations"), "a notice: {line}");
        let infra = line.contains("ServerReflection") || line.contains("grpc.health.v1");
        assert!(!(infra && line.contains("INFO")), "at INFO: {line}");
        assert_whole_milliseconds(line);
        assert_said_once(line);
    }
}
