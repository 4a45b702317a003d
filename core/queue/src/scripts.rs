//! The Lua scripts that move a task from one state to another in one atomic step. Each runs
//! on the keys of ONE queue (its `{ns:q}` hash tag, one Redis Cluster slot), all passed in
//! KEYS: no script builds a key name. Times come from Redis' own clock (`TIME`), so workers
//! with skewed clocks agree on when a task is due.
//!
//! States: *queued* (an entry in `{ns:q}:stream`), *running* (that entry, pending with a
//! consumer), *scheduled* (a member of `{ns:q}:scheduled`: delayed), *retry* (a member of
//! `{ns:q}:retry`: waiting for its next attempt), *dead* (an entry of `{ns:q}:dead`), *done*
//! (gone). A task with an id leaves a done marker when it finishes or dies (`{ns:q}:done:<id>`,
//! its lock token, for `DONE_MARKER_TTL`), which ENQUEUE reads: a republish of it adds nothing.
//!
//! | script | from -> to |
//! |---|---|
//! | [`enqueue`] | new -> queued, or scheduled; refused when its uniqueness lock is held |
//! | [`promote`] | scheduled or retry (due) -> queued |
//! | [`finish`] | running -> done (ack, delete, release the lock, leave a done marker), for a batch of entries |
//! | [`retry`] | running -> retry at now + delay |
//! | [`kill`] | running -> dead (release the lock, leave a done marker; trim the dead stream) |
//! | [`renew`] | running -> running, idle time reset (the lease), if still held by this consumer |
//! | [`requeue`] | dead -> queued |
//! | [`trim_dead`] | dead -> gone: past the dead stream's length or age limit |
//!
//! FINISH, RETRY and KILL also count the attempt they settle in the queue's `stats` hash
//! (`processed`, and `failed` for a failed attempt), in the same step.
//!
//! The scripts are private statics; each is called only through the typed function below it,
//! the one place that knows its KEYS/ARGV order.

use std::{sync::LazyLock, time::Duration};

use redis::{ErrorKind, RedisResult, Script, ServerErrorKind};

use crate::{
    connection::Connection,
    fields,
    keys::{EntryId, GROUP, Keys, QueueName},
    publish::ReplicaWait,
    task::{DONE_MARKER_TTL, Envelope, Schedule, Task},
};

/// KEYS: stream, scheduled, lock, then the done marker (only for a task with an id). ARGV:
/// lock token (`Task::lock_token`), has lock (`1`/`0`), lock ttl ms (`0` = none),
/// schedule kind (`` / `at` / `in`), schedule ms, scheduled member, then the entry's fields.
/// Returns `{status, detail}`: `queued` + entry id, `scheduled` + due ms, `exists` (this very
/// task already holds the lock, or finished or died: enqueued before), `conflict` (another
/// task holds it). `exists` writes the lock (or marker) again (same value and TTL): a write of
/// this connection, so a WAIT after it counts replicas that have the earlier writes too (WAIT
/// waits for the connection's last write, and this connection may not be the one that made
/// the first).
static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if KEYS[4] and redis.call('GET', KEYS[4]) == ARGV[1] then
  redis.call('SET', KEYS[4], ARGV[1], 'KEEPTTL')
  return {'exists', ''}
end
if ARGV[2] == '1' then
  local ok
  if ARGV[3] ~= '0' then
    ok = redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[3])
  else
    ok = redis.call('SET', KEYS[3], ARGV[1], 'NX')
  end
  if not ok then
    if redis.call('GET', KEYS[3]) == ARGV[1] then
      redis.call('SET', KEYS[3], ARGV[1], 'KEEPTTL')
      return {'exists', ''}
    end
    return {'conflict', ''}
  end
end
if ARGV[4] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local due = tonumber(ARGV[5])
  if ARGV[4] == 'in' then due = now + due end
  if due > now then
    redis.call('ZADD', KEYS[2], due, ARGV[6])
    return {'scheduled', tostring(due)}
  end
end
return {'queued', redis.call('XADD', KEYS[1], '*', unpack(ARGV, 7))}
",
    )
});

