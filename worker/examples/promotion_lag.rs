//! Benchmark: delayed-task promotion lag. Schedules `BENCH_TASKS` (10,000) no-op tasks due
//! evenly over `BENCH_SPREAD` (10 s), starting 2 s from now, runs `BENCH_PROMOTERS` (2)
//! in-process workers (each with its promoter), and reports how late each task's handler
//! started after its due time (Redis' clock and this machine's are the same clock here).
//!
//! Run with `make bench` (release build, against REDIS_ADDRESS, in a namespace of its own
//! that it deletes afterwards).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use simplebank_core::{
    config::{self, CommonConfig},
    redis_client,
};
use simplebank_queue::{
    ConsumerSettings, Enqueued, Handler, HandlerError, Handlers, Keys, Namespace, Publisher, Task,
    TaskContext, TaskPayload, Worker,
};

use tokio_util::sync::CancellationToken;

#[derive(serde::Serialize, serde::Deserialize)]
struct Tick {
    n: u32,
}

impl TaskPayload for Tick {
    const TYPE: &'static str = "bench:tick";
}

#[derive(Clone, Default)]
struct Lateness {
    due: Arc<Mutex<HashMap<String, i64>>>,
    late: Arc<Mutex<Vec<i64>>>,
}

impl Handler<Tick> for Lateness {
    async fn handle(&self, _tick: Tick, task: TaskContext) -> Result<(), HandlerError> {
        let now = now_ms();
        let due = self.due.lock().expect("lock").get(task.id()).copied();
        if let Some(due) = due {
            self.late.lock().expect("lock").push(now - due);
        }
        Ok(())
    }
}

/// Now, in ms since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let common = CommonConfig::from_env()?;
    let tasks: u32 = config::parse_or("BENCH_TASKS", 10_000)?;
    let spread = config::duration_or("BENCH_SPREAD", Duration::from_secs(10))?;
    let promoters: usize = config::parse_or("BENCH_PROMOTERS", 2)?;
    let namespace = Namespace::parse(&format!("bench-{}", std::process::id()))?;
    let keys = Keys::new(namespace.clone());
    let endpoint = common.redis_endpoint()?;
    let publisher = Publisher::new(
        endpoint.connect_lazy(redis_client::RESPONSE_TIMEOUT)?,
        keys.clone(),
    );

    let recorder = Lateness::default();
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for i in 0..promoters {
        let mut settings = ConsumerSettings::new(format!("bench-{i}"));
        settings.concurrency = 100;
        let worker = Worker::with_endpoint(
            endpoint.clone(),
            namespace.clone(),
            settings,
            Handlers::new().on::<Tick>(recorder.clone()),
        )?;
        workers.push(tokio::spawn(worker.run(stop.clone())));
    }

    let start = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    let step = spread / tasks.max(1);
    for n in 0..tasks {
        let task = Task::new(&Tick { n })?.with_process_at(start + step * n);
        let id = task.id().to_owned();
        match publisher.publish(&task).await? {
            Enqueued::Scheduled { due_ms } => {
                recorder.due.lock().expect("lock").insert(id, due_ms);
            }
            other => return Err(format!("task {n} was not scheduled: {other:?}").into()),
        }
    }
    let expected = usize::try_from(tasks)?;
    let deadline = std::time::Instant::now() + spread + Duration::from_secs(30);
    while recorder.late.lock().expect("lock").len() < expected {
        if std::time::Instant::now() > deadline {
            return Err("timed out waiting for the tasks".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for worker in workers {
        worker.await??;
    }

    let mut late = recorder.late.lock().expect("lock").clone();
    late.sort_unstable();
    let early = late.iter().filter(|l| **l < 0).count();
    println!(
        "promotion lag: {tasks} tasks due over {spread:?}, {promoters} promoters: \
         p50 {} ms, p99 {} ms, max {} ms, early {early}",
        percentile(&late, 50.0),
        percentile(&late, 99.0),
        late.last().copied().unwrap_or_default(),
    );

    let mut conn = endpoint.connect_lazy(redis_client::RESPONSE_TIMEOUT)?;
    for pattern in keys.patterns() {
        let leftovers: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await?;
        if !leftovers.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(leftovers)
                .query_async(&mut conn)
                .await?;
        }
    }
    if early > 0 {
        return Err(format!("{early} tasks started before their due time").into());
    }
    Ok(())
}
