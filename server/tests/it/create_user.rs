//! CreateUser: the happy path, every validation rule, duplicates, and an unreachable database.

use std::time::Duration;

use prost::Message;
use simplebank_core::testing::{TcpProxy, TestDb, TestRedis, eventually};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestServer, common_config, count, request, stream_entries};

#[tokio::test]
async fn creates_the_user_and_publishes_its_task() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;

    let response = server
        .client
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("CreateUser succeeds")
        .into_inner();
    let user = response
        .user
        .clone()
        .expect("the response carries the user");
    assert_eq!(user.username, "alice");
    assert_eq!(user.full_name, "Alice Liddell");
    assert_eq!(user.email, "alice@example.com");
    assert!(!user.is_email_verified);
    assert!(user.created_at.is_some_and(|t| t.seconds > 0));

    // Nothing secret in the response bytes: neither the password nor any argon2 hash.
    let bytes = response.encode_to_vec();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("secret-password-1"));
    assert!(!text.contains("$argon2"));

    // Stored with an argon2id hash, never the password itself.
    let hash: String =
        sqlx::query_scalar("SELECT hashed_password FROM users WHERE username = 'alice'")
            .fetch_one(db.store.pool())
            .await
            .expect("user row");
    assert!(hash.starts_with("$argon2id$"));
    assert!(!hash.contains("secret-password-1"));

    // The task reaches the critical stream and leaves the outbox.
    let store = db.store.clone();
    eventually("the outbox is empty", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.outbox_len().await.ok() == Some(0) }
    })
    .await;
    let entries = stream_entries(&redis, "critical").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["type"], "task:send_verify_email");
    assert_eq!(entries[0]["payload"], r#"{"username":"alice"}"#);
    assert_eq!(entries[0]["max_retry"], "10");
    assert_eq!(entries[0]["attempt"], "1");

    server.stop().await.expect("clean stop");
}

/// Sends a request with one bad field and expects exactly that field in the BadRequest.
async fn assert_rejected(server: &mut TestServer, field: &str, value: &str) {
    let mut req = request("valid_name", "valid@example.com");
    match field {
        "username" => req.username = value.into(),
        "full_name" => req.full_name = value.into(),
        "email" => req.email = value.into(),
        "password" => req.password = value.into(),
        _ => unreachable!("unknown field {field}"),
    }
    let status = server
        .client
        .create_user(req)
        .await
        .expect_err("bad input is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{field}={value:?}");
    let bad_request = status
        .get_details_bad_request()
        .expect("a google.rpc.BadRequest detail");
    let fields: Vec<&str> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, [field], "{field}={value:?}");
    assert!(!status.message().contains(value) || value.is_empty() || value.len() < 3);
}

#[tokio::test]
async fn each_validation_rule_names_its_field() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;

    let long = "a".repeat(101);
    for value in ["ab", long.as_str(), "Alice", "al ice", "al-ice", "alicé"] {
        assert_rejected(&mut server, "username", value).await;
    }
    for value in ["Al", long.as_str(), "R2D2 Droid", "Alice_L", "Alice!"] {
        assert_rejected(&mut server, "full_name", value).await;
    }
    let long_email = format!("{}@example.com", "a".repeat(190));
    for value in [
        "a@",
        "plainaddress",
        "@example.com",
        "a b@example.com",
        long_email.as_str(),
    ] {
        assert_rejected(&mut server, "email", value).await;
    }
    let long_password = "p".repeat(101);
    for value in ["12345", long_password.as_str()] {
        assert_rejected(&mut server, "password", value).await;
    }

    // All four at once: four violations, in request order; nothing stored.
    let status = server
        .client
        .create_user(simplebank_server::pb::CreateUserRequest {
            username: "A".into(),
            full_name: "1".into(),
            email: "x".into(),
            password: "1".into(),
        })
        .await
        .expect_err("refused");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["username", "full_name", "email", "password"]);
    assert_eq!(count(&db.store, "SELECT count(*) FROM users").await, 0);
    assert_eq!(db.store.outbox_len().await.expect("outbox"), 0);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn duplicate_username_or_email_is_already_exists_naming_the_field() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;
    server
        .client
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("first sign-up");

    let status = server
        .client
        .create_user(request("alice", "other@example.com"))
        .await
        .expect_err("same username");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(status.message(), "username already exists");

    let status = server
        .client
        .create_user(request("alice2", "alice@example.com"))
        .await
        .expect_err("same email");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(status.message(), "email already exists");

    assert_eq!(count(&db.store, "SELECT count(*) FROM users").await, 1);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn unreachable_database_is_unavailable() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let proxy = TcpProxy::start(db.server_address()).await;
    let mut server = TestServer::start(common_config(db.url_via(proxy.port), &redis)).await;
    server
        .client
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("works while the database is reachable");

    proxy.cut();
    let status = server
        .client
        .create_user(request("bob", "bob@example.com"))
        .await
        .expect_err("the database is gone");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !status.message().contains("127.0.0.1"),
        "no internal detail"
    );
    server.stop().await.expect("clean stop");
}
