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
        })
    }
}

fn positive(var: &'static str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(var, "must be greater than zero"));
    }
    Ok(value)
}
