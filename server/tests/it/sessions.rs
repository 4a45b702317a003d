//! Sign-in, sessions and account updates (issue 13) through the real server binary and the
//! real grpcurl: tokens and their rotation, reuse detection, logout, UpdateUser with a bearer
//! token, throttling, token expiry, an email change through the worker, and Redis hanging.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use simplebank_core::keys::LoginFailureKeys;
use simplebank_core::testing::{
    RedisServer, TempDir, TestDb, TestRedis, eventually, free_port, stop_gracefully, verify_link,
};

use crate::{
    e2e::{run_grpcurl, server_command},
    helpers::{TestWorker, common_config},
};

/// The password every test user signs up with.
const PASSWORD: &str = "plum-tractor-galaxy";

/// A server binary on its own port, logging (JSON, info) into a file.
struct Binary {
    address: String,
    logs: TempDir,
    child: tokio::process::Child,
}

/// What a failed grpcurl call printed, minus nothing: the code and message lines.
fn error_of(text: &str) -> (String, String) {
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    (line("Code:"), line("Message:"))
}

/// A field of grpcurl's JSON, by its JSON (camelCase) or proto name.
fn field<'a>(json: &'a Value, camel: &str, snake: &str) -> &'a Value {
    match &json[camel] {
        Value::Null => &json[snake],
        value => value,
    }
}

fn text(json: &Value, camel: &str, snake: &str) -> String {
    field(json, camel, snake)
        .as_str()
        .unwrap_or_else(|| panic!("{snake} in {json}"))
        .to_owned()
}

impl Binary {
    async fn start(
        db: &TestDb,
        redis_address: &str,
        namespace: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let redis = TestRedis::at(redis_address.to_owned());
        let address = format!("127.0.0.1:{}", free_port());
        let logs = TempDir::new();
        let log = std::fs::File::create(logs.0.join("server.log")).expect("log file");
        let mut command = server_command(db, &redis, &address);
        command
            .env("REDIS_NAMESPACE", namespace)
            .env("ENVIRONMENT", "production")
            .env("RUST_LOG", "info")
            .env("TOKEN_SYMMETRIC_KEY", "e2e-test-key-0123456789abcdefghi")
            .stderr(Stdio::from(log));
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("start simplebank-server");
        let target = address.clone();
        eventually(
            "the server reports SERVING",
            Duration::from_secs(30),
            move || {
                let address = target.clone();
                async move {
                    let (ok, text) =
                        run_grpcurl(&["-plaintext", &address, "grpc.health.v1.Health/Check"]);
                    ok && text.contains("\"SERVING\"")
                }
            },
        )
        .await;
        Self {
            address,
            logs,
            child,
        }
    }

    /// Calls `method` of SimpleBank with `body` and optional `authorization` metadata.
    fn call(&self, method: &str, body: &str, bearer: Option<&str>) -> (bool, String) {
        let header = bearer.map(|token| format!("authorization: bearer {token}"));
        let mut args = vec!["-plaintext", "-d", body];
        if let Some(header) = &header {
            args.extend(["-rpc-header", header.as_str()]);
        }
        let method = format!("simplebank.v1.SimpleBank/{method}");
        args.extend([self.address.as_str(), method.as_str()]);
        run_grpcurl(&args)
    }

