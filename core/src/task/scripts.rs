//! The Lua scripts that move a task from one state to another in one atomic step. Each runs
//! on keys of one namespace, all in the `{ns}` hash slot. Times come from Redis' own clock
//! (`TIME`), so workers with skewed clocks agree on when a task is due.
//!
//! States: *queued* (an entry in `{ns}:stream:<queue>`), *running* (that entry, pending with a
//! consumer), *scheduled* (a member of `{ns}:scheduled`: delayed or waiting for a retry), *dead*
//! (an entry of `{ns}:dead`), *done* (gone).
//!
//! | script | from -> to |
//! |---|---|
//! | [`ENQUEUE`] | new -> queued, or scheduled; refused when its uniqueness lock is held |
//! | [`PROMOTE`] | scheduled (due) -> queued |
//! | [`FINISH`] | running -> done (ack, delete, release the lock), for a batch of entries |
//! | [`RETRY`] | running -> scheduled at now + delay |
//! | [`KILL`] | running -> dead (release the lock) |
//! | [`RENEW`] | running -> running, idle time reset (the lease), if still held by this consumer |
//! | [`REQUEUE`] | dead -> queued |

use std::sync::LazyLock;

use redis::Script;

/// KEYS: stream, scheduled, lock. ARGV: lock token (`Task::lock_token`), has lock (`1`/`0`), lock ttl ms (`0` = none),
/// schedule kind (`` / `at` / `in`), schedule ms, scheduled member, then the entry's fields.
/// Returns `{status, detail}`: `queued` + entry id, `scheduled` + due ms, `exists` (this very
/// task already holds the lock: enqueued before), `conflict` (another task holds it).
pub static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[2] == '1' then
  local ok
  if ARGV[3] ~= '0' then
    ok = redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[3])
  else
    ok = redis.call('SET', KEYS[3], ARGV[1], 'NX')
  end
  if not ok then
    if redis.call('GET', KEYS[3]) == ARGV[1] then return {'exists', ''} end
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

/// KEYS: scheduled. ARGV: stream key prefix, batch size.
/// Moves up to a batch of due members onto their streams. Returns `{moved, wait}`: `wait` is
/// how many ms until the next member is due (-1 when none is left).
pub static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local task = cjson.decode(member)
  redis.call('XADD', ARGV[1] .. task.queue, '*', unpack(task.fields))
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if next[2] then wait = math.max(0, tonumber(next[2]) - now) end
return {#due, wait}
",
    )
});

/// KEYS: stream, then the lock of each finished task that holds one. ARGV: group, the number
/// `n` of entries, their `n` ids, then one lock token per lock key.
/// Acks and deletes the entries (a batch: the worker settles finished tasks together, see
/// `simplebank_worker::ack`); releases each lock its task still holds. Returns the number acked.
pub static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(ARGV[2])
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3, 2 + n))
redis.call('XDEL', KEYS[1], unpack(ARGV, 3, 2 + n))
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1 + n + i] then
    redis.call('DEL', KEYS[i])
  end
end
return acked
",
    )
});

/// KEYS: stream, scheduled. ARGV: group, entry id, delay ms, scheduled member (next attempt).
/// Only if the entry is still pending (not finished elsewhere): ack, delete, schedule.
/// Returns 1 if scheduled, 0 if the entry was no longer pending.
pub static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
return 1
",
    )
});

/// KEYS: stream, dead, lock. ARGV: group, entry id, lock token, has lock, then the dead entry's
/// fields. Only if the entry is still pending: ack, delete, add to the dead letters (with
/// `dead_at` from Redis' clock), release the lock. Returns 1, or 0 if no longer pending.
pub static KILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], '*', 'dead_at', tostring(now), unpack(ARGV, 5))
if ARGV[4] == '1' and redis.call('GET', KEYS[3]) == ARGV[3] then
  redis.call('DEL', KEYS[3])
end
return 1
",
    )
});

/// KEYS: stream. ARGV: group, consumer, entry id.
/// Resets the entry's idle time (XCLAIM JUSTID: the delivery count is not raised), only if it
/// is still pending with this consumer. Returns 1 if renewed, 0 if the lease was lost.
pub static RENEW: LazyLock<Script> = LazyLock::new(|| {
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
pub static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
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
