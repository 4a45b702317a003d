//! The `simplebank-worker` binary: a bad setting stops it at start naming the variable;
//! SIGTERM stops it cleanly with exit code 0.

use std::{process::Stdio, time::Duration};

use simplebank_core::testing::{TestDb, TestRedis, sigterm};
use tokio::io::AsyncBufReadExt;

fn worker() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_simplebank-worker"));
    command
        .env_remove("WORKER_CONCURRENCY")
        .env_remove("WORKER_QUEUES")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn a_bad_setting_stops_the_worker_naming_the_variable() {
    for (var, value) in [
        ("WORKER_CONCURRENCY", "0"),
        ("WORKER_QUEUES", "critical:high"),
        ("WORKER_VISIBILITY_TIMEOUT", "soon"),
        ("REDIS_NAMESPACE", "a:b"),
        ("DB_SOURCE", "mysql://localhost/x"),
    ] {
        let output = worker()
            .env(var, value)
            .output()
            .await
            .expect("run the worker");
        assert_eq!(output.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
}

#[tokio::test]
async fn sigterm_stops_the_worker_with_exit_code_0() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let name = format!("binary-{}", uuid::Uuid::new_v4());
    let mut child = worker()
        .env("DB_SOURCE", db.url.expose())
        .env("REDIS_ADDRESS", &redis.address)
        .env("REDIS_NAMESPACE", redis.namespace.as_str())
        .env("WORKER_CONSUMER_NAME", &name)
        .env("RUST_LOG", "info")
        .spawn()
        .expect("start the worker");

    // Ready: it logged that it started (an idle consumer does not show in XINFO on Redis 7.0).
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("start task processor") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(started, Ok(true), "the worker started");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let exit = sigterm(&mut child, Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}
