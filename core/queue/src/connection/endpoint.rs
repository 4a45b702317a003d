//! One connection type for both deployments: [`Endpoint`] says where Redis is (one server, or
//! a Redis Cluster reached through seed nodes) and opens [`Connection`]s, the one type every
//! part of the queue (and the programs around it) talks through, but for a worker's reads on
//! one server over plain TCP (`reader`).
//!
//! On a cluster the client routes each command (script, pipeline) to the primary of its
//! key's slot, follows MOVED and ASK redirections, and after a node failed (a failover: its
//! replica promoted) refreshes its slot map and goes on, so no process restarts. A command,
//! script or pipeline must keep its keys in ONE slot (CROSSSLOT otherwise); the queue's layout
//! does (one `{ns:q}` hash tag per queue, see `keys`). On one server the connection is the
//! redis crate's `ConnectionManager`, renewed after a refused login ([`Single`]).
//!
//! TLS is the same for both: `rediss://` seeds with the [`Tls`] settings (CA, client
//! certificate) given to every node the cluster client connects to, the ones it learns from
//! the slot map included.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use redis::{
    Cmd, ErrorKind, Pipeline, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager},
    cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
};

use super::{Tls, client_with_tls, install_ring, lazy_manager, writer::Writer};

/// How long connecting to one node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where Redis is. Cheap to clone; connects nothing by itself.
#[derive(Clone)]
pub enum Endpoint {
    /// One server (or a primary behind a fixed address).
    Single(redis::Client),
    /// A Redis Cluster, by its seed nodes (any reachable one is enough to learn the rest),
    /// with the TLS settings for every node.
    Cluster(Vec<redis::ConnectionInfo>, Tls),
}

impl std::fmt::Debug for Endpoint {
    // Addresses may carry a password: only the kind and the number of seeds are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("Endpoint::Single"),
            Self::Cluster(seeds, _) => write!(f, "Endpoint::Cluster({} seeds)", seeds.len()),
        }
    }
}

impl From<redis::Client> for Endpoint {
    fn from(client: redis::Client) -> Self {
        Self::Single(client)
    }
}

impl Endpoint {
    /// The Redis at `address`: with `cluster` false, one server (`host:port` or a
    /// `redis://`/`rediss://` URL, as [`client_with_tls`]); with `cluster` true, the seed
    /// nodes of a Redis Cluster, comma-separated, each in either form. Seeds must agree on
    /// user, password and TLS; a database other than 0 is refused (a cluster has only 0).
    /// `tls` other than the default needs `rediss://` (every seed), as for one server.
    pub fn parse(address: &str, cluster: bool, tls: &Tls) -> RedisResult<Self> {
        if !cluster {
            // A comma may be in a password: only an address that does not parse is a list.
            return match client_with_tls(address, tls) {
                Err(_) if address.contains(',') => Err(invalid(
                    "lists several addresses (comma-separated): that is a Redis Cluster's seed \
                     list, which needs REDIS_CLUSTER=true",
                )),
                client => Ok(Self::Single(client?)),
            };
        }
        let seeds = address
            .split(',')
            .map(str::trim)
            .filter(|seed| !seed.is_empty())
            .map(|seed| Ok(client_with_tls(seed, tls)?.get_connection_info().clone()))
            .collect::<RedisResult<Vec<_>>>()?;
        if seeds.is_empty() {
            return Err(invalid("a cluster needs at least one seed node"));
        }
        if seeds.iter().any(|seed| seed.redis_settings().db() != 0) {
            return Err(invalid("a Redis Cluster has only database 0"));
        }
        // Checks that the seeds agree (user, password, TLS); nothing is connected.
        cluster_client(&seeds, tls, super::RESPONSE_TIMEOUT)?;
        Ok(Self::Cluster(seeds, tls.clone()))
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(..))
    }

    /// A client for each server named: the one server, or each seed node of the cluster
    /// (for checks at start: a seed is a server of its own).
    pub fn seeds(&self) -> RedisResult<Vec<redis::Client>> {
        match self {
            Self::Single(client) => Ok(vec![client.clone()]),
            Self::Cluster(seeds, tls) => {
                seeds.iter().map(|seed| single_client(seed, tls)).collect()
            }
        }
    }

    /// A shared connection that reconnects by itself, created without connecting (so a
    /// program starts while Redis is down). Connecting to a node gives up after a second, a
    /// command (with a cluster's redirections and retries) after `response_timeout`: keep it
    /// above the BLOCK time of blocking reads.
    pub fn connect_lazy(&self, response_timeout: Duration) -> RedisResult<Connection> {
        Ok(match self {
            Self::Single(client) => {
                Connection::Single(Single::new(client.clone(), response_timeout)?)
            }
            Self::Cluster(seeds, tls) => Connection::Cluster(
                cluster_client(seeds, tls, response_timeout)?
                    .get_pending_async_connection_with_config(
                        ClusterConfig::new()
                            .set_connection_timeout(CONNECT_TIMEOUT)
                            .set_response_timeout(response_timeout),
                    ),
            ),
        })
    }
}

