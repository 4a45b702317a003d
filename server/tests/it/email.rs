//! Email verification end to end with a real SMTP server (aiosmtpd from PyPI, run by
//! `scripts/smtp_sink.py`): the link in the received email verifies the address, every failure
//! has its code, SMTP outages are retried, and a rejected recipient is dead-lettered at once.

use std::{path::PathBuf, process::Stdio, time::Duration};

use simplebank_core::{
    redis_client,
    task::DeadLetters,
    testing::{TempDir, TestDb, TestRedis, eventually, free_port, verify_link},
};
use simplebank_server::pb::VerifyEmailRequest;
use simplebank_worker::{
    config::MailerConfig,
    mail::smtp::{SmtpConfig, TlsMode},
};
use tonic::Code;

use crate::helpers::{TestServer, TestWorker, common_config, request};

/// An aiosmtpd server on a port of its own, storing messages in a folder.
struct SmtpSink {
    port: u16,
    inbox: TempDir,
    child: Option<tokio::process::Child>,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl SmtpSink {
    fn stopped() -> Self {
        Self {
            port: free_port(),
            inbox: TempDir::new(),
            child: None,
        }
    }

    async fn start(&mut self) {
        let python = workspace().join(".local/python");
        assert!(
            python.join("aiosmtpd").exists(),
            "aiosmtpd is missing: run `make tools` (make test does)"
        );
        let child = tokio::process::Command::new("python3")
            .arg(workspace().join("scripts/smtp_sink.py"))
            .args(["--port", &self.port.to_string(), "--dir"])
            .arg(&self.inbox.0)
            .env("PYTHONPATH", python)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the SMTP server");
        self.child = Some(child);
        let port = self.port;
        eventually(
            "the SMTP server accepts connections",
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    fn mailer(&self) -> MailerConfig {
        MailerConfig::Smtp(SmtpConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            credentials: None,
            tls: TlsMode::None,
            timeout: Duration::from_secs(2),
        })
    }

    /// The received messages (`X-Rcpt-To:` first, then the message as sent).
    fn messages(&self) -> Vec<String> {
        self.inbox
            .files()
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "eml"))
            .map(|f| std::fs::read_to_string(f).expect("message"))
            .collect()
    }
}

/// Quoted-printable bodies may wrap long lines with a soft break (`=` + CRLF) and encode `=`.
fn unfold(message: &str) -> String {
    message.replace("=\r\n", "").replace("=3D", "=")
}

struct Setup {
    db: TestDb,
    _redis: TestRedis,
    server: TestServer,
    worker: TestWorker,
    sink: SmtpSink,
}

impl Setup {
    async fn sign_up(&mut self, username: &str, email: &str) {
        self.server
            .client
            .create_user(request(username, email))
            .await
            .expect("sign up");
    }

    async fn is_verified(&self, username: &str) -> bool {
        self.db
            .store
            .get_user(username)
            .await
            .expect("user")
            .is_email_verified
    }
}

async fn setup(sink_up: bool, expiry: Duration) -> Setup {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let common = common_config(db.url.clone(), &redis);
    let mut sink = SmtpSink::stopped();
    if sink_up {
        sink.start().await;
    }
    let server = TestServer::start(common.clone()).await;
    let worker = TestWorker::start_with(common, Some(sink.mailer()), expiry);
    Setup {
        db,
        _redis: redis,
        server,
        worker,
        sink,
    }
}

async fn wait_for_messages(sink: &SmtpSink, n: usize) -> Vec<String> {
    eventually(
        &format!("{n} message(s) received"),
        Duration::from_secs(30),
        || {
            let count = sink.messages().len();
            async move { count >= n }
        },
    )
    .await;
    sink.messages().iter().map(|m| unfold(m)).collect()
}

async fn verify(setup: &mut Setup, email_id: i64, code: &str) -> Result<bool, tonic::Status> {
    setup
        .server
        .client
        .verify_email(VerifyEmailRequest {
            email_id,
            secret_code: code.to_owned(),
        })
        .await
        .map(|r| r.into_inner().is_verified)
}

