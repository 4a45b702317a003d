//! The start-up check that tells a misconfigured Redis (stop, naming `REDIS_ADDRESS`) from one
//! that is down (carry on). The connection settings themselves are the queue's
//! ([`simplebank_queue::connection`]), re-exported here.

use std::time::Duration;

use redis::ErrorKind;
use simplebank_queue::Keys;

use crate::config::ConfigError;

pub use simplebank_queue::connection::{
    RESPONSE_TIMEOUT, client, is_misconfiguration, lazy_manager,
};

/// Connects to `client` once and reads a key of the namespace, as the programs will: a
/// misconfiguration ([`is_misconfiguration`]) is an error naming `REDIS_ADDRESS`. Anything
/// else (refused, timed out, hung) passes: the programs start and wait for Redis.
pub async fn check_access(client: &redis::Client, keys: &Keys) -> Result<(), ConfigError> {
    let checked: redis::RedisResult<()> = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT)),
            )
            .await?;
        redis::cmd("EXISTS")
            .arg(keys.queues())
            .query_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }
    .await;
    match checked {
        Err(err) if is_misconfiguration(&err) => {
            // The server's own words (`NOPERM this user has no permissions ...`) where it
            // answered; the client's otherwise (a refused AUTH, a bad database index).
            let reason = match (err.kind(), err.code(), err.detail()) {
                (ErrorKind::AuthenticationFailed, ..) => {
                    "WRONGPASS: the user name or password was refused".to_owned()
                }
                (_, Some(code), Some(detail)) => format!("{code} {detail}"),
                _ => err.to_string(),
            };
            Err(ConfigError::new(
                "REDIS_ADDRESS",
                format!("Redis refuses this client: {reason}"),
            ))
        }
        _ => Ok(()),
    }
}
