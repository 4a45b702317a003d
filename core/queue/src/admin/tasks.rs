//! `list_tasks`: one page of a queue's tasks in one state, read where that state lives:
//!
//! | state | read from | order, position |
//! |---|---|---|
//! | pending | the stream, after the group's last delivered id (`XINFO GROUPS`, `XRANGE`) | entry id |
//! | active | the group's pending entries list (`XPENDING`), then each entry (`XRANGE`) | entry id |
//! | scheduled, retry | the set (`ZRANGE ... BYSCORE LIMIT`) | due time, then member bytes |
//! | dead | the dead stream ([`crate::DeadLetters::list_after`]) | entry id |
//!
//! A page costs O(page size), except in a set where many members share one due time: the
//! members of that time already shown are skipped again (O(those members)).

use std::{collections::HashMap, time::Duration};

use redis::streams::{StreamInfoGroupsReply, StreamPendingCountReply, StreamRangeReply};

use super::{
    Admin, AdminError, TaskInfo, TaskState,
    cursor::{Cursor, Position, Tie},
};
use crate::{
    dead::DeadTask,
    fields::{self, Entry},
    keys::{EntryId, GROUP, QueueName},
    task::Envelope,
};

/// One page of tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPage {
    /// The tasks, in order.
    pub tasks: Vec<TaskInfo>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// The trace id of a W3C `traceparent`, read as the worker reads it: none for a value the
/// worker would not continue (its `process` span then starts a trace of its own), so an
/// operator is not sent to a trace that does not exist.
pub(super) fn trace_id(traceparent: Option<&str>) -> Option<String> {
    crate::trace::trace_id(traceparent?)
}

/// What an operator sees of `envelope` in `state`.
pub(super) fn info(envelope: Envelope, state: TaskState) -> TaskInfo {
    let task = envelope.task;
    TaskInfo {
        trace_id: trace_id(task.traceparent.as_deref()),
        payload: (!task.sensitive).then_some(task.payload),
        id: task.id,
        kind: task.kind,
        queue: task.queue,
        state,
        attempt: envelope.attempt,
        max_retry: task.max_retry,
        last_error: envelope.last_error,
        next_run_at_ms: None,
        enqueued_at_ms: Some(task.enqueued_at),
        worker: None,
        idle: None,
        deliveries: None,
        dead_at_ms: None,
    }
}

/// A stream entry that does not decode (written by something else): shown with what it has.
fn undecodable(queue: &QueueName, state: TaskState, entry: &Entry) -> TaskInfo {
    let text = |name: &str| {
        entry
            .get(name)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
    };
    TaskInfo {
        id: text("id").unwrap_or_default(),
        kind: text("type").unwrap_or_default(),
        queue: queue.clone(),
        state,
        attempt: 0,
        max_retry: 0,
        last_error: Some("the entry is not a task this queue can decode".into()),
        next_run_at_ms: None,
        trace_id: None,
        payload: None,
        enqueued_at_ms: None,
        worker: None,
        idle: None,
        deliveries: None,
        dead_at_ms: None,
    }
}

/// What an operator sees of a stream entry of `queue` in `state`.
pub(super) fn entry_info(queue: &QueueName, state: TaskState, entry: &Entry) -> TaskInfo {
    match fields::decode_entry(queue.clone(), entry) {
        Ok(envelope) => info(envelope, state),
        Err(_) => undecodable(queue, state, entry),
    }
}

/// What an operator sees of a scheduled or retry member due at `score`.
pub(super) fn member_info(
    queue: &QueueName,
    state: TaskState,
    member: &str,
    score: i64,
) -> TaskInfo {
    let mut task = match fields::decode_member(queue.clone(), member) {
        Ok(envelope) => info(envelope, state),
        Err(_) => undecodable(queue, state, &Entry::default()),
    };
    task.next_run_at_ms = Some(score);
    task
}

/// What an operator sees of a dead letter. A poison entry shows what its raw fields name; its
/// payload only when those fields do not mark it sensitive.
pub(super) fn dead_info(dead: DeadTask) -> TaskInfo {
    let mut task = match dead.task {
        Some(task) => info(Envelope::first(task), TaskState::Dead),
        None => {
            let raw: HashMap<String, String> = dead
                .raw
                .as_deref()
                .and_then(|raw| serde_json::from_str(raw).ok())
                .unwrap_or_default();
            let sensitive = raw.contains_key("sensitive") || dead.raw.is_none();
            TaskInfo {
                id: raw.get("id").cloned().unwrap_or_default(),
                kind: raw.get("type").cloned().unwrap_or_default(),
                queue: dead.queue.clone(),
                state: TaskState::Dead,
                attempt: 0,
                max_retry: 0,
                last_error: None,
                next_run_at_ms: None,
                trace_id: trace_id(raw.get("traceparent").map(String::as_str)),
                // A raw map that did not parse has nothing to show: empty, never the raw text.
                payload: if sensitive {
                    None
                } else {
                    raw.get("payload").cloned()
                },
                enqueued_at_ms: None,
                worker: None,
                idle: None,
                deliveries: None,
                dead_at_ms: None,
            }
        }
    };
    task.attempt = dead.attempts;
    task.last_error = Some(dead.error);
    task.dead_at_ms = dead.dead_at;
    task
}

