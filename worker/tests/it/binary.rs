//! The `simplebank-worker` binary: a bad setting stops it at start naming the variable (a Redis
//! that refuses it too; one that is down or hung is waited for); SIGTERM stops it cleanly with
//! exit code 0.

use std::{process::Stdio, time::Duration};

use simplebank_core::testing::{
    RedisServer, TestDb, TestRedis, free_port, refusing_redis, sigterm,
};
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
        ("DEAD_LETTER_MAX", "0"),
        ("DEAD_LETTER_MAX", "-5"),
        ("DEAD_LETTER_MAX", "1\r\n0"),
        ("DEAD_LETTER_MAX", "1000000001"),
        ("DEAD_LETTER_MAX", "99999999999999999999"),
        ("DEAD_LETTER_RETENTION", "500ms"),
        ("DEAD_LETTER_RETENTION", "90 days"),
        ("DEAD_LETTER_RETENTION", "99999999999999999999d"),
        ("REDIS_NAMESPACE", "a:b"),
        ("DB_SOURCE", "mysql://localhost/x"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "5s"),
        // Below the floor of 100 ms: `60` meant as seconds, or 1 ms, which spends a core.
        ("OTEL_METRIC_EXPORT_INTERVAL", "1"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "60"),
        ("OTEL_METRICS_EXPORTER", "prometheus"),
        // The SDK took these for `parentbased_always_on` and a ratio of 1, without a word.
        ("OTEL_TRACES_SAMPLER", "garbage_xyz"),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_of"),
        ("OTEL_TRACES_SAMPLER_ARG", "10%"),
    ] {
        let mut command = worker();
        if var == "OTEL_TRACES_SAMPLER_ARG" {
            command.env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio");
        }
        command.env(var, value);
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .unwrap_or_else(|_| panic!("{var}={value}: the worker did not stop"))
            .expect("run the worker");
        assert_eq!(output.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
}

/// A bad OTLP endpoint stops the worker at start (exit code 2) naming the variable in use (the
/// signal's own when set), never showing the value, which may hold a password: a broken URL,
/// https (this build has no TLS for OTLP, and says so), another scheme, a port out of range.
/// Before, `ftp://` and port 99999 were accepted and failed at every export.
#[tokio::test]
async fn a_bad_otlp_endpoint_stops_the_worker_naming_the_variable_not_its_value() {
    const METRICS: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
    const TRACES: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    const COMMON: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    let good = format!("http://127.0.0.1:{}", free_port());
    for (var, value, also) in [
        (METRICS, "http://[::1", Some(COMMON)),
        (
            METRICS,
            "https://otel-user:s3cret-pw@sink-host.invalid:4317",
            Some(COMMON),
        ),
        (
            METRICS,
            "ftp://otel-user:s3cret-pw@sink-host.invalid:4317",
            None,
        ),
        (
            METRICS,
            "http://otel-user:s3cret-pw@sink-host.invalid:99999",
            Some(COMMON),
        ),
        (TRACES, "http://sink-host.invalid:0", Some(COMMON)),
        (COMMON, "sink-host.invalid:4317", Some(METRICS)),
        (COMMON, "https://sink-host.invalid:4317", None),
    ] {
        let mut command = worker();
        command.env("RUST_LOG", "warn").env(var, value);
        for other in [METRICS, TRACES, COMMON] {
            if other != var {
                command.env_remove(other);
            }
        }
        // A good value in another variable does not hide the bad one, nor is it blamed.
        if let Some(other) = also {
            command.env(other, &good);
        }
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .unwrap_or_else(|_| panic!("{var}={value}: the worker did not stop"))
            .expect("run the worker");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
        if let Some(other) = also {
            assert!(!stderr.contains(other), "{var}={value}: {stderr}");
        }
        for secret in [value, "s3cret-pw", "otel-user", "sink-host"] {
            assert!(!stderr.contains(secret), "{var}={value}: {stderr}");
        }
        if value.starts_with("https") {
            assert!(
                stderr.contains("https endpoints are not supported by this build"),
                "{stderr}"
            );
        }
    }
}

/// The span exporter's other settings are checked at start too: a bad header list (a pair that
/// is not `key=value`, CR/LF or NUL through a %-escape, a bad escape, a gRPC key, a key with a
/// bidi character, a binary `-bin` key or one HTTP sets itself (`content-encoding` on a body that has none), a value beyond printable
/// ASCII, too long), a timeout that is not 1 ms to 10 minutes, an unknown compression, or a
/// protocol other than `grpc` and `http/protobuf` (look-alikes, `http/json`) stops
/// the worker (exit code 2), whether spans or only metrics are exported, naming the variable in
/// use, never the value: headers carry API keys. Before, the exporter skipped what it could
/// not parse.
#[tokio::test]
async fn bad_otlp_export_settings_stop_the_worker_naming_the_variable_not_its_value() {
    const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
    const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
    const METRICS_HEADERS: &str = "OTEL_EXPORTER_OTLP_METRICS_HEADERS";
    const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
    const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
    const COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
    const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
    const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
    const METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
    const TRACES: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    const METRICS: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let long = format!("api-key={}", "s3cretk3y".repeat(8000));
    for (exported, var, value) in [
        (TRACES, HEADERS, "api-key=s3cretk3y%0d%0ax-forged: 1"),
        (TRACES, HEADERS, "api-key=s3cretk3y%00"),
        (TRACES, TRACES_HEADERS, "api-key=s3cretk3y,s3cretk3y"),
        (TRACES, TRACES_HEADERS, "api-key=s3cretk3y%zz"),
        (TRACES, HEADERS, "grpc-timeout=s3cretk3y"),
        (TRACES, HEADERS, "host=s3cretk3y"),
        (TRACES, HEADERS, "content-encoding=gzip,api-key=s3cretk3y"),
        (TRACES, HEADERS, "api\u{202e}key=s3cretk3y"),
        (TRACES, HEADERS, long.as_str()),
        (TRACES, HEADERS, "x-api-key-bin=s3cretk3y"),
        (TRACES, HEADERS, "api-key=s3cretk3y\u{e9}"),
        (TRACES, TIMEOUT, "s3cretk3y"),
        (TRACES, TRACES_TIMEOUT, "0"),
        (TRACES, TIMEOUT, "-5"),
        (TRACES, TIMEOUT, "18446744073709551615"),
        (TRACES, COMPRESSION, "s3cretk3y"),
        // The protocol: grpc or http/protobuf, nothing like them.
        (TRACES, PROTOCOL, "s3cretk3y"),
        (TRACES, PROTOCOL, "http/json"),
        (TRACES, PROTOCOL, "http/protobuf\r\nx-s3cretk3y: 1"),
        (TRACES, PROTOCOL, "http\u{2215}protobuf"),
        (TRACES, PROTOCOL, "http/protobuf\u{202e}"),
        (TRACES, PROTOCOL, "grpc\u{0430}"),
        (TRACES, TRACES_PROTOCOL, "h2/s3cretk3y"),
        (METRICS, METRICS_PROTOCOL, "s3cretk3y"),
        (METRICS, PROTOCOL, "https/protobuf"),
        // Metrics alone are exported with the same checks on the common variables and on
        // their own.
        (METRICS, HEADERS, "api-key=s3cretk3y%0d%0a"),
        (METRICS, METRICS_HEADERS, "api-key=s3cretk3y%00"),
        (METRICS, TIMEOUT, "s3cretk3y"),
    ] {
        let mut command = worker();
        command
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove(if exported == TRACES { METRICS } else { TRACES })
            .env(exported, &endpoint)
            .env(var, value);
        for other in [
            HEADERS,
            TRACES_HEADERS,
            METRICS_HEADERS,
            TIMEOUT,
            TRACES_TIMEOUT,
            COMPRESSION,
            PROTOCOL,
            TRACES_PROTOCOL,
            METRICS_PROTOCOL,
        ] {
            if other != var {
                command.env_remove(other);
            }
        }
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .unwrap_or_else(|_| panic!("{exported} {var}: the worker did not stop"))
            .expect("run the worker");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{exported} {var}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid {var}:")),
            "{var}: {stderr}"
        );
        assert!(!stderr.contains("s3cretk3y"), "{var}: {stderr}");
    }
    // With metrics off, their protocol is still checked (as the export interval is).
    let mut command = worker();
    command
        .env("RUST_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove(METRICS)
        .env_remove(PROTOCOL)
        .env(TRACES, &endpoint)
        .env("OTEL_METRICS_EXPORTER", "none")
        .env(METRICS_PROTOCOL, "s3cretk3y");
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the worker did not stop")
        .expect("run the worker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("invalid {METRICS_PROTOCOL}:")),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cretk3y"), "{stderr}");
}

