//! The worker process of `make bench`'s end-to-end scenario (and of `make bench-peers`): the
//! real consumer engine (`simplebank_queue::Worker`) in a process of its own, on tokio's
//! current-thread runtime like `simplebank-worker`, configured from the same environment
//! (`REDIS_ADDRESS`, `REDIS_NAMESPACE`, `WORKER_CONCURRENCY`, `WORKER_CONSUMER_NAME`, ...),
//! with one no-op handler: what an application embedding the queue would run. Not the
//! `simplebank-worker` binary itself, whose handlers send email through PostgreSQL and SMTP.
//!
//! `bench:ping` {sent_us}: records how long after its send (µs since the epoch, set by the
//! producer) the handler started. After `BENCH_STOP_AT` tasks (if set) the process shuts down
//! by itself, as on SIGTERM; on the way out it writes `BENCH_LATENCY_FILE`: a first line with
//! the last handler start (µs since the epoch), the count and the process's CPU seconds, then one latency (µs) a line.
//! `RUST_LOG` set installs the project's tracing (and OTLP export, from `OTEL_*`), as in
//! `test_worker`.

use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use simplebank_core::config::{self, CommonConfig};
use simplebank_queue::{Handler, HandlerError, Handlers, TaskContext, Worker};
use tokio_util::sync::CancellationToken;

#[path = "shared/ping.rs"]
mod ping;
#[path = "shared/telemetry.rs"]
mod telemetry;
use ping::{Ping, now_us};

#[derive(Default)]
struct Record {
    latencies: Mutex<Vec<u64>>,
    last_us: AtomicU64,
    count: AtomicUsize,
}

#[derive(Clone)]
struct Recorder {
    record: Arc<Record>,
    stop_at: Option<usize>,
    shutdown: CancellationToken,
}

impl Handler<Ping> for Recorder {
    async fn handle(&self, ping: Ping, _task: TaskContext) -> Result<(), HandlerError> {
        let started = now_us();
        self.record
            .latencies
            .lock()
            .map_err(|_| HandlerError::new("latency record poisoned"))?
            .push(started.saturating_sub(ping.sent_us));
        self.record.last_us.fetch_max(started, Ordering::Relaxed);
        let count = self.record.count.fetch_add(1, Ordering::Relaxed) + 1;
        if Some(count) == self.stop_at {
            self.shutdown.cancel();
        }
        Ok(())
    }
}

/// One runtime thread, as the worker binary (`src/main.rs` says why).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let common = CommonConfig::from_env()?;
    let settings = simplebank_worker::config::consumer_settings_from_env()?;
    let stop_at: Option<usize> = match config::var("BENCH_STOP_AT")? {
        Some(n) => Some(n.parse().map_err(|_| "BENCH_STOP_AT must be a number")?),
        None => None,
    };
    let out = config::var("BENCH_LATENCY_FILE")?.ok_or("BENCH_LATENCY_FILE is not set")?;
    let _telemetry = telemetry::from_env("simplebank-bench-worker")?;
    let shutdown = CancellationToken::new();
    let recorder = Recorder {
        record: Arc::new(Record {
            latencies: Mutex::new(Vec::with_capacity(stop_at.unwrap_or(100_000))),
            ..Record::default()
        }),
        stop_at,
        shutdown: shutdown.clone(),
    };
    let record = Arc::clone(&recorder.record);
    let worker = Worker::with_endpoint(
        common.redis_endpoint()?,
        common.namespace,
        settings,
        Handlers::new().on::<Ping>(recorder),
    )?;
    tokio::spawn(simplebank_worker::signals::watch(shutdown.clone()));
    worker.run(shutdown).await?;
    let latencies = record
        .latencies
        .lock()
        .map_err(|_| "latency record poisoned")?;
    let mut text = String::with_capacity(latencies.len() * 8 + 32);
    let cpu = simplebank_core::testing::proc_cpu("/proc/self/stat").map_or(0.0, |(_, s)| s);
    writeln!(
        text,
        "{} {} {cpu}",
        record.last_us.load(Ordering::Relaxed),
        latencies.len()
    )?;
    for latency in latencies.iter() {
        writeln!(text, "{latency}")?;
    }
    std::fs::write(out, text)?;
    Ok(())
}
