//! Reading the state of the queues: how many tasks each holds in each state, how old its oldest
//! waiting task is, and its counters; and which queues exist (the registry, `{ns}:queues`).
//! The admin service and the metrics read these; nothing else in the queue does.
//!
//! One queue's numbers come from one read-only script on that queue's keys (one slot, one
//! round trip, one consistent snapshot); its weight from the registry, in a second request
//! (the registry is in the namespace's slot, which a Redis Cluster may serve from another
//! node: a pipeline across slots is refused).

use std::{sync::LazyLock, time::Duration};

use redis::{RedisResult, Script, aio::ConnectionLike};

use crate::keys::{GROUP, Keys, QueueName};

/// The state of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue.
    pub queue: QueueName,
    /// Its weight in the registry; `None` when no worker has registered it.
    pub weight: Option<u32>,
    /// Whether it is paused (`{ns:q}:paused`).
    pub paused: bool,
    /// Tasks on its stream not yet delivered to a worker.
    pub pending: u64,
    /// Tasks delivered to a worker and not yet settled (running, or held by a crashed worker
    /// until taken over).
    pub active: u64,
    /// Tasks delayed by `process_in`/`process_at`.
    pub scheduled: u64,
    /// Tasks waiting for their next attempt.
    pub retry: u64,
    /// Dead letters.
    pub dead: u64,
    /// How long the oldest pending task has been waiting on the stream (since it was enqueued
    /// or promoted there), by Redis' clock; `None` when nothing is pending.
    pub oldest_pending_age: Option<Duration>,
    /// Attempts finished, successful or not (`{ns:q}:stats` `processed`).
    pub processed: u64,
    /// Failed attempts (`{ns:q}:stats` `failed`).
    pub failed: u64,
}

/// KEYS: stream, scheduled, retry, dead, paused, stats (of one queue). ARGV: group.
/// Returns `{pending, active, scheduled, retry, dead, paused, processed, failed, oldest age ms
/// (-1: none)}`. `pending` is the group's lag; where Redis cannot tell the lag (deletions
/// ahead of the group's position), the stream length minus the group's pending entries, the
/// same number as long as only settled entries are deleted (the queue's rule).
static STATS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local len = redis.call('XLEN', KEYS[1])
local pending, active, from = len, 0, '-'
if len > 0 then
  local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
  if type(groups) == 'table' and not groups.err then
    for _, g in ipairs(groups) do
      local info = {}
      for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
      if info['name'] == ARGV[1] then
        active = tonumber(info['pending']) or 0
        from = '(' .. info['last-delivered-id']
        pending = tonumber(info['lag']) or math.max(0, len - active)
      end
    end
  end
end
local oldest = -1
if pending > 0 then
  local first = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 1)
  if first[1] then
    local ms = tonumber(string.match(first[1][1], '^(%d+)'))
    oldest = math.max(0, now - ms)
  end
end
local counters = redis.call('HMGET', KEYS[6], 'processed', 'failed')
return {
  pending, active,
  redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]), redis.call('XLEN', KEYS[4]),
  redis.call('EXISTS', KEYS[5]),
  tonumber(counters[1]) or 0, tonumber(counters[2]) or 0,
  oldest
}
",
    )
});

/// The state of `queue` (see [`QueueStats`]). A queue nobody has used reads as all zeros.
pub async fn queue_stats<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &QueueName,
) -> RedisResult<QueueStats> {
    let mut invocation = STATS.key(keys.stream(queue));
    invocation
        .key(keys.scheduled(queue))
        .key(keys.retry(queue))
        .key(keys.dead(queue))
        .key(keys.paused(queue))
        .key(keys.stats(queue))
        .arg(GROUP);
    let numbers: Vec<i64> = invocation.invoke_async(conn).await?;
    let weight: Option<String> = redis::cmd("HGET")
        .arg(keys.queues())
        .arg(queue.as_str())
        .query_async(conn)
        .await?;
    let number = |i: usize| {
        numbers
            .get(i)
            .and_then(|n| u64::try_from(*n).ok())
            .unwrap_or(0)
    };
    let oldest = numbers.get(8).copied().unwrap_or(-1);
    Ok(QueueStats {
        queue: queue.clone(),
        weight: weight.and_then(|w| w.parse().ok()),
        pending: number(0),
        active: number(1),
        scheduled: number(2),
        retry: number(3),
        dead: number(4),
        paused: number(5) == 1,
        processed: number(6),
        failed: number(7),
        oldest_pending_age: u64::try_from(oldest).ok().map(Duration::from_millis),
    })
}

/// The queues in the registry (`{ns}:queues`), by name, with their weights (`None` for a
/// value that is not one). Every worker writes its queues there at start; a queue that only
/// producers have used is not listed until a worker serves it.
pub async fn known_queues<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
) -> RedisResult<Vec<(QueueName, Option<u32>)>> {
    let registry: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys.queues())
        .query_async(conn)
        .await?;
    let mut queues: Vec<(QueueName, Option<u32>)> = registry
        .into_iter()
        .filter_map(|(name, weight)| Some((QueueName::parse(&name).ok()?, weight.parse().ok())))
        .collect();
    queues.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(queues)
}
