//! Sign-in under attack (issue 11, the outside review): concurrent wrong passwords against the
//! throttle, a replayed refresh token at logout, and a hung Redis during sign-in. In-process,
//! to read the hashing pool's verification count.

use std::time::Duration;

use simplebank_core::domain::Password;
use simplebank_core::keys::LoginFailureKeys;
use simplebank_core::{
    password::{HashError, HashPool, PoolGone},
    secret::Secret,
    testing::{PostgresServer, RedisServer, TestDb, TestRedis, eventually},
};
use simplebank_server::{
    config::CallLimits,
    pb::{
        LoginUserRequest, LogoutUserRequest, RenewAccessTokenRequest, VerifyEmailRequest,
        simple_bank_client::SimpleBankClient,
    },
};
use tonic::{Code, transport::Channel};

use crate::helpers::{TestServer, common_config, request, test_auth};

/// Generous: argon2 in a debug build on a loaded machine, one hashing thread.
const LIMITS: CallLimits = CallLimits {
    request_timeout: Duration::from_secs(300),
    max_concurrent_calls: 64,
    ..CallLimits::DEFAULT
};

fn login(username: &str, password: &str) -> LoginUserRequest {
    LoginUserRequest {
        username: username.into(),
        password: password.into(),
    }
}

/// A server with one hashing thread, and alice signed up.
async fn alice_signed_up(db: &TestDb, redis: &TestRedis) -> (TestServer, HashPool) {
    let hashing = HashPool::new(1);
    let server = TestServer::start_with(
        common_config(db.url.clone(), redis),
        LIMITS,
        test_auth(),
        hashing.clone(),
    )
    .await;
    server
        .client
        .clone()
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("sign up");
    (server, hashing)
}

type HashResult = Result<Result<Secret<String>, HashError>, PoolGone>;

/// 250 hash jobs for the pool's one thread: some seconds of work queued ahead of what comes
/// next.
fn keep_busy(hashing: &HashPool) -> Vec<tokio::task::JoinHandle<HashResult>> {
    (0..250)
        .map(|_| {
            let hashing = hashing.clone();
            let password = Password::parse("plum-tractor-galaxy-7".into()).expect("valid");
            tokio::spawn(async move { hashing.hash(password).await })
        })
        .collect()
}

/// The count at `key`.
async fn zcard(redis: &TestRedis, key: &str) -> i64 {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut redis.conn().await)
        .await
        .expect("ZCARD")
}

/// A sign-in its client gives up on while it waits for its password check has no verdict: its
/// place in the username's count is given back (a client's own deadline or cancel does not
/// lock its user out), the address's is kept, and its check is not run.
#[tokio::test]
async fn a_sign_in_given_up_on_while_its_password_is_checked_is_not_counted() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let (server, hashing) = alice_signed_up(&db, &redis).await;
    let key = redis.keys().login_failures_username("alice");
    let reserved = || zcard(&redis, &key);
    // The one hashing thread kept busy, so that each sign-in waits for it with its place in
    // the counts taken; then their clients give up (their calls dropped: a reset each).
    let busy = keep_busy(&hashing);
    tokio::task::yield_now().await;
    let before = hashing.verifications();
    let limit = test_auth().login.per_username;
    let given_up: Vec<_> = (0..limit)
        .map(|_| {
            let mut client = server.client.clone();
            tokio::spawn(
                async move { client.login_user(login("alice", "secret-password-1")).await },
            )
        })
        .collect();
    eventually(
        "each sign-in took its place",
        Duration::from_secs(60),
        || {
            let reserved = reserved();
            async move { reserved.await == i64::from(limit) }
        },
    )
    .await;
    for call in &given_up {
        call.abort();
    }
    eventually(
        "every place in the username's count given back",
        Duration::from_secs(60),
        || {
            let reserved = reserved();
            async move { reserved.await == 0 }
        },
    )
    .await;
    // The address keeps them: abandoning calls is no free way to read a username's count.
    let by_address: i64 = redis::cmd("ZCARD")
        .arg(
            redis
                .keys()
                .login_failures_address(&std::net::Ipv4Addr::LOCALHOST.into()),
        )
        .query_async(&mut redis.conn().await)
        .await
        .expect("ZCARD");
    assert_eq!(by_address, i64::from(limit));
    for job in busy {
        job.await.expect("joins").expect("pool").expect("hashed");
    }
    // Queued after theirs: when it is answered, theirs have had their turn.
    let unknown = hashing
        .verify(Secret::new("x".to_owned()), None)
        .await
        .expect("pool");
    assert!(!unknown);
    assert_eq!(
        hashing.verifications(),
        before + 1,
        "the checks no one waited for were run"
    );
    server
        .client
        .clone()
        .login_user(login("alice", "secret-password-1"))
        .await
        .expect("not throttled");
    server.stop().await.expect("server stops");
}

