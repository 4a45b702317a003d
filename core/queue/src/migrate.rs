//! Moving what a Redis holds in the old layout (one hash tag per namespace: `{ns}:stream:<q>`,
//! `{ns}:scheduled`, `{ns}:dead`, `{ns}:unique:<suffix>`) into the per-queue layout of
//! [`Keys`]. `simplebank-worker migrate-redis` runs it.
//!
//! - Old stream entries, pending or not, are added to their queue's stream (they are delivered
//!   again: at least once) and deleted from the old stream; an emptied old stream is deleted
//!   with its consumer group.
//! - Old scheduled members go to their queue's `scheduled` set, or `retry` when their attempt
//!   is above 1, with their due time.
//! - Old dead letters go to their queue's dead stream (under their old entry id when it still
//!   sorts last there, so the retention keeps counting from their death).
//! - The lock a moved task holds moves with it (value and TTL); a content lock's suffix loses
//!   its queue (`content:<q>:<type>:<hash>` -> `content:<type>:<hash>`), which is now in the
//!   key's hash tag. Old locks no moved task holds are deleted: with the old workers stopped,
//!   nothing releases them.
//!
//! Each item moves in one script that first checks it is still there, so a second run, or a
//! run after an interrupted one, moves nothing twice. The scripts take a key of the old `{ns}`
//! slot and one of a queue's: single node only (or a cluster while all of a namespace's slots
//! are on one node), with the old workers stopped. What cannot be decoded (an entry without a
//! valid queue, a scheduled member that is not a task) stays where it is and is counted as
//! skipped.

use std::{collections::HashMap, sync::LazyLock};

use redis::{RedisResult, Script, Value, aio::ConnectionLike, streams::StreamRangeReply};

use crate::{
    fields,
    keys::{GROUP, Keys, QueueName},
    task::Envelope,
};

/// How many items are read at a time.
const PAGE: usize = 100;

/// What [`run`] moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Stream entries moved to their queue's stream (to be delivered again).
    pub stream_entries: u64,
    /// Delayed tasks moved to their queue's scheduled set.
    pub scheduled: u64,
    /// Tasks waiting for a retry moved to their queue's retry set.
    pub retry: u64,
    /// Dead letters moved to their queue's dead stream.
    pub dead: u64,
    /// Locks moved with their tasks.
    pub locks_moved: u64,
    /// Old locks no task holds any more, deleted.
    pub locks_dropped: u64,
    /// Items left where they were: not decodable, or of no valid queue.
    pub skipped: u64,
}

/// The moves of a lock, shared by the scripts below. ARGV[has] = `1` if the task holds a lock,
/// ARGV[has + 1] its token. KEYS[old], KEYS[new]. Returns 1 if moved.
const MOVE_LOCK_LUA: &str = r"
local function move_lock(old, new, has, token)
  if has ~= '1' or redis.call('GET', old) ~= token then return 0 end
  local ttl = redis.call('PTTL', old)
  local ok
  if ttl > 0 then
    ok = redis.call('SET', new, token, 'NX', 'PX', ttl)
  else
    ok = redis.call('SET', new, token, 'NX')
  end
  redis.call('DEL', old)
  if ok then return 1 end
  return 0
end
";

/// KEYS: old stream, new stream, old lock, new lock. ARGV: entry id, has lock, lock token,
/// then the new entry's fields. Returns `{moved, lock moved}`.
static MOVE_ENTRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{MOVE_LOCK_LUA}
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return {{0, 0}} end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('XDEL', KEYS[1], ARGV[1])
return {{1, move_lock(KEYS[3], KEYS[4], ARGV[2], ARGV[3])}}
"
    ))
});

/// KEYS: old scheduled set, new set, old lock, new lock. ARGV: old member, score, new member,
/// has lock, lock token. Returns `{moved, lock moved}`.
static MOVE_MEMBER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{MOVE_LOCK_LUA}
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {{0, 0}} end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return {{1, move_lock(KEYS[3], KEYS[4], ARGV[4], ARGV[5])}}
"
    ))
});

/// KEYS: old dead stream, new dead stream. ARGV: entry id, then its fields. Keeps the id when
/// it still sorts last in the new stream. Returns 1 if moved.
static MOVE_DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return 0 end
local added = redis.pcall('XADD', KEYS[2], ARGV[1], unpack(ARGV, 2))
if type(added) == 'table' and added.err then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
end
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
",
    )
});

