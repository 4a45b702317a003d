//! Test helpers (feature `test-util`), for the queue's tests and for services that embed it:
//! real Redis, isolated per test.
//!
//! - [`TestRedis`]: a fresh key namespace on the shared Redis (`REDIS_ADDRESS`, default
//!   `127.0.0.1:6379`), its keys deleted on drop.
//! - [`RedisServer`]: a private `redis-server` on a free port, for tests that stop, pause
//!   (SIGSTOP) or restart it.
//! - [`RedisCluster`]: a private Redis Cluster (three primaries, a replica each).
//! - [`eventually`]: polls a condition with a deadline, instead of sleeping.
#![allow(missing_docs, clippy::unwrap_used)]

mod cluster;

pub use cluster::{NodeInfo, RedisCluster};

use std::{
    future::Future,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::keys::{Keys, Namespace};

const DEFAULT_REDIS_ADDRESS: &str = "127.0.0.1:6379";

/// `REDIS_ADDRESS` of the shared Redis the tests use.
pub fn redis_address() -> String {
    std::env::var("REDIS_ADDRESS").unwrap_or_else(|_| DEFAULT_REDIS_ADDRESS.into())
}

fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// A Redis namespace of its own for one test; its keys are deleted when this drops.
#[derive(Debug)]
pub struct TestRedis {
    pub address: String,
    pub namespace: Namespace,
}

impl TestRedis {
    pub fn new() -> Self {
        Self::at(redis_address())
    }

    /// A namespace on the Redis at `address` (a private server, for instance).
    pub fn at(address: String) -> Self {
        Self {
            address,
            namespace: Namespace::parse(&format!("t-{}", unique_suffix())).expect("valid name"),
        }
    }

    pub fn keys(&self) -> Keys {
        Keys::new(self.namespace.clone())
    }

    pub fn client(&self) -> redis::Client {
        crate::connection::client(&self.address).expect("valid Redis address")
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            // The client's default 500 ms response timeout is for production; a test's own
            // reads must not fail because two busy cores kept Redis waiting that long.
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("Redis at REDIS_ADDRESS answers (run `make services`)")
    }

    /// What the server's ACL refused since it started (`ACL LOG`), one line per entry:
    /// `<user> <reason> <object>` (the reason is `command`, `key`, `channel` or `auth`; the
    /// object a command such as `config|get`, or a key). Needs a user allowed `ACL LOG`.
    pub async fn acl_denials(&self) -> Vec<String> {
        let entries: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("ACL")
            .arg("LOG")
            .query_async(&mut self.conn().await)
            .await
            .expect("ACL LOG");
        let text = |entry: &std::collections::HashMap<String, redis::Value>, field: &str| {
            entry
                .get(field)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .unwrap_or_default()
        };
        entries
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    text(e, "username"),
                    text(e, "reason"),
                    text(e, "object")
                )
            })
            .collect()
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let Ok(mut conn) = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(1))
        else {
            return;
        };
        for pattern in self.keys().patterns() {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
///
/// Taken below the kernel's ephemeral range (32768-60999 by default), from which outgoing
/// connections take their local ports: one of those could take a port from that range
/// between this call and its server's bind (the likely cause of a server that never came up
/// in a clean-clone CI run). Ports are handed out in turn from a start that differs between
/// processes, each checked by binding it, so tests running at once rarely get the same one.
pub fn free_port() -> u16 {
    use std::{
        hash::BuildHasher,
        sync::atomic::{AtomicU32, Ordering},
    };
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let start = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        AtomicU32::new(u32::try_from(start % u64::from(SPAN)).unwrap_or(0))
    });
    for _ in 0..SPAN {
        let n = next.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = u16::try_from(LOW + n).expect("a port under 32000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A `redis-server` process of the test's own, on a free port, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server with no persistence and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra arguments (`["--appendonly", "yes"]`, ...). A free port can
    /// be taken between [`free_port`] and redis-server's bind (by another test's server, or as
    /// the local port of an outgoing connection), so a start that fails is tried again on
    /// another port.
    pub async fn start_with(extra_args: &[&str]) -> Self {
        for _ in 0..5 {
            if let Some(server) = Self::try_start_with(extra_args).await {
                return server;
            }
        }
        panic!("no private redis-server started in five tries");
    }

    /// One try of [`RedisServer::start_with`] on a free port: `None` if redis-server exited
    /// (the port was taken meanwhile, or a port among `extra_args` was).
    pub async fn try_start_with(extra_args: &[&str]) -> Option<Self> {
        let mut server = Self::stopped(free_port(), extra_args);
        server.try_restart().await.then_some(server)
    }

    /// Prepares a server on `port` without starting it: for tests where Redis is down first.
    pub fn stopped(port: u16, extra_args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("simplebank-redis-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir for redis-server");
        Self {
            port,
            dir,
            child: None,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), with the same port, data folder and arguments.
    pub async fn restart(&mut self) {
        assert!(
            self.try_restart().await,
            "private redis-server on port {} exited at start",
            self.port
        );
    }

    /// [`RedisServer::restart`], false if redis-server exited before it answered.
    async fn try_restart(&mut self) -> bool {
        self.kill();
        let child = Command::new(std::env::var("REDIS_SERVER").unwrap_or("redis-server".into()))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (run `make services`)");
        // Answered by this child, not by another test's server that took the port first.
        let pid = format!("process_id:{}", child.id());
        self.child = Some(child);
        let client = crate::connection::client(&self.address()).expect("address");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && let Ok(info) = redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut conn)
                    .await
                && info.lines().any(|line| line.trim_end() == pid)
            {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited {
                self.child = None;
                return false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until private redis-server answers"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adds the ACL user `user` with `password` and exactly `rules` (`ACL SETUSER` syntax), and
    /// `admin` (password `admin`: every key and command, for the test's own checks), then turns
    /// the `default` user off. Returns the admin's address (a `redis://` URL).
    pub async fn restrict_to(&self, user: &str, password: &str, rules: &[String]) -> String {
        let mut conn = TestRedis::at(self.address()).conn().await;
        let admin = [
            "SETUSER", "admin", "reset", "on", ">admin", "~*", "&*", "+@all",
        ];
        let mut restricted = vec!["SETUSER", user, "reset", "on"];
        let password = format!(">{password}");
        restricted.push(&password);
        restricted.extend(rules.iter().map(String::as_str));
        for rule in [&admin[..], &restricted, &["SETUSER", "default", "off"]] {
            let () = redis::cmd("ACL")
                .arg(rule)
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("ACL {rule:?}: {e}"));
        }
        format!("redis://admin:admin@{}", self.address())
    }

    /// Suspends the process (SIGSTOP): connections stay open and commands go unanswered, as
    /// with a hung Redis. [`RedisServer::resume`] lets it go on.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Continues a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} redis-server");
    }

    /// Kills the process at once (SIGKILL): no save, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `check` every 20 ms until it returns true; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports come from below the ephemeral range, and one process gets each once.
    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_not_repeated() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert!(
            ports.iter().all(|port| (10_000..32_000).contains(port)),
            "{ports:?}"
        );
        let distinct: std::collections::HashSet<&u16> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }

    /// A port taken between `free_port` and the bind makes redis-server exit: that start
    /// reports a failure (it used to panic once PING timed out), and `start_with` moves on.
    #[tokio::test]
    async fn a_start_on_a_taken_port_fails_and_start_with_moves_on() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("address").port().to_string();
        let server =
            RedisServer::try_start_with(&["--cluster-enabled", "yes", "--cluster-port", &port])
                .await;
        assert!(
            server.is_none(),
            "redis-server started with its bus port taken"
        );
        // Its own port taken: something accepts there, but it is not this redis-server.
        let mut server = RedisServer::stopped(taken.local_addr().expect("address").port(), &[]);
        assert!(!server.try_restart().await, "started on a taken port");
        let server = RedisServer::start_with(&[]).await;
        let mut conn = TestRedis::at(server.address()).conn().await;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .expect("PING");
        assert_eq!(pong, "PONG");
    }
}
