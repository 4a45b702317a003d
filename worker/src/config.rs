//! The worker's settings. See the README's configuration table for every variable.

use std::{path::PathBuf, time::Duration};

use crate::{
    backoff::Backoff,
    mail::smtp::{SmtpConfig, TlsMode},
};
use simplebank_core::{
    config::{self, CommonConfig, ConfigError, Environment},
    secret::{MIN_CODE_KEY_LEN, Secret},
    task::{QueueName, keys::DEFAULT_QUEUES},
};

/// How the worker consumes the streams; independent of what its handlers do.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// `WORKER_CONCURRENCY`, default 10: tasks run at the same time by this process.
    pub concurrency: usize,
    /// `WORKER_QUEUES`, default `critical:6,default:3,low:1`: queues and their weights.
    pub queues: Vec<(QueueName, u32)>,
    /// `WORKER_STRICT_PRIORITY`, default false: always serve the heaviest non-empty queue first.
    pub strict_priority: bool,
    /// `WORKER_VISIBILITY_TIMEOUT`, default 60s: how long an entry may stay pending with its
    /// consumer, without a lease renewal, before another worker takes it over. Running tasks
    /// renew their lease every third of it, so it bounds how long a crashed worker's tasks
    /// wait, not how long a task may run.
    pub visibility_timeout: Duration,
    /// `WORKER_SHUTDOWN_TIMEOUT`, default 10s: how long in-flight tasks may take to finish
    /// after SIGINT/SIGTERM. Unfinished ones stay pending for another worker.
    pub shutdown_timeout: Duration,
    /// `WORKER_CONSUMER_NAME`, default `<hostname>-<pid>`: this process in the consumer group.
    pub consumer_name: String,
    /// How long one blocking read waits when every queue is empty (1s).
    pub block: Duration,
    /// `WORKER_RETRY_BASE_DELAY` (1s) and `WORKER_RETRY_MAX_DELAY` (10m): retry backoff.
    pub backoff: Backoff,
}

impl ConsumerSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let concurrency: usize = config::parse_or("WORKER_CONCURRENCY", 10)?;
        if concurrency == 0 {
            return Err(ConfigError::new("WORKER_CONCURRENCY", "must be at least 1"));
        }
        let queues = match config::var("WORKER_QUEUES")? {
            None => default_queues(),
            Some(raw) => {
                parse_queues(&raw).map_err(|reason| ConfigError::new("WORKER_QUEUES", reason))?
            }
        };
        let visibility_timeout =
            config::duration_or("WORKER_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT)?;
        if visibility_timeout < Duration::from_millis(300) {
            return Err(ConfigError::new(
                "WORKER_VISIBILITY_TIMEOUT",
                "must be at least 300ms (leases are renewed every third of it)",
            ));
        }
        Ok(Self {
            concurrency,
            queues,
            strict_priority: config::parse_or("WORKER_STRICT_PRIORITY", false)?,
            visibility_timeout,
            shutdown_timeout: config::duration_or(
                "WORKER_SHUTDOWN_TIMEOUT",
                Duration::from_secs(10),
            )?,
            consumer_name: match config::var("WORKER_CONSUMER_NAME")? {
                Some(name) => name,
                None => default_consumer_name(),
            },
            block: Duration::from_secs(1),
            backoff: {
                let defaults = Backoff::default();
                let base = config::duration_or("WORKER_RETRY_BASE_DELAY", defaults.base)?;
                let max = config::duration_or("WORKER_RETRY_MAX_DELAY", defaults.max)?;
                if base.is_zero() || max < base {
                    return Err(ConfigError::new(
                        "WORKER_RETRY_MAX_DELAY",
                        "must be at least WORKER_RETRY_BASE_DELAY, which must be above zero",
                    ));
                }
                Backoff { base, max }
            },
        })
    }

    /// Defaults everywhere; for tests and embedding.
    pub fn new(consumer_name: impl Into<String>) -> Self {
        Self {
            concurrency: 10,
            queues: default_queues(),
            strict_priority: false,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            shutdown_timeout: Duration::from_secs(10),
            consumer_name: consumer_name.into(),
            block: Duration::from_secs(1),
            backoff: Backoff::default(),
        }
    }

    /// How often pending entries are checked for takeover: a tenth of the visibility timeout,
    /// at least 100 ms (three XAUTOCLAIMs a scan, so a short timeout does not busy Redis).
    /// A dead worker's entries are taken over at most `visibility_timeout + reclaim_interval`
    /// after its last read or renewal (66 s with the default 60 s).
    pub fn reclaim_interval(&self) -> Duration {
        (self.visibility_timeout / 10).max(MIN_RECLAIM_INTERVAL)
    }

    /// How often a running task renews its lease: a third of the visibility timeout, so two
    /// renewals can fail before another worker may take the task over.
    pub fn renew_interval(&self) -> Duration {
        self.visibility_timeout / 3
    }
}

