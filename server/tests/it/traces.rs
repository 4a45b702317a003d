//! One trace from the RPC through the queue into the worker, received by an OTLP trace
//! receiver inside the test (a tonic server implementing the collector's TraceService from the
//! official OpenTelemetry protobuf definitions), with the real server and worker binaries
//! running as separate processes.

use std::{path::PathBuf, process::Stdio, time::Duration};

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use simplebank_core::testing::{
    RedisServer, TempDir, TestDb, TestRedis, eventually, free_port, stop_gracefully, verify_link,
};
use simplebank_observability::testing::OtlpSink;
use simplebank_server::pb::{
    LoginUserRequest, LogoutUserRequest, RenewAccessTokenRequest, UpdateUserRequest,
    simple_bank_client::SimpleBankClient,
};
use tonic::{Request, metadata::MetadataValue};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{connect_when_up, request};

/// The servers' token key: no span or log line may hold it.
const TOKEN_KEY: &str = "traces-test-key-0123456789abcdef";

/// `OTEL_EXPORTER_OTLP_HEADERS` for both binaries: an API key with %-encoded `=` and `,`.
const EXPORT_HEADERS: &str = "X-Api-Key=otlp%3Dk3y%2C1 , x-tenant=acme";

/// The OTLP receiver, keeping every span.
#[derive(Clone)]
struct Collector(OtlpSink);

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(text)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Collector {
    async fn start() -> (Self, u16) {
        let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
        (Self(sink), port)
    }

    fn all(&self) -> Vec<(String, Span)> {
        self.0.spans()
    }

    fn of_trace(&self, trace_id: &str) -> Vec<(String, Span)> {
        self.all()
            .into_iter()
            .filter(|(_, span)| hex(&span.trace_id) == trace_id)
            .collect()
    }
}

/// The server and worker binaries, exporting to the receiver, logging JSON into files.
struct Stack {
    db: TestDb,
    redis: TestRedis,
    grpc: String,
    logs: TempDir,
    mail_dir: PathBuf,
    server: tokio::process::Child,
    worker: Option<tokio::process::Child>,
    env: Vec<(String, String)>,
}

fn worker_binary() -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_simplebank-server"));
    let worker = server.with_file_name("simplebank-worker");
    assert!(
        worker.exists(),
        "build the worker first: cargo build --workspace --bins"
    );
    worker
}

impl Stack {
    /// `rust_log`: the binaries' log filter (it must not change what is traced).
    async fn start(
        redis: TestRedis,
        otlp_port: u16,
        mail_dir: Option<PathBuf>,
        rust_log: &str,
    ) -> Self {
        let endpoint = (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{otlp_port}"),
        );
        Self::start_exporting(redis, &[endpoint], mail_dir, rust_log).await
    }

