//! Weighted priority with all three queues full, and strict mode.

use simplebank_core::testing::TestRedis;
use simplebank_queue::{Handlers, QueueName, Task};

use crate::helpers::{Noop, Recorder, RunningWorker, settings, wait_for_runs, xadd_all};

/// Fills each queue with `per_queue` no-op tasks.
async fn fill(redis: &TestRedis, per_queue: u32) {
    let mut tasks = Vec::new();
    for queue in ["critical", "default", "low"] {
        let queue = QueueName::parse(queue).expect("queue");
        tasks.extend((0..per_queue).map(|n| {
            Task::new(&Noop { n })
                .expect("task")
                .with_queue(queue.clone())
        }));
    }
    xadd_all(redis, tasks).await;
}

async fn first_served(strict: bool, served: usize) -> Vec<String> {
    let redis = TestRedis::new();
    fill(&redis, 600).await;
    let recorder = Recorder::new();
    let mut worker_settings = settings(if strict { "strict" } else { "weighted" });
    worker_settings.concurrency = 1;
    worker_settings.strict_priority = strict;
    let worker = RunningWorker::start(
        &redis,
        worker_settings,
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    wait_for_runs(&recorder, served, false).await;
    worker.stop().await;
    let order = recorder.order.lock().expect("lock").clone();
    order.into_iter().take(served).collect()
}

#[tokio::test]
async fn weighted_priority_serves_6_3_1_and_never_starves_low() {
    let order = first_served(false, 500).await;
    let count = |queue: &str| order.iter().filter(|q| *q == queue).count();
    let (critical, default, low) = (count("critical"), count("default"), count("low"));
    // Tolerance: within 5% of the 500 served (25 tasks) of the 300:150:50 the weights give.
    for (got, want, queue) in [
        (critical, 300, "critical"),
        (default, 150, "default"),
        (low, 50, "low"),
    ] {
        assert!(
            got.abs_diff(want) <= 25,
            "{queue}: served {got}, expected about {want}"
        );
    }
    for (i, window) in order.chunks(20).enumerate() {
        assert!(
            window.iter().any(|q| q == "low"),
            "no low task in window {i}: {window:?}"
        );
    }
}

#[tokio::test]
async fn strict_priority_serves_critical_first() {
    let order = first_served(true, 300).await;
    assert!(order.iter().all(|q| q == "critical"), "{order:?}");
}