/// A metrics variable that is not UTF-8 stops the worker naming it: before, an endpoint like
/// that counted as unset and metrics were off without a word, and such an exporter name as
/// `otlp` (found by an outside attack).
#[tokio::test]
async fn a_metrics_setting_that_is_not_utf8_stops_the_worker_naming_it() {
    use std::os::unix::ffi::OsStringExt as _;
    for var in [
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_METRICS_EXPORTER",
    ] {
        let mut command = worker();
        command
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_METRICS_EXPORTER")
            .env(
                var,
                std::ffi::OsString::from_vec(b"http://\xff:4317".to_vec()),
            );
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .unwrap_or_else(|_| panic!("{var}: the worker did not stop"))
            .expect("run the worker");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid {var}:")),
            "{var}: {stderr}"
        );
    }
}

#[tokio::test]
/// (With a compression asked for that this build does not do: the worker starts, says once
/// that it sends OTLP uncompressed, as the OpenTelemetry exporter does, and runs.)
async fn sigterm_stops_the_worker_with_exit_code_0() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let name = format!("binary-{}", uuid::Uuid::new_v4());
    let mut child = worker()
        .env("DB_SOURCE", db.url.expose())
        .env("REDIS_ADDRESS", &redis.address)
        .env("REDIS_NAMESPACE", redis.namespace.as_str())
        .env("WORKER_CONSUMER_NAME", &name)
        .env("RUST_LOG", "info")
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        .spawn()
        .expect("start the worker");

    // Ready: it logged that it started.
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut warned = false;
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            warned |= line.contains("OTLP compression is not built in")
                && line.contains("OTEL_EXPORTER_OTLP_COMPRESSION");
            if line.contains("start task processor") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(started, Ok(true), "the worker started");
    assert!(warned, "the ignored compression was warned about");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let exit = sigterm(&mut child, Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn a_redis_that_refuses_the_worker_stops_it_naming_redis_address() {
    let (_server, refusals) = refusing_redis().await;
    for (address, reason) in refusals {
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            worker().env("REDIS_ADDRESS", &address).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{address}: still running after 30 s"))
        .expect("run the worker");
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

/// Waits for a line containing `text` on `lines`; false at the end of the output.
async fn wait_for_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    text: &str,
) -> bool {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(text) {
                return true;
            }
        }
        false
    })
    .await;
    found == Ok(true)
}

