//! The send_verify_email handler: one record and one email per task, even when delivered twice.

use std::sync::Arc;

use simplebank_core::{
    domain::NewUser,
    secret::Secret,
    task::{Task, TaskPayload},
    tasks::SendVerifyEmail,
    testing::{TempDir, TestDb, TestRedis, verify_link},
};
use simplebank_worker::{Handlers, handlers::SendVerifyEmailHandler, mail::FileMailer};

use crate::helpers::{RunningWorker, publisher, settings, wait_until_drained};

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
    Handlers::new().with(
        SendVerifyEmail::TYPE,
        SendVerifyEmailHandler::new(
            db.store.clone(),
            Arc::new(FileMailer::new(&mail.0)),
            "Simple Bank <no-reply@simplebank.test>".into(),
            "https://bank.example/verify".into(),
            std::time::Duration::from_secs(900),
        ),
    )
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
    assert_eq!(records[0].task_id, task.id);
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
