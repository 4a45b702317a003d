use std::time::{Duration, Instant};

use super::*;
use crate::testing::RedisServer;

impl Writer {
    /// [`Writer::query_packed`] for `cmd`.
    async fn query(&self, cmd: &redis::Cmd) -> RedisResult<Value> {
        self.query_packed(cmd.get_packed_command()).await
    }
}

fn writer(address: &str, timeout: Duration) -> Writer {
    let client = crate::connection::client(address).unwrap();
    Writer::new(&client, timeout).expect("plain TCP to one server")
}

#[tokio::test]
async fn many_commands_in_flight_get_their_own_replies() {
    let server = RedisServer::start().await;
    let writer = std::sync::Arc::new(writer(&server.address(), Duration::from_secs(5)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2_000 {
        let writer = std::sync::Arc::clone(&writer);
        tasks.spawn(async move {
            let reply = writer.query(redis::cmd("ECHO").arg(i)).await.unwrap();
            assert_eq!(reply, Value::BulkString(i.to_string().into_bytes()));
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // One connection carried them all.
    let clients: String = writer
        .query(redis::cmd("CLIENT").arg("LIST"))
        .await
        .map(|v| redis::from_redis_value(v).unwrap())
        .unwrap();
    assert_eq!(clients.lines().count(), 1, "{clients}");
}

#[tokio::test]
async fn an_error_reply_is_the_commands_error_and_the_connection_goes_on() {
    let server = RedisServer::start().await;
    let writer = writer(&server.address(), Duration::from_secs(5));
    writer
        .query(redis::cmd("SET").arg("k").arg("v"))
        .await
        .unwrap();
    let err = writer
        .query(redis::cmd("XADD").arg("k").arg("*").arg("f").arg("v"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"));
    let reply = writer.query(redis::cmd("GET").arg("k")).await.unwrap();
    assert_eq!(reply, Value::BulkString(b"v".to_vec()));
}

#[tokio::test]
async fn a_hung_server_fails_the_commands_in_time_then_a_new_connection_works() {
    let server = RedisServer::start().await;
    let writer = std::sync::Arc::new(writer(&server.address(), Duration::from_millis(500)));
    writer.query(&redis::cmd("PING")).await.unwrap();
    server.pause();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let writer = std::sync::Arc::clone(&writer);
        tasks.spawn(async move { writer.query(&redis::cmd("PING")).await });
    }
    while let Some(done) = tasks.join_next().await {
        let err = done.unwrap().unwrap_err();
        assert!(err.is_timeout(), "{err}");
    }
    let waited = started.elapsed();
    server.resume();
    assert!(waited < Duration::from_secs(3), "failed after {waited:?}");
    // The hung connection was dropped: a new one answers.
    let reply = writer.query(&redis::cmd("PING")).await.unwrap();
    assert_eq!(reply, Value::SimpleString("PONG".into()));
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced_before_the_next_command() {
    let server = RedisServer::start().await;
    let writer = writer(&server.address(), Duration::from_secs(5));
    writer.query(&redis::cmd("PING")).await.unwrap();
    let mut admin = crate::connection::client(&server.address())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    // The task saw the close while idle, so the command goes out on a new connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = writer.query(&redis::cmd("PING")).await.unwrap();
    assert_eq!(reply, Value::SimpleString("PONG".into()));
}

#[tokio::test]
async fn logs_in_and_a_refused_login_is_the_commands_error() {
    let server = RedisServer::start().await;
    server
        .restrict_to("writer", "s3cret", &["~*".into(), "+@all".into()])
        .await;
    let port = server.port;
    let right = writer(
        &format!("redis://writer:s3cret@127.0.0.1:{port}/2"),
        Duration::from_secs(5),
    );
    right
        .query(redis::cmd("SET").arg("k").arg("1"))
        .await
        .unwrap();
    let db: String = right
        .query(redis::cmd("CLIENT").arg("INFO"))
        .await
        .map(|v| redis::from_redis_value(v).unwrap())
        .unwrap();
    assert!(db.contains(" db=2 "), "{db}");
    let wrong = writer(
        &format!("redis://writer:nope@127.0.0.1:{port}"),
        Duration::from_secs(5),
    );
    let err = wrong.query(&redis::cmd("PING")).await.unwrap_err();
    assert_eq!(err.code(), Some("WRONGPASS"), "{err}");
    assert!(!err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn a_server_down_fails_the_command_within_its_timeout() {
    let port = crate::testing::free_port();
    let writer = writer(&format!("127.0.0.1:{port}"), Duration::from_secs(5));
    let started = Instant::now();
    assert!(writer.query(&redis::cmd("PING")).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn tls_cluster_and_unix_sockets_keep_the_redis_crate() {
    for address in ["rediss://127.0.0.1:1", "redis+unix:///tmp/redis.sock"] {
        let client = redis::Client::open(address).unwrap();
        assert!(
            Writer::new(&client, Duration::from_secs(1)).is_none(),
            "{address}"
        );
    }
}
