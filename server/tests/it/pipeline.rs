//! The whole sign-up in-process: CreateUser, the task through Redis, the worker's record and
//! email.

use simplebank_core::testing::{TestDb, TestRedis};

use crate::helpers::{TestServer, TestWorker, common_config, request, wait_for_verification};

#[tokio::test]
async fn a_sign_up_ends_with_one_record_and_one_email_to_the_user() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let common = common_config(db.url.clone(), &redis);
    let mut server = TestServer::start(common.clone()).await;
    let worker = TestWorker::start(common);

    server
        .client
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("CreateUser");
    wait_for_verification(&db, &worker, "alice").await;

    let records = db.store.verify_emails_of("alice").await.expect("records");
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.email, "alice@example.com");
    assert!(record.secret_code.len() >= 32);
    assert!(!record.is_used);

    let files = worker.mail.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let message = std::fs::read_to_string(&files[0]).expect("read the email");
    assert!(
        message.contains("\r\nTo: alice@example.com\r\n"),
        "{message}"
    );
    assert!(message.contains(&format!(
        "email_id={}&secret_code={}",
        record.id, record.secret_code
    )));

    worker.stop().await;
    server.stop().await.expect("clean stop");
}
