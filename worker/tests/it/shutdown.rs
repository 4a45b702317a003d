//! Graceful shutdown: running tasks finish and are acked; tasks past the shutdown timeout are
//! not acked and stay pending for another worker.

use std::time::Duration;

use simplebank_core::testing::TestRedis;
use simplebank_queue::Handlers;

use crate::helpers::{
    Noop, Recorder, RunningWorker, publish_noops, settings, stream_state, wait_for_runs,
    wait_until_drained,
};

#[tokio::test]
async fn running_tasks_finish_and_are_acked_on_shutdown() {
    let redis = TestRedis::new();
    let recorder = Recorder::new().with_delay(Duration::from_millis(300));
    let worker = RunningWorker::start(
        &redis,
        settings("graceful"),
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    publish_noops(&redis, 3).await;
    wait_for_runs(&recorder, 3, false).await;

    worker.stop().await; // returns only after the running tasks finished
    assert_eq!(
        stream_state(&redis, "default").await,
        (0, 0),
        "all three acked"
    );
}

#[tokio::test]
async fn tasks_past_the_shutdown_timeout_stay_pending_and_unacked() {
    let redis = TestRedis::new();
    let recorder = Recorder::new().with_delay(Duration::from_secs(30));
    let mut stuck_settings = settings("stuck");
    stuck_settings.shutdown_timeout = Duration::from_millis(200);
    let worker = RunningWorker::start(
        &redis,
        stuck_settings,
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    publish_noops(&redis, 2).await;
    wait_for_runs(&recorder, 2, false).await;

    tokio::time::timeout(Duration::from_secs(5), worker.stop())
        .await
        .expect("the worker stops at the shutdown timeout, not when the tasks end");
    assert_eq!(
        stream_state(&redis, "default").await,
        (2, 2),
        "both still pending"
    );

    // Another worker takes them over after the visibility timeout and finishes them.
    let mut takeover = settings("takeover");
    takeover.visibility_timeout = Duration::from_millis(300);
    let finisher = Recorder::new();
    let worker = RunningWorker::start(
        &redis,
        takeover,
        Handlers::new().on::<Noop>(finisher.clone()),
    );
    wait_until_drained(&redis, "default").await;
    assert_eq!(finisher.distinct(), 2);
    worker.stop().await;
}
