//! The server's edge against slow and idle clients (issue 11 follow-ups): a stalled request
//! body does not take a call slot, silent and idle connections are closed, the number of open
//! connections is bounded, and a connection's streams are capped. Raw HTTP/2 through the `h2`
//! crate, so the test controls every frame.

use std::{future::Future, net::SocketAddr, time::Duration};

use h2::{PingPong, client::SendRequest};
use prost::Message as _;
use simplebank_core::testing::{
    TempDir, TestDb, TestRedis, eventually, free_port, stop_gracefully,
};
use simplebank_server::config::{CallLimits, ConnectionLimits};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tonic::{
    Code,
    codegen::{Bytes, http},
    transport::Channel,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{TestServer, common_config, request};

const CREATE_USER: &str = "/simplebank.v1.SimpleBank/CreateUser";

/// Generous: the machine is shared and loaded.
const PATIENCE: Duration = Duration::from_secs(60);

async fn answered<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}"))
}

/// An HTTP/2 connection to `addr`; its driver task ends when the connection closes.
async fn h2_connect(addr: SocketAddr) -> (SendRequest<Bytes>, PingPong, JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, mut connection) = answered("h2 handshake", h2::client::handshake(tcp))
        .await
        .expect("h2 handshake");
    let mut ping_pong = connection.ping_pong().expect("ping pong");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    round_trips(&mut ping_pong).await;
    (client, ping_pong, driver)
}

/// Two ping round trips: every frame sent before has been read and dispatched by the server.
async fn round_trips(ping_pong: &mut PingPong) {
    for _ in 0..2 {
        answered("ping", ping_pong.ping(h2::Ping::opaque()))
            .await
            .expect("pong");
    }
}

