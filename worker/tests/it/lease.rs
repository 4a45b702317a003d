//! Leases: a task running longer than the visibility timeout keeps renewing its lease, so the
//! other worker of the group does not take it over; a renewal waiting on a hung Redis does not
//! hold up the handler.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use simplebank_core::{
    task::{Task, TaskPayload},
    testing::{RedisServer, TestRedis, eventually},
};
use simplebank_worker::{Handler, HandlerError, Handlers, handler::BoxFuture};

use crate::helpers::{
    Noop, Recorder, RunningWorker, publish_noops, settings, wait_for_runs, wait_until_drained,
};

#[tokio::test]
async fn a_long_task_renews_its_lease_and_is_not_taken_over() {
    let redis = TestRedis::new();
    let recorder = Recorder::new().with_delay(Duration::from_millis(1500));
    let workers: Vec<RunningWorker> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let mut worker_settings = settings(name);
            worker_settings.visibility_timeout = Duration::from_millis(300);
            RunningWorker::start(
                &redis,
                worker_settings,
                Handlers::new().with(Noop::TYPE, recorder.for_consumer(name)),
            )
        })
        .collect();
    let ids = publish_noops(&redis, 1).await;

    wait_for_runs(&recorder, 1, false).await;
    wait_until_drained(&redis, "default").await;
    // Five visibility timeouts have passed while it ran; give a takeover time to show.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for worker in workers {
        worker.stop().await;
    }
    let runs = recorder.runs.lock().expect("lock")[&ids[0]].clone();
    assert_eq!(runs.len(), 1, "ran once, by {runs:?}");
}

/// Counts the steps of a handler that works in small sleeps, never touching Redis.
struct Stepper {
    steps: Arc<AtomicUsize>,
}

const STEPS: usize = 10;

impl Handler for Stepper {
    fn handle<'a>(&'a self, _task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            for _ in 0..STEPS {
                self.steps.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_hung_redis_does_not_stop_a_running_handler_while_its_lease_is_renewed() {
    let server = RedisServer::start().await;
    let redis = TestRedis::at(server.address());
    let steps = Arc::new(AtomicUsize::new(0));
    let mut worker_settings = settings("a");
    // Renewals every 100 ms: the 500 ms handler spans several, all while Redis is stopped.
    worker_settings.visibility_timeout = Duration::from_millis(300);
    let worker = RunningWorker::start(
        &redis,
        worker_settings,
        Handlers::new().with(
            Noop::TYPE,
            Stepper {
                steps: Arc::clone(&steps),
            },
        ),
    );
    publish_noops(&redis, 1).await;
    eventually("the handler started", Duration::from_secs(30), || {
        let started = steps.load(Ordering::SeqCst) > 0;
        async move { started }
    })
    .await;
    server.pause();
    // Each renewal waits up to the response timeout on the stopped Redis; a handler only polled
    // between renewals would need many seconds per step, far past this generous deadline.
    let finished = tokio::time::timeout(Duration::from_secs(5), async {
        while steps.load(Ordering::SeqCst) < STEPS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let seen = steps.load(Ordering::SeqCst);
    server.resume();
    assert!(
        finished.is_ok(),
        "the handler made {seen} of {STEPS} steps while Redis was stopped"
    );
    wait_until_drained(&redis, "default").await;
    worker.stop().await;
}
