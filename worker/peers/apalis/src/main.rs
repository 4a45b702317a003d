//! The apalis side of `make bench-peers`: the same end-to-end workload as simplebank's
//! `bench_worker` and `bench_producer`, with apalis 1.0 and apalis-redis 1.0.
//!
//! `peer-apalis worker`: a worker (concurrency `BENCH_CONCURRENCY`, default 100) whose handler
//! is a no-op that records how long after its send each task started; prints `ready` once it
//! is registered, stops by itself after `BENCH_STOP_AT` tasks and writes `BENCH_LATENCY_FILE`
//! (first line: the last handler start in µs since the epoch, the count and the process's CPU
//! seconds; then one latency in
//! µs a line). `APALIS_LEASES=off` turns apalis-redis' task locking (leases, renewed by
//! heartbeat) off; `on` keeps its default. Both fetch `BENCH_CONCURRENCY` tasks a time (apalis'
//! default is 10) and poll every 10 ms while idle (see `worker`). `APALIS_HEARTBEAT_MS` (default
//! apalis' 30,000): a worker that found its queue empty fetches again only at its next heartbeat
//! here (the 10 ms poll did not wake it in our runs), so the bench sets 1,000; at most a
//! second's tasks then wait in apalis' scheduled set. More than about 8,000 due there at once
//! make its fetch script fail (`too many results to unpack`), which the bench reports.
//!
//! `peer-apalis produce`: pushes `BENCH_TASKS` tasks, `BENCH_PRODUCE=single` (50 concurrent
//! producers, one `push` at a time each) or `batch` (`push_bulk` of 1,000).
//!
//! Both read `REDIS_URL` and `BENCH_QUEUE`.

use std::{
    io::Write as _,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use apalis::prelude::*;
use apalis_redis::{Config, RedisStorage};
use serde::{Deserialize, Serialize};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Deserialize, Serialize)]
struct Ping {
    sent_us: u64,
}

struct Record {
    latencies: Mutex<Vec<u64>>,
    last_us: std::sync::atomic::AtomicU64,
    count: AtomicUsize,
    stop_at: usize,
}

static RECORD: OnceLock<Record> = OnceLock::new();

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// This process's CPU seconds (user + system), from /proc (USER_HZ 100).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let fields: Vec<f64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum::<f64>() / 100.0
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn number(name: &str, default: usize) -> Result<usize, Error> {
    Ok(env(name, &default.to_string()).parse()?)
}

async fn handle(ping: Ping, worker: WorkerContext) -> Result<(), BoxDynError> {
    let started = now_us();
    let record = RECORD.get().ok_or("no record")?;
    record
        .latencies
        .lock()
        .map_err(|_| "poisoned")?
        .push(started.saturating_sub(ping.sent_us));
    record.last_us.fetch_max(started, Ordering::Relaxed);
    if record.count.fetch_add(1, Ordering::Relaxed) + 1 == record.stop_at {
        worker.stop()?;
    }
    Ok(())
}

fn config(queue: &str) -> Result<Config, Error> {
    // Fetch as many as the worker runs at once (its default fetches 10).
    let config = Config::default()
        .queue(queue)
        .batch_size(number("BENCH_CONCURRENCY", 100)?)
        .heartbeat_interval(Duration::from_millis(
            number("APALIS_HEARTBEAT_MS", 30_000)? as u64,
        ));
    Ok(match env("APALIS_LEASES", "off").as_str() {
        "off" => config.lock_tasks(false),
        "on" => config,
        other => return Err(format!("APALIS_LEASES must be on or off, not {other:?}").into()),
    })
}

async fn worker(url: &str, queue: &str) -> Result<(), Error> {
    let stop_at = number("BENCH_STOP_AT", 100_000)?;
    let concurrency = number("BENCH_CONCURRENCY", 100)?;
    let out = std::env::var("BENCH_LATENCY_FILE")?;
    RECORD
        .set(Record {
            latencies: Mutex::new(Vec::with_capacity(stop_at)),
            last_us: 0.into(),
            count: 0.into(),
            stop_at,
        })
        .map_err(|_| "record set twice")?;
    let conn = apalis_redis::connect(url).await?;
    // apalis-redis' `push` always schedules (run at now, in a sorted set, with no pub/sub
    // signal), and an empty fetch parks the worker until something wakes it: so a worker that
    // starts before the tasks exist must poll. 10 ms is a poll only while idle (a non-empty
    // fetch is followed by the next at once).
    let storage = RedisStorage::<Ping, _>::new(conn)
        .with_config(config(queue)?)
        .poll_with_interval(Duration::from_millis(10));
    let worker = WorkerBuilder::new("peer-apalis")
        .backend(storage)
        .concurrency(concurrency)
        .build(handle);
    println!("ready");
    std::io::stdout().flush()?;
    worker.run().await?;
    let record = RECORD.get().ok_or("no record")?;
    let latencies = record.latencies.lock().map_err(|_| "poisoned")?;
    let mut text = format!(
        "{} {} {}\n",
        record.last_us.load(Ordering::Relaxed),
        latencies.len(),
        cpu_seconds()
    );
    for l in latencies.iter() {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    std::fs::write(out, text)?;
    Ok(())
}

async fn produce(url: &str, queue: &str) -> Result<(), Error> {
    let tasks = number("BENCH_TASKS", 100_000)?;
    let conn = apalis_redis::connect(url).await?;
    let storage = RedisStorage::<Ping, _>::new(conn).with_config(config(queue)?);
    match env("BENCH_PRODUCE", "single").as_str() {
        "single" => {
            let next = std::sync::Arc::new(AtomicUsize::new(0));
            let mut producers = Vec::new();
            for _ in 0..50 {
                let (mut storage, next) = (storage.clone(), next.clone());
                producers.push(tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < tasks {
                        storage
                            .push(Ping { sent_us: now_us() })
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Ok::<_, String>(())
                }));
            }
            for producer in producers {
                producer.await??;
            }
        }
        "batch" => {
            let mut storage = storage;
            let mut done = 0;
            while done < tasks {
                let n = (tasks - done).min(1000);
                let now = now_us();
                let batch = (0..n).map(|_| Ping { sent_us: now }).collect();
                storage.push_bulk(batch).await.map_err(|e| e.to_string())?;
                done += n;
            }
        }
        other => {
            return Err(format!("BENCH_PRODUCE must be single or batch, not {other:?}").into());
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = env("REDIS_URL", "redis://127.0.0.1:6379");
    let queue = env("BENCH_QUEUE", "peer-apalis");
    match std::env::args().nth(1).as_deref() {
        Some("worker") => worker(&url, &queue).await,
        Some("produce") => produce(&url, &queue).await,
        _ => Err("usage: peer-apalis worker|produce".into()),
    }?;
    // apalis' heartbeat tasks are still running: leave without waiting for them.
    std::process::exit(0)
}
