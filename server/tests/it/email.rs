//! Email verification end to end with a real SMTP server (aiosmtpd from PyPI, run by
//! `scripts/smtp_sink.py`): the link in the received email verifies the address, every failure
//! has its code, SMTP outages are retried, and a rejected recipient is dead-lettered at once.
//! With the real worker binary: no address in its log or dead letters, `SMTP_TIMEOUT` cuts off
//! a stalled reply, and a worker stalled mid-send never sends a link that fails.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use simplebank_core::{
    redis_client,
    tasks::SendVerifyEmail,
    testing::{
        INJECTED, MALFORMED_ADDRESSES, MALICIOUS_ROWS, TempDir, TestDb, TestRedis, eventually,
        free_port, stop_gracefully, verify_link,
    },
};
use simplebank_queue::{DeadLetters, Publisher, QueueName, Task, TaskPayload};
use simplebank_server::pb::VerifyEmailRequest;
use simplebank_worker::{
    config::MailerConfig,
    mail::smtp::{SmtpConfig, TlsMode},
};
use tokio::io::AsyncBufReadExt;
use tonic::Code;

use crate::helpers::{TEST_VERIFY_EMAIL_KEY, TestServer, TestWorker, common_config, request};

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
        self.start_with(&[]).await;
    }

    /// Starts the server with extra arguments of `scripts/smtp_sink.py` (`--data-delay`,
    /// `--hold-data-until`).
    async fn start_with(&mut self, args: &[&str]) {
        let python = workspace().join(".local/python");
        assert!(
            python.join("aiosmtpd").exists(),
            "aiosmtpd is missing: run `make tools` (make test does)"
        );
        let child = tokio::process::Command::new("python3")
            .arg(workspace().join("scripts/smtp_sink.py"))
            .args(["--port", &self.port.to_string(), "--dir"])
            .arg(&self.inbox.0)
            .args(args)
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
            // A whole attempt; generous, so a loaded machine does not turn one send into two.
            timeout: Duration::from_secs(10),
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

    /// How many delayed DATA replies have gone out (`--data-delay`).
    fn replied(&self) -> usize {
        self.inbox
            .files()
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "replied"))
            .count()
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
        async move { dead.count(&verify_queue()).await.ok() == Some(1) }
    })
    .await;
    let letters = dead.list(&verify_queue(), 10).await.expect("list");
    assert_eq!(
        letters[0].attempts, 1,
        "no retries burnt on a permanent rejection"
    );
    assert!(letters[0].error.contains("550"), "{}", letters[0].error);
    // The server echoed the address (in capitals, and with a quoted local part); the error
    // keeps every form of it masked.
    assert!(
        !letters[0].error.to_lowercase().contains("reject@"),
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

/// The real worker binary delivering through `sink`, its log (stderr) collected line by line.
struct WorkerProcess {
    child: tokio::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

fn worker_binary() -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_simplebank-server"));
    let worker = server.with_file_name("simplebank-worker");
    assert!(
        worker.exists(),
        "build the worker first: cargo build --workspace --bins"
    );
    worker
}

impl WorkerProcess {
    fn spawn(db: &TestDb, redis: &TestRedis, sink: &SmtpSink, env: &[(&str, &str)]) -> Self {
        let mut child = tokio::process::Command::new(worker_binary())
            .env("ENVIRONMENT", "development")
            .env("RUST_LOG", "info")
            .env("DB_SOURCE", db.url.expose())
            .env("REDIS_ADDRESS", &redis.address)
            .env("REDIS_NAMESPACE", redis.namespace.as_str())
            .env("EMAIL_MAILER", "smtp")
            .env("SMTP_HOST", "127.0.0.1")
            .env("SMTP_PORT", sink.port.to_string())
            .env("SMTP_TLS", "none")
            .env("SMTP_TIMEOUT", "30s")
            .env("VERIFY_EMAIL_KEY", TEST_VERIFY_EMAIL_KEY)
            .env("WORKER_RETRY_BASE_DELAY", "100ms")
            .env("WORKER_RETRY_MAX_DELAY", "200ms")
            .envs(env.iter().copied())
            .env_remove("WORKER_CONSUMER_NAME")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the worker binary");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let sink_log = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink_log.lock().expect("log").push(line);
            }
        });
        Self { child, log }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    async fn wait_for_log(&self, what: &str, needle: &str) {
        eventually(what, Duration::from_secs(60), || {
            let found = self.log().iter().any(|line| line.contains(needle));
            async move { found }
        })
        .await;
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGTERM (after SIGCONT, in case it is stopped); returns its whole log.
    async fn stop(mut self) -> Vec<String> {
        self.signal("-CONT");
        stop_gracefully(&mut self.child).await;
        // The reader task ends at EOF; give it the chance to take the last lines.
        eventually(
            "the log is read to its end",
            Duration::from_secs(10),
            || {
                let done = Arc::strong_count(&self.log) == 1;
                async move { done }
            },
        )
        .await;
        self.log()
    }
}

