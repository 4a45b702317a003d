//! Reclaiming: the crash-loop cap holds even when the delivery counts cannot be read.

use std::time::Duration;

use simplebank_core::{
    redis_client,
    testing::{RedisServer, TestRedis, eventually},
};
use simplebank_queue::{DeadLetters, GROUP, Handlers, QueueName, Task};

use crate::helpers::{
    Noop, Recorder, RunningWorker, ensure_group, publisher, settings, wait_until_drained,
};

/// The delivery count of `entry_id` in `stream` (any consumer).
async fn delivery_count(redis: &TestRedis, stream: &str, entry_id: &str) -> u64 {
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .arg(entry_id)
        .arg(entry_id)
        .arg(1)
        .query_async(&mut redis.conn().await)
        .await
        .expect("XPENDING as the default user");
    pending.first().map_or(0, |(_, _, _, count)| *count)
}

#[tokio::test]
async fn an_entry_whose_delivery_count_cannot_be_read_is_not_run_past_max_retry() {
    // A private server with a user that may do everything but XPENDING.
    let server = RedisServer::start().await;
    let admin = TestRedis::at(server.address());
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "no-xpending",
            "on",
            ">secret",
            "~*",
            "&*",
            "+@all",
            "-xpending",
        ])
        .query_async(&mut admin.conn().await)
        .await
        .expect("ACL SETUSER");
    let limited = TestRedis {
        address: format!("redis://no-xpending:secret@127.0.0.1:{}", server.port),
        namespace: admin.namespace.clone(),
    };

    // A task (max_retry 2) that crashed its consumer again and again: delivered 4 times.
    let queue = QueueName::parse("default").expect("queue");
    let stream = admin.keys().stream(&queue);
    ensure_group(&admin, &queue).await;
    let task = Task::new(&Noop { n: 1 }).expect("task").with_max_retry(2);
    publisher(&admin).publish(&task).await.expect("publish");
    let mut conn = admin.conn().await;
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP", GROUP, "crasher", "COUNT", "1", "STREAMS", &stream, ">",
        ])
        .query_async(&mut conn)
        .await
        .expect("read");
    let entry_id = reply.keys[0].ids[0].id.clone();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&stream)
        .arg(GROUP)
        .arg("crasher")
        .arg(0)
        .arg(&entry_id)
        .arg(&["RETRYCOUNT", "4", "JUSTID"])
        .query_async(&mut conn)
        .await
        .expect("set the delivery count");

    // A worker that cannot run XPENDING takes it over again and again, and never runs it.
    let recorder = Recorder::new();
    let mut worker_settings = settings("blind");
    worker_settings.visibility_timeout = Duration::from_millis(300);
    let worker = RunningWorker::start(
        &limited,
        worker_settings.clone(),
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    eventually(
        "the entry was taken over three times (or run)",
        Duration::from_secs(30),
        || {
            let (admin, stream, entry_id, recorder) = (&admin, &stream, &entry_id, &recorder);
            async move {
                recorder.total_runs() > 0 || delivery_count(admin, stream, entry_id).await >= 7
            }
        },
    )
    .await;
    worker.stop().await;
    assert_eq!(
        recorder.total_runs(),
        0,
        "run although its count was unknown"
    );

    // Once the count can be read, the cap applies: dead-lettered, never run.
    worker_settings.consumer_name = "sighted".into();
    let worker = RunningWorker::start(
        &admin,
        worker_settings,
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    wait_until_drained(&admin, "default").await;
    worker.stop().await;
    let dead_conn =
        redis_client::lazy_manager(admin.client(), redis_client::RESPONSE_TIMEOUT).expect("conn");
    let dead = DeadLetters::new(dead_conn, admin.keys())
        .list(&QueueName::parse("default").expect("queue"), 10)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert!(dead[0].error.starts_with("delivered "), "{}", dead[0].error);
    assert_eq!(recorder.total_runs(), 0, "never run");
}
