//! Entries run in tasks that outlive them: one after another, they share one task.

use std::sync::{Arc, Mutex};

use simplebank_core::testing::TestRedis;
use simplebank_queue::{Handler, HandlerError, Handlers, TaskContext};

use crate::helpers::{Noop, RunningWorker, publish_noops, settings, wait_until_drained};

/// Records the tokio task each entry runs in.
#[derive(Clone, Default)]
struct TaskIds(Arc<Mutex<Vec<tokio::task::Id>>>);

impl Handler<Noop> for TaskIds {
    async fn handle(&self, _payload: Noop, _task: TaskContext) -> Result<(), HandlerError> {
        self.0.lock().expect("lock").push(tokio::task::id());
        Ok(())
    }
}

#[tokio::test]
async fn entries_one_after_another_run_in_one_task() {
    let redis = TestRedis::new();
    let ids = TaskIds::default();
    let mut one_at_a_time = settings("runners");
    one_at_a_time.concurrency = 1;
    let worker = RunningWorker::start(
        &redis,
        one_at_a_time,
        Handlers::new().on::<Noop>(ids.clone()),
    );
    for _ in 0..10 {
        publish_noops(&redis, 1).await;
        // Run and acknowledged. Its runner waits for the next entry by the time that entry is
        // read: the ack's reply woke the runner before Redis answered this check, and the
        // publish and the worker's read take round trips more, while the runner needs none.
        wait_until_drained(&redis, "default").await;
    }
    worker.stop().await; // returns only once the waiting runner has ended
    let mut ids = ids.0.lock().expect("lock").clone();
    assert_eq!(ids.len(), 10);
    ids.dedup();
    assert_eq!(ids.len(), 1, "a task per entry, not a runner: {ids:?}");
}
