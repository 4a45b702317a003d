//! The send_verify_email handler: one record and one email per task, even when delivered twice;
//! nothing injected from a user row; and the file mailer's files: private, never colliding, no
//! leftovers on a failed write (a real one: a file size limit), the OS reason in the log.

use std::{os::unix::fs::PermissionsExt, process::Stdio, sync::Arc, time::Duration};

use simplebank_core::{
    domain::NewUser,
    redis_client,
    secret::Secret,
    store::Store,
    tasks::SendVerifyEmail,
    testing::{
        INJECTED, MALFORMED_ADDRESSES, MALICIOUS_ROWS, TcpProxy, TempDir, TestDb, TestRedis,
        eventually, sigterm, verify_link,
    },
};
use simplebank_queue::{DeadLetters, Handlers, QueueName, Task, TaskPayload};
use simplebank_worker::{handlers::SendVerifyEmailHandler, mail::FileMailer};
use tokio::io::AsyncBufReadExt;

use crate::helpers::{RunningWorker, publisher, settings, wait_until_drained};

const KEY: &str = "test-verify-email-key-0123456789abcdef";

async fn user_with_task(db: &TestDb, username: &str, email: &str) -> Task {
    let user = NewUser::parse(username, "Alice Liddell", email, "secret-password".into())
        .expect("valid user");
    let task = Task::new(&SendVerifyEmail {
        username: username.into(),
    })
    .expect("task");
    db.store
        .create_user(
            &user,
            &Secret::new("$argon2id$not-a-real-hash".into()),
            &task,
        )
        .await
        .expect("user stored");
    task
}

fn handlers(db: &TestDb, mail: &TempDir) -> Handlers {
    Handlers::new().on::<SendVerifyEmail>(SendVerifyEmailHandler::new(
        db.store.clone(),
        Arc::new(FileMailer::new(&mail.0)),
        "Simple Bank <no-reply@simplebank.test>".into(),
        "https://bank.example/verify".into(),
        Duration::from_secs(900),
        Secret::new(KEY.as_bytes().to_vec()),
    ))
}

/// A user row inserted with SQL, past the edge's validation, and a task for it.
async fn raw_user_with_task(db: &TestDb, username: &str, email: &str, full_name: &str) -> Task {
    sqlx::query(
        "INSERT INTO users (username, hashed_password, full_name, email) VALUES ($1, 'x', $2, $3)",
    )
    .bind(username)
    .bind(full_name)
    .bind(email)
    .execute(db.store.pool())
    .await
    .expect("insert the row directly");
    Task::new(&SendVerifyEmail {
        username: username.into(),
    })
    .expect("task")
}

fn dead_letters(redis: &TestRedis) -> DeadLetters {
    DeadLetters::new(
        redis_client::lazy_manager(redis.client(), redis_client::RESPONSE_TIMEOUT).expect("conn"),
        redis.keys(),
    )
}

fn eml_files(mail: &TempDir) -> Vec<std::path::PathBuf> {
    mail.files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "eml"))
        .collect()
}

#[tokio::test]
async fn a_task_delivered_twice_gives_one_record_and_one_email() {
    let (db, redis, mail) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let task = user_with_task(&db, "alice", "alice@example.com").await;
    let publisher = publisher(&redis);
    // The same task twice, as a relay retry after a crash would publish it.
    publisher.publish(&task).await.expect("publish");
    publisher.publish(&task).await.expect("publish again");

    let worker = RunningWorker::start(&redis, settings("mailer"), handlers(&db, &mail));
    wait_until_drained(&redis, "critical").await;
    worker.stop().await;

    let records = db.store.verify_emails_of("alice").await.expect("records");
    assert_eq!(records.len(), 1, "one record for one task");
    assert_eq!(records[0].task_id, task.id());
    assert!(records[0].email_sent_at.is_some());

    let files = mail.files();
    assert_eq!(
        files.len(),
        1,
        "one email: the second delivery saw it was sent: {files:?}"
    );
    let message = std::fs::read_to_string(&files[0]).expect("email");
    assert!(message.contains("\r\nTo: alice@example.com\r\n"));
    assert!(message.contains("https://bank.example/verify?email_id="));
    let (email_id, code) = verify_link(&message).expect("link");
    assert_eq!(email_id, records[0].id);
    assert_eq!(code.len(), 32);
    assert!(code.chars().all(|c| c.is_ascii_alphanumeric()));
}

