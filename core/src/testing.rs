//! Test helpers (feature `test-util`): real services, isolated per test.
//!
//! - [`TestDb`]: a fresh database with the migrations applied, dropped when the value drops.
//! - [`TestRedis`], [`RedisServer`], [`eventually`]: the queue's helpers
//!   (`simplebank_queue::testing`), re-exported.
//! - [`TcpProxy`]: a TCP forwarder a test can cut, to make PostgreSQL unreachable on demand.
//! - [`PostgresServer`]: a PostgreSQL server of the test's own (TLS only, or plain), which a
//!   test may hang ([`PostgresServer::pause`]).
//!
//! The shared services come from `DB_SOURCE` and `REDIS_ADDRESS` (the same variables and
//! defaults as the programs), which `make test` points at the services it started.

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::{Connection, Executor, PgConnection, postgres::PgConnectOptions};

use crate::{config::DEFAULT_DB_SOURCE, secret::Secret, store::Store};

fn db_source() -> String {
    std::env::var("DB_SOURCE").unwrap_or_else(|_| DEFAULT_DB_SOURCE.into())
}

pub use simplebank_queue::testing::redis_address;

fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// `(name, CPU seconds: user + system)` from a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat`
/// file (Linux; USER_HZ is 100). For benchmarks.
pub fn proc_cpu(stat_path: &str) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    // utime and stime are fields 14 and 15; after the name they are at 11 and 12.
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((stat[open + 1..close].to_owned(), ticks / 100.0))
}

/// Peak resident memory (`VmHWM`) of process `pid` in MiB; 0 when unknown. For benchmarks.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// A database of its own for one test, migrated. Dropped (with `FORCE`) when this drops.
#[derive(Debug)]
pub struct TestDb {
    /// The database's name (`sbtest_` and a random suffix).
    pub name: String,
    /// A URL for this database, for programs started by the test.
    pub url: Secret<String>,
    /// A store on this database.
    pub store: Store,
    admin: PgConnectOptions,
}

impl TestDb {
    /// Creates the database on the server at `DB_SOURCE` and applies the migrations; panics
    /// if PostgreSQL is not there.
    pub async fn create() -> Self {
        let source = db_source();
        let admin: PgConnectOptions = source.parse().expect("DB_SOURCE is a PostgreSQL URL");
        let admin = admin.database("postgres");
        let name = format!("sbtest_{}", unique_suffix());
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .expect("PostgreSQL at DB_SOURCE answers (run `make services`)");
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("create test database");
        conn.close().await.ok();
        let url = with_database(&source, &name);
        let store = Store::connect_lazy(&Secret::new(url.clone())).expect("test database URL");
        store.migrate().await.expect("migrations apply");
        Self {
            name,
            url: Secret::new(url),
            store,
            admin,
        }
    }
}

