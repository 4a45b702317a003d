//! simplebank-worker: the processes that run queued tasks.
//!
//! All workers of a namespace form one consumer group on the task streams (one per queue).
//! Each process:
//! - reads new entries in weighted priority order ([`fetch`], [`priority`]);
//! - runs each with its handler, at most `WORKER_CONCURRENCY` at a time ([`dispatch`]);
//! - settles each entry: done, retried with backoff, or dead-lettered ([`dispatch`]);
//! - renews the lease of long tasks, and takes over entries left pending past the visibility
//!   timeout by a crashed worker ([`reclaim`]);
//! - promotes due delayed tasks and retries onto their streams ([`promote`]);
//! - on shutdown stops reading, lets running tasks finish within the shutdown timeout, and
//!   leaves the rest pending for another worker.
//!
//! [`run`] wires the project's handlers; [`Worker`] runs any [`Handlers`] (for embedding).

pub mod ack;
pub mod backoff;
pub mod config;
pub mod dispatch;
pub mod fetch;
pub mod group;
pub mod handler;
pub mod handlers;
pub mod mail;
pub mod priority;
pub mod promote;
pub mod reclaim;
pub mod signals;

use std::{sync::Arc, time::Duration};

use simplebank_core::{
    redis_client,
    secret::{MIN_CODE_KEY_LEN, Secret, random_code},
    store::{Store, StoreError},
    task::{Keys, Namespace, QueueName, TaskPayload},
    tasks::SendVerifyEmail,
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::{ConsumerSettings, WorkerConfig};
pub use handler::{Handler, HandlerError, Handlers};

use crate::{
    config::MailerConfig,
    dispatch::Dispatcher,
    fetch::Fetcher,
    handlers::SendVerifyEmailHandler,
    mail::{FileMailer, MailError, Mailer, smtp::SmtpMailer},
    reclaim::Reclaimer,
};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot use PostgreSQL (DB_SOURCE)")]
    Store(#[from] StoreError),
    #[error("cannot use Redis (REDIS_ADDRESS)")]
    Redis(#[from] redis::RedisError),
    #[error("cannot set up the SMTP mailer (SMTP_HOST)")]
    Mailer(#[from] MailError),
}

/// Runs a worker with this project's handlers until `shutdown` is cancelled.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let store = Store::connect_lazy(&config.common.db_source)?;
    let mailer: Arc<dyn Mailer> = match &config.mailer {
        MailerConfig::File { dir } => Arc::new(FileMailer::new(dir)),
        MailerConfig::Smtp(smtp) => Arc::new(SmtpMailer::new(smtp)?),
    };
    let handlers = Handlers::new().with(
        SendVerifyEmail::TYPE,
        SendVerifyEmailHandler::new(
            store,
            mailer,
            config.email_sender.clone(),
            config.verify_email_url.clone(),
            config.verify_email_expiry,
            config.verify_email_key.clone().unwrap_or_else(|| {
                tracing::warn!(
                    "VERIFY_EMAIL_KEY is not set: using a random key for this process \
                     (development only; workers must share one key, or a redelivered task's \
                     email can carry a code that does not verify)"
                );
                Secret::new(random_code(MIN_CODE_KEY_LEN).expose().clone().into_bytes())
            }),
        ),
    );
    let worker = Worker::new(
        config.common.redis_address.expose(),
        config.common.namespace.clone(),
        config.consumer,
        handlers,
    )?;
    worker.run(shutdown).await
}

/// One worker process's consumer: any handlers, any queues.
#[derive(Debug)]
pub struct Worker {
    client: redis::Client,
    keys: Keys,
    settings: ConsumerSettings,
    handlers: Handlers,
}

impl Worker {
    pub fn new(
        redis_address: &str,
        namespace: Namespace,
        settings: ConsumerSettings,
        handlers: Handlers,
    ) -> Result<Self, WorkerError> {
        Ok(Self {
            client: redis_client::client(redis_address)?,
            keys: Keys::new(namespace),
            settings,
            handlers,
        })
    }

    /// Consumes until `shutdown` is cancelled, then drains as described in the crate docs.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let settings = self.settings;
        let queues: Vec<QueueName> = settings.queues.iter().map(|(q, _)| q.clone()).collect();
        let mut conn =
            redis_client::lazy_manager(self.client.clone(), redis_client::RESPONSE_TIMEOUT)?;
        let fetch_conn = redis_client::lazy_manager(
            self.client.clone(),
            settings.block + redis_client::RESPONSE_TIMEOUT,
        )?;

        if !wait_for_groups(&mut conn, &self.keys, &queues, &shutdown).await? {
            return Ok(());
        }
        // Visible in XINFO CONSUMERS from now on; a failure here only delays that (the first
        // read adds the consumer too), so it is not a reason to stop.
        if let Err(err) = group::join(&mut conn, &self.keys, &queues, &settings.consumer_name).await
        {
            tracing::warn!(error = %err, "cannot join the consumer group yet; the first read will");
        }
        warn_about_redis_settings(&mut conn).await;
        tracing::info!(
            consumer = %settings.consumer_name,
            concurrency = settings.concurrency,
            queues = %settings.queues.iter().map(|(q, w)| format!("{q}:{w}")).collect::<Vec<_>>().join(","),
            "start task processor"
        );

        let slots = Arc::new(Semaphore::new(settings.concurrency));
        let dispatcher = Arc::new(Dispatcher {
            conn: conn.clone(),
            keys: self.keys.clone(),
            handlers: self.handlers,
            acker: ack::Acker::start(conn.clone()),
            consumer: settings.consumer_name.clone(),
            renew_every: settings.renew_interval(),
            backoff: settings.backoff,
            tracker: TaskTracker::new(),
            abandon: CancellationToken::new(),
        });
        let promoter = tokio::spawn(promote::run(
            conn.clone(),
            self.keys.clone(),
            shutdown.clone(),
        ));
        let reclaim = tokio::spawn(
            Reclaimer {
                conn: conn.clone(),
                keys: self.keys.clone(),
                queues: queues.clone(),
                consumer: settings.consumer_name.clone(),
                visibility_timeout: settings.visibility_timeout,
                interval: settings.reclaim_interval(),
                slots: Arc::clone(&slots),
                dispatcher: Arc::clone(&dispatcher),
            }
            .run(shutdown.clone()),
        );
        let fetcher = Fetcher::new(
            fetch_conn,
            &self.keys,
            &settings.queues,
            settings.strict_priority,
            settings.consumer_name.clone(),
            settings.block,
        );
        let reading = fetch::Reading {
            conn: &mut conn,
            keys: &self.keys,
            queues: &queues,
            slots: &slots,
            concurrency: settings.concurrency,
            dispatcher: &dispatcher,
        };
        fetch::run(fetcher, reading, &shutdown).await;
        let _ = tokio::join!(reclaim, promoter);

        dispatcher.tracker.close();
        let running = dispatcher.tracker.len();
        tracing::info!(running, "stopped reading; waiting for running tasks");
        if tokio::time::timeout(settings.shutdown_timeout, dispatcher.tracker.wait())
            .await
            .is_err()
        {
            dispatcher.abandon.cancel();
            dispatcher.tracker.wait().await;
        }
        tracing::info!("task processor stopped");
        Ok(())
    }
}

/// Creates the consumer groups, retrying while Redis is unreachable. False if shut down first;
/// an error if Redis refuses this client (a misconfiguration, which waiting cannot fix).
async fn wait_for_groups(
    conn: &mut redis::aio::ConnectionManager,
    keys: &Keys,
    queues: &[QueueName],
    shutdown: &CancellationToken,
) -> Result<bool, WorkerError> {
    let mut warned = false;
    loop {
        match group::ensure(conn, keys, queues).await {
            Ok(()) => return Ok(true),
            Err(err) if redis_client::is_misconfiguration(&err) => return Err(err.into()),
            Err(err) if !warned => {
                tracing::warn!(error = %err, "cannot reach Redis; retrying");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Warns when Redis may lose tasks: an eviction policy other than `noeviction`, or no AOF.
/// Managed Redis services may refuse CONFIG; then nothing is said.
async fn warn_about_redis_settings(conn: &mut redis::aio::ConnectionManager) {
    let config = |name: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .ok()
                .and_then(|pair| pair.into_iter().nth(1))
        }
    };
    if let Some(policy) = config("maxmemory-policy").await
        && policy != "noeviction"
    {
        tracing::warn!(
            policy,
            "Redis maxmemory-policy is not noeviction: it may evict queued tasks"
        );
    }
    if config("appendonly").await.as_deref() == Some("no") {
        tracing::warn!(
            "Redis runs without AOF (appendonly no): a Redis restart loses queued tasks"
        );
    }
}
