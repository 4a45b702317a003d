//! The whole sign-up in-process: CreateUser, the task through Redis, the worker's record and
//! email.

use simplebank_core::testing::{TestDb, TestRedis, verify_link};
use simplebank_server::pb::VerifyEmailRequest;

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
    assert!(!record.is_used);
    assert!(record.email_sent_at.is_some());

    let files = worker.mail.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let message = std::fs::read_to_string(&files[0]).expect("read the email");
    assert!(
        message.contains("\r\nTo: alice@example.com\r\n"),
        "{message}"
    );
    let (email_id, code) = verify_link(&message).expect("a verification link");
    assert_eq!(email_id, record.id);
    assert_eq!(code.len(), 32);

    // The database holds only a hash of the code.
    let row: String = sqlx::query_scalar("SELECT verify_emails::text FROM verify_emails")
        .fetch_one(db.store.pool())
        .await
        .expect("row");
    assert!(!row.contains(&code));

    // The link verifies the address; the same code a second time is "already used".
    let verified = server
        .client
        .verify_email(VerifyEmailRequest {
            email_id,
            secret_code: code.clone(),
        })
        .await
        .expect("VerifyEmail")
        .into_inner();
    assert!(verified.is_verified);
    assert!(
        db.store
            .get_user("alice")
            .await
            .expect("user")
            .is_email_verified
    );
    let again = server
        .client
        .verify_email(VerifyEmailRequest {
            email_id,
            secret_code: code,
        })
        .await
        .expect_err("one-time code");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert_eq!(again.message(), "the code was already used");

    worker.stop().await;
    server.stop().await.expect("clean stop");
}