#[tokio::test]
async fn a_redis_that_is_down_or_hung_is_waited_for() {
    // Down: nothing listens. Then hung: a private server under SIGSTOP, resumed later.
    let down = format!("127.0.0.1:{}", free_port());
    let server = RedisServer::start().await;
    let redis = TestRedis::at(server.address());
    server.pause();
    for (address, hung) in [(down, false), (server.address(), true)] {
        let mut child = worker()
            .env("REDIS_ADDRESS", &address)
            .env("REDIS_NAMESPACE", redis.namespace.as_str())
            .env("RUST_LOG", "info")
            .spawn()
            .expect("start the worker");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        assert!(
            wait_for_line(&mut lines, "cannot reach Redis; retrying").await,
            "{address}: the worker waits for Redis"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "{address}: still running"
        );
        if hung {
            server.resume();
            assert!(
                wait_for_line(&mut lines, "start task processor").await,
                "started once Redis answered"
            );
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let exit = sigterm(&mut child, Duration::from_secs(15))
            .await
            .expect("exits after SIGTERM");
        assert!(exit.success(), "{address}: {exit:?}");
    }
}

#[tokio::test]
async fn a_new_worker_shows_in_xinfo_consumers_on_every_stream_before_reading_anything() {
    let redis = TestRedis::new();
    let name = format!("visible-{}", uuid::Uuid::new_v4());
    let mut child = worker()
        .env("REDIS_ADDRESS", &redis.address)
        .env("REDIS_NAMESPACE", redis.namespace.as_str())
        .env("WORKER_CONSUMER_NAME", &name)
        .env("RUST_LOG", "info")
        .spawn()
        .expect("start the worker");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    assert!(
        wait_for_line(&mut lines, "start task processor").await,
        "the worker started"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let mut conn = redis.conn().await;
    for queue in ["critical", "default", "low"] {
        let stream = redis
            .keys()
            .stream(&simplebank_queue::QueueName::parse(queue).expect("queue"));
        let consumers: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg(simplebank_queue::GROUP)
            .query_async(&mut conn)
            .await
            .expect("XINFO CONSUMERS");
        let names: Vec<String> = consumers
            .iter()
            .filter_map(|c| redis::from_redis_value_ref::<String>(c.get("name")?).ok())
            .collect();
        assert_eq!(names, std::slice::from_ref(&name), "{queue}");
    }
    let exit = sigterm(&mut child, Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

/// A worker started on a Redis that still has keys of the old layout warns, naming the
/// command; `migrate-redis` moves them, and says so; a second run moves nothing.
#[tokio::test]
async fn old_layout_keys_are_reported_at_start_and_moved_once_by_migrate_redis() {
    let redis = TestRedis::new();
    let ns = redis.namespace.as_str().to_owned();
    let mut conn = redis.conn().await;
    let fields = [
        ("id", "old-task-1"),
        ("type", "task:old"),
        ("payload", "{}"),
        ("attempt", "1"),
        ("max_retry", "3"),
        ("timeout_ms", "1000"),
        ("enqueued_at", "1700000000000"),
    ];
    let _: String = redis::cmd("XADD")
        .arg(format!("{{{ns}}}:stream:low"))
        .arg("*")
        .arg(&fields)
        .query_async(&mut conn)
        .await
        .expect("XADD old stream");

    let mut child = worker()
        .env("REDIS_ADDRESS", &redis.address)
        .env("REDIS_NAMESPACE", &ns)
        .env("RUST_LOG", "info")
        .spawn()
        .expect("start the worker");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    assert!(
        wait_for_line(&mut lines, "simplebank-worker migrate-redis").await,
        "the worker warned about the old layout"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let exit = sigterm(&mut child, Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");

    let migrate = || {
        let mut command = worker();
        command
            .arg("migrate-redis")
            .env("REDIS_ADDRESS", &redis.address)
            .env("REDIS_NAMESPACE", &ns)
            .stdout(Stdio::piped());
        command
    };
    let first = migrate().output().await.expect("run migrate-redis");
    assert!(first.status.success(), "{first:?}");
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(said.starts_with("moved 1 stream entries"), "{said}");
    let second = migrate().output().await.expect("run migrate-redis again");
    assert!(second.status.success(), "{second:?}");
    let said = String::from_utf8_lossy(&second.stdout);
    assert!(
        said.starts_with("moved 0 stream entries (they run again), 0 scheduled"),
        "{said}"
    );
    let len: usize = redis::cmd("XLEN")
        .arg(
            redis
                .keys()
                .stream(&simplebank_queue::QueueName::parse("low").expect("queue")),
        )
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(len, 1, "the task is on its queue's stream now");

    let usage = worker().arg("migrate").output().await.expect("run");
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
}

/// `migrate-redis` runs on one server only: with `REDIS_CLUSTER=true` it refuses before
/// connecting to anything, saying why.
#[tokio::test]
async fn migrate_redis_refuses_a_cluster() {
    let output = worker()
        .arg("migrate-redis")
        .env("REDIS_CLUSTER", "true")
        .env("REDIS_ADDRESS", format!("127.0.0.1:{}", free_port()))
        .output()
        .await
        .expect("run migrate-redis");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not a Redis Cluster (REDIS_CLUSTER is true)"),
        "{stderr}"
    );
}
