//! What the queue's integration tests share: a payload whose handler does what its `mode`
//! says, a worker running in the background, and Redis connections.

use std::time::Duration;

use simplebank_queue::{
    Backoff, ConsumerSettings, HandlerError, Handlers, Keys, Publisher, QueueName, Task,
    TaskContext, TaskPayload, Worker, connection, testing::TestRedis,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a [`Job`]'s handler does.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    Succeed,
    /// Fails every attempt (retried with backoff).
    Fail,
    /// Fails its first attempt, succeeds after.
    FailOnce,
    /// Fails for good at once (a dead letter).
    Refuse,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub n: u32,
    pub mode: Mode,
}

impl TaskPayload for Job {
    const TYPE: &'static str = "test:job";
}

pub fn job(queue: &QueueName, n: u32, mode: Mode) -> Task {
    Task::new(&Job { n, mode })
        .unwrap()
        .with_queue(queue.clone())
}

pub fn handlers() -> Handlers {
    Handlers::new().on(|job: Job, cx: TaskContext| async move {
        match job.mode {
            Mode::Succeed => Ok(()),
            Mode::FailOnce if cx.attempt() > 1 => Ok(()),
            Mode::Fail | Mode::FailOnce => Err(HandlerError::new("failing on purpose")),
            Mode::Refuse => Err(HandlerError::skip_retry("refused on purpose")),
        }
    })
}

pub fn manager(redis: &TestRedis) -> redis::aio::ConnectionManager {
    connection::lazy_manager(redis.client(), connection::RESPONSE_TIMEOUT).unwrap()
}

pub fn publisher(redis: &TestRedis) -> Publisher {
    Publisher::new(manager(redis), redis.keys())
}

/// Settings for `queues`, with a backoff so long that a failed task stays in its retry set.
pub fn settings(name: &str, queues: &[(&QueueName, u32)]) -> ConsumerSettings {
    let mut settings = ConsumerSettings::new(name);
    settings.queues = queues.iter().map(|(q, w)| ((*q).clone(), *w)).collect();
    settings.backoff = Backoff {
        base: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
    };
    settings
}

/// A worker running in the background until [`Running::stop`].
pub struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    pub fn start(redis: &TestRedis, settings: ConsumerSettings, handlers: Handlers) -> Self {
        let worker = Worker::new(&redis.address, redis.namespace.clone(), settings, handlers)
            .expect("valid settings");
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { worker.run(token).await.expect("worker ran") });
        Self { shutdown, task }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("worker task");
    }
}

/// Every key of the namespace (both patterns of [`Keys::patterns`]).
pub async fn namespace_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
) -> Vec<String> {
    let mut found = Vec::new();
    for pattern in keys.patterns() {
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await
                .unwrap();
            found.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    found.sort();
    found
}

/// The log lines of every test of this binary, captured by one global subscriber (a
/// subscriber per test, `set_default`, misses events when tests run in parallel: callsite
/// interest is cached across threads). Tests pick their own lines by queue names no other
/// test uses.
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();

impl Logs {
    /// The captured lines (capturing from the first call on).
    pub fn capture() -> Self {
        LOGS.get_or_init(|| {
            let logs = Self::default();
            let buffer = logs.0.clone();
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(move || LogWriter(buffer.clone()))
                .init();
            logs
        })
        .clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The lines that contain every one of `parts`.
    pub fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .map(str::to_owned)
            .collect()
    }
}