/// `source` with its database name replaced by `name`.
fn with_database(source: &str, name: &str) -> String {
    let (base, query) = match source.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (source, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

impl TestDb {
    /// The URL of this database reached through `127.0.0.1:port` (a [`TcpProxy`]).
    pub fn url_via(&self, port: u16) -> Secret<String> {
        Secret::new(with_authority(
            self.url.expose(),
            &format!("127.0.0.1:{port}"),
        ))
    }

    /// A live session of `username` (an hour left; no token of it is ever presented).
    pub async fn live_session(&self, username: &str) -> uuid::Uuid {
        let id = uuid::Uuid::new_v4();
        sqlx::query(
            "INSERT INTO sessions (id, username, refresh_token_hash, user_agent, client_ip, \
               refresh_token_expires_at, expires_at) \
             VALUES ($1, $2, $3, 'test', '127.0.0.1', now() + interval '1 hour', \
               now() + interval '1 hour')",
        )
        .bind(id)
        .bind(username)
        .bind(id.as_bytes().as_slice())
        .execute(self.store.pool())
        .await
        .expect("session");
        id
    }

    /// A password change of `username` under way and not committed, as UpdateUser makes it:
    /// the user's row locked, its password hash `changed`, every session but `kept` ended.
    pub async fn password_change_in_flight(
        &self,
        username: &str,
        kept: uuid::Uuid,
    ) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut change = self.store.pool().begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM users WHERE username = $1 FOR UPDATE")
            .bind(username)
            .execute(&mut *change)
            .await
            .expect("lock the user's row");
        sqlx::query("UPDATE users SET hashed_password = 'changed' WHERE username = $1")
            .bind(username)
            .execute(&mut *change)
            .await
            .expect("the new password");
        sqlx::query(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = 'password_changed' \
             WHERE username = $1 AND id <> $2",
        )
        .bind(username)
        .bind(kept)
        .execute(&mut *change)
        .await
        .expect("the other sessions ended");
        change
    }

    /// How many statements on this database wait on a lock right now (to know that a call
    /// blocked by the test's own transaction is inside its wait).
    pub async fn waiting_on_locks(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(self.store.pool())
        .await
    }

    /// `host:port` of the PostgreSQL server behind `DB_SOURCE`.
    pub fn server_address(&self) -> String {
        format!("{}:{}", self.admin.get_host(), self.admin.get_port())
    }
}

/// `url` with its `host:port` replaced (user, password, database and query kept).
fn with_authority(url: &str, host_port: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!(
        "{}{userinfo}{host_port}{}",
        &url[..scheme_end],
        &rest[authority_end..]
    )
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; the clean-up gets a small runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for clean-up");
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
                    let sql = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                    let _ = conn.execute(sql.as_str()).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

pub use simplebank_queue::testing::{RedisCluster, RedisServer, TestRedis, eventually, free_port};

/// `REDIS_ADDRESS` values that Redis refuses for good, each with a word the programs' message
/// must carry: a database index out of range (on the shared Redis), and, on the private server
/// returned (the `default` user has a password; ACL user `elsewhere` may touch only keys under
/// `other:`), a wrong password, an unknown user, no password, a forbidden key.
pub async fn refusing_redis() -> (RedisServer, Vec<(String, &'static str)>) {
    let server = RedisServer::start().await;
    let mut conn = TestRedis::at(server.address()).conn().await;
    for rule in [
        &["SETUSER", "elsewhere", "on", ">pw", "~other:*", "+@all"][..],
        &["SETUSER", "default", ">right"][..],
    ] {
        let _: () = redis::cmd("ACL")
            .arg(rule)
            .query_async(&mut conn)
            .await
            .expect("ACL SETUSER");
    }
    let shared = redis_address();
    let shared = shared.trim_start_matches("redis://");
    let port = server.port;
    let refusals = vec![
        (format!("redis://{shared}/99"), "DB index is out of range"),
        (format!("redis://:wrong@127.0.0.1:{port}"), "WRONGPASS"),
        (format!("redis://nobody:pw@127.0.0.1:{port}"), "WRONGPASS"),
        (format!("redis://127.0.0.1:{port}"), "NOAUTH"),
        (format!("redis://elsewhere:pw@127.0.0.1:{port}"), "NOPERM"),
    ];
    (server, refusals)
}

/// A PostgreSQL server of the test's own on a free loopback port (`initdb` and `pg_ctl` from
/// the newest `/usr/lib/postgresql/*/bin`, run as the `postgres` user when the test runs as
/// root), accepting connections with a password (`scram-sha-256`) from loopback: TLS only
/// ([`PostgresServer::start_tls`]) or without TLS ([`PostgresServer::start`]). Stopped and
/// removed on drop.
#[derive(Debug)]
pub struct PostgresServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: TempDir,
    bindir: PathBuf,
    as_postgres: bool,
}

impl PostgresServer {
    /// Creates the cluster (superuser `postgres` with `password`) and starts it with
    /// `ssl = on`, TLS connections only; waits until it accepts connections.
    pub fn start_tls(cert_pem: &str, key_pem: &str, password: &str) -> Self {
        Self::start_with(Some((cert_pem, key_pem)), password)
    }

    /// Creates the cluster (superuser `postgres` with `password`) and starts it without TLS;
    /// waits until it accepts connections.
    pub fn start(password: &str) -> Self {
        Self::start_with(None, password)
    }

    fn start_with(tls: Option<(&str, &str)>, password: &str) -> Self {
        let bindir = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (make services)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max_by_key(|bin| {
                bin.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .expect("initdb under /usr/lib/postgresql/*/bin");
        // PostgreSQL refuses to run as root.
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let server = Self {
            port: free_port(),
            dir: TempDir::new(),
            bindir,
            as_postgres,
        };
        let data = server.dir.0.join("data");
        let pwfile = server.dir.0.join("pw");
        std::fs::write(&pwfile, password).expect("password file");
        server.own(&server.dir.0.clone());
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                format!("--pwfile={}", pwfile.display()).as_ref(),
            ],
        );
        let hba = match tls {
            Some((cert_pem, key_pem)) => {
                std::fs::write(data.join("server.crt"), cert_pem).expect("server.crt");
                std::fs::write(data.join("server.key"), key_pem).expect("server.key");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    data.join("server.key"),
                    std::fs::Permissions::from_mode(0o600),
                )
                .expect("chmod server.key");
                "hostssl"
            }
            None => "host",
        };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{hba} all all 127.0.0.1/32 scram-sha-256\n"),
        )
        .expect("pg_hba.conf");
        server.own(&data);
        let ssl = if tls.is_some() {
            " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
        } else {
            ""
        };
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1{ssl} -k {}",
            server.port,
            server.dir.0.display()
        );
        server.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                server.dir.0.join("log").as_os_str(),
                "-w".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                "start".as_ref(),
            ],
        );
        server
    }

    /// Hangs the server (SIGSTOP to the postmaster, then to every process it forked: each
    /// backend, so open connections stop answering too) until the guard returned drops.
    pub fn pause(&self) -> PausedPostgres<'_> {
        let pid_file = std::fs::read_to_string(self.dir.0.join("data").join("postmaster.pid"))
            .expect("postmaster.pid");
        let postmaster = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .expect("postmaster.pid starts with the pid");
        // Stopped first, so it forks nothing while its children are found.
        let mut paused = PausedPostgres {
            pids: Vec::new(),
            _server: self,
        };
        signal("-STOP", postmaster);
        paused.pids.push(postmaster);
        for child in children(postmaster) {
            signal("-STOP", child);
            paused.pids.push(child);
        }
        paused
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("log")).unwrap_or_default()
    }

    fn own(&self, path: &std::path::Path) {
        if self.as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(path)
                .status()
                .expect("chown");
            assert!(status.success(), "chown -R postgres {}", path.display());
        }
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let binary = self.bindir.join(program);
        let output = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&binary)
                .args(args)
                .output()
        } else {
            Command::new(&binary).args(args).output()
        }
        .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
        assert!(
            output.status.success(),
            "{program} failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.dir.0.join("data");
        let args: [&std::ffi::OsStr; 6] = [
            "-D".as_ref(),
            data.as_os_str(),
            "-m".as_ref(),
            "immediate".as_ref(),
            "-w".as_ref(),
            "stop".as_ref(),
        ];
        let binary = self.bindir.join("pg_ctl");
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&binary)
                .args(args)
                .output()
        } else {
            Command::new(&binary).args(args).output()
        };
    }
}

