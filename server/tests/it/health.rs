//! `grpc.health.v1` while Redis is down, hung (SIGSTOP) or back, and while PostgreSQL is gone:
//! the server's own status follows PostgreSQL only; Redis has a service name of its own.

use std::{net::SocketAddr, process::Command, time::Duration};

use simplebank_core::{
    secret::Secret,
    testing::{RedisServer, TcpProxy, TestDb, TestRedis, eventually, free_port},
};
use simplebank_server::{
    ServerConfig, ServerError, health::REDIS_SERVICE, pb::simple_bank_client::SimpleBankClient,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{common_config, request};

const BANK: &str = "simplebank.v1.SimpleBank";

/// The test server's configuration: quick health checks and relay, default limits.
fn config(db_url: Secret<String>, redis: &TestRedis) -> ServerConfig {
    ServerConfig {
        common: common_config(db_url, redis),
        grpc_address: SocketAddr::from(([127, 0, 0, 1], 0)),
        outbox_relay_interval: Duration::from_millis(100),
        health_check_interval: Duration::from_millis(100),
        tls: None,
        limits: Default::default(),
        auth: crate::helpers::test_auth(),
        admin: simplebank_server::admin::config::AdminConfig::off(),
    }
}

/// The server in-process, with a health client; stopped when dropped.
struct Server {
    health: HealthClient<Channel>,
    bank: SimpleBankClient<Channel>,
    _stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), ServerError>>,
}

impl Server {
    async fn start(db_url: Secret<String>, redis: &TestRedis) -> Self {
        let config = config(db_url, redis);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test port");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(simplebank_server::run(config, listener, async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("URI")
            .connect_lazy();
        Self {
            health: HealthClient::new(channel.clone()),
            bank: SimpleBankClient::new(channel),
            _stop: stop,
            handle,
        }
    }

    /// Waits until `service` reports `want`.
    async fn wait_for(&self, service: &'static str, want: ServingStatus) {
        let health = self.health.clone();
        eventually(
            &format!("{service:?} reports {want:?}"),
            Duration::from_secs(30),
            move || {
                let mut health = health.clone();
                async move { status(&mut health, service).await == Some(want) }
            },
        )
        .await;
    }

    async fn status(&self, service: &str) -> Option<ServingStatus> {
        status(&mut self.health.clone(), service).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn status(health: &mut HealthClient<Channel>, service: &str) -> Option<ServingStatus> {
    let reply = health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

/// Stops (SIGSTOP) a private redis-server, found by the pid it reports; continues it on drop.
struct Frozen(String);

impl Frozen {
    async fn freeze(redis: &TestRedis) -> Self {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut redis.conn().await)
            .await
            .expect("INFO server");
        let pid = info
            .lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .expect("INFO has process_id")
            .trim()
            .to_owned();
        signal("-STOP", &pid);
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(which: &str, pid: &str) {
    let status = Command::new("kill")
        .args([which, pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid}");
}

#[tokio::test]
async fn redis_down_or_hung_shows_under_its_own_name_and_never_takes_the_server_out() {
    let db = TestDb::create().await;
    let mut redis_server = RedisServer::stopped(free_port(), &[]);
    let redis = TestRedis::at(redis_server.address());
    let mut server = Server::start(db.url.clone(), &redis).await;

    // Redis never started: the server serves (sign-ups go through the outbox).
    server.wait_for(BANK, ServingStatus::Serving).await;
    assert_eq!(server.status("").await, Some(ServingStatus::Serving));
    // SERVING for the bank comes from a round that also pinged Redis, which failed.
    assert_eq!(
        server.status(REDIS_SERVICE).await,
        Some(ServingStatus::NotServing)
    );
    let created = server
        .bank
        .create_user(request("alice", "alice@example.com"))
        .await;
    assert!(created.is_ok(), "{created:?}");

    // Redis comes up.
    redis_server.restart().await;
    server.wait_for(REDIS_SERVICE, ServingStatus::Serving).await;
    assert_eq!(server.status(BANK).await, Some(ServingStatus::Serving));

    // Redis hangs: its PING times out; the server stays SERVING.
    let frozen = Frozen::freeze(&redis).await;
    server
        .wait_for(REDIS_SERVICE, ServingStatus::NotServing)
        .await;
    assert_eq!(server.status(BANK).await, Some(ServingStatus::Serving));
    assert_eq!(server.status("").await, Some(ServingStatus::Serving));
    let created = server
        .bank
        .create_user(request("bob", "bob@example.com"))
        .await;
    assert!(created.is_ok(), "{created:?}");

    // Redis resumes.
    drop(frozen);
    server.wait_for(REDIS_SERVICE, ServingStatus::Serving).await;
    assert_eq!(server.status(BANK).await, Some(ServingStatus::Serving));
}

#[tokio::test]
async fn postgres_unreachable_takes_the_server_out_even_while_redis_hangs() {
    let db = TestDb::create().await;
    let proxy = TcpProxy::start(db.server_address()).await;
    let redis_server = RedisServer::start().await;
    let redis = TestRedis::at(redis_server.address());
    let server = Server::start(db.url_via(proxy.port), &redis).await;
    server.wait_for(BANK, ServingStatus::Serving).await;
    server.wait_for(REDIS_SERVICE, ServingStatus::Serving).await;

    // A hung Redis must not stall the checks: PostgreSQL's loss is still seen.
    let _frozen = Frozen::freeze(&redis).await;
    server
        .wait_for(REDIS_SERVICE, ServingStatus::NotServing)
        .await;
    // PostgreSQL's port now refuses connections, and open ones are closed.
    proxy.cut();
    server.wait_for(BANK, ServingStatus::NotServing).await;
    assert_eq!(server.status("").await, Some(ServingStatus::NotServing));
}

#[tokio::test]
async fn an_open_watch_stream_does_not_keep_a_stopping_server_alive() {
    let db = TestDb::create().await;
    let redis = TestRedis::new();
    let mut config = config(db.url.clone(), &redis);
    // The drain limit is the body deadline plus the request timeout.
    config.limits.body_timeout = Duration::from_millis(200);
    config.limits.request_timeout = Duration::from_millis(300);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test port");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(simplebank_server::run(config, listener, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("URI")
        .connect_lazy();
    let mut health = HealthClient::new(channel);
    let mut watch = eventually_watch(&mut health).await;
    // A Watch stream never ends by itself: without a drain limit the server waited for it
    // forever.
    stop.send(()).expect("signal shutdown");
    let stopped = tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .expect("the server stopped with a Watch stream open")
        .expect("join");
    assert!(stopped.is_ok(), "{stopped:?}");
    // The watcher heard NOT_SERVING. (In-process, the connection's task outlives `run`; the
    // binary's exit closes it.)
    let heard = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(reply)) = watch.message().await {
            if ServingStatus::try_from(reply.status) == Ok(ServingStatus::NotServing) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(heard, Ok(true), "the Watch stream was told NOT_SERVING");
}

/// A Watch stream on the overall status, once the server answers it with SERVING.
async fn eventually_watch(
    health: &mut HealthClient<Channel>,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    for _ in 0..300 {
        if let Ok(reply) = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            let mut stream = reply.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(update))
                        if ServingStatus::try_from(update.status) == Ok(ServingStatus::Serving) =>
                    {
                        return stream;
                    }
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server never reported SERVING on a Watch stream");
}
