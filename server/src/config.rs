//! The server's settings. See the README's configuration table for every variable.

use std::{net::SocketAddr, time::Duration};

use simplebank_core::{
    config::{self, CommonConfig, ConfigError, Environment},
    secret::{Secret, random_code},
    store::{EmailChangeLimits, SessionLimits},
};

use crate::{
    admin::config::AdminConfig,
    throttle::LoginLimits,
    tls::TlsConfig,
    tokens::{DEVELOPMENT_KEY, KEY_LEN, TokenMaker},
};

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
    /// Tokens, sessions and sign-in throttling.
    pub auth: AuthConfig,
    /// `ADMIN_GRPC_ADDRESS`, `ADMIN_TOKEN`: the admin listener.
    pub admin: AdminConfig,
}

/// Tokens, sessions and sign-in throttling.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `TOKEN_SYMMETRIC_KEY`: 32 bytes (characters of ASCII text, as the course has it).
    /// Required in production; in development a random key is made at start when unset (tokens
    /// then do not survive a restart).
    pub token_key: Secret<[u8; KEY_LEN]>,
    /// `ACCESS_TOKEN_DURATION`, default `15m`.
    pub access_token_duration: Duration,
    /// `REFRESH_TOKEN_DURATION` (default `24h`) and `SESSION_MAX_DURATION` (default `168h`).
    pub sessions: SessionLimits,
    /// `LOGIN_MAX_FAILURES_PER_USERNAME`, `LOGIN_MAX_FAILURES_PER_ADDRESS`,
    /// `LOGIN_FAILURE_WINDOW`.
    pub login: LoginLimits,
    /// `EMAIL_CHANGE_MAX_PER_USER`, `EMAIL_CHANGE_MAX_PER_ADDRESS`, `EMAIL_CHANGE_WINDOW`.
    pub email_changes: EmailChangeLimits,
    /// Whether `token_key` was made at start (development without `TOKEN_SYMMETRIC_KEY`).
    pub ephemeral_key: bool,
}

impl AuthConfig {
    /// The defaults, with `key`.
    pub fn with_key(key: [u8; KEY_LEN]) -> Self {
        Self {
            token_key: Secret::new(key),
            access_token_duration: Duration::from_secs(15 * 60),
            sessions: SessionLimits {
                refresh_token: Duration::from_secs(24 * 3600),
                session: Duration::from_secs(7 * 24 * 3600),
            },
            login: LoginLimits::default(),
            email_changes: EmailChangeLimits::DEFAULT,
            ephemeral_key: false,
        }
    }

    pub fn token_maker(&self) -> TokenMaker {
        TokenMaker::new(self.token_key.clone(), self.access_token_duration)
    }

    pub fn from_env(environment: Environment) -> Result<Self, ConfigError> {
        const KEY: &str = "TOKEN_SYMMETRIC_KEY";
        let key = match config::var(KEY)? {
            Some(raw) if environment == Environment::Production && raw == DEVELOPMENT_KEY => {
                return Err(ConfigError::new(
                    KEY,
                    "is the public development key from app.env; production needs its own \
                     random key (32 bytes)",
                ));
            }
            Some(raw) => parse_key(&raw)?,
            None if environment == Environment::Production => {
                return Err(ConfigError::new(
                    KEY,
                    "must be set in production (32 bytes)",
                ));
            }
            None => {
                return Ok(Self {
                    ephemeral_key: true,
                    ..Self::from_env_with_key(parse_key(random_code(KEY_LEN).expose())?)?
                });
            }
        };
        Self::from_env_with_key(key)
    }

