//! Redis Cluster and replica acknowledgement, end to end:
//! - the server and worker binaries on a private cluster (three primaries, a replica each):
//!   a sign-up's email goes out, and sign-in throttling counts there too;
//! - `REDIS_WAIT_REPLICAS=1` on one primary with one replica: a publish the replica did not
//!   acknowledge (the replica stopped) leaves the outbox row for the relay, which publishes it
//!   once the replica is back, and the task is on the stream once.

use std::{process::Stdio, time::Duration};

use simplebank_core::testing::{
    RedisCluster, RedisServer, TestDb, TestRedis, eventually, free_port, stop_gracefully,
};
use simplebank_queue::{Keys, QueueName, ReplicaWait};
use simplebank_server::pb::LoginUserRequest;

use crate::helpers::{TestServer, common_config, connect_when_up, count, request};

fn binary(name: &str) -> std::path::PathBuf {
    let server = std::path::PathBuf::from(env!("CARGO_BIN_EXE_simplebank-server"));
    let binary = server.with_file_name(name);
    assert!(
        binary.exists(),
        "build it first: cargo build --workspace --bins"
    );
    binary
}

#[tokio::test]
async fn sign_up_and_sign_in_throttling_work_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let queues: Vec<QueueName> = simplebank_queue::DEFAULT_QUEUES
        .iter()
        .map(|q| QueueName::parse(q).unwrap())
        .collect();
    let namespace = cluster.spread_namespace(&queues).await;
    let db = TestDb::create().await;
    // A cluster node named without REDIS_CLUSTER is refused at start, naming it.
    let one_node = cluster.nodes[0].address();
    refused_at_start(&db, &[("REDIS_ADDRESS", &one_node)], "REDIS_CLUSTER").await;
    let mail = tempdir();
    let address = format!("127.0.0.1:{}", free_port());
    let common = |command: &mut tokio::process::Command| {
        command
            .env("DB_SOURCE", db.url.expose())
            .env("REDIS_CLUSTER", "true")
            .env("REDIS_ADDRESS", cluster.seeds())
            .env("REDIS_NAMESPACE", namespace.as_str())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
    };
    let mut server = tokio::process::Command::new(binary("simplebank-server"));
    common(&mut server);
    let mut server = server
        .env("GRPC_SERVER_ADDRESS", &address)
        .env("LOGIN_MAX_FAILURES_PER_USERNAME", "2")
        .spawn()
        .expect("start the server");
    let mut worker = tokio::process::Command::new(binary("simplebank-worker"));
    common(&mut worker);
    let mut worker = worker
        .env("EMAIL_MAILER", "file")
        .env("EMAIL_FILE_DIR", &mail)
        .env("WORKER_CONSUMER_NAME", "cluster-worker")
        .spawn()
        .expect("start the worker");

    let mut client = connect_when_up(&address).await;
    client
        .create_user(request("cluster_alice", "alice@example.com"))
        .await
        .expect("CreateUser");
    let store = db.store.clone();
    eventually(
        "the worker sent the verification email",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move {
                store
                    .verify_emails_of("cluster_alice")
                    .await
                    .map(|rows| rows.len() == 1 && rows[0].email_sent_at.is_some())
                    .unwrap_or(false)
            }
        },
    )
    .await;
    assert_eq!(
        std::fs::read_dir(&mail).unwrap().count(),
        1,
        "one email written"
    );
    assert_eq!(
        count(&db.store, "SELECT count(*) FROM task_outbox").await,
        0
    );

    // Two wrong passwords, then the third attempt is throttled: the throttle's script runs
    // on the namespace's slot.
    let login = || LoginUserRequest {
        username: "cluster_alice".into(),
        password: "not-the-password".into(),
    };
    for _ in 0..2 {
        let refused = client.login_user(login()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
    let throttled = client.login_user(login()).await.unwrap_err();
    assert_eq!(throttled.code(), tonic::Code::ResourceExhausted);

    stop_gracefully(&mut server).await;
    stop_gracefully(&mut worker).await;
    let _ = std::fs::remove_dir_all(&mail);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("simplebank-mail-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("mail folder");
    dir
}

/// Whether the replica on `replica` has synced with its primary.
async fn synced(replica: &TestRedis) -> bool {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut replica.conn().await)
        .await
        .unwrap_or_default();
    info.contains("master_link_status:up")
}

#[tokio::test]
async fn a_publish_no_replica_acknowledged_stays_in_the_outbox_until_one_does() {
    let primary = RedisServer::start().await;
    let replica_server = RedisServer::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &primary.port.to_string(),
        "--repl-diskless-sync-delay",
        "0",
    ])
    .await;
    let redis = TestRedis::at(primary.address());
    let replica = TestRedis::at(replica_server.address());
    eventually("the replica synced", Duration::from_secs(20), || {
        synced(&replica)
    })
    .await;
    let db = TestDb::create().await;
    let mut common = common_config(db.url.clone(), &redis);
    common.redis_wait = ReplicaWait::new(1, Duration::from_millis(200));
    let mut server = TestServer::start(common).await;
    let keys = Keys::new(redis.namespace.clone());
    let critical = QueueName::parse("critical").unwrap();
    let stream_length = || async {
        redis::cmd("XLEN")
            .arg(keys.stream(&critical))
            .query_async::<u64>(&mut redis.conn().await)
            .await
            .unwrap()
    };
    let outbox = || count(&db.store, "SELECT count(*) FROM task_outbox");

    // With the replica up, the publish is acknowledged and the row goes.
    server
        .client
        .create_user(request("replicated", "r1@example.com"))
        .await
        .unwrap();
    eventually(
        "published and acknowledged",
        Duration::from_secs(10),
        || async { outbox().await == 0 && stream_length().await == 1 },
    )
    .await;

    // Replica stopped: the task reaches the primary, but its row stays for the relay.
    replica_server.pause();
    server
        .client
        .create_user(request("unacknowledged", "r2@example.com"))
        .await
        .unwrap();
    eventually(
        "on the primary, its publish given up, the row still there",
        Duration::from_secs(10),
        || async {
            let released: i64 =
                sqlx::query_scalar("SELECT count(*) FROM task_outbox WHERE leased_until <= now()")
                    .fetch_one(db.store.pool())
                    .await
                    .unwrap();
            stream_length().await == 2 && released == 1
        },
    )
    .await;
    assert_eq!(outbox().await, 1);

    // Back: the relay publishes it again, the replica acknowledges, the row goes; the task's
    // id lock kept the stream at one entry for it.
    replica_server.resume();
    eventually(
        "relayed once acknowledged",
        Duration::from_secs(20),
        || async { outbox().await == 0 },
    )
    .await;
    assert_eq!(stream_length().await, 2, "the task is on the stream once");
    server.stop().await.unwrap();
    drop(replica);
}

