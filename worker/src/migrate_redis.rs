//! `simplebank-worker migrate-redis`: moves a Redis written by the old single-hash-tag layout
//! into the per-queue one (see `simplebank_queue::migrate`), then prints what it moved. Run it
//! once, with the old workers stopped, before or after starting the new ones; running it again
//! moves nothing twice.

use simplebank_core::{config::CommonConfig, redis_client};
use simplebank_queue::{Keys, migrate};

/// Why the migration did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The address is not a Redis address.
    #[error("invalid Redis address (REDIS_ADDRESS)")]
    Address(#[source] redis::RedisError),
    /// Redis failed or did not answer; what was moved stays moved, run it again.
    #[error("Redis failed during the migration; run it again to move the rest")]
    Redis(#[source] redis::RedisError),
}

/// Runs the migration on the Redis and namespace of `common`.
pub async fn run(common: &CommonConfig) -> Result<migrate::Migrated, MigrateError> {
    let client =
        redis_client::client(common.redis_address.expose()).map_err(MigrateError::Address)?;
    let mut conn = redis_client::lazy_manager(client, redis_client::RESPONSE_TIMEOUT)
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
