//! A worker process for fault tests and benchmarks: the real consumer (`Worker`), configured
//! from the same environment variables as `simplebank-worker`, with one handler:
//!
//! `test:job` {n, sleep_ms, fail, record}: sleeps `sleep_ms`, records the run (unless `record`
//! is false, for benchmarks) with
//! `HINCRBY {ns}:test:runs <task id> 1`, then succeeds (or fails if `fail`). A run recorded
//! but never acknowledged (the process was killed in between) shows as a count of 2: that is
//! how the fault tests count duplicates.

use std::time::Duration;

use simplebank_core::{
    config::CommonConfig,
    redis_client::{self, Connection},
};
use simplebank_queue::{Handler, HandlerError, Handlers, Keys, TaskContext, TaskPayload, Worker};

use tokio_util::sync::CancellationToken;

#[path = "shared/telemetry.rs"]
mod telemetry;

/// The allocator `simplebank-worker` uses (worker/src/main.rs), so the benchmarks' drains
/// measure what ships.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(serde::Serialize, serde::Deserialize)]
struct Job {
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    fail: bool,
    /// `false` for benchmarks: a true no-op.
    #[serde(default = "yes")]
    record: bool,
}

fn yes() -> bool {
    true
}

impl TaskPayload for Job {
    const TYPE: &'static str = "test:job";
}

struct Recorder {
    conn: Connection,
    runs: String,
}

impl Handler<Job> for Recorder {
    async fn handle(&self, job: Job, task: TaskContext) -> Result<(), HandlerError> {
        if job.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
        }
        if !job.record {
            return Ok(());
        }
        let _: i64 = redis::cmd("HINCRBY")
            .arg(&self.runs)
            .arg(task.id())
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(HandlerError::new)?;
        if job.fail {
            return Err(HandlerError::new("job asked to fail"));
        }
        Ok(())
    }
}

/// One runtime thread, as the worker binary (`src/main.rs` says why).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let common = CommonConfig::from_env()?;
    let settings = simplebank_worker::config::consumer_settings_from_env()?;
    let telemetry = telemetry::from_env("simplebank-test-worker")?;
    // REDIS_CLUSTER and REDIS_TLS_* as the worker binary: the fault tests run this on a
    // cluster too.
    let endpoint = common.redis_endpoint()?;
    let keys = Keys::new(common.namespace.clone());
    let recorder = Recorder {
        conn: endpoint.connect_lazy(redis_client::RESPONSE_TIMEOUT)?,
        runs: keys.namespaced("test:runs"),
    };
    let mut worker = Worker::with_endpoint(
        endpoint,
        common.namespace,
        settings,
        Handlers::new().on::<Job>(recorder),
    )?;
    if let Some(every) = telemetry.as_ref().and_then(|t| t.metrics_interval()) {
        worker = worker.with_queue_depth(every);
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(simplebank_worker::signals::watch(shutdown.clone()));
    let result = worker.run(shutdown).await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    Ok(result?)
}