fn grpc_request(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// Starts a CreateUser call on `client` and sends 4 of the 5 bytes of its message header,
/// then nothing: the call waits for the rest of its message.
async fn stalled_call(
    client: SendRequest<Bytes>,
) -> (
    SendRequest<Bytes>,
    h2::client::ResponseFuture,
    h2::SendStream<Bytes>,
) {
    let mut client = answered("stream ready", client.ready())
        .await
        .expect("ready");
    let (response, mut body) = client
        .send_request(grpc_request(CREATE_USER), false)
        .expect("send headers");
    body.send_data(Bytes::from_static(&[0, 0, 0, 0]), false)
        .expect("send data");
    (client, response, body)
}

async fn health(addr: SocketAddr) -> Result<(), tonic::Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn stalled_request_bodies_take_no_call_slot_and_time_out() {
    let db = TestDb::create().await;
    let redis = TestRedis::new();
    let limits = CallLimits {
        max_concurrent_calls: 4,
        body_timeout: Duration::from_secs(2),
        ..CallLimits::default()
    };
    let mut server =
        TestServer::start_with_limits(common_config(db.url.clone(), &redis), limits).await;

    // As many CreateUser streams as there are call slots, each sending 4 of the 5 bytes of
    // its message header, then nothing.
    let (mut client, mut ping_pong, _driver) = h2_connect(server.addr).await;
    let mut stalled = Vec::new();
    for _ in 0..limits.max_concurrent_calls {
        let (next, response, body) = stalled_call(client).await;
        client = next;
        stalled.push((response, body));
    }
    round_trips(&mut ping_pong).await;

    // A real call still gets a slot.
    let created = answered(
        "a real call",
        server
            .client
            .create_user(request("alice", "alice@example.com")),
    )
    .await
    .expect("the real call is served while the stalled ones wait");
    assert_eq!(created.into_inner().user.expect("user").username, "alice");

    // The stalled ones end at the body deadline, with DEADLINE_EXCEEDED.
    for (response, _body) in stalled {
        let response = answered("a stalled stream", response)
            .await
            .expect("a response");
        let status = tonic::Status::from_header_map(response.headers()).expect("grpc-status");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(
            status.message().contains("did not arrive"),
            "{}",
            status.message()
        );
    }
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_connection_may_open_only_so_many_streams() {
    let db = TestDb::create().await;
    let redis = TestRedis::new();
    let limits = CallLimits {
        connections: ConnectionLimits {
            max_streams_per_connection: 3,
            ..ConnectionLimits::default()
        },
        ..CallLimits::default()
    };
    let server = TestServer::start_with_limits(common_config(db.url.clone(), &redis), limits).await;
    let (client, _ping_pong, _driver) = h2_connect(server.addr).await;
    assert_eq!(client.current_max_send_streams(), 3);
    server.stop().await.expect("clean stop");
}

/// Reads from `tcp` until the server closes it (EOF or reset).
async fn closed_by_server(mut tcp: TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let db = TestDb::create().await;
    let redis = TestRedis::new();
    let limits = CallLimits {
        connections: ConnectionLimits {
            preface_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            ..ConnectionLimits::default()
        },
        ..CallLimits::default()
    };
    let server = TestServer::start_with_limits(common_config(db.url.clone(), &redis), limits).await;

    // Never a byte; half the preface; the whole preface and nothing else.
    let silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut half = TcpStream::connect(server.addr).await.expect("connect");
    half.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let mut preface_only = TcpStream::connect(server.addr).await.expect("connect");
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    answered("the silent connection is closed", closed_by_server(silent)).await;
    answered(
        "the half-preface connection is closed",
        closed_by_server(half),
    )
    .await;
    answered(
        "the preface-only connection is closed",
        closed_by_server(preface_only),
    )
    .await;

    // A connection with a stream open (a health Watch) is not idle, however long it lasts.
    let (watching, mut watching_ping_pong, watching_driver) = h2_connect(server.addr).await;
    let mut watching = answered("ready", watching.ready()).await.expect("ready");
    let (watch, mut body) = watching
        .send_request(grpc_request("/grpc.health.v1.Health/Watch"), false)
        .expect("send");
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("send an empty HealthCheckRequest");
    let watch = answered("the watch starts", watch).await.expect("response");

    // A proper HTTP/2 client that answers pings but opens no stream is closed.
    let (_client, _ping_pong, driver) = h2_connect(server.addr).await;
    answered("the idle HTTP/2 connection is closed", driver)
        .await
        .expect("driver");
    // The watching connection, older than the idle one, is still open.
    round_trips(&mut watching_ping_pong).await;
    // (An open Watch would hold the server's graceful stop.)
    drop((watch, watching, watching_ping_pong));
    watching_driver.abort();

    // The server still serves.
    answered("health", health(server.addr))
        .await
        .expect("health answers");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn at_the_connection_bound_new_connections_wait_and_existing_ones_work() {
    let db = TestDb::create().await;
    let redis = TestRedis::new();
    let limits = CallLimits {
        connections: ConnectionLimits {
            max_connections: 2,
            ..ConnectionLimits::default()
        },
        ..CallLimits::default()
    };
    let mut server =
        TestServer::start_with_limits(common_config(db.url.clone(), &redis), limits).await;
    // The test server's own client holds one connection; this is the second.
    let (second, second_ping_pong, second_driver) = h2_connect(server.addr).await;

    // The third is not accepted: its HTTP/2 handshake (the server's SETTINGS) does not come.
    let addr = server.addr;
    let waiting = tokio::spawn(async move { h2_connect(addr).await });
    // Time for the server to accept, were it going to (a negative check needs a wait).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "a third connection was accepted");

    // The existing connection still works.
    server
        .client
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("a call on an existing connection");

    // Once one closes, the waiting one is accepted and served.
    drop((second, second_ping_pong));
    second_driver.abort();
    let (client, _ping_pong, _driver) = answered("the waiting connection is accepted", waiting)
        .await
        .expect("handshake task");
    let mut client = answered("ready", client.ready()).await.expect("ready");
    let (response, mut body) = client
        .send_request(grpc_request("/grpc.health.v1.Health/Check"), false)
        .expect("send");
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("send an empty HealthCheckRequest");
    let response = answered("health on the new connection", response)
        .await
        .expect("response");
    assert_eq!(response.status(), http::StatusCode::OK);
    server.stop().await.expect("clean stop");
}

/// A TCP connection to `addr` from `local` (any loopback address reaches the server).
async fn connect_from(local: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((local, 0)))
        .expect("bind the client's address");
    answered("connect", socket.connect(addr))
        .await
        .expect("connect")
}

/// A health check over a connection made from `local`.
async fn health_from(local: [u8; 4], addr: SocketAddr) -> Result<(), h2::Error> {
    let tcp = connect_from(local, addr).await;
    let (client, connection) = answered("h2 handshake", h2::client::handshake(tcp)).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = answered("ready", client.ready()).await?;
    let (response, mut body) =
        client.send_request(grpc_request("/grpc.health.v1.Health/Check"), false)?;
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)?;
    let response = answered("health", response).await?;
    assert_eq!(response.status(), http::StatusCode::OK);
    driver.abort();
    Ok(())
}

/// One client address cannot take every connection slot (an outside attack held all of
/// `GRPC_MAX_CONNECTIONS` from one host, silent connections each, and everyone else waited):
/// past `GRPC_MAX_CONNECTIONS_PER_ADDRESS` its connections are closed at once, while another
/// address is served; once one of its own closes, it may open one again.
#[tokio::test]
async fn one_address_cannot_take_every_connection_slot() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let limits = CallLimits {
        connections: ConnectionLimits {
            max_connections: 10,
            max_connections_per_address: 3,
            // Silent connections are held, not closed, for the length of the test.
            preface_timeout: Duration::from_secs(600),
            ..ConnectionLimits::default()
        },
        ..CallLimits::default()
    };
    let server = TestServer::start_with_limits(common_config(db.url.clone(), &redis), limits).await;
    // The test server's own client holds one connection from 127.0.0.1; two more, silent.
    let mut held = vec![
        connect_from([127, 0, 0, 1], server.addr).await,
        connect_from([127, 0, 0, 1], server.addr).await,
    ];
    // A fourth from the same address is closed at once, without a byte.
    let mut fourth = connect_from([127, 0, 0, 1], server.addr).await;
    let mut buf = [0u8; 64];
    let read = answered("the fourth connection is closed", fourth.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "closed, nothing sent: {read:?}"
    );
    // The three of 127.0.0.1 are open: the test server's client still works.
    server
        .client
        .clone()
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("a call on an existing connection");
    // Another address is served.
    health_from([127, 0, 0, 2], server.addr)
        .await
        .expect("health from 127.0.0.2");
    // One of 127.0.0.1's closes: it may open another.
    drop(held.pop());
    eventually("127.0.0.1 may connect again", PATIENCE, || async {
        health_from([127, 0, 0, 1], server.addr).await.is_ok()
    })
    .await;
    drop(held);
    server.stop().await.expect("clean stop");
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[tokio::test]
async fn out_of_file_descriptors_the_binary_logs_backs_off_and_recovers() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let address = format!("127.0.0.1:{}", free_port());
    let addr: SocketAddr = address.parse().expect("address");
    let mut child = crate::e2e::server_command(&db, &redis, &address)
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start simplebank-server");
    let pid = child.id().expect("pid");
    simplebank_core::testing::eventually("the server answers health", PATIENCE, || async {
        health(addr).await.is_ok()
    })
    .await;

    // A few descriptors to spare, then many clients: accept fails with EMFILE.
    let limit = open_fds(pid) + 6;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit: {status:?}");
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(
            TcpStream::connect(addr)
                .await
                .expect("the kernel queues it"),
        );
    }
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first = answered("an accept error is logged", async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("log")
                .expect("the server runs");
            if line.contains("cannot accept connections") {
                return line;
            }
        }
    })
    .await;
    assert!(first.contains("Too many open files"), "{first}");
    // The errors go on while the clients stay: a window to count their log lines in.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The clients go and the server serves again (a fresh connection each try).
    drop(clients);
    simplebank_core::testing::eventually("the server answers health again", PATIENCE, || async {
        health(addr).await.is_ok()
    })
    .await;
    // One line per ERROR_LOG_EVERY at most: the errors since are counted, not each logged.
    let _ = child.start_kill();
    let mut more = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains("cannot accept connections") {
            more += 1;
        }
    }
    assert!(
        more <= 1,
        "{more} more accept error lines: not rate-limited"
    );
}