/// KEYS: scheduled, retry, stream, dead (of one queue). ARGV: batch size, queue name.
/// Moves up to a batch of due members of each set onto the stream. Returns `{moved, wait}`:
/// `wait` is how many ms until the next member of either set is due (-1 when both are empty).
/// A member that is not `{"fields": [name, value, ...]}` (written by something else) is moved
/// to the dead letters as a poison entry with its text (`raw` = `{"member": ...}`): left in
/// place, its error failed every later call, and no task of the queue was promoted again.
static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved = 0
local wait = -1
local function fields_of(member)
  local ok, task = pcall(cjson.decode, member)
  if not ok or type(task) ~= 'table' or type(task.fields) ~= 'table' then return nil end
  local fields = task.fields
  if #fields == 0 or #fields % 2 ~= 0 then return nil end
  for _, v in ipairs(fields) do
    if type(v) ~= 'string' and type(v) ~= 'number' then return nil end
  end
  return fields
end
for i = 1, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
  for _, member in ipairs(due) do
    local fields = fields_of(member)
    if fields then
      redis.call('XADD', KEYS[3], '*', unpack(fields))
      moved = moved + 1
    else
      redis.call('XADD', KEYS[4], '*', 'dead_at', tostring(now), 'queue', ARGV[2],
        'error', 'a scheduled or retry member that is not a task this queue can decode',
        'attempts', '0', 'raw', cjson.encode({member = member}))
    end
    redis.call('ZREM', KEYS[i], member)
  end
  local next = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if next[2] then
    local w = math.max(0, tonumber(next[2]) - now)
    if wait < 0 or w < wait then wait = w end
  end
end
return {moved, wait}
",
    )
});

/// KEYS: stream, stats, then for each finished task that holds a lock: its lock and its done
/// marker key (for a task without an id, the lock again: not written). ARGV: group, the
/// number `n` of entries, their `n` ids oldest first, then per lock: its token and the
/// marker's TTL in ms (`0`: no marker).
/// Acks and deletes the entries (a batch: the worker settles finished tasks together, see
/// the consumer's `ack` module); counts the acked ones as processed (one HINCRBY per batch);
/// releases each lock its task still holds and writes the done markers. Returns the number
/// acked.
///
/// The deletion, when every id of the batch was pending: one exact `XTRIM MINID` to the
/// oldest entry still pending (or, when none is, the batch's newest), then `XDEL` of the batch
/// ids from that floor on. Every entry below the floor was delivered and is no longer pending,
/// so it is settled: ARCHITECTURE.md ("Deleting settled entries (FINISH)") gives the
/// argument. When an id was not pending (finished elsewhere, or the group re-created), only
/// `XDEL` of the batch.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- Whether stream id a is older than b (`<ms>-<seq>`, decimal without leading zeros).
local function older(a, b)
  local da, db = string.find(a, '-', 1, true), string.find(b, '-', 1, true)
  if da ~= db then return da < db end
  if #a == #b or string.sub(a, 1, da) ~= string.sub(b, 1, db) then return a < b end
  return #a < #b
end
local n = tonumber(ARGV[2])
local last = 2 + n
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3, last))
local from = 3
if acked == n then
  local oldest = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1)[1]
  local floor = oldest and oldest[1] or ARGV[last]
  redis.call('XTRIM', KEYS[1], 'MINID', floor)
  from = last + 1
  while from > 3 and not older(ARGV[from - 1], floor) do from = from - 1 end
end
if from <= last then redis.call('XDEL', KEYS[1], unpack(ARGV, from, last)) end
if acked > 0 then redis.call('HINCRBY', KEYS[2], 'processed', acked) end
local a = n + 3
for i = 3, #KEYS, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[a] then
    redis.call('DEL', KEYS[i])
  end
  if ARGV[a + 1] ~= '0' then
    redis.call('SET', KEYS[i + 1], ARGV[a], 'PX', ARGV[a + 1])
  end
  a = a + 2
end
return acked
",
    )
});

