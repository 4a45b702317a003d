//! The server's metrics, exported over OTLP by the real server binary to the suite's OTLP
//! receiver: the RPC duration histogram (a sample per call, with its status code, bounded
//! cardinality) and the outbox backlog gauge.

use std::{collections::BTreeMap, path::PathBuf, process::Stdio, str::FromStr, time::Duration};

use simplebank_core::testing::{
    PostgresServer, RedisServer, TempDir, TestDb, TestRedis, eventually, free_port, stop_gracefully,
};
use simplebank_observability::testing::{MetricPoint, OtlpSink};
use simplebank_server::{
    health::REDIS_SERVICE,
    pb::{CreateUserRequest, LoginUserRequest},
};
use tonic::{Code, codegen::http::uri::PathAndQuery, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{connect_when_up, request};

const DURATION: &str = "rpc.server.call.duration";
const BACKLOG: &str = "simplebank.outbox.backlog";
const CREATE_USER: &str = "simplebank.v1.SimpleBank/CreateUser";
const LOGIN_USER: &str = "simplebank.v1.SimpleBank/LoginUser";
const LIST_QUEUES: &str = "simplebank.admin.v1.QueueAdmin/ListQueues";
const LIST_QUEUES_PATH: &str = "/simplebank.admin.v1.QueueAdmin/ListQueues";
const PG_PASSWORD: &str = "metrics-pg-password";

/// The server binary exporting metrics (only) to `otlp_port` every 200 ms, with its admin
/// listener on a port of its own.
struct Server {
    grpc: String,
    admin: String,
    child: tokio::process::Child,
    _db: Option<TestDb>,
    logs: TempDir,
}

impl Server {
    /// On a database of its own on the shared PostgreSQL.
    async fn start(redis: &TestRedis, otlp_port: u16) -> Self {
        let db = TestDb::create().await;
        let url = db.url.expose().clone();
        Self::start_on(&url, Some(db), redis, otlp_port).await
    }

    /// On the database at `db_url` (which the server migrates), keeping `db` alive meanwhile.
    async fn start_on(db_url: &str, db: Option<TestDb>, redis: &TestRedis, otlp_port: u16) -> Self {
        let logs = TempDir::new();
        let grpc = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(logs.0.join("server.log")).expect("log file");
        let child =
            tokio::process::Command::new(PathBuf::from(env!("CARGO_BIN_EXE_simplebank-server")))
                .env("DB_SOURCE", db_url)
                .env("REDIS_ADDRESS", &redis.address)
                .env("REDIS_NAMESPACE", redis.namespace.as_str())
                .env("GRPC_SERVER_ADDRESS", &grpc)
                .env("ADMIN_GRPC_ADDRESS", &admin)
                .env("TOKEN_SYMMETRIC_KEY", "metrics-test-key-0123456789abcde")
                .env("RUST_LOG", "warn")
                .env(
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    format!("http://127.0.0.1:{otlp_port}"),
                )
                .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
                .env("OUTBOX_RELAY_INTERVAL", "100ms")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("start the server");
        // Both listeners: the admin one may come up a moment after the public one.
        connect_when_up(&grpc).await;
        connect_when_up(&admin).await;
        Self {
            grpc,
            admin,
            child,
            _db: db,
            logs,
        }
    }

    async fn channel(&self) -> Channel {
        connect(&self.grpc).await
    }

    /// The server's log so far, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.logs.0.join("server.log")).unwrap_or_default()
    }
}

async fn connect(address: &str) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

/// A unary call of `path` with an empty message, as any client may send; returns its code.
async fn call_path(channel: &Channel, path: &str) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = PathAndQuery::from_str(path).expect("path");
    match grpc.unary(tonic::Request::new(()), path, codec).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Samples of the latest export per (method, status code), from the histogram's counts.
