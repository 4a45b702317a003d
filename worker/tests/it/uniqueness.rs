//! task_id and unique: a duplicate enqueue is refused with the typed error while the first is
//! live; the lock is released when the task finishes, and a republish of the finished task
//! itself is recognised by its done marker.

use std::time::Duration;

use simplebank_core::{
    redis_client,
    testing::{TestRedis, eventually},
};
use simplebank_queue::{DeadLetters, Enqueued, Handlers, PublishError, Task};

use crate::helpers::{
    Noop, Recorder, RunningWorker, publisher, settings, wait_for_runs, wait_until_drained,
};

#[tokio::test]
async fn a_task_id_is_refused_while_its_task_is_live_and_free_after() {
    let redis = TestRedis::new();
    let publisher = publisher(&redis);
    let first = Task::new(&Noop { n: 1 })
        .expect("task")
        .with_task_id("welcome-alice")
        .expect("id");
    assert!(matches!(
        publisher.publish(&first).await,
        Ok(Enqueued::Queued { .. })
    ));

    // The same task again (an outbox republish): accepted, nothing added.
    assert_eq!(
        publisher.publish(&first).await.expect("republish"),
        Enqueued::AlreadyEnqueued
    );

    // Another task with the same id: refused, typed.
    let second = Task::new(&Noop { n: 2 })
        .expect("task")
        .with_task_id("welcome-alice")
        .expect("id");
    match publisher.publish(&second).await {
        Err(PublishError::Conflict { task_id, what }) => {
            assert_eq!(task_id, "welcome-alice");
            assert_eq!(what, "task_id");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Scheduled counts as live too.
    let delayed = Task::new(&Noop { n: 3 })
        .expect("task")
        .with_task_id("later")
        .expect("id")
        .with_process_in(Duration::from_secs(60));
    publisher.publish(&delayed).await.expect("scheduled");
    let again = Task::new(&Noop { n: 4 })
        .expect("task")
        .with_task_id("later")
        .expect("id");
    assert!(matches!(
        publisher.publish(&again).await,
        Err(PublishError::Conflict { .. })
    ));

    // Once processed, the id is free for another task; the finished task itself, published
    // again (an outbox row whose replicas did not acknowledge it), adds nothing: it ran.
    let recorder = Recorder::new();
    let worker = RunningWorker::start(
        &redis,
        settings("u"),
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    wait_for_runs(&recorder, 1, false).await;
    wait_until_drained(&redis, "default").await;
    worker.stop().await;
    assert_eq!(
        publisher
            .publish(&first)
            .await
            .expect("republish after it ran"),
        Enqueued::AlreadyEnqueued
    );
    assert!(matches!(
        publisher.publish(&second).await,
        Ok(Enqueued::Queued { .. })
    ));
}

#[tokio::test]
async fn unique_refuses_the_same_content_for_its_ttl() {
    let redis = TestRedis::new();
    let publisher = publisher(&redis);
    let ttl = Duration::from_millis(500);
    let first = Task::new(&Noop { n: 7 })
        .expect("task")
        .with_unique(ttl)
        .expect("ttl");
    let same = Task::new(&Noop { n: 7 })
        .expect("task")
        .with_unique(ttl)
        .expect("ttl");
    let other = Task::new(&Noop { n: 8 })
        .expect("task")
        .with_unique(ttl)
        .expect("ttl");
    publisher.publish(&first).await.expect("first");
    match publisher.publish(&same).await {
        Err(PublishError::Conflict { what, .. }) => assert_eq!(what, "unique key"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    publisher.publish(&other).await.expect("different payload");
    // After the time-to-live (Redis expires the lock) it is accepted, though no worker ran the
    // first: polled, as Redis' clock decides when.
    simplebank_core::testing::eventually(
        "the lock expired and the same content is accepted",
        Duration::from_secs(30),
        || {
            let (publisher, same) = (publisher.clone(), same.clone());
            async move { publisher.publish(&same).await.is_ok() }
        },
    )
    .await;
}

#[tokio::test]
async fn a_batch_is_enqueued_in_order_and_options_are_honoured() {
    let redis = TestRedis::new();
    let publisher = publisher(&redis);
    let mut tasks: Vec<Task> = (0..2500)
        .map(|n| Task::new(&Noop { n }).expect("task"))
        .collect();
    let outcomes = publisher.publish_batch(&tasks).await.expect("batch");
    assert_eq!(outcomes.len(), 2500);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Enqueued::Queued { .. }))
    );
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(redis.keys().stream(tasks[0].queue()))
        .arg("-")
        .arg("+")
        .query_async(&mut redis.conn().await)
        .await
        .expect("XRANGE");
    let ids: Vec<String> = reply
        .ids
        .iter()
        .filter_map(|e| e.get::<String>("id"))
        .collect();
    let expected: Vec<String> = tasks.iter().map(|t| t.id().to_owned()).collect();
    assert_eq!(ids, expected, "in order");

    // A batch with options goes through the script: the duplicate id is refused.
    tasks.truncate(1);
    let with_id = Task::new(&Noop { n: 1 })
        .expect("task")
        .with_task_id("batch-1")
        .expect("id");
    publisher.publish_batch(&[with_id]).await.expect("first");
    let again = Task::new(&Noop { n: 2 })
        .expect("task")
        .with_task_id("batch-1")
        .expect("id");
    assert!(matches!(
        publisher.publish_batch(&[again]).await,
        Err(PublishError::Conflict { .. })
    ));
}

#[tokio::test]
async fn a_dead_task_with_an_id_is_not_run_again_by_a_republish_but_can_be_requeued() {
    let redis = TestRedis::new();
    let publisher = publisher(&redis);
    let task = Task::new(&Noop { n: 1 })
        .expect("task")
        .with_task_id("doomed")
        .expect("id")
        .with_max_retry(0);
    publisher.publish(&task).await.expect("published");
    let recorder = Recorder::new().with_behaviour(std::sync::Arc::new(|_| Err("always fails")));
    let worker = RunningWorker::start(
        &redis,
        settings("dead-id"),
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    let queue = task.queue().clone();
    let dead = DeadLetters::new(
        redis_client::lazy_manager(redis.client(), redis_client::RESPONSE_TIMEOUT)
            .expect("connection"),
        redis.keys(),
    );
    eventually("dead-lettered", Duration::from_secs(10), || async {
        dead.list(&queue, 10).await.expect("list").len() == 1
    })
    .await;

    // Republished (its outbox row, say): recognised, not run again.
    assert_eq!(
        publisher.publish(&task).await.expect("republish"),
        Enqueued::AlreadyEnqueued
    );
    // An operator's requeue still runs it (the marker does not hold its lock).
    let letter = dead.list(&queue, 10).await.expect("list").remove(0);
    dead.requeue_one(&queue, &letter.entry_id)
        .await
        .expect("requeued");
    wait_for_runs(&recorder, 2, false).await;
    eventually("dead again", Duration::from_secs(10), || async {
        dead.list(&queue, 10).await.expect("list").len() == 1
    })
    .await;
    worker.stop().await;
    assert_eq!(
        recorder.total_runs(),
        2,
        "its first run and the requeued one"
    );
}
