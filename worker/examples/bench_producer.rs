//! The producer process of `make bench`'s end-to-end scenario: `BENCH_TASKS` (100,000)
//! `bench:ping` tasks into the queue `default` of `REDIS_NAMESPACE` on `REDIS_ADDRESS`, each
//! carrying its send time (µs since the epoch) for `bench_worker`'s latency.
//! `BENCH_PRODUCE=single`: `Publisher::publish`, 50 concurrent producers awaiting one task at a
//! time each (sharing one connection, as an application's request handlers do);
//! `batch`: `Publisher::publish_batch` of 1,000 at a time. Prints nothing; exits 0 when every
//! task is in Redis. `RUST_LOG` set installs the project's tracing and metrics (OTLP export,
//! from `OTEL_*`), as in `bench_worker`.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use simplebank_core::config::{self, CommonConfig};
use simplebank_queue::{Keys, Publisher, Task};

#[path = "shared/ping.rs"]
mod ping;
#[path = "shared/telemetry.rs"]
mod telemetry;
use ping::{Ping, now_us};

/// Several runtime threads, like a server publishing from its request handlers.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let common = CommonConfig::from_env()?;
    let tasks: usize = config::parse_or("BENCH_TASKS", 100_000)?;
    // Before the publisher, which binds its metrics to the meter installed then.
    let _telemetry = telemetry::from_env("simplebank-bench-producer")?;
    let publisher = Publisher::new(
        common
            .redis_endpoint()?
            .connect_lazy(simplebank_core::redis_client::RESPONSE_TIMEOUT)?,
        Keys::new(common.namespace),
    );
    match config::var("BENCH_PRODUCE")?.as_deref().unwrap_or("single") {
        "single" => {
            let next = Arc::new(AtomicUsize::new(0));
            let mut producers = Vec::new();
            for _ in 0..50 {
                let (publisher, next) = (publisher.clone(), Arc::clone(&next));
                producers.push(tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < tasks {
                        let task = Task::new(&Ping { sent_us: now_us() })?;
                        publisher.publish(&task).await?;
                    }
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                }));
            }
            for producer in producers {
                producer.await?.map_err(|e| e.to_string())?;
            }
        }
        "batch" => {
            let mut done = 0;
            while done < tasks {
                let n = (tasks - done).min(1000);
                let sent_us = now_us();
                let batch = (0..n)
                    .map(|_| Task::new(&Ping { sent_us }))
                    .collect::<Result<Vec<_>, _>>()?;
                publisher.publish_batch(&batch).await?;
                done += n;
            }
        }
        other => {
            return Err(format!("BENCH_PRODUCE must be single or batch, not {other:?}").into());
        }
    }
    Ok(())
}
