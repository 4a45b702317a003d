//! TLS and client certificates on the real binary, called with the real grpcurl. The CAs and
//! certificates are made in the test (`certs`), so the tests need nothing outside the build.

use std::{
    io::Read,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use simplebank_core::testing::{TempDir, TestDb, TestRedis, eventually, free_port, sigterm};

use crate::{
    certs::{Ca, write},
    e2e::{run_grpcurl, server_command},
};

const CREATE_ALICE: &str = r#"{"username":"alice","full_name":"Alice Liddell","email":"alice@example.com","password":"plum-tractor-galaxy"}"#;

/// Starts the binary with `tls_env` and waits until grpcurl with `client_args` sees SERVING.
async fn start(
    db: &TestDb,
    redis: &TestRedis,
    tls_env: &[(&str, &str)],
    client_args: &[&str],
) -> (tokio::process::Child, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let child = server_command(db, redis, &address)
        .envs(tls_env.iter().copied())
        .spawn()
        .expect("start simplebank-server");
    let (target, args): (String, Vec<String>) = (
        address.clone(),
        client_args.iter().map(|a| (*a).to_owned()).collect(),
    );
    eventually(
        "the TLS server reports SERVING",
        Duration::from_secs(30),
        move || {
            let mut call = args.clone();
            call.extend([target.clone(), "grpc.health.v1.Health/Check".into()]);
            async move {
                let call: Vec<&str> = call.iter().map(String::as_str).collect();
                let (ok, text) = run_grpcurl(&call);
                ok && text.contains("\"SERVING\"")
            }
        },
    )
    .await;
    (child, address)
}

#[tokio::test]
async fn with_tls_grpcurl_needs_the_servers_ca_and_plaintext_is_refused() {
    let (db, redis, dir) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let ca = Ca::new("simplebank test CA");
    let (cert, key) = ca.server_cert();
    let ca_file = write(&dir, "ca.pem", &ca.cert_pem);
    let other_ca_file = write(&dir, "other-ca.pem", &Ca::new("some other CA").cert_pem);
    let env = [
        ("GRPC_TLS_CERT_FILE", write(&dir, "server.pem", &cert)),
        ("GRPC_TLS_KEY_FILE", write(&dir, "server.key", &key)),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut child, address) = start(&db, &redis, &env, &["-cacert", &ca_file]).await;

    let (ok, services) = run_grpcurl(&["-cacert", &ca_file, &address, "list"]);
    assert!(ok, "{services}");
    assert!(
        services.lines().any(|l| l == "simplebank.v1.SimpleBank"),
        "{services}"
    );
    let (ok, created) = run_grpcurl(&[
        "-cacert",
        &ca_file,
        "-d",
        CREATE_ALICE,
        &address,
        "simplebank.v1.SimpleBank/CreateUser",
    ]);
    assert!(ok, "{created}");
    let json: serde_json::Value = serde_json::from_str(&created).expect("grpcurl prints JSON");
    assert_eq!(json["user"]["username"], "alice");

    // A plaintext client gets no connection at all, for any call (grpc-go redials a refused
    // connection until its connect timeout, hence the short one).
    for call in [
        vec!["-plaintext", "-connect-timeout", "3", &address, "list"],
        vec![
            "-plaintext",
            "-connect-timeout",
            "3",
            &address,
            "grpc.health.v1.Health/Check",
        ],
        vec![
            "-plaintext",
            "-connect-timeout",
            "3",
            "-d",
            CREATE_ALICE,
            &address,
            "simplebank.v1.SimpleBank/CreateUser",
        ],
    ] {
        let (ok, text) = run_grpcurl(&call);
        assert!(
            !ok && text.contains("Failed to dial"),
            "plaintext {call:?} must fail: {text}"
        );
        assert!(
            !text.contains("SERVING") && !text.contains("alice"),
            "{text}"
        );
    }
    // A client that trusts another CA refuses the server's certificate.
    let (ok, text) = run_grpcurl(&["-cacert", &other_ca_file, &address, "list"]);
    assert!(
        !ok && text.contains("x509: certificate signed by unknown authority"),
        "{text}"
    );
    // So does one that trusts only the system's CAs.
    let (ok, text) = run_grpcurl(&[&address, "list"]);
    assert!(!ok && text.contains("x509"), "{text}");

    let status = sigterm(&mut child, Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_it_signed_get_in() {
    let (db, redis, dir) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let server_ca = Ca::new("simplebank server CA");
    let client_ca = Ca::new("simplebank client CA");
    let (cert, key) = server_ca.server_cert();
    let ca_file = write(&dir, "ca.pem", &server_ca.cert_pem);
    let (client_cert, client_key) = client_ca.client_cert("alice-client");
    let (client_cert, client_key) = (
        write(&dir, "client.pem", &client_cert),
        write(&dir, "client.key", &client_key),
    );
    // Signed by the server's CA, not by the client CA: must not get in either.
    let (rogue_cert, rogue_key) = server_ca.client_cert("mallory-client");
    let (rogue_cert, rogue_key) = (
        write(&dir, "rogue.pem", &rogue_cert),
        write(&dir, "rogue.key", &rogue_key),
    );
    let env = [
        ("GRPC_TLS_CERT_FILE", write(&dir, "server.pem", &cert)),
        ("GRPC_TLS_KEY_FILE", write(&dir, "server.key", &key)),
        (
            "GRPC_TLS_CLIENT_CA_FILE",
            write(&dir, "client-ca.pem", &client_ca.cert_pem),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let with_cert = [
        "-cacert",
        &ca_file,
        "-cert",
        &client_cert,
        "-key",
        &client_key,
    ];
    let (mut child, address) = start(&db, &redis, &env, &with_cert).await;

    let mut call = with_cert.to_vec();
    call.extend([
        "-d",
        CREATE_ALICE,
        &address,
        "simplebank.v1.SimpleBank/CreateUser",
    ]);
    let (ok, created) = run_grpcurl(&call);
    assert!(ok, "{created}");
    assert!(created.contains("\"alice\""), "{created}");

    let (ok, text) = run_grpcurl(&["-cacert", &ca_file, &address, "list"]);
    assert!(
        !ok && text.contains("Failed to dial"),
        "a call without a client certificate must fail: {text}"
    );
    let (ok, text) = run_grpcurl(&[
        "-cacert",
        &ca_file,
        "-cert",
        &rogue_cert,
        "-key",
        &rogue_key,
        &address,
        "list",
    ]);
    assert!(
        !ok && text.contains("Failed to dial"),
        "a client certificate from another CA must fail: {text}"
    );
    let (ok, text) = run_grpcurl(&["-plaintext", "-connect-timeout", "3", &address, "list"]);
    assert!(!ok && text.contains("Failed to dial"), "{text}");
    // The refusals above were the certificates', not a server gone away.
    let mut call = with_cert.to_vec();
    call.extend([&address, "list"]);
    let (ok, text) = run_grpcurl(&call);
    assert!(ok && text.contains("simplebank.v1.SimpleBank"), "{text}");

    let status = sigterm(&mut child, Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

/// Runs the binary with only `env` among the TLS variables; it must stop at start (exit 2)
/// naming `var`, and print no key material. Returns what it printed.
fn refused(dir: &Path, env: &[(&str, &str)], var: &str) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_simplebank-server"));
    for name in [
        "GRPC_TLS_CERT_FILE",
        "GRPC_TLS_KEY_FILE",
        "GRPC_TLS_CLIENT_CA_FILE",
    ] {
        command.env_remove(name);
    }
    let mut child = command
        .envs(env.iter().copied())
        .env("GRPC_SERVER_ADDRESS", format!("127.0.0.1:{}", free_port()))
        // No app.env here: only the variables above count.
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run simplebank-server");
    // A configuration wrongly accepted would serve forever: give it a deadline, not a hang.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for simplebank-server") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{env:?}: simplebank-server started instead of refusing its configuration");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    for mut stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        stream.read_to_string(&mut text).expect("read output");
    }
    assert_eq!(status.code(), Some(2), "{env:?}: {text}");
    assert!(text.contains(var), "{env:?} must name {var}: {text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    text
}

#[test]
fn bad_tls_configuration_stops_the_binary_naming_the_variable() {
    let dir = TempDir::new();
    let ca = Ca::new("simplebank test CA");
    let (cert, key) = ca.server_cert();
    let (_, other_key) = ca.server_cert();
    let cert = write(&dir, "server.pem", &cert);
    let key = write(&dir, "server.key", &key);
    let other_key = write(&dir, "other.key", &other_key);
    let missing = dir.0.join("missing.pem");
    let missing = missing.to_str().expect("UTF-8 temp path");
    let garbage = write(&dir, "garbage.pem", "not PEM at all\n");
    let bad_der = write(
        &dir,
        "bad-der.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let folder = dir.0.to_str().expect("UTF-8 temp path");
    let (c, k, ca_var) = (
        "GRPC_TLS_CERT_FILE",
        "GRPC_TLS_KEY_FILE",
        "GRPC_TLS_CLIENT_CA_FILE",
    );

    // One of the pair without the other.
    refused(&dir.0, &[(c, &cert)], k);
    refused(&dir.0, &[(k, &key)], c);
    // A client CA without TLS would silently check nothing.
    refused(&dir.0, &[(ca_var, &cert)], ca_var);
    // Unreadable files.
    refused(&dir.0, &[(c, missing), (k, &key)], c);
    refused(&dir.0, &[(c, &cert), (k, missing)], k);
    refused(&dir.0, &[(c, folder), (k, &key)], c);
    refused(&dir.0, &[(c, &cert), (k, &key), (ca_var, missing)], ca_var);
    // Endless or huge input is refused, not read into memory.
    refused(&dir.0, &[(c, "/dev/zero"), (k, &key)], c);
    refused(&dir.0, &[(c, &cert), (k, "/dev/urandom")], k);
    // PEM that does not parse, or parses to no certificate or key.
    refused(&dir.0, &[(c, &garbage), (k, &key)], c);
    refused(&dir.0, &[(c, &key), (k, &key)], c);
    refused(&dir.0, &[(c, &bad_der), (k, &key)], c);
    refused(&dir.0, &[(c, &cert), (k, &garbage)], k);
    refused(&dir.0, &[(c, &cert), (k, &cert)], k);
    refused(&dir.0, &[(c, &cert), (k, &key), (ca_var, &garbage)], ca_var);
    refused(&dir.0, &[(c, &cert), (k, &key), (ca_var, &bad_der)], ca_var);
    // A key that is not the certificate's.
    let text = refused(&dir.0, &[(c, &cert), (k, &other_key)], k);
    assert!(text.contains("does not match"), "{text}");
    // Set but empty (a template that did not fill it in) must not mean plaintext.
    for blank in ["", "  "] {
        let text = refused(&dir.0, &[(c, blank), (k, blank)], c);
        assert!(text.contains("set but empty"), "{text}");
        refused(&dir.0, &[(c, &cert), (k, blank)], k);
        refused(&dir.0, &[(c, blank), (k, &key)], c);
        refused(&dir.0, &[(c, &cert), (k, &key), (ca_var, blank)], ca_var);
    }
}

/// The binary's log up to its TLS start-up line, with the key file at `mode`.
async fn startup_log(mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let (db, redis, dir) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let (cert, key) = Ca::new("simplebank test CA").server_cert();
    let key_file = write(&dir, "server.key", &key);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).expect("chmod");
    let address = format!("127.0.0.1:{}", free_port());
    let mut child = server_command(&db, &redis, &address)
        .env("GRPC_TLS_CERT_FILE", write(&dir, "server.pem", &cert))
        .env("GRPC_TLS_KEY_FILE", &key_file)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start simplebank-server");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read the log") {
            log.push_str(&line);
            log.push('\n');
            if line.contains("TLS on") {
                return;
            }
        }
        panic!("the server exited before TLS was on");
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the TLS start-up line");
    let _ = child.kill().await;
    log
}

#[tokio::test]
async fn a_key_file_readable_by_others_is_warned_about_at_start() {
    const WARNING: &str = "readable by group or others";
    let log = startup_log(0o644).await;
    assert!(log.contains(WARNING), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    let log = startup_log(0o600).await;
    assert!(!log.contains(WARNING), "{log}");
}

#[tokio::test]
async fn the_admin_listener_serves_tls_too() {
    let (db, redis, dir) = (TestDb::create().await, TestRedis::new(), TempDir::new());
    let ca = Ca::new("simplebank test CA");
    let (cert, key) = ca.server_cert();
    let ca_file = write(&dir, "ca.pem", &ca.cert_pem);
    let admin = format!("127.0.0.1:{}", free_port());
    let token = "admin-tls-token-0123456789abcdefghijkl";
    let env = [
        ("GRPC_TLS_CERT_FILE", write(&dir, "server.pem", &cert)),
        ("GRPC_TLS_KEY_FILE", write(&dir, "server.key", &key)),
        ("ADMIN_GRPC_ADDRESS", admin.clone()),
        ("ADMIN_TOKEN", token.to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut child, _address) = start(&db, &redis, &env, &["-cacert", &ca_file]).await;

    let header = format!("authorization: bearer {token}");
    // The admin listener may come up a moment after the public one `start` waited for.
    let list = || run_grpcurl(&["-cacert", &ca_file, "-H", &header, &admin, "list"]);
    eventually(
        "the admin listener answers",
        Duration::from_secs(30),
        || {
            let ok = list().0;
            async move { ok }
        },
    )
    .await;
    let (ok, services) = list();
    assert!(ok, "{services}");
    assert!(
        services
            .lines()
            .any(|l| l == "simplebank.admin.v1.QueueAdmin"),
        "{services}"
    );
    let (ok, text) = run_grpcurl(&["-plaintext", "-H", &header, &admin, "list"]);
    assert!(!ok, "plaintext on the TLS admin listener: {text}");
    let status = sigterm(&mut child, Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}
