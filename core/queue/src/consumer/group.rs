//! The consumer group: created on every task stream with `XGROUP CREATE <stream> workers 0
//! MKSTREAM`, so entries added before the first worker started are delivered too.
//! BUSYGROUP (it already exists) is success. A worker then joins the group on each stream
//! (`XGROUP CREATECONSUMER`), so it shows in `XINFO CONSUMERS` from its start, not only once
//! it has read an entry, and writes its queues and their weights into the registry
//! (`{ns}:queues`), where the admin service and the metrics find them.

use crate::connection::Connection;

use crate::keys::{GROUP, Keys, QueueName};

/// Creates the group on each queue's stream (and the stream), if missing.
pub(crate) async fn ensure(
    conn: &mut Connection,
    keys: &Keys,
    queues: &[QueueName],
) -> redis::RedisResult<()> {
    for queue in queues {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(keys.stream(queue))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Ok(()) => {}
            Err(err) if err.code() == Some("BUSYGROUP") => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Adds `consumer` to the group on each queue's stream (nothing if it is already there): one
/// command per queue, since the streams are in different slots (a Redis Cluster refuses a
/// pipeline across slots).
pub(crate) async fn join(
    conn: &mut Connection,
    keys: &Keys,
    queues: &[QueueName],
    consumer: &str,
) -> redis::RedisResult<()> {
    for queue in queues {
        redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(keys.stream(queue))
            .arg(GROUP)
            .arg(consumer)
            .exec_async(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Writes `queues` and their weights into the registry `{ns}:queues` (a plain HSET: the
/// registry is namespace-wide, never touched by a queue's script), and creates each queue's
/// counters at 0 if missing, so they read 0 rather than nothing from the start. A queue
/// served by workers with different weights shows the weight of the last one started. One
/// pipeline on one server; on a Redis Cluster the registry and each queue's counters are in
/// different slots, so one pipeline per slot.
pub(crate) async fn register(
    conn: &mut Connection,
    keys: &Keys,
    queues: &[(QueueName, u32)],
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    let registry = pipe.cmd("HSET").arg(keys.queues());
    for (queue, weight) in queues {
        registry.arg(queue.as_str()).arg(*weight);
    }
    registry.ignore();
    for (queue, _) in queues {
        if conn.is_cluster() {
            pipe.query_async::<()>(&mut *conn).await?;
            pipe.clear();
        }
        for counter in ["processed", "failed"] {
            pipe.cmd("HINCRBY")
                .arg(keys.stats(queue))
                .arg(counter)
                .arg(0)
                .ignore();
        }
    }
    pipe.query_async::<()>(conn).await
}

/// Whether `err` says the group (or its stream) is gone, so it must be created again.
pub(crate) fn is_missing(err: &redis::RedisError) -> bool {
    err.code() == Some("NOGROUP")
}