/// KEYS: stream, retry, stats. ARGV: group, entry id, delay ms, retry member (next attempt),
/// failed (`1` if the attempt counts as failed, `0` for "not a failure").
/// Only if the entry is still pending (not finished elsewhere): ack, delete, add to retry,
/// count the attempt. Returns 1 if scheduled, 0 if the entry was no longer pending.
static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
redis.call('HINCRBY', KEYS[3], 'processed', 1)
if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[3], 'failed', 1) end
return 1
",
    )
});

/// The retention of the dead stream, as the scripts apply it (the end of KILL and TRIM_DEAD):
/// exact `MAXLEN` (the oldest go first), then `MINID` now - retention (Redis' clock). ARGV[m]
/// is the max length, ARGV[m + 1] the retention in ms.
const TRIM_DEAD_LUA: &str = r"
local function trim_dead(key, max, retention_ms, now)
  local by_max = redis.call('XTRIM', key, 'MAXLEN', max)
  local by_age = 0
  local min = now - retention_ms
  if min > 0 then
    by_age = redis.call('XTRIM', key, 'MINID', string.format('%.0f', min) .. '-0')
  end
  return {by_max, by_age}
end
";

/// KEYS: stream, dead, lock, stats, done marker (the lock again when there is none).
/// ARGV: group, entry id, lock token, has lock, failed (`1` if this delivery was a failed
/// attempt: counted as processed and failed), dead max length, retention ms, done marker TTL
/// ms (`0`: none), then the dead entry's fields. Only if the entry is still pending: ack,
/// delete, add to the dead letters (with `dead_at` from Redis' clock), release the lock,
/// write the done marker, count the attempt, trim the dead stream. Returns `{killed (1/0), trimmed by max length,
/// trimmed by age}`.
static KILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{TRIM_DEAD_LUA}
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return {{0, 0, 0}} end
redis.call('XDEL', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], '*', 'dead_at', tostring(now), unpack(ARGV, 9))
if ARGV[4] == '1' and redis.call('GET', KEYS[3]) == ARGV[3] then
  redis.call('DEL', KEYS[3])
end
if ARGV[8] ~= '0' then
  redis.call('SET', KEYS[5], ARGV[3], 'PX', ARGV[8])
end
if ARGV[5] == '1' then
  redis.call('HINCRBY', KEYS[4], 'processed', 1)
  redis.call('HINCRBY', KEYS[4], 'failed', 1)
end
local trimmed = trim_dead(KEYS[2], ARGV[6], tonumber(ARGV[7]), now)
return {{1, trimmed[1], trimmed[2]}}
"
    ))
});

/// KEYS: dead. ARGV: dead max length, retention ms. Trims the dead stream as KILL does.
/// Returns `{trimmed by max length, trimmed by age}`.
static TRIM_DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{TRIM_DEAD_LUA}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return trim_dead(KEYS[1], ARGV[1], tonumber(ARGV[2]), now)
"
    ))
});

/// KEYS: stream. ARGV: group, consumer, entry id.
/// Resets the entry's idle time (XCLAIM JUSTID: the delivery count is not raised), only if it
/// is still pending with this consumer. Returns 1 if renewed, 0 if the lease was lost.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
",
    )
});

/// KEYS: dead, stream, lock. ARGV: dead entry id, lock token, has lock, then the fields of the
/// new entry. Moves a dead task back to its stream, taking its lock again. Returns the new
/// entry id, `gone` if the dead entry no longer exists, `conflict` if another live task holds
/// the lock.
static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return 'gone' end
if ARGV[3] == '1' then
  if not redis.call('SET', KEYS[3], ARGV[2], 'NX') and redis.call('GET', KEYS[3]) ~= ARGV[2] then
    return 'conflict'
  end
end
redis.call('XDEL', KEYS[1], ARGV[1])
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
",
    )
});

fn flag(on: bool) -> &'static str {
    if on { "1" } else { "0" }
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What [`enqueue`] did.
pub(crate) enum Enqueue {
    /// Added to its stream, as this entry.
    Queued(String),
    /// Added to the scheduled set, due at this time (ms, Redis' clock).
    Scheduled(i64),
    /// This very task already holds its lock: enqueued before.
    Exists,
    /// Another task holds the lock.
    Conflict,
}