/// `attempts` sign-ins of alice with a wrong password, all at once: how many were refused
/// (UNAUTHENTICATED, the password checked) and how many throttled.
async fn wrong_passwords_at_once(server: &TestServer, attempts: usize) -> (usize, usize) {
    let calls: Vec<_> = (0..attempts)
        .map(|_| {
            let mut client = server.client.clone();
            tokio::spawn(async move { client.login_user(login("alice", "wrong-password-1")).await })
        })
        .collect();
    let (mut refused, mut throttled) = (0, 0);
    for call in calls {
        let err = call.await.expect("joins").expect_err("a wrong password");
        match err.code() {
            Code::Unauthenticated => refused += 1,
            Code::ResourceExhausted if err.message().contains("failed sign-ins") => throttled += 1,
            _ => panic!("unexpected: {err:?}"),
        }
    }
    (refused, throttled)
}

/// Many wrong passwords at once for one username: each attempt takes its place in the count
/// before its password is checked, so no more than the limit are ever verified.
#[tokio::test]
async fn concurrent_wrong_passwords_verify_no_more_than_the_limit() {
    const ATTEMPTS: usize = 40;
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let (server, hashing) = alice_signed_up(&db, &redis).await;
    let limit = test_auth().login.per_username as usize;
    assert!(limit < ATTEMPTS);

    let before = hashing.verifications();
    let outcomes = wrong_passwords_at_once(&server, ATTEMPTS).await;
    assert_eq!(hashing.verifications() - before, limit as u64);
    assert_eq!(outcomes, (limit, ATTEMPTS - limit));
    let failures: i64 = redis::cmd("ZCARD")
        .arg(redis.keys().login_failures_username("alice"))
        .query_async(&mut redis.conn().await)
        .await
        .expect("ZCARD");
    assert_eq!(failures, limit as i64);
    server.stop().await.expect("server stops");
}

/// A success takes back its reservation: successful sign-ins never count against the address,
/// one after another or several at once.
#[tokio::test]
async fn successful_sign_ins_leave_no_count_behind() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let server = TestServer::start_with(
        common_config(db.url.clone(), &redis),
        LIMITS,
        test_auth(),
        HashPool::new(1),
    )
    .await;
    let mut client = server.client.clone();
    client
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("sign up");
    for _ in 0..3 {
        client
            .login_user(login("alice", "secret-password-1"))
            .await
            .expect("sign in");
    }
    // Several devices at once: each success finds alice's count already forgotten by another
    // (its place in it gone), and must still leave the address's count.
    let devices: Vec<_> = (0..4)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(
                async move { client.login_user(login("alice", "secret-password-1")).await },
            )
        })
        .collect();
    for device in devices {
        device.await.expect("joins").expect("sign in");
    }
    let mut conn = redis.conn().await;
    for key in [
        redis.keys().login_failures_username("alice"),
        redis
            .keys()
            .login_failures_address(&"127.0.0.1".parse().expect("ip")),
    ] {
        let count: i64 = redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("ZCARD");
        assert_eq!(count, 0, "{key}");
    }
    server.stop().await.expect("server stops");
}

