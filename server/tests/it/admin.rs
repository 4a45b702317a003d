//! The admin service (issue 14) through the real server binary and the real grpcurl: its own
//! listener and token, the queue counts, requeue, cancel, paging while tasks move, pause with a
//! real worker, malformed input, and Redis hanging.

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use simplebank_core::testing::{
    RedisServer, TestDb, TestRedis, eventually, free_port, stop_gracefully,
};
use simplebank_queue::{
    Backoff, ConsumerSettings, HandlerError, Handlers, Publisher, QueueName, Task, TaskContext,
    TaskPayload, Worker, connection,
};
use tokio_util::sync::CancellationToken;

use crate::e2e::{run_grpcurl, server_command};

/// A token of the accepted form.
const TOKEN: &str = "admin-test-token-0123456789abcdefghijklmnop";

/// The queue the tests fill.
const QUEUE: &str = "mix";

const ADMIN: &str = "simplebank.admin.v1.QueueAdmin";

/// A task the test worker runs as its `action` says.
#[derive(serde::Serialize, serde::Deserialize)]
struct Job {
    action: String,
}

impl TaskPayload for Job {
    const TYPE: &'static str = "test:admin_job";
    const QUEUE: &'static str = QUEUE;
}

/// A task whose payload must never be shown.
#[derive(serde::Serialize, serde::Deserialize)]
struct Secret {
    token: String,
}

impl TaskPayload for Secret {
    const TYPE: &'static str = "test:admin_secret";
    const QUEUE: &'static str = QUEUE;
    const SENSITIVE: bool = true;
}

/// The server binary with its admin listener on a port of its own.
struct AdminServer {
    admin: String,
    child: tokio::process::Child,
}

impl AdminServer {
    async fn start(db: &TestDb, redis: &TestRedis, extra: &[(&str, &str)]) -> Self {
        let public = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let mut command = server_command(db, redis, &public);
        command
            .env("ADMIN_GRPC_ADDRESS", &admin)
            .env("ADMIN_TOKEN", TOKEN);
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command.spawn().expect("start simplebank-server");
        let server = Self { admin, child };
        let target = server.admin.clone();
        eventually(
            "the admin listener answers health",
            Duration::from_secs(30),
            move || {
                let target = target.clone();
                async move {
                    let header = format!("authorization: bearer {TOKEN}");
                    let (ok, text) = run_grpcurl(&[
                        "-plaintext",
                        "-H",
                        &header,
                        &target,
                        "grpc.health.v1.Health/Check",
                    ]);
                    ok && text.contains("SERVING")
                }
            },
        )
        .await;
        server
    }

    /// `method` of QueueAdmin with `body`, with the right token.
    fn call(&self, method: &str, body: &str) -> (bool, String) {
        self.call_with(Some(TOKEN), method, body)
    }

    fn call_with(&self, token: Option<&str>, method: &str, body: &str) -> (bool, String) {
        let header = token.map(|token| format!("authorization: bearer {token}"));
        let mut args = vec!["-plaintext", "-d", body];
        if let Some(header) = &header {
            args.extend(["-H", header.as_str()]);
        }
        let method = format!("{ADMIN}/{method}");
        args.extend([self.admin.as_str(), method.as_str()]);
        run_grpcurl(&args)
    }

    fn ok(&self, method: &str, body: &str) -> Value {
        let (ok, text) = self.call(method, body);
        assert!(ok, "{method} {body}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method}: {e}: {text}"))
    }

    /// The code of a call that must fail, and what grpcurl printed.
    fn err(&self, method: &str, body: &str) -> (String, String) {
        let (ok, text) = self.call(method, body);
        assert!(!ok, "{method} {body} succeeded: {text}");
        (code_of(&text), text)
    }

    fn queue(&self, name: &str) -> Value {
        let queues = self.ok("ListQueues", "{}");
        queues["queues"]
            .as_array()
            .and_then(|queues| queues.iter().find(|q| q["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {queues}"))
    }

    async fn stop(mut self) {
        stop_gracefully(&mut self.child).await;
    }
}

