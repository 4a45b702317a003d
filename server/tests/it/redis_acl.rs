//! The server and the worker as a least-privilege Redis ACL user
//! (`redis://user:password@host:port`): a redis-server of the test's own with exactly the user
//! of `simplebank_core::keys::acl_setuser_rules` and the `default` user off. The sign-up runs
//! end to end; Redis refused nothing but the optional commands; the password appears in no log
//! line and in no start-up error.

use simplebank_core::{
    keys::acl_setuser_rules,
    testing::{RedisServer, TestDb, TestRedis},
};
use simplebank_queue::{Namespace, acl::OPTIONAL};

use crate::stores::{binary, run_to_exit, sign_up_end_to_end};

const PASSWORD: &str = "acl-Pa55word-never-logged";

#[tokio::test]
async fn a_sign_up_runs_end_to_end_as_the_least_privilege_acl_user() {
    let db = TestDb::create().await;
    let server = RedisServer::start().await;
    let namespace =
        Namespace::parse(&format!("acl-{}", uuid::Uuid::new_v4().simple())).expect("namespace");
    let admin = TestRedis {
        address: server
            .restrict_to("simplebank", PASSWORD, &acl_setuser_rules(&namespace))
            .await,
        namespace: namespace.clone(),
    };
    let user_address = format!("redis://simplebank:{PASSWORD}@{}", server.address());
    let env = [
        ("DB_SOURCE", db.url.expose().clone()),
        ("REDIS_ADDRESS", user_address.clone()),
        ("REDIS_NAMESPACE", namespace.as_str().to_owned()),
    ];
    let logs = sign_up_end_to_end(&env, "acl_alice").await;
    assert!(logs.contains("processed task"), "{logs}");
    assert!(
        !logs.contains(PASSWORD),
        "the password in a log line:\n{logs}"
    );

    // The throttle falls back to counting in memory, so a refused command there would not
    // fail the sign-up: the ACL log shows every refusal.
    let denials: Vec<String> = admin
        .acl_denials()
        .await
        .into_iter()
        .filter(|line| !OPTIONAL.iter().any(|optional| line.ends_with(optional)))
        .collect();
    assert!(denials.is_empty(), "Redis refused: {denials:#?}");
    let mut conn = admin.conn().await;
    let counted: i64 = redis::cmd("EXISTS")
        .arg(format!(
            "{{{}}}:login_failures:username:acl_alice",
            namespace.as_str()
        ))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(counted, 1, "the failed sign-in was counted");

    // A wrong password, and an unknown user: both programs stop at start (exit 2), naming
    // REDIS_ADDRESS and never showing the password given.
    for wrong in [
        format!("redis://simplebank:{PASSWORD}-typo@{}", server.address()),
        format!("redis://nobody:{PASSWORD}@{}", server.address()),
    ] {
        let env = [
            ("REDIS_ADDRESS", wrong.clone()),
            ("REDIS_NAMESPACE", namespace.as_str().to_owned()),
        ];
        for program in ["simplebank-server", "simplebank-worker"] {
            let (code, stderr) = run_to_exit(&binary(program), &env).await;
            assert_eq!(code, Some(2), "{program}: {stderr}");
            assert!(stderr.contains("REDIS_ADDRESS"), "{program}: {stderr}");
            assert!(stderr.contains("WRONGPASS"), "{program}: {stderr}");
            assert!(!stderr.contains(PASSWORD), "{program}: {stderr}");
        }
    }
}
