//! The queue engine's metrics, exported over OTLP by real worker processes (`test_worker`, the
//! engine with a `test:job` handler that fails on request) to the suite's OTLP receiver.

use std::{collections::BTreeMap, time::Duration};

use simplebank_core::testing::{RedisServer, TestDb, TestRedis, eventually, sigterm};
use simplebank_observability::testing::{MetricPoint, OtlpSink};
use simplebank_queue::{QueueName, Task, TaskPayload};

use crate::helpers::{publisher, recorded_runs, spawn_test_worker, test_worker_binary, xadd_all};

/// The `test:job` payload of `test_worker`, with its `fail` flag.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Job {
    n: u32,
    fail: bool,
}

impl TaskPayload for Job {
    const TYPE: &'static str = "test:job";
}

const CONSUMED: &str = "messaging.client.consumed.messages";
const DURATION: &str = "messaging.process.duration";

/// `n` jobs, failing ones with one retry (two attempts, then dead).
fn jobs(range: std::ops::Range<u32>, fail: bool) -> Vec<Task> {
    range
        .map(|n| {
            let task = Task::new(&Job { n, fail }).expect("task");
            if fail { task.with_max_retry(1) } else { task }
        })
        .collect()
}

/// The environment of a `test_worker` exporting its metrics (only) every `interval_ms`.
fn exporting(port: u16, interval_ms: &str) -> Vec<(&'static str, String)> {
    vec![
        // test_worker sets telemetry up only when RUST_LOG is set.
        ("RUST_LOG", "warn".into()),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", interval_ms.into()),
        ("OTEL_SERVICE_NAME", "metrics-test-worker".into()),
        ("WORKER_CONCURRENCY", "50".into()),
        ("WORKER_RETRY_BASE_DELAY", "20ms".into()),
        ("WORKER_RETRY_MAX_DELAY", "50ms".into()),
    ]
}