/// KEYS: a stream. Deletes it (and its groups) if it is empty. Returns 1 if deleted.
static DELETE_IF_EMPTY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('XLEN', KEYS[1]) == 0 then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// The old-layout keys of `keys`' namespace that a worker of `queues` would miss:
/// `{ns}:scheduled`, `{ns}:dead` and `{ns}:stream:<q>` of each of `queues`. No SCAN: cheap
/// enough for every worker start.
pub async fn old_layout_keys<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queues: &[QueueName],
) -> RedisResult<Vec<String>> {
    let candidates: Vec<String> = [keys.old_scheduled(), keys.old_dead()]
        .into_iter()
        .chain(queues.iter().map(|q| keys.old_stream(q)))
        .collect();
    let mut pipe = redis::pipe();
    for key in &candidates {
        pipe.cmd("EXISTS").arg(key);
    }
    let found: Vec<bool> = pipe.query_async(conn).await?;
    Ok(candidates
        .into_iter()
        .zip(found)
        .filter_map(|(key, exists)| exists.then_some(key))
        .collect())
}

/// Moves everything of the old layout in `keys`' namespace into the per-queue layout (see the
/// module docs). Run it on a single node, with the old workers stopped; running it again moves
/// nothing twice.
pub async fn run<C: ConnectionLike + Send>(conn: &mut C, keys: &Keys) -> RedisResult<Migrated> {
    let mut migrated = Migrated::default();
    let (streams_pattern, locks_pattern) = keys.old_patterns();
    for stream in scan(conn, &streams_pattern, Some("stream")).await? {
        match keys.old_stream_queue(&stream) {
            Some(queue) => move_stream(conn, keys, &stream, &queue, &mut migrated).await?,
            None => {
                tracing::warn!(key = %stream, "not a queue's stream: left as it is");
                migrated.skipped += 1;
            }
        }
    }
    move_scheduled(conn, keys, &mut migrated).await?;
    move_dead(conn, keys, &mut migrated).await?;
    let _: i64 = DELETE_IF_EMPTY
        .key(keys.old_dead())
        .invoke_async(conn)
        .await?;
    for lock in scan(conn, &locks_pattern, None).await? {
        let deleted: u64 = redis::cmd("DEL").arg(&lock).query_async(conn).await?;
        migrated.locks_dropped += deleted;
    }
    tracing::info!(?migrated, "moved the old layout's keys");
    Ok(migrated)
}

/// Every key matching `pattern` (of `kind`, when given).
async fn scan<C: ConnectionLike + Send>(
    conn: &mut C,
    pattern: &str,
    kind: Option<&str>,
) -> RedisResult<Vec<String>> {
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        if let Some(kind) = kind {
            cmd.arg("TYPE").arg(kind);
        }
        let (next, keys): (u64, Vec<String>) = cmd.query_async(conn).await?;
        found.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// `envelope` with its content lock's suffix in the new form; returns the old suffix.
fn renew_lock_suffix(envelope: &mut Envelope) -> Option<String> {
    let old = envelope.task.unique.clone()?;
    let prefix = format!("content:{}:", envelope.task.queue);
    if let Some(rest) = old.strip_prefix(&prefix) {
        envelope.task.unique = Some(format!("content:{rest}"));
    }
    Some(old)
}

/// The lock keys (old, new) and token of `envelope`, whose old suffix was `old_suffix`; the
/// placeholders of both slots when it holds none.
fn lock_of(keys: &Keys, envelope: &Envelope, old_suffix: Option<&str>) -> (String, String) {
    let queue = &envelope.task.queue;
    match (old_suffix, envelope.task.unique.as_deref()) {
        (Some(old), Some(new)) => (keys.old_unique(old), keys.unique(queue, Some(new))),
        _ => (keys.namespaced("unique"), keys.unique(queue, None)),
    }
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.clone().into_bytes()),
        _ => None,
    }
}

async fn move_stream<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    stream: &str,
    queue: &QueueName,
    migrated: &mut Migrated,
) -> RedisResult<()> {
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.stream(queue))
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(err) if err.code() != Some("BUSYGROUP") => return Err(err),
        _ => {}
    }
    let mut after = "-".to_owned();
    loop {
        let page: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&after)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let Some(last) = page.ids.last() else { break };
        after = format!("({}", last.id);
        for entry in &page.ids {
            let mut invocation = MOVE_ENTRY.key(stream);
            invocation.key(keys.stream(queue));
            match fields::decode(queue.clone(), &entry.map) {
                Ok(mut envelope) => {
                    let old_suffix = renew_lock_suffix(&mut envelope);
                    let (old_lock, new_lock) = lock_of(keys, &envelope, old_suffix.as_deref());
                    invocation
                        .key(old_lock)
                        .key(new_lock)
                        .arg(&entry.id)
                        .arg(if old_suffix.is_some() { "1" } else { "0" })
                        .arg(envelope.task.lock_token())
                        .arg(fields::encode(&envelope));
                }
                // Not a task: moved as it is; a worker dead-letters it with the reason.
                Err(_) if entry.map.values().any(|v| bytes(v).is_some()) => {
                    invocation
                        .key(keys.namespaced("unique"))
                        .key(keys.unique(queue, None))
                        .arg(&entry.id)
                        .arg("0")
                        .arg("");
                    for (name, value) in &entry.map {
                        if let Some(value) = bytes(value) {
                            invocation.arg(name).arg(value);
                        }
                    }
                }
                Err(_) => {
                    tracing::warn!(key = %stream, entry_id = %entry.id, "an entry with no fields: left as it is");
                    migrated.skipped += 1;
                    continue;
                }
            }
            let (moved, lock): (u64, u64) = invocation.invoke_async(conn).await?;
            migrated.stream_entries += moved;
            migrated.locks_moved += lock;
        }
    }
    let _: i64 = DELETE_IF_EMPTY.key(stream).invoke_async(conn).await?;
    Ok(())
}

