//! The worker's settings. See the README's configuration table for every variable.

use std::{path::PathBuf, time::Duration};

use simplebank_core::{
    config::{self, CommonConfig, ConfigError, Environment},
    report::chain,
    secret::{MIN_CODE_KEY_LEN, Secret},
};
use simplebank_queue::{
    Backoff, ConsumerSettings, DEFAULT_VISIBILITY_TIMEOUT, MAX_DEAD_LETTER_MAX, parse_queues,
};

use crate::mail::smtp::{SmtpConfig, TlsMode};

/// The consumer settings from `WORKER_*` (defaults as [`ConsumerSettings::new`]).
pub fn consumer_settings_from_env() -> Result<ConsumerSettings, ConfigError> {
    let mut settings = ConsumerSettings::new(match config::var("WORKER_CONSUMER_NAME")? {
        Some(name) => name,
        None => default_consumer_name(),
    });
    settings.concurrency = config::parse_or("WORKER_CONCURRENCY", settings.concurrency)?;
    if settings.concurrency == 0 {
        return Err(ConfigError::new("WORKER_CONCURRENCY", "must be at least 1"));
    }
    if let Some(raw) = config::var("WORKER_QUEUES")? {
        settings.queues =
            parse_queues(&raw).map_err(|err| ConfigError::new("WORKER_QUEUES", chain(&err)))?;
    }
    settings.strict_priority = config::parse_or("WORKER_STRICT_PRIORITY", false)?;
    settings.visibility_timeout =
        config::duration_or("WORKER_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT)?;
    if settings.visibility_timeout < Duration::from_millis(300) {
        return Err(ConfigError::new(
            "WORKER_VISIBILITY_TIMEOUT",
            "must be at least 300ms (leases are renewed every third of it)",
        ));
    }
    settings.shutdown_timeout =
        config::duration_or("WORKER_SHUTDOWN_TIMEOUT", settings.shutdown_timeout)?;
    let defaults = Backoff::default();
    let base = config::duration_or("WORKER_RETRY_BASE_DELAY", defaults.base)?;
    let max = config::duration_or("WORKER_RETRY_MAX_DELAY", defaults.max)?;
    if base.is_zero() || max < base {
        return Err(ConfigError::new(
            "WORKER_RETRY_MAX_DELAY",
            "must be at least WORKER_RETRY_BASE_DELAY, which must be above zero",
        ));
    }
    settings.backoff = Backoff { base, max };
    settings.dead_letter_max = config::parse_or("DEAD_LETTER_MAX", settings.dead_letter_max)?;
    if settings.dead_letter_max == 0 || settings.dead_letter_max > MAX_DEAD_LETTER_MAX {
        return Err(ConfigError::new(
            "DEAD_LETTER_MAX",
            format!("must be from 1 to {MAX_DEAD_LETTER_MAX}"),
        ));
    }
    settings.dead_letter_retention =
        config::duration_or("DEAD_LETTER_RETENTION", settings.dead_letter_retention)?;
    if settings.dead_letter_retention < Duration::from_secs(1) {
        return Err(ConfigError::new(
            "DEAD_LETTER_RETENTION",
            "must be at least 1s",
        ));
    }
    Ok(settings)
}

/// `<hostname>-<pid>`: unique per process on a host, readable in `XINFO CONSUMERS`.
pub fn default_consumer_name() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{host}-{}", std::process::id())
}

/// Which mailer sends the verification emails (`EMAIL_MAILER`, default `file`).
#[derive(Debug, Clone)]
pub enum MailerConfig {
    /// `.eml` files in `EMAIL_FILE_DIR` (default `.local/mail`).
    File {
        /// The folder.
        dir: PathBuf,
    },
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
    /// `DB_SOURCE`, `REDIS_ADDRESS`, `REDIS_NAMESPACE`, `ENVIRONMENT`.
    pub common: CommonConfig,
    /// `WORKER_*`.
    pub consumer: ConsumerSettings,
    /// `EMAIL_MAILER` and what it needs.
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
    /// Not read here: the program sets it from its telemetry set-up. When metrics are
    /// exported, their interval, at which the queue gauges are read (by one worker of the
    /// namespace at a time); `None` when metrics are off.
    pub metrics_interval: Option<Duration>,
}

impl WorkerConfig {
    /// Reads the environment; an error names the variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env()?;
        let verify_email_key = verify_email_key(common.environment)?;
        Ok(Self {
            common,
            verify_email_key,
            consumer: consumer_settings_from_env()?,
            mailer: MailerConfig::from_env()?,
            verify_email_expiry: config::duration_or(
                "VERIFY_EMAIL_EXPIRY",
                Duration::from_secs(15 * 60),
            )?,
            email_sender: config::var("EMAIL_SENDER")?
                .unwrap_or_else(|| "Simple Bank <no-reply@simplebank.local>".into()),
            verify_email_url: config::var("VERIFY_EMAIL_URL")?
                .unwrap_or_else(|| "http://localhost:8080/v1/verify_email".into()),
            metrics_interval: None,
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
}
