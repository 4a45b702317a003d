//! Reading configuration from the environment, optionally seeded from an `app.env` file.
//!
//! Order of precedence: a variable set in the process environment wins over `app.env`, which
//! wins over the built-in default. Every parse error names the variable, so a bad value stops
//! the program at start with a message a person can act on.

use std::{fmt::Display, str::FromStr, time::Duration};

use simplebank_queue::{
    Namespace, ReplicaWait,
    connection::{Endpoint, Tls},
};

use crate::secret::Secret;

/// A configuration value that could not be used, with the variable it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable (or file) the value came from.
    pub var: &'static str,
    /// What is wrong with the value, for a person to act on.
    pub reason: String,
}

impl ConfigError {
    /// An error about `var`, with `reason` saying what is wrong.
    pub fn new(var: &'static str, reason: impl Into<String>) -> Self {
        Self {
            var,
            reason: reason.into(),
        }
    }
}

/// Loads `app.env` from the working directory into the environment, if the file exists.
/// Variables already set in the environment are left alone.
pub fn load_app_env() -> Result<(), ConfigError> {
    match dotenvy::from_filename("app.env") {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(ConfigError::new("app.env", e.to_string())),
    }
}

/// The raw value of `var`, or `None` when unset or empty.
pub fn var(var: &'static str) -> Result<Option<String>, ConfigError> {
    match std::env::var(var) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value.trim().to_string())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ConfigError::new(var, "the value is not valid UTF-8"))
        }
    }
}

/// PEM files this large are not certificates; the cap keeps `/dev/zero` from filling memory.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The contents of the PEM file at `path`, named by `var`: at most [`MAX_PEM_BYTES`].
pub fn read_pem(var: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;

    let cannot = |e: std::io::Error| ConfigError::new(var, format!("cannot read {path:?}: {e}"));
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_PEM_BYTES + 1).read_to_end(&mut pem))
        .map_err(cannot)?;
    if pem.len() as u64 > MAX_PEM_BYTES {
        return Err(ConfigError::new(
            var,
            format!("{path:?} is larger than {MAX_PEM_BYTES} bytes: not a PEM file"),
        ));
    }
    Ok(pem)
}

/// `var` parsed with `FromStr`, or `default` when unset.
pub fn parse_or<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match var(name)? {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|e| ConfigError::new(name, format!("{e} (got {raw:?})"))),
    }
}

/// `var` as a duration (`250ms`, `30s`, `5m`, `1h`; a bare number is seconds), or `default`.
pub fn duration_or(name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    match var(name)? {
        None => Ok(default),
        Some(raw) => parse_duration(&raw).ok_or_else(|| {
            ConfigError::new(
                name,
                format!("expected a duration such as 500ms, 30s, 5m, 1h or 90d (got {raw:?})"),
            )
        }),
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `90d` or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis = match unit.trim() {
        "ms" => number,
        "" | "s" => number.checked_mul(1_000)?,
        "m" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        "d" => number.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// Where the program runs; `production` switches logs to JSON lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// `development` or `dev` (the default): human-readable logs.
    Development,
    /// `production` or `prod`: logs as JSON lines.
    Production,
}

impl FromStr for Environment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Self::Development),
            "production" | "prod" => Ok(Self::Production),
            _ => Err("expected development or production".into()),
        }
    }
}

/// Settings the server and the worker share.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `DB_SOURCE`: a PostgreSQL URL. Secret because it may hold a password.
    pub db_source: Secret<String>,
    /// `REDIS_ADDRESS`: `host:port`, or a `redis://` / `rediss://` URL; with `REDIS_CLUSTER`,
    /// one or more seed nodes of the cluster, comma-separated.
    pub redis_address: Secret<String>,
    /// `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE`: for `rediss://`, the
    /// CA to trust (the system's roots by default) and a client certificate, read at start.
    pub redis_tls: Tls,
    /// `REDIS_CLUSTER` (default false): `REDIS_ADDRESS` names seed nodes of a Redis Cluster.
    pub redis_cluster: bool,
    /// `REDIS_WAIT_REPLICAS` (default 0: none) and `REDIS_WAIT_TIMEOUT` (default 1s): a
    /// publish succeeds once that many replicas have the task (see [`ReplicaWait`]).
    pub redis_wait: Option<ReplicaWait>,
    /// `REDIS_NAMESPACE`: the prefix of every Redis key.
    pub namespace: Namespace,
    /// `ENVIRONMENT`: `development` (default) or `production`.
    pub environment: Environment,
}

