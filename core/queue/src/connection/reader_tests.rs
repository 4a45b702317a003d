use std::time::{Duration, Instant};

use redis::Value;

use super::*;
use crate::{connection::Tls, testing::RedisServer};

impl Reader {
    /// [`Reader::query_all`] for one command.
    async fn query(&self, cmd: &redis::Cmd) -> RedisResult<Value> {
        let mut replies = self.query_all(&[cmd], value).await?;
        match replies.pop().ok_or_else(|| protocol("no reply"))? {
            reply @ Value::ServerError(_) => reply.extract_error(),
            reply => Ok(reply),
        }
    }
}

/// Replies of every RESP2 kind, each as Redis writes it.
const REPLIES: &[&[u8]] = &[
    b"+OK\r\n",
    b"+PONG\r\n",
    b":0\r\n",
    b":-42\r\n",
    b"$0\r\n\r\n",
    b"$-1\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"$5\r\nhe\r\no\r\n",
    b"-NOGROUP No such key 'k' or consumer group 'g'\r\n",
    b"*2\r\n*2\r\n$7\r\nstream1\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*4\r\n$2\r\nid\r\n$1\r\na\r\n\
      $4\r\ntype\r\n$4\r\n\xff\x00\r\n\r\n*2\r\n$3\r\n2-0\r\n*-1\r\n*2\r\n$1\r\ns\r\n*0\r\n",
];

/// The length of the one reply at the start of `buf` if it is all there, `None` if more is
/// to come.
fn complete(buf: &[u8]) -> RedisResult<Option<usize>> {
    Ok(scan(buf, &mut Progress::default())?.ok())
}

fn decode(reply: &[u8]) -> RedisResult<Value> {
    assert_eq!(complete(reply)?, Some(reply.len()), "{reply:?} is whole");
    value(reply)
}

#[test]
fn decodes_as_the_redis_crate_does() {
    for reply in REPLIES {
        let ours = decode(reply).unwrap();
        let theirs = redis::parse_redis_value(reply).unwrap();
        assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(reply));
    }
    let err = decode(REPLIES[9]).unwrap().extract_error().unwrap_err();
    assert_eq!(err.code(), Some("NOGROUP"));
}

#[test]
fn a_reply_cut_anywhere_waits_for_the_rest() {
    for reply in REPLIES {
        for cut in 0..reply.len() {
            assert_eq!(
                complete(&reply[..cut]).unwrap(),
                None,
                "{reply:?} cut at {cut}"
            );
        }
    }
}

/// Each refusal is a parse error that names what is wrong, the same whether the reply is
/// walked (`scan`) or built (`value`).
#[test]
fn what_no_redis_sends_is_refused() {
    let deep = format!("{}:1\r\n", "*1\r\n".repeat(MAX_DEPTH + 1));
    let long_line = format!("+{}", "a".repeat(MAX_LINE + 1));
    let bad: &[(&[u8], &str)] = &[
        (b"!3\r\nerr\r\n", "unknown type"),
        (b"%1\r\n", "unknown type"),
        (b"!", "unknown type"),
        (b"\r\n", "unknown type"),
        (b"*2\r\n:1\r\n~", "unknown type"),
        (b"$abc\r\n", "length that does not parse"),
        (b"$-2\r\n", "length that does not parse"),
        (b"$+5\r\nhello\r\n", "length that does not parse"),
        (b"*1x\r\n", "length that does not parse"),
        (b"$\r\n", "length that does not parse"),
        (b"$5\r\nhelloXY", "bulk string without its CRLF"),
        (b"+OK\rX", "CR without LF"),
        (b"$99999999999999999999\r\n", "length that does not parse"),
        (b"$536870913\r\n", "bulk string too long"),
        (deep.as_bytes(), "arrays nested too deep"),
        (long_line.as_bytes(), "line too long"),
    ];
    let refused = |err: redis::RedisError, why: &str, reply: &[u8]| {
        let reply = String::from_utf8_lossy(reply);
        assert_eq!(err.kind(), ErrorKind::Parse, "{reply}");
        assert_eq!(err.detail(), Some(why), "{reply}");
    };
    for &(reply, why) in bad {
        refused(complete(reply).unwrap_err(), why, reply);
    }
    // The first ten fail at a header or a length, which `value` reads the same way as
    // `scan`: built, they are refused for the same reasons.
    for &(reply, why) in &bad[..10] {
        refused(value(reply).unwrap_err(), why, reply);
    }
    // Whole by their headers, but no value: refused when built.
    for (reply, why) in [
        (&b":12a\r\n"[..], "integer that does not parse"),
        (b"+\xff\r\n", "line that is not UTF-8"),
    ] {
        assert_eq!(complete(reply).unwrap(), Some(reply.len()));
        refused(value(reply).unwrap_err(), why, reply);
    }
    // A huge declared length, with little sent: more is waited for (within the timeout).
    let huge = b"*1000000000000\r\n:1\r\n";
    assert_eq!(complete(huge).unwrap(), None);
    // A walk through fields gives up on such bytes (the caller then builds the reply).
    for reply in [&b"*1x\r\n"[..], b"+OK\rX"] {
        assert!(Resp::new(reply).array().is_none(), "{reply:?}");
    }
    assert!(Resp::new(b"$abc\r\n").bulk().is_none());
}