/// The queue of the verification task, whose dead letters the tests read.
fn verify_queue() -> QueueName {
    QueueName::parse(SendVerifyEmail::QUEUE).expect("queue name")
}

fn dead_letters(redis: &TestRedis) -> DeadLetters {
    DeadLetters::new(
        redis_client::lazy_manager(redis.client(), redis_client::RESPONSE_TIMEOUT).expect("conn"),
        redis.keys(),
    )
}

async fn wait_for_dead(dead: &DeadLetters, n: usize) {
    eventually(
        &format!("{n} task(s) dead-lettered"),
        Duration::from_secs(30),
        || {
            let dead = dead.clone();
            async move { dead.count(&verify_queue()).await.ok() == Some(n) }
        },
    )
    .await;
}

/// Signs `username` up with `email`, which the sink refuses with `code`; returns the real
/// worker's log, its one dead letter's error, and the sink.
async fn refused_by_the_sink(
    username: &str,
    email: &str,
    code: &str,
) -> (Vec<String>, String, SmtpSink) {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let mut sink = SmtpSink::stopped();
    sink.start().await;
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;
    let worker = WorkerProcess::spawn(&db, &redis, &sink, &[]);
    server
        .client
        .create_user(request(username, email))
        .await
        .expect("sign up");

    let dead = dead_letters(&redis);
    wait_for_dead(&dead, 1).await;
    worker
        .wait_for_log("the worker logged the refusal", code)
        .await;
    let log = worker.stop().await;
    let letters = dead.list(&verify_queue(), 10).await.expect("list");
    (log, letters[0].error.clone(), sink)
}

#[tokio::test]
async fn a_rejected_address_appears_in_no_log_line_and_no_dead_letter() {
    let (log, error, _sink) =
        refused_by_the_sink("reject_me", "reject.me@example.com", "550").await;

    // The sink echoes `<REJECT.ME@EXAMPLE.COM>` and `"reject.me"@example.com`: no form of the
    // mailbox may survive, in any case.
    assert!(
        error.contains("550") && error.contains("r***@example.com"),
        "{error}"
    );
    assert!(!error.to_lowercase().contains("reject.me"), "{error}");
    let leaks: Vec<&String> = log
        .iter()
        .filter(|line| line.to_lowercase().contains("reject.me"))
        .collect();
    assert!(leaks.is_empty(), "the address in the log: {leaks:#?}");
    assert!(log.iter().any(|line| line.contains("r***@example.com")));
}

/// A content filter's refusal that quotes the link (the sink does, for `quote*` recipients)
/// puts no piece of its secret code into the log or the dead letter; the rest of the reply
/// stays for the operator.
#[tokio::test]
async fn a_reply_quoting_the_link_leaves_no_piece_of_its_code_in_logs_or_dead_letters() {
    let (log, error, sink) =
        refused_by_the_sink("quote_me", "quote.me@example.com", "listed in uribl").await;
    let quoted: Vec<String> = sink
        .inbox
        .files()
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "quoted"))
        .map(|f| unfold(&std::fs::read_to_string(f).expect("message")))
        .collect();
    let code: String = quoted
        .first()
        .and_then(|message| message.split("secret_code=").nth(1))
        .expect("the refused message's link")
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    assert_eq!(code.len(), 32, "{code}");

    assert!(
        error.contains("554")
            && error.contains("listed in uribl; line:")
            && error.contains("secret_code=***"),
        "{error}"
    );
    // The refusal is in the log, masked.
    assert!(
        log.iter()
            .any(|line| line.contains("listed in uribl") && line.contains("secret_code=***")),
        "{log:#?}"
    );
    for piece in code.as_bytes().windows(6) {
        let piece = std::str::from_utf8(piece).expect("ascii");
        assert!(
            !error.contains(piece),
            "{piece} in the dead letter: {error}"
        );
        let leaks: Vec<&String> = log.iter().filter(|line| line.contains(piece)).collect();
        assert!(leaks.is_empty(), "{piece} in the log: {leaks:#?}");
    }
}