/// LogoutUser with a refresh token already exchanged is a replay, as in RenewAccessToken: the
/// session ends, so whoever holds the current token is signed out too.
#[tokio::test]
async fn logout_with_an_exchanged_refresh_token_ends_the_session() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let server = TestServer::start_with(
        common_config(db.url.clone(), &redis),
        LIMITS,
        test_auth(),
        HashPool::new(1),
    )
    .await;
    let mut client = server.client.clone();
    client
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("sign up");
    let signed_in = client
        .login_user(login("alice", "secret-password-1"))
        .await
        .expect("sign in")
        .into_inner();
    let renewed = client
        .renew_access_token(RenewAccessTokenRequest {
            refresh_token: signed_in.refresh_token.clone(),
        })
        .await
        .expect("renew")
        .into_inner();

    let err = client
        .logout_user(LogoutUserRequest {
            refresh_token: signed_in.refresh_token,
            all_sessions: false,
        })
        .await
        .expect_err("an exchanged token");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("already used"), "{}", err.message());
    let session = db
        .store
        .session(signed_in.session_id.parse().expect("uuid"))
        .await
        .expect("session");
    assert_eq!(
        session.revoked_reason.as_deref(),
        Some("refresh_token_reused")
    );
    let err = client
        .renew_access_token(RenewAccessTokenRequest {
            refresh_token: renewed.refresh_token,
        })
        .await
        .expect_err("the session ended");
    assert_eq!(err.code(), Code::Unauthenticated);
    server.stop().await.expect("server stops");
}

/// A server with one hashing thread on a Redis of its own (and a namespace there), which
/// leaves Redis alone for `outage_pause` once it has timed out; alice and bob signed up, their
/// sign-up tasks published (no script of the queue's runs after it returns), and the
/// throttle's scripts loaded (a failure, then a success that forgets it).
async fn alice_and_bob_on_a_private_redis(
    outage_pause: Duration,
) -> (TestDb, RedisServer, TestRedis, TestServer, HashPool) {
    let db = TestDb::create().await;
    let redis = RedisServer::start().await;
    let test_redis = TestRedis::at(redis.address());
    let mut auth = test_auth();
    auth.login.outage_pause = outage_pause;
    let hashing = HashPool::new(1);
    let server = TestServer::start_with(
        common_config(db.url.clone(), &test_redis),
        LIMITS,
        auth,
        hashing.clone(),
    )
    .await;
    let mut client = server.client.clone();
    for name in ["alice", "bob"] {
        client
            .create_user(request(name, &format!("{name}@example.com")))
            .await
            .expect("sign up");
    }
    client
        .login_user(login("alice", "wrong-password-1"))
        .await
        .expect_err("wrong password");
    client
        .login_user(login("alice", "secret-password-1"))
        .await
        .expect("sign in");
    eventually(
        "the sign-ups' tasks are published",
        Duration::from_secs(30),
        || async { db.store.outbox_len().await.is_ok_and(|len| len == 0) },
    )
    .await;
    (db, redis, test_redis, server, hashing)
}

/// Longer than a test: nothing may depend on how fast the machine is.
const LONG_PAUSE: Duration = Duration::from_secs(600);

/// How many scripts (EVALSHA) Redis has run.
async fn scripts_run(redis: &TestRedis) -> u64 {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}