/// The server binary with `vars`: exits 2 with a message naming `var`.
async fn refused_at_start(db: &TestDb, vars: &[(&str, &str)], var: &str) {
    let mut command = tokio::process::Command::new(binary("simplebank-server"));
    command
        .env("DB_SOURCE", db.url.expose())
        .env("GRPC_SERVER_ADDRESS", format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in vars {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("exits within 30 s")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
    assert!(stderr.contains(var), "{vars:?} should name {var}: {stderr}");
}

#[tokio::test]
async fn bad_cluster_and_wait_settings_stop_the_server_naming_the_variable() {
    let db = TestDb::create().await;
    let shared = TestRedis::new();
    let address = shared.address.as_str();
    for (vars, var) in [
        (vec![("REDIS_CLUSTER", "maybe")], "REDIS_CLUSTER"),
        (vec![("REDIS_CLUSTER", "true\r\nx")], "REDIS_CLUSTER"),
        (
            vec![("REDIS_CLUSTER", "true"), ("REDIS_ADDRESS", " , ")],
            "REDIS_ADDRESS",
        ),
        (
            vec![
                ("REDIS_CLUSTER", "true"),
                ("REDIS_ADDRESS", "127.0.0.1:1/3"),
            ],
            "REDIS_ADDRESS",
        ),
        // A plain Redis named as a cluster.
        (
            vec![("REDIS_CLUSTER", "true"), ("REDIS_ADDRESS", address)],
            "REDIS_CLUSTER",
        ),
        (vec![("REDIS_WAIT_REPLICAS", "-1")], "REDIS_WAIT_REPLICAS"),
        (
            vec![("REDIS_WAIT_REPLICAS", "99999999999")],
            "REDIS_WAIT_REPLICAS",
        ),
        (vec![("REDIS_WAIT_TIMEOUT", "0")], "REDIS_WAIT_TIMEOUT"),
        (vec![("REDIS_WAIT_TIMEOUT", "4s")], "REDIS_WAIT_TIMEOUT"),
        (
            vec![("REDIS_WAIT_TIMEOUT", "1s\u{1b}")],
            "REDIS_WAIT_TIMEOUT",
        ),
    ] {
        let mut vars = vars;
        if !vars.iter().any(|(k, _)| *k == "REDIS_ADDRESS") {
            vars.push(("REDIS_ADDRESS", address));
        }
        refused_at_start(&db, &vars, var).await;
    }
}