#[tokio::test]
async fn the_received_link_verifies_the_address_once() {
    let mut setup = setup(true, Duration::from_secs(900)).await;
    setup.sign_up("alice", "alice@example.com").await;

    let messages = wait_for_messages(&setup.sink, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(setup.sink.messages().len(), 1, "exactly one message");
    let message = &messages[0];
    assert!(
        message.starts_with("X-Rcpt-To: alice@example.com\r\n"),
        "{message}"
    );
    assert!(message.contains("Subject: Welcome to Simple Bank"));
    assert!(message.contains("text/plain") && message.contains("text/html"));
    let (email_id, code) = verify_link(message).expect("a link with email_id and secret_code");

    assert!(!setup.is_verified("alice").await);
    assert!(
        verify(&mut setup, email_id, &code)
            .await
            .expect("VerifyEmail")
    );
    assert!(setup.is_verified("alice").await);

    let reused = verify(&mut setup, email_id, &code)
        .await
        .expect_err("one-time");
    assert_eq!(reused.code(), Code::FailedPrecondition);
    assert_eq!(reused.message(), "the code was already used");
    setup.worker.stop().await;
}

#[tokio::test]
async fn each_failure_has_its_code() {
    let mut setup = setup(true, Duration::from_secs(900)).await;
    for (user, email) in [("bob", "bob@example.com"), ("carol", "carol@example.com")] {
        setup.sign_up(user, email).await;
    }
    let messages = wait_for_messages(&setup.sink, 2).await;
    let link_of = |address: &str| {
        messages
            .iter()
            .find(|m| m.starts_with(&format!("X-Rcpt-To: {address}")))
            .and_then(|m| verify_link(m))
            .expect("the user's link")
    };
    let (bob_id, bob_code) = link_of("bob@example.com");
    let (carol_id, carol_code) = link_of("carol@example.com");

    // Bad arguments: INVALID_ARGUMENT naming the fields.
    let bad = verify(&mut setup, 0, "short")
        .await
        .expect_err("bad arguments");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("email_id") && bad.message().contains("secret_code"));

    // Wrong code and unknown id: the same NOT_FOUND.
    let wrong = verify(&mut setup, bob_id, &"A".repeat(32))
        .await
        .expect_err("wrong code");
    let unknown = verify(&mut setup, 999_999, &bob_code)
        .await
        .expect_err("unknown id");
    assert_eq!(wrong.code(), Code::NotFound);
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(wrong.message(), unknown.message(), "ids cannot be probed");
    // Bob's code on Carol's record is just a wrong code.
    assert_eq!(
        verify(&mut setup, carol_id, &bob_code)
            .await
            .expect_err("x")
            .code(),
        Code::NotFound
    );

    // The address changed since the code was sent.
    sqlx::query("UPDATE users SET email = 'bob.new@example.com' WHERE username = 'bob'")
        .execute(setup.db.store.pool())
        .await
        .expect("change the address");
    let changed = verify(&mut setup, bob_id, &bob_code)
        .await
        .expect_err("old address");
    assert_eq!(changed.code(), Code::FailedPrecondition);
    assert_eq!(
        changed.message(),
        "the code was sent to an address the user no longer has"
    );
    assert!(!setup.is_verified("bob").await);

    // Expired: the clock moves past the code's expiry (the record's expiry is moved back).
    sqlx::query("UPDATE verify_emails SET expired_at = now() - interval '1 second' WHERE id = $1")
        .bind(carol_id)
        .execute(setup.db.store.pool())
        .await
        .expect("expire");
    let expired = verify(&mut setup, carol_id, &carol_code)
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), Code::FailedPrecondition);
    assert_eq!(expired.message(), "the code has expired");
    setup.worker.stop().await;
}

#[tokio::test]
async fn a_code_expires_after_the_configured_expiry() {
    let mut setup = setup(true, Duration::from_secs(1)).await;
    setup.sign_up("dave", "dave@example.com").await;
    let messages = wait_for_messages(&setup.sink, 1).await;
    let (id, code) = verify_link(&messages[0]).expect("link");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let expired = verify(&mut setup, id, &code).await.expect_err("expired");
    assert_eq!(expired.code(), Code::FailedPrecondition);
    setup.worker.stop().await;
}

#[tokio::test]
async fn smtp_down_then_up_delivers_the_email_once() {
    let mut setup = setup(false, Duration::from_secs(900)).await;
    setup.sign_up("erin", "erin@example.com").await;
    // Attempts fail (connection refused) and are retried with backoff; then the server comes up.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let records = setup
        .db
        .store
        .verify_emails_of("erin")
        .await
        .expect("records");
    assert!(
        records.iter().all(|r| r.email_sent_at.is_none()),
        "not sent while down"
    );
    setup.sink.start().await;

    let messages = wait_for_messages(&setup.sink, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(setup.sink.messages().len(), 1, "delivered once");
    let (id, code) = verify_link(&messages[0]).expect("link");
    assert!(
        verify(&mut setup, id, &code)
            .await
            .expect("the delivered code works")
    );
    setup.worker.stop().await;
}

#[tokio::test]
async fn a_rejected_recipient_is_dead_lettered_after_one_attempt() {
    let setup = setup(true, Duration::from_secs(900)).await;
    let mut server = setup.server;
    server
        .client
        .create_user(request("reject_me", "reject@example.com"))
        .await
        .expect("sign up");

    let redis = &setup._redis;
    let dead = DeadLetters::new(
        redis_client::lazy_manager(redis.client(), redis_client::RESPONSE_TIMEOUT).expect("conn"),
        redis.keys(),
    );
    eventually("the task is dead-lettered", Duration::from_secs(20), || {
        let dead = dead.clone();
        async move { dead.count().await.ok() == Some(1) }
    })
    .await;
    let letters = dead.list(10).await.expect("list");
    assert_eq!(
        letters[0].attempts, 1,
        "no retries burnt on a permanent rejection"
    );
    assert!(letters[0].error.contains("550"), "{}", letters[0].error);
    // The server echoed the address; the error keeps it masked.
    assert!(
        !letters[0].error.contains("reject@example.com"),
        "{}",
        letters[0].error
    );
    assert!(
        letters[0].error.contains("r***@example.com"),
        "{}",
        letters[0].error
    );
    assert!(setup.sink.messages().is_empty());
    setup.worker.stop().await;
}
