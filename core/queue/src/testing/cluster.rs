//! [`RedisCluster`]: a private Redis Cluster of the test's own (three primaries, a replica
//! each, loopback only), joined with `redis-cli --cluster create`, killed on drop.

use std::{collections::HashMap, process::Command, time::Duration};

use super::{RedisServer, eventually, free_port};
use crate::keys::{Keys, Namespace, QueueName};

/// How long a node may be unreachable before the cluster counts it as failed (and promotes
/// its replica): short, so a failover takes seconds.
const NODE_TIMEOUT_MS: u64 = 1500;

/// A running cluster: `nodes[i]` is a `redis-server` in cluster mode.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// One node as `CLUSTER NODES` shows it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// For a replica: the id of its primary.
    pub primary_id: Option<String>,
    /// Whether the cluster counts it as failed.
    pub failed: bool,
}

impl RedisCluster {
    /// Three primaries and one replica each (six `redis-server`s), all slots served.
    pub async fn start() -> Self {
        // Ports are picked free, then bound by redis-server: another test may take one in
        // between, and the join then fails. A new set of nodes is tried then.
        for _ in 0..3 {
            if let Some(cluster) = Self::try_start().await {
                cluster.wait_until_healthy().await;
                return cluster;
            }
        }
        panic!("redis-cli --cluster create failed three times");
    }