/// Default of `DB_SOURCE`: the local PostgreSQL that `make services` provides.
pub const DEFAULT_DB_SOURCE: &str = "postgres://postgres@127.0.0.1:5432/simple_bank";
/// Default of `REDIS_ADDRESS`.
pub const DEFAULT_REDIS_ADDRESS: &str = "127.0.0.1:6379";

impl CommonConfig {
    /// Reads the shared settings from the environment, with their defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        let db_source = var("DB_SOURCE")?.unwrap_or_else(|| DEFAULT_DB_SOURCE.into());
        if !(db_source.starts_with("postgres://") || db_source.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                "DB_SOURCE",
                "expected a postgres:// or postgresql:// URL",
            ));
        }
        let redis_address = var("REDIS_ADDRESS")?.unwrap_or_else(|| DEFAULT_REDIS_ADDRESS.into());
        let redis_cluster = parse_or("REDIS_CLUSTER", false)?;
        let redis_tls = crate::redis_client::tls_from_env(&redis_address, redis_cluster)?;
        Endpoint::parse(&redis_address, redis_cluster, &redis_tls)
            .map_err(|e| ConfigError::new("REDIS_ADDRESS", e.to_string()))?;
        let namespace = match var("REDIS_NAMESPACE")? {
            None => Namespace::default(),
            Some(raw) => Namespace::parse(&raw)
                .map_err(|e| ConfigError::new("REDIS_NAMESPACE", e.to_string()))?,
        };
        Ok(Self {
            db_source: Secret::new(db_source),
            redis_address: Secret::new(redis_address),
            redis_tls,
            redis_cluster,
            redis_wait: redis_wait_from_env()?,
            namespace,
            environment: parse_or("ENVIRONMENT", Environment::Development)?,
        })
    }
}

impl CommonConfig {
    /// Where Redis is (`REDIS_ADDRESS`, `REDIS_CLUSTER`), with the TLS settings
    /// (`REDIS_TLS_*`); nothing is connected yet. The one way the programs build their Redis
    /// connections.
    pub fn redis_endpoint(&self) -> redis::RedisResult<Endpoint> {
        Endpoint::parse(
            self.redis_address.expose(),
            self.redis_cluster,
            &self.redis_tls,
        )
    }
}

/// The longest `REDIS_WAIT_TIMEOUT`: a publish after commit gives up on Redis after 5 s
/// (`outbox::PUBLISH_TIMEOUT`), and the write before the WAIT needs its share of that.
pub const MAX_REDIS_WAIT_TIMEOUT: Duration = Duration::from_secs(3);

fn redis_wait_from_env() -> Result<Option<ReplicaWait>, ConfigError> {
    let replicas: u32 = parse_or("REDIS_WAIT_REPLICAS", 0)?;
    let timeout = duration_or("REDIS_WAIT_TIMEOUT", Duration::from_secs(1))?;
    if timeout.is_zero() || timeout > MAX_REDIS_WAIT_TIMEOUT {
        return Err(ConfigError::new(
            "REDIS_WAIT_TIMEOUT",
            "must be from 1ms to 3s (WAIT with 0 would wait forever)",
        ));
    }
    Ok(ReplicaWait::new(replicas, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_duration("90d"),
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(parse_duration("5 days"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn environment() {
        assert_eq!("PRODUCTION".parse(), Ok(Environment::Production));
        assert!("staging".parse::<Environment>().is_err());
    }
}