/// The start of `member` up to and including its task id: the tie of a [`Position::Scored`].
/// Members list the fields in order, `id` first, so this ends before the payload.
pub(super) fn tie(member: &str, id: &str) -> Option<String> {
    let id = serde_json::to_string(id).ok()?;
    let needle = format!("\"fields\":[\"id\",{id}");
    let at = member.find(&needle)?;
    member.get(..at + needle.len()).map(str::to_owned)
}

pub(super) async fn list(
    admin: &Admin,
    queue: &QueueName,
    state: TaskState,
    page_size: usize,
    from: Option<Cursor>,
) -> Result<TaskPage, AdminError> {
    let position = from.map(|cursor| cursor.position);
    let (tasks, last) = match state {
        TaskState::Pending => pending(admin, queue, page_size, position).await?,
        TaskState::Active => active(admin, queue, page_size, position).await?,
        TaskState::Scheduled | TaskState::Retry => {
            scored(admin, queue, state, page_size, position).await?
        }
        TaskState::Dead => dead(admin, queue, page_size, position).await?,
    };
    Ok(TaskPage {
        tasks,
        next_page_token: last.map(|position| Cursor::token(queue, state, &position)),
    })
}

/// The tasks read (at most `page_size`) and, when there are more, where they end.
type Read = (Vec<TaskInfo>, Option<Position>);

/// Keeps `page_size` of `items` (read one more to learn whether a next page exists), and the
/// position of the last kept.
fn page<T>(
    mut items: Vec<T>,
    page_size: usize,
    position: impl Fn(&T) -> Position,
) -> (Vec<T>, Option<Position>) {
    if items.len() <= page_size {
        return (items, None);
    }
    items.truncate(page_size);
    let last = items.last().map(position);
    (items, last)
}

fn after(position: Option<&Position>) -> Option<EntryId> {
    match position {
        Some(Position::Entry(id)) => Some(*id),
        _ => None,
    }
}

/// Entries of the stream after `start` (exclusive; `None`: from the first).
async fn range(
    admin: &Admin,
    key: &str,
    start: Option<EntryId>,
    count: usize,
) -> Result<Vec<Entry>, AdminError> {
    if start == Some(EntryId::MAX) {
        // Nothing comes after it, and Redis refuses `(<max>`.
        return Ok(Vec::new());
    }
    let start = start.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(&mut admin.conn())
        .await?;
    Ok(reply.ids.into_iter().map(Entry::from).collect())
}

/// The group's last delivered entry id on `key`; `None` without a group (nothing delivered).
async fn last_delivered(admin: &Admin, key: &str) -> Result<Option<EntryId>, AdminError> {
    let reply: Result<StreamInfoGroupsReply, _> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(&mut admin.conn())
        .await;
    let groups = match reply {
        Ok(groups) => groups,
        // No such key: nothing was ever enqueued, nothing delivered.
        Err(err) if super::is_absent(&err) => {
            return Ok(None);
        }
        Err(err) => return Err(err.into()),
    };
    Ok(groups
        .groups
        .iter()
        .find(|group| group.name == GROUP)
        .and_then(|group| EntryId::parse(&group.last_delivered_id)))
}

async fn pending(
    admin: &Admin,
    queue: &QueueName,
    page_size: usize,
    position: Option<Position>,
) -> Result<Read, AdminError> {
    let key = admin.keys.stream(queue);
    let start = after(position.as_ref()).max(last_delivered(admin, &key).await?);
    let entries = range(admin, &key, start, page_size + 1).await?;
    let (entries, last) = page(entries, page_size, |entry| {
        Position::Entry(EntryId::parse(&entry.id).unwrap_or(EntryId(0, 0)))
    });
    let tasks = entries
        .iter()
        .map(|entry| entry_info(queue, TaskState::Pending, entry))
        .collect();
    Ok((tasks, last))
}

