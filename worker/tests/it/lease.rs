//! Leases: a task running longer than the visibility timeout keeps renewing its lease, so the
//! other worker of the group does not take it over.

use std::time::Duration;

use simplebank_core::{task::TaskPayload, testing::TestRedis};
use simplebank_worker::Handlers;

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
