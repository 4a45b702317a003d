//! Pausing a queue: its tasks stop being read while another queue keeps draining; resuming
//! drains it; a worker started while it is paused never reads it. Producers still enqueue.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use simplebank_queue::{
    Handlers, QueueName, TaskContext, pause, queue_stats, resume,
    testing::{TestRedis, eventually},
};

use crate::helpers::{Job, Logs, Mode, Running, job, manager, publisher, settings};

/// Which queue each run was of, and when it started.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<(QueueName, Instant)>>>);

impl Runs {
    fn handlers(&self) -> Handlers {
        let runs = self.clone();
        Handlers::new().on(move |_: Job, cx: TaskContext| {
            let runs = runs.clone();
            async move {
                runs.0
                    .lock()
                    .unwrap()
                    .push((cx.queue().clone(), Instant::now()));
                Ok(())
            }
        })
    }

    fn of(&self, queue: &QueueName) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(q, _)| q == queue)
            .count()
    }

    fn last_start(&self, queue: &QueueName) -> Option<Instant> {
        (self.0.lock().unwrap().iter())
            .filter(|(q, _)| q == queue)
            .map(|(_, at)| *at)
            .max()
    }
}

/// Publishes `n` tasks to each of `queues`, numbered from `from`.
async fn feed(redis: &TestRedis, queues: &[&QueueName], from: u32, n: u32) {
    let tasks: Vec<_> = queues
        .iter()
        .flat_map(|q| (from..from + n).map(|i| job(q, i, Mode::Succeed)))
        .collect();
    publisher(redis).publish_batch(&tasks).await.unwrap();
}

async fn wait_for_runs(runs: &Runs, queue: &QueueName, n: usize) {
    eventually(
        &format!("{n} runs of {queue}"),
        Duration::from_secs(20),
        || {
            let runs = runs.clone();
            let queue = queue.clone();
            async move { runs.of(&queue) >= n }
        },
    )
    .await;
}

#[tokio::test]
async fn a_paused_queue_is_not_read_while_another_drains_and_resuming_drains_it() {
    let logs = Logs::capture();
    let redis = TestRedis::new();
    let keys = redis.keys();
    let mut conn = manager(&redis);
    let (a, b) = (
        QueueName::parse("held").unwrap(),
        QueueName::parse("flowing").unwrap(),
    );
    let runs = Runs::default();
    let worker = Running::start(
        &redis,
        settings("p-1", &[(&a, 1), (&b, 1)]),
        runs.handlers(),
    );
    feed(&redis, &[&a, &b], 0, 20).await;
    wait_for_runs(&runs, &a, 20).await;
    wait_for_runs(&runs, &b, 20).await;

    assert!(pause(&mut conn, &keys, &a).await.unwrap(), "it was running");
    let paused_at = Instant::now();
    assert!(
        !pause(&mut conn, &keys, &a).await.unwrap(),
        "already paused"
    );
    // The worker has seen it once it says so; reads sent before may still bring tasks of it,
    // so wait for two batches of the other queue to run after that, then count.
    eventually("the worker sees the pause", Duration::from_secs(10), || {
        let logs = logs.clone();
        async move {
            !logs
                .lines_with(&["queue is paused", "queue=held"])
                .is_empty()
        }
    })
    .await;
    let mut fed = 20;
    for _ in 0..2 {
        feed(&redis, &[&a, &b], fed, 20).await;
        fed += 20;
        wait_for_runs(&runs, &b, fed as usize).await;
    }
    let a_runs = runs.of(&a);
    // From now on nothing of it runs, however long the other queue keeps the worker busy.
    for _ in 0..5 {
        feed(&redis, &[&a, &b], fed, 20).await;
        fed += 20;
        wait_for_runs(&runs, &b, fed as usize).await;
    }
    assert_eq!(runs.of(&a), a_runs, "tasks of the paused queue ran");
    let stats = queue_stats(&mut conn, &keys, &a).await.unwrap();
    assert!(stats.paused);
    assert_eq!(
        stats.pending as usize,
        fed as usize - a_runs,
        "enqueued while paused"
    );
    let last = runs.last_start(&a).unwrap();
    eprintln!(
        "measured: the last task of the paused queue started {:?} after pause() returned",
        last.saturating_duration_since(paused_at)
    );

    assert!(resume(&mut conn, &keys, &a).await.unwrap(), "it was paused");
    assert!(
        !resume(&mut conn, &keys, &a).await.unwrap(),
        "already running"
    );
    wait_for_runs(&runs, &a, fed as usize).await;
    eventually("the queue drained", Duration::from_secs(10), || {
        let (mut conn, keys, a) = (conn.clone(), keys.clone(), a.clone());
        async move {
            let s = queue_stats(&mut conn, &keys, &a).await.unwrap();
            !s.paused && s.pending == 0 && s.active == 0
        }
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_started_while_a_queue_is_paused_never_reads_it() {
    let redis = TestRedis::new();
    let keys = redis.keys();
    let mut conn = manager(&redis);
    let (a, b) = (
        QueueName::parse("frozen").unwrap(),
        QueueName::parse("moving").unwrap(),
    );
    assert!(pause(&mut conn, &keys, &a).await.unwrap());
    feed(&redis, &[&a, &b], 0, 10).await;

    let runs = Runs::default();
    let worker = Running::start(
        &redis,
        settings("p-2", &[(&a, 5), (&b, 1)]),
        runs.handlers(),
    );
    wait_for_runs(&runs, &b, 10).await;
    feed(&redis, &[&a, &b], 10, 10).await;
    wait_for_runs(&runs, &b, 20).await;
    assert_eq!(runs.of(&a), 0, "the paused queue was read");
    worker.stop().await;

    // Still paused after the restart; resumed, a new worker drains it.
    let stats = queue_stats(&mut conn, &keys, &a).await.unwrap();
    assert!(stats.paused);
    assert_eq!((stats.pending, stats.active), (20, 0));
    assert!(resume(&mut conn, &keys, &a).await.unwrap());
    let worker = Running::start(
        &redis,
        settings("p-3", &[(&a, 5), (&b, 1)]),
        runs.handlers(),
    );
    wait_for_runs(&runs, &a, 20).await;
    worker.stop().await;
}
