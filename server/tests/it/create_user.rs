//! CreateUser: the happy path, every validation rule (control and format characters, bare
//! canonical addresses), duplicates whatever their case, and an unreachable database.

use std::time::Duration;

use prost::Message;
use simplebank_core::testing::{TcpProxy, TestDb, TestRedis, eventually, verify_link};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    TestServer, TestWorker, common_config, count, request, stream_entries, wait_for_verification,
};

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
    let long_password = "p".repeat(129);
    for value in ["12345", "1234567", "Password123", long_password.as_str()] {
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

/// Sends `req` and expects INVALID_ARGUMENT with exactly one violation, of `field`, whose
/// description contains `kind`.
async fn assert_refused_as(
    server: &mut TestServer,
    req: simplebank_server::pb::CreateUserRequest,
    field: &str,
    kind: &str,
) {
    let sent = format!("{req:?}");
    let status = server
        .client
        .create_user(req)
        .await
        .expect_err("bad input is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{sent}: {status:?}");
    let violations = status
        .get_details_bad_request()
        .expect("a google.rpc.BadRequest detail")
        .field_violations;
    assert_eq!(violations.len(), 1, "{sent}: {violations:?}");
    assert_eq!(violations[0].field, field, "{sent}");
    assert!(
        violations[0].description.contains(kind),
        "{sent}: {:?} does not say {kind:?}",
        violations[0].description
    );
    // Never the value, nor a piece of it.
    for text in [status.message(), violations[0].description.as_str()] {
        for piece in ["example", "evil", "Pwned", "qzx", "Liddell", "secret"] {
            assert!(!text.contains(piece), "{sent}: {text:?} echoes the value");
        }
    }
}

#[tokio::test]
async fn header_injection_and_invisible_characters_are_refused_naming_the_field() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;
    let with = |field: &str, value: &str| {
        let mut req = request("valid_name", "valid@example.com");
        match field {
            "username" => req.username = value.into(),
            "full_name" => req.full_name = value.into(),
            "email" => req.email = value.into(),
            "password" => req.password = value.into(),
            _ => unreachable!("unknown field {field}"),
        }
        req
    };

    // The attack of issue 11: a Bcc and a Subject smuggled in as headers, and a blank line
    // that would start the body with the attacker's text.
    for email in [
        "x\r\nBcc: attacker@evil.example\r\nSubject: Pwned\r\nX-A: y <v@example.com>",
        "x\r\n\r\nClick https://evil.example/ <v@example.com>",
        "v@example.com\r\nBcc: attacker@evil.example",
        "v@example.com\nBcc: attacker@evil.example",
        "v@example.com\r\n",
    ] {
        assert_refused_as(&mut server, with("email", email), "email", "control").await;
    }

    // NUL in every field used to reach PostgreSQL (INTERNAL); now refused at the edge.
    for (field, value) in [
        ("username", "qzx\0jkw"),
        ("full_name", "Alice\0Liddell"),
        ("email", "ali\0ce@example.com"),
        // This one got INTERNAL: the NUL in the display name reached PostgreSQL.
        ("email", "A\0B <v@example.com>"),
        ("password", "secret\0password"),
    ] {
        assert_refused_as(&mut server, with(field, value), field, "control").await;
    }

    // The other classes, in every field.
    for field in ["username", "full_name", "email", "password"] {
        let base = match field {
            "username" => ["qzx", "jkw"],
            "full_name" => ["Alice ", "Liddell"],
            "email" => ["alice", "@example.com"],
            _ => ["secret-", "password"],
        };
        for (insert, kind) in [
            ("\t", "control"),
            ("\u{7f}", "control"),
            ("\u{85}", "control"),
            ("\u{2028}", "line or paragraph separator"),
            ("\u{2029}", "line or paragraph separator"),
            ("\u{202e}", "bidirectional"),
            ("\u{2066}", "bidirectional"),
            ("\u{200f}", "bidirectional"),
            ("\u{61c}", "bidirectional"),
            ("\u{200b}", "invisible format"),
            ("\u{feff}", "invisible format"),
            ("\u{ad}", "invisible format"),
        ] {
            let value = format!("{}{insert}{}", base[0], base[1]);
            assert_refused_as(&mut server, with(field, &value), field, kind).await;
        }
    }

    // Not bare addresses: a display name, a comment, a quoted local part, whitespace.
    for email in [
        "Other <dup@example.com>",
        "<dup@example.com>",
        "dup@example.com (comment)",
        "(comment)dup@example.com",
        "\"dup\"@example.com",
        "\"a b\"@example.com",
        " dup@example.com",
        "dup@example.com ",
    ] {
        assert_refused_as(&mut server, with("email", email), "email", "").await;
    }

    assert_eq!(count(&db.store, "SELECT count(*) FROM users").await, 0);
    assert_eq!(db.store.outbox_len().await.expect("outbox"), 0);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_address_is_stored_canonical_and_unique_whatever_its_case() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;
    let user = server
        .client
        .create_user(request("dup1", "dup@example.com"))
        .await
        .expect("first sign-up")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(user.email, "dup@example.com");

    for (username, email) in [
        ("dup2", "DUP@example.com"),
        ("dup3", "dup@EXAMPLE.com"),
        ("dup4", "Dup@Example.COM"),
    ] {
        let status = server
            .client
            .create_user(request(username, email))
            .await
            .expect_err("the same mailbox");
        assert_eq!(status.code(), Code::AlreadyExists, "{email}: {status:?}");
        assert_eq!(status.message(), "email already exists");
    }

    // The domain is lower-cased, the local part kept as given.
    let user = server
        .client
        .create_user(request("mixed", "Mixed.Case@Example.ORG"))
        .await
        .expect("a new mailbox")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(user.email, "Mixed.Case@example.org");

    // An IDN domain is stored in its ASCII form; the Unicode spelling is the same mailbox.
    let user = server
        .client
        .create_user(request("idn1", "user@BÜcher.example"))
        .await
        .expect("an IDN domain")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(user.email, "user@xn--bcher-kva.example");
    for email in ["user@bücher.example", "USER@xn--BCHER-kva.example"] {
        let status = server
            .client
            .create_user(request("idn2", email))
            .await
            .expect_err("the same mailbox");
        assert_eq!(status.code(), Code::AlreadyExists, "{email}: {status:?}");
        assert_eq!(status.message(), "email already exists");
    }

    let stored: Vec<String> = sqlx::query_scalar("SELECT email FROM users ORDER BY email")
        .fetch_all(db.store.pool())
        .await
        .expect("emails");
    assert_eq!(
        stored,
        [
            "Mixed.Case@example.org",
            "dup@example.com",
            "user@xn--bcher-kva.example"
        ]
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn literals_dotless_and_oversized_domains_are_refused() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;
    let label63 = "a".repeat(63);
    let label64 = "a".repeat(64);
    // 4 labels of 63 + 3 dots = 255 octets.
    let domain255 = [label63.as_str(); 4].join(".");
    // 64 + 1 + 190 = 255 octets in all, each part within its own limit.
    let total255 = format!(
        "{}@{}.{}.{}",
        "l".repeat(64),
        label63,
        label63,
        "b".repeat(62)
    );
    for email in [
        "x@[127.0.0.1]",
        "x@[IPv6:::1]",
        "x@127.0.0.1",
        "x@localhost",
        "x@example..com",
        "x@.example.com",
        "x@example.com.",
        "x@-example.com",
        "x@exa_mple.com",
        &format!("x@{label64}.com"),
        &format!("x@{domain255}"),
        &total255,
        &format!("{}@example.com", "l".repeat(65)),
        ".x@example.com",
        "x.@example.com",
        "x..y@example.com",
        "x@y@example.com",
        // Cyrillic "а" in the local part: a look-alike of "a".
        "\u{430}lice@example.com",
    ] {
        let request = request("valid_name", email);
        let status = server
            .client
            .create_user(request)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{email}: {status:?}");
        let violations = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(violations.field_violations.len(), 1, "{email}");
        assert_eq!(violations.field_violations[0].field, "email", "{email}");
    }
    assert_eq!(count(&db.store, "SELECT count(*) FROM users").await, 0);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_worker_mails_the_canonical_address_and_its_link_verifies() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let common = common_config(db.url.clone(), &redis);
    let mut server = TestServer::start(common.clone()).await;
    let worker = TestWorker::start(common);
    server
        .client
        .create_user(request("carol", "Carol.Hara@BÜcher.Example"))
        .await
        .expect("CreateUser");
    wait_for_verification(&db, &worker, "carol").await;

    let records = db.store.verify_emails_of("carol").await.expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].email, "Carol.Hara@xn--bcher-kva.example");
    let files = worker.mail.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let message = std::fs::read_to_string(&files[0]).expect("read the email");
    assert!(
        message.contains("\r\nTo: Carol.Hara@xn--bcher-kva.example\r\n"),
        "{message}"
    );
    let (email_id, secret_code) = verify_link(&message).expect("a verification link");
    let verified = server
        .client
        .verify_email(simplebank_server::pb::VerifyEmailRequest {
            email_id,
            secret_code,
        })
        .await
        .expect("VerifyEmail")
        .into_inner();
    assert!(verified.is_verified);

    worker.stop().await;
    server.stop().await.expect("clean stop");
}