    fn from_env_with_key(key: [u8; KEY_LEN]) -> Result<Self, ConfigError> {
        let defaults = Self::with_key(key);
        let sessions = SessionLimits {
            refresh_token: positive(
                "REFRESH_TOKEN_DURATION",
                config::duration_or("REFRESH_TOKEN_DURATION", defaults.sessions.refresh_token)?,
            )?,
            session: positive(
                "SESSION_MAX_DURATION",
                config::duration_or("SESSION_MAX_DURATION", defaults.sessions.session)?,
            )?,
        };
        if sessions.refresh_token > sessions.session {
            return Err(ConfigError::new(
                "REFRESH_TOKEN_DURATION",
                "must not be longer than SESSION_MAX_DURATION",
            ));
        }
        let login = LoginLimits {
            per_username: at_least_one(
                "LOGIN_MAX_FAILURES_PER_USERNAME",
                config::parse_or(
                    "LOGIN_MAX_FAILURES_PER_USERNAME",
                    defaults.login.per_username,
                )?,
            )?,
            per_address: at_least_one(
                "LOGIN_MAX_FAILURES_PER_ADDRESS",
                config::parse_or("LOGIN_MAX_FAILURES_PER_ADDRESS", defaults.login.per_address)?,
            )?,
            window: positive(
                "LOGIN_FAILURE_WINDOW",
                config::duration_or("LOGIN_FAILURE_WINDOW", defaults.login.window)?,
            )?,
            ..defaults.login
        };
        let email_changes = EmailChangeLimits {
            per_user: at_least_one(
                "EMAIL_CHANGE_MAX_PER_USER",
                config::parse_or("EMAIL_CHANGE_MAX_PER_USER", defaults.email_changes.per_user)?,
            )?,
            per_address: at_least_one(
                "EMAIL_CHANGE_MAX_PER_ADDRESS",
                config::parse_or(
                    "EMAIL_CHANGE_MAX_PER_ADDRESS",
                    defaults.email_changes.per_address,
                )?,
            )?,
            window: at_most(
                "EMAIL_CHANGE_WINDOW",
                positive(
                    "EMAIL_CHANGE_WINDOW",
                    config::duration_or("EMAIL_CHANGE_WINDOW", defaults.email_changes.window)?,
                )?,
                MAX_EMAIL_CHANGE_WINDOW,
                "365d",
            )?,
        };
        Ok(Self {
            access_token_duration: positive(
                "ACCESS_TOKEN_DURATION",
                config::duration_or("ACCESS_TOKEN_DURATION", defaults.access_token_duration)?,
            )?,
            sessions,
            login,
            email_changes,
            ..defaults
        })
    }
}

/// A key of exactly [`KEY_LEN`] bytes. The message never shows the value.
fn parse_key(raw: &str) -> Result<[u8; KEY_LEN], ConfigError> {
    raw.as_bytes().try_into().map_err(|_| {
        ConfigError::new(
            "TOKEN_SYMMETRIC_KEY",
            format!("must be exactly {KEY_LEN} bytes (got {})", raw.len()),
        )
    })
}

fn at_least_one(var: &'static str, value: u32) -> Result<u32, ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(var, "must be at least 1"));
    }
    Ok(value)
}

/// How much work the `SimpleBank` service takes on (see `crate::backpressure`), and what a
/// connection may hold (see `crate::connection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// `GRPC_REQUEST_TIMEOUT`, default `10s`: a call still running after this ends with
    /// DEADLINE_EXCEEDED.
    pub request_timeout: Duration,
    /// `GRPC_MAX_CONCURRENT_CALLS`, default `64`: calls past this many in flight are refused
    /// at once with RESOURCE_EXHAUSTED and a retry hint.
    pub max_concurrent_calls: usize,
    /// `GRPC_REQUEST_BODY_TIMEOUT`, default `5s`: a `SimpleBank` request whose message has not
    /// fully arrived after this ends with DEADLINE_EXCEEDED, before it takes a call slot.
    pub body_timeout: Duration,
    pub connections: ConnectionLimits,
}

impl CallLimits {
    /// The defaults, usable in a `const`.
    pub const DEFAULT: Self = Self {
        request_timeout: Duration::from_secs(10),
        max_concurrent_calls: 64,
        body_timeout: Duration::from_secs(5),
        connections: ConnectionLimits::DEFAULT,
    };
}