fn default_queues() -> Vec<(QueueName, u32)> {
    DEFAULT_QUEUES
        .iter()
        .zip([6, 3, 1])
        .map(|(name, weight)| (QueueName::parse(name).expect("valid default names"), weight))
        .collect()
}

/// `<hostname>-<pid>`: unique per process on a host, readable in `XINFO CONSUMERS`.
pub fn default_consumer_name() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{host}-{}", std::process::id())
}

/// Parses `name:weight,name:weight`; weights are positive integers, names unique.
pub fn parse_queues(raw: &str) -> Result<Vec<(QueueName, u32)>, String> {
    let mut queues: Vec<(QueueName, u32)> = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, weight) = item
            .split_once(':')
            .ok_or_else(|| format!("expected name:weight, got {item:?}"))?;
        let name = QueueName::parse(name.trim()).map_err(|e| format!("queue {name:?}: {e}"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .ok()
            .filter(|w| *w > 0)
            .ok_or_else(|| format!("queue {name}: weight must be a positive integer"))?;
        if queues.iter().any(|(existing, _)| *existing == name) {
            return Err(format!("queue {name} is listed twice"));
        }
        queues.push((name, weight));
    }
    if queues.is_empty() {
        return Err("no queues given".into());
    }
    Ok(queues)
}

/// Default of `WORKER_VISIBILITY_TIMEOUT`.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);

/// The floor of [`ConsumerSettings::reclaim_interval`].
const MIN_RECLAIM_INTERVAL: Duration = Duration::from_millis(100);

/// Which mailer sends the verification emails (`EMAIL_MAILER`, default `file`).
#[derive(Debug, Clone)]
pub enum MailerConfig {
    /// `.eml` files in `EMAIL_FILE_DIR` (default `.local/mail`).
    File { dir: PathBuf },
    /// An SMTP server (`SMTP_*`).
    Smtp(SmtpConfig),
}

impl MailerConfig {
    fn from_env() -> Result<Self, ConfigError> {
        let kind = config::var("EMAIL_MAILER")?.unwrap_or_else(|| "file".into());
        match kind.as_str() {
            "file" => Ok(Self::File {
                dir: config::var("EMAIL_FILE_DIR")?
                    .unwrap_or_else(|| ".local/mail".into())
                    .into(),
            }),
            "smtp" => {
                let host = config::var("SMTP_HOST")?.ok_or_else(|| {
                    ConfigError::new("SMTP_HOST", "required when EMAIL_MAILER=smtp")
                })?;
                let tls: TlsMode = config::parse_or("SMTP_TLS", TlsMode::StartTls)?;
                let default_port = match tls {
                    TlsMode::None => 25,
                    TlsMode::StartTls => 587,
                    TlsMode::Tls => 465,
                };
                let credentials =
                    match (config::var("SMTP_USERNAME")?, config::var("SMTP_PASSWORD")?) {
                        (Some(user), Some(password)) => Some((user, Secret::new(password))),
                        (None, None) => None,
                        _ => {
                            return Err(ConfigError::new(
                                "SMTP_USERNAME",
                                "SMTP_USERNAME and SMTP_PASSWORD go together",
                            ));
                        }
                    };
                Ok(Self::Smtp(SmtpConfig {
                    host,
                    port: config::parse_or("SMTP_PORT", default_port)?,
                    credentials,
                    tls,
                    timeout: config::duration_or("SMTP_TIMEOUT", Duration::from_secs(10))?,
                }))
            }
            _ => Err(ConfigError::new("EMAIL_MAILER", "expected file or smtp")),
        }
    }
}

