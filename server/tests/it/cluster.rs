//! Redis Cluster and replica acknowledgement, end to end:
//! - the server and worker binaries on a private cluster (three primaries, a replica each):
//!   a sign-up's email goes out, and sign-in throttling counts there too;
//! - `REDIS_WAIT_REPLICAS=1` on one primary with one replica: a publish the replica did not
//!   acknowledge (the replica stopped) leaves the outbox row for the relay, which publishes it
//!   once the replica is back, and the task is on the stream once;
//! - with the replica missing, the relay's republishes never run the finished task again (its
//!   done marker), and a waiting publish does not make Redis' health read as down.

use std::{process::Stdio, time::Duration};

use simplebank_core::testing::{
    RedisCluster, RedisServer, TestDb, TestRedis, eventually, free_port, stop_gracefully,
};
use simplebank_queue::{Keys, QueueName, ReplicaWait};
use simplebank_server::{health::REDIS_SERVICE, pb::LoginUserRequest};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{
    TestServer, TestWorker, common_config, connect_when_up, count, request, wait_for_verification,
};

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
        // Not the default admin port, which other tests' servers would race for.
        .env("ADMIN_GRPC_ADDRESS", "off")
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
    let (_primary, replica_server, redis) = primary_with_replica().await;
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

/// The replica of a private primary, synced; the primary's address for the test's Redis.
async fn primary_with_replica() -> (RedisServer, RedisServer, TestRedis) {
    let primary = RedisServer::start().await;
    let replica_server = RedisServer::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &primary.port.to_string(),
        "--repl-diskless-sync-delay",
        "0",
    ])
    .await;
    let replica = TestRedis::at(replica_server.address());
    eventually("the replica synced", Duration::from_secs(20), || {
        synced(&replica)
    })
    .await;
    let redis = TestRedis::at(primary.address());
    (primary, replica_server, redis)
}

/// How many `WAIT`s `redis` has run: one per publish of a server with `REDIS_WAIT_REPLICAS`.
async fn waits(redis: &TestRedis) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis.conn().await)
        .await
        .expect("INFO commandstats");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn with_the_replica_missing_a_task_runs_once_however_often_its_row_is_relayed() {
    let (_primary, replica_server, redis) = primary_with_replica().await;
    let db = TestDb::create().await;
    let mut common = common_config(db.url.clone(), &redis);
    common.redis_wait = ReplicaWait::new(1, Duration::from_millis(200));
    let mut server = TestServer::start(common.clone()).await;
    let worker = TestWorker::start(common);
    let keys = Keys::new(redis.namespace.clone());
    let critical = QueueName::parse("critical").unwrap();
    let processed = || async {
        redis::cmd("HGET")
            .arg(keys.stats(&critical))
            .arg("processed")
            .query_async::<Option<u64>>(&mut redis.conn().await)
            .await
            .unwrap()
            .unwrap_or(0)
    };
    let outbox = || count(&db.store, "SELECT count(*) FROM task_outbox");

    // No replica answers: the task reaches the primary and runs, its row stays.
    replica_server.pause();
    server
        .client
        .create_user(request("unreplicated", "u1@example.com"))
        .await
        .unwrap();
    wait_for_verification(&db, &worker, "unreplicated").await;
    eventually("the run counted", Duration::from_secs(10), || async {
        processed().await >= 1
    })
    .await;
    // Five more publishes of the row by the relay (each WAIT comes up short), after the task
    // finished: each finds the task's done marker and adds nothing.
    let before = waits(&redis).await;
    eventually(
        "the relay published the row five more times",
        Duration::from_secs(30),
        || async { waits(&redis).await >= before + 5 },
    )
    .await;
    assert_eq!(outbox().await, 1, "the row waits for a replica");
    assert_eq!(processed().await, 1, "the task ran once");
    assert_eq!(emails(&worker), 1, "one email");

    // The replica back: the next publish is acknowledged, the row goes; still one run.
    replica_server.resume();
    eventually(
        "relayed once acknowledged",
        Duration::from_secs(20),
        || async { outbox().await == 0 },
    )
    .await;
    // Any run a republish had caused would be counted by now: the worker reads every 200 ms.
    wait_until_settled(&redis, &keys, &critical).await;
    assert_eq!(processed().await, 1, "the task ran once");
    assert_eq!(emails(&worker), 1, "one email");
    worker.stop().await;
    server.stop().await.unwrap();
}

