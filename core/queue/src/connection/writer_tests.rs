use std::time::Duration;

use super::*;
use crate::testing::RedisServer;

impl Writer {
    /// [`Writer::query_packed`] for `cmd`.
    async fn query(&self, cmd: &redis::Cmd) -> RedisResult<Value> {
        self.query_packed(cmd.get_packed_command()).await
    }
}

/// A server of the test's own on a free port: `serve` gets its first connection once the
/// first command has arrived.
async fn serve_once<F, Fut>(serve: F) -> u16
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 64];
        let _ = socket.read(&mut request).await;
        serve(socket).await;
    });
    port
}

/// Waits until the writer's connection task has ended.
async fn task_ends(writer: &Writer) {
    crate::testing::eventually("the task ends", Duration::from_secs(10), || {
        let ended = (writer.current.lock().unwrap().as_ref()).is_some_and(|task| task.is_closed());
        async move { ended }
    })
    .await;
}

/// The error of a PING that must fail, and end within 30 s (`ends`: why it does).
async fn failed_ping(writer: &Writer, ends: &str) -> redis::RedisError {
    tokio::time::timeout(Duration::from_secs(30), writer.query(&redis::cmd("PING")))
        .await
        .expect(ends)
        .unwrap_err()
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
            // Some long enough to come in pieces, across reads and across replies.
            let text = if i % 10 == 0 {
                format!("{i}:{}", "x".repeat(i * 53))
            } else {
                i.to_string()
            };
            let reply = writer.query(redis::cmd("ECHO").arg(&text)).await.unwrap();
            assert_eq!(reply, Value::BulkString(text.into_bytes()));
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
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let writer = std::sync::Arc::clone(&writer);
        tasks.spawn(async move { writer.query(&redis::cmd("PING")).await });
    }
    // Without the deadline they would wait for the server as long as it is stopped.
    let failed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(done) = tasks.join_next().await {
            let err = done.unwrap().unwrap_err();
            assert!(err.is_timeout(), "{err}");
        }
    })
    .await;
    server.resume();
    failed.expect("the commands failed while the server was stopped");
    // The hung connection was dropped: a new one answers.
    let reply = writer.query(&redis::cmd("PING")).await.unwrap();
    assert_eq!(reply, Value::SimpleString("PONG".into()));
}

/// A command from another runtime than the one its connection's task runs on, while that one
/// is not running (a current-thread runtime between two `block_on`s), ends at its deadline
/// (ARCHITECTURE.md, "Publishing"); once that runtime is gone, the next command gets a task
/// (and a connection) on the caller's.
#[test]
fn a_task_on_a_runtime_not_running_fails_the_command_at_its_deadline() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let (first, second) = (runtime(), runtime());
    let server = second.block_on(RedisServer::start());
    let writer = writer(&server.address(), Duration::from_millis(300));
    let ping = redis::cmd("PING");
    let ping = || writer.query(&ping);
    first.block_on(ping()).unwrap();
    let failed =
        second.block_on(async { tokio::time::timeout(Duration::from_secs(30), ping()).await });
    let err = failed
        .expect("the command ends at its deadline")
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    drop(first);
    let reply = second.block_on(ping()).unwrap();
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
    // The task sees the close while idle and ends, so the command goes out on a new
    // connection.
    task_ends(&writer).await;
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
    let err = failed_ping(&writer, "connecting gives up").await;
    assert!(err.is_connection_refusal(), "{err}");
}

/// Publishers get the writer on one server over plain TCP only.
#[tokio::test]
async fn tls_cluster_and_unix_sockets_keep_the_redis_crate() {
    use crate::connection::{Endpoint, Tls};
    let writer_of = |address: &str, cluster: bool| {
        let endpoint = Endpoint::parse(address, cluster, &Tls::default()).unwrap();
        let conn = endpoint.connect_lazy(Duration::from_secs(1)).unwrap();
        conn.writer().is_some()
    };
    assert!(writer_of("127.0.0.1:1", false));
    assert!(!writer_of("rediss://127.0.0.1:1", false));
    assert!(!writer_of("redis+unix:///tmp/redis.sock", false));
    assert!(!writer_of("127.0.0.1:1,127.0.0.1:2", true));
}

/// A server of the test's own that announces a reply without end and keeps sending its
/// elements: the command fails at its deadline, and the buffered bytes go with the connection.
#[tokio::test]
async fn a_reply_that_never_ends_fails_at_the_deadline() {
    use tokio::io::AsyncWriteExt;
    let port = serve_once(|mut socket| async move {
        let _ = socket.write_all(b"*999999999\r\n").await;
        let chunk = b":1\r\n".repeat(16 * 1024);
        while socket.write_all(&chunk).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let writer = writer(&format!("127.0.0.1:{port}"), Duration::from_millis(300));
    let err = failed_ping(&writer, "the deadline ends it").await;
    assert!(err.is_timeout(), "{err}");
}

/// Bytes a server sends with no command in flight end the connection at once: they would be
/// taken for the next command's reply, and no deadline bounds them meanwhile.
#[tokio::test]
async fn bytes_sent_unasked_end_the_connection() {
    use tokio::io::AsyncWriteExt;
    let port = serve_once(|mut socket| async move {
        let _ = socket.write_all(b"+PONG\r\n").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = socket.write_all(b"$5\r\nab").await;
        // Kept open: only the writer can end it.
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let writer = writer(&format!("127.0.0.1:{port}"), Duration::from_secs(5));
    let reply = writer.query(&redis::cmd("PING")).await.unwrap();
    assert_eq!(reply, Value::SimpleString("PONG".into()));
    task_ends(&writer).await;
}