/// A [`PostgresServer`] hung by [`PostgresServer::pause`]; continued (SIGCONT) on drop,
/// a failing test included.
#[derive(Debug)]
pub struct PausedPostgres<'a> {
    pids: Vec<u32>,
    _server: &'a PostgresServer,
}

impl PausedPostgres<'_> {
    /// How many processes were stopped (the postmaster and its children).
    pub fn processes(&self) -> usize {
        self.pids.len()
    }
}

impl Drop for PausedPostgres<'_> {
    fn drop(&mut self) {
        for pid in self.pids.iter().rev() {
            // Not `signal`: a panic in a drop during a test's panic would abort the run.
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// Sends `which` (`-STOP`, `-CONT`) to `pid`.
fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // After the name (which may hold spaces): state, then the parent's pid.
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Forwards connections from a local port to `upstream` until [`TcpProxy::cut`]: then every
/// open connection is closed and new ones are refused, as when a server goes away. One started
/// closed ([`TcpProxy::start_closed`]) closes each connection once its first message is in,
/// as a proxy in front of a server that is down would, until [`TcpProxy::open`].
#[derive(Debug)]
pub struct TcpProxy {
    /// The local port to connect to instead of the upstream one.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
    open: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    /// Raised by [`TcpProxy::freeze`]: connections accepted before stop forwarding.
    frozen: tokio::sync::watch::Sender<u64>,
}

impl TcpProxy {
    /// Starts forwarding a free local port to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        Self::start_with(upstream, true).await
    }

    /// Starts a proxy that closes every connection it accepts until [`TcpProxy::open`].
    pub async fn start_closed(upstream: String) -> Self {
        Self::start_with(upstream, false).await
    }

    async fn start_with(upstream: String, open: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let (open, refused) = (
            Arc::new(AtomicBool::new(open)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (forwarding, refusals) = (Arc::clone(&open), Arc::clone(&refused));
        let frozen = tokio::sync::watch::Sender::new(0u64);
        let freezes = frozen.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !forwarding.load(Ordering::SeqCst) {
                    refusals.fetch_add(1, Ordering::SeqCst);
                    // The client's first message is read before the close, so that it reads
                    // the end of the stream (a close with unread data would be a reset).
                    connections.spawn(async move {
                        let mut first = [0u8; 1024];
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            tokio::io::AsyncReadExt::read(&mut inbound, &mut first),
                        )
                        .await;
                    });
                    continue;
                }
                let upstream = upstream.clone();
                let mut freeze = freezes.subscribe();
                let born = *freeze.borrow_and_update();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let frozen = tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                            _ = freeze.wait_for(|generation| *generation > born) => true,
                        };
                        if frozen {
                            // Both ends held open, nothing forwarded: a black-holed network.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Self {
            port,
            task,
            open,
            refused,
            frozen,
        }
    }

    /// From now on, the connections already forwarded carry nothing more either way and stay
    /// open (a network that black-holes them, no reset); new ones are forwarded.
    pub fn freeze(&self) {
        self.frozen.send_modify(|generation| *generation += 1);
    }

    /// From now on, forwards the connections it accepts.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// How many connections were closed at once while the proxy was closed.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Closes every forwarded connection and stops listening.
    pub fn cut(&self) {
        self.task.abort();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Users rows that bypass the gRPC edge's validation, as another writer could insert them:
/// `(username, email, full_name)`. The first [`MALFORMED_ADDRESSES`] rows must be refused by
/// the mailer; the others are mailed, with nothing of their `full_name` (no name goes into
/// a verification email); none of [`INJECTED`] may reach a message.
pub const MALICIOUS_ROWS: [(&str, &str, &str); 7] = [
    (
        "header",
        "x\r\nBcc: attacker@evil.example\r\nSubject: Pwned\r\nX-A: y <v@example.com>",
        "Alice Liddell",
    ),
    (
        "blank",
        "x\r\n\r\nURGENT: wire money <v@example.com>",
        "Alice Liddell",
    ),
    ("named", "Other <dup@example.com>", "Alice Liddell"),
    (
        "body",
        "body@example.com",
        "Eve\r\n\r\nURGENT: wire money\r\nBcc: attacker@evil.example",
    ),
    ("bidi", "bidi@example.com", "Eve \u{202E}lanigiro"),
    (
        "phish",
        "phish@example.com",
        "Claim your prize at https://evil.example/win",
    ),
    ("good", "good@example.com", "Alice Liddell"),
];

/// How many of [`MALICIOUS_ROWS`], the first, have an address the mailer refuses.
pub const MALFORMED_ADDRESSES: usize = 3;

/// What the rows of [`MALICIOUS_ROWS`] try to put into a message.
pub const INJECTED: [&str; 5] = ["Bcc:", "Pwned", "evil.example", "URGENT", "X-A:"];

/// A folder of the test's own under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh folder under the system temp dir.
    pub fn new() -> Self {
        Self::new_in(&std::env::temp_dir())
    }

    /// A fresh folder inside `parent`.
    pub fn new_in(parent: &std::path::Path) -> Self {
        let path = parent.join(format!("simplebank-test-{}", unique_suffix()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    /// The files in the folder, sorted by name.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `email_id` and `secret_code` of the first verification link in an email's text (raw:
/// quoted-printable soft line breaks and `=3D` are undone first).
pub fn verify_link(message: &str) -> Option<(i64, String)> {
    let message = &message.replace("=\r\n", "").replace("=3D", "=");
    let start = message.find("email_id=")? + "email_id=".len();
    let rest = &message[start..];
    let id_end = rest.find(|c: char| !c.is_ascii_digit())?;
    let id = rest[..id_end].parse().ok()?;
    let code_start = rest.find("secret_code=")? + "secret_code=".len();
    let code: String = rest[code_start..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    Some((id, code))
}

/// Sends SIGTERM to `child` and waits up to `timeout` for it to exit; `None` if it did not.
pub async fn sigterm(
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    tokio::time::timeout(timeout, child.wait()).await.ok()?.ok()
}

/// SIGTERM to `child` (so it shuts down cleanly and a tracing guard flushes its spans), up to
/// 10 s to exit, then SIGKILL.
pub async fn stop_gracefully(child: &mut tokio::process::Child) {
    if sigterm(child, Duration::from_secs(10)).await.is_none() {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/simple_bank?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
    }
}
