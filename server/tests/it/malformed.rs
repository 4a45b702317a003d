//! Malformed and oversized requests (issue 11 item 6), sent as raw bytes on the wire: each is
//! the client's error (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED past the size limit) with a
//! fixed message, never INTERNAL with decoder text; the server keeps serving.

use http_body_util::{BodyExt, Full};
use simplebank_core::testing::{TestDb, TestRedis};
use simplebank_server::framing::MAX_REQUEST_BYTES;
use tonic::{
    Code,
    body::Body,
    codegen::{Bytes, http},
    transport::Channel,
};
use tower::{Service, ServiceExt};

use crate::helpers::{TestServer, common_config, request};

const CREATE_USER: &str = "/simplebank.v1.SimpleBank/CreateUser";
const VERIFY_EMAIL: &str = "/simplebank.v1.SimpleBank/VerifyEmail";

/// One gRPC message frame: flag 0, big-endian length, the bytes.
pub(crate) fn frame(message: &[u8]) -> Vec<u8> {
    let len = u32::try_from(message.len()).expect("length");
    let mut out = vec![0];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Sends `body` as the whole request body of `path`; returns the status code and message.
async fn call(channel: &Channel, path: &str, body: Vec<u8>) -> (Code, String) {
    call_with(channel, path, body, &[]).await
}

/// [`call`] with extra request `headers`.
pub(crate) async fn call_with(
    channel: &Channel,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (Code, String) {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Body::new(Full::new(Bytes::from(body))))
        .expect("request");
    let mut channel = channel.clone();
    let response = channel
        .ready()
        .await
        .expect("channel ready")
        .call(request)
        .await
        .expect("an HTTP response");
    let headers = response.headers().clone();
    let trailers = response
        .into_body()
        .collect()
        .await
        .ok()
        .and_then(|body| body.trailers().cloned());
    let status = tonic::Status::from_header_map(&headers)
        .or_else(|| trailers.as_ref().and_then(tonic::Status::from_header_map))
        .expect("a grpc-status");
    (status.code(), status.message().to_owned())
}

/// A well-formed CreateUserRequest of exactly `size` bytes: a long username (field 1).
fn username_of_size(size: usize) -> Vec<u8> {
    let varint = |mut n: usize| {
        let mut out = Vec::new();
        while n >= 0x80 {
            out.push(u8::try_from(n & 0x7f).expect("7 bits") | 0x80);
            n >>= 7;
        }
        out.push(u8::try_from(n).expect("7 bits"));
        out
    };
    let (len, prefix) = (1..=5)
        .map(|k| (size - 1 - k, varint(size - 1 - k)))
        .find(|(len, prefix)| 1 + prefix.len() + len == size)
        .expect("a length whose varint fits");
    [&[0x0a][..], &prefix, &vec![b'a'; len]].concat()
}

const MALFORMED: &str = "the request is not a valid protobuf message of its type";

#[tokio::test]
async fn malformed_requests_are_invalid_argument_and_oversized_ones_resource_exhausted() {
    let db = TestDb::create().await;
    let redis = TestRedis::new();
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("address")
        .connect()
        .await
        .expect("connect");

    let invalid = [
        // username (field 1, length-delimited) holding invalid UTF-8.
        (CREATE_USER, frame(&[0x0a, 2, 0xff, 0xfe]), MALFORMED),
        // username sent as a varint: the wrong wire type.
        (CREATE_USER, frame(&[0x08, 1]), MALFORMED),
        // email_id (field 1, int64) sent as a string.
        (VERIFY_EMAIL, frame(&[0x0a, 1, b'x']), MALFORMED),
        // A field that claims 16 bytes and has 1: the message is cut short inside its frame.
        (CREATE_USER, frame(&[0x0a, 16, b'a']), MALFORMED),
        // A varint that never ends.
        (VERIFY_EMAIL, frame(&[0x08, 0xff, 0xff]), MALFORMED),
        // The frame claims 10 bytes, the body ends after 3.
        (
            CREATE_USER,
            [&[0, 0, 0, 0, 10][..], &[0x0a, 1, b'a']].concat(),
            "malformed request: the body ends inside a message",
        ),
        // The body ends inside the 5-byte header.
        (
            CREATE_USER,
            vec![0, 0, 0],
            "malformed request: the body ends inside a message",
        ),
        // No message at all.
        (
            VERIFY_EMAIL,
            Vec::new(),
            "malformed request: the body carries no message",
        ),
        // A flag byte that is neither 0 (plain) nor 1 (compressed).
        (
            CREATE_USER,
            [&[7, 0, 0, 0, 2][..], &[0x0a, 0]].concat(),
            "malformed request: a message's compression flag must be 0 or 1",
        ),
    ];
    for (path, body, message) in invalid {
        let shown = format!("{path} {:02x?}", &body[..body.len().min(12)]);
        assert_eq!(
            call(&channel, path, body).await,
            (Code::InvalidArgument, message.to_owned()),
            "{shown}"
        );
    }

    // Past the limit: refused on the frame's header, whatever follows.
    for size in [MAX_REQUEST_BYTES + 1, 5 * 1024 * 1024] {
        let message = username_of_size(size);
        assert_eq!(message.len(), size);
        let (code, text) = call(&channel, CREATE_USER, frame(&message)).await;
        assert_eq!(code, Code::ResourceExhausted, "{size} bytes: {text}");
        assert_eq!(
            text,
            format!("the request message is {size} bytes; the limit is {MAX_REQUEST_BYTES} bytes")
        );
    }

    // None of that touched the database, and the server still serves.
    assert_eq!(db.store.outbox_len().await.expect("outbox"), 0);
    server
        .client
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("a good request still succeeds");
    server.stop().await.expect("clean stop");
}

/// A CreateUserRequest message that would create `username` (and pass validation).
fn create_user_message(username: &str) -> Vec<u8> {
    let field = |number: u8, value: &str| {
        let len = u8::try_from(value.len()).expect("short field");
        [&[number << 3 | 2, len][..], value.as_bytes()].concat()
    };
    [
        field(1, username),
        field(2, "Some Body"),
        field(3, &format!("{username}@example.com")),
        field(4, "plum-tractor-galaxy"),
    ]
    .concat()
}

#[tokio::test]
async fn compressed_without_encoding_two_messages_and_large_reflection_requests_are_refused() {
    let db = TestDb::create().await;
    let redis = TestRedis::new();
    let server = TestServer::start(common_config(db.url.clone(), &redis)).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("address")
        .connect()
        .await
        .expect("connect");

    // The compressed flag with no grpc-encoding: nothing says how to decompress.
    let mut compressed = frame(&create_user_message("carol"));
    compressed[0] = 1;
    assert_eq!(
        call(&channel, CREATE_USER, compressed).await,
        (
            Code::InvalidArgument,
            "malformed request: a compressed message needs a grpc-encoding header".to_owned()
        )
    );

    // A unary call with two messages (and with many empty ones) is refused before the
    // handler: neither user is created.
    let two = [
        frame(&create_user_message("bob")),
        frame(&create_user_message("dave")),
    ]
    .concat();
    let many = frame(&[]).repeat(1000);
    for body in [two, many] {
        assert_eq!(
            call(&channel, CREATE_USER, body).await,
            (
                Code::InvalidArgument,
                "malformed request: a unary call carries exactly one message".to_owned()
            )
        );
    }
    let users = crate::helpers::count(&db.store, "SELECT count(*) FROM users").await;
    assert_eq!(users, 0, "nothing was created");

    // Reflection and health have the same size limit as the API: a 3 MiB request is refused
    // on its header, never buffered.
    for path in [
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Check",
    ] {
        let size = 3 * 1024 * 1024;
        let (code, text) = call(&channel, path, frame(&username_of_size(size))).await;
        assert_eq!(code, Code::ResourceExhausted, "{path}: {text}");
        assert_eq!(
            text,
            format!("the request message is {size} bytes; the limit is {MAX_REQUEST_BYTES} bytes")
        );
    }
    // Health still answers a well-formed request.
    let (code, text) = call(&channel, "/grpc.health.v1.Health/Check", frame(&[])).await;
    assert_eq!(code, Code::Ok, "{text}");
    server.stop().await.expect("clean stop");
}