    fn ok(&self, method: &str, body: &str, bearer: Option<&str>) -> Value {
        let (ok, text) = self.call(method, body, bearer);
        assert!(ok, "{method}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method}: {e}: {text}"))
    }

    /// The code and message of a call that must fail.
    fn err(&self, method: &str, body: &str, bearer: Option<&str>) -> (String, String) {
        let (ok, text) = self.call(method, body, bearer);
        assert!(!ok, "{method} succeeded: {text}");
        error_of(&text)
    }

    fn sign_up(&self, username: &str) {
        let body = format!(
            r#"{{"username":"{username}","full_name":"Alice Liddell","email":"{username}@example.com","password":"{PASSWORD}"}}"#
        );
        self.ok("CreateUser", &body, None);
    }

    fn login(&self, username: &str, password: &str) -> Value {
        self.ok("LoginUser", &login_body(username, password), None)
    }

    async fn stop(mut self) -> Vec<String> {
        stop_gracefully(&mut self.child).await;
        std::fs::read_to_string(self.logs.0.join("server.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn login_body(username: &str, password: &str) -> String {
    format!(r#"{{"username":"{username}","password":"{password}"}}"#)
}

fn refresh_body(token: &str) -> String {
    format!(r#"{{"refresh_token":"{token}"}}"#)
}

fn unauthenticated(error: &(String, String)) {
    assert_eq!(error.0, "Unauthenticated", "{error:?}");
}

/// Every secret the test saw must be absent from the server's log lines.
fn assert_no_secrets(lines: &[String], secrets: &[String]) {
    for secret in secrets {
        assert!(!secret.is_empty());
        for line in lines {
            assert!(
                !line.contains(secret.as_str()),
                "a secret in the log: {line}"
            );
        }
    }
}

#[tokio::test]
async fn login_renew_with_rotation_and_reuse_detection_and_logout_of_one_and_all() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let server = Binary::start(&db, &redis.address, redis.namespace.as_str(), &[]).await;
    server.sign_up("alice");

    let login = server.login("alice", PASSWORD);
    assert_eq!(login["user"]["username"], "alice");
    let access = text(&login, "accessToken", "access_token");
    let refresh = text(&login, "refreshToken", "refresh_token");
    let session_id = text(&login, "sessionId", "session_id");
    assert!(access.starts_with("v4.local."), "{access}");
    assert!(refresh.len() >= 22, "at least 128 bits: {refresh}");
    for expiry in [
        ("accessTokenExpiresAt", "access_token_expires_at"),
        ("refreshTokenExpiresAt", "refresh_token_expires_at"),
    ] {
        assert!(field(&login, expiry.0, expiry.1).is_string(), "{login}");
    }
    // Only a hash of the refresh token is stored.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT refresh_token_hash FROM sessions")
        .fetch_all(db.store.pool())
        .await
        .expect("sessions");
    assert_eq!(stored.len(), 1);
    assert!(!String::from_utf8_lossy(&stored[0]).contains(&refresh));
    let agent: String = sqlx::query_scalar("SELECT user_agent FROM sessions")
        .fetch_one(db.store.pool())
        .await
        .expect("session");
    assert!(agent.contains("grpcurl"), "{agent}");

    // Renewal rotates: a new refresh token every time, the old one no longer valid.
    let renewed = server.ok("RenewAccessToken", &refresh_body(&refresh), None);
    let access2 = text(&renewed, "accessToken", "access_token");
    let refresh2 = text(&renewed, "refreshToken", "refresh_token");
    assert_ne!(refresh2, refresh);
    assert_ne!(access2, access);
    let renewed = server.ok("RenewAccessToken", &refresh_body(&refresh2), None);
    let refresh3 = text(&renewed, "refreshToken", "refresh_token");

    // Reuse: the first token again ends the whole session, the current token with it.
    let reused = server.err("RenewAccessToken", &refresh_body(&refresh), None);
    unauthenticated(&reused);
    assert!(reused.1.contains("already used"), "{reused:?}");
    unauthenticated(&server.err("RenewAccessToken", &refresh_body(&refresh3), None));
    let reason: Option<String> =
        sqlx::query_scalar("SELECT revoked_reason FROM sessions WHERE id = $1::uuid")
            .bind(&session_id)
            .fetch_one(db.store.pool())
            .await
            .expect("session");
    assert_eq!(reason.as_deref(), Some("refresh_token_reused"));
    // And its access token stops working at once.
    let update = r#"{"username":"alice","full_name":"Alice Smith"}"#;
    unauthenticated(&server.err("UpdateUser", update, Some(&access2)));

    // Garbage refresh tokens: the same answer, nothing stored.
    for bad in ["", "x", "a\\u0000b", &"A".repeat(5000)] {
        unauthenticated(&server.err("RenewAccessToken", &refresh_body(bad), None));
    }

    // Logout of one session: that one ends, the other goes on.
    let one = server.login("alice", PASSWORD);
    let two = server.login("alice", PASSWORD);
    let one_refresh = text(&one, "refreshToken", "refresh_token");
    server.ok("LogoutUser", &refresh_body(&one_refresh), None);
    unauthenticated(&server.err("RenewAccessToken", &refresh_body(&one_refresh), None));
    unauthenticated(&server.err(
        "UpdateUser",
        update,
        Some(&text(&one, "accessToken", "access_token")),
    ));
    unauthenticated(&server.err("LogoutUser", &refresh_body(&one_refresh), None));
    let two_access = text(&two, "accessToken", "access_token");
    server.ok("UpdateUser", update, Some(&two_access));

    // Logout of all sessions: every live one ends.
    let three = server.login("alice", PASSWORD);
    let body = format!(
        r#"{{"refresh_token":"{}","all_sessions":true}}"#,
        text(&three, "refreshToken", "refresh_token")
    );
    server.ok("LogoutUser", &body, None);
    for session in [&two, &three] {
        unauthenticated(&server.err(
            "RenewAccessToken",
            &refresh_body(&text(session, "refreshToken", "refresh_token")),
            None,
        ));
        unauthenticated(&server.err(
            "UpdateUser",
            update,
            Some(&text(session, "accessToken", "access_token")),
        ));
    }
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
        .fetch_one(db.store.pool())
        .await
        .expect("count");
    assert_eq!(live, 0);

    let lines = server.stop().await;
    let mut secrets = vec![
        PASSWORD.to_owned(),
        access,
        refresh,
        refresh2,
        refresh3,
        access2,
    ];
    secrets.extend([one, two, three].iter().flat_map(|s| {
        [
            text(s, "accessToken", "access_token"),
            text(s, "refreshToken", "refresh_token"),
        ]
    }));
    secrets.push("e2e-test-key-0123456789abcdefghi".into());
    assert_no_secrets(&lines, &secrets);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("already exchanged refresh token")),
        "the reuse is logged"
    );
}

#[tokio::test]
async fn an_unknown_user_and_a_wrong_password_get_the_same_answer() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let server = Binary::start(&db, &redis.address, redis.namespace.as_str(), &[]).await;
    server.sign_up("alice");
    let wrong = server.err("LoginUser", &login_body("alice", "wrong-password-1"), None);
    let unknown = server.err("LoginUser", &login_body("nobody", "wrong-password-1"), None);
    unauthenticated(&wrong);
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.1, "incorrect username or password");
    // Malformed input is a field error, which says nothing about who exists.
    let (code, _) = server.err("LoginUser", &login_body("Bad\\r\\nName", "x"), None);
    assert_eq!(code, "InvalidArgument");
    let lines = server.stop().await;
    assert_no_secrets(&lines, &["wrong-password-1".into(), PASSWORD.into()]);
}