#[tokio::test]
async fn smtp_timeout_cuts_off_a_stalled_data_reply() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let mut sink = SmtpSink::stopped();
    sink.start_with(&["--data-delay", "10"]).await;
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;
    let worker = WorkerProcess::spawn(&db, &redis, &sink, &[("SMTP_TIMEOUT", "1s")]);
    server
        .client
        .create_user(request("gina", "gina@example.com"))
        .await
        .expect("sign up");

    // The attempt fails as a transient error (retried) while the server still holds its reply.
    worker
        .wait_for_log(
            "the attempt timed out",
            "SMTP delivery failed (transient): no answer from the SMTP server within SMTP_TIMEOUT",
        )
        .await;
    assert_eq!(
        sink.replied(),
        0,
        "the attempt ended before the stalled reply"
    );
    assert!(!sink.messages().is_empty(), "the attempt reached DATA");
    assert_eq!(
        dead_letters(&redis)
            .count(&verify_queue())
            .await
            .expect("count"),
        0
    );
    let records = db.store.verify_emails_of("gina").await.expect("records");
    assert!(records.iter().all(|r| r.email_sent_at.is_none()));
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_stalled_mid_send_never_sends_a_dead_link() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let mut sink = SmtpSink::stopped();
    // Every DATA reply waits for the test's word: the first worker is caught waiting for it.
    let release = sink.inbox.0.join("release");
    let hold = release.to_str().expect("UTF-8 path");
    sink.start_with(&["--hold-data-until", hold]).await;
    let mut server = TestServer::start(common_config(db.url.clone(), &redis)).await;
    let fast_takeover = [("WORKER_VISIBILITY_TIMEOUT", "1s")];
    let first = WorkerProcess::spawn(&db, &redis, &sink, &fast_takeover);
    server
        .client
        .create_user(request("frank", "frank@example.com"))
        .await
        .expect("sign up");

    // The first worker sent DATA and waits for the reply: stall it there, past its lease.
    wait_for_messages(&sink, 1).await;
    first.signal("-STOP");
    let second = WorkerProcess::spawn(&db, &redis, &sink, &fast_takeover);
    // The second took the task over and sent DATA too; now both replies go out.
    wait_for_messages(&sink, 2).await;
    std::fs::write(&release, b"").expect("release the DATA replies");
    let store = db.store.clone();
    eventually(
        "the second worker recorded its send",
        Duration::from_secs(60),
        || {
            let store = store.clone();
            async move {
                store
                    .verify_emails_of("frank")
                    .await
                    .is_ok_and(|r| r.len() == 1 && r[0].email_sent_at.is_some())
            }
        },
    )
    .await;
    // Let the first worker finish its send too.
    first.signal("-CONT");
    first
        .wait_for_log(
            "the first worker finished its send",
            "sent verification email",
        )
        .await;
    second.stop().await;
    first.stop().await;

    let messages = sink.messages();
    assert_eq!(messages.len(), 2, "the stalled send and the takeover's");
    let mut failing = 0;
    let mut verified = 0;
    for message in &messages {
        let (email_id, code) = verify_link(message).expect("a link");
        match server
            .client
            .verify_email(VerifyEmailRequest {
                email_id,
                secret_code: code,
            })
            .await
        {
            Ok(reply) => {
                assert!(reply.into_inner().is_verified);
                verified += 1;
            }
            Err(status) if status.message() == "the code was already used" => {}
            Err(status) => {
                eprintln!("a dead link: {status:?}");
                failing += 1;
            }
        }
    }
    assert_eq!((verified, failing), (1, 0), "every email's link works");
}

#[tokio::test]
async fn a_malicious_row_injects_nothing_into_the_smtp_message() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let mut sink = SmtpSink::stopped();
    sink.start().await;
    let worker = TestWorker::start_with(
        common_config(db.url.clone(), &redis),
        Some(sink.mailer()),
        Duration::from_secs(900),
    );
    let publisher = Publisher::new(
        redis_client::lazy_manager(redis.client(), redis_client::RESPONSE_TIMEOUT).expect("conn"),
        redis.keys(),
    );
    for (username, email, full_name) in MALICIOUS_ROWS {
        sqlx::query(
            "INSERT INTO users (username, hashed_password, full_name, email) \
             VALUES ($1, 'x', $2, $3)",
        )
        .bind(username)
        .bind(full_name)
        .bind(email)
        .execute(db.store.pool())
        .await
        .expect("insert the row directly");
        let task = Task::new(&SendVerifyEmail {
            username: username.into(),
        })
        .expect("task");
        publisher.publish(&task).await.expect("publish");
    }

    wait_for_dead(&dead_letters(&redis), MALFORMED_ADDRESSES).await;
    let mailed = &MALICIOUS_ROWS[MALFORMED_ADDRESSES..];
    let messages = wait_for_messages(&sink, mailed.len()).await;
    worker.stop().await;
    assert_eq!(messages.len(), mailed.len(), "the well-formed addresses");
    for (_, email, _) in mailed {
        let to = format!("X-Rcpt-To: {email}\r\n");
        assert!(
            messages.iter().any(|m| m.starts_with(&to)),
            "no email to {email}"
        );
    }
    for message in &messages {
        for injected in INJECTED {
            assert!(!message.contains(injected), "{injected}: {message}");
        }
    }
    for letter in dead_letters(&redis)
        .list(&verify_queue(), 10)
        .await
        .expect("list")
    {
        assert!(
            letter.error.starts_with("invalid email: "),
            "{}",
            letter.error
        );
        assert_eq!(letter.attempts, 1, "permanent: {}", letter.error);
    }
}