/// One old scheduled member, decoded.
fn scheduled_task(member: &str) -> Option<Envelope> {
    #[derive(serde::Deserialize)]
    struct Member {
        queue: String,
        fields: Vec<String>,
    }
    let member: Member = serde_json::from_str(member).ok()?;
    let queue = QueueName::parse(&member.queue).ok()?;
    let map: HashMap<String, Value> = member
        .fields
        .chunks_exact(2)
        .map(|pair| {
            (
                pair[0].clone(),
                Value::BulkString(pair[1].clone().into_bytes()),
            )
        })
        .collect();
    fields::decode(queue, &map).ok()
}

async fn move_scheduled<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    migrated: &mut Migrated,
) -> RedisResult<()> {
    let old = keys.old_scheduled();
    // Moved members leave the set, skipped ones stay in front: read past those.
    let mut skipped = 0usize;
    loop {
        let page: Vec<(String, String)> = redis::cmd("ZRANGE")
            .arg(&old)
            .arg(skipped)
            .arg(skipped + PAGE - 1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        if page.is_empty() {
            return Ok(());
        }
        for (member, score) in page {
            let Some(mut envelope) = scheduled_task(&member) else {
                tracing::warn!(key = %old, "a scheduled member that is not a task: left as it is");
                skipped += 1;
                migrated.skipped += 1;
                continue;
            };
            let queue = envelope.task.queue.clone();
            let old_suffix = renew_lock_suffix(&mut envelope);
            let (old_lock, new_lock) = lock_of(keys, &envelope, old_suffix.as_deref());
            let is_retry = envelope.attempt > 1;
            let target = if is_retry {
                keys.retry(&queue)
            } else {
                keys.scheduled(&queue)
            };
            let (moved, lock): (u64, u64) = MOVE_MEMBER
                .key(&old)
                .key(target)
                .key(old_lock)
                .key(new_lock)
                .arg(&member)
                .arg(&score)
                .arg(fields::scheduled_member(&envelope))
                .arg(if old_suffix.is_some() { "1" } else { "0" })
                .arg(envelope.task.lock_token())
                .invoke_async(conn)
                .await?;
            if is_retry {
                migrated.retry += moved;
            } else {
                migrated.scheduled += moved;
            }
            migrated.locks_moved += lock;
        }
    }
}

async fn move_dead<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    migrated: &mut Migrated,
) -> RedisResult<()> {
    let old = keys.old_dead();
    let mut after = "-".to_owned();
    loop {
        let page: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&old)
            .arg(&after)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let Some(last) = page.ids.last() else {
            return Ok(());
        };
        after = format!("({}", last.id);
        for entry in &page.ids {
            let queue = entry
                .map
                .get("queue")
                .and_then(bytes)
                .and_then(|q| QueueName::parse(&String::from_utf8_lossy(&q)).ok());
            let Some(queue) = queue else {
                tracing::warn!(key = %old, entry_id = %entry.id, "a dead letter of no valid queue: left as it is");
                migrated.skipped += 1;
                continue;
            };
            let mut invocation = MOVE_DEAD.key(&old);
            invocation.key(keys.dead(&queue)).arg(&entry.id);
            let content_prefix = format!("content:{queue}:");
            for (name, value) in &entry.map {
                let Some(mut value) = bytes(value) else {
                    continue;
                };
                // The lock a requeue takes: its suffix in the new form.
                if name == "unique"
                    && let Some(rest) = value.strip_prefix(content_prefix.as_bytes())
                {
                    value = [b"content:".as_slice(), rest].concat();
                }
                invocation.arg(name).arg(value);
            }
            let moved: u64 = invocation.invoke_async(conn).await?;
            migrated.dead += moved;
        }
    }
}