#[tokio::test]
async fn update_user_needs_a_valid_token_for_that_very_user() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let server = Binary::start(&db, &redis.address, redis.namespace.as_str(), &[]).await;
    server.sign_up("alice");
    server.sign_up("bob");
    let login = server.login("alice", PASSWORD);
    let access = text(&login, "accessToken", "access_token");
    let update = r#"{"username":"alice","full_name":"Alice Smith"}"#;

    // Missing, malformed or forged tokens.
    unauthenticated(&server.err("UpdateUser", update, None));
    for bad in [
        "x",
        "v4.local.AAAA",
        &access[..access.len() - 2],
        "v4.public.abc",
    ] {
        unauthenticated(&server.err("UpdateUser", update, Some(bad)));
    }
    let (ok, text_out) = run_grpcurl(&[
        "-plaintext",
        "-d",
        update,
        "-rpc-header",
        &format!("authorization: basic {access}"),
        &server.address,
        "simplebank.v1.SimpleBank/UpdateUser",
    ]);
    assert!(!ok);
    unauthenticated(&error_of(&text_out));
    // A valid token beside a second `authorization` header: refused, whichever comes first.
    for (first, second) in [(access.as_str(), "x"), ("x", access.as_str())] {
        let (ok, text_out) = run_grpcurl(&[
            "-plaintext",
            "-d",
            update,
            "-rpc-header",
            &format!("authorization: bearer {first}"),
            "-rpc-header",
            &format!("authorization: bearer {second}"),
            &server.address,
            "simplebank.v1.SimpleBank/UpdateUser",
        ]);
        assert!(!ok, "two authorization headers were accepted: {text_out}");
        unauthenticated(&error_of(&text_out));
    }

    // Another user's name.
    let (code, _) = server.err(
        "UpdateUser",
        r#"{"username":"bob","full_name":"Bob Smith"}"#,
        Some(&access),
    );
    assert_eq!(code, "PermissionDenied");
    // Nothing to change.
    let (code, message) = server.err("UpdateUser", r#"{"username":"alice"}"#, Some(&access));
    assert_eq!(code, "InvalidArgument", "{message}");
    // Each bad field named, as in CreateUser; an email or password change without the
    // current password names that too.
    let (ok, out) = server.call(
        "UpdateUser",
        r#"{"username":"alice","full_name":"x\u202e","email":"a@b","password":"password1"}"#,
        Some(&access),
    );
    assert!(!ok);
    assert_eq!(error_of(&out).0, "InvalidArgument", "{out}");
    for name in ["full_name", "email", "password", "current_password"] {
        assert!(out.contains(&format!(r#""{name}""#)), "{name}: {out}");
    }
    // Taken address.
    let (code, message) = server.err(
        "UpdateUser",
        &format!(
            r#"{{"username":"alice","email":"BOB@example.com","current_password":"{PASSWORD}"}}"#
        ),
        Some(&access),
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("AlreadyExists", "email already exists")
    );

    // A good update.
    let updated = server.ok("UpdateUser", update, Some(&access));
    assert_eq!(
        updated["user"]["full_name"]
            .as_str()
            .or(updated["user"]["fullName"].as_str()),
        Some("Alice Smith")
    );

    // A new password: password_changed_at moves, every other session ends, this one goes on.
    let other = server.login("alice", PASSWORD);
    let before = db
        .store
        .get_user("alice")
        .await
        .expect("user")
        .password_changed_at;
    server.ok(
        "UpdateUser",
        &format!(
            r#"{{"username":"alice","password":"new-plum-tractor-9","current_password":"{PASSWORD}"}}"#
        ),
        Some(&access),
    );
    let after = db
        .store
        .get_user("alice")
        .await
        .expect("user")
        .password_changed_at;
    assert!(after > before);
    unauthenticated(&server.err(
        "UpdateUser",
        update,
        Some(&text(&other, "accessToken", "access_token")),
    ));
    unauthenticated(&server.err(
        "RenewAccessToken",
        &refresh_body(&text(&other, "refreshToken", "refresh_token")),
        None,
    ));
    server.ok("UpdateUser", update, Some(&access));
    unauthenticated(&server.err("LoginUser", &login_body("alice", PASSWORD), None));
    server.login("alice", "new-plum-tractor-9");

    let lines = server.stop().await;
    assert_no_secrets(
        &lines,
        &[PASSWORD.into(), "new-plum-tractor-9".into(), access],
    );
}

#[tokio::test]
async fn access_tokens_expire_and_sessions_end_at_their_absolute_limit() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let server = Binary::start(
        &db,
        &redis.address,
        redis.namespace.as_str(),
        &[
            ("ACCESS_TOKEN_DURATION", "2s"),
            ("REFRESH_TOKEN_DURATION", "3s"),
            ("SESSION_MAX_DURATION", "6s"),
        ],
    )
    .await;
    server.sign_up("alice");
    let login = server.login("alice", PASSWORD);
    let access = text(&login, "accessToken", "access_token");
    let update = r#"{"username":"alice","full_name":"Alice Smith"}"#;
    server.ok("UpdateUser", update, Some(&access));
    eventually("the access token expired", Duration::from_secs(30), || {
        let (ok, out) = server.call("UpdateUser", update, Some(&access));
        async move { !ok && error_of(&out).0 == "Unauthenticated" }
    })
    .await;

    // Renewing keeps the session going, but never past its absolute end.
    let mut refresh = text(&login, "refreshToken", "refresh_token");
    let session_end: time::OffsetDateTime = sqlx::query_scalar("SELECT expires_at FROM sessions")
        .fetch_one(db.store.pool())
        .await
        .expect("session");
    eventually(
        "the session reached its absolute end",
        Duration::from_secs(60),
        || {
            let (ok, out) = server.call("RenewAccessToken", &refresh_body(&refresh), None);
            if ok {
                let json: Value = serde_json::from_str(&out).expect("json");
                refresh = text(&json, "refreshToken", "refresh_token");
            }
            async move { !ok && error_of(&out).0 == "Unauthenticated" }
        },
    )
    .await;
    let stored_end: time::OffsetDateTime =
        sqlx::query_scalar("SELECT refresh_token_expires_at FROM sessions")
            .fetch_one(db.store.pool())
            .await
            .expect("session");
    assert!(
        stored_end <= session_end,
        "renewal never moved past the session's end"
    );
    server.stop().await;
}

/// A server allowing 3 failed sign-ins per username in `window`, with alice signed up.
async fn three_failures_per_username(db: &TestDb, redis: &TestRedis, window: &str) -> Binary {
    let server = Binary::start(
        db,
        &redis.address,
        redis.namespace.as_str(),
        &[
            ("LOGIN_MAX_FAILURES_PER_USERNAME", "3"),
            ("LOGIN_FAILURE_WINDOW", window),
        ],
    )
    .await;
    server.sign_up("alice");
    server
}

/// The failed sign-ins counted at `key` (one of the keys ARCHITECTURE names, under the
/// namespace's hash tag).
async fn failures_at(redis: &TestRedis, key: String) -> i64 {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut redis.conn().await)
        .await
        .expect("ZCARD")
}

/// A throttled call's answer: RESOURCE_EXHAUSTED with a retry delay.
fn throttled(out: &str) {
    assert_eq!(error_of(out).0, "ResourceExhausted", "{out}");
    assert!(
        out.contains("RetryInfo") || out.contains("retryDelay") || out.contains("retry_delay"),
        "{out}"
    );
}

#[tokio::test]
async fn failed_logins_are_throttled_per_username_whatever_the_password_then_reset() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let server = three_failures_per_username(&db, &redis, "4s").await;
    server.sign_up("bob");

    // A success forgets the failures before it.
    for _ in 0..2 {
        unauthenticated(&server.err("LoginUser", &login_body("alice", "wrong-password-1"), None));
    }
    server.login("alice", PASSWORD);
    for _ in 0..3 {
        unauthenticated(&server.err("LoginUser", &login_body("alice", "wrong-password-1"), None));
    }
    // Past the limit: refused with a retry delay, even with the right password.
    let (ok, out) = server.call("LoginUser", &login_body("alice", PASSWORD), None);
    assert!(!ok);
    throttled(&out);
    // Other users are not affected.
    server.login("bob", PASSWORD);
    let count = failures_at(&redis, redis.keys().login_failures_username("alice")).await;
    assert_eq!(count, 3);

    // The window slides: the right password works again once the failures are old enough.
    eventually(
        "the failures left the window",
        Duration::from_secs(60),
        || {
            let (ok, _) = server.call("LoginUser", &login_body("alice", PASSWORD), None);
            async move { ok }
        },
    )
    .await;
    server.stop().await;
}

