//! Pausing a queue. `{ns:q}:paused` is present (`1`) while queue `q` is paused: no worker
//! reads or takes over its tasks (within a second of [`pause`]), while producers still
//! enqueue and the promoter still moves its due tasks onto its stream, where they wait. The
//! flag is persistent, in Redis, so it outlives worker and server restarts; [`resume`] removes
//! it. Workers learn of it from a refresh of their own, not from a lookup per read.

use redis::{RedisResult, aio::ConnectionLike};

use crate::keys::{Keys, QueueName};

/// Pauses `queue`. True if it was running, false if it was already paused.
pub async fn pause<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &QueueName,
) -> RedisResult<bool> {
    let set: Option<String> = redis::cmd("SET")
        .arg(keys.paused(queue))
        .arg("1")
        .arg("NX")
        .query_async(conn)
        .await?;
    let changed = set.is_some();
    if changed {
        tracing::info!(queue = %queue, "queue paused");
    }
    Ok(changed)
}

/// Resumes `queue`. True if it was paused, false if it was running.
pub async fn resume<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &QueueName,
) -> RedisResult<bool> {
    let deleted: u64 = redis::cmd("DEL")
        .arg(keys.paused(queue))
        .query_async(conn)
        .await?;
    let changed = deleted == 1;
    if changed {
        tracing::info!(queue = %queue, "queue resumed");
    }
    Ok(changed)
}

/// Whether `queue` is paused.
pub async fn is_paused<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &QueueName,
) -> RedisResult<bool> {
    redis::cmd("EXISTS")
        .arg(keys.paused(queue))
        .query_async(conn)
        .await
}
