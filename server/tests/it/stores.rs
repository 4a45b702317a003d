//! The sign-up end to end through the real binaries, with the data-store settings a test gives
//! (Redis over TLS, an ACL user, PostgreSQL with verify-full): the shared part of the
//! `redis_tls`, `redis_acl` and `postgres_tls` tests.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use simplebank_core::testing::{TempDir, eventually, free_port, stop_gracefully};
use simplebank_server::pb::LoginUserRequest;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{TEST_VERIFY_EMAIL_KEY, connect_when_up, request};

/// A binary of this workspace (built by `cargo build --workspace --bins`).
pub fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_simplebank-server")).with_file_name(name);
    assert!(
        path.exists(),
        "build the binaries first: cargo build --workspace --bins"
    );
    path
}

/// `program` with `env` on top of a clean logging set-up (debug, so a leak anywhere shows).
pub fn command(program: &Path, env: &[(&str, String)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env("RUST_LOG", "debug")
        .env("VERIFY_EMAIL_KEY", TEST_VERIFY_EMAIL_KEY)
        // The default admin port (9091) is one for the whole machine: tests running at once
        // would race for it, and all but one server fail to start.
        .env("ADMIN_GRPC_ADDRESS", "off")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `program` with `env` to its end (it must stop by itself within 30 s): exit code and
/// what it printed on stderr.
pub async fn run_to_exit(program: &Path, env: &[(&str, String)]) -> (Option<i32>, String) {
    let output = tokio::time::timeout(Duration::from_secs(30), command(program, env).output())
        .await
        .expect("the program stopped by itself within 30 s")
        .expect("run the program");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts the server and the worker binaries with `env` (`DB_SOURCE`, `REDIS_*`), signs
/// `username` up and waits for the worker's email; signs in once with a wrong password (the
/// throttle counts it in Redis) and checks that the server sees Redis (health). Stops both
/// with SIGTERM and returns their logs, server's first.
pub async fn sign_up_end_to_end(env: &[(&str, String)], username: &str) -> String {
    let dir = TempDir::new();
    let grpc = format!("127.0.0.1:{}", free_port());
    let mail = dir.0.join("mail");
    let mut env = env.to_vec();
    env.push(("GRPC_SERVER_ADDRESS", grpc.clone()));
    env.push(("EMAIL_FILE_DIR", mail.display().to_string()));
    let (server_log, worker_log) = (dir.0.join("server.log"), dir.0.join("worker.log"));
    let mut server = command(&binary("simplebank-server"), &env)
        .stderr(File::create(&server_log).expect("log file"))
        .spawn()
        .expect("start the server");
    let mut worker = command(&binary("simplebank-worker"), &env)
        .stderr(File::create(&worker_log).expect("log file"))
        .spawn()
        .expect("start the worker");
    let logs = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&server_log).unwrap_or_default(),
            std::fs::read_to_string(&worker_log).unwrap_or_default()
        )
    };

    let mut client = connect_when_up(&grpc).await;
    let email = format!("{username}@example.com");
    client
        .create_user(request(username, &email))
        .await
        .unwrap_or_else(|e| panic!("CreateUser: {e:?}\n{}", logs()));
    let files = || -> Vec<PathBuf> {
        std::fs::read_dir(&mail)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        eventually(
            "the worker wrote the email",
            Duration::from_secs(60),
            || {
                let written = files()
                    .iter()
                    .any(|f| f.extension().is_some_and(|e| e == "eml"));
                async move { written }
            },
        )
        .await;
    })
    .await;
    assert!(waited.is_ok(), "no email; logs:\n{}", logs());
    let message = std::fs::read_to_string(&files()[0]).expect("read the email");
    assert!(message.contains(&format!("To: {email}")), "{message}");

    let refused = client
        .login_user(LoginUserRequest {
            username: username.into(),
            password: "not-the-password-1".into(),
        })
        .await
        .expect_err("a wrong password");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{grpc}"))
            .expect("URL")
            .connect()
            .await
            .expect("connect for health"),
    );
    eventually("the server sees Redis", Duration::from_secs(20), || {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: "simplebank.v1.SimpleBank.redis".into(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
        }
    })
    .await;

    stop_gracefully(&mut server).await;
    stop_gracefully(&mut worker).await;
    logs()
}