/// Takes `envelope`'s lock (if any) and queues or schedules it, in one step. With `wait`,
/// a WAIT follows in the same pipeline (so on the same node and connection), and its reply,
/// the replicas that acknowledged, comes back too.
pub(crate) async fn enqueue(
    conn: &mut Connection,
    keys: &Keys,
    envelope: &Envelope,
    wait: Option<ReplicaWait>,
) -> RedisResult<(Enqueue, Option<u32>)> {
    let task = &envelope.task;
    let (kind, at) = match task.schedule {
        None => ("", 0),
        Some(Schedule::At(at)) => ("at", at),
        Some(Schedule::In(delay)) => ("in", i64::try_from(delay).unwrap_or(i64::MAX)),
    };
    let member = if task.schedule.is_some() {
        fields::scheduled_member(envelope)
    } else {
        String::new()
    };
    let mut invocation = ENQUEUE.key(keys.stream(&task.queue));
    invocation
        .key(keys.scheduled(&task.queue))
        .key(keys.unique(&task.queue, task.unique.as_deref()));
    if let Some(done) = task.done_key(keys) {
        invocation.key(done);
    }
    invocation
        .arg(task.lock_token())
        .arg(flag(task.unique.is_some()))
        .arg(task.unique_ttl_ms.unwrap_or(0))
        .arg(kind)
        .arg(at)
        .arg(member)
        .arg(fields::encode(envelope));
    let ((status, detail), acknowledged): ((String, String), Option<u32>) = match wait {
        None => (invocation.invoke_async(conn).await?, None),
        Some(wait) => {
            let mut pipe = redis::pipe();
            pipe.invoke_script(&invocation).add_command(wait.cmd());
            let (reply, acknowledged) = match pipe.query_async(conn).await {
                Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    invocation.load_async(conn).await?;
                    pipe.query_async(conn).await?
                }
                other => other?,
            };
            (reply, Some(acknowledged))
        }
    };
    let enqueued = match status.as_str() {
        "queued" => Enqueue::Queued(detail),
        "scheduled" => Enqueue::Scheduled(detail.parse().unwrap_or_default()),
        "exists" => Enqueue::Exists,
        _ => Enqueue::Conflict,
    };
    Ok((enqueued, acknowledged))
}

/// Moves up to `batch` due tasks of each of `queue`'s scheduled and retry sets onto its
/// stream. Returns how many moved and how many ms until the next one is due (`None` when none
/// is left).
pub(crate) async fn promote(
    conn: &mut Connection,
    keys: &Keys,
    queue: &QueueName,
    batch: usize,
) -> RedisResult<(usize, Option<u64>)> {
    let (moved, wait): (usize, i64) = PROMOTE
        .key(keys.scheduled(queue))
        .key(keys.retry(queue))
        .key(keys.stream(queue))
        .key(keys.dead(queue))
        .arg(batch)
        .arg(queue.as_str())
        .invoke_async(conn)
        .await?;
    Ok((moved, u64::try_from(wait).ok()))
}

/// One finished entry for [`finish`]: its id, and the lock its task holds.
#[derive(Debug)]
pub(crate) struct Finished {
    pub entry_id: String,
    pub lock: Option<FinishedLock>,
}

/// The lock of a finished task: released, and for a task with an id, replaced by a done
/// marker.
#[derive(Debug)]
pub(crate) struct FinishedLock {
    pub key: String,
    pub token: String,
    /// The done marker's key, if the task has an id.
    pub done: Option<String>,
}

impl FinishedLock {
    /// The lock of `task`, if it holds one.
    pub(crate) fn of(keys: &Keys, task: &Task) -> Option<Self> {
        let unique = task.unique.as_deref()?;
        Some(Self {
            key: keys.unique(&task.queue, Some(unique)),
            token: task.lock_token(),
            done: task.done_key(keys),
        })
    }
}

/// The TTL argument of a done marker: `0` for none.
fn done_ttl_ms(done: Option<&String>) -> u64 {
    done.map_or(0, |_| ms(DONE_MARKER_TTL).max(1))
}

