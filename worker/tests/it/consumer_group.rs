//! Several workers in one consumer group; takeover of entries a consumer left pending.

use std::{sync::Arc, time::Duration};

use simplebank_core::{
    task::{GROUP, QueueName, TaskPayload},
    testing::{TestRedis, eventually},
};
use simplebank_worker::Handlers;

use crate::helpers::{Noop, Recorder, RunningWorker, publish_noops, settings, stream_state};

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
                Handlers::new().with(Noop::TYPE, recorder.for_consumer(name)),
            )
        })
        .collect();
    let ids = publish_noops(&redis, 1000).await;

    let seen = recorder.clone();
    eventually("1000 tasks processed", Duration::from_secs(60), move || {
        let n = seen.distinct();
        async move { n == 1000 }
    })
    .await;
    // Let acks land, then check nothing ran twice and nothing is left.
    eventually("stream and PEL are empty", Duration::from_secs(10), || {
        let redis = &redis;
        async move { stream_state(redis, "default").await == (0, 0) }
    })
    .await;
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

    // Create the group, then have a consumer read the entry and vanish without acking.
    let starter = RunningWorker::start(
        &redis,
        settings("starter"),
        Handlers::new(), // no handlers: it only creates the group
    );
    let stream = redis
        .keys()
        .stream(&QueueName::parse("default").expect("queue"));
    let mut conn = redis.conn().await;
    simplebank_core::testing::eventually("the group exists", Duration::from_secs(10), || {
        let (stream, mut conn) = (stream.clone(), conn.clone());
        async move {
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async::<redis::Value>(&mut conn)
                .await
                .is_ok()
        }
    })
    .await;
    starter.stop().await;
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
        Handlers::new().with(Noop::TYPE, recorder.clone()),
    );
    let seen = recorder.clone();
    eventually(
        "the survivor ran the ghost's task",
        Duration::from_secs(10),
        move || {
            let n = seen.total_runs();
            async move { n == 1 }
        },
    )
    .await;
    eventually(
        "the entry is acked and deleted",
        Duration::from_secs(10),
        || {
            let redis = &redis;
            async move { stream_state(redis, "default").await == (0, 0) }
        },
    )
    .await;
    worker.stop().await;
    assert_eq!(recorder.runs.lock().expect("lock")[&ids[0]].len(), 1);
}

#[tokio::test]
async fn a_failed_or_panicking_attempt_stays_pending_and_runs_again() {
    let redis = TestRedis::new();
    // First run panics, second fails, third succeeds.
    let recorder = Recorder::new().with_behaviour(Arc::new(|seen_before| match seen_before {
        0 => panic!("handler bug"),
        1 => Err("transient failure"),
        _ => Ok(()),
    }));
    let mut worker_settings = settings("flaky");
    worker_settings.visibility_timeout = Duration::from_millis(200);
    let worker = RunningWorker::start(
        &redis,
        worker_settings,
        Handlers::new().with(Noop::TYPE, recorder.clone()),
    );
    let ids = publish_noops(&redis, 1).await;

    eventually(
        "the task succeeded on its third run",
        Duration::from_secs(15),
        || {
            let redis = &redis;
            async move { stream_state(redis, "default").await == (0, 0) }
        },
    )
    .await;
    assert_eq!(recorder.runs.lock().expect("lock")[&ids[0]].len(), 3);

    // The worker survived the panic: it still processes new tasks.
    let more = publish_noops(&redis, 5).await;
    let seen = recorder.clone();
    eventually(
        "new tasks processed after the panic",
        Duration::from_secs(10),
        move || {
            let n = seen.distinct();
            async move { n == 6 }
        },
    )
    .await;
    assert!(
        more.iter()
            .all(|id| recorder.runs.lock().expect("lock").contains_key(id))
    );
    worker.stop().await;
}
