//! Redis settings read at start: the TLS files (`REDIS_TLS_*`), and the start-up check that
//! tells a misconfigured Redis (stop, naming `REDIS_ADDRESS`, `REDIS_CLUSTER` or a TLS
//! variable) from one that is down (carry on). The connection settings themselves are the
//! queue's ([`simplebank_queue::connection`]), re-exported here.

use std::time::Duration;

use redis::ErrorKind;
use simplebank_queue::{
    Keys,
    connection::{Endpoint, TlsError},
};

use crate::config::{ConfigError, var};

pub use simplebank_queue::connection::{
    Connection, RESPONSE_TIMEOUT, Tls, TlsRefusal, client, client_with_tls, is_misconfiguration,
    lazy_manager, tls_refusal,
};

const CA_VAR: &str = "REDIS_TLS_CA_FILE";
const CERT_VAR: &str = "REDIS_TLS_CERT_FILE";
const KEY_VAR: &str = "REDIS_TLS_KEY_FILE";

/// The TLS settings of `REDIS_TLS_CA_FILE` (PEM CA certificates; the system's roots when
/// unset) and `REDIS_TLS_CERT_FILE` / `REDIS_TLS_KEY_FILE` (a client certificate and its key,
/// both or neither), read and checked now, and the address they go with (with `cluster`,
/// each seed of it): each error names its variable. TLS files with a plaintext address (or
/// seed) are refused, not ignored.
pub fn tls_from_env(address: &str, cluster: bool) -> Result<Tls, ConfigError> {
    let mut tls = Tls::default();
    if let Some(path) = var(CA_VAR)? {
        tls = tls
            .with_ca_pem(read(CA_VAR, &path)?)
            .map_err(|e| ConfigError::new(CA_VAR, e.to_string()))?;
    }
    match (var(CERT_VAR)?, var(KEY_VAR)?) {
        (Some(cert), Some(key)) => {
            tls = tls
                .with_client_identity(read(CERT_VAR, &cert)?, read(KEY_VAR, &key)?)
                .map_err(|e| match e {
                    TlsError::ClientKey(_) | TlsError::KeyMismatch => {
                        ConfigError::new(KEY_VAR, e.to_string())
                    }
                    _ => ConfigError::new(CERT_VAR, e.to_string()),
                })?;
        }
        (Some(_), None) => {
            return Err(ConfigError::new(
                KEY_VAR,
                format!("must be set when {CERT_VAR} is"),
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                CERT_VAR,
                format!("must be set when {KEY_VAR} is"),
            ));
        }
        (None, None) => {}
    }
    Endpoint::parse(address, cluster, &Tls::default())
        .map_err(|e| ConfigError::new("REDIS_ADDRESS", e.to_string()))?;
    let seeds: Vec<&str> = if cluster {
        let seeds = address.split(',').map(str::trim);
        seeds.filter(|seed| !seed.is_empty()).collect()
    } else {
        vec![address]
    };
    let plaintext = seeds.iter().any(|seed| !seed.starts_with("rediss://"));
    if !tls.is_default() && plaintext {
        let var = if var(CA_VAR)?.is_some() {
            CA_VAR
        } else {
            CERT_VAR
        };
        return Err(ConfigError::new(
            var,
            "is set, but REDIS_ADDRESS is not a rediss:// URL (TLS files are never ignored)",
        ));
    }
    Ok(tls)
}

fn read(var: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    crate::config::read_pem(var, std::path::Path::new(path))
}

/// Connects to each server of `endpoint` (the one server, or each seed of a cluster) once and
/// reads a key of the namespace, as the programs will: a misconfiguration
/// ([`is_misconfiguration`]) is an error naming `REDIS_ADDRESS` (a certificate refused in the
/// TLS handshake: naming the TLS variables), a server that is a cluster node when
/// `REDIS_CLUSTER` is false (or the reverse) one naming `REDIS_CLUSTER`. Anything
/// else (refused, timed out, hung) passes: the programs start and wait for Redis.
pub async fn check_access(endpoint: &Endpoint, keys: &Keys) -> Result<(), ConfigError> {
    let seeds = endpoint
        .seeds()
        .map_err(|e| ConfigError::new("REDIS_ADDRESS", e.to_string()))?;
    for seed in &seeds {
        check_server(seed, keys, endpoint.is_cluster()).await?;
    }
    Ok(())
}

