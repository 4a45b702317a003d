//! The outbox: sign-up works while Redis is down, and the task is delivered once it is back.

use std::time::Duration;

use simplebank_core::testing::{RedisServer, TestDb, TestRedis, free_port};
use tonic::Code;

use crate::helpers::{
    TestServer, TestWorker, common_config, count, request, wait_for_verification,
};

#[tokio::test]
async fn sign_up_succeeds_while_redis_is_down_and_the_relay_delivers_later() {
    let db = TestDb::create().await;
    let mut redis_server = RedisServer::stopped(free_port(), &[]);
    let redis = TestRedis::at(redis_server.address());
    let common = common_config(db.url.clone(), &redis);
    let mut server = TestServer::start(common.clone()).await;

    server
        .client
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("CreateUser succeeds with Redis down");
    assert_eq!(count(&db.store, "SELECT count(*) FROM users").await, 1);

    // A failed insert (duplicate) adds no outbox row.
    let status = server
        .client
        .create_user(request("alice", "alice-again@example.com"))
        .await
        .expect_err("duplicate");
    assert_eq!(status.code(), Code::AlreadyExists);

    // Give the publish-after-commit and a few relay rounds time to fail: the task stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.store.outbox_len().await.expect("outbox"), 1);
    let task: serde_json::Value = sqlx::query_scalar("SELECT task FROM task_outbox")
        .fetch_one(db.store.pool())
        .await
        .expect("outbox row");
    assert_eq!(task["type"], "task:send_verify_email");
    assert_eq!(task["payload"], r#"{"username":"alice"}"#);

    // Redis comes up: the relay publishes, a worker processes, the outbox empties.
    redis_server.restart().await;
    let worker = TestWorker::start(common);
    wait_for_verification(&db, &worker, "alice").await;
    assert_eq!(db.store.outbox_len().await.expect("outbox"), 0);

    worker.stop().await;
    server.stop().await.expect("clean stop");
}