    /// With `otlp`: the exporters' endpoint and protocol variables.
    async fn start_exporting(
        redis: TestRedis,
        otlp: &[(&str, String)],
        mail_dir: Option<PathBuf>,
        rust_log: &str,
    ) -> Self {
        let db = TestDb::create().await;
        let logs = TempDir::new();
        let grpc = format!("127.0.0.1:{}", free_port());
        let mail_dir = mail_dir.unwrap_or_else(|| logs.0.join("mail"));
        let env: Vec<(String, String)> = [
            ("DB_SOURCE", db.url.expose().clone()),
            ("REDIS_ADDRESS", redis.address.clone()),
            ("REDIS_NAMESPACE", redis.namespace.as_str().to_owned()),
            ("GRPC_SERVER_ADDRESS", grpc.clone()),
            ("ADMIN_GRPC_ADDRESS", "off".into()),
            ("ENVIRONMENT", "production".into()),
            ("TOKEN_SYMMETRIC_KEY", TOKEN_KEY.into()),
            ("RUST_LOG", rust_log.into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            // Sent with every span export, %-decoded; never in a log line.
            ("OTEL_EXPORTER_OTLP_HEADERS", EXPORT_HEADERS.into()),
            ("OUTBOX_RELAY_INTERVAL", "100ms".into()),
            ("EMAIL_FILE_DIR", mail_dir.display().to_string()),
            ("WORKER_RETRY_BASE_DELAY", "200ms".into()),
            ("WORKER_RETRY_MAX_DELAY", "400ms".into()),
            (
                "VERIFY_EMAIL_KEY",
                crate::helpers::TEST_VERIFY_EMAIL_KEY.into(),
            ),
        ]
        .into_iter()
        .chain(otlp.iter().cloned())
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let server = spawn(
            env!("CARGO_BIN_EXE_simplebank-server").into(),
            &env,
            &logs.0.join("server.log"),
        );
        let stack = Self {
            db,
            redis,
            grpc,
            logs,
            mail_dir,
            server,
            worker: None,
            env,
        };
        connect_when_up(&stack.grpc).await;
        stack
    }

    fn start_worker(&mut self) {
        self.worker = Some(spawn(
            worker_binary(),
            &self.env,
            &self.logs.0.join("worker.log"),
        ));
    }

    async fn create_user(&self, trace_id: &str) -> String {
        let mut client = SimpleBankClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect");
        let mut call = Request::new(request("alice", "alice@example.com"));
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
        call.metadata_mut().insert(
            "traceparent",
            MetadataValue::try_from(traceparent.as_str()).expect("ascii"),
        );
        client.create_user(call).await.expect("CreateUser");
        "secret-password-1".to_owned()
    }

    /// SIGTERM both; returns their log lines and the emails sent.
    async fn stop(mut self) -> (Vec<String>, Vec<String>) {
        for child in [Some(&mut self.server), self.worker.as_mut()]
            .into_iter()
            .flatten()
        {
            stop_gracefully(child).await;
        }
        let mut lines = Vec::new();
        for name in ["server.log", "worker.log"] {
            if let Ok(text) = std::fs::read_to_string(self.logs.0.join(name)) {
                lines.extend(text.lines().map(str::to_owned));
            }
        }
        let emails = std::fs::read_dir(&self.mail_dir)
            .map(|entries| {
                entries
                    .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let _ = (&self.redis, &self.db);
        (lines, emails)
    }
}

fn spawn(binary: PathBuf, env: &[(String, String)], log: &PathBuf) -> tokio::process::Child {
    let file = std::fs::File::create(log).expect("log file");
    tokio::process::Command::new(binary)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .expect("start binary")
}

/// Waits for the RPC, publish and process spans of `trace_id`; returns the trace's spans.
async fn wait_for_trace(
    collector: &Collector,
    trace_id: &str,
    processes: usize,
) -> Vec<(String, Span)> {
    eventually("the whole trace arrived", Duration::from_secs(30), || {
        let spans = collector.of_trace(trace_id);
        async move {
            let kinds: Vec<i32> = spans.iter().map(|(_, s)| s.kind).collect();
            let published = spans.iter().any(|(_, s)| {
                s.kind == SpanKind::Producer as i32 && attr(s, "messaging.message.id").is_some()
            });
            kinds.contains(&(SpanKind::Server as i32))
                && published
                && kinds
                    .iter()
                    .filter(|k| **k == SpanKind::Consumer as i32)
                    .count()
                    >= processes
                && spans.iter().any(|(_, s)| s.name == "send email")
        }
    })
    .await;
    collector.of_trace(trace_id)
}

/// The span called `name`; `what` says which, should it be missing.
fn named<'a>(spans: &'a [(String, Span)], name: &str, what: &str) -> &'a Span {
    spans
        .iter()
        .find(|(_, s)| s.name == name)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("{what}: no span {name:?}"))
}

fn one(spans: &[(String, Span)], kind: SpanKind) -> &(String, Span) {
    let found: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s.kind == kind as i32)
        .collect();
    assert_eq!(found.len(), 1, "one {kind:?} span: {found:?}");
    found[0]
}

