//! Connecting to Redis as the queue expects: an address into a client, a shared connection
//! that reconnects by itself with bounded waits, and telling a misconfigured Redis (stop) from
//! one that is down (carry on).

use std::time::Duration;

use redis::{
    ErrorKind, ServerErrorKind,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

/// The response timeout for ordinary (non-blocking) commands.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client for `address`: `host:port` (plain TCP) or a `redis://` / `rediss://` URL.
pub fn client(address: &str) -> redis::RedisResult<redis::Client> {
    if address.contains("://") {
        redis::Client::open(address)
    } else {
        redis::Client::open(format!("redis://{address}"))
    }
}

/// A shared, multiplexed connection that reconnects by itself. It is created without
/// connecting, so a program can start (and sign-ups can succeed) while Redis is down.
/// Connecting gives up after a second, and a command after `response_timeout` (keep it above
/// the BLOCK time of blocking reads), so callers see an error instead of waiting on a dead Redis.
pub fn lazy_manager(
    client: redis::Client,
    response_timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// Whether `err` is a setting that waiting cannot fix: a refused password or user (WRONGPASS,
/// NOAUTH), a command or key the ACL user may not use (NOPERM), a database index the server
/// does not have. A Redis that is down, hung or loading is not one of these.
pub fn is_misconfiguration(err: &redis::RedisError) -> bool {
    matches!(
        err.kind(),
        ErrorKind::AuthenticationFailed
            | ErrorKind::InvalidClientConfig
            | ErrorKind::Server(ServerErrorKind::NoPerm)
    ) || matches!(err.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        || err.to_string().contains("DB index is out of range")
}
