//! Turning `REDIS_ADDRESS` into a client, and the connection settings the project uses.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

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
/// Commands fail within about a second when Redis does not answer, instead of queueing.
pub fn lazy_manager(client: redis::Client) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}
