//! simplebank-worker: the worker program of simplebank. The consumer engine is the queue
//! crate's ([`simplebank_queue::Worker`]); this crate adds what is simplebank's own: the
//! `send_verify_email` handler, the mailers, and the settings read from the environment.
//!
//! [`run`] wires the project's handlers and runs the engine until shutdown.

#![warn(missing_docs)]

pub mod config;
pub mod handlers;
pub mod mail;
pub mod migrate_redis;
pub mod signals;

use std::sync::Arc;

use simplebank_core::{
    secret::{MIN_CODE_KEY_LEN, Secret, random_code},
    store::{Store, StoreError},
    tasks::SendVerifyEmail,
};
use simplebank_queue::{ConsumerError, Handlers, Worker};
use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;

use crate::{
    config::MailerConfig,
    handlers::SendVerifyEmailHandler,
    mail::{FileMailer, MailError, Mailer, smtp::SmtpMailer},
};

/// Why the worker program stopped before its shutdown; each names the setting to look at.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The database settings are unusable.
    #[error("cannot use PostgreSQL (DB_SOURCE)")]
    Store(#[from] StoreError),
    /// The consumer cannot run: Redis refuses it or the address is not one, or a `WORKER_*`
    /// setting is unusable.
    #[error("cannot run the task consumer (REDIS_ADDRESS, WORKER_*)")]
    Consumer(#[from] ConsumerError),
    /// The SMTP mailer cannot be set up.
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
    let handlers = Handlers::new().on::<SendVerifyEmail>(SendVerifyEmailHandler::new(
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
    ));
    let mut worker = Worker::with_endpoint(
        config
            .common
            .redis_endpoint()
            .map_err(ConsumerError::Address)?,
        config.common.namespace.clone(),
        config.consumer,
        handlers,
    )?;
    if let Some(every) = config.metrics_interval {
        worker = worker.with_queue_depth(every);
    }
    Ok(worker.run(shutdown).await?)
}