fn start(redis: &TestRedis, name: &str, env: &[(&'static str, String)]) -> tokio::process::Child {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_test_worker(&redis.address, redis, name, &env)
}

/// Latest totals of `metric`, summed by outcome (counters: the count; histograms: samples).
fn by_outcome(sink: &OtlpSink, metric: &str) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for point in sink.latest(metric) {
        let outcome = point
            .attr("simplebank.task.outcome")
            .unwrap_or("")
            .to_owned();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = point.value.number() as u64;
        *totals.entry(outcome).or_insert(0) += value;
    }
    totals
}

fn expected(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn check_attributes(point: &MetricPoint) {
    assert_eq!(point.service(), "metrics-test-worker", "{point:?}");
    assert_eq!(point.attr("messaging.system"), Some("redis"), "{point:?}");
    assert_eq!(
        point.attr("messaging.operation.name"),
        Some("process"),
        "{point:?}"
    );
    assert_eq!(
        point.attr("messaging.consumer.group.name"),
        Some("workers"),
        "{point:?}"
    );
    assert_eq!(
        point.attr("messaging.destination.name"),
        Some("default"),
        "{point:?}"
    );
    assert_eq!(
        point.attr("simplebank.task.type"),
        Some("test:job"),
        "{point:?}"
    );
    let failed = point.attr("simplebank.task.outcome") != Some("success");
    assert_eq!(
        point.attr("error.type"),
        failed.then_some("handler_error"),
        "error.type only on failures: {point:?}"
    );
    let keys: Vec<&str> = point.attributes.keys().map(String::as_str).collect();
    assert!(
        keys.len() <= 7,
        "no task ids or other per-task attributes: {keys:?}"
    );
}

/// 1,000 tasks, 100 of them failing twice (one retry, then dead): the worker reports exactly
/// 900 successes, 100 retries and 100 dead, and one duration sample per attempt (1,100).
#[tokio::test]
async fn a_run_of_1000_tasks_with_100_failures_reports_those_counts() {
    let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
    let redis = TestRedis::new();
    let mut tasks = jobs(0..900, false);
    tasks.extend(jobs(900..1000, true));
    xadd_all(&redis, tasks).await;

    let mut worker = start(&redis, "metrics-1", &exporting(port, "200"));
    let want = expected(&[("dead", 100), ("retry", 100), ("success", 900)]);
    eventually(
        "the exported counts reach 900 / 100 / 100",
        Duration::from_secs(90),
        || {
            let seen = by_outcome(&sink, CONSUMED);
            let want = want.clone();
            async move { seen == want }
        },
    )
    .await;
    let exit = sigterm(&mut worker, Duration::from_secs(15))
        .await
        .expect("the worker stops");
    assert!(exit.success(), "{exit:?}");

    // After the last export (the shutdown flush), nothing more than the known attempts.
    assert_eq!(by_outcome(&sink, CONSUMED), want);
    assert_eq!(
        by_outcome(&sink, DURATION),
        want,
        "one duration sample per attempt"
    );
    let runs: u64 = recorded_runs(&redis).await.values().sum();
    assert_eq!(runs, 1100, "the handler ran once per attempt");
    for point in sink.latest(CONSUMED).iter().chain(&sink.latest(DURATION)) {
        check_attributes(point);
    }
    let duration = sink.latest(DURATION);
    assert!(duration.iter().all(|p| p.unit == "s"), "{duration:?}");
    let consumed = sink.latest(CONSUMED);
    assert!(
        consumed.iter().all(|p| p.unit == "{message}"),
        "{consumed:?}"
    );
}

/// With an interval far longer than the run, the counts still arrive: the worker's shutdown
/// flushes what was recorded since the last export.
#[tokio::test]
async fn shutdown_flushes_the_metrics_recorded_since_the_last_export() {
    let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
    let redis = TestRedis::new();
    xadd_all(&redis, jobs(0..20, false)).await;
    let mut worker = start(&redis, "metrics-flush", &exporting(port, "600000"));
    eventually("20 jobs ran", Duration::from_secs(30), || {
        let redis = &redis;
        async move { recorded_runs(redis).await.len() == 20 }
    })
    .await;
    assert_eq!(sink.metric_exports(), 0, "no periodic export yet");
    let exit = sigterm(&mut worker, Duration::from_secs(15))
        .await
        .expect("the worker stops");
    assert!(exit.success(), "{exit:?}");
    assert_eq!(
        by_outcome(&sink, CONSUMED),
        expected(&[("success", 20)]),
        "flushed at shutdown"
    );
}

/// Metrics and traces are switched on separately: with only a traces endpoint the worker
/// exports spans and never a metric (and works); with only a metrics endpoint, the reverse;
/// with the common endpoint and `OTEL_METRICS_EXPORTER=none` (a traces-only collector such as
/// Jaeger), spans only.
#[tokio::test]
async fn metrics_are_off_without_an_endpoint_for_them_or_with_exporter_none() {
    for (endpoint, exporter, spans_expected) in [
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", true),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "", false),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "none", true),
    ] {
        let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
        let redis = TestRedis::new();
        xadd_all(&redis, jobs(0..5, false)).await;
        let env = vec![
            ("RUST_LOG", "info".to_owned()),
            (endpoint, format!("http://127.0.0.1:{port}")),
            ("OTEL_METRICS_EXPORTER", exporter.to_owned()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ];
        let mut worker = start(&redis, "metrics-off", &env);
        eventually("5 jobs ran", Duration::from_secs(30), || {
            let redis = &redis;
            async move { recorded_runs(redis).await.len() == 5 }
        })
        .await;
        let exit = sigterm(&mut worker, Duration::from_secs(15))
            .await
            .expect("the worker stops");
        assert!(exit.success(), "{endpoint}: {exit:?}");
        assert_eq!(sink.count() > 0, spans_expected, "{endpoint}: spans");
        assert_eq!(
            sink.metric_exports() > 0,
            !spans_expected,
            "{endpoint} {exporter}: metric exports"
        );
    }
}

/// With any directive at TRACE the OpenTelemetry layer takes every crate's spans down to TRACE,
/// tonic's and h2's in the export threads too: exported, each export's spans made the next
/// export, for ever (an idle worker sent about 150 spans a second). The export threads run with
/// telemetry suppressed: only the tasks' spans are exported.
#[tokio::test]
async fn the_exports_own_work_is_not_exported_at_trace_level() {
    let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
    let redis = TestRedis::new();
    xadd_all(&redis, jobs(0..3, false)).await;
    let env = vec![
        (
            "RUST_LOG",
            "warn,h2=trace,tonic=trace,hyper=trace,tower=trace".to_owned(),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
    ];
    let mut worker = start(&redis, "trace-level", &env);
    eventually("the 3 jobs' spans", Duration::from_secs(30), || {
        let sink = &sink;
        async move { sink.count() >= 3 }
    })
    .await;
    // Idle for a while: some twenty schedules, each of which exported the last one's spans.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let exit = sigterm(&mut worker, Duration::from_secs(15))
        .await
        .expect("the worker stops");
    assert!(exit.success(), "{exit:?}");
    let names: Vec<String> = sink
        .spans()
        .into_iter()
        .map(|(_, span)| span.name)
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names.iter().all(|name| name.starts_with("process ")),
        "{names:?}"
    );
}

/// A worker whose collector takes the connection and never answers: at exit its last flush
/// runs out of time, and before the process ends it says how many spans were left unsent (the
/// flush is given less than the two seconds the exit waits for it, so that the warning is
/// written: with both at two seconds it was missing from some exits).
#[tokio::test]
async fn an_exit_whose_collector_hangs_says_how_many_spans_it_left() {
    // Bound and never accepted from: connections complete in the kernel's backlog, and no
    // byte is ever answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = silent.local_addr().expect("address").port();
    let redis = TestRedis::new();
    xadd_all(&redis, jobs(0..3, false)).await;
    let mut worker = tokio::process::Command::new(test_worker_binary())
        .env("REDIS_ADDRESS", &redis.address)
        .env("REDIS_NAMESPACE", redis.namespace.as_str())
        .env("WORKER_CONSUMER_NAME", "silent-collector")
        .env("RUST_LOG", "warn")
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        // Nothing is sent before the exit: its flush has the three spans to send.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start test_worker");
    eventually("the 3 jobs ran", Duration::from_secs(30), || {
        let redis = &redis;
        async move { recorded_runs(redis).await.len() == 3 }
    })
    .await;
    let exit = sigterm(&mut worker, Duration::from_secs(15))
        .await
        .expect("the worker stops");
    assert!(exit.success(), "{exit:?}");
    let mut log = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut worker.stderr.take().expect("stderr"), &mut log)
        .await
        .expect("the worker's log");
    let line = log
        .lines()
        .find(|line| line.contains("spans not exported at exit"))
        .unwrap_or_else(|| panic!("no warning of the spans left: {log}"));
    assert!(line.contains("spans=3"), "{line}");
    assert!(line.contains("ran out of time"), "{line}");
    drop(silent);
}

/// A type no worker handles: dead-lettered on arrival.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Unknown;

impl TaskPayload for Unknown {
    const TYPE: &'static str = "test:unknown";
}

const DEPTH: &str = "simplebank.queue.depth";
const OLDEST_AGE: &str = "simplebank.queue.oldest_age";

/// The resource attribute that tells the tests' worker processes apart (`test.worker`): not
/// `service.instance.id`, which each process makes for itself.
const TEST_WORKER: &str = "test.worker";

/// A `simplebank-worker` process exporting metrics every 200 ms, labelled `instance` by a
/// resource attribute of the test's.
fn start_binary(
    db: &TestDb,
    redis: &TestRedis,
    port: u16,
    instance: &str,
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_simplebank-worker"))
        .env("DB_SOURCE", db.url.expose())
        .env("REDIS_ADDRESS", &redis.address)
        .env("REDIS_NAMESPACE", redis.namespace.as_str())
        .env("WORKER_CONSUMER_NAME", instance)
        .env("WORKER_QUEUES", "critical:6,default:3,low:1")
        .env("RUST_LOG", "warn")
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("{TEST_WORKER}={instance}"),
        )
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker")
}

/// The instances that sent any queue gauge point so far.
fn reporters(sink: &OtlpSink) -> std::collections::BTreeSet<String> {
    sink.metric_points()
        .into_iter()
        .filter(|p| p.name == DEPTH || p.name == OLDEST_AGE)
        .filter_map(|p| p.resource.get(TEST_WORKER).cloned())
        .collect()
}

/// The `service.instance.id` of every point from the worker labelled `instance`.
fn instance_ids(sink: &OtlpSink, instance: &str) -> std::collections::BTreeSet<String> {
    sink.metric_points()
        .into_iter()
        .filter(|p| p.resource.get(TEST_WORKER).map(String::as_str) == Some(instance))
        .map(|p| {
            p.resource
                .get("service.instance.id")
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// The latest depth of `queue` in `state`, from `instance`.
fn depth(sink: &OtlpSink, instance: &str, queue: &str, state: &str) -> Option<f64> {
    sink.latest(DEPTH)
        .into_iter()
        .find(|p| {
            p.resource.get(TEST_WORKER).map(String::as_str) == Some(instance)
                && p.attr("messaging.destination.name") == Some(queue)
                && p.attr("simplebank.queue.state") == Some(state)
        })
        .map(|p| p.value.number())
}

/// Two real workers run; exactly one of them reads and exports the queue gauges, with the
/// known mix (pending in a queue nobody serves, scheduled, dead); when it stops, the other
/// takes over. Each exports under a `service.instance.id` of its own (a UUID v4) though
/// nothing sets one: otherwise a backend sees one series jumping between two processes'
/// counts.
#[tokio::test]
async fn the_queue_gauges_are_exported_by_one_worker_of_two() {
    let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let keys = redis.keys();
    // A queue in the registry that these workers do not serve: its tasks stay pending.
    let parked = QueueName::parse("parked").expect("queue");
    let _: () = redis::cmd("HSET")
        .arg(keys.queues())
        .arg(parked.as_str())
        .arg(1)
        .query_async(&mut redis.conn().await)
        .await
        .expect("HSET registry");
    let publisher = publisher(&redis);
    for n in 0..7 {
        let task = Task::new(&Job { n, fail: false }).expect("task");
        publisher
            .publish(&task.with_queue(parked.clone()))
            .await
            .expect("publish parked");
    }
    for n in 0..4 {
        let task = Task::new(&Job { n, fail: false }).expect("task");
        publisher
            .publish(&task.with_process_in(Duration::from_secs(3600)))
            .await
            .expect("publish scheduled");
    }
    for _ in 0..3 {
        publisher
            .publish(&Task::new(&Unknown).expect("task"))
            .await
            .expect("publish unknown");
    }

    let mut first = start_binary(&db, &redis, port, "w1");
    let mut second = start_binary(&db, &redis, port, "w2");
    let mut leader = String::new();
    eventually(
        "one worker exports the known mix",
        Duration::from_secs(60),
        || {
            let found = ["w1", "w2"].into_iter().find(|w| {
                depth(&sink, w, "parked", "pending") == Some(7.0)
                    && depth(&sink, w, "default", "scheduled") == Some(4.0)
                    && depth(&sink, w, "default", "dead") == Some(3.0)
            });
            if let Some(w) = found {
                leader = w.to_owned();
            }
            async move { found.is_some() }
        },
    )
    .await;
    // Let several more exports of both processes arrive.
    let exports = sink.metric_exports();
    eventually("more exports", Duration::from_secs(30), || {
        let now = sink.metric_exports();
        async move { now >= exports + 10 }
    })
    .await;
    assert_eq!(
        reporters(&sink).into_iter().collect::<Vec<_>>(),
        [leader.clone()],
        "only the leader reports the queue gauges"
    );
    let ages: Vec<MetricPoint> = sink
        .latest(OLDEST_AGE)
        .into_iter()
        .filter(|p| p.attr("messaging.destination.name") == Some("parked"))
        .collect();
    assert!(
        ages.iter().all(|p| p.unit == "s" && p.value.number() > 0.0),
        "{ages:?}"
    );
    // The unknown type's tasks were dead on arrival, counted under `_OTHER`, not their type.
    let unknown: Vec<MetricPoint> = sink
        .latest(CONSUMED)
        .into_iter()
        .filter(|p| p.attr("error.type") == Some("unknown_type"))
        .collect();
    let dead: f64 = unknown.iter().map(|p| p.value.number()).sum();
    assert_eq!(dead, 3.0, "{unknown:?}");
    for point in &unknown {
        assert_eq!(
            point.attr("simplebank.task.type"),
            Some("_OTHER"),
            "{point:?}"
        );
        assert_eq!(
            point.attr("simplebank.task.outcome"),
            Some("dead"),
            "{point:?}"
        );
    }
    for point in sink.latest(DEPTH) {
        assert_eq!(point.unit, "{task}");
        assert_eq!(point.service(), "simplebank-worker");
        assert_eq!(point.attributes.len(), 2, "{point:?}");
    }

    // The leader stops (and lets the lock go): the other one takes over.
    let (stopping, other) = if leader == "w1" {
        (&mut first, "w2")
    } else {
        (&mut second, "w1")
    };
    let exit = sigterm(stopping, Duration::from_secs(15))
        .await
        .expect("the leader stops");
    assert!(exit.success(), "{exit:?}");
    eventually(
        "the other worker reports the gauges",
        Duration::from_secs(30),
        || {
            let seen = depth(&sink, other, "parked", "pending");
            async move { seen == Some(7.0) }
        },
    )
    .await;
    for child in [&mut first, &mut second] {
        let _ = sigterm(child, Duration::from_secs(15)).await;
    }
    // Both have exported by now (the gauges, each in turn).
    let ids: Vec<String> = ["w1", "w2"]
        .into_iter()
        .flat_map(|w| {
            let ids = instance_ids(&sink, w);
            assert_eq!(
                ids.len(),
                1,
                "one service.instance.id per process: {w} {ids:?}"
            );
            ids
        })
        .collect();
    assert_ne!(
        ids[0], ids[1],
        "each process has its own service.instance.id"
    );
    for id in &ids {
        let uuid = uuid::Uuid::parse_str(id).expect("service.instance.id is a UUID");
        assert_eq!(uuid.get_version_num(), 4, "{id}");
    }
}

/// The metric points of a worker with `env` on top of exporting every 100 ms, which
/// processed three tasks and stopped on SIGTERM.
async fn points_of_three_tasks(
    name: &str,
    env: impl FnOnce(&mut Vec<(&'static str, String)>),
) -> Vec<MetricPoint> {
    let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
    let redis = TestRedis::new();
    xadd_all(&redis, jobs(0..3, false)).await;
    let mut vars = exporting(port, "100");
    env(&mut vars);
    let mut worker = start(&redis, name, &vars);
    eventually("3 successes are exported", Duration::from_secs(30), || {
        let seen = by_outcome(&sink, CONSUMED) == expected(&[("success", 3)]);
        async move { seen }
    })
    .await;
    let exit = sigterm(&mut worker, Duration::from_secs(15))
        .await
        .expect("the worker stops");
    assert!(exit.success(), "{exit:?}");
    let points = sink.metric_points();
    assert!(!points.is_empty());
    points
}

/// A `service.instance.id` set in `OTEL_RESOURCE_ATTRIBUTES` is the one exported, on every
/// point, instead of the worker's own.
#[tokio::test]
async fn a_service_instance_id_and_name_set_by_the_environment_are_kept() {
    let points = points_of_three_tasks("metrics-instance", |env| {
        // The name from OTEL_RESOURCE_ATTRIBUTES alone (no OTEL_SERVICE_NAME) beats the default.
        env.retain(|(name, _)| *name != "OTEL_SERVICE_NAME");
        env.push((
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.instance.id=worker-7,service.name=metrics-by-attributes,\
             deployment.environment.name=test"
                .into(),
        ));
    })
    .await;
    for point in &points {
        assert_eq!(
            point
                .resource
                .get("service.instance.id")
                .map(String::as_str),
            Some("worker-7"),
            "{point:?}"
        );
        assert_eq!(point.service(), "metrics-by-attributes", "{point:?}");
    }
}

/// `OTEL_SERVICE_NAME` wins over a `service.name` in `OTEL_RESOURCE_ATTRIBUTES` (the
/// OpenTelemetry specification and README's table), though the SDK's environment detector
/// runs last. (Found by an outside attack: its `service.name` replaced OTEL_SERVICE_NAME's.)
#[tokio::test]
async fn otel_service_name_wins_over_a_name_in_the_resource_attributes() {
    let points = points_of_three_tasks("metrics-name-precedence", |env| {
        env.push((
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=metrics-by-attributes".into(),
        ));
    })
    .await;
    for point in &points {
        assert_eq!(point.service(), "metrics-test-worker", "{point:?}");
    }
}

fn now_unix_nanos() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos(),
    )
    .expect("fits")
}

/// The time of the newest queue gauge point received, if any.
fn newest_gauge(sink: &OtlpSink) -> Option<u64> {
    sink.metric_points()
        .into_iter()
        .filter(|p| p.name == DEPTH)
        .map(|p| p.time_unix_nano)
        .max()
}

/// A hung Redis (SIGSTOP) does not stop the worker's exports: the queue gauges, which cannot
/// be read, are left out (never a stale number) while the counts go on being exported, and
/// the gauges come back when Redis does.
#[tokio::test]
async fn with_redis_hung_the_queue_gauges_are_left_out_and_come_back() {
    let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
    let server = RedisServer::start().await;
    let redis = TestRedis::at(server.address());
    // A few tasks first: their (cumulative) counts are in every export from then on, and an
    // export with nothing in it is not sent at all.
    xadd_all(&redis, jobs(0..3, false)).await;
    let mut worker = start(&redis, "metrics-hung", &exporting(port, "200"));
    eventually(
        "the gauges and the counts are exported",
        Duration::from_secs(30),
        || {
            let seen = newest_gauge(&sink).is_some()
                && by_outcome(&sink, CONSUMED) == expected(&[("success", 3)]);
            async move { seen }
        },
    )
    .await;

    server.pause();
    let paused_at = now_unix_nanos();
    let exports = sink.metric_exports();
    // Some exports after the snapshot went stale (two intervals), none with a gauge point.
    eventually(
        "exports go on without the gauges",
        Duration::from_secs(30),
        || {
            let fresh_after_pause =
                newest_gauge(&sink).is_some_and(|t| t > paused_at + 2_000_000_000);
            let now = sink.metric_exports();
            async move { !fresh_after_pause && now >= exports + 15 }
        },
    )
    .await;
    let newest = newest_gauge(&sink).expect("points before the pause");
    assert!(
        newest < paused_at + 1_500_000_000,
        "no gauge point once the snapshot is stale: newest {} ms after the pause",
        (newest.saturating_sub(paused_at)) / 1_000_000
    );

    server.resume();
    let resumed_at = now_unix_nanos();
    eventually("the gauges come back", Duration::from_secs(30), || {
        let back = newest_gauge(&sink).is_some_and(|t| t > resumed_at);
        async move { back }
    })
    .await;
    let exit = sigterm(&mut worker, Duration::from_secs(15))
        .await
        .expect("the worker stops");
    assert!(exit.success(), "{exit:?}");
}

/// Dead letters trimmed by `DEAD_LETTER_MAX` are counted, by queue and reason.
#[tokio::test]
async fn dead_letters_trimmed_by_the_maximum_are_counted() {
    let (sink, port) = OtlpSink::start(true).await.expect("OTLP receiver");
    let redis = TestRedis::new();
    let tasks: Vec<Task> = (0..8)
        .map(|n| {
            Task::new(&Job { n, fail: true })
                .expect("task")
                .with_max_retry(0)
        })
        .collect();
    xadd_all(&redis, tasks).await;
    let mut env = exporting(port, "200");
    env.push(("DEAD_LETTER_MAX", "5".into()));
    let mut worker = start(&redis, "metrics-trim", &env);
    let trimmed =
        |sink: &OtlpSink| -> Vec<MetricPoint> { sink.latest("simplebank.queue.dead.trimmed") };
    eventually(
        "3 letters trimmed are counted",
        Duration::from_secs(60),
        || {
            let total: f64 = trimmed(&sink).iter().map(|p| p.value.number()).sum();
            async move { total >= 3.0 }
        },
    )
    .await;
    let exit = sigterm(&mut worker, Duration::from_secs(15))
        .await
        .expect("the worker stops");
    assert!(exit.success(), "{exit:?}");
    let points = trimmed(&sink);
    let total: f64 = points.iter().map(|p| p.value.number()).sum();
    assert_eq!(total, 3.0, "{points:?}");
    for point in &points {
        assert_eq!(point.attr("messaging.destination.name"), Some("default"));
        assert_eq!(point.attr("simplebank.trim.reason"), Some("max_len"));
        assert_eq!(point.unit, "{message}");
    }
    assert_eq!(by_outcome(&sink, CONSUMED), expected(&[("dead", 8)]));
}
