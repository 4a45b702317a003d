//! Workers with recording handlers, and publishing straight to the streams.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use simplebank_core::{
    redis_client,
    testing::{TestRedis, eventually},
};
use simplebank_queue::{
    Backoff, ConsumerSettings, GROUP, Handler, HandlerError, Handlers, Namespace, Publisher,
    QueueName, Task, TaskContext, TaskPayload, Worker,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A no-op task type for queue tests.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Noop {
    pub n: u32,
}

impl TaskPayload for Noop {
    const TYPE: &'static str = "test:noop";
    const QUEUE: &'static str = "default";
    const MAX_RETRY: u32 = 3;
    const TIMEOUT: Duration = Duration::from_secs(30);
}

/// What a recording handler does on each call, by how many times it saw the task before.
pub type Behaviour = Arc<dyn Fn(u32) -> Result<(), &'static str> + Send + Sync>;

/// Counts every run of every task id, by consumer; optionally sleeps, fails or panics.
#[derive(Clone)]
pub struct Recorder {
    pub runs: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// The queue of every run, in the order the runs started.
    pub order: Arc<Mutex<Vec<String>>>,
    consumer: String,
    delay: Duration,
    behaviour: Behaviour,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            runs: Arc::default(),
            order: Arc::default(),
            consumer: String::new(),
            delay: Duration::ZERO,
            behaviour: Arc::new(|_| Ok(())),
        }
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn with_behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    /// The same records, attributed to `consumer`.
    pub fn for_consumer(&self, consumer: &str) -> Self {
        Self {
            consumer: consumer.to_owned(),
            ..self.clone()
        }
    }

    pub fn total_runs(&self) -> usize {
        self.runs.lock().expect("lock").values().map(Vec::len).sum()
    }

    pub fn distinct(&self) -> usize {
        self.runs.lock().expect("lock").len()
    }
}

impl<P: TaskPayload> Handler<P> for Recorder {
    async fn handle(&self, _payload: P, task: TaskContext) -> Result<(), HandlerError> {
        self.order
            .lock()
            .expect("lock")
            .push(task.queue().to_string());
        let seen_before = {
            let mut runs = self.runs.lock().expect("lock");
            let entry = runs.entry(task.id().to_owned()).or_default();
            entry.push(self.consumer.clone());
            u32::try_from(entry.len() - 1).expect("small")
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        (self.behaviour)(seen_before).map_err(HandlerError::new)
    }
}

/// Test settings: short blocking reads and retry delays of 10-50 ms.
pub fn settings(consumer: &str) -> ConsumerSettings {
    let mut settings = ConsumerSettings::new(consumer);
    settings.block = Duration::from_millis(100);
    settings.backoff = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(50),
    };
    settings
}

/// A worker running in this test's runtime.
pub struct RunningWorker {
    pub stop: CancellationToken,
    pub handle: JoinHandle<()>,
}

impl RunningWorker {
    pub fn start(redis: &TestRedis, settings: ConsumerSettings, handlers: Handlers) -> Self {
        let worker = Worker::new(&redis.address, redis.namespace.clone(), settings, handlers)
            .expect("worker config");
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            worker.run(token).await.expect("worker runs");
        });
        Self { stop, handle }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.handle.await.expect("worker task");
    }
}

pub fn publisher(redis: &TestRedis) -> Publisher {
    let conn = redis_client::lazy_manager(redis.client(), redis_client::RESPONSE_TIMEOUT)
        .expect("connection manager");
    Publisher::new(conn, redis.keys())
}

/// XADDs `tasks` onto their streams, pipelined 1,000 at a time; returns their ids.
pub async fn xadd_all(redis: &TestRedis, tasks: Vec<Task>) -> Vec<String> {
    publisher(redis)
        .publish_batch(&tasks)
        .await
        .expect("XADD pipeline");
    tasks.iter().map(|task| task.id().to_owned()).collect()
}

/// Creates the consumer group on `queue`'s stream, as a worker does at start-up (the layout
/// is documented on `simplebank_queue::Keys`).
pub async fn ensure_group(redis: &TestRedis, queue: &QueueName) {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(redis.keys().stream(queue))
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut redis.conn().await)
        .await;
    match created {
        Ok(()) => {}
        Err(err) if err.code() == Some("BUSYGROUP") => {}
        Err(err) => panic!("XGROUP CREATE: {err}"),
    }
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

