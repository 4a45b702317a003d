//! Back-pressure (issue 11 item 11): a concurrency limit that sheds the excess with
//! RESOURCE_EXHAUSTED and a retry hint, and a request timeout. A call is held inside the server
//! deterministically: the test locks `verify_emails`, so VerifyEmail's `SELECT ... FOR UPDATE`
//! waits until the test lets go.

use std::{future::Future, time::Duration};

use simplebank_core::testing::{TestDb, TestRedis, eventually};
use simplebank_server::{
    backpressure::RETRY_AFTER,
    config::CallLimits,
    pb::{VerifyEmailRequest, simple_bank_client::SimpleBankClient},
};
use sqlx::{Postgres, Transaction};
use tokio::task::JoinHandle;
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

use crate::helpers::{TestServer, common_config, request};

fn verify_request() -> VerifyEmailRequest {
    VerifyEmailRequest {
        email_id: 1,
        secret_code: "a".repeat(32),
    }
}

/// `future`'s output; a generous deadline turns a server that never answers into a failure
/// instead of a hung test.
async fn answered<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("the server answers")
}

/// Locks `verify_emails` against `FOR UPDATE` until the returned transaction ends.
async fn lock_verify_emails(db: &TestDb) -> Transaction<'static, Postgres> {
    let mut tx = db.store.pool().begin().await.expect("begin");
    sqlx::query("LOCK TABLE verify_emails IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock verify_emails");
    tx
}

/// Starts a VerifyEmail call and waits until the server's query waits on the test's lock.
async fn blocked_call(
    db: &TestDb,
    client: &SimpleBankClient<Channel>,
    waiting_before: i64,
) -> JoinHandle<Result<bool, Status>> {
    let mut client = client.clone();
    let call = tokio::spawn(async move {
        client
            .verify_email(verify_request())
            .await
            .map(|r| r.into_inner().is_verified)
    });
    eventually(
        "the call waits on the lock inside the server",
        Duration::from_secs(30),
        || {
            let pool = db.store.pool().clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&pool)
                .await
                .is_ok_and(|n| n > waiting_before)
            }
        },
    )
    .await;
    call
}

#[tokio::test]
async fn calls_past_the_limit_are_shed_with_a_retry_hint_and_health_still_answers() {
    let db = TestDb::create().await;
    let redis = TestRedis::new();
    let limits = CallLimits {
        request_timeout: Duration::from_secs(120),
        max_concurrent_calls: 1,
        ..CallLimits::default()
    };
    let mut server =
        TestServer::start_with_limits(common_config(db.url.clone(), &redis), limits).await;

    let lock = lock_verify_emails(&db).await;
    let held = blocked_call(&db, &server.client, 0).await;

    // The one slot is taken: both RPCs are refused at once, before any work.
    let shed = answered(server.client.verify_email(verify_request()))
        .await
        .expect_err("shed");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    let retry = shed.get_details_retry_info().expect("a RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(RETRY_AFTER));
    let shed = answered(
        server
            .client
            .create_user(request("alice", "alice@example.com")),
    )
    .await
    .expect_err("shed");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");

    // Health is not limited: a busy server is not taken out of a load balancer.
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers while calls are shed");

    // The held call finishes once the lock goes, and frees its slot.
    lock.rollback().await.expect("release the lock");
    let held = held.await.expect("call task").expect_err("no such record");
    assert_eq!(held.code(), Code::NotFound, "{held:?}");
    let after = server
        .client
        .verify_email(verify_request())
        .await
        .expect_err("no such record");
    assert_eq!(after.code(), Code::NotFound, "{after:?}");
    assert_eq!(
        db.store.outbox_len().await.expect("outbox"),
        0,
        "the shed CreateUser did nothing"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_call_past_the_request_timeout_ends_with_deadline_exceeded_and_frees_its_slot() {
    let db = TestDb::create().await;
    let redis = TestRedis::new();
    let limits = CallLimits {
        request_timeout: Duration::from_secs(1),
        max_concurrent_calls: 1,
        ..CallLimits::default()
    };
    let server = TestServer::start_with_limits(common_config(db.url.clone(), &redis), limits).await;

    let lock = lock_verify_emails(&db).await;
    // The lock is held throughout: the call can only end by the server's timeout.
    let first = blocked_call(&db, &server.client, 0).await;
    let first = answered(first)
        .await
        .expect("call task")
        .expect_err("cut off");
    assert_eq!(first.code(), Code::DeadlineExceeded, "{first:?}");
    // The slot was freed: a second held call is timed out too, not shed.
    let mut client = server.client.clone();
    let second = answered(client.verify_email(verify_request()))
        .await
        .expect_err("cut off");
    assert_eq!(second.code(), Code::DeadlineExceeded, "{second:?}");

    lock.rollback().await.expect("release the lock");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_bad_limit_stops_the_server_binary_naming_the_variable() {
    for (var, value) in [
        ("GRPC_MAX_CONCURRENT_CALLS", "0"),
        ("GRPC_MAX_CONCURRENT_CALLS", "many"),
        ("GRPC_REQUEST_TIMEOUT", "0s"),
        ("GRPC_REQUEST_TIMEOUT", "soon"),
        ("GRPC_MAX_CONNECTIONS_PER_ADDRESS", "0"),
        ("GRPC_MAX_CONNECTIONS_PER_ADDRESS", "-1"),
        ("EMAIL_CHANGE_MAX_PER_USER", "0"),
        ("EMAIL_CHANGE_MAX_PER_ADDRESS", "many"),
        ("EMAIL_CHANGE_WINDOW", "0s"),
        ("EMAIL_CHANGE_WINDOW", "366d"),
        ("EMAIL_CHANGE_WINDOW", "3000000d"),
    ] {
        let output = answered(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_simplebank-server"))
                .env(var, value)
                .env("GRPC_SERVER_ADDRESS", "127.0.0.1:0")
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("run the server");
        assert_eq!(output.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
}