/// A reply walked as it arrives, a byte more each time, is walked once: each look starts
/// where the last one stopped, and ends where the whole reply does.
#[test]
fn a_reply_in_pieces_is_walked_once() {
    for reply in REPLIES {
        let mut progress = Progress::default();
        let mut last = 0;
        for len in 0..reply.len() {
            assert!(scan(&reply[..len], &mut progress).unwrap().is_err());
            assert!(progress.at >= last, "{reply:?} walked back at {len}");
            last = progress.at;
        }
        if reply.len() > 100 {
            assert!(
                last > reply.len() / 2,
                "{reply:?} walked again from its start"
            );
        }
        assert_eq!(
            scan(reply, &mut progress).unwrap(),
            Ok(reply.len()),
            "{reply:?}"
        );
    }
}

fn reader(address: &str, timeout: Duration) -> Reader {
    let endpoint = Endpoint::parse(address, false, &Tls::default()).unwrap();
    Reader::for_endpoint(&endpoint, timeout).expect("plain TCP to one server")
}

#[test]
fn only_one_server_over_plain_tcp() {
    let tls = Endpoint::parse("rediss://127.0.0.1:1", false, &Tls::default()).unwrap();
    assert!(Reader::for_endpoint(&tls, Duration::from_secs(1)).is_none());
    let cluster = Endpoint::parse("127.0.0.1:1,127.0.0.1:2", true, &Tls::default()).unwrap();
    assert!(Reader::for_endpoint(&cluster, Duration::from_secs(1)).is_none());
    let unix = Endpoint::parse("redis+unix:///tmp/redis.sock", false, &Tls::default()).unwrap();
    assert!(Reader::for_endpoint(&unix, Duration::from_secs(1)).is_none());
}

