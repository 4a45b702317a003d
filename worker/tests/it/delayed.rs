//! Delayed tasks: with several promoters running, each fires exactly once and never early.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use simplebank_core::testing::TestRedis;
use simplebank_queue::{Enqueued, Handler, HandlerError, Handlers, Task, TaskContext, TaskPayload};

use time::OffsetDateTime;

use crate::helpers::{
    Noop, RunningWorker, now_ms, publisher, scheduled_count, settings, wait_until_drained,
};

/// Records when each task started, in ms since the epoch (this machine's clock, which is also
/// Redis' clock: the server runs here).
#[derive(Clone, Default)]
struct Clock(Arc<Mutex<HashMap<String, Vec<i64>>>>);

impl Handler<Noop> for Clock {
    async fn handle(&self, _payload: Noop, task: TaskContext) -> Result<(), HandlerError> {
        self.0
            .lock()
            .expect("lock")
            .entry(task.id().to_owned())
            .or_default()
            .push(now_ms());
        Ok(())
    }
}

#[tokio::test]
async fn delayed_tasks_fire_exactly_once_and_never_early_with_three_promoters() {
    let redis = TestRedis::new();
    let clock = Clock::default();
    let workers: Vec<RunningWorker> = (0..3)
        .map(|i| {
            RunningWorker::start(
                &redis,
                settings(&format!("promoter-{i}")),
                Handlers::new().on::<Noop>(clock.clone()),
            )
        })
        .collect();

    let publisher = publisher(&redis);
    let mut due = HashMap::new();
    for n in 0..300u32 {
        let delay = Duration::from_millis(u64::from(n % 30) * 40);
        let task = if n % 2 == 0 {
            Task::new(&Noop { n }).expect("task").with_process_in(delay)
        } else {
            let at = OffsetDateTime::now_utc() + delay + Duration::from_millis(50);
            Task::new(&Noop { n }).expect("task").with_process_at(at)
        };
        let before = now_ms();
        let due_ms = match publisher.publish(&task).await.expect("publish") {
            Enqueued::Scheduled { due_ms } => due_ms,
            // A zero delay (or a time already past) is queued at once.
            Enqueued::Queued { .. } => before,
            other => panic!("unexpected {other:?}"),
        };
        due.insert(task.id().to_owned(), due_ms);
    }

    let seen = clock.clone();
    simplebank_core::testing::eventually("all 300 fired", Duration::from_secs(30), || {
        let n = seen.0.lock().expect("lock").len();
        async move { n == 300 }
    })
    .await;
    // Nothing queued, pending or scheduled: no second fire can come. Stopping the workers
    // waits for any run already dispatched.
    wait_until_drained(&redis, Noop::QUEUE).await;
    assert_eq!(scheduled_count(&redis).await, 0);
    for worker in workers {
        worker.stop().await;
    }

    let runs = clock.0.lock().expect("lock").clone();
    for (id, due_ms) in &due {
        let starts = &runs[id];
        assert_eq!(starts.len(), 1, "task {id} fired {} times", starts.len());
        assert!(
            starts[0] >= *due_ms,
            "task {id} started {} ms early",
            due_ms - starts[0]
        );
    }
}

#[tokio::test]
async fn a_time_already_past_is_queued_at_once() {
    let redis = TestRedis::new();
    let task = Task::new(&Noop { n: 1 })
        .expect("task")
        .with_process_at(OffsetDateTime::now_utc() - Duration::from_secs(60));
    let enqueued = publisher(&redis).publish(&task).await.expect("publish");
    assert!(matches!(enqueued, Enqueued::Queued { .. }), "{enqueued:?}");
    assert_eq!(scheduled_count(&redis).await, 0);
}