/// Everything `worker::run` needs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub common: CommonConfig,
    pub consumer: ConsumerSettings,
    pub mailer: MailerConfig,
    /// `VERIFY_EMAIL_EXPIRY`, default 15m: how long a verification code is valid.
    pub verify_email_expiry: Duration,
    /// `EMAIL_SENDER`, default `Simple Bank <no-reply@simplebank.local>`.
    pub email_sender: String,
    /// `VERIFY_EMAIL_URL`, default `http://localhost:8080/v1/verify_email`: the base of the
    /// link in the verification email; `email_id` and `secret_code` are appended.
    pub verify_email_url: String,
    /// `VERIFY_EMAIL_KEY`: the secret (at least 32 bytes) that verification codes are derived
    /// from; every worker of a deployment must have the same. Required in production. `None`
    /// only in development: [`crate::run`] then makes a random key for the process and warns.
    pub verify_email_key: Option<Secret<Vec<u8>>>,
}

impl WorkerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env()?;
        let verify_email_key = verify_email_key(common.environment)?;
        Ok(Self {
            common,
            verify_email_key,
            consumer: ConsumerSettings::from_env()?,
            mailer: MailerConfig::from_env()?,
            verify_email_expiry: config::duration_or(
                "VERIFY_EMAIL_EXPIRY",
                Duration::from_secs(15 * 60),
            )?,
            email_sender: config::var("EMAIL_SENDER")?
                .unwrap_or_else(|| "Simple Bank <no-reply@simplebank.local>".into()),
            verify_email_url: config::var("VERIFY_EMAIL_URL")?
                .unwrap_or_else(|| "http://localhost:8080/v1/verify_email".into()),
        })
    }
}

/// The development `VERIFY_EMAIL_KEY` committed in app.env: public, so refused in production
/// (anyone could derive every verification code with it).
const DEVELOPMENT_VERIFY_EMAIL_KEY: &str = "development-only-key-not-a-secret-0123456789";

/// `VERIFY_EMAIL_KEY`: its bytes, at least [`MIN_CODE_KEY_LEN`] of them; required in production.
fn verify_email_key(environment: Environment) -> Result<Option<Secret<Vec<u8>>>, ConfigError> {
    match config::var("VERIFY_EMAIL_KEY")? {
        Some(key)
            if environment == Environment::Production && key == DEVELOPMENT_VERIFY_EMAIL_KEY =>
        {
            Err(ConfigError::new(
                "VERIFY_EMAIL_KEY",
                "is the public development key from app.env; production needs its own secret",
            ))
        }
        Some(key) if key.len() >= MIN_CODE_KEY_LEN => Ok(Some(Secret::new(key.into_bytes()))),
        Some(_) => Err(ConfigError::new(
            "VERIFY_EMAIL_KEY",
            format!("must be at least {MIN_CODE_KEY_LEN} bytes (e.g. openssl rand -base64 48)"),
        )),
        None if environment == Environment::Production => Err(ConfigError::new(
            "VERIFY_EMAIL_KEY",
            "required in production: a secret of at least 32 bytes, the same for every worker",
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    /// The refused key is the one app.env really holds.
    #[test]
    fn the_development_verify_email_key_is_app_envs() {
        let app_env = include_str!("../../app.env");
        assert!(
            app_env
                .lines()
                .any(|l| l == format!("VERIFY_EMAIL_KEY={}", super::DEVELOPMENT_VERIFY_EMAIL_KEY)),
            "app.env and DEVELOPMENT_VERIFY_EMAIL_KEY differ"
        );
    }

    use std::time::Duration;

    use super::{ConsumerSettings, parse_queues};

    /// Takeover happens within a tenth of the visibility timeout after it (the README's bound).
    #[test]
    fn reclaim_scans_every_tenth_of_the_visibility_timeout() {
        let mut settings = ConsumerSettings::new("c");
        for (visibility, interval) in [
            (60_000, 6_000),
            (10 * 60_000, 60_000),
            (3_000, 300),
            (1_000, 100),
            (300, 100),
        ] {
            settings.visibility_timeout = Duration::from_millis(visibility);
            assert_eq!(
                settings.reclaim_interval(),
                Duration::from_millis(interval),
                "visibility timeout {visibility} ms"
            );
        }
    }

    #[test]
    fn queues() {
        let parsed = parse_queues("critical:6, default:3,low:1").unwrap();
        let names: Vec<_> = parsed.iter().map(|(q, w)| (q.as_str(), *w)).collect();
        assert_eq!(names, [("critical", 6), ("default", 3), ("low", 1)]);
        for bad in [
            "",
            "critical",
            "critical:0",
            "critical:x",
            "a:1,a:2",
            "bad name:1",
        ] {
            assert!(parse_queues(bad).is_err(), "{bad:?}");
        }
    }
}