/// An access token alone cannot change the email or the password: the current password is
/// asked for, and guessing it through UpdateUser is held by the sign-in throttle.
#[tokio::test]
async fn credentials_change_only_with_the_current_password_under_the_sign_in_throttle() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let server = three_failures_per_username(&db, &redis, "600s").await;
    server.sign_up("bob");
    let access = text(
        &server.login("alice", PASSWORD),
        "accessToken",
        "access_token",
    );
    let other = text(
        &server.login("alice", PASSWORD),
        "accessToken",
        "access_token",
    );
    let before = db.store.get_user("alice").await.expect("user");
    let update = |fields: &str| format!(r#"{{"username":"alice",{fields}}}"#);
    let unchanged = || assert_unchanged(&db, &server, &before, &other);
    // Missing, for either change (and both): named, nothing changed, nothing counted.
    for fields in [
        r#""password":"stolen-token-pass-1""#,
        r#""email":"thief@example.com""#,
        r#""email":"thief@example.com","password":"stolen-token-pass-1""#,
    ] {
        let (ok, out) = server.call("UpdateUser", &update(fields), Some(&access));
        assert!(!ok, "{fields}");
        assert_eq!(error_of(&out).0, "InvalidArgument", "{out}");
        assert!(out.contains(r#""current_password""#), "{out}");
        unchanged().await;
    }
    // Hostile values: named, never echoed, nothing counted.
    // (JSON escapes: grpcurl sends the characters themselves.)
    for bad in [
        String::new(),
        "zq\\r\\nzq".to_owned(),
        "zq\\u0000zq".to_owned(),
        "zq\\u202ezq".to_owned(),
        "zq".repeat(5_000),
    ] {
        let body = update(&format!(
            r#""password":"stolen-token-pass-1","current_password":"{bad}""#
        ));
        let (ok, out) = server.call("UpdateUser", &body, Some(&access));
        assert!(!ok);
        assert_eq!(error_of(&out).0, "InvalidArgument", "{out}");
        assert!(out.contains(r#""current_password""#), "{out}");
        assert!(!out.contains("zq"), "{out}");
    }
    unchanged().await;
    let by_address = || {
        failures_at(
            &redis,
            redis
                .keys()
                .login_failures_address(&std::net::Ipv4Addr::LOCALHOST.into()),
        )
    };
    let by_username = || failures_at(&redis, redis.keys().login_failures_username("alice"));
    assert_eq!((by_username().await, by_address().await), (0, 0));

    // Wrong: PERMISSION_DENIED naming the field, counted as a failed sign-in; checked even
    // for a name-only change, where it is optional. A right one forgets the failures.
    let wrong = |fields: &str, guess: &str| {
        let (code, message) = server.err(
            "UpdateUser",
            &update(&format!(r#"{fields},"current_password":"{guess}""#)),
            Some(&access),
        );
        assert_eq!(code, "PermissionDenied", "{message}");
        assert!(message.contains("current_password"), "{message}");
    };
    wrong(r#""password":"stolen-token-pass-1""#, "guess-number-1");
    wrong(r#""full_name":"Mallory""#, "guess-number-2");
    unchanged().await;
    server.ok(
        "UpdateUser",
        &update(&format!(
            r#""full_name":"Alice Liddell","current_password":"{PASSWORD}""#
        )),
        Some(&access),
    );
    // A taken address with a wrong password: the password's answer, which says nothing of
    // the address.
    for n in 3..6 {
        wrong(r#""email":"BOB@example.com""#, &format!("guess-number-{n}"));
    }
    unchanged().await;
    assert_eq!(
        by_username().await,
        3,
        "the two failures before the right password were forgotten"
    );
    assert_eq!(by_address().await, 5, "the address keeps its five");

    // Past the limit: refused with a retry delay, even with the right password, and signing
    // in is held too: one throttle for both ways of trying a password.
    let body = update(&format!(
        r#""password":"stolen-token-pass-1","current_password":"{PASSWORD}""#
    ));
    let (ok, out) = server.call("UpdateUser", &body, Some(&access));
    assert!(!ok);
    throttled(&out);
    let (code, _) = server.err("LoginUser", &login_body("alice", PASSWORD), None);
    assert_eq!(code, "ResourceExhausted");
    unchanged().await;

    let lines = server.stop().await;
    let mut secrets: Vec<String> = (1..6).map(|n| format!("guess-number-{n}")).collect();
    secrets.extend([
        PASSWORD.to_owned(),
        "stolen-token-pass-1".to_owned(),
        access,
    ]);
    assert_no_secrets(&lines, &secrets);
}

/// Asserts alice's account is as `before` and her `other` session still works.
async fn assert_unchanged(
    db: &TestDb,
    server: &Binary,
    before: &simplebank_core::store::User,
    other: &str,
) {
    let now = db.store.get_user("alice").await.expect("user");
    assert_eq!(now.email, before.email);
    assert_eq!(now.full_name, before.full_name);
    assert_eq!(now.password_changed_at, before.password_changed_at);
    // No password changed: the other session lives on.
    server.ok(
        "UpdateUser",
        r#"{"username":"alice","full_name":"Alice Liddell"}"#,
        Some(other),
    );
}

#[tokio::test]
async fn a_hung_redis_does_not_hang_login_and_the_outage_is_logged_once() {
    let db = TestDb::create().await;
    let redis = RedisServer::start().await;
    let server = Binary::start(&db, &redis.address(), "hung-redis", &[]).await;
    server.sign_up("alice");
    server.login("alice", PASSWORD);

    redis.pause();
    for _ in 0..3 {
        unauthenticated(&server.err("LoginUser", &login_body("alice", "wrong-password-1"), None));
    }
    // Sign-in still works, counted in memory (3 failures, under the limit of 5).
    let login = server.login("alice", PASSWORD);
    assert_eq!(login["user"]["username"], "alice");
    redis.resume();
    let lines = server.stop().await;
    let outages = lines
        .iter()
        .filter(|l| l.contains("login throttling counts failures in this process"))
        .count();
    assert_eq!(outages, 1, "{lines:#?}");
}

#[tokio::test]
async fn an_email_change_sends_exactly_one_email_whose_link_verifies_the_new_address() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let server = Binary::start(&db, &redis.address, redis.namespace.as_str(), &[]).await;
    let worker = TestWorker::start(common_config(db.url.clone(), &redis));
    server.sign_up("alice");
    eventually(
        "the sign-up email went out",
        Duration::from_secs(30),
        || {
            let store = db.store.clone();
            async move {
                store
                    .verify_emails_of("alice")
                    .await
                    .is_ok_and(|rows| rows.len() == 1 && rows[0].email_sent_at.is_some())
            }
        },
    )
    .await;
    let login = server.login("alice", PASSWORD);
    let access = text(&login, "accessToken", "access_token");

    let updated = server.ok(
        "UpdateUser",
        &format!(
            r#"{{"username":"alice","email":"Alice.New@Example.COM","current_password":"{PASSWORD}"}}"#
        ),
        Some(&access),
    );
    let user = &updated["user"];
    assert_eq!(
        user["email"], "Alice.New@example.com",
        "canonical: {updated}"
    );
    assert!(
        !field(user, "isEmailVerified", "is_email_verified")
            .as_bool()
            .unwrap_or(false),
        "{updated}"
    );

    eventually(
        "the new address's email went out",
        Duration::from_secs(30),
        || {
            let store = db.store.clone();
            async move {
                store.verify_emails_of("alice").await.is_ok_and(|rows| {
                    rows.len() == 2 && rows.iter().all(|r| r.email_sent_at.is_some())
                })
            }
        },
    )
    .await;
    let to_new: Vec<String> = worker
        .mail
        .files()
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "eml"))
        .map(|f| std::fs::read_to_string(f).expect("email"))
        .filter(|m| m.contains("Alice.New@example.com"))
        .collect();
    assert_eq!(to_new.len(), 1, "exactly one email to the new address");
    let (id, code) =
        verify_link(&to_new[0].replace("=\r\n", "").replace("=3D", "=")).expect("a link");
    let verified = server.ok(
        "VerifyEmail",
        &format!(r#"{{"email_id":{id},"secret_code":"{code}"}}"#),
        None,
    );
    assert_eq!(field(&verified, "isVerified", "is_verified"), true);
    assert!(
        db.store
            .get_user("alice")
            .await
            .expect("user")
            .is_email_verified
    );
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM task_outbox")
        .fetch_one(db.store.pool())
        .await
        .expect("count");
    assert_eq!(pending, 0);

    // The same address again is no change: no new email.
    server.ok(
        "UpdateUser",
        &format!(
            r#"{{"username":"alice","email":"Alice.New@example.com","current_password":"{PASSWORD}"}}"#
        ),
        Some(&access),
    );
    assert!(
        db.store
            .get_user("alice")
            .await
            .expect("user")
            .is_email_verified
    );
    worker.stop().await;
    assert_eq!(
        db.store
            .verify_emails_of("alice")
            .await
            .expect("rows")
            .len(),
        2
    );
    server.stop().await;
}

/// UpdateUser mails every new address: past `EMAIL_CHANGE_MAX_PER_USER` changes within the
/// window it is RESOURCE_EXHAUSTED naming the email field, with nothing changed or queued (an
/// outside attack changed an address back and forth to mail any address without end).
#[tokio::test]
async fn address_changes_past_the_limit_are_refused_naming_the_field() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let server = Binary::start(
        &db,
        &redis.address,
        redis.namespace.as_str(),
        &[("EMAIL_CHANGE_MAX_PER_USER", "2")],
    )
    .await;
    server.sign_up("alice");
    let login = server.login("alice", PASSWORD);
    let access = text(&login, "accessToken", "access_token");
    let change = |email: &str| {
        format!(r#"{{"username":"alice","email":"{email}","current_password":"{PASSWORD}"}}"#)
    };
    server.ok("UpdateUser", &change("victim@example.com"), Some(&access));
    server.ok("UpdateUser", &change("alice@example.com"), Some(&access));
    let (code, message) = server.err("UpdateUser", &change("victim@example.com"), Some(&access));
    assert_eq!(code, "ResourceExhausted", "{message}");
    assert!(
        message.starts_with("email: too many address changes; try again in "),
        "{message}"
    );
    assert_eq!(
        db.store.get_user("alice").await.expect("alice").email,
        "alice@example.com"
    );
    let changes: i64 = sqlx::query_scalar("SELECT count(*) FROM email_changes")
        .fetch_one(db.store.pool())
        .await
        .expect("count");
    assert_eq!(changes, 2, "the refused change is not counted");
    // Other fields may still change.
    server.ok(
        "UpdateUser",
        r#"{"username":"alice","full_name":"Alice L"}"#,
        Some(&access),
    );
    server.stop().await;
}

/// In-process, to read the hashing pool's count: an unknown user costs a full argon2
/// verification (against the dummy hash), exactly as a wrong password does.
#[tokio::test]
async fn an_unknown_user_costs_a_full_password_verification_like_a_wrong_password() {
    use simplebank_core::password::HashPool;
    use simplebank_server::{config::CallLimits, pb::LoginUserRequest};

    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let hashing = HashPool::new(1);
    let mut server = crate::helpers::TestServer::start_with(
        common_config(db.url.clone(), &redis),
        CallLimits::default(),
        crate::helpers::test_auth(),
        hashing.clone(),
    )
    .await;
    server
        .client
        .create_user(crate::helpers::request("alice", "alice@example.com"))
        .await
        .expect("sign up");
    let login = |username: &str, password: &str| LoginUserRequest {
        username: username.into(),
        password: password.into(),
    };

    let before = hashing.verifications();
    let wrong = server
        .client
        .login_user(login("alice", "wrong-password-1"))
        .await
        .expect_err("wrong password");
    assert_eq!(hashing.verifications(), before + 1);
    let unknown = server
        .client
        .login_user(login("nobody", "wrong-password-1"))
        .await
        .expect_err("unknown user");
    assert_eq!(
        hashing.verifications(),
        before + 2,
        "the unknown user was verified too"
    );
    assert_eq!(
        (wrong.code(), wrong.message()),
        (unknown.code(), unknown.message())
    );
    // A throttled attempt is refused before any verification (the limit is 5 per username).
    for _ in 0..4 {
        let _ = server
            .client
            .login_user(login("alice", "wrong-password-1"))
            .await;
    }
    let counted = hashing.verifications();
    let throttled = server
        .client
        .login_user(login("alice", "secret-password-1"))
        .await
        .expect_err("throttled");
    assert_eq!(throttled.code(), tonic::Code::ResourceExhausted);
    assert_eq!(hashing.verifications(), counted);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn the_binary_refuses_a_missing_key_in_production_and_a_short_key_anywhere() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let address = format!("127.0.0.1:{}", free_port());
    // Away from the workspace: app.env (found in any parent folder) holds a development key.
    let elsewhere = TempDir::new();
    for (environment, key) in [
        ("production", None),
        ("production", Some("too-short-key-1")),
        // The public development key from app.env.
        ("production", Some("dev-only-key-0123456789abcdefghi")),
        ("development", Some("too-short-key-1")),
        ("development", Some("a-key-of-thirty-three-bytes-12345")),
    ] {
        let mut command = server_command(&db, &redis, &address);
        command
            .env("ENVIRONMENT", environment)
            .env_remove("TOKEN_SYMMETRIC_KEY")
            .current_dir(&elsewhere.0)
            .stderr(Stdio::piped());
        if let Some(key) = key {
            command.env("TOKEN_SYMMETRIC_KEY", key);
        }
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("exits at once")
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{environment} {key:?}");
        assert!(stderr.contains("TOKEN_SYMMETRIC_KEY"), "{stderr}");
        if let Some(key) = key {
            assert!(!stderr.contains(key), "the key is not printed: {stderr}");
        }
    }
}

#[tokio::test]
async fn failed_logins_are_throttled_per_client_address_across_usernames() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let server = Binary::start(
        &db,
        &redis.address,
        redis.namespace.as_str(),
        &[("LOGIN_MAX_FAILURES_PER_ADDRESS", "3")],
    )
    .await;
    server.sign_up("alice");
    for username in ["nobody", "alice", "someone_else"] {
        unauthenticated(&server.err("LoginUser", &login_body(username, "wrong-password-1"), None));
    }
    // A fourth username, never tried: the address is over its limit.
    server.sign_up("bob");
    let (code, message) = server.err("LoginUser", &login_body("bob", PASSWORD), None);
    assert_eq!(code, "ResourceExhausted", "{message}");
    let count: i64 = redis::cmd("ZCARD")
        .arg(
            redis
                .keys()
                .login_failures_address(&"127.0.0.1".parse().expect("ip")),
        )
        .query_async(&mut redis.conn().await)
        .await
        .expect("ZCARD");
    assert_eq!(count, 3);
    server.stop().await;
}

/// Hostile input on every new RPC: a field error naming the field (or UNAUTHENTICATED for a
/// token), never a crash, never the value echoed.
#[tokio::test]
async fn hostile_input_is_refused_by_field_and_never_echoed() {
    use simplebank_server::{
        config::CallLimits,
        pb::{LoginUserRequest, LogoutUserRequest, RenewAccessTokenRequest, UpdateUserRequest},
    };
    use tonic::Code;

    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let mut server = crate::helpers::TestServer::start_with(
        common_config(db.url.clone(), &redis),
        CallLimits::default(),
        crate::helpers::test_auth(),
        simplebank_core::password::HashPool::new(1),
    )
    .await;
    server
        .client
        .create_user(crate::helpers::request("alice", "alice@example.com"))
        .await
        .expect("sign up");
    let long = "p".repeat(129);
    for (username, password, field) in [
        ("alice\r\nlevel=ERROR", "secret-password-1", "username"),
        ("alice\0", "secret-password-1", "username"),
        ("аlice", "secret-password-1", "username"), // Cyrillic а
        ("alice", "secret\u{202E}1-drowssap", "password"),
        ("alice", "secret-password-1\n", "password"),
        ("alice", long.as_str(), "password"),
        ("alice", "", "password"),
    ] {
        let err = server
            .client
            .login_user(LoginUserRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .expect_err(field);
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{username:?} {password:?}"
        );
        assert!(err.message().contains(field), "{}", err.message());
        assert!(!err.message().contains("secret"), "{}", err.message());
    }
    for token in [
        "",
        "\0",
        "a\u{202E}b",
        &"A".repeat(43 * 100),
        "ａ".repeat(43).as_str(),
    ] {
        let err = server
            .client
            .renew_access_token(RenewAccessTokenRequest {
                refresh_token: token.into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = server
            .client
            .logout_user(LogoutUserRequest {
                refresh_token: token.into(),
                all_sessions: true,
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let login = server
        .client
        .login_user(LoginUserRequest {
            username: "alice".into(),
            password: "secret-password-1".into(),
        })
        .await
        .expect("sign in")
        .into_inner();
    let mut update = tonic::Request::new(UpdateUserRequest {
        username: "alice".into(),
        full_name: Some("Alice\u{200B}Smith".into()),
        email: Some("alice@example.com\r\nBcc: evil@example.com".into()),
        password: Some("password".into()),
        current_password: Some("secret\u{0}password".into()),
    });
    update.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", login.access_token)
            .parse()
            .expect("ascii"),
    );
    let err = server
        .client
        .update_user(update)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "invalid full_name, email, password, current_password"
    );
    assert!(
        !db.store
            .get_user("alice")
            .await
            .expect("user")
            .full_name
            .contains("Smith")
    );
    server.stop().await.expect("server stops");
}
