//! Taking over entries whose consumer vanished or failed: every reclaim interval, each unpaused
//! queue's stream's
//! pending entries idle for longer than the visibility timeout are claimed with XAUTOCLAIM,
//! paging the cursor until `0-0`, and run like new ones. Entries that were deleted from the
//! stream while pending come back in XAUTOCLAIM's third reply element; Redis has already
//! removed them from the pending list, so they are only counted in the log.
//!
//! The delivery counts of the claimed entries (one pipelined XPENDING per entry) go with them
//! to the dispatcher, which dead-letters an entry delivered more than `max_retry + 1` times: a
//! task that kills its worker every time cannot kill them all. An entry whose count cannot be
//! read is not run: it stays pending with this consumer and is taken over again after the
//! visibility timeout (its count grows by one each time), so the cap holds even then.

use std::{collections::HashMap, sync::Arc, time::Duration};

use redis::{Value, streams::StreamAutoClaimOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{
    dispatch::Dispatcher,
    fetch::{entry, text, unexpected_reply},
    paused::Paused,
};
use crate::{
    connection::Connection,
    fields::{Delivered, Entry},
    keys::{GROUP, Keys, QueueName},
    report,
};

/// Why a sweep of one queue stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReclaimError {
    #[error("XAUTOCLAIM failed")]
    Claim(#[source] redis::RedisError),
    #[error(
        "cannot read the delivery counts of {count} claimed entries (XPENDING); \
         they are not run now and stay pending until taken over again"
    )]
    DeliveryCounts {
        count: usize,
        #[source]
        source: redis::RedisError,
    },
}

/// What the reclaim loop needs.
#[derive(Debug)]
pub(crate) struct Reclaimer {
    pub conn: Connection,
    pub keys: Keys,
    pub queues: Vec<QueueName>,
    pub consumer: String,
    pub visibility_timeout: Duration,
    pub interval: Duration,
    pub slots: Arc<Semaphore>,
    pub dispatcher: Arc<Dispatcher>,
    /// Paused queues are not swept: what a crashed worker left there waits for the resume.
    pub paused: Paused,
}

impl Reclaimer {
    /// Runs until `stop` is cancelled.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unreachable_redis = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let open = self.paused.now();
            for (index, queue) in self.queues.clone().into_iter().enumerate() {
                if !open.is_open(index) {
                    continue;
                }
                match self.sweep(&queue, &stop).await {
                    Ok(()) => unreachable_redis = false,
                    // Redis unreachable: said once per outage, not on every scan.
                    Err(err @ ReclaimError::Claim(_)) => {
                        if !unreachable_redis {
                            tracing::warn!(
                                queue = %queue, error = %report::chain(&err),
                                "reclaim failed; will retry"
                            );
                        }
                        unreachable_redis = true;
                    }
                    Err(err) => tracing::error!(
                        queue = %queue, error = %report::chain(&err), "reclaim failed; will retry"
                    ),
                }
            }
        }
    }

    /// Claims and dispatches every entry of `queue` idle past the visibility timeout.
    async fn sweep(
        &mut self,
        queue: &QueueName,
        stop: &CancellationToken,
    ) -> Result<(), ReclaimError> {
        let stream = self.keys.stream(queue);
        let min_idle = u64::try_from(self.visibility_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut cursor = "0-0".to_owned();
        loop {
            let Some(mut permits) = self.free_slots(stop).await else {
                return Ok(());
            };
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(min_idle)
                .arg(&cursor)
                .arg(StreamAutoClaimOptions::default().count(permits.len()))
                .query_async(&mut self.conn)
                .await
                .map_err(ReclaimError::Claim)?;
            let reply = claimed(reply).map_err(ReclaimError::Claim)?;
            if !reply.deleted_ids.is_empty() {
                tracing::warn!(
                    queue = %queue,
                    count = reply.deleted_ids.len(),
                    "pending entries no longer in the stream were dropped by XAUTOCLAIM"
                );
            }
            let deliveries = self
                .delivery_counts(&stream, &reply.claimed)
                .await
                .map_err(|source| ReclaimError::DeliveryCounts {
                    count: reply.claimed.len(),
                    source,
                })?;
            for entry in reply.claimed {
                // Missing: no longer pending here (acknowledged meanwhile), nothing to run.
                let Some(&delivered) = deliveries.get(&entry.id) else {
                    continue;
                };
                tracing::info!(
                    queue = %queue, entry_id = %entry.id, deliveries = delivered,
                    "reclaimed a pending entry"
                );
                let permit = match permits.pop() {
                    Some(permit) => permit,
                    None => match self.slots.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return Ok(()),
                    },
                };
                self.dispatcher.spawn(
                    queue.clone(),
                    Delivered::Fields(entry),
                    Some(delivered),
                    permit,
                );
            }
            cursor = reply.next_stream_id;
            if cursor == "0-0" {
                return Ok(());
            }
        }
    }

    /// Redis' delivery counter of each of `claimed` (now pending with this consumer): one
    /// XPENDING per id, pipelined. (One XPENDING over the range would also list this consumer's
    /// other entries between them, and its COUNT could cut off claimed ones.)
    async fn delivery_counts(
        &mut self,
        stream: &str,
        claimed: &[Entry],
    ) -> redis::RedisResult<HashMap<String, u64>> {
        if claimed.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for entry in claimed {
            pipe.cmd("XPENDING")
                .arg(stream)
                .arg(GROUP)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1)
                .arg(&self.consumer);
        }
        let replies: Vec<Vec<(String, String, u64, u64)>> =
            pipe.query_async(&mut self.conn).await?;
        Ok(replies
            .into_iter()
            .flatten()
            .map(|(id, _consumer, _idle, deliveries)| (id, deliveries))
            .collect())
    }

    /// Waits for at least one free slot and takes every free one; `None` when stopping.
    async fn free_slots(&self, stop: &CancellationToken) -> Option<Vec<OwnedSemaphorePermit>> {
        let first = tokio::select! {
            () = stop.cancelled() => return None,
            permit = self.slots.clone().acquire_owned() => permit.ok()?,
        };
        let mut permits = vec![first];
        while let Ok(permit) = self.slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        Some(permits)
    }
}

/// What one XAUTOCLAIM brought.
struct Claimed {
    next_stream_id: String,
    claimed: Vec<Entry>,
    /// Pending entries no longer in the stream (Redis 7 drops them from the PEL).
    deleted_ids: Vec<String>,
}

/// XAUTOCLAIM's reply, `[cursor, [entry, ...], [deleted id, ...]]`, its entries read as the
/// fetch loop reads them (a field name that is not UTF-8 does not fail the whole reply).
fn claimed(reply: Value) -> redis::RedisResult<Claimed> {
    let bad = || unexpected_reply("XAUTOCLAIM");
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    let mut items = items.into_iter();
    let next_stream_id = items.next().and_then(text).ok_or_else(bad)?;
    let claimed = match items.next() {
        Some(Value::Array(entries)) => entries
            .into_iter()
            // Redis 6.2 lists an entry deleted while pending as nil.
            .filter(|raw| *raw != Value::Nil)
            .map(entry)
            .collect::<redis::RedisResult<_>>()?,
        Some(Value::Nil) | None => Vec::new(),
        Some(_) => return Err(bad()),
    };
    let deleted_ids = match items.next() {
        Some(Value::Array(ids)) => ids.into_iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    Ok(Claimed {
        next_stream_id,
        claimed,
        deleted_ids,
    })
}