    async fn try_start() -> Option<Self> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            // Both ports picked free: a start that fails (one was taken meanwhile) is tried
            // again with two new ones.
            let mut node = None;
            for _ in 0..5 {
                let bus = free_port().to_string();
                let timeout = NODE_TIMEOUT_MS.to_string();
                node = RedisServer::try_start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                    "--cluster-port",
                    &bus,
                    // A replica's first sync at once, not 5 s later: until it has synced, it
                    // cannot take over its primary.
                    "--repl-diskless-sync-delay",
                    "0",
                ])
                .await;
                if node.is_some() {
                    break;
                }
            }
            nodes.push(node.expect("a cluster node started in five tries"));
        }
        let mut create = Command::new(std::env::var("REDIS_CLI").unwrap_or("redis-cli".into()));
        create.args(["--cluster", "create"]);
        create.args(nodes.iter().map(RedisServer::address));
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed (run `make services`)");
        if !output.status.success() {
            eprintln!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            );
            return None;
        }
        Some(Self { nodes })
    }

    /// Every node's address, comma-separated: `REDIS_ADDRESS` with `REDIS_CLUSTER=true`.
    pub fn seeds(&self) -> String {
        let addresses: Vec<String> = self.nodes.iter().map(RedisServer::address).collect();
        addresses.join(",")
    }

    /// A plain (single-node) connection to node `index`.
    pub async fn node_conn(&self, index: usize) -> redis::aio::MultiplexedConnection {
        node_conn(&self.nodes[index].address())
            .await
            .expect("cluster node answers")
    }

    /// The index of the node on `port`.
    pub fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|node| node.port == port)
            .expect("a node of this cluster")
    }

    /// The nodes as a live node sees them (asking each live node in turn).
    pub async fn topology(&self) -> Vec<NodeInfo> {
        for node in &self.nodes {
            let Ok(mut conn) = node_conn(&node.address()).await else {
                continue;
            };
            let Ok(text) = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn)
                .await
            else {
                continue;
            };
            return text.lines().filter_map(parse_node).collect();
        }
        panic!("no node of the cluster answers CLUSTER NODES");
    }

    /// The slot of `key` (CRC16 of its hash tag), as Redis computes it.
    pub async fn slot_of(&self, key: &str) -> u16 {
        for node in &self.nodes {
            if let Ok(mut conn) = node_conn(&node.address()).await
                && let Ok(slot) = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(key)
                    .query_async::<u16>(&mut conn)
                    .await
            {
                return slot;
            }
        }
        panic!("no node answers CLUSTER KEYSLOT");
    }

    /// The port of the primary serving `key`'s slot now.
    pub async fn primary_port_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key).await;
        for node in &self.nodes {
            let Ok(mut conn) = node_conn(&node.address()).await else {
                continue;
            };
            let Ok(shards) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Vec<redis::Value>>(&mut conn)
                .await
            else {
                continue;
            };
            for shard in shards {
                let redis::Value::Array(items) = shard else {
                    continue;
                };
                let number = |i: usize| redis::from_redis_value_ref::<i64>(&items[i]).ok();
                let (Some(from), Some(to)) = (number(0), number(1)) else {
                    continue;
                };
                if (from..=to).contains(&i64::from(slot))
                    && let Some(redis::Value::Array(primary)) = items.get(2)
                    && let Some(port) = primary
                        .get(1)
                        .and_then(|p| redis::from_redis_value_ref::<u16>(p).ok())
                {
                    return port;
                }
            }
        }
        panic!("no node knows who serves slot {slot}");
    }

    /// A namespace whose `queues`' streams are on as many different primaries as there are
    /// queues (up to three), and whose namespace-wide keys (`{ns}:...`) are on a primary none
    /// of them uses when there are fewer than three: chosen by trying random names.
    pub async fn spread_namespace(&self, queues: &[QueueName]) -> Namespace {
        for _ in 0..500 {
            let candidate =
                Namespace::parse(&format!("t-{}", super::unique_suffix())).expect("a name");
            let keys = Keys::new(candidate.clone());
            let mut ports = Vec::new();
            for queue in queues {
                ports.push(self.primary_port_of(&keys.stream(queue)).await);
            }
            let shared = self.primary_port_of(&keys.queues()).await;
            let mut distinct = ports.clone();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() == ports.len() && (queues.len() >= 3 || !ports.contains(&shared)) {
                return candidate;
            }
        }
        panic!("no namespace spreads the queues over the primaries");
    }

    /// Waits until every live node says `cluster_state:ok`, each of the three shards has a
    /// primary and each primary a replica that is not failed and has synced with it (its
    /// replication link is up: only then can it take over).
    pub async fn wait_until_healthy(&self) {
        eventually(
            "the cluster is ok, three primaries with a replica each",
            Duration::from_secs(60),
            || async {
                for node in &self.nodes {
                    let Ok(mut conn) = node_conn(&node.address()).await else {
                        continue;
                    };
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    if !info.contains("cluster_state:ok") {
                        return false;
                    }
                }
                let nodes = self.topology().await;
                let primaries: Vec<&NodeInfo> =
                    nodes.iter().filter(|n| n.primary && !n.failed).collect();
                let mut replicas: HashMap<&str, usize> = HashMap::new();
                for node in nodes.iter().filter(|n| !n.primary && !n.failed) {
                    if let Some(primary) = &node.primary_id {
                        *replicas.entry(primary.as_str()).or_default() += 1;
                    }
                }
                for replica in nodes.iter().filter(|n| !n.primary && !n.failed) {
                    let Ok(mut conn) = node_conn(&format!("127.0.0.1:{}", replica.port)).await
                    else {
                        return false;
                    };
                    let info: String = redis::cmd("INFO")
                        .arg("replication")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    if !info.contains("master_link_status:up") {
                        return false;
                    }
                }
                primaries.len() == 3
                    && primaries
                        .iter()
                        .all(|p| replicas.get(p.id.as_str()).copied().unwrap_or(0) >= 1)
            },
        )
        .await;
    }

    /// Moves `slot` (with its keys) to the primary on `to_port`, as `redis-cli --cluster
    /// reshard` does: IMPORTING/MIGRATING, MIGRATE key by key (clients meanwhile get ASK for
    /// keys already moved), then the new owner announced to every primary (MOVED from then).
    pub async fn move_slot(&self, slot: u16, to_port: u16) {
        let nodes = self.topology().await;
        let from_port = {
            let mut port = None;
            for node in nodes.iter().filter(|n| n.primary && !n.failed) {
                let mut conn = self.node_conn(self.index_of(node.port)).await;
                let count: i64 = redis::cmd("CLUSTER")
                    .arg("COUNTKEYSINSLOT")
                    .arg(slot)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(0);
                let owned: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                let myself = owned.lines().find(|l| l.contains("myself")).unwrap_or("");
                if count > 0 || owns(myself, slot) {
                    port = Some(node.port);
                    break;
                }
            }
            port.expect("a primary owns the slot")
        };
        let id_of = |port: u16| {
            nodes
                .iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .expect("known node")
        };
        let (from_id, to_id) = (id_of(from_port), id_of(to_port));
        let mut from = self.node_conn(self.index_of(from_port)).await;
        let mut to = self.node_conn(self.index_of(to_port)).await;
        let setslot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        let () = setslot("IMPORTING", &from_id)
            .query_async(&mut to)
            .await
            .unwrap();
        let () = setslot("MIGRATING", &to_id)
            .query_async(&mut from)
            .await
            .unwrap();
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(10)
                .query_async(&mut from)
                .await
                .unwrap();
            if keys.is_empty() {
                break;
            }
            let () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to_port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(keys)
                .query_async(&mut from)
                .await
                .unwrap();
        }
        for node in nodes.iter().filter(|n| n.primary && !n.failed) {
            let mut conn = self.node_conn(self.index_of(node.port)).await;
            let () = setslot("NODE", &to_id)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }

    /// Kills node `index` at once (SIGKILL).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts node `index` again (same port, folder and `nodes.conf`): it rejoins the cluster,
    /// as a replica if its replica was promoted meanwhile.
    pub async fn restart(&mut self, index: usize) {
        self.nodes[index].restart().await;
    }
}

async fn node_conn(address: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = crate::connection::client(address)?;
    client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(2))),
        )
        .await
}

/// `<id> <ip:port@bus> <flags> <primary id or -> ...`
fn parse_node(line: &str) -> Option<NodeInfo> {
    let mut fields = line.split_whitespace();
    let id = fields.next()?.to_owned();
    let address = fields.next()?;
    let port = address
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags = fields.next()?;
    let primary_id = fields.next().filter(|p| *p != "-").map(str::to_owned);
    Some(NodeInfo {
        id,
        port,
        primary: flags.contains("master"),
        primary_id,
        failed: flags.contains("fail"),
    })
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges.
fn owns(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|range| {
        let mut bounds = range.split('-');
        match (
            bounds.next().and_then(|b| b.parse::<u16>().ok()),
            bounds.next().and_then(|b| b.parse::<u16>().ok()),
        ) {
            (Some(from), Some(to)) => (from..=to).contains(&slot),
            (Some(only), None) => only == slot,
            _ => false,
        }
    })
}