fn emails(worker: &TestWorker) -> usize {
    let files = worker.mail.files();
    files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "eml"))
        .count()
}

/// Waits until `queue`'s stream holds no entry (none queued, none running).
async fn wait_until_settled(redis: &TestRedis, keys: &Keys, queue: &QueueName) {
    eventually("the stream is empty", Duration::from_secs(20), || async {
        redis::cmd("XLEN")
            .arg(keys.stream(queue))
            .query_async::<u64>(&mut redis.conn().await)
            .await
            .expect("XLEN")
            == 0
    })
    .await;
}

#[tokio::test]
async fn redis_health_stays_serving_while_a_publish_waits_for_a_missing_replica() {
    // A primary with no replica at all: every WAIT lasts its whole timeout.
    let primary = RedisServer::start().await;
    let redis = TestRedis::at(primary.address());
    let db = TestDb::create().await;
    let mut common = common_config(db.url.clone(), &redis);
    // Longer than the health check's PING timeout (1 s), so a PING behind it would time out.
    common.redis_wait = ReplicaWait::new(1, Duration::from_secs(3));
    let mut server = TestServer::start(common).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    let status = || {
        let mut health = health.clone();
        async move {
            let reply = health
                .check(HealthCheckRequest {
                    service: REDIS_SERVICE.into(),
                })
                .await
                .expect("health check");
            ServingStatus::try_from(reply.into_inner().status).expect("a status")
        }
    };
    eventually("Redis reads as up", Duration::from_secs(10), || async {
        status().await == ServingStatus::Serving
    })
    .await;

    server
        .client
        .create_user(request("waiting", "w1@example.com"))
        .await
        .unwrap();
    // Until the request's publish gives up on its WAIT (its row's lease ended), and through
    // the relay's first publish after it, the checks see Redis up: they do not queue behind
    // a WAIT.
    let before = waits(&redis).await;
    let mut seen = Vec::new();
    loop {
        seen.push(status().await);
        if waits(&redis).await >= before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.iter().all(|s| *s == ServingStatus::Serving),
        "Redis read as down while a publish waited for a replica: {seen:?}"
    );
    assert_eq!(
        count(&db.store, "SELECT count(*) FROM task_outbox").await,
        1,
        "no replica: the row stays"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_server_warns_at_start_when_fewer_replicas_are_connected_than_it_waits_for() {
    let primary = RedisServer::start().await;
    let redis = TestRedis::at(primary.address());
    let db = TestDb::create().await;
    let dir = tempdir();
    let log = dir.join("server.log");
    let address = format!("127.0.0.1:{}", free_port());
    let mut server = tokio::process::Command::new(binary("simplebank-server"))
        .env("DB_SOURCE", db.url.expose())
        .env("REDIS_ADDRESS", &redis.address)
        .env("REDIS_NAMESPACE", redis.namespace.as_str())
        .env("REDIS_WAIT_REPLICAS", "1")
        .env("GRPC_SERVER_ADDRESS", &address)
        // Not the default admin port, which other tests' servers would race for.
        .env("ADMIN_GRPC_ADDRESS", "off")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start the server");
    connect_when_up(&address).await;
    let warning = eventually(
        "a warning naming REDIS_WAIT_REPLICAS",
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|line| line.contains("WARN") && line.contains("REDIS_WAIT_REPLICAS"))
        },
    );
    warning.await;
    let text = std::fs::read_to_string(&log).expect("log");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("REDIS_WAIT_REPLICAS asks"))
        .collect();
    assert_eq!(warnings.len(), 1, "once: {warnings:?}");
    assert!(
        warnings[0].contains("replicas_wanted=1") && warnings[0].contains("replicas_connected=0"),
        "{}",
        warnings[0]
    );
    stop_gracefully(&mut server).await;
    let _ = std::fs::remove_dir_all(&dir);
}