/// Acks and deletes `entries` of `queue`'s stream, counts them as processed and releases the
/// locks they still hold.
pub(crate) async fn finish<'a>(
    conn: &mut Connection,
    keys: &Keys,
    queue: &QueueName,
    entries: impl Iterator<Item = &'a Finished> + Clone,
) -> RedisResult<()> {
    let cmd = finish_cmd(keys, queue, entries);
    let _acked: i64 = match cmd.query_async(conn).await {
        // The script is not cached (a restarted or flushed Redis): loaded, then called again.
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            FINISH.load_async(conn).await?;
            cmd.query_async(conn).await?
        }
        other => other?,
    };
    Ok(())
}

/// FINISH's EVALSHA for `entries` of `queue`, written into one command sized up front, not
/// through the redis crate's `ScriptInvocation`, which allocates each argument on its own
/// and then copies them all (BENCHMARKS.md, "FINISH written as one command"): the same
/// bytes (`finish_is_the_invocation_it_replaced`).
fn finish_cmd<'a>(
    keys: &Keys,
    queue: &QueueName,
    entries: impl Iterator<Item = &'a Finished> + Clone,
) -> redis::Cmd {
    let mut batch: Vec<&Finished> = entries.clone().collect();
    // Entries finish mostly in the order they were read: then no sort (which allocates).
    if !batch.is_sorted_by_key(|entry| EntryId::parse(&entry.entry_id)) {
        batch.sort_by_cached_key(|entry| EntryId::parse(&entry.entry_id));
    }
    let locks: Vec<&FinishedLock> = entries.filter_map(|entry| entry.lock.as_ref()).collect();
    // KEYS: the stream, the stats, then a pair per lock. Without a marker, the lock key again
    // as the pair's second key: never written.
    let (stream, stats) = (keys.stream(queue), keys.stats(queue));
    let mut command_keys: Vec<&str> = vec![&stream, &stats];
    for lock in &locks {
        command_keys.push(&lock.key);
        command_keys.push(lock.done.as_deref().unwrap_or(&lock.key));
    }
    // The bytes of the arguments; a count or a TTL takes at most 20 digits.
    let data = "EVALSHA".len()
        + FINISH.get_hash().len()
        + GROUP.len()
        + 2 * 20
        + (command_keys.iter().map(|key| key.len())).sum::<usize>()
        + (batch.iter().map(|entry| entry.entry_id.len())).sum::<usize>()
        + (locks.iter().map(|lock| lock.token.len() + 20)).sum::<usize>();
    let mut cmd =
        redis::Cmd::with_capacity(5 + command_keys.len() + batch.len() + 2 * locks.len(), data);
    cmd.arg("EVALSHA")
        .arg(FINISH.get_hash())
        .arg(command_keys.len())
        .arg(&command_keys)
        .arg(GROUP)
        .arg(batch.len());
    for entry in &batch {
        cmd.arg(&entry.entry_id);
    }
    for lock in &locks {
        cmd.arg(&lock.token).arg(done_ttl_ms(lock.done.as_ref()));
    }
    cmd
}

/// Schedules `next` `delay` from now in place of pending entry `entry_id`, counting the
/// attempt (as failed if `failed`). False if the entry was no longer pending (finished or
/// taken over elsewhere).
pub(crate) async fn retry(
    conn: &mut Connection,
    keys: &Keys,
    entry_id: &str,
    delay: Duration,
    next: &Envelope,
    failed: bool,
) -> RedisResult<bool> {
    let queue = &next.task.queue;
    let scheduled: i64 = RETRY
        .key(keys.stream(queue))
        .key(keys.retry(queue))
        .key(keys.stats(queue))
        .arg(GROUP)
        .arg(entry_id)
        .arg(ms(delay))
        .arg(fields::scheduled_member(next))
        .arg(flag(failed))
        .invoke_async(conn)
        .await?;
    Ok(scheduled == 1)
}

/// How a dead stream is bounded: at most `max_len` letters, none older than `max_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    pub max_len: u64,
    pub max_age: Duration,
}