async fn check_server(
    client: &redis::Client,
    keys: &Keys,
    cluster: bool,
) -> Result<(), ConfigError> {
    let mut cluster_enabled = None;
    let checked: redis::RedisResult<()> = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT)),
            )
            .await?;
        // On a cluster node the key may live on another node (MOVED): not a refusal.
        match redis::cmd("EXISTS")
            .arg(keys.queues())
            .query_async::<i64>(&mut conn)
            .await
        {
            Err(err) if err.kind() == ErrorKind::Server(redis::ServerErrorKind::Moved) => {}
            other => {
                other?;
            }
        }
        // An ACL user without INFO (or a managed Redis that hides it) skips this check.
        let info: redis::RedisResult<String> = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await;
        cluster_enabled = info.ok().map(|info| info.contains("cluster_enabled:1"));
        Ok(())
    }
    .await;
    if let Err(err) = &checked
        && let Some(refusal) = tls_refusal(err)
    {
        return Err(tls_error(&refusal));
    }
    match cluster_enabled {
        Some(true) if !cluster => {
            return Err(ConfigError::new(
                "REDIS_CLUSTER",
                "REDIS_ADDRESS is a Redis Cluster node: set REDIS_CLUSTER=true (and name one or \
                 more of its nodes, comma-separated)",
            ));
        }
        Some(false) if cluster => {
            return Err(ConfigError::new(
                "REDIS_CLUSTER",
                "is true, but REDIS_ADDRESS is not a Redis Cluster node (cluster_enabled:0)",
            ));
        }
        _ => {}
    }
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

/// Warns once, naming `REDIS_WAIT_REPLICAS`, when a primary named in `endpoint` (the one
/// server, or each seed of a cluster that is a primary) has fewer replicas connected than
/// `wanted`: each publish would then wait its whole `REDIS_WAIT_TIMEOUT` and leave its task
/// in the outbox. Not an error: replicas may connect later. A node that does not answer, or
/// refuses `INFO` (an ACL user without it), is skipped.
pub async fn warn_if_replicas_missing(endpoint: &Endpoint, wanted: u32) {
    let Ok(seeds) = endpoint.seeds() else {
        return;
    };
    let mut fewest: Option<u32> = None;
    for seed in &seeds {
        let info: redis::RedisResult<String> = async {
            let mut conn = seed
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(Duration::from_secs(1)))
                        .set_response_timeout(Some(RESPONSE_TIMEOUT)),
                )
                .await?;
            redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
        }
        .await;
        if let Some(connected) = info.ok().as_deref().and_then(connected_replicas) {
            fewest = Some(fewest.map_or(connected, |f| f.min(connected)));
        }
    }
    if let Some(connected) = fewest.filter(|&connected| connected < wanted) {
        tracing::warn!(
            replicas_wanted = wanted,
            replicas_connected = connected,
            "REDIS_WAIT_REPLICAS asks for more replicas than the Redis primary has connected: \
             until they connect, each publish waits REDIS_WAIT_TIMEOUT and its task stays in \
             the outbox (it still runs)"
        );
    }
}

/// `connected_slaves` of `INFO replication`, if the node is a primary.
fn connected_replicas(info: &str) -> Option<u32> {
    if !info.lines().any(|line| line.trim() == "role:master") {
        return None;
    }
    info.lines()
        .find_map(|line| line.trim().strip_prefix("connected_slaves:"))
        .and_then(|count| count.parse().ok())
}

/// A TLS handshake that failed on a certificate, said with the variables to look at.
fn tls_error(refusal: &TlsRefusal) -> ConfigError {
    match refusal {
        TlsRefusal::ServerCertificate(err) => ConfigError::new(
            "REDIS_ADDRESS",
            format!(
                "the Redis server's certificate does not verify ({err}): {CA_VAR} must name the \
                 CA that signed it (the system's roots when unset), and the certificate must \
                 name the host of REDIS_ADDRESS"
            ),
        ),
        TlsRefusal::ClientCertificate(err) => ConfigError::new(
            "REDIS_ADDRESS",
            format!(
                "the Redis server refused the TLS client certificate ({err}): set \
                 {CERT_VAR} and {KEY_VAR} to a certificate its CA signed"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::connected_replicas;

    #[test]
    fn connected_replicas_are_read_from_a_primary_only() {
        let primary =
            "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nmaster_repl_offset:9\r\n";
        assert_eq!(connected_replicas(primary), Some(2));
        let alone = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n";
        assert_eq!(connected_replicas(alone), Some(0));
        let replica =
            "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nconnected_slaves:0\r\n";
        assert_eq!(connected_replicas(replica), None);
        assert_eq!(connected_replicas(""), None);
    }
}