/// Publishes `n` no-op tasks; returns their ids.
pub async fn publish_noops(redis: &TestRedis, n: u32) -> Vec<String> {
    let tasks = (0..n)
        .map(|n| Task::new(&Noop { n }).expect("task"))
        .collect();
    xadd_all(redis, tasks).await
}

/// Waits until `queue`'s stream is empty and nothing is pending: every task finished and acked.
pub async fn wait_until_drained(redis: &TestRedis, queue: &str) {
    eventually(
        &format!("{queue} is drained and acked"),
        Duration::from_secs(30),
        || async move { stream_state(redis, queue).await == (0, 0) },
    )
    .await;
}

/// Waits until `recorder` has counted at least `n` runs (all deliveries, or distinct tasks);
/// tests that need an exact count assert it afterwards.
pub async fn wait_for_runs(recorder: &Recorder, n: usize, distinct: bool) {
    eventually(&format!("{n} runs"), Duration::from_secs(60), || {
        let seen = if distinct {
            recorder.distinct()
        } else {
            recorder.total_runs()
        };
        async move { seen >= n }
    })
    .await;
}

/// Stream length and pending count of `queue`'s stream.
pub async fn stream_state(redis: &TestRedis, queue: &str) -> (usize, usize) {
    let stream = redis
        .keys()
        .stream(&QueueName::parse(queue).expect("queue"));
    let mut conn = redis.conn().await;
    let len: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    let pending: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg(GROUP)
        .query_async(&mut conn)
        .await;
    let count = match pending {
        // No group yet (no worker has started): nothing can be pending.
        Err(err) if err.code() == Some("NOGROUP") => 0,
        Err(err) => panic!("XPENDING: {err}"),
        Ok(redis::Value::Array(items)) => items
            .first()
            .and_then(|v| redis::from_redis_value_ref::<usize>(v).ok())
            .unwrap_or(0),
        _ => 0,
    };
    (len, count)
}

/// Tasks delayed or waiting for a retry, in the default queues.
pub async fn scheduled_count(redis: &TestRedis) -> usize {
    let keys = redis.keys();
    let mut pipe = redis::pipe();
    for queue in simplebank_queue::DEFAULT_QUEUES {
        let queue = QueueName::parse(queue).expect("queue");
        pipe.cmd("ZCARD").arg(keys.scheduled(&queue));
        pipe.cmd("ZCARD").arg(keys.retry(&queue));
    }
    let counts: Vec<usize> = pipe
        .query_async(&mut redis.conn().await)
        .await
        .expect("ZCARD");
    counts.iter().sum()
}

/// The payload of `test:job`, run by the `test_worker` example process.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct TestJob {
    pub n: u32,
    pub sleep_ms: u64,
}

impl TaskPayload for TestJob {
    const TYPE: &'static str = "test:job";
}

/// Publishes `n` `test:job` tasks sleeping `sleep_ms` each; returns their ids.
pub async fn publish_jobs(redis: &TestRedis, n: u32, sleep_ms: u64) -> Vec<String> {
    let tasks = (0..n)
        .map(|n| Task::new(&TestJob { n, sleep_ms }).expect("task"))
        .collect();
    xadd_all(redis, tasks).await
}

/// The `test_worker` example binary (built by `cargo test --all-targets` / `make test`).
pub fn test_worker_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let debug_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>");
    let binary = debug_dir.join("examples").join("test_worker");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --examples` (make test does)",
        binary.display()
    );
    binary
}

/// Starts a `test_worker` process on `address` / `redis.namespace` as consumer `name`.
pub fn spawn_test_worker(
    address: &str,
    redis: &TestRedis,
    name: &str,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    spawn_test_worker_in(address, &redis.namespace, name, env)
}

/// Starts a `test_worker` process on `address` / `namespace` as consumer `name`, with `env`
/// added (a Redis Cluster's tests add `REDIS_CLUSTER`).
pub fn spawn_test_worker_in(
    address: &str,
    namespace: &Namespace,
    name: &str,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(test_worker_binary());
    command
        .env("REDIS_ADDRESS", address)
        .env("REDIS_NAMESPACE", namespace.as_str())
        .env("WORKER_CONSUMER_NAME", name)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("start test_worker")
}

/// How often each task id ran in `test_worker` processes (`{ns}:test:runs`).
pub async fn recorded_runs(redis: &TestRedis) -> HashMap<String, u64> {
    redis::cmd("HGETALL")
        .arg(format!("{{{}}}:test:runs", redis.namespace.as_str()))
        .query_async(&mut redis.conn().await)
        .await
        .expect("HGETALL")
}