async fn active(
    admin: &Admin,
    queue: &QueueName,
    page_size: usize,
    position: Option<Position>,
) -> Result<Read, AdminError> {
    let key = admin.keys.stream(queue);
    let start = after(position.as_ref()).map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let reply: Result<StreamPendingCountReply, _> = redis::cmd("XPENDING")
        .arg(&key)
        .arg(GROUP)
        .arg(start)
        .arg("+")
        .arg(page_size + 1)
        .query_async(&mut admin.conn())
        .await;
    let held = match reply {
        Ok(reply) => reply.ids,
        // No stream or no group yet: nothing delivered.
        Err(err) if super::is_absent(&err) => Vec::new(),
        Err(err) => return Err(err.into()),
    };
    let (held, last) = page(held, page_size, |held| {
        Position::Entry(EntryId::parse(&held.id).unwrap_or(EntryId(0, 0)))
    });
    let mut pipe = redis::pipe();
    for held in &held {
        pipe.cmd("XRANGE").arg(&key).arg(&held.id).arg(&held.id);
    }
    let entries: Vec<StreamRangeReply> = if held.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(&mut admin.conn()).await?
    };
    let tasks = held
        .iter()
        .zip(entries)
        .filter_map(|(held, reply)| {
            // An entry settled between the two reads is not active any more.
            let entry = Entry::from(reply.ids.into_iter().next()?);
            let mut task = entry_info(queue, TaskState::Active, &entry);
            task.worker = Some(held.consumer.clone());
            task.idle = Some(Duration::from_millis(
                u64::try_from(held.last_delivered_ms).unwrap_or(0),
            ));
            task.deliveries = u32::try_from(held.times_delivered).ok();
            Some(task)
        })
        .collect();
    Ok((tasks, last))
}

async fn scored(
    admin: &Admin,
    queue: &QueueName,
    state: TaskState,
    page_size: usize,
    position: Option<Position>,
) -> Result<Read, AdminError> {
    let key = match state {
        TaskState::Retry => admin.keys.retry(queue),
        _ => admin.keys.scheduled(queue),
    };
    let (min, skip) = match &position {
        Some(Position::Scored { score, tie }) => (score.to_string(), Some((*score, tie))),
        _ => ("-inf".to_owned(), None),
    };
    let wanted = page_size + 1;
    let mut kept: Vec<(String, i64)> = Vec::with_capacity(wanted);
    let mut offset = 0;
    loop {
        let batch: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(&min)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(offset)
            .arg(wanted)
            .arg("WITHSCORES")
            .query_async(&mut admin.conn())
            .await?;
        let fetched = batch.len();
        offset += fetched;
        for (member, score) in batch {
            #[allow(clippy::cast_possible_truncation)]
            let score = score as i64;
            // Members of the position's due time up to its tie were on an earlier page:
            // Redis orders them by their bytes.
            let shown = skip.is_some_and(|(at, tie)| score == at && tie.shown(&member));
            if !shown && kept.len() < wanted {
                kept.push((member, score));
            }
        }
        if kept.len() >= wanted || fetched < wanted {
            break;
        }
    }
    let tasks: Vec<(TaskInfo, String, i64)> = kept
        .into_iter()
        .map(|(member, score)| (member_info(queue, state, &member, score), member, score))
        .collect();
    let (tasks, last) = page(tasks, page_size, |(task, member, score)| Position::Scored {
        score: *score,
        // An undecodable member (shown with an empty id) has no task id to end a tie at.
        tie: tie(member, &task.id)
            .filter(|_| !task.id.is_empty())
            .map_or_else(|| Tie::member(member), Tie::Task),
    });
    Ok((tasks.into_iter().map(|(task, _, _)| task).collect(), last))
}

async fn dead(
    admin: &Admin,
    queue: &QueueName,
    page_size: usize,
    position: Option<Position>,
) -> Result<Read, AdminError> {
    let start = after(position.as_ref()).map(|id| id.to_string());
    let letters = admin
        .dead
        .list_after(queue, start.as_deref(), page_size + 1)
        .await?;
    let (letters, last) = page(letters, page_size, |dead| {
        Position::Entry(EntryId::parse(&dead.entry_id).unwrap_or(EntryId(0, 0)))
    });
    Ok((letters.into_iter().map(dead_info).collect(), last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Task, TaskPayload};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Note {
        text: String,
    }

    impl TaskPayload for Note {
        const TYPE: &'static str = "test:note";
    }

    #[test]
    fn trace_ids() {
        assert_eq!(
            trace_id(Some(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            ))
            .as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        for bad in [
            "",
            "00",
            "00-xyz-1-01",
            "00-0af7651916cd43dd8448eb211c80319-b-01",
            // Found by an outside attack: shown, though the worker did not continue them.
            "00-ABCDEF0123456789ABCDEF0123456789-00F067AA0BA902B7-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-GARBAGE",
        ] {
            assert_eq!(trace_id(Some(bad)), None, "{bad}");
        }
    }

    #[test]
    fn a_tie_ends_at_the_task_id_before_the_payload() {
        let task = Task::new(&Note {
            text: "secret-ish".into(),
        })
        .unwrap()
        .with_task_id("a\"b:c")
        .unwrap();
        let member = fields::scheduled_member(&Envelope::first(task));
        let tie = tie(&member, "a\"b:c").expect("the member names its id");
        assert!(member.starts_with(&tie));
        assert!(tie.ends_with(r#""a\"b:c""#), "{tie}");
        assert!(
            !tie.contains("secret-ish") && !tie.contains("payload"),
            "{tie}"
        );
    }
}