/// A client socket that can go deaf: once `deaf` is set it reads and throws away everything
/// (so the HTTP/2 client answers no ping), and reports the server's close on `closed`.
struct Deafening {
    tcp: TcpStream,
    deaf: std::sync::Arc<std::sync::atomic::AtomicBool>,
    closed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl tokio::io::AsyncRead for Deafening {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        if !self.deaf.load(std::sync::atomic::Ordering::SeqCst) {
            return std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf);
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut discard = tokio::io::ReadBuf::new(&mut scratch);
            match std::pin::Pin::new(&mut self.tcp).poll_read(cx, &mut discard) {
                Poll::Ready(Ok(())) if !discard.filled().is_empty() => {}
                Poll::Ready(_) => {
                    if let Some(closed) = self.closed.take() {
                        let _ = closed.send(());
                    }
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl tokio::io::AsyncWrite for Deafening {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed_even_with_a_stream_open() {
    let db = TestDb::create().await;
    let redis = TestRedis::new();
    let limits = CallLimits {
        connections: ConnectionLimits {
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            ..ConnectionLimits::default()
        },
        ..CallLimits::default()
    };
    let server = TestServer::start_with_limits(common_config(db.url.clone(), &redis), limits).await;

    let deaf = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (closed, server_closed) = tokio::sync::oneshot::channel();
    let io = Deafening {
        tcp: TcpStream::connect(server.addr).await.expect("connect"),
        deaf: deaf.clone(),
        closed: Some(closed),
    };
    let (client, connection) = answered("h2 handshake", h2::client::handshake(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // A health Watch: an open stream, so only the pings can close the connection.
    let mut client = answered("ready", client.ready()).await.expect("ready");
    let (response, mut body) = client
        .send_request(grpc_request("/grpc.health.v1.Health/Watch"), false)
        .expect("send");
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("send an empty HealthCheckRequest");
    let response = answered("the watch starts", response)
        .await
        .expect("response");
    assert_eq!(response.status(), http::StatusCode::OK);

    deaf.store(true, std::sync::atomic::Ordering::SeqCst);
    answered("the server closes the deaf connection", server_closed)
        .await
        .expect("closed");
    answered("health", health(server.addr))
        .await
        .expect("health answers");
    server.stop().await.expect("clean stop");
}

/// A whole call on a connection of its own: `request` with `body` as its only data frame (none
/// if empty); the status the server answers with.
async fn answer_to(addr: SocketAddr, request: http::Request<()>, body: &[u8]) -> tonic::Status {
    let (client, _ping_pong, _driver) = h2_connect(addr).await;
    let mut client = answered("stream ready", client.ready())
        .await
        .expect("ready");
    let (response, mut stream) = client
        .send_request(request, body.is_empty())
        .expect("send headers");
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body), true)
            .expect("send data");
    }
    let response = answered("an answer", response).await.expect("a response");
    tonic::Status::from_header_map(response.headers()).expect("grpc-status")
}

/// What a client does to its own call is the client's doing, and any client may do it: the
/// call log says so at WARN or INFO, never at ERROR (which an operator is paged for), and every
/// call gets its line, also one the server never answered. Health and reflection stay out of
/// the INFO log whatever is sent to them. The real binary, for its log.
#[tokio::test]
async fn what_a_client_does_to_its_own_call_is_never_logged_as_the_servers_error() {
    let (db, redis, dir) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let address = format!("127.0.0.1:{}", free_port());
    let log_path = dir.0.join("server.log");
    let mut server = crate::e2e::server_command(&db, &redis, &address)
        .env("RUST_LOG", "info")
        .env("GRPC_REQUEST_BODY_TIMEOUT", "1s")
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("start simplebank-server");
    crate::helpers::connect_when_up(&address).await;
    let addr: SocketAddr = address.parse().expect("address");

    // Stalled: part of the message, then nothing.
    let (client, mut ping_pong, _driver) = h2_connect(addr).await;
    let (_client, response, _body) = stalled_call(client).await;
    round_trips(&mut ping_pong).await;
    let response = answered("the stalled call", response)
        .await
        .expect("a response");
    let status = tonic::Status::from_header_map(response.headers()).expect("grpc-status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // Abandoned: the same start, then the connection closed under it.
    let (client, mut ping_pong, driver) = h2_connect(addr).await;
    let (client, _response, body) = stalled_call(client).await;
    round_trips(&mut ping_pong).await;
    driver.abort();
    drop((client, body, ping_pong));

    // Reset mid-message with a reason of the client's choosing (tonic would make it
    // UNAVAILABLE, the code for "the database is unavailable").
    let (client, mut ping_pong, _driver) = h2_connect(addr).await;
    let (_client, _response, mut body) = stalled_call(client).await;
    round_trips(&mut ping_pong).await;
    body.send_reset(h2::Reason::REFUSED_STREAM);
    round_trips(&mut ping_pong).await;

    // A whole message with a 1 ms deadline: tonic drops the call, unanswered by it.
    let message = simplebank_server::pb::CreateUserRequest {
        username: "alice".into(),
        full_name: "Alice Liddell".into(),
        email: "alice@example.com".into(),
        password: "plum-tractor-galaxy".into(),
    }
    .encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).expect("short").to_be_bytes());
    framed.extend_from_slice(&message);
    let mut hurried = grpc_request(CREATE_USER);
    hurried
        .headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("1m"));
    let status = answer_to(addr, hurried, &framed).await;
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");

    // Health: no message at all, and one that is no HealthCheckRequest (tonic's codec says
    // INTERNAL to both).
    const CHECK: &str = "/grpc.health.v1.Health/Check";
    for body in [&[][..], &[0, 0, 0, 0, 3, 0x0a, 0xff, 0xff][..]] {
        let status = answer_to(addr, grpc_request(CHECK), body).await;
        assert_ne!(status.code(), Code::Ok, "{status:?}");
    }

    let calls = |log: &str| {
        log.lines()
            .filter(|l| l.contains("gRPC call"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    eventually("the four CreateUser calls logged", PATIENCE, || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        async move {
            calls(&log)
                .iter()
                .filter(|l| l.contains("CreateUser"))
                .count()
                == 4
        }
    })
    .await;
    stop_gracefully(&mut server).await;
    let calls = calls(&std::fs::read_to_string(&log_path).expect("log"));
    assert!(calls.iter().all(|l| !l.contains("ERROR")), "{calls:#?}");
    assert!(calls.iter().all(|l| !l.contains("Health")), "{calls:#?}");
    let stalled = calls
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("DEADLINE_EXCEEDED") && l.contains("client"))
        .count();
    let cancelled = calls
        .iter()
        .filter(|l| l.contains("INFO") && l.contains("CANCELLED"))
        .count();
    assert_eq!((stalled, cancelled), (1, 3), "{calls:#?}");
}