#[tokio::test]
async fn different_tasks_get_different_codes() {
    let (db, redis, mail) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let first = user_with_task(&db, "alice", "alice@example.com").await;
    let second = Task::new(&SendVerifyEmail {
        username: "alice".into(),
    })
    .expect("task");
    let publisher = publisher(&redis);
    publisher.publish(&first).await.expect("publish");
    publisher.publish(&second).await.expect("publish");

    let worker = RunningWorker::start(&redis, settings("mailer"), handlers(&db, &mail));
    wait_until_drained(&redis, "critical").await;
    worker.stop().await;

    let records = db.store.verify_emails_of("alice").await.expect("records");
    assert_eq!(records.len(), 2);
    let codes: Vec<String> = mail
        .files()
        .iter()
        .map(|f| {
            verify_link(&std::fs::read_to_string(f).expect("email"))
                .expect("link")
                .1
        })
        .collect();
    assert_eq!(codes.len(), 2);
    assert_ne!(codes[0], codes[1]);
}

#[tokio::test]
async fn a_malicious_row_injects_nothing_into_the_eml() {
    let (db, redis, mail) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let publisher = publisher(&redis);
    for (username, email, full_name) in MALICIOUS_ROWS {
        let task = raw_user_with_task(&db, username, email, full_name).await;
        publisher.publish(&task).await.expect("publish");
    }

    let worker = RunningWorker::start(&redis, settings("mailer"), handlers(&db, &mail));
    wait_until_drained(&redis, "critical").await;
    worker.stop().await;

    let files = eml_files(&mail);
    let mailed = &MALICIOUS_ROWS[MALFORMED_ADDRESSES..];
    assert_eq!(
        files.len(),
        mailed.len(),
        "the well-formed addresses: {files:?}"
    );
    let messages: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("email"))
        .collect();
    for (_, email, full_name) in mailed {
        let to = format!("\r\nTo: {email}\r\n");
        let message = messages
            .iter()
            .find(|m| m.contains(&to))
            .unwrap_or_else(|| panic!("no email to {email}"));
        // No name at all: "Hello," (the name's first word would survive an encoding).
        let first_word = full_name.split_whitespace().next().expect("a word");
        assert!(!message.contains(first_word), "{full_name}: {message}");
        assert!(message.contains("Hello,"), "{message}");
    }
    for message in &messages {
        for injected in INJECTED {
            assert!(!message.contains(injected), "{injected}: {message}");
        }
    }
    let letters = dead_letters(&redis)
        .list(
            &QueueName::parse(SendVerifyEmail::QUEUE).expect("queue"),
            10,
        )
        .await
        .expect("dead letters");
    assert_eq!(letters.len(), MALFORMED_ADDRESSES);
    for letter in letters {
        assert!(
            letter.error.starts_with("invalid email: "),
            "{}",
            letter.error
        );
    }
}

#[tokio::test]
async fn emails_are_private_files_in_a_private_folder() {
    let (db, redis, root) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let mail = TempDir(root.0.join("new").join("mail"));
    let task = user_with_task(&db, "alice", "alice@example.com").await;
    publisher(&redis).publish(&task).await.expect("publish");
    let worker = RunningWorker::start(&redis, settings("mailer"), handlers(&db, &mail));
    wait_until_drained(&redis, "critical").await;
    worker.stop().await;

    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&mail.0), 0o700, "the folder");
    assert_eq!(mode(&root.0.join("new")), 0o700, "a parent it created");
    let files = eml_files(&mail);
    assert_eq!(files.len(), 1);
    assert_eq!(mode(&files[0]), 0o600, "the email holds a live code");
}