/// Logs in as the address' user into its database, reads what the redis crate reads, keeps
/// its connection after an error reply, and reconnects after a restart.
#[tokio::test]
async fn logs_in_reads_and_recovers() {
    let mut server = RedisServer::start().await;
    let admin = server
        .restrict_to("reader", "s3cret", &["~*".into(), "+@all".into()])
        .await;
    let admin = redis::Client::open(format!("{admin}/3")).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    for n in 0..3 {
        let _: String = redis::cmd("XADD")
            .arg("s")
            .arg("*")
            .arg("id")
            .arg(format!("task-{n}"))
            .arg("payload")
            .arg("\r\n\0\u{202e}")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let reader = reader(
        &format!("redis://reader:s3cret@127.0.0.1:{}/3", server.port),
        Duration::from_secs(2),
    );
    let mut xrange = redis::cmd("XRANGE");
    xrange.arg("s").arg("-").arg("+");
    let ours = reader.query(&xrange).await.unwrap();
    let theirs: Value = xrange.query_async(&mut conn).await.unwrap();
    assert_eq!(ours, theirs);
    let Value::Array(entries) = &ours else {
        panic!("{ours:?}")
    };
    assert_eq!(entries.len(), 3, "read from database 3");

    let mut client_id = redis::cmd("CLIENT");
    client_id.arg("ID");
    let id = reader.query(&client_id).await.unwrap();
    let mut nogroup = redis::cmd("XREADGROUP");
    nogroup.arg(&["GROUP", "g", "c", "STREAMS", "s", ">"]);
    let err = reader.query(&nogroup).await.unwrap_err();
    assert_eq!(err.code(), Some("NOGROUP"));
    assert_eq!(
        reader.query(&client_id).await.unwrap(),
        id,
        "same connection"
    );

    server.restart().await;
    // The ACL users went with the restart: the login is refused, and tried again each time.
    for _ in 0..2 {
        let err = reader.query(&client_id).await.unwrap_err();
        assert!(super::super::is_misconfiguration(&err), "{err}");
    }
    server
        .restrict_to("reader", "s3cret", &["~*".into(), "+@all".into()])
        .await;
    let dbsize = redis::cmd("DBSIZE");
    assert_eq!(reader.query(&dbsize).await.unwrap(), Value::Int(0));
}

/// A Redis that hangs (SIGSTOP) costs a query its timeout, no more; once it goes on, the next
/// query gets a fresh connection and its own answer, not the late one of the query before.
#[tokio::test]
async fn a_hung_redis_costs_the_timeout() {
    let server = RedisServer::start().await;
    let reader = reader(&server.address(), Duration::from_millis(300));
    let mut get = redis::cmd("GET");
    get.arg("k");
    assert_eq!(reader.query(&get).await.unwrap(), Value::Nil);
    server.pause();
    let started = Instant::now();
    let err = reader.query(&get).await.unwrap_err();
    let took = started.elapsed();
    server.resume();
    assert!(err.is_timeout() || err.is_io_error(), "{err}");
    // Not a measure of speed: a query that waited for the hung server would not be back.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let mut echo = redis::cmd("ECHO");
    echo.arg("fresh");
    assert_eq!(
        reader.query(&echo).await.unwrap(),
        Value::BulkString(b"fresh".to_vec())
    );
}

/// A server of the test's own on a free port: answers each command it reads with the next of
/// `replies`, written in pieces of `piece` bytes; returns its address and how many
/// connections it accepted.
async fn fake_server(
    replies: Vec<Vec<u8>>,
    piece: usize,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut replies = replies.into_iter();
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut command = [0; 1024];
            while let Ok(n) = socket.read(&mut command).await
                && n > 0
            {
                let Some(reply) = replies.next() else { return };
                for chunk in reply.chunks(piece) {
                    if socket.write_all(chunk).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    (address, accepted)
}

/// A reply that comes a byte at a time, or a long one in pieces, is read whole; what no Redis
/// sends fails the query and costs the connection, and the next query gets a new one.
#[tokio::test]
async fn replies_in_pieces_and_hostile_ones() {
    use std::sync::atomic::Ordering;
    let long = vec![b'x'; 3 << 20];
    let mut long_reply = format!("*2\r\n$1\r\na\r\n${}\r\n", long.len()).into_bytes();
    long_reply.extend_from_slice(&long);
    long_reply.extend_from_slice(b"\r\n");
    let replies = vec![
        REPLIES[10].to_vec(),
        long_reply,
        b"$3\r\nabcXY".to_vec(),
        b"+OK\r\n+OK\r\n".to_vec(),
        b"+OK\r\n".to_vec(),
    ];
    let (address, accepted) = fake_server(replies.clone(), 1).await;
    let reader = reader(&address, Duration::from_secs(5));
    let ping = redis::cmd("PING");
    let first = reader.query(&ping).await.unwrap();
    assert_eq!(first, decode(REPLIES[10]).unwrap());
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let (address, accepted) = fake_server(replies[1..].to_vec(), 64 * 1024 - 1).await;
    let reader = super::Reader::for_endpoint(
        &Endpoint::parse(&address, false, &Tls::default()).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    let Value::Array(items) = reader.query(&ping).await.unwrap() else {
        panic!("an array")
    };
    assert_eq!(items[1], Value::BulkString(long));
    let kept = reader.idle.lock().unwrap()[0].replies.buf.capacity();
    assert!(kept <= KEPT_BUFFER, "an idle connection keeps {kept} bytes");
    assert!(reader.query(&ping).await.is_err(), "bulk without its CRLF");
    assert!(reader.query(&ping).await.is_err(), "bytes after the reply");
    assert_eq!(reader.query(&ping).await.unwrap(), Value::Okay);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one connection per failure"
    );
}

/// A connection the server closed while idle (CLIENT KILL, or its `timeout`) costs nothing:
/// the next query goes out on a new one.
#[tokio::test]
async fn a_closed_idle_connection_is_replaced() {
    let server = RedisServer::start().await;
    let reader = reader(&server.address(), Duration::from_secs(2));
    let mut client_id = redis::cmd("CLIENT");
    client_id.arg("ID");
    let Value::Int(id) = reader.query(&client_id).await.unwrap() else {
        panic!("an id")
    };
    let mut conn = crate::testing::TestRedis::at(server.address()).conn().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "ID", &id.to_string()])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    let Value::Int(new) = reader.query(&client_id).await.unwrap() else {
        panic!("an id")
    };
    assert_ne!(new, id);
}