/// With Redis hung, only the first sign-in waits for it: after a timeout Redis is left alone
/// for a while. Counted, not timed: every call that reached the hung Redis runs once it
/// wakes, so the scripts it then runs are the calls that went to it.
#[tokio::test]
async fn after_a_redis_timeout_sign_in_leaves_redis_alone_for_a_while() {
    let (_db, redis, test_redis, server, _) = alice_and_bob_on_a_private_redis(LONG_PAUSE).await;
    let mut client = server.client.clone();
    let before = scripts_run(&test_redis).await;

    redis.pause();
    for _ in 0..4 {
        let err = client
            .login_user(login("alice", "wrong-password-1"))
            .await
            .expect_err("wrong password");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    // Sign-in still works, counted in memory (another user: a success forgets alice's failures).
    client
        .login_user(login("bob", "secret-password-1"))
        .await
        .expect("sign in while Redis hangs");
    redis.resume();

    // The first attempt's reservation, sent before the timeout, runs now, and the release
    // that takes it back behind it (all that was queued on that connection, in one go).
    eventually(
        "the queued scripts ran",
        Duration::from_secs(30),
        || async { scripts_run(&test_redis).await >= before + 2 },
    )
    .await;
    assert_eq!(
        scripts_run(&test_redis).await,
        before + 2,
        "only the first sign-in asked the hung Redis"
    );
    let failures: i64 = redis::cmd("ZCARD")
        .arg(test_redis.keys().login_failures_username("alice"))
        .query_async(&mut test_redis.conn().await)
        .await
        .expect("ZCARD");
    assert_eq!(
        failures, 0,
        "a reservation that timed out, counted in memory instead, is taken back"
    );
    server.stop().await.expect("server stops");
}

/// A sign-in reserved in Redis that succeeds while Redis is hung and left alone still
/// releases its place: the release is queued behind the reservation and runs when Redis
/// wakes, forgetting alice's failures (dropped, it would have left her count at two).
#[tokio::test]
async fn a_success_while_redis_is_left_alone_still_releases_its_place() {
    let (_db, redis, test_redis, server, hashing) =
        alice_and_bob_on_a_private_redis(LONG_PAUSE).await;
    let key = test_redis.keys().login_failures_username("alice");
    let failures = || zcard(&test_redis, &key);
    client_login_fails(&server).await;
    // The one hashing thread kept busy (some seconds), so that alice's sign-in waits with its
    // place taken until bob's has found Redis hung (half a second).
    let busy = keep_busy(&hashing);
    tokio::task::yield_now().await;
    let mut client = server.client.clone();
    let signing_in =
        tokio::spawn(async move { client.login_user(login("alice", "secret-password-1")).await });
    eventually(
        "alice's sign-in took its place",
        Duration::from_secs(60),
        || {
            let failures = failures();
            async move { failures.await == 2 }
        },
    )
    .await;

    redis.pause();
    // bob's sign-in finds Redis hung: Redis is left alone from now on.
    let err = server
        .client
        .clone()
        .login_user(login("bob", "wrong-password-1"))
        .await
        .expect_err("wrong password");
    assert_eq!(err.code(), Code::Unauthenticated);
    // bob's check was queued behind alice's: she has her answer.
    drop(busy);
    signing_in
        .await
        .expect("joins")
        .expect("alice signs in while Redis hangs");
    redis.resume();

    eventually(
        "alice's failures forgotten",
        Duration::from_secs(30),
        || {
            let failures = failures();
            async move { failures.await == 0 }
        },
    )
    .await;
    server.stop().await.expect("server stops");
}

/// During an outage, with no pause between tries, one sign-in at a time asks Redis whether it
/// is back; the others are counted in memory meanwhile, not each waiting out a timeout.
/// Counted, not timed, as above: each call that asked the hung Redis left two scripts queued
/// there (its reservation, and the release taking it back).
#[tokio::test]
async fn during_an_outage_one_sign_in_at_a_time_asks_redis() {
    const CALLS: u64 = 10;
    let (_db, redis, test_redis, server, _) =
        alice_and_bob_on_a_private_redis(Duration::ZERO).await;
    let before = scripts_run(&test_redis).await;

    redis.pause();
    client_login_fails(&server).await;
    // Each for a username of its own, so that none is at its limit.
    let calls: Vec<_> = (0..CALLS)
        .map(|n| {
            let mut client = server.client.clone();
            let attempt = login(&format!("nobody{n}"), "wrong-password-1");
            tokio::spawn(async move { client.login_user(attempt).await })
        })
        .collect();
    for call in calls {
        let err = call.await.expect("joins").expect_err("no such user");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    redis.resume();

    eventually(
        "the queued scripts ran",
        Duration::from_secs(30),
        || async { scripts_run(&test_redis).await >= before + 4 },
    )
    .await;
    let asked = (scripts_run(&test_redis).await - before) / 2;
    assert!(
        asked <= CALLS / 2,
        "{asked} calls asked the hung Redis (1 + {CALLS} without a single probe)"
    );
    server.stop().await.expect("server stops");
}

/// One wrong password for alice (the call that finds Redis hung).
async fn client_login_fails(server: &TestServer) {
    let err = server
        .client
        .clone()
        .login_user(login("alice", "wrong-password-1"))
        .await
        .expect_err("wrong password");
    assert_eq!(err.code(), Code::Unauthenticated);
}

/// Whether `result` is the throttle's refusal.
fn throttled<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> bool {
    let err = result.expect_err("refused");
    err.code() == Code::ResourceExhausted && err.message().contains("failed sign-ins")
}

/// With Redis hung, sign-ins are counted in the server's memory: many wrong passwords at once
/// still verify no more than the limit, and the username stays refused, its right password
/// included, while another user from the same address signs in.
#[tokio::test]
async fn with_redis_hung_wrong_passwords_are_still_limited_in_memory() {
    const ATTEMPTS: usize = 20;
    let (_db, redis, _, server, hashing) = alice_and_bob_on_a_private_redis(LONG_PAUSE).await;
    let limit = test_auth().login.per_username as usize;
    let mut client = server.client.clone();

    redis.pause();
    let before = hashing.verifications();
    let outcomes = wrong_passwords_at_once(&server, ATTEMPTS).await;
    assert_eq!(outcomes, (limit, ATTEMPTS - limit));
    assert_eq!(hashing.verifications() - before, limit as u64);
    assert!(
        throttled(client.login_user(login("alice", "secret-password-1")).await),
        "alice's username is at its limit, whatever the password"
    );
    assert_eq!(hashing.verifications() - before, limit as u64);
    client
        .login_user(login("bob", "secret-password-1"))
        .await
        .expect("another username from the same address signs in");
    redis.resume();
    server.stop().await.expect("server stops");
}

/// With Redis down, sign-ins are limited in memory; once Redis answers again its counts
/// decide (a restarted Redis holds none of the failures counted in memory), and a success
/// there forgets the memory's count too: the next outage starts alice from nothing.
#[tokio::test]
async fn with_redis_down_sign_ins_are_limited_in_memory_until_it_answers_again() {
    let db = TestDb::create().await;
    let mut redis = RedisServer::start().await;
    let (server, hashing) = alice_signed_up(&db, &TestRedis::at(redis.address())).await;
    let mut client = server.client.clone();

    for outage in 0..2 {
        redis.kill();
        let before = hashing.verifications();
        assert_limited(&mut client).await;
        assert_eq!(
            hashing.verifications() - before,
            u64::from(test_auth().login.per_username),
            "outage {outage}"
        );

        redis.restart().await;
        eventually(
            "alice signs in once Redis answers again",
            Duration::from_secs(30),
            || {
                let mut client = client.clone();
                async move {
                    client
                        .login_user(login("alice", "secret-password-1"))
                        .await
                        .is_ok()
                }
            },
        )
        .await;
    }
    server.stop().await.expect("server stops");
}

/// The limit's worth of wrong passwords for alice are checked, then she is refused whatever
/// the password.
async fn assert_limited(client: &mut SimpleBankClient<Channel>) {
    for _ in 0..test_auth().login.per_username {
        let err = client
            .login_user(login("alice", "wrong-password-1"))
            .await
            .expect_err("a wrong password");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    for password in ["wrong-password-1", "secret-password-1"] {
        assert!(throttled(client.login_user(login("alice", password)).await));
    }
}

/// A password change in flight while LoginUser checks the old password: the sign-in read the
/// old hash and verified it, then waits on the change's row lock, and once the change commits
/// starts no session.
#[tokio::test]
async fn a_sign_in_racing_a_password_change_starts_no_session() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let (server, hashing) = alice_signed_up(&db, &redis).await;

    // The change, as UpdateUser's transaction makes it, held open.
    let mut change = db.store.pool().begin().await.expect("begin");
    sqlx::query(
        "UPDATE users SET hashed_password = 'changed', password_changed_at = now() \
         WHERE username = 'alice'",
    )
    .execute(&mut *change)
    .await
    .expect("change the password");
    let before = hashing.verifications();
    let login = {
        let mut client = server.client.clone();
        tokio::spawn(async move { client.login_user(login("alice", "secret-password-1")).await })
    };
    // (Without the check the sign-in does not wait: it finishes, with a session.)
    eventually(
        "the sign-in waits on the user row, or is done",
        Duration::from_secs(60),
        || async { login.is_finished() || db.waiting_on_locks().await.is_ok_and(|n| n == 1) },
    )
    .await;
    assert_eq!(
        hashing.verifications(),
        before + 1,
        "the old password was verified"
    );
    change.commit().await.expect("commit the change");

    let err = login.await.expect("joins").expect_err("no session");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        db.store
            .sessions_of("alice")
            .await
            .expect("sessions")
            .is_empty()
    );
    server.stop().await.expect("server stops");
}

/// A PostgreSQL that hangs (SIGSTOP: it accepts connections and answers nothing) ends the calls
/// that need it UNAVAILABLE at the store's limit, inside the call's own: sign-in, renewal and
/// verification waited for the 10 s call limit and ended DEADLINE_EXCEEDED (an outside attack).
/// Once PostgreSQL goes on, sign-in works again.
#[tokio::test]
async fn a_hung_postgres_ends_calls_unavailable_not_at_the_call_limit() {
    let postgres = PostgresServer::start("hung-signin-pw");
    let db_url = Secret::new(format!(
        "postgres://postgres:hung-signin-pw@127.0.0.1:{}/postgres?sslmode=disable",
        postgres.port
    ));
    let redis = TestRedis::new();
    let server = TestServer::start(common_config(db_url, &redis)).await;
    let mut client = server.client.clone();
    client
        .create_user(request("alice", "alice@example.com"))
        .await
        .expect("sign up");
    let signed_in = client
        .login_user(login("alice", "secret-password-1"))
        .await
        .expect("sign in")
        .into_inner();

    let paused = postgres.pause();
    let (mut a, mut b, mut c) = (client.clone(), client.clone(), client.clone());
    let codes = tokio::join!(
        a.login_user(login("alice", "secret-password-1")),
        b.renew_access_token(RenewAccessTokenRequest {
            refresh_token: signed_in.refresh_token.clone(),
        }),
        c.verify_email(VerifyEmailRequest {
            email_id: 1,
            secret_code: "a".repeat(32),
        }),
    );
    let codes = [
        codes.0.map(|_| ()),
        codes.1.map(|_| ()),
        codes.2.map(|_| ()),
    ]
    .map(|result| result.expect_err("PostgreSQL is hung"));
    for status in &codes {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(
            status.message(),
            "the database is unavailable; try again later"
        );
    }

    drop(paused);
    eventually("sign-in works again", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            client
                .login_user(login("alice", "secret-password-1"))
                .await
                .is_ok()
        }
    })
    .await;
    server.stop().await.expect("server stops");
}
