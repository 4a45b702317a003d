//! The server's settings. See the README's configuration table for every variable.

use std::{net::SocketAddr, time::Duration};

use simplebank_core::config::{self, CommonConfig, ConfigError};

use crate::tls::TlsConfig;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub common: CommonConfig,
    /// `GRPC_SERVER_ADDRESS`, default `0.0.0.0:9090`.
    pub grpc_address: SocketAddr,
    /// `OUTBOX_RELAY_INTERVAL`, default `1s`: how often the relay looks for unpublished tasks.
    pub outbox_relay_interval: Duration,
    /// `HEALTH_CHECK_INTERVAL`, default `2s`: how often PostgreSQL and Redis are checked.
    pub health_check_interval: Duration,
    /// `GRPC_TLS_CERT_FILE`, `GRPC_TLS_KEY_FILE`, `GRPC_TLS_CLIENT_CA_FILE`: TLS when set.
    pub tls: Option<TlsConfig>,
    /// Back-pressure on the `SimpleBank` calls.
    pub limits: CallLimits,
}

/// How much work the `SimpleBank` service takes on (see `crate::backpressure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// `GRPC_REQUEST_TIMEOUT`, default `10s`: a call still running after this ends with
    /// DEADLINE_EXCEEDED.
    pub request_timeout: Duration,
    /// `GRPC_MAX_CONCURRENT_CALLS`, default `64`: calls past this many in flight are refused
    /// at once with RESOURCE_EXHAUSTED and a retry hint.
    pub max_concurrent_calls: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            max_concurrent_calls: 64,
        }
    }
}

impl CallLimits {
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let max_concurrent_calls =
            config::parse_or("GRPC_MAX_CONCURRENT_CALLS", defaults.max_concurrent_calls)?;
        if max_concurrent_calls == 0 {
            return Err(ConfigError::new(
                "GRPC_MAX_CONCURRENT_CALLS",
                "must be greater than zero",
            ));
        }
        Ok(Self {
            request_timeout: positive(
                "GRPC_REQUEST_TIMEOUT",
                config::duration_or("GRPC_REQUEST_TIMEOUT", defaults.request_timeout)?,
            )?,
            max_concurrent_calls,
        })
    }
}

impl ServerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env()?,
            grpc_address: config::parse_or(
                "GRPC_SERVER_ADDRESS",
                SocketAddr::from(([0, 0, 0, 0], 9090)),
            )?,
            outbox_relay_interval: positive(
                "OUTBOX_RELAY_INTERVAL",
                config::duration_or("OUTBOX_RELAY_INTERVAL", Duration::from_secs(1))?,
            )?,
            health_check_interval: positive(
                "HEALTH_CHECK_INTERVAL",
                config::duration_or("HEALTH_CHECK_INTERVAL", Duration::from_secs(2))?,
            )?,
            tls: TlsConfig::from_env()?,
            limits: CallLimits::from_env()?,
        })
    }
}

fn positive(var: &'static str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(var, "must be greater than zero"));
    }
    Ok(value)
}
