//! Several workers in one consumer group; takeover of entries a consumer left pending.

use std::{sync::Arc, time::Duration};

use simplebank_core::testing::TestRedis;
use simplebank_queue::{GROUP, Handler, HandlerError, Handlers, QueueName, TaskContext};

use crate::helpers::{
    Noop, Recorder, RunningWorker, ensure_group, publish_noops, scheduled_count, settings,
    stream_state, wait_for_runs, wait_until_drained,
};

#[tokio::test]
async fn two_workers_process_each_of_1000_tasks_exactly_once() {
    let redis = TestRedis::new();
    let recorder = Recorder::new().with_delay(Duration::from_millis(1));
    let workers: Vec<RunningWorker> = ["w1", "w2"]
        .into_iter()
        .map(|name| {
            RunningWorker::start(
                &redis,
                settings(name),
                Handlers::new().on::<Noop>(recorder.for_consumer(name)),
            )
        })
        .collect();
    let ids = publish_noops(&redis, 1000).await;

    wait_for_runs(&recorder, 1000, true).await;
    // Let acks land, then check nothing ran twice and nothing is left.
    wait_until_drained(&redis, "default").await;
    for worker in workers {
        worker.stop().await;
    }

    let runs = recorder.runs.lock().expect("lock").clone();
    assert_eq!(runs.len(), 1000);
    for id in &ids {
        assert_eq!(
            runs.get(id).map(Vec::len),
            Some(1),
            "task {id} ran {:?}",
            runs.get(id)
        );
    }
    let by_w1 = runs.values().filter(|c| c[0] == "w1").count();
    let by_w2 = runs.values().filter(|c| c[0] == "w2").count();
    assert_eq!(by_w1 + by_w2, 1000);
    assert!(
        by_w1 > 0 && by_w2 > 0,
        "both consumers worked: w1={by_w1} w2={by_w2}"
    );
}

#[tokio::test]
async fn an_entry_left_pending_by_a_vanished_consumer_is_taken_over() {
    let redis = TestRedis::new();
    let recorder = Recorder::new();
    let mut worker_settings = settings("survivor");
    worker_settings.visibility_timeout = Duration::from_millis(300);

    // The group exists; a consumer reads the entry and vanishes without acking.
    let queue = QueueName::parse("default").expect("queue");
    let stream = redis.keys().stream(&queue);
    ensure_group(&redis, &queue).await;
    let mut conn = redis.conn().await;
    let ids = publish_noops(&redis, 1).await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("ghost")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("ghost reads");
    assert_eq!(
        stream_state(&redis, "default").await,
        (1, 1),
        "pending with the ghost"
    );

    let worker = RunningWorker::start(
        &redis,
        worker_settings,
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    wait_for_runs(&recorder, 1, false).await;
    wait_until_drained(&redis, "default").await;
    worker.stop().await;
    assert_eq!(recorder.runs.lock().expect("lock")[&ids[0]].len(), 1);
}

#[tokio::test]
async fn a_failed_or_panicking_attempt_is_retried() {
    let redis = TestRedis::new();
    // First run panics, second fails, third succeeds.
    let recorder = Recorder::new().with_behaviour(Arc::new(|seen_before| match seen_before {
        0 => panic!("handler bug"),
        1 => Err("transient failure"),
        _ => Ok(()),
    }));
    let worker = RunningWorker::start(
        &redis,
        settings("flaky"),
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    let ids = publish_noops(&redis, 1).await;

    wait_for_runs(&recorder, 3, false).await;
    wait_until_drained(&redis, "default").await;
    assert_eq!(scheduled_count(&redis).await, 0, "no retry left scheduled");
    assert_eq!(recorder.runs.lock().expect("lock")[&ids[0]].len(), 3);

    // The worker survived the panic: it still processes new tasks.
    let more = publish_noops(&redis, 5).await;
    wait_for_runs(&recorder, 6, true).await;
    assert!(
        more.iter()
            .all(|id| recorder.runs.lock().expect("lock").contains_key(id))
    );
    worker.stop().await;
}

/// Counts handlers running at once and remembers the most.
#[derive(Clone, Default)]
struct Gauge {
    running: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
    done: Arc<std::sync::atomic::AtomicUsize>,
}

impl Handler<Noop> for Gauge {
    async fn handle(&self, _payload: Noop, _task: TaskContext) -> Result<(), HandlerError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(3)).await;
        self.running.fetch_sub(1, SeqCst);
        self.done.fetch_add(1, SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn never_more_handlers_run_at_once_than_the_concurrency() {
    use std::sync::atomic::Ordering::SeqCst;
    let redis = TestRedis::new();
    let gauge = Gauge::default();
    let mut worker_settings = settings("w1");
    worker_settings.concurrency = 7;
    let worker = RunningWorker::start(
        &redis,
        worker_settings,
        Handlers::new().on::<Noop>(gauge.clone()),
    );
    publish_noops(&redis, 400).await;
    simplebank_core::testing::eventually("400 tasks ran", Duration::from_secs(20), || {
        let done = gauge.done.load(SeqCst);
        async move { done == 400 }
    })
    .await;
    wait_until_drained(&redis, "default").await;
    worker.stop().await;
    let most = gauge.most.load(SeqCst);
    assert!(most <= 7, "{most} handlers ran at once with concurrency 7");
    assert!(most >= 4, "only {most} at once: the slots were not used");
}