fn samples(sink: &OtlpSink) -> BTreeMap<(String, String), u64> {
    let mut counts = BTreeMap::new();
    for point in sink.latest(DURATION) {
        let key = (
            point.attr("rpc.method").unwrap_or("").to_owned(),
            point
                .attr("rpc.response.status_code")
                .unwrap_or("")
                .to_owned(),
        );
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let count = point.value.number() as u64;
        *counts.entry(key).or_insert(0) += count;
    }
    counts
}

fn count(counts: &BTreeMap<(String, String), u64>, method: &str, code: &str) -> u64 {
    counts
        .get(&(method.to_owned(), code.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// Each call is one sample with its status code; 1,000 distinct usernames and 1,000 bogus
/// method paths add no series (the paths are all `_OTHER`, usernames are never attributes).
#[tokio::test]
async fn the_rpc_histogram_has_a_sample_per_call_with_its_status_code_and_bounded_series() {
    let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
    let redis = TestRedis::new();
    let server = Server::start(&redis, port).await;
    let mut client = connect_when_up(&server.grpc).await;

    for name in ["metrics_ann", "metrics_bob"] {
        client
            .create_user(request(name, &format!("{name}@example.com")))
            .await
            .expect("CreateUser");
    }
    let duplicate = client
        .create_user(request("metrics_ann", "other@example.com"))
        .await
        .expect_err("taken");
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    for bad in ["x", "Bad Name", "a\u{0}b"] {
        let refused = client
            .create_user(CreateUserRequest {
                username: bad.into(),
                ..request("unused", "unused@example.com")
            })
            .await
            .expect_err("invalid");
        assert_eq!(refused.code(), Code::InvalidArgument);
    }
    let mut logins = 0;
    for n in 0..1000 {
        let refused = client
            .login_user(LoginUserRequest {
                username: format!("nobody_{n}"),
                password: "wrong-password-1".into(),
            })
            .await
            .expect_err("no such user");
        assert!(
            matches!(
                refused.code(),
                Code::Unauthenticated | Code::ResourceExhausted
            ),
            "{refused:?}"
        );
        logins += 1;
    }
    let channel = server.channel().await;
    for n in 0..1000 {
        let path = format!("/bogus.v{n}.Service{n}/Method_{n}");
        assert_eq!(call_path(&channel, &path).await, Code::Unimplemented);
    }
    assert_eq!(
        call_path(&channel, "/simplebank.v1.SimpleBank/NoSuchMethod").await,
        Code::Unimplemented
    );
    // The admin listener has the layer too, with its own methods; the public one's are
    // unknown there.
    let admin = connect(&server.admin).await;
    assert_eq!(call_path(&admin, LIST_QUEUES_PATH).await, Code::Ok);
    assert_eq!(
        call_path(&admin, "/simplebank.v1.SimpleBank/CreateUser").await,
        Code::Unimplemented
    );

    eventually("every call is exported", Duration::from_secs(60), || {
        let counts = samples(&sink);
        async move {
            count(&counts, "_OTHER", "UNIMPLEMENTED") == 1002
                && count(&counts, LIST_QUEUES, "OK") == 1
                && count(&counts, LOGIN_USER, "UNAUTHENTICATED")
                    + count(&counts, LOGIN_USER, "RESOURCE_EXHAUSTED")
                    == logins
        }
    })
    .await;
    let counts = samples(&sink);
    assert_eq!(count(&counts, CREATE_USER, "OK"), 2, "{counts:?}");
    assert_eq!(
        count(&counts, CREATE_USER, "ALREADY_EXISTS"),
        1,
        "{counts:?}"
    );
    assert_eq!(
        count(&counts, CREATE_USER, "INVALID_ARGUMENT"),
        3,
        "{counts:?}"
    );

    // The two sign-ups' tasks were published (the producer side of the queue's metrics).
    let sent: Vec<MetricPoint> = sink.latest("messaging.client.sent.messages");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].value.number(), 2.0);
    assert_eq!(sent[0].attr("messaging.destination.name"), Some("critical"));
    assert_eq!(sent[0].attr("messaging.operation.name"), Some("send"));
    assert_eq!(
        sent[0].attr("simplebank.task.type"),
        Some("task:send_verify_email")
    );
    assert_eq!(sent[0].attr("error.type"), None);

    let points: Vec<MetricPoint> = sink.latest(DURATION);
    // Series: CreateUser x 3 codes, LoginUser x <= 2, _OTHER x 1, ListQueues x 1: bounded
    // whatever the clients sent.
    assert!(points.len() <= 10, "{} series: {counts:?}", points.len());
    // One `service.instance.id` of the process's own (a UUID v4), though nothing set one.
    let ids: std::collections::BTreeSet<String> = sink
        .metric_points()
        .iter()
        .map(|p| {
            p.resource
                .get("service.instance.id")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids.first().expect("one id");
    let uuid = uuid::Uuid::parse_str(id).expect("service.instance.id is a UUID");
    assert_eq!(uuid.get_version_num(), 4, "{id}");
    for point in &points {
        assert_eq!(point.unit, "s");
        assert_eq!(point.service(), "simplebank-server");
        assert_eq!(point.attr("rpc.system.name"), Some("grpc"));
        let code = point.attr("rpc.response.status_code").expect("code");
        let server_fault = ["UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "UNKNOWN"].contains(&code)
            || code == "DEADLINE_EXCEEDED"
            || code == "DATA_LOSS";
        assert_eq!(
            point.attr("error.type"),
            server_fault.then_some(code),
            "{point:?}"
        );
        let text = format!("{:?}", point.attributes);
        assert!(
            !text.contains("nobody_") && !text.contains("bogus") && !text.contains("metrics_"),
            "no client-chosen text in attributes: {text}"
        );
    }
    drop(server);
}

/// Sign-ups while Redis is down wait in the outbox, and the gauge says how many; once Redis is
/// back the relay publishes them and the gauge reads 0.
#[tokio::test]
async fn the_outbox_backlog_gauge_follows_the_rows_waiting() {
    let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
    let mut redis_server = RedisServer::start().await;
    let redis = TestRedis::at(redis_server.address());
    let mut server = Server::start(&redis, port).await;
    let mut client = connect_when_up(&server.grpc).await;
    let backlog = |sink: &OtlpSink| -> Option<f64> {
        sink.metric_points()
            .into_iter()
            .rfind(|p| p.name == BACKLOG)
            .map(|p| p.value.number())
    };
    eventually("the backlog gauge reads 0", Duration::from_secs(30), || {
        let seen = backlog(&sink);
        async move { seen == Some(0.0) }
    })
    .await;

    redis_server.kill();
    for name in ["backlog_a", "backlog_b", "backlog_c"] {
        client
            .create_user(request(name, &format!("{name}@example.com")))
            .await
            .expect("sign-up works while Redis is down");
    }
    eventually("the backlog gauge reads 3", Duration::from_secs(30), || {
        let seen = backlog(&sink);
        async move { seen == Some(3.0) }
    })
    .await;
    let point = sink
        .metric_points()
        .into_iter()
        .rfind(|p| p.name == BACKLOG)
        .expect("a point");
    assert_eq!(point.unit, "{task}");
    assert!(point.attributes.is_empty(), "{point:?}");

    redis_server.restart().await;
    eventually(
        "the relay published them and the gauge reads 0",
        Duration::from_secs(30),
        || {
            let seen = backlog(&sink);
            async move { seen == Some(0.0) }
        },
    )
    .await;
    stop_gracefully(&mut server.child).await;
}

/// `service`'s status from the public health service, or `None` when the call fails.
async fn health(channel: &Channel, service: &str) -> Option<ServingStatus> {
    let reply = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

/// A hung PostgreSQL (SIGSTOP: connections open, nothing answers) leaves the backlog gauge out
/// of the exports while it lasts (each count gives up after `COUNT_TIMEOUT`), and holds up
/// neither the other metrics nor the server: exports keep coming with the RPC histogram's new
/// samples, the health service and the admin API (Redis only) answer. Once PostgreSQL goes on,
/// the gauge is back.
#[tokio::test]
async fn a_hung_postgres_leaves_the_backlog_gauge_out_and_holds_up_nothing_else() {
    let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
    // Its own PostgreSQL (the one stopped) and its own Redis.
    let postgres = PostgresServer::start(PG_PASSWORD);
    let redis_server = RedisServer::start().await;
    let redis = TestRedis::at(redis_server.address());
    let db_url = format!(
        "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
        postgres.port
    );
    let mut server = Server::start_on(&db_url, None, &redis, port).await;
    let public = server.channel().await;
    let admin = connect(&server.admin).await;
    let gauge_points = |sink: &OtlpSink| -> Vec<f64> {
        sink.metric_points()
            .into_iter()
            .filter(|p| p.name == BACKLOG)
            .map(|p| p.value.number())
            .collect()
    };
    eventually("the backlog gauge reads 0", Duration::from_secs(30), || {
        let last = gauge_points(&sink).last().copied();
        async move { last == Some(0.0) }
    })
    .await;
    eventually("the server is SERVING", Duration::from_secs(30), || {
        let public = public.clone();
        async move { health(&public, "").await == Some(ServingStatus::Serving) }
    })
    .await;

    let paused = postgres.pause();
    // Postmaster, its background workers and the server's open connections' backends.
    assert!(paused.processes() > 2, "{} processes", paused.processes());
    // A collection under way when PostgreSQL stopped may still carry a count; each export
    // after the next one was collected with PostgreSQL stopped (the SDK collects and exports
    // in turn on one thread).
    let exports = sink.metric_exports();
    eventually(
        "two exports after PostgreSQL stopped",
        Duration::from_secs(30),
        || {
            let now = sink.metric_exports();
            async move { now >= exports + 2 }
        },
    )
    .await;
    let gauges_before = gauge_points(&sink).len();
    let exports = sink.metric_exports();

    // The server answers what needs no PostgreSQL, and its health says PostgreSQL is not
    // answering (its check's deadline), while Redis is.
    let calls = 5;
    for _ in 0..calls {
        assert_eq!(call_path(&admin, LIST_QUEUES_PATH).await, Code::Ok);
    }
    assert_eq!(
        health(&public, REDIS_SERVICE).await,
        Some(ServingStatus::Serving)
    );
    eventually(
        "health reports PostgreSQL hung: NOT_SERVING",
        Duration::from_secs(30),
        || {
            let public = public.clone();
            async move { health(&public, "").await == Some(ServingStatus::NotServing) }
        },
    )
    .await;
    // Exports go on, with the histogram's samples of the calls made while PostgreSQL is hung.
    eventually(
        "exports go on with the calls made meanwhile",
        Duration::from_secs(30),
        || {
            let (now, counts) = (sink.metric_exports(), samples(&sink));
            async move { now >= exports + 3 && count(&counts, LIST_QUEUES, "OK") == calls }
        },
    )
    .await;
    let gauges = gauge_points(&sink);
    assert_eq!(
        gauges.len(),
        gauges_before,
        "no backlog gauge point while PostgreSQL is hung: {gauges:?}\n{}",
        server.log()
    );

    drop(paused);
    eventually(
        "the backlog gauge is reported again",
        Duration::from_secs(30),
        || {
            let gauges = gauge_points(&sink);
            async move { gauges.len() > gauges_before && gauges.last() == Some(&0.0) }
        },
    )
    .await;
    eventually(
        "the server is SERVING again",
        Duration::from_secs(30),
        || {
            let public = public.clone();
            async move { health(&public, "").await == Some(ServingStatus::Serving) }
        },
    )
    .await;
    stop_gracefully(&mut server.child).await;
}