/// Checks the RPC -> publish -> process chain and the attributes; returns the process spans.
fn check_chain(spans: &[(String, Span)], queue_stream: &str) -> Vec<Span> {
    let (server_service, rpc) = one(spans, SpanKind::Server);
    assert_eq!(server_service, "simplebank-server");
    assert_eq!(rpc.name, "simplebank.v1.SimpleBank/CreateUser");
    assert_eq!(
        hex(&rpc.parent_span_id),
        "00f067aa0ba902b7",
        "continues the client's trace"
    );
    assert_eq!(attr(rpc, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attr(rpc, "rpc.service").as_deref(),
        Some("simplebank.v1.SimpleBank")
    );
    assert_eq!(attr(rpc, "rpc.method").as_deref(), Some("CreateUser"));
    assert_eq!(attr(rpc, "rpc.grpc.status_code").as_deref(), Some("0"));

    let db = named(spans, "INSERT users, task_outbox", "the database span");
    assert_eq!(db.parent_span_id, rpc.span_id);
    assert_eq!(attr(db, "db.system").as_deref(), Some("postgresql"));
    let hash = named(spans, "hash password", "the hashing span");
    assert_eq!(hash.parent_span_id, rpc.span_id);
    assert!(
        hash.end_time_unix_nano <= db.start_time_unix_nano,
        "the password is hashed before the insert"
    );

    // Failed publish attempts (Redis down) are spans of the trace too, marked ERROR; exactly one
    // attempt succeeded.
    let publishes: Vec<&Span> = spans
        .iter()
        .filter(|(_, s)| s.kind == SpanKind::Producer as i32)
        .map(|(_, s)| s)
        .collect();
    for attempt in &publishes {
        assert_eq!(
            attempt.parent_span_id, rpc.span_id,
            "publish is a child of the RPC"
        );
    }
    let succeeded: Vec<&&Span> = publishes
        .iter()
        .filter(|s| s.status.as_ref().is_none_or(|st| st.code != 2))
        .collect();
    assert_eq!(succeeded.len(), 1, "one successful publish: {publishes:?}");
    let publish = *succeeded[0];
    assert_eq!(publish.name, format!("send {queue_stream}"));
    assert_eq!(attr(publish, "messaging.system").as_deref(), Some("redis"));
    assert_eq!(
        attr(publish, "messaging.destination.name").as_deref(),
        Some(queue_stream)
    );
    assert_eq!(
        attr(publish, "messaging.operation.type").as_deref(),
        Some("send")
    );
    assert!(attr(publish, "messaging.message.id").is_some_and(|id| id.contains('-')));

    let processes: Vec<Span> = spans
        .iter()
        .filter(|(service, s)| {
            s.kind == SpanKind::Consumer as i32 && service == "simplebank-worker"
        })
        .map(|(_, s)| s.clone())
        .collect();
    for process in &processes {
        assert_eq!(
            process.parent_span_id, publish.span_id,
            "process is a child of publish"
        );
        assert_eq!(
            attr(process, "messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(
            attr(process, "messaging.consumer.group.name").as_deref(),
            Some("workers")
        );
        assert_eq!(
            attr(process, "messaging.destination.name").as_deref(),
            Some(queue_stream)
        );
        assert!(attr(process, "simplebank.task.attempt").is_some());
    }
    let mail = named(spans, "send email", "the mailer span");
    assert!(processes.iter().any(|p| p.span_id == mail.parent_span_id));
    processes
}

/// Nothing secret in any span (names, attributes, events) or log line.
fn assert_no_secrets(collector: &Collector, lines: &[String], emails: &[String], password: &str) {
    let (_, code) = emails
        .iter()
        .find_map(|email| verify_link(email))
        .expect("the verification email and its link");
    let spans = format!("{:?}", collector.all());
    for secret in [password, code.as_str(), "alice@example.com", "$argon2"] {
        assert!(!spans.contains(secret), "a span holds {secret:?}");
        assert!(
            !lines.iter().any(|l| l.contains(secret)),
            "a log line holds {secret:?}"
        );
    }
}

fn assert_logs_carry(lines: &[String], trace_id: &str, message: &str) {
    let line = lines
        .iter()
        .find(|l| l.contains(message) && l.contains(trace_id))
        .unwrap_or_else(|| panic!("no {message:?} log line with trace id {trace_id}"));
    let json: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(json["trace_id"], trace_id);
    assert!(json["span_id"].as_str().is_some_and(|s| s.len() == 16));
}

#[tokio::test]
async fn one_sign_up_is_one_trace_from_the_rpc_into_the_worker() {
    let (collector, port) = Collector::start().await;
    let redis = TestRedis::new();
    let stream = redis
        .keys()
        .stream(&simplebank_queue::QueueName::parse("critical").expect("q"));
    let mut stack = Stack::start(redis, port, None, "info").await;
    stack.start_worker();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let password = stack.create_user(trace_id).await;

    let spans = wait_for_trace(&collector, trace_id, 1).await;
    let processes = check_chain(&spans, &stream);
    assert_eq!(processes.len(), 1);
    // The outbox row's DELETE, after the publish, in the background: in the call's trace,
    // under the call's span.
    eventually("the outbox DELETE span", Duration::from_secs(30), || {
        let found = collector
            .of_trace(trace_id)
            .iter()
            .any(|(_, s)| s.name == "DELETE task_outbox");
        async move { found }
    })
    .await;
    let spans = collector.of_trace(trace_id);
    let (_, rpc) = one(&spans, SpanKind::Server);
    let delete = named(&spans, "DELETE task_outbox", "the DELETE span");
    assert_eq!(delete.parent_span_id, rpc.span_id);
    assert!(
        delete.start_time_unix_nano >= rpc.start_time_unix_nano,
        "{delete:?}"
    );
    // The relay, claiming every 100 ms here, finds nothing to do: no trace of its own each
    // time (a root `UPDATE task_outbox`; a lease released after a failed publish would be
    // one under its call's span).
    let claims = collector
        .all()
        .into_iter()
        .filter(|(_, s)| s.name == "UPDATE task_outbox" && s.parent_span_id.is_empty())
        .count();
    assert_eq!(claims, 0, "the relay's idle claims are not traced");
    // A load balancer's probe (the gRPC health service) is no trace either.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", stack.grpc))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let probe = health
        .check(HealthCheckRequest::default())
        .await
        .expect("health check");
    assert_eq!(probe.get_ref().status(), ServingStatus::Serving);
    let (lines, emails) = stack.stop().await;
    // (The server flushed its spans on the way out.)
    let probes: Vec<String> = collector
        .all()
        .into_iter()
        .map(|(_, s)| s.name)
        .filter(|name| name.starts_with("grpc.health."))
        .collect();
    assert!(probes.is_empty(), "health checks traced: {probes:?}");
    assert_logs_carry(&lines, trace_id, "processed task");
    assert_logs_carry(&lines, trace_id, "gRPC call");
    assert_no_secrets(&collector, &lines, &emails, &password);
    // Both binaries sent the configured headers with every export.
    let exports = collector.0.trace_headers();
    assert!(exports.len() >= 2, "{exports:?}");
    for headers in &exports {
        assert_eq!(
            headers.get("x-api-key").map(String::as_str),
            Some("otlp=k3y,1")
        );
        assert_eq!(headers.get("x-tenant").map(String::as_str), Some("acme"));
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/grpc")
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains("k3y")),
        "a log line holds the API key"
    );
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`: both binaries send their spans and metrics
/// over OTLP/HTTP (`POST /v1/traces`, `/v1/metrics` on the common endpoint), with the
/// configured headers, and one sign-up is still one trace from the RPC into the worker.
#[tokio::test]
async fn over_otlp_http_one_sign_up_is_still_one_trace_and_metrics_arrive() {
    let (collector, _) = Collector::start().await;
    let redis = TestRedis::new();
    let stream = redis
        .keys()
        .stream(&simplebank_queue::QueueName::parse("critical").expect("q"));
    let otlp = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}/", collector.0.http_port()),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
    ];
    let mut stack = Stack::start_exporting(redis, &otlp, None, "info").await;
    stack.start_worker();
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let password = stack.create_user(trace_id).await;
    let spans = wait_for_trace(&collector, trace_id, 1).await;
    assert_eq!(check_chain(&spans, &stream).len(), 1);
    let (lines, emails) = stack.stop().await;
    assert_no_secrets(&collector, &lines, &emails, &password);
    let paths = collector.0.http_requests();
    assert!(paths.iter().any(|p| p == "/v1/traces"), "{paths:?}");
    // Metrics are exported at exit at the latest, by both binaries.
    assert!(paths.iter().any(|p| p == "/v1/metrics"), "{paths:?}");
    let services: std::collections::BTreeSet<String> = collector
        .0
        .metric_points()
        .iter()
        .map(|point| point.service().to_owned())
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["simplebank-server", "simplebank-worker"]
    );
    let exports = collector.0.trace_headers();
    assert!(exports.len() >= 2, "{exports:?}");
    for headers in &exports {
        assert_eq!(
            headers.get("x-api-key").map(String::as_str),
            Some("otlp=k3y,1")
        );
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/x-protobuf")
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains("k3y")),
        "a log line holds the API key"
    );
}

#[tokio::test]
async fn a_task_relayed_from_the_outbox_later_stays_in_its_trace() {
    let (collector, port) = Collector::start().await;
    let mut redis_server = RedisServer::stopped(free_port(), &[]);
    let redis = TestRedis::at(redis_server.address());
    let stream = redis
        .keys()
        .stream(&simplebank_queue::QueueName::parse("critical").expect("q"));
    // Logs at warn only: tracing must not depend on the log level.
    let mut stack = Stack::start(redis, port, None, "warn").await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let password = stack.create_user(trace_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stack.db.store.outbox_len().await.expect("outbox"),
        1,
        "waiting in the outbox"
    );

    redis_server.restart().await;
    stack.start_worker();
    let spans = wait_for_trace(&collector, trace_id, 1).await;
    check_chain(&spans, &stream);
    let (lines, emails) = stack.stop().await;
    assert_no_secrets(&collector, &lines, &emails, &password);
    // While Redis was down the relay claimed the row every 100 ms, failed to publish it and
    // released it: neither the claim nor the release is a trace of its own.
    let roots: Vec<String> = collector
        .all()
        .into_iter()
        .filter(|(_, s)| s.name == "UPDATE task_outbox" && s.parent_span_id.is_empty())
        .map(|(_, s)| hex(&s.trace_id))
        .collect();
    assert!(roots.is_empty(), "the relay's rounds traced: {roots:?}");
}

#[tokio::test]
async fn a_retried_task_stays_in_its_trace_with_the_failure_recorded() {
    let (collector, port) = Collector::start().await;
    let redis = TestRedis::new();
    let stream = redis
        .keys()
        .stream(&simplebank_queue::QueueName::parse("critical").expect("q"));
    // The mail folder is a regular file at first: the first attempt fails.
    let blocker = TempDir::new();
    let mail_dir = blocker.0.join("mail");
    std::fs::write(&mail_dir, "not a folder").expect("blocker file");
    let mut stack = Stack::start(redis, port, Some(mail_dir.clone()), "info").await;
    stack.start_worker();
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let password = stack.create_user(trace_id).await;

    eventually("the first attempt failed", Duration::from_secs(30), || {
        let failed = collector.of_trace(trace_id).iter().any(|(_, s)| {
            s.kind == SpanKind::Consumer as i32 && s.status.as_ref().is_some_and(|st| st.code == 2)
        });
        async move { failed }
    })
    .await;
    std::fs::remove_file(&mail_dir).expect("unblock");
    // The retry may come before the first failure's span was exported (and so fail too):
    // what counts is that a later attempt succeeded, in the same trace.
    eventually(
        "a later attempt created the mail folder",
        Duration::from_secs(30),
        || {
            let created = mail_dir.is_dir();
            async move { created }
        },
    )
    .await;
    eventually(
        "the successful attempt's span arrived",
        Duration::from_secs(30),
        || {
            let succeeded = collector.of_trace(trace_id).iter().any(|(_, s)| {
                s.kind == SpanKind::Consumer as i32
                    && s.status.as_ref().is_none_or(|st| st.code != 2)
            });
            async move { succeeded }
        },
    )
    .await;
    let spans = wait_for_trace(&collector, trace_id, 2).await;
    let processes = check_chain(&spans, &stream);
    let attempt = |p: &Span| attr(p, "simplebank.task.attempt").and_then(|a| a.parse::<u32>().ok());
    let failed_first = processes
        .iter()
        .any(|p| attempt(p) == Some(1) && p.status.as_ref().is_some_and(|st| st.code == 2));
    let succeeded_later = processes.iter().any(|p| {
        attempt(p).is_some_and(|a| a > 1) && p.status.as_ref().is_none_or(|st| st.code != 2)
    });
    assert!(
        failed_first && succeeded_later,
        "attempt 1 failed, a later one succeeded: {:?}",
        processes
            .iter()
            .map(|p| (attempt(p), p.status.clone()))
            .collect::<Vec<_>>()
    );
    // The mailer's span of the failed attempt is failed too, with the error; the one of the
    // attempt that sent the email is not.
    let mail_under = |process: &Span| {
        spans
            .iter()
            .find(|(_, s)| s.name == "send email" && s.parent_span_id == process.span_id)
            .map(|(_, s)| s.status.clone().unwrap_or_default())
    };
    let first = processes
        .iter()
        .find(|p| attempt(p) == Some(1))
        .expect("attempt 1");
    let failed_mail = mail_under(first).expect("attempt 1's send email span");
    assert_eq!(failed_mail.code, 2, "attempt 1's mail span is ERROR");
    assert!(
        failed_mail
            .message
            .contains("could not write the email file"),
        "{failed_mail:?}"
    );
    assert!(
        processes
            .iter()
            .filter(|p| p.status.as_ref().is_none_or(|st| st.code != 2))
            .any(|p| mail_under(p).is_some_and(|st| st.code != 2)),
        "the successful attempt's mail span is not ERROR"
    );
    let (lines, emails) = stack.stop().await;
    assert_no_secrets(&collector, &lines, &emails, &password);
}

#[tokio::test]
async fn with_the_receiver_down_sign_up_works_and_shutdown_is_prompt() {
    let closed_port = free_port();
    let redis = TestRedis::new();
    let stack = Stack::start(redis, closed_port, None, "info").await;
    stack.create_user("6e0c63257de34c926f9efcd03899a3e6").await;
    let started = std::time::Instant::now();
    let _ = stack.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopped in {:?}",
        started.elapsed()
    );
}

/// `message` with a `traceparent` starting trace `trace_id`, and optional bearer token.
fn traced<T>(message: T, trace_id: &str, bearer: Option<&str>) -> Request<T> {
    let mut call = Request::new(message);
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    call.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str()).expect("ascii"),
    );
    if let Some(token) = bearer {
        call.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("bearer {token}")).expect("ascii"),
        );
    }
    call
}

#[tokio::test]
async fn sign_in_session_and_update_calls_are_spans_and_an_email_change_joins_its_trace() {
    let (collector, port) = Collector::start().await;
    let redis = TestRedis::new();
    let stream = redis
        .keys()
        .stream(&simplebank_queue::QueueName::parse("critical").expect("q"));
    let mut stack = Stack::start(redis, port, None, "info").await;
    stack.start_worker();
    let password = stack.create_user("11111111111111111111111111111111").await;
    wait_for_trace(&collector, "11111111111111111111111111111111", 1).await;
    let mut client = SimpleBankClient::connect(format!("http://{}", stack.grpc))
        .await
        .expect("connect");

    let (login_trace, renew_trace, update_trace, logout_trace) = (
        "22222222222222222222222222222222",
        "33333333333333333333333333333333",
        "44444444444444444444444444444444",
        "55555555555555555555555555555555",
    );
    let login = client
        .login_user(traced(
            LoginUserRequest {
                username: "alice".into(),
                password: password.clone(),
            },
            login_trace,
            None,
        ))
        .await
        .expect("LoginUser")
        .into_inner();
    // A wrong password too: its refusal must not carry the attempt either.
    let wrong = client
        .login_user(traced(
            LoginUserRequest {
                username: "alice".into(),
                password: "wrong-password-for-alice".into(),
            },
            login_trace,
            None,
        ))
        .await
        .expect_err("a wrong password");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    let renewed = client
        .renew_access_token(traced(
            RenewAccessTokenRequest {
                refresh_token: login.refresh_token.clone(),
            },
            renew_trace,
            None,
        ))
        .await
        .expect("RenewAccessToken")
        .into_inner();
    let new_password = "a-brand-new-secret-9";
    client
        .update_user(traced(
            UpdateUserRequest {
                username: "alice".into(),
                full_name: None,
                email: Some("alice.new@example.com".into()),
                password: Some(new_password.into()),
                current_password: Some(password.clone()),
            },
            update_trace,
            Some(&renewed.access_token),
        ))
        .await
        .expect("UpdateUser");
    // The verification task of the new address is part of the UpdateUser trace.
    let spans = wait_for_trace(&collector, update_trace, 1).await;
    check_rpc_chain(&spans, &stream, "UpdateUser", "UPDATE users");
    assert!(
        spans.iter().any(|(_, s)| s.name == "verify password"),
        "UpdateUser checks the current password in its trace"
    );
    client
        .logout_user(traced(
            LogoutUserRequest {
                refresh_token: renewed.refresh_token.clone(),
                all_sessions: true,
            },
            logout_trace,
            None,
        ))
        .await
        .expect("LogoutUser");

    for (trace, method) in [
        (login_trace, "LoginUser"),
        (renew_trace, "RenewAccessToken"),
        (logout_trace, "LogoutUser"),
    ] {
        let name = format!("simplebank.v1.SimpleBank/{method}");
        eventually(
            &format!("the {method} span"),
            Duration::from_secs(30),
            || {
                let found = collector
                    .of_trace(trace)
                    .iter()
                    .any(|(_, s)| s.kind == SpanKind::Server as i32 && s.name == name);
                async move { found }
            },
        )
        .await;
    }
    let verify_span = collector
        .of_trace(login_trace)
        .into_iter()
        .filter(|(_, s)| s.name == "verify password")
        .count();
    assert_eq!(
        verify_span, 2,
        "each sign-in checks a password, wrong or right"
    );

    let (lines, emails) = stack.stop().await;
    let all = format!("{:?}", collector.all());
    let codes: Vec<String> = emails
        .iter()
        .filter_map(|e| verify_link(e).map(|(_, code)| code))
        .collect();
    assert_eq!(codes.len(), 2, "the sign-up email and the new address's");
    let mut secrets = vec![
        password,
        "wrong-password-for-alice".to_owned(),
        new_password.to_owned(),
        login.access_token,
        login.refresh_token,
        renewed.access_token,
        renewed.refresh_token,
        TOKEN_KEY.to_owned(),
        "alice.new@example.com".to_owned(),
        "$argon2".to_owned(),
    ];
    secrets.extend(codes);
    for secret in &secrets {
        assert!(!all.contains(secret.as_str()), "a span holds {secret:?}");
        assert!(
            !lines.iter().any(|l| l.contains(secret.as_str())),
            "a log line holds {secret:?}"
        );
    }
}

/// The RPC `method` -> its database span `db_span`, and publish -> process of its task.
fn check_rpc_chain(spans: &[(String, Span)], queue_stream: &str, method: &str, db_span: &str) {
    let (_, rpc) = one(spans, SpanKind::Server);
    assert_eq!(rpc.name, format!("simplebank.v1.SimpleBank/{method}"));
    assert_eq!(attr(rpc, "rpc.method").as_deref(), Some(method));
    let db = named(spans, db_span, "the database span");
    assert_eq!(db.parent_span_id, rpc.span_id);
    let (_, publish) = spans
        .iter()
        .find(|(_, s)| {
            s.kind == SpanKind::Producer as i32 && s.status.as_ref().is_none_or(|st| st.code != 2)
        })
        .expect("a publish");
    assert_eq!(publish.parent_span_id, rpc.span_id);
    assert_eq!(publish.name, format!("send {queue_stream}"));
    let (_, process) = spans
        .iter()
        .find(|(service, s)| s.kind == SpanKind::Consumer as i32 && service == "simplebank-worker")
        .expect("the worker's span");
    assert_eq!(process.parent_span_id, publish.span_id);
}
