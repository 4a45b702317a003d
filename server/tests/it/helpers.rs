//! Starting the real server (and worker) in-process, and reading what they stored.

use std::{net::SocketAddr, time::Duration};

use simplebank_core::{
    config::{CommonConfig, Environment},
    password::HashPool,
    secret::Secret,
    store::Store,
    testing::{TempDir, TestDb, TestRedis, eventually},
};
use simplebank_queue::{Backoff, ConsumerSettings};
use simplebank_server::{
    ServerConfig, ServerError,
    admin::config::AdminConfig,
    config::{AuthConfig, CallLimits},
    pb::{CreateUserRequest, simple_bank_client::SimpleBankClient},
};
use simplebank_worker::{WorkerConfig, config::MailerConfig};
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub fn common_config(db_url: Secret<String>, redis: &TestRedis) -> CommonConfig {
    CommonConfig {
        db_source: db_url,
        redis_address: Secret::new(redis.address.clone()),
        redis_tls: Default::default(),
        redis_cluster: false,
        redis_wait: None,
        namespace: redis.namespace.clone(),
        environment: Environment::Development,
    }
}

/// Polls until a server just started at `address` (host:port) accepts gRPC connections, and
/// returns a client connected to it.
pub async fn connect_when_up(address: &str) -> SimpleBankClient<Channel> {
    let url = format!("http://{address}");
    eventually(
        "the server accepts connections",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move { SimpleBankClient::connect(url).await.is_ok() }
        },
    )
    .await;
    SimpleBankClient::connect(url).await.expect("connect")
}

/// Default token, session and throttling settings with a fixed test key.
pub fn test_auth() -> AuthConfig {
    AuthConfig::with_key(*b"test-key-0123456789abcdefghijklm")
}

/// A server running in this test's runtime on a port of its own.
pub struct TestServer {
    pub client: SimpleBankClient<Channel>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    pub async fn start(common: CommonConfig) -> Self {
        Self::start_with_limits(common, CallLimits::default()).await
    }

    /// A server whose `SimpleBank` calls are limited by `limits`.
    pub async fn start_with_limits(common: CommonConfig, limits: CallLimits) -> Self {
        Self::start_with(common, limits, test_auth(), HashPool::new(2)).await
    }

    /// A server with `auth` settings and the hashing pool `hashing` (a clone of which the
    /// test may keep, to count verifications).
    pub async fn start_with(
        common: CommonConfig,
        limits: CallLimits,
        auth: AuthConfig,
        hashing: HashPool,
    ) -> Self {
        let config = ServerConfig {
            common,
            grpc_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            outbox_relay_interval: Duration::from_millis(100),
            health_check_interval: Duration::from_millis(100),
            tls: None,
            limits,
            auth,
            admin: AdminConfig::off(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test port");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(simplebank_server::run_with_hashing(
            config,
            listener,
            async {
                let _ = stopped.await;
            },
            hashing,
        ));
        let client = SimpleBankClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to the test server");
        Self {
            client,
            addr,
            stop: Some(stop),
            handle,
        }
    }

    /// Stops the server (as SIGTERM would) and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.handle).await.expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A worker running in this test's runtime, writing mail into its own folder.
pub struct TestWorker {
    pub mail: TempDir,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl TestWorker {
    pub fn start(common: CommonConfig) -> Self {
        Self::start_with(common, None, Duration::from_secs(15 * 60))
    }

    /// A worker with `mailer` (default: files in its own folder), codes valid for `expiry`,
    /// and retries 100-200 ms apart.
    pub fn start_with(
        common: CommonConfig,
        mailer: Option<MailerConfig>,
        expiry: Duration,
    ) -> Self {
        let mail = TempDir::new();
        let mut consumer = ConsumerSettings::new(format!("test-{}", uuid::Uuid::new_v4()));
        consumer.block = Duration::from_millis(200);
        consumer.visibility_timeout = Duration::from_secs(5);
        consumer.backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(200),
        };
        let config = WorkerConfig {
            common,
            consumer,
            mailer: mailer.unwrap_or_else(|| MailerConfig::File {
                dir: mail.0.clone(),
            }),
            verify_email_expiry: expiry,
            email_sender: "Simple Bank <no-reply@simplebank.test>".into(),
            verify_email_url: "http://localhost:8080/v1/verify_email".into(),
            verify_email_key: Some(Secret::new(TEST_VERIFY_EMAIL_KEY.as_bytes().to_vec())),
            metrics_interval: None,
        };
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            simplebank_worker::run(config, token)
                .await
                .expect("worker runs");
        });
        Self { mail, stop, handle }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

/// The `VERIFY_EMAIL_KEY` of test workers (in-process and binaries).
pub const TEST_VERIFY_EMAIL_KEY: &str = "test-verify-email-key-0123456789abcdef";

pub fn request(username: &str, email: &str) -> CreateUserRequest {
    CreateUserRequest {
        username: username.into(),
        full_name: "Alice Liddell".into(),
        email: email.into(),
        password: "secret-password-1".into(),
    }
}

pub async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .expect("count query")
}

/// Waits until `username` has exactly one verification record and `worker` wrote one email.
pub async fn wait_for_verification(db: &TestDb, worker: &TestWorker, username: &str) {
    let store = db.store.clone();
    let username = username.to_owned();
    eventually(
        "the worker created the verification record and marked its email sent",
        Duration::from_secs(20),
        || {
            let (store, username) = (store.clone(), username.clone());
            async move {
                // Sent is noted after the file is written: waiting only for the file raced.
                store
                    .verify_emails_of(&username)
                    .await
                    .map(|rows| rows.len() == 1 && rows[0].email_sent_at.is_some())
                    .unwrap_or(false)
            }
        },
    )
    .await;
    eventually(
        "the worker wrote the email",
        Duration::from_secs(10),
        || {
            let files = worker.mail.files();
            async move {
                files
                    .iter()
                    .any(|f| f.extension().is_some_and(|e| e == "eml"))
            }
        },
    )
    .await;
}

/// The entries of a task stream, as field maps.
pub async fn stream_entries(
    redis: &TestRedis,
    queue: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let key = redis
        .keys()
        .stream(&simplebank_queue::QueueName::parse(queue).expect("queue name"));
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut redis.conn().await)
        .await
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|entry| {
            entry
                .map
                .iter()
                .map(|(k, v)| {
                    let value: String = redis::from_redis_value_ref(v).expect("string field");
                    (k.clone(), value)
                })
                .collect()
        })
        .collect()
}