/// A client for one node `seed` with the TLS settings (a `rediss://` seed: see
/// [`client_with_tls`]).
fn single_client(seed: &redis::ConnectionInfo, tls: &Tls) -> RedisResult<redis::Client> {
    if tls.is_default() {
        redis::Client::open(seed.clone())
    } else {
        install_ring();
        redis::Client::build_with_tls(seed.clone(), tls.certificates())
    }
}

fn cluster_client(
    seeds: &[redis::ConnectionInfo],
    tls: &Tls,
    response_timeout: Duration,
) -> RedisResult<ClusterClient> {
    let mut builder = ClusterClientBuilder::new(seeds.to_vec());
    if !tls.is_default() {
        // `parse` let these settings through with rediss:// seeds only.
        install_ring();
        builder = builder.certs(tls.certificates());
    }
    builder
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response_timeout)
        // The whole request, redirections and retries included, within the same bound, so
        // a caller sees an error (and retries on its own terms) instead of waiting on a
        // failover. Retries start at 10 ms, not the crate's 1.28 s.
        .overall_response_timeout(Some(response_timeout))
        .retries(6)
        .min_retry_wait(10)
        .max_retry_wait(500)
        .build()
}

fn invalid(reason: &'static str) -> redis::RedisError {
    redis::RedisError::from((ErrorKind::InvalidClientConfig, reason))
}

/// A connection to one server or to a cluster. Cheap to clone (clones share the connection);
/// use it wherever a `redis::aio::ConnectionLike` is wanted.
#[derive(Clone)]
pub enum Connection {
    /// One server: a multiplexed connection that reconnects by itself.
    Single(Single),
    /// A cluster: one multiplexed connection per node, routed by slot.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("Connection::Single"),
            Self::Cluster(_) => f.write_str("Connection::Cluster"),
        }
    }
}

impl From<ConnectionManager> for Connection {
    /// A connection that reconnects as `conn` does (see [`Single`] for what it cannot).
    fn from(conn: ConnectionManager) -> Self {
        Self::Single(Single {
            shared: Arc::new(Shared {
                current: RwLock::new((0, conn)),
                renew: None,
                writer: None,
            }),
        })
    }
}

/// One server's connection, shared by its clones, that recovers from a refused login.
///
/// The redis crate's `ConnectionManager` reconnects after an I/O error only: once a reconnect
/// was refused (WRONGPASS while a password rotates, a user re-created after a restart), every
/// command after it gets the same refusal, until the program restarts. Here a command that
/// gets one replaces the manager with a new (lazy) one, so the next command logs in afresh.
/// Callers already wait between failed attempts; nothing else is retried.
#[derive(Clone)]
pub struct Single {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Single {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Single")
    }
}

struct Shared {
    /// The manager in use, with a generation: a refusal renews only the manager it came from.
    current: RwLock<(u64, ConnectionManager)>,
    /// How to build a new one; `None` for a manager given from outside (`From`).
    renew: Option<(redis::Client, Duration)>,
    /// The publishers' pipelined connection on plain TCP (`writer`); `None` for TLS, Unix
    /// sockets and a manager given from outside.
    writer: Option<Writer>,
}

impl Single {
    fn new(client: redis::Client, response_timeout: Duration) -> RedisResult<Self> {
        let manager = lazy_manager(client.clone(), response_timeout)?;
        Ok(Self {
            shared: Arc::new(Shared {
                current: RwLock::new((0, manager)),
                writer: Writer::new(&client, response_timeout),
                renew: Some((client, response_timeout)),
            }),
        })
    }

    fn current(&self) -> (u64, ConnectionManager) {
        let current = self
            .shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner());
        (current.0, current.1.clone())
    }

    /// After `err` on the manager of `generation`: a new manager if it was a refused login.
    fn after_error(&self, generation: u64, err: &redis::RedisError) {
        let refused_login = err.kind() == ErrorKind::AuthenticationFailed
            || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"));
        let Some((client, timeout)) = &self.shared.renew else {
            return;
        };
        if !refused_login {
            return;
        }
        let Ok(manager) = lazy_manager(client.clone(), *timeout) else {
            return;
        };
        let mut current = self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if current.0 == generation {
            *current = (generation + 1, manager);
        }
    }
}

impl From<ClusterConnection> for Connection {
    fn from(conn: ClusterConnection) -> Self {
        Self::Cluster(conn)
    }
}