/// How many dead letters a trim removed, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Trimmed {
    pub by_max_len: u64,
    pub by_age: u64,
}

/// What [`kill`] did.
pub(crate) struct Killed {
    /// False if the entry was no longer pending (nothing done).
    pub killed: bool,
    pub trimmed: Trimmed,
}

/// Moves pending entry `entry_id` of `queue`'s stream to its dead letters as `dead_fields`,
/// releasing the lock of `task` (if it holds one), counting a failed attempt if `failed`, and
/// trimming the dead stream to `retention`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn kill(
    conn: &mut Connection,
    keys: &Keys,
    queue: &QueueName,
    entry_id: &str,
    task: Option<&Task>,
    failed: bool,
    retention: Retention,
    dead_fields: Vec<(&'static str, String)>,
) -> RedisResult<Killed> {
    let unique = task.and_then(|task| task.unique.as_deref());
    let done = task.and_then(|task| task.done_key(keys));
    let lock = keys.unique(queue, unique);
    let (killed, by_max_len, by_age): (i64, u64, u64) = KILL
        .key(keys.stream(queue))
        .key(keys.dead(queue))
        .key(&lock)
        .key(keys.stats(queue))
        .key(done.as_ref().unwrap_or(&lock))
        .arg(GROUP)
        .arg(entry_id)
        .arg(task.map(Task::lock_token).unwrap_or_default())
        .arg(flag(unique.is_some()))
        .arg(flag(failed))
        .arg(retention.max_len)
        .arg(ms(retention.max_age))
        .arg(done_ttl_ms(done.as_ref()))
        .arg(dead_fields)
        .invoke_async(conn)
        .await?;
    Ok(Killed {
        killed: killed == 1,
        trimmed: Trimmed { by_max_len, by_age },
    })
}

/// Trims `queue`'s dead stream to `retention`.
pub(crate) async fn trim_dead(
    conn: &mut Connection,
    keys: &Keys,
    queue: &QueueName,
    retention: Retention,
) -> RedisResult<Trimmed> {
    let (by_max_len, by_age): (u64, u64) = TRIM_DEAD
        .key(keys.dead(queue))
        .arg(retention.max_len)
        .arg(ms(retention.max_age))
        .invoke_async(conn)
        .await?;
    Ok(Trimmed { by_max_len, by_age })
}

/// Renews the lease of `consumer` on pending entry `entry_id`. False if the lease was lost.
pub(crate) async fn renew(
    conn: &mut Connection,
    stream: &str,
    consumer: &str,
    entry_id: &str,
) -> RedisResult<bool> {
    let renewed: i64 = RENEW
        .key(stream)
        .arg(GROUP)
        .arg(consumer)
        .arg(entry_id)
        .invoke_async(conn)
        .await?;
    Ok(renewed == 1)
}

/// What [`requeue`] did.
pub(crate) enum Requeue {
    /// Back on its stream, as this entry.
    Queued(String),
    /// The dead entry no longer exists.
    Gone,
    /// Another live task holds the lock.
    Conflict,
}

/// Moves dead entry `dead_entry_id` back onto its stream as `envelope`, taking its lock again.
pub(crate) async fn requeue(
    conn: &mut Connection,
    keys: &Keys,
    dead_entry_id: &str,
    envelope: &Envelope,
) -> RedisResult<Requeue> {
    let task = &envelope.task;
    let outcome: String = REQUEUE
        .key(keys.dead(&task.queue))
        .key(keys.stream(&task.queue))
        .key(keys.unique(&task.queue, task.unique.as_deref()))
        .arg(dead_entry_id)
        .arg(task.lock_token())
        .arg(flag(task.unique.is_some()))
        .arg(fields::encode(envelope))
        .invoke_async(conn)
        .await?;
    Ok(match outcome.as_str() {
        "gone" => Requeue::Gone,
        "conflict" => Requeue::Conflict,
        _ => Requeue::Queued(outcome),
    })
}

#[cfg(test)]
#[path = "finish_tests.rs"]
mod finish_tests;
