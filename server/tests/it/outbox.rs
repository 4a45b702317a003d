//! The outbox: sign-up works while Redis is down, and the task is delivered once it is back.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use simplebank_core::testing::{RedisServer, TestDb, TestRedis, eventually, free_port};
use tonic::Code;

use crate::helpers::{
    TestServer, TestWorker, common_config, count, request, stream_entries, wait_for_verification,
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

/// One sign-up while Redis answers, published: the connection and the enqueue script are in
/// place before the test makes Redis hang.
async fn warm_up(server: &mut TestServer, db: &TestDb) {
    server
        .client
        .create_user(request("warm_up", "warm-up@example.com"))
        .await
        .expect("CreateUser with Redis up");
    eventually(
        "the first task is published",
        Duration::from_secs(30),
        || {
            let store = db.store.clone();
            async move { store.outbox_len().await.is_ok_and(|n| n == 0) }
        },
    )
    .await;
}

/// Item 5: a hung Redis (SIGSTOP: connections open, no replies) must not cost sign-ups. The
/// publish after commit waits on Redis; it must hold no database connection while it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ups_all_succeed_while_redis_hangs_and_each_task_is_delivered_once() {
    const CLIENTS: usize = 16;
    const CALLS: usize = 200;
    let db = TestDb::create().await;
    let redis_server = RedisServer::start().await;
    let redis = TestRedis::at(redis_server.address());
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;

    warm_up(&mut server, &db).await;

    redis_server.pause();
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (mut client, next) = (server.client.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= CALLS {
                    return failures;
                }
                let call = request(&format!("user_{i}"), &format!("user-{i}@example.com"));
                if let Err(status) = client.create_user(call).await {
                    failures.push((i, status.code(), status.message().to_owned()));
                }
            }
        }));
    }
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.expect("client task"));
    }
    assert_eq!(
        failures,
        Vec::new(),
        "every sign-up succeeds while Redis hangs"
    );
    let users = count(&db.store, "SELECT count(*) FROM users").await;
    assert_eq!(users, i64::try_from(CALLS + 1).expect("count"));

    // Redis goes on: every task reaches the stream, the outbox empties.
    redis_server.resume();
    eventually("the outbox is empty", Duration::from_secs(60), || {
        let store = db.store.clone();
        async move { store.outbox_len().await.is_ok_and(|n| n == 0) }
    })
    .await;
    let entries = stream_entries(&redis, "critical").await;
    let mut usernames: Vec<String> = entries
        .iter()
        .map(|entry| {
            let payload: serde_json::Value =
                serde_json::from_str(&entry["payload"]).expect("payload is JSON");
            payload["username"].as_str().expect("username").to_owned()
        })
        .collect();
    usernames.sort();
    let mut expected: Vec<String> = sqlx::query_scalar("SELECT username FROM users")
        .fetch_all(db.store.pool())
        .await
        .expect("usernames");
    expected.sort();
    // Exactly one entry per user: none lost, none published twice.
    assert_eq!(usernames, expected);

    server.stop().await.expect("clean stop");
}

/// Item 11: the publish spawned after commit is tracked, so shutdown waits for it (it is
/// bounded by the row's grace). With Redis hung, `run` returns only once that publish gave
/// up and handed its row back to the relay; the task stays in the outbox for the next start.
#[tokio::test]
async fn shutdown_waits_for_the_publish_after_commit_which_leaves_its_row_to_the_relay() {
    let db = TestDb::create().await;
    let redis_server = RedisServer::start().await;
    let redis = TestRedis::at(redis_server.address());
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;
    warm_up(&mut server, &db).await;

    redis_server.pause();
    server
        .client
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("CreateUser with Redis hung");
    server.stop().await.expect("clean stop");

    // The publish had ended when `run` returned: it gave the row back (its lease ended)
    // instead of still waiting on Redis inside its grace.
    let rows: Vec<(String, bool)> =
        sqlx::query_as("SELECT task->>'payload', leased_until <= now() FROM task_outbox")
            .fetch_all(db.store.pool())
            .await
            .expect("outbox rows");
    assert_eq!(rows, vec![(r#"{"username":"alice"}"#.to_owned(), true)]);
    redis_server.resume();
}

/// The lease migration is reversible: `migrate down` removes everything, `migrate up` brings
/// the lease column back.
#[tokio::test]
async fn the_migrations_go_down_and_up_again_with_the_lease_column() {
    let db = TestDb::create().await;
    let migrate = |direction: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_simplebank-server"))
            .args(["migrate", direction])
            .env("DB_SOURCE", db.url.expose())
            .env("RUST_LOG", "warn")
            .output()
    };
    let lease_columns = || async {
        count(
            &db.store,
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_name = 'task_outbox' AND column_name = 'leased_until'",
        )
        .await
    };
    assert_eq!(lease_columns().await, 1);
    let down = migrate("down").await.expect("run migrate down");
    assert!(down.status.success(), "{down:?}");
    assert_eq!(lease_columns().await, 0);
    let up = migrate("up").await.expect("run migrate up");
    assert!(up.status.success(), "{up:?}");
    assert_eq!(lease_columns().await, 1);
}