#[tokio::test]
async fn file_names_never_collide_across_database_resets() {
    let (redis, mail) = (TestRedis::new(), TempDir::new());
    // Two databases stand for one before and after a reset: both records get id 1.
    for _ in 0..2 {
        let db = TestDb::create().await;
        let task = user_with_task(&db, "alice", "alice@example.com").await;
        publisher(&redis).publish(&task).await.expect("publish");
        let worker = RunningWorker::start(&redis, settings("mailer"), handlers(&db, &mail));
        wait_until_drained(&redis, "critical").await;
        worker.stop().await;
        let records = db.store.verify_emails_of("alice").await.expect("records");
        assert_eq!(records[0].id, 1);
        let name = format!("verify-email-{}_simplebank.eml", task.id());
        assert!(mail.0.join(&name).exists(), "named by task id: {name}");
    }
    assert_eq!(eml_files(&mail).len(), 2, "the second email kept the first");
}

#[tokio::test]
async fn a_redelivery_before_the_send_restarts_the_expiry_and_keeps_the_code() {
    let db = TestDb::create().await;
    let task = user_with_task(&db, "alice", "alice@example.com").await;
    let code = Secret::new("A".repeat(32));
    let expiry = Duration::from_secs(900);
    let store = &db.store;
    let (first, created) = store
        .create_verify_email(task.id(), "alice", "alice@example.com", &code, expiry)
        .await
        .expect("create");
    assert!(created);
    let expire = "UPDATE verify_emails SET expired_at = now() - interval '1 second'";
    sqlx::query(expire)
        .execute(store.pool())
        .await
        .expect("expire");

    // Unsent: a redelivery gets a live code again (the same record).
    let (again, created) = store
        .create_verify_email(task.id(), "alice", "alice@example.com", &code, expiry)
        .await
        .expect("again");
    assert!(!created);
    assert_eq!(again.id, first.id);
    assert!(again.expired_at > time::OffsetDateTime::now_utc() + Duration::from_secs(800));

    // Sent: the expiry stands, and the sent code still verifies.
    store.mark_verify_email_sent(first.id).await.expect("sent");
    sqlx::query(expire)
        .execute(store.pool())
        .await
        .expect("expire");
    let (sent, _) = store
        .create_verify_email(task.id(), "alice", "alice@example.com", &code, expiry)
        .await
        .expect("after the send");
    assert!(sent.expired_at < time::OffsetDateTime::now_utc());
    sqlx::query("UPDATE verify_emails SET expired_at = now() + interval '1 hour'")
        .execute(store.pool())
        .await
        .expect("unexpire");
    store
        .verify_email(first.id, code.expose())
        .await
        .expect("the code verifies");
}

