//! Finding a task by its id. Nothing in Redis is indexed by task id, so a lookup scans one
//! queue at a time, in this order:
//!
//! - the scheduled and retry sets, with `ZSCAN ... MATCH` on the member's `"id"` field: Redis
//!   walks the whole set but sends back only matches;
//! - the stream, in pages of [`SCAN_PAGE`] entries (`XRANGE`), then `XPENDING` for the one
//!   found, to tell active from pending;
//! - the dead letters, in pages (bounded by `DEAD_LETTER_MAX`).
//!
//! So `GetTask` and `CancelScheduledTask` cost O(tasks of the queues searched): fine for an
//! operator's call, not for a hot path. Naming the queue narrows the search to it; the whole
//! operation is bounded by [`super::DEADLINE`].

use std::sync::LazyLock;

use redis::{Script, streams::StreamPendingCountReply};

use super::{
    Admin, AdminError, TaskInfo, TaskState,
    tasks::{dead_info, entry_info, member_info},
};
use crate::{
    fields::{self, Entry},
    keys::{EntryId, GROUP, QueueName},
};

/// Entries read per round trip while scanning a stream.
const SCAN_PAGE: usize = 500;

/// `ZSCAN MATCH` pattern of the members whose task id is `id`: Redis' glob, with the glob's
/// special characters of the JSON-encoded id escaped.
fn member_pattern(id: &str) -> String {
    let json = serde_json::to_string(id).unwrap_or_default();
    let mut pattern = String::from("*\"fields\":\\[\"id\",");
    for c in json.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(",*");
    pattern
}

/// The members (with their due times) of the set `key` that hold task `id`.
async fn members(admin: &Admin, key: &str, id: &str) -> Result<Vec<(String, i64)>, AdminError> {
    let pattern = member_pattern(id);
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<(String, f64)>) = redis::cmd("ZSCAN")
            .arg(key)
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_PAGE)
            .query_async(&mut admin.conn())
            .await?;
        for (member, score) in batch {
            // The pattern is a filter; the decoded id decides.
            let holds = fields::decode_member_id(&member).is_some_and(|found| found == id);
            if holds {
                #[allow(clippy::cast_possible_truncation)]
                found.push((member, score as i64));
            }
        }
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// The first entry of the stream `key` whose `id` field is `id`.
async fn stream_entry(admin: &Admin, key: &str, id: &str) -> Result<Option<Entry>, AdminError> {
    let mut start = "-".to_owned();
    loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(SCAN_PAGE)
            .query_async(&mut admin.conn())
            .await?;
        let Some(last) = reply.ids.last().map(|entry| entry.id.clone()) else {
            return Ok(None);
        };
        let count = reply.ids.len();
        for entry in reply.ids {
            let entry = Entry::from(entry);
            let holds = entry
                .get("id")
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .is_some_and(|found| found == id);
            if holds {
                return Ok(Some(entry));
            }
        }
        if count < SCAN_PAGE {
            return Ok(None);
        }
        start = format!("({last}");
    }
}

/// Task `id` in `queue`, wherever it is there.
pub(super) async fn find(
    admin: &Admin,
    queue: &QueueName,
    id: &str,
) -> Result<Option<TaskInfo>, AdminError> {
    let keys = &admin.keys;
    let stream = keys.stream(queue);
    if let Some(entry) = stream_entry(admin, &stream, id).await? {
        let held: Result<StreamPendingCountReply, _> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .arg(&entry.id)
            .arg(&entry.id)
            .arg(1)
            .query_async(&mut admin.conn())
            .await;
        let held = held.ok().and_then(|reply| reply.ids.into_iter().next());
        return Ok(Some(match held {
            Some(held) => {
                let mut task = entry_info(queue, TaskState::Active, &entry);
                task.worker = Some(held.consumer);
                task.idle = Some(std::time::Duration::from_millis(
                    u64::try_from(held.last_delivered_ms).unwrap_or(0),
                ));
                task.deliveries = u32::try_from(held.times_delivered).ok();
                task
            }
            None => entry_info(queue, TaskState::Pending, &entry),
        }));
    }
    for (state, key) in [
        (TaskState::Scheduled, keys.scheduled(queue)),
        (TaskState::Retry, keys.retry(queue)),
    ] {
        if let Some((member, score)) = members(admin, &key, id).await?.into_iter().next() {
            return Ok(Some(member_info(queue, state, &member, score)));
        }
    }
    let mut found = None;
    scan_dead(admin, queue, |_, task| {
        if task.id == id {
            found = Some(task);
        }
        found.is_none()
    })
    .await?;
    Ok(found)
}

/// Visits `queue`'s dead letters in order, page by page, as (entry id, task), while `visit`
/// returns true.
async fn scan_dead(
    admin: &Admin,
    queue: &QueueName,
    mut visit: impl FnMut(String, TaskInfo) -> bool,
) -> Result<(), AdminError> {
    let mut after: Option<String> = None;
    loop {
        let page = admin
            .dead
            .list_after(queue, after.as_deref(), SCAN_PAGE)
            .await?;
        let Some(last) = page.last().map(|dead| dead.entry_id.clone()) else {
            return Ok(());
        };
        let count = page.len();
        for dead in page {
            let entry_id = dead.entry_id.clone();
            if !visit(entry_id, dead_info(dead)) {
                return Ok(());
            }
        }
        if count < SCAN_PAGE || EntryId::parse(&last).is_none() {
            return Ok(());
        }
        after = Some(last);
    }
}

/// The entry ids of `queue`'s dead letters that hold one of `ids`.
pub(super) async fn dead_entries(
    admin: &Admin,
    queue: &QueueName,
    ids: &[String],
) -> Result<Vec<String>, AdminError> {
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut entries = Vec::new();
    scan_dead(admin, queue, |entry_id, task| {
        if wanted.contains(task.id.as_str()) {
            entries.push(entry_id);
        }
        true
    })
    .await?;
    Ok(entries)
}

/// KEYS: the set, the task's lock (or the queue's placeholder). ARGV: member, lock token.
/// Removes the member and, if it was there, the lock when this task still holds it.
static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 and ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return removed
",
    )
});

/// Removes task `id` from `queue`'s scheduled and retry sets; how many members went.
pub(super) async fn cancel(admin: &Admin, queue: &QueueName, id: &str) -> Result<u64, AdminError> {
    let keys = &admin.keys;
    let mut cancelled = 0;
    for key in [keys.scheduled(queue), keys.retry(queue)] {
        for (member, _) in members(admin, &key, id).await? {
            let Ok(envelope) = fields::decode_member(queue.clone(), &member) else {
                continue;
            };
            let task = envelope.task;
            let lock = keys.unique(queue, task.unique.as_deref());
            let token = if task.unique.is_some() {
                task.lock_token()
            } else {
                String::new()
            };
            let removed: u64 = CANCEL
                .key(&key)
                .key(lock)
                .arg(&member)
                .arg(token)
                .invoke_async(&mut admin.conn())
                .await?;
            if removed == 1 {
                tracing::info!(task_id = %task.id, %queue, "cancelled scheduled task");
            }
            cancelled += removed;
        }
    }
    Ok(cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_the_glob() {
        assert_eq!(member_pattern("abc"), r#"*"fields":\["id","abc",*"#);
        assert_eq!(
            member_pattern("a*b?[c]"),
            r#"*"fields":\["id","a\*b\?\[c\]",*"#
        );
        assert_eq!(
            member_pattern("a\"b\\c"),
            r#"*"fields":\["id","a\\"b\\\\c",*"#
        );
    }
}
