//! `simplebank-worker migrate-redis`: moves a Redis written by the old single-hash-tag layout
//! into the per-queue one (see `simplebank_queue::migrate`), then prints what it moved. Run it
//! once, with the old workers stopped, before or after starting the new ones; running it again
//! moves nothing twice. It runs on one server only: the old layout put a whole namespace in
//! one hash tag, which a Redis Cluster would have held on one node, and the move is a
//! sequence of multi-key scripts that this command does not route slot by slot; with
//! `REDIS_CLUSTER=true` it refuses to start (migrate on the single server first, then move
//! the data to the cluster).

use simplebank_core::{config::CommonConfig, redis_client};
use simplebank_queue::{Keys, migrate};

/// Why the migration did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The address is not a Redis address.
    #[error("invalid Redis address (REDIS_ADDRESS)")]
    Address(#[source] redis::RedisError),
    /// `REDIS_CLUSTER` is true: the migration runs on one server only.
    #[error(
        "migrate-redis runs on a single Redis server, not a Redis Cluster (REDIS_CLUSTER is \
         true): migrate the old layout on the single server, then move its data to the cluster"
    )]
    Cluster,
    /// Redis failed or did not answer; what was moved stays moved, run it again.
    #[error("Redis failed during the migration; run it again to move the rest")]
    Redis(#[source] redis::RedisError),
}

/// Runs the migration on the Redis and namespace of `common`.
pub async fn run(common: &CommonConfig) -> Result<migrate::Migrated, MigrateError> {
    let endpoint = common.redis_endpoint().map_err(MigrateError::Address)?;
    if endpoint.is_cluster() {
        return Err(MigrateError::Cluster);
    }
    // The endpoint carries the TLS settings (REDIS_TLS_*) as the worker's own connection.
    let mut conn = endpoint
        .connect_lazy(redis_client::RESPONSE_TIMEOUT)
        .map_err(MigrateError::Address)?;
    migrate::run(&mut conn, &Keys::new(common.namespace.clone()))
        .await
        .map_err(MigrateError::Redis)
}

/// What [`run`] moved, as the lines the command prints.
pub fn summary(migrated: &migrate::Migrated) -> String {
    format!(
        "moved {} stream entries (they run again), {} scheduled tasks, {} retries, {} dead letters, \
         {} locks; deleted {} orphaned locks; skipped {}",
        migrated.stream_entries,
        migrated.scheduled,
        migrated.retry,
        migrated.dead,
        migrated.locks_moved,
        migrated.locks_dropped,
        migrated.skipped,
    )
}