impl Default for CallLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Bounds on connections and what each holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `GRPC_MAX_CONNECTIONS`, default `1000`: at this many open connections the server stops
    /// accepting (new clients wait in the listen backlog) until one closes.
    pub max_connections: usize,
    /// `GRPC_MAX_CONNECTIONS_PER_ADDRESS`, default `100`: connections one client address (an
    /// IPv4 address, an IPv6 /64) may have open; one more is closed at once. Behind a proxy
    /// that all clients come through, set it to `GRPC_MAX_CONNECTIONS`.
    pub max_connections_per_address: usize,
    /// `GRPC_MAX_STREAMS_PER_CONNECTION`, default `32`: HTTP/2 streams (calls, health watches,
    /// reflection) one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// `GRPC_CONNECTION_PREFACE_TIMEOUT`, default `10s`: a new connection that has not sent the
    /// HTTP/2 preface (24 bytes) by then is closed.
    pub preface_timeout: Duration,
    /// `GRPC_CONNECTION_IDLE_TIMEOUT`, default `5m`: a connection with no open stream for this
    /// long is closed.
    pub idle_timeout: Duration,
    /// `GRPC_KEEPALIVE_INTERVAL`, default `60s`: how often an HTTP/2 ping is sent.
    pub keepalive_interval: Duration,
    /// `GRPC_KEEPALIVE_TIMEOUT`, default `20s`: a peer that does not answer a ping within this
    /// is closed.
    pub keepalive_timeout: Duration,
}

impl ConnectionLimits {
    /// The defaults, usable in a `const`.
    pub const DEFAULT: Self = Self {
        max_connections: 1000,
        max_connections_per_address: 100,
        max_streams_per_connection: 32,
        preface_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(5 * 60),
        keepalive_interval: Duration::from_secs(60),
        keepalive_timeout: Duration::from_secs(20),
    };
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl ConnectionLimits {
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            max_connections: nonzero(
                "GRPC_MAX_CONNECTIONS",
                config::parse_or("GRPC_MAX_CONNECTIONS", defaults.max_connections)?,
            )?,
            max_connections_per_address: nonzero(
                "GRPC_MAX_CONNECTIONS_PER_ADDRESS",
                config::parse_or(
                    "GRPC_MAX_CONNECTIONS_PER_ADDRESS",
                    defaults.max_connections_per_address,
                )?,
            )?,
            max_streams_per_connection: nonzero(
                "GRPC_MAX_STREAMS_PER_CONNECTION",
                config::parse_or(
                    "GRPC_MAX_STREAMS_PER_CONNECTION",
                    defaults.max_streams_per_connection,
                )?,
            )?,
            preface_timeout: positive_or(
                "GRPC_CONNECTION_PREFACE_TIMEOUT",
                defaults.preface_timeout,
            )?,
            idle_timeout: positive_or("GRPC_CONNECTION_IDLE_TIMEOUT", defaults.idle_timeout)?,
            keepalive_interval: positive_or(
                "GRPC_KEEPALIVE_INTERVAL",
                defaults.keepalive_interval,
            )?,
            keepalive_timeout: positive_or("GRPC_KEEPALIVE_TIMEOUT", defaults.keepalive_timeout)?,
        })
    }
}

impl CallLimits {
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            request_timeout: positive_or("GRPC_REQUEST_TIMEOUT", defaults.request_timeout)?,
            max_concurrent_calls: nonzero(
                "GRPC_MAX_CONCURRENT_CALLS",
                config::parse_or("GRPC_MAX_CONCURRENT_CALLS", defaults.max_concurrent_calls)?,
            )?,
            body_timeout: positive_or("GRPC_REQUEST_BODY_TIMEOUT", defaults.body_timeout)?,
            connections: ConnectionLimits::from_env()?,
        })
    }
}

fn nonzero<T: PartialEq + Default>(var: &'static str, value: T) -> Result<T, ConfigError> {
    if value == T::default() {
        return Err(ConfigError::new(var, "must be greater than zero"));
    }
    Ok(value)
}

fn positive_or(var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    positive(var, config::duration_or(var, default)?)
}

impl ServerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env()?;
        let auth = AuthConfig::from_env(common.environment)?;
        Ok(Self {
            common,
            auth,
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
            admin: AdminConfig::from_env()?,
        })
    }
}

/// The longest `EMAIL_CHANGE_WINDOW`: a year. (PostgreSQL's timestamps end some thousands of
/// years back: a window reaching past that made every address change fail.)
const MAX_EMAIL_CHANGE_WINDOW: Duration = Duration::from_secs(365 * 24 * 3600);

fn at_most(
    var: &'static str,
    value: Duration,
    max: Duration,
    said: &str,
) -> Result<Duration, ConfigError> {
    if value > max {
        return Err(ConfigError::new(var, format!("must be at most {said}")));
    }
    Ok(value)
}

fn positive(var: &'static str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(var, "must be greater than zero"));
    }
    Ok(value)
}