/// `program` (the worker binary, or a shell that runs it) with the worker's settings.
fn worker_command(
    program: &str,
    db: &TestDb,
    redis: &TestRedis,
    mail: &TempDir,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .env("ENVIRONMENT", "development")
        .env("RUST_LOG", "info")
        .env("DB_SOURCE", db.url.expose())
        .env("REDIS_ADDRESS", &redis.address)
        .env("REDIS_NAMESPACE", redis.namespace.as_str())
        .env("EMAIL_MAILER", "file")
        .env("EMAIL_FILE_DIR", &mail.0)
        .env("VERIFY_EMAIL_KEY", KEY)
        .env("WORKER_RETRY_BASE_DELAY", "100ms")
        .env("WORKER_RETRY_MAX_DELAY", "200ms")
        .env_remove("WORKER_CONSUMER_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn a_failed_write_leaves_no_file_and_logs_the_os_error() {
    let (db, redis, mail) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let task = user_with_task(&db, "alice", "alice@example.com").await;
    publisher(&redis).publish(&task).await.expect("publish");

    // A real write failure: the worker may not grow any file (RLIMIT_FSIZE 0), and ignores
    // SIGXFSZ so the write fails with EFBIG instead of killing it. Its log is a pipe, no file.
    let mut child = worker_command("bash", &db, &redis, &mail)
        .args([
            "-c",
            "trap '' XFSZ; ulimit -f 0; exec \"$0\"",
            env!("CARGO_BIN_EXE_simplebank-worker"),
        ])
        .spawn()
        .expect("start the worker");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let failed = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("could not write the email file") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("the failure was logged");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert!(failed.contains("File too large (os error 27)"), "{failed}");
    sigterm(&mut child, Duration::from_secs(20))
        .await
        .expect("stops");

    let left: Vec<_> = mail.files();
    assert!(
        left.is_empty(),
        "no temporary or partial file is left: {left:?}"
    );
}

#[tokio::test]
async fn production_needs_a_long_enough_verify_email_key() {
    let (db, redis, mail) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    for (key, reason) in [
        (None, "required in production"),
        (Some("short"), "at least 32 bytes"),
        // The public development key from app.env.
        (
            Some("development-only-key-not-a-secret-0123456789"),
            "public development key",
        ),
    ] {
        let mut command =
            worker_command(env!("CARGO_BIN_EXE_simplebank-worker"), &db, &redis, &mail);
        // Set, even if empty: the worker would otherwise read the development key in app.env.
        command
            .env("ENVIRONMENT", "production")
            .env("VERIFY_EMAIL_KEY", key.unwrap_or(""));
        // Bounded: a worker that accepted the key would run until stopped.
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("the worker refuses to start")
            .expect("run the worker");
        assert_eq!(output.status.code(), Some(2), "{key:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("VERIFY_EMAIL_KEY") && stderr.contains(reason),
            "{stderr}"
        );
        assert!(
            !stderr.contains(key.unwrap_or("short")),
            "the value is not echoed: {stderr}"
        );
    }
}

/// A PostgreSQL that cannot be reached is not the task's fault: with `max_retry` 0 the task
/// is retried through an outage (it was dead-lettered after its first attempt, so an outage
/// longer than the retry schedule lost verification emails) and sends once the database is back.
#[tokio::test]
async fn a_database_outage_uses_up_no_attempt() {
    let (db, redis, mail) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let task = user_with_task(&db, "alice", "alice@example.com").await;
    let proxy = TcpProxy::start_closed(db.server_address()).await;
    let store = Store::connect_lazy(&db.url_via(proxy.port)).expect("store");
    let handlers = Handlers::new().on::<SendVerifyEmail>(SendVerifyEmailHandler::new(
        store,
        Arc::new(FileMailer::new(&mail.0)),
        "Simple Bank <no-reply@simplebank.test>".into(),
        "https://bank.example/verify".into(),
        Duration::from_secs(900),
        Secret::new(KEY.as_bytes().to_vec()),
    ));
    publisher(&redis)
        .publish(&task.with_max_retry(0))
        .await
        .expect("publish");
    let worker = RunningWorker::start(&redis, settings("mailer"), handlers);

    // Attempts failed on the unreachable database (each tries to connect; with the fault, the
    // first one's failure killed the task and no more came).
    eventually(
        "attempts on the closed database",
        Duration::from_secs(60),
        || {
            let refused = proxy.refused();
            async move { refused >= 3 }
        },
    )
    .await;
    let letters = dead_letters(&redis);
    let dead = letters
        .list(&QueueName::parse("critical").expect("queue"), 10)
        .await
        .expect("list");
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");

    proxy.open();
    eventually("the email is sent", Duration::from_secs(60), || {
        let files = eml_files(&mail);
        async move { files.len() == 1 }
    })
    .await;
    wait_until_drained(&redis, "critical").await;
    worker.stop().await;
    let records = db.store.verify_emails_of("alice").await.expect("records");
    assert_eq!(records.len(), 1);
    assert!(records[0].email_sent_at.is_some());
}