impl Connection {
    /// Whether this is a connection to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The pipelined connection of its own for publishes, on one server over plain TCP.
    pub(crate) fn writer(&self) -> Option<&Writer> {
        match self {
            Self::Single(single) => single.shared.writer.as_ref(),
            Self::Cluster(_) => None,
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(single) => Box::pin(async move {
                let (generation, mut conn) = single.current();
                let result = conn.send_packed_command(cmd).await;
                if let Err(err) = &result {
                    single.after_error(generation, err);
                }
                result
            }),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(single) => Box::pin(async move {
                let (generation, mut conn) = single.current();
                let result = conn.send_packed_commands(cmd, offset, count).await;
                if let Err(err) = &result {
                    single.after_error(generation, err);
                }
                result
            }),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(single) => single.current().1.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_list_without_cluster_says_what_is_missing() {
        let err = Endpoint::parse("127.0.0.1:7000,127.0.0.1:7001", false, &Tls::default())
            .expect_err("several addresses for one server");
        assert!(err.to_string().contains("REDIS_CLUSTER=true"), "{err}");
        // A comma in a password is not a list.
        let one = Endpoint::parse("redis://app:pa,ss@127.0.0.1:6379", false, &Tls::default());
        assert!(!one.expect("one server").is_cluster());
    }

    #[test]
    fn parses_seed_lists() {
        assert!(
            !Endpoint::parse("127.0.0.1:6379", false, &Tls::default())
                .unwrap()
                .is_cluster()
        );
        let Endpoint::Cluster(seeds, _) = Endpoint::parse(
            " 127.0.0.1:7000, redis://127.0.0.1:7001 ,",
            true,
            &Tls::default(),
        )
        .unwrap() else {
            panic!("a cluster");
        };
        assert_eq!(seeds.len(), 2);
        for bad in ["", " , ", "127.0.0.1:7000,redis://127.0.0.1:7001/2"] {
            assert!(
                Endpoint::parse(bad, true, &Tls::default()).is_err(),
                "{bad:?}"
            );
        }
        // Seeds that disagree on the password are refused, and the message shows none.
        let err = Endpoint::parse(
            "redis://:secret-one@127.0.0.1:7000,redis://:secret-two@127.0.0.1:7001",
            true,
            &Tls::default(),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let debug = format!(
            "{:?}",
            Endpoint::parse("redis://:hunter2@127.0.0.1:7000", true, &Tls::default()).unwrap()
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    /// A CA certificate (self-signed, nothing trusts it) for the settings checks below.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBnDCCAUGgAwIBAgIUR1hZbW2yyCPSzIJX5+ZOwHIHZykwCgYIKoZIzj0EAwIw\nIjEgMB4GA1UEAwwXc2ltcGxlYmFuayB1bml0LXRlc3QgQ0EwIBcNMjYxMTI5MDAx\nNjAzWhgPMjEyNjExMDUwMDE2MDNaMCIxIDAeBgNVBAMMF3NpbXBsZWJhbmsgdW5p\ndC10ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEehX6COlBTWuYqoxK\naoH6tF0A1nUi9coE27FRQCD1WhAQE+8x6oGR3BRaYKIow1kV/t193KxYU404WSlO\ntHodl6NTMFEwHQYDVR0OBBYEFAkMFufIl3hK/GWN/NuIrK3q3UNUMB8GA1UdIwQY\nMBaAFAkMFufIl3hK/GWN/NuIrK3q3UNUMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI\nzj0EAwIDSQAwRgIhAIcvi+RtPmz7OBw6BcnlkiUAkkWWmzcQVfJk/C+Oxdk7AiEA\nzoPs+BJ0dyh+oBlkIt31NxDHr/QQq7VfccsxVh1YjRE=\n-----END CERTIFICATE-----\n";

    #[tokio::test]
    async fn cluster_seeds_take_the_tls_settings() {
        let tls = Tls::default()
            .with_ca_pem(TEST_CA.as_bytes().to_vec())
            .unwrap();
        // rediss:// seeds with a CA of our own: the cluster client is built with it (the
        // builder checks the PEM), and each seed's client for the start check too.
        let endpoint = Endpoint::parse(
            "rediss://127.0.0.1:7000,rediss://127.0.0.1:7001",
            true,
            &tls,
        )
        .unwrap();
        assert!(endpoint.is_cluster());
        for seed in endpoint.seeds().unwrap() {
            assert!(matches!(
                seed.get_connection_info().addr(),
                redis::ConnectionAddr::TcpTls {
                    insecure: false,
                    ..
                }
            ));
        }
        assert!(endpoint.connect_lazy(Duration::from_secs(1)).is_ok());
        // TLS settings with a plaintext seed are refused, not ignored; so is #insecure.
        for bad in [
            "rediss://127.0.0.1:7000,127.0.0.1:7001",
            "redis://127.0.0.1:7000",
            "rediss://127.0.0.1:7000/#insecure",
        ] {
            assert!(Endpoint::parse(bad, true, &tls).is_err(), "{bad:?}");
        }
        assert!(
            Endpoint::parse("rediss://127.0.0.1:7000/#insecure", true, &Tls::default()).is_err()
        );
    }
}