fn code_of(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Code:"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A count of grpcurl's JSON (uint64 prints as a string; zero is left out).
fn count(json: &Value, name: &str) -> u64 {
    match &json[name] {
        Value::String(text) => text.parse().expect("a number"),
        Value::Number(n) => n.as_u64().expect("a count"),
        Value::Null => 0,
        other => panic!("{name}: {other}"),
    }
}

fn queue_name() -> QueueName {
    QueueName::parse(QUEUE).expect("queue name")
}

/// The test worker's second queue, never paused: it shows the worker is reading.
fn other() -> QueueName {
    QueueName::parse("other").expect("queue name")
}

async fn publisher(redis: &TestRedis) -> Publisher {
    let conn = connection::lazy_manager(redis.client(), connection::RESPONSE_TIMEOUT)
        .expect("connection manager");
    Publisher::new(conn, redis.keys())
}

async fn publish(publisher: &Publisher, action: &str, delay: Option<Duration>) -> String {
    publish_to(publisher, queue_name(), action, delay).await
}

async fn publish_to(
    publisher: &Publisher,
    queue: QueueName,
    action: &str,
    delay: Option<Duration>,
) -> String {
    let mut task = Task::new(&Job {
        action: action.into(),
    })
    .expect("task")
    .with_queue(queue);
    if let Some(delay) = delay {
        task = task.with_process_in(delay);
    }
    let id = task.id().to_owned();
    publisher.publish(&task).await.expect("publish");
    id
}

/// A worker on [`QUEUE`] (weight 2): `ok` succeeds, `retry` fails with a backoff of an hour,
/// `dead` refuses (straight to the dead letters), `hold` runs until the worker stops.
struct TestWorker {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    done: Arc<AtomicUsize>,
    name: String,
}

impl TestWorker {
    fn start(redis: &TestRedis) -> Self {
        let done = Arc::new(AtomicUsize::new(0));
        let counter = done.clone();
        let handlers = Handlers::new().on(move |job: Job, _cx: TaskContext| {
            let counter = counter.clone();
            async move {
                match job.action.as_str() {
                    "retry" => Err(HandlerError::new(std::io::Error::other("try later"))),
                    "dead" => Err(HandlerError::skip_retry(std::io::Error::other("refused"))),
                    // Never ends: at shutdown the worker gives up on it after its shutdown
                    // timeout and leaves it pending in the group (active).
                    "hold" => std::future::pending().await,
                    _ => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }
            }
        });
        let name = format!("admin-test-{}", std::process::id());
        let mut settings = ConsumerSettings::new(name.clone());
        settings.queues = vec![(queue_name(), 2), (other(), 1)];
        settings.block = Duration::from_millis(100);
        settings.shutdown_timeout = Duration::from_millis(200);
        settings.backoff = Backoff {
            base: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
        };
        let worker = Worker::new(&redis.address, redis.namespace.clone(), settings, handlers)
            .expect("worker");
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            worker.run(token).await.expect("worker runs");
        });
        Self {
            stop,
            handle,
            done,
            name,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

#[tokio::test]
async fn the_admin_listener_is_its_own_and_refuses_a_missing_or_wrong_token() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let logs = simplebank_core::testing::TempDir::new();
    let log = std::fs::File::create(logs.0.join("server.log")).expect("log file");
    let public = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut child = server_command(&db, &redis, &public)
        .env("ADMIN_GRPC_ADDRESS", &admin)
        .env("ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start simplebank-server");
    let right = format!("authorization: bearer {TOKEN}");
    let target = admin.clone();
    let header = right.clone();
    eventually(
        "the admin listener answers",
        Duration::from_secs(30),
        move || {
            let (target, header) = (target.clone(), header.clone());
            async move { run_grpcurl(&["-plaintext", "-H", &header, &target, "list"]).0 }
        },
    )
    .await;

    // With the token: reflection lists the admin service, health answers, calls work.
    let (ok, services) = run_grpcurl(&["-plaintext", "-H", &right, &admin, "list"]);
    assert!(ok, "{services}");
    assert!(services.lines().any(|l| l == ADMIN), "{services}");
    assert!(!services.contains("simplebank.v1.SimpleBank"), "{services}");
    let (ok, text) = run_grpcurl(&[
        "-plaintext",
        "-H",
        &right,
        &admin,
        &format!("{ADMIN}/ListQueues"),
    ]);
    assert!(ok, "{text}");

    // Without it, or with a wrong one, every call (reflection and health too) is refused,
    // with one message.
    let wrong = format!("authorization: bearer {}x", &TOKEN[..TOKEN.len() - 1]);
    let mut messages = Vec::new();
    for header in [
        None,
        Some(wrong.as_str()),
        Some("authorization: basic x"),
        Some("authorization: bearer"),
    ] {
        for call in [vec!["list"], vec!["grpc.health.v1.Health/Check"], vec![]] {
            let mut args = vec!["-plaintext"];
            if let Some(header) = header {
                args.extend(["-H", header]);
            }
            let list_queues = format!("{ADMIN}/ListQueues");
            // Without reflection: the proto file tells grpcurl the method.
            let proto_args;
            let call: Vec<&str> = if call.is_empty() {
                proto_args = [
                    "-import-path",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../proto"),
                    "-proto",
                    "simplebank/admin/v1/queue_admin.proto",
                ];
                args.extend(proto_args);
                vec![&admin, &list_queues]
            } else {
                let mut call = call;
                call.insert(0, &admin);
                call
            };
            args.extend(call);
            let (ok, text) = run_grpcurl(&args);
            assert!(!ok, "{header:?} {args:?}: {text}");
            assert!(
                text.contains("Unauthenticated") || text.contains("Code: Unauthenticated"),
                "{header:?} {args:?}: {text}"
            );
            messages.push(
                text.lines()
                    .find(|l| l.contains("admin token"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            );
        }
    }
    assert!(
        messages
            .iter()
            .all(|m| m.contains("missing or invalid admin token")),
        "{messages:?}"
    );

    // The public listener never serves the admin service: not in its reflection, and a call
    // with the admin proto is UNIMPLEMENTED there, token or not.
    let (ok, services) = run_grpcurl(&["-plaintext", &public, "list"]);
    assert!(ok, "{services}");
    assert!(!services.contains("admin"), "{services}");
    let (ok, text) = run_grpcurl(&[
        "-plaintext",
        "-H",
        &right,
        "-import-path",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../proto"),
        "-proto",
        "simplebank/admin/v1/queue_admin.proto",
        &public,
        &format!("{ADMIN}/ListQueues"),
    ]);
    assert!(!ok && text.contains("Unimplemented"), "{text}");

    stop_gracefully(&mut child).await;
    let log = std::fs::read_to_string(logs.0.join("server.log")).expect("server log");
    assert!(log.contains("start admin gRPC server"), "{log}");
    assert!(!log.contains(TOKEN), "the token is in the log");
    assert!(
        !log.contains(&TOKEN[..20]),
        "part of the token is in the log"
    );
}

#[tokio::test]
async fn the_server_refuses_to_start_with_a_reachable_admin_address_without_a_token() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let port = free_port();
    let secret_looking = "tooshort-but-secret";
    for (env, named) in [
        (
            vec![("ADMIN_GRPC_ADDRESS", format!("0.0.0.0:{port}"))],
            vec!["ADMIN_GRPC_ADDRESS", "ADMIN_TOKEN"],
        ),
        (
            vec![("ADMIN_GRPC_ADDRESS", format!("[::]:{port}"))],
            vec!["ADMIN_GRPC_ADDRESS", "ADMIN_TOKEN"],
        ),
        (
            vec![("ADMIN_GRPC_ADDRESS", "admin.example:9091".into())],
            vec!["ADMIN_GRPC_ADDRESS"],
        ),
        (
            vec![("ADMIN_GRPC_ADDRESS", String::new())],
            vec!["ADMIN_GRPC_ADDRESS"],
        ),
        (
            vec![("ADMIN_TOKEN", secret_looking.into())],
            vec!["ADMIN_TOKEN"],
        ),
        (vec![("ADMIN_TOKEN", String::new())], vec!["ADMIN_TOKEN"]),
        (
            vec![("ADMIN_TOKEN", format!("{TOKEN}\u{7}"))],
            vec!["ADMIN_TOKEN"],
        ),
        (
            vec![("ADMIN_TOKEN", format!("{TOKEN}\u{202e}"))],
            vec!["ADMIN_TOKEN"],
        ),
    ] {
        let public = format!("127.0.0.1:{}", free_port());
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            server_command(&db, &redis, &public)
                .env_remove("ADMIN_GRPC_ADDRESS")
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stderr(Stdio::piped())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{env:?}: still running after 30 s"))
        .expect("run the server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
        for var in named {
            assert!(stderr.contains(var), "{env:?}: {stderr}");
        }
        assert!(
            !stderr.contains(secret_looking) && !stderr.contains(TOKEN),
            "{stderr}"
        );
    }
    // With a token, the same address starts (and `off` turns the listener off).
    let public = format!("127.0.0.1:{}", free_port());
    let mut child = server_command(&db, &redis, &public)
        .env("ADMIN_GRPC_ADDRESS", format!("0.0.0.0:{port}"))
        .env("ADMIN_TOKEN", TOKEN)
        .spawn()
        .expect("start simplebank-server");
    let header = format!("authorization: bearer {TOKEN}");
    let admin = format!("127.0.0.1:{port}");
    eventually(
        "the admin listener answers",
        Duration::from_secs(30),
        || {
            let (admin, header) = (admin.clone(), header.clone());
            async move { run_grpcurl(&["-plaintext", "-H", &header, &admin, "list"]).0 }
        },
    )
    .await;
    stop_gracefully(&mut child).await;
}

#[tokio::test]
async fn list_queues_counts_a_known_mix_of_pending_active_scheduled_retrying_and_dead_tasks() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let publisher = publisher(&redis).await;
    let worker = TestWorker::start(&redis);
    let server = AdminServer::start(&db, &redis, &[]).await;
    for _ in 0..3 {
        publish(&publisher, "ok", None).await;
    }
    for _ in 0..2 {
        publish(&publisher, "retry", None).await;
    }
    for _ in 0..4 {
        publish(&publisher, "dead", None).await;
    }
    publish(&publisher, "hold", None).await;
    eventually(
        "the worker settled what it could",
        Duration::from_secs(20),
        || async {
            let queue = server.queue(QUEUE);
            count(&queue, "retry") == 2
                && count(&queue, "dead") == 4
                && count(&queue, "active") == 1
        },
    )
    .await;
    assert_eq!(worker.done.load(Ordering::SeqCst), 3);

    // Workers list the test worker, holding the one task.
    let workers = server.ok("ListWorkers", "{}");
    let me = workers["workers"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["name"] == worker.name.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("{workers}"));
    assert_eq!(count(&me, "tasksHeld"), 1, "{me}");
    assert_eq!(me["queues"], serde_json::json!([QUEUE, "other"]), "{me}");

    // Stopped, the worker leaves its held task pending in the group (active), and what is
    // published now stays pending.
    let worker_name = worker.name.clone();
    worker.stop().await;
    for _ in 0..5 {
        publish(&publisher, "ok", None).await;
    }
    for _ in 0..3 {
        publish(&publisher, "ok", Some(Duration::from_secs(3600))).await;
    }
    let queue = server.queue(QUEUE);
    assert_eq!(count(&queue, "pending"), 5, "{queue}");
    assert_eq!(count(&queue, "active"), 1, "{queue}");
    assert_eq!(count(&queue, "scheduled"), 3, "{queue}");
    assert_eq!(count(&queue, "retry"), 2, "{queue}");
    assert_eq!(count(&queue, "dead"), 4, "{queue}");
    // Attempts finished: 3 successes, 2 failures to retry, 4 refusals (the held one runs on).
    assert_eq!(count(&queue, "processed"), 9, "{queue}");
    assert_eq!(count(&queue, "failed"), 6, "{queue}");
    assert_eq!(queue["weight"], 2, "{queue}");
    assert!(
        queue["paused"].is_null() || queue["paused"] == false,
        "{queue}"
    );
    assert!(queue["oldestPendingAge"].is_string(), "{queue}");

    // The active task names its worker.
    let active = server.ok(
        "ListTasks",
        &format!(r#"{{"queue":"{QUEUE}","state":"TASK_STATE_ACTIVE"}}"#),
    );
    assert_eq!(
        active["tasks"][0]["worker"],
        worker_name.as_str(),
        "{active}"
    );
    assert_eq!(count(&active["tasks"][0], "deliveries"), 1, "{active}");

    // Each state lists its tasks.
    for (state, expected) in [
        ("TASK_STATE_PENDING", 5),
        ("TASK_STATE_ACTIVE", 1),
        ("TASK_STATE_SCHEDULED", 3),
        ("TASK_STATE_RETRY", 2),
        ("TASK_STATE_DEAD", 4),
    ] {
        let page = server.ok(
            "ListTasks",
            &format!(r#"{{"queue":"{QUEUE}","state":"{state}"}}"#),
        );
        let tasks = page["tasks"].as_array().cloned().unwrap_or_default();
        assert_eq!(tasks.len(), expected, "{state}: {page}");
        assert!(tasks.iter().all(|t| t["state"] == state), "{page}");
        assert!(page["nextPageToken"].is_null(), "{page}");
    }
    let retry = server.ok(
        "ListTasks",
        &format!(r#"{{"queue":"{QUEUE}","state":"TASK_STATE_RETRY"}}"#),
    );
    let retrying = &retry["tasks"][0];
    assert!(
        retrying["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("try later")),
        "{retry}"
    );
    assert!(retrying["nextRunAt"].is_string(), "{retry}");
    server.stop().await;
}

#[tokio::test]
async fn get_task_shows_a_payload_only_when_the_task_is_not_sensitive() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let publisher = publisher(&redis).await;
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let traced = Task::new(&Job {
        action: "ok".into(),
    })
    .expect("task")
    .with_trace(simplebank_queue::trace::TraceContext {
        traceparent: Some(format!("00-{TRACE}-b7ad6b7169203331-01")),
        tracestate: None,
    });
    publisher.publish(&traced).await.expect("publish");
    let plain = traced.id().to_owned();
    // An explicit id holds a uniqueness lock until the task is done (or cancelled).
    let secret = Task::new(&Secret {
        token: "do-not-show-me".into(),
    })
    .expect("task")
    .with_task_id("report-42")
    .expect("task id")
    .with_process_in(Duration::from_secs(3600));
    publisher.publish(&secret).await.expect("publish");
    let server = AdminServer::start(&db, &redis, &[]).await;

    let shown = server.ok("GetTask", &format!(r#"{{"id":"{plain}"}}"#));
    assert_eq!(shown["task"]["state"], "TASK_STATE_PENDING", "{shown}");
    assert_eq!(shown["task"]["queue"], QUEUE, "{shown}");
    assert_eq!(shown["task"]["type"], "test:admin_job", "{shown}");
    assert_eq!(shown["task"]["traceId"], TRACE, "{shown}");
    assert_eq!(count(&shown["task"], "attempt"), 1, "{shown}");
    assert!(
        shown["task"]["payload"]
            .as_str()
            .is_some_and(|p| p.contains("\"ok\"")),
        "{shown}"
    );

    let hidden = server.ok(
        "GetTask",
        &format!(r#"{{"id":"{}","queue":"{QUEUE}"}}"#, secret.id()),
    );
    assert_eq!(hidden["task"]["state"], "TASK_STATE_SCHEDULED", "{hidden}");
    assert_eq!(hidden["task"]["payloadRedacted"], true, "{hidden}");
    let listed = server.ok(
        "ListTasks",
        &format!(r#"{{"queue":"{QUEUE}","state":"TASK_STATE_SCHEDULED"}}"#),
    );
    for text in [hidden.to_string(), listed.to_string()] {
        assert!(!text.contains("do-not-show-me"), "{text}");
    }

    // Unknown: NOT_FOUND; cancelling is idempotent.
    let (code, _) = server.err("GetTask", r#"{"id":"no-such-task"}"#);
    assert_eq!(code, "NotFound");
    let (code, _) = server.err(
        "ListTasks",
        r#"{"queue":"nosuchqueue","state":"TASK_STATE_PENDING"}"#,
    );
    assert_eq!(code, "NotFound");
    let body = format!(r#"{{"id":"{}"}}"#, secret.id());
    let first = server.ok("CancelScheduledTask", &body);
    assert_eq!(count(&first, "cancelled"), 1, "{first}");
    let again = server.ok("CancelScheduledTask", &body);
    assert_eq!(count(&again, "cancelled"), 0, "{again}");
    assert_eq!(server.err("GetTask", &body).0, "NotFound");
    // Its lock went with it: the id can be used again.
    let again = Task::new(&Secret {
        token: "again".into(),
    })
    .expect("task")
    .with_task_id("report-42")
    .expect("task id")
    .with_process_in(Duration::from_secs(3600));
    publisher
        .publish(&again)
        .await
        .expect("a cancelled task's id is free again");
    server.stop().await;
}

#[tokio::test]
async fn requeue_all_run_twice_at_once_moves_each_dead_task_exactly_once() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let publisher = publisher(&redis).await;
    let worker = TestWorker::start(&redis);
    const DEAD: u64 = 40;
    for _ in 0..DEAD {
        publish(&publisher, "dead", None).await;
    }
    let server = AdminServer::start(&db, &redis, &[]).await;
    eventually("every task died", Duration::from_secs(30), || async {
        count(&server.queue(QUEUE), "dead") == DEAD
    })
    .await;
    worker.stop().await;

    let body = format!(r#"{{"queue":"{QUEUE}","all":true}}"#);
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| server.ok("RequeueDeadTasks", &body));
        let b = scope.spawn(|| server.ok("RequeueDeadTasks", &body));
        (a.join().expect("first"), b.join().expect("second"))
    });
    assert_eq!(
        count(&a, "requeued") + count(&b, "requeued"),
        DEAD,
        "{a} {b}"
    );
    let queue = server.queue(QUEUE);
    assert_eq!(count(&queue, "dead"), 0, "{queue}");
    assert_eq!(count(&queue, "pending"), DEAD, "{queue}");
    let again = server.ok("RequeueDeadTasks", &body);
    assert_eq!(count(&again, "requeued"), 0, "{again}");

    // Delete by id, twice: once.
    let worker = TestWorker::start(&redis);
    eventually("they died again", Duration::from_secs(30), || async {
        count(&server.queue(QUEUE), "dead") == DEAD
    })
    .await;
    worker.stop().await;
    let dead = server.ok(
        "ListTasks",
        &format!(r#"{{"queue":"{QUEUE}","state":"TASK_STATE_DEAD","pageSize":3}}"#),
    );
    let ids: Vec<String> = dead["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect();
    let body = serde_json::json!({ "queue": QUEUE, "ids": ids }).to_string();
    assert_eq!(count(&server.ok("DeleteDeadTasks", &body), "deleted"), 3);
    assert_eq!(count(&server.ok("DeleteDeadTasks", &body), "deleted"), 0);
    assert_eq!(count(&server.queue(QUEUE), "dead"), DEAD - 3);
    server.stop().await;
}

/// Pages through `state` of [`QUEUE`], calling `between` after each page; the ids listed.
fn page_through(
    server: &AdminServer,
    state: &str,
    size: u32,
    mut between: impl FnMut(usize),
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token = String::new();
    for page in 0.. {
        // Far more pages than the tasks need: paging that goes round in circles fails here.
        assert!(page < 40, "paging does not end ({} ids listed)", ids.len());
        let body = serde_json::json!({
            "queue": QUEUE, "state": state, "pageSize": size, "pageToken": token,
        })
        .to_string();
        let reply = server.ok("ListTasks", &body);
        let tasks = reply["tasks"].as_array().cloned().unwrap_or_default();
        assert!(tasks.len() <= size as usize, "{reply}");
        ids.extend(
            tasks
                .iter()
                .map(|t| t["id"].as_str().expect("id").to_owned()),
        );
        between(page);
        match reply["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_owned(),
            _ => break,
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_is_stable_while_tasks_move() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let publisher = publisher(&redis).await;
    let server = AdminServer::start(&db, &redis, &[]).await;
    let runtime = tokio::runtime::Handle::current();

    // Scheduled: 30 tasks due at the same millisecond (ties broken by the member's bytes),
    // 10 later. Between pages, some of those not yet listed are cancelled, and new ones are
    // added.
    let at = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let mut stays = Vec::new();
    let mut goes = Vec::new();
    for n in 0..40 {
        let task = Task::new(&Job {
            action: "ok".into(),
        })
        .expect("task")
        .with_process_at(if n < 30 {
            at
        } else {
            at + time::Duration::minutes(n)
        });
        publisher.publish(&task).await.expect("publish");
        if n % 4 == 3 {
            goes.push(task.id().to_owned());
        } else {
            stays.push(task.id().to_owned());
        }
    }
    let listed = tokio::task::block_in_place(|| {
        page_through(&server, "TASK_STATE_SCHEDULED", 7, |page| {
            if let Some(id) = goes.get(page) {
                let (ok, text) = server.call("CancelScheduledTask", &format!(r#"{{"id":"{id}"}}"#));
                assert!(ok, "{text}");
            }
            runtime.block_on(async {
                publish(&publisher, "ok", Some(Duration::from_secs(7200))).await;
            });
        })
    });
    assert_listed_once(&listed, &stays);

    // Pending: 25 entries; between pages, new ones arrive and some already listed and some
    // not yet listed are taken away (deleted dead letters would do the same to DEAD pages).
    let mut pending = Vec::new();
    for _ in 0..25 {
        pending.push(publish(&publisher, "ok", None).await);
    }
    let listed = tokio::task::block_in_place(|| {
        page_through(&server, "TASK_STATE_PENDING", 6, |_| {
            runtime.block_on(async {
                publish(&publisher, "ok", None).await;
            });
        })
    });
    assert_listed_once(&listed, &pending);
    server.stop().await;
}

/// Every id of `stays` is in `listed` once, and nothing is listed twice.
fn assert_listed_once(listed: &[String], stays: &[String]) {
    let mut seen = std::collections::HashSet::new();
    for id in listed {
        assert!(seen.insert(id), "{id} listed twice");
    }
    for id in stays {
        assert!(seen.contains(id), "{id} never listed");
    }
}

#[tokio::test]
async fn malformed_input_is_invalid_argument_naming_the_field() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let publisher = publisher(&redis).await;
    publish(&publisher, "ok", None).await;
    let server = AdminServer::start(&db, &redis, &[]).await;
    let huge = "q".repeat(10_000);
    let ids: Vec<String> = (0..1001).map(|n| format!("id-{n}")).collect();
    let many_ids = serde_json::json!({ "queue": QUEUE, "ids": ids }).to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "ListTasks",
            r#"{"queue":"","state":"TASK_STATE_PENDING"}"#.into(),
            "queue",
        ),
        (
            "ListTasks",
            r#"{"queue":"a\r\nb","state":"TASK_STATE_PENDING"}"#.into(),
            "queue",
        ),
        (
            "ListTasks",
            r#"{"queue":"a\u0000b","state":"TASK_STATE_PENDING"}"#.into(),
            "queue",
        ),
        (
            "ListTasks",
            r#"{"queue":"a\u202eb","state":"TASK_STATE_PENDING"}"#.into(),
            "queue",
        ),
        (
            "ListTasks",
            r#"{"queue":"{x}","state":"TASK_STATE_PENDING"}"#.into(),
            "queue",
        ),
        (
            "ListTasks",
            format!(r#"{{"queue":"{huge}","state":"TASK_STATE_PENDING"}}"#),
            "queue",
        ),
        ("ListTasks", format!(r#"{{"queue":"{QUEUE}"}}"#), "state"),
        (
            "ListTasks",
            format!(r#"{{"queue":"{QUEUE}","state":42}}"#),
            "state",
        ),
        (
            "ListTasks",
            format!(r#"{{"queue":"{QUEUE}","state":"TASK_STATE_DEAD","pageSize":1001}}"#),
            "page_size",
        ),
        (
            "ListTasks",
            format!(r#"{{"queue":"{QUEUE}","state":"TASK_STATE_DEAD","pageToken":"zz"}}"#),
            "page_token",
        ),
        (
            "ListTasks",
            format!(
                r#"{{"queue":"{QUEUE}","state":"TASK_STATE_DEAD","pageToken":"{}"}}"#,
                "ab".repeat(3000)
            ),
            "page_token",
        ),
        ("GetTask", r#"{"id":""}"#.into(), "id"),
        ("GetTask", r#"{"id":"a b"}"#.into(), "id"),
        ("GetTask", r#"{"id":"a\nb"}"#.into(), "id"),
        (
            "GetTask",
            format!(r#"{{"id":"{}"}}"#, "x".repeat(201)),
            "id",
        ),
        ("GetTask", r#"{"id":"x","queue":"a:b"}"#.into(), "queue"),
        ("CancelScheduledTask", r#"{"id":"a\u0000"}"#.into(), "id"),
        (
            "RequeueDeadTasks",
            format!(r#"{{"queue":"{QUEUE}"}}"#),
            "ids",
        ),
        (
            "RequeueDeadTasks",
            format!(r#"{{"queue":"{QUEUE}","ids":["a"],"all":true}}"#),
            "ids",
        ),
        ("RequeueDeadTasks", many_ids.clone(), "ids"),
        (
            "DeleteDeadTasks",
            format!(r#"{{"queue":"{QUEUE}","ids":["a\tb"]}}"#),
            "ids",
        ),
        ("PauseQueue", r#"{"queue":""}"#.into(), "queue"),
        ("ResumeQueue", r#"{"queue":"x y"}"#.into(), "queue"),
    ];
    for (method, body, field) in cases {
        let (code, text) = server.err(method, &body);
        assert_eq!(code, "InvalidArgument", "{method} {body}: {text}");
        assert!(
            text.contains(&format!(r#""field":"{field}""#)),
            "{method} {body}: {text}"
        );
    }
    // A page token of another state or queue is not accepted either.
    publish(&publisher, "ok", None).await;
    let page = server.ok(
        "ListTasks",
        &format!(r#"{{"queue":"{QUEUE}","state":"TASK_STATE_PENDING","pageSize":1}}"#),
    );
    let token = page["nextPageToken"]
        .as_str()
        .expect("a next page")
        .to_owned();
    for (queue, state) in [(QUEUE, "TASK_STATE_DEAD"), ("other", "TASK_STATE_PENDING")] {
        let body = serde_json::json!({ "queue": queue, "state": state, "pageToken": token });
        let (code, text) = server.err("ListTasks", &body.to_string());
        assert_eq!(code, "InvalidArgument", "{text}");
        assert!(text.contains(r#""field":"page_token""#), "{text}");
    }

    // Malformed protobuf, and frames that are not one message: INVALID_ARGUMENT, never
    // INTERNAL; oversized: RESOURCE_EXHAUSTED. All behind the token check.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.admin))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the admin listener");
    let bearer = format!("bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let path = format!("/{ADMIN}/ListTasks");
    for (body, expected) in [
        (
            crate::malformed::frame(&[0xff, 0xff, 0xff]),
            tonic::Code::InvalidArgument,
        ),
        (
            crate::malformed::frame(&[0x0a, 0x02, 0xc3, 0x28]),
            tonic::Code::InvalidArgument,
        ),
        (
            crate::malformed::frame(&[0x10]),
            tonic::Code::InvalidArgument,
        ),
        (
            [crate::malformed::frame(&[]), crate::malformed::frame(&[])].concat(),
            tonic::Code::InvalidArgument,
        ),
        (vec![0, 0, 0, 0], tonic::Code::InvalidArgument),
        (
            crate::malformed::frame(&vec![b'a'; 70_000]),
            tonic::Code::ResourceExhausted,
        ),
    ] {
        let (code, message) =
            crate::malformed::call_with(&channel, &path, body.clone(), &auth).await;
        assert_eq!(code, expected, "{message}");
        let (code, _) = crate::malformed::call_with(&channel, &path, body, &[]).await;
        assert_eq!(code, tonic::Code::Unauthenticated);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_hung_redis_is_unavailable_within_a_bounded_wait() {
    let db = TestDb::create().await;
    let redis_server = RedisServer::start().await;
    let redis = TestRedis::at(redis_server.address());
    let publisher = publisher(&redis).await;
    publish(&publisher, "ok", None).await;
    let server = AdminServer::start(&db, &redis, &[]).await;
    redis_server.pause();
    for (method, body) in [
        ("ListQueues", "{}".to_owned()),
        (
            "ListTasks",
            format!(r#"{{"queue":"{QUEUE}","state":"TASK_STATE_PENDING"}}"#),
        ),
        ("PauseQueue", format!(r#"{{"queue":"{QUEUE}"}}"#)),
    ] {
        let (code, text) = server.err(method, &body);
        assert_eq!(code, "Unavailable", "{method}: {text}");
    }
    redis_server.resume();
    let (ok, text) = server.call(
        "ListTasks",
        &format!(r#"{{"queue":"{QUEUE}","state":"TASK_STATE_PENDING"}}"#),
    );
    assert!(ok, "{text}");
    server.stop().await;
}

#[tokio::test]
async fn pausing_stops_processing_and_resuming_drains() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let publisher = publisher(&redis).await;
    let worker = TestWorker::start(&redis);
    let server = AdminServer::start(&db, &redis, &[]).await;
    eventually(
        "the worker registered its queues",
        Duration::from_secs(10),
        || async { server.call("ListWorkers", "{}").1.contains(&worker.name) },
    )
    .await;
    let body = format!(r#"{{"queue":"{QUEUE}"}}"#);
    let paused = server.ok("PauseQueue", &body);
    assert_eq!(paused["changed"], true, "{paused}");
    assert!(
        server.ok("PauseQueue", &body)["changed"].is_null(),
        "pausing twice changes nothing"
    );
    assert_eq!(server.queue(QUEUE)["paused"], true);

    // The pause reaches the worker within a second. A probe shows when: a task on the paused
    // queue stays pending while one published after it on the other queue is done.
    let probes = std::sync::Mutex::new(0usize);
    eventually(
        "the worker stops reading the paused queue",
        Duration::from_secs(10),
        || async {
            let probe = publish(&publisher, "ok", None).await;
            *probes.lock().expect("probes") += 1;
            let done = worker.done.load(Ordering::SeqCst);
            publish_to(&publisher, other(), "ok", None).await;
            eventually(
                "the other queue is served",
                Duration::from_secs(10),
                || async { worker.done.load(Ordering::SeqCst) > done },
            )
            .await;
            // Not found: it ran (the pause had not reached the worker yet).
            let (found, task) = server.call("GetTask", &format!(r#"{{"id":"{probe}"}}"#));
            found && task.contains("TASK_STATE_PENDING")
        },
    )
    .await;

    // From then on, nothing of the paused queue runs, while the other queue drains.
    let probes = *probes.lock().expect("probes");
    let before = worker.done.load(Ordering::SeqCst);
    for _ in 0..10 {
        publish(&publisher, "ok", None).await;
        publish_to(&publisher, other(), "ok", None).await;
    }
    eventually(
        "the other queue drained",
        Duration::from_secs(20),
        || async { worker.done.load(Ordering::SeqCst) >= before + 10 },
    )
    .await;
    let queue = server.queue(QUEUE);
    assert_eq!(
        worker.done.load(Ordering::SeqCst),
        before + 10,
        "a paused queue was read"
    );
    assert!(count(&queue, "pending") >= 11, "{queue}");

    // Resumed, it drains.
    let resumed = server.ok("ResumeQueue", &body);
    assert_eq!(resumed["changed"], true, "{resumed}");
    eventually(
        "the worker drains the queue",
        Duration::from_secs(20),
        || async { count(&server.queue(QUEUE), "pending") == 0 },
    )
    .await;
    assert!(worker.done.load(Ordering::SeqCst) >= before + 10 + 11);
    assert!(probes >= 1);
    worker.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn every_admin_call_runs_as_the_least_privilege_acl_user() {
    use simplebank_core::keys::acl_setuser_rules;
    use simplebank_queue::acl::OPTIONAL;

    const PASSWORD: &str = "admin-acl-Pa55word";
    let db = TestDb::create().await;
    let redis_server = RedisServer::start().await;
    let namespace = simplebank_queue::Namespace::parse(&format!(
        "acl-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
    .expect("namespace");
    let superuser = TestRedis {
        address: redis_server
            .restrict_to("simplebank", PASSWORD, &acl_setuser_rules(&namespace))
            .await,
        namespace,
    };
    let publisher = publisher(&superuser).await;
    let worker = TestWorker::start(&superuser);
    for action in ["ok", "dead", "hold"] {
        publish(&publisher, action, None).await;
    }
    let scheduled = publish(&publisher, "ok", Some(Duration::from_secs(3600))).await;
    let user = format!("redis://simplebank:{PASSWORD}@{}", redis_server.address());
    let server = AdminServer::start(&db, &superuser, &[("REDIS_ADDRESS", &user)]).await;
    eventually(
        "the worker settled what it could",
        Duration::from_secs(20),
        || async {
            let queue = server.queue(QUEUE);
            count(&queue, "dead") == 1 && count(&queue, "active") == 1
        },
    )
    .await;

    for state in ["PENDING", "ACTIVE", "SCHEDULED", "RETRY", "DEAD"] {
        server.ok(
            "ListTasks",
            &format!(r#"{{"queue":"{QUEUE}","state":"TASK_STATE_{state}","pageSize":1}}"#),
        );
    }
    server.ok("GetTask", &format!(r#"{{"id":"{scheduled}"}}"#));
    server.ok("ListWorkers", "{}");
    server.ok("CancelScheduledTask", &format!(r#"{{"id":"{scheduled}"}}"#));
    server.ok("PauseQueue", r#"{"queue":"other"}"#);
    server.ok("ResumeQueue", r#"{"queue":"other"}"#);
    let requeued = server.ok(
        "RequeueDeadTasks",
        &format!(r#"{{"queue":"{QUEUE}","all":true}}"#),
    );
    assert_eq!(count(&requeued, "requeued"), 1, "{requeued}");
    server.ok(
        "DeleteDeadTasks",
        &format!(r#"{{"queue":"{QUEUE}","all":true}}"#),
    );
    worker.stop().await;
    server.stop().await;

    let denials: Vec<String> = superuser
        .acl_denials()
        .await
        .into_iter()
        .filter(|line| !OPTIONAL.iter().any(|optional| line.ends_with(optional)))
        .collect();
    assert!(denials.is_empty(), "Redis refused: {denials:#?}");
}

/// A page token as the server encodes it (hex of its text), for tokens a client forges.
fn forged_token(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// attack14: a well-formed token naming the largest stream entry id (a client may forge any
/// position; the server's own tokens never name it) is answered INTERNAL ("invalid start ID
/// for the interval" from XRANGE `(<max>`), and logged at ERROR. It is a position after every
/// entry: an empty page (or INVALID_ARGUMENT naming page_token), never INTERNAL.
#[tokio::test]
async fn a_page_token_past_the_largest_entry_id_is_not_an_internal_error() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let publisher = publisher(&redis).await;
    publish(&publisher, "ok", None).await;
    let server = AdminServer::start(&db, &redis, &[]).await;
    for (state, name) in [
        ("TASK_STATE_PENDING", "pending"),
        ("TASK_STATE_ACTIVE", "active"),
        ("TASK_STATE_DEAD", "dead"),
    ] {
        let token = forged_token(&format!("v1:{name}:{QUEUE}:e:{0}-{0}", u64::MAX));
        let body =
            serde_json::json!({ "queue": QUEUE, "state": state, "pageToken": token }).to_string();
        let (ok, text) = server.call("ListTasks", &body);
        if ok {
            let reply: Value = serde_json::from_str(&text).expect("json");
            assert!(
                reply["tasks"].as_array().is_none_or(Vec::is_empty),
                "{state}: {text}"
            );
        } else {
            assert_eq!(code_of(&text), "InvalidArgument", "{state}: {text}");
            assert!(text.contains("page_token"), "{state}: {text}");
        }
    }
    server.stop().await;
}

/// attack14: paging a scheduled set where an undecodable member (another version's, or a
/// corrupted one) ends a page. Its tie cannot end at a task id, so the token's tie falls back
/// to the member's first character, `{`, which every member starts with: the next page skips
/// every other member of that due time, and the listing ends without them. Every decodable
/// task must be listed once.
#[tokio::test]
async fn an_undecodable_scheduled_member_does_not_hide_the_tasks_due_with_it() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let publisher = publisher(&redis).await;
    let at = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let task = Task::new(&Job {
            action: "ok".into(),
        })
        .expect("task")
        .with_process_at(at);
        publisher.publish(&task).await.expect("publish");
        ids.push(task.id().to_owned());
    }
    let key = redis.keys().scheduled(&queue_name());
    let mut conn = redis.conn().await;
    let due: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(0)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .expect("zrange");
    let due = due[0].1;
    // Members are `{"fields":["id",...`; `!` sorts before `"`, so this one comes first.
    let poison = r#"{"fields":[!not json"#;
    let _: i64 = redis::cmd("ZADD")
        .arg(&key)
        .arg(due)
        .arg(poison)
        .query_async(&mut conn)
        .await
        .expect("zadd");
    let server = AdminServer::start(&db, &redis, &[]).await;

    let mut listed = Vec::new();
    let mut token = String::new();
    for page in 0.. {
        assert!(page < 20, "paging does not end");
        let body = serde_json::json!({
            "queue": QUEUE, "state": "TASK_STATE_SCHEDULED", "pageSize": 1, "pageToken": token,
        })
        .to_string();
        let reply = server.ok("ListTasks", &body);
        for task in reply["tasks"].as_array().cloned().unwrap_or_default() {
            if let Some(id) = task["id"].as_str().filter(|id| !id.is_empty()) {
                listed.push(id.to_owned());
            }
        }
        match reply["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_owned(),
            _ => break,
        }
    }
    assert_listed_once(&listed, &ids);
    server.stop().await;
}
