//! A password refused while reconnecting is not refused forever. When Redis refuses the
//! programs' user for a moment (its password rotated and set back, the user re-created after a
//! restart), a connection built as the programs build theirs (`Endpoint::connect_lazy`) must
//! work again once the user is accepted, without a restart. Found by an outside test: the
//! server stayed NOT_SERVING and the worker idle, with no client connected, long after the
//! password was back.

use std::time::Duration;

use simplebank_queue::{
    connection::{Connection, Endpoint, Tls},
    testing::{RedisServer, TestRedis, eventually},
};

async fn ping(conn: &mut Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[tokio::test]
async fn a_connection_works_again_once_its_password_is_accepted_again() {
    let server = RedisServer::start().await;
    let rules = ["~*".to_owned(), "+@all".to_owned()];
    let admin = server.restrict_to("app", "first-password", &rules).await;
    let mut admin = TestRedis::at(admin).conn().await;
    let address = format!("redis://app:first-password@{}", server.address());
    let endpoint = Endpoint::parse(&address, false, &Tls::default()).unwrap();
    let mut conn = endpoint.connect_lazy(Duration::from_secs(2)).unwrap();
    ping(&mut conn).await.expect("the user's first PING");

    // The password changes and the user's connections are cut: reconnecting is refused.
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "app", "resetpass", ">other-password"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", "app"])
        .query_async(&mut admin)
        .await
        .unwrap();
    eventually(
        "reconnecting is refused: the password",
        Duration::from_secs(10),
        || {
            let mut conn = conn.clone();
            async move {
                ping(&mut conn)
                    .await
                    .is_err_and(|e| e.kind() == redis::ErrorKind::AuthenticationFailed)
            }
        },
    )
    .await;

    // The password is back: the same connection must work again.
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "app", "resetpass", ">first-password"])
        .query_async(&mut admin)
        .await
        .unwrap();
    eventually(
        "the connection answers again with the password accepted",
        Duration::from_secs(30),
        || {
            let mut conn = conn.clone();
            async move { ping(&mut conn).await.is_ok() }
        },
    )
    .await;
}
