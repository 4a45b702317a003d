//! The dead-letter streams `{ns:q}:dead`, one per queue: tasks that used up their retries, were refused by their
//! handler (skip retry), have no handler, could not be decoded, or kept crashing their worker.
//! Each entry keeps the task's fields (trace context included) plus why and when it died.
//! Operators list them, requeue some or all (attempts start again at 1), or delete some or all.

use std::collections::HashMap;

use redis::{Value, streams::StreamRangeReply};

use crate::{
    connection::Connection,
    fields,
    keys::{Keys, QueueName},
    scripts,
    task::{Envelope, Task},
};

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadTask {
    /// The entry id in `{ns:q}:dead`.
    pub entry_id: String,
    /// The queue the task came from (whose dead stream holds it).
    pub queue: QueueName,
    /// Why it died: the last error with its causes, or the reason it was not run.
    pub error: String,
    /// Attempts made (0 when it was never run).
    pub attempts: u32,
    /// When its first failed attempt ended (ms since the epoch).
    pub first_failed_at: Option<i64>,
    /// When its last failed attempt ended (ms since the epoch).
    pub last_failed_at: Option<i64>,
    /// When it died (ms since the epoch, Redis' clock).
    pub dead_at: Option<i64>,
    /// The task, or `None` for a poison entry that could not be decoded.
    pub task: Option<Task>,
    /// A poison entry's original fields, as JSON.
    pub raw: Option<String>,
}

/// The fields of the dead entry of `envelope`, which failed with `error` at `now_ms`.
pub(crate) fn dead_fields(
    envelope: &Envelope,
    error: &str,
    attempts: u32,
    now_ms: i64,
) -> Vec<(&'static str, String)> {
    let mut entry = fields::encode(envelope);
    entry.extend([
        ("queue", envelope.task.queue.to_string()),
        ("error", error.to_owned()),
        ("attempts", attempts.to_string()),
        ("last_failed_at", now_ms.to_string()),
    ]);
    entry
}

/// The fields of the dead entry of an undecodable stream entry.
pub(crate) fn poison_fields(
    queue: &QueueName,
    raw: &[(String, Value)],
    reason: &str,
) -> Vec<(&'static str, String)> {
    // The first of a name, as the decoder takes it: the value the reason speaks of.
    let mut fields = serde_json::Map::new();
    for (name, value) in raw {
        fields.entry(name.clone()).or_insert_with(|| {
            serde_json::Value::String(match value {
                Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                other => format!("{other:?}"),
            })
        });
    }
    vec![
        ("queue", queue.to_string()),
        ("error", reason.to_owned()),
        ("attempts", "0".to_owned()),
        ("raw", serde_json::Value::Object(fields).to_string()),
    ]
}

/// Why an operation on the dead letters failed. Each variant names the entry.
#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    /// No dead letter has this entry id.
    #[error("dead letter {0} not found")]
    NotFound(String),
    /// A poison entry: it holds no task to requeue.
    #[error("dead letter {0} cannot be requeued: it is not a decodable task")]
    Poison(String),
    /// A live task holds its uniqueness lock.
    #[error("dead letter {0} cannot be requeued: a live task holds its lock")]
    Conflict(String),
    /// Redis failed or did not answer.
    #[error("the dead letters cannot be read or changed")]
    Redis(#[from] redis::RedisError),
}

/// Operations on the dead letters of the queues of one namespace. Each operation is on one
/// queue's dead stream, `{ns:q}:dead`; the ones that change it are idempotent (a second run
/// affects nothing) and return how many letters they affected.
#[derive(Clone)]
pub struct DeadLetters {
    conn: Connection,
    keys: Keys,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// How many dead letters [`DeadLetters::requeue_all`] reads at a time.
const PAGE: usize = 100;

impl DeadLetters {
    /// Dead letters of the namespace of `keys`, on `conn`.
    pub fn new(conn: impl Into<Connection>, keys: Keys) -> Self {
        Self {
            conn: conn.into(),
            keys,
        }
    }

    /// How many dead letters `queue` has.
    pub async fn count(&self, queue: &QueueName) -> Result<usize, DeadError> {
        Ok(redis::cmd("XLEN")
            .arg(self.keys.dead(queue))
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// Up to `count` dead letters of `queue`, oldest first.
    pub async fn list(&self, queue: &QueueName, count: usize) -> Result<Vec<DeadTask>, DeadError> {
        self.list_after(queue, None, count).await
    }

    /// Up to `count` dead letters of `queue` after entry `after` (from the oldest when
    /// `None`), oldest first: pages that stay stable while letters come and go.
    pub async fn list_after(
        &self,
        queue: &QueueName,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<DeadTask>, DeadError> {
        self.range(queue, after, "+", count).await
    }

    /// Up to `count` dead letters of `queue` after `after`, up to `last` (an id, or `+`).
    async fn range(
        &self,
        queue: &QueueName,
        after: Option<&str>,
        last: &str,
        count: usize,
    ) -> Result<Vec<DeadTask>, DeadError> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.dead(queue))
            .arg(start)
            .arg(last)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| parse(queue, entry.id, &entry.map))
            .collect())
    }

    /// Dead letter `entry_id` of `queue`, if it is there.
    pub async fn get(
        &self,
        queue: &QueueName,
        entry_id: &str,
    ) -> Result<Option<DeadTask>, DeadError> {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.dead(queue))
            .arg(entry_id)
            .arg(entry_id)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .next()
            .map(|entry| parse(queue, entry.id, &entry.map)))
    }

    /// Puts dead letter `entry_id` of `queue` back on its stream as a fresh task (attempt 1),
    /// in one step that also removes the letter: a letter is requeued once however many
    /// callers race. Returns the new entry id; [`DeadError::NotFound`] when it is not (or no
    /// longer) there, [`DeadError::Poison`] or [`DeadError::Conflict`] when it stays.
    pub async fn requeue_one(
        &self,
        queue: &QueueName,
        entry_id: &str,
    ) -> Result<String, DeadError> {
        let dead = self
            .get(queue, entry_id)
            .await?
            .ok_or_else(|| DeadError::NotFound(entry_id.to_owned()))?;
        let task = dead
            .task
            .ok_or_else(|| DeadError::Poison(entry_id.to_owned()))?;
        let envelope = Envelope::first(task);
        match scripts::requeue(&mut self.conn.clone(), &self.keys, entry_id, &envelope).await? {
            scripts::Requeue::Gone => Err(DeadError::NotFound(entry_id.to_owned())),
            scripts::Requeue::Conflict => Err(DeadError::Conflict(entry_id.to_owned())),
            scripts::Requeue::Queued(new_entry_id) => {
                let task = &envelope.task;
                tracing::info!(task_id = %task.id, queue = %task.queue, "requeued dead task");
                Ok(new_entry_id)
            }
        }
    }

    /// Requeues the dead letters `entry_ids` of `queue` (see [`DeadLetters::requeue_one`]);
    /// returns how many were requeued. Ids not there (already requeued or deleted), poison
    /// entries and tasks whose lock a live task holds are skipped: a second run requeues
    /// nothing.
    pub async fn requeue<S: AsRef<str>>(
        &self,
        queue: &QueueName,
        entry_ids: &[S],
    ) -> Result<usize, DeadError> {
        let mut requeued = 0;
        for entry_id in entry_ids {
            match self.requeue_one(queue, entry_id.as_ref()).await {
                Ok(_) => requeued += 1,
                Err(DeadError::Poison(_) | DeadError::Conflict(_) | DeadError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(requeued)
    }

    /// Requeues every decodable dead letter of `queue` there when it starts; returns how
    /// many. Poison entries and tasks whose lock is held stay. Letters that arrive meanwhile
    /// (a requeued task that dies again) are left for the next run, so it always ends. Two
    /// concurrent runs requeue each letter once between them.
    pub async fn requeue_all(&self, queue: &QueueName) -> Result<usize, DeadError> {
        let newest: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.keys.dead(queue))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await?;
        let Some(last) = newest.ids.into_iter().next().map(|entry| entry.id) else {
            return Ok(0);
        };
        let mut requeued = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self.range(queue, after.as_deref(), &last, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.entry_id.clone());
            let ids: Vec<&str> = page.iter().map(|dead| dead.entry_id.as_str()).collect();
            requeued += self.requeue(queue, &ids).await?;
        }
        Ok(requeued)
    }

    /// Deletes the dead letters `entry_ids` of `queue`; returns how many were there.
    pub async fn delete<S: AsRef<str>>(
        &self,
        queue: &QueueName,
        entry_ids: &[S],
    ) -> Result<usize, DeadError> {
        if entry_ids.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(self.keys.dead(queue));
        for entry_id in entry_ids {
            cmd.arg(entry_id.as_ref());
        }
        Ok(cmd.query_async(&mut self.conn.clone()).await?)
    }

    /// Deletes every dead letter of `queue`; returns how many there were.
    pub async fn delete_all(&self, queue: &QueueName) -> Result<usize, DeadError> {
        let key = self.keys.dead(queue);
        let (count, _deleted): (usize, usize) = redis::pipe()
            .atomic()
            .cmd("XLEN")
            .arg(&key)
            .cmd("DEL")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(count)
    }
}

fn text(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    map.get(name)
        .and_then(|v| redis::from_redis_value_ref(v).ok())
}

/// A letter of the dead stream of `queue`. Its task belongs to `queue` whatever its `queue`
/// field says: requeueing it must stay in that queue's slot.
fn parse(queue: &QueueName, entry_id: String, map: &HashMap<String, Value>) -> DeadTask {
    let number = |name| text(map, name).and_then(|v| v.parse().ok());
    let task = if map.contains_key("raw") {
        None
    } else {
        fields::decode(queue.clone(), map).ok().map(|e| e.task)
    };
    DeadTask {
        entry_id,
        error: text(map, "error").unwrap_or_default(),
        attempts: number("attempts")
            .and_then(|n: i64| u32::try_from(n).ok())
            .unwrap_or(0),
        first_failed_at: number("first_failed_at"),
        last_failed_at: number("last_failed_at"),
        dead_at: number("dead_at"),
        raw: text(map, "raw"),
        queue: queue.clone(),
        task,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poison entry's `raw` shows the first of a name, the one the decoder judged: the
    /// value its reason speaks of.
    #[test]
    fn a_poison_letter_shows_the_first_of_a_name() {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let raw = [
            ("attempt".to_owned(), bulk("0")),
            ("id".to_owned(), bulk("t1")),
            ("attempt".to_owned(), bulk("1")),
        ];
        let queue = QueueName::parse("default").unwrap();
        let fields = poison_fields(&queue, &raw, "field \"attempt\" is not valid");
        let (_, shown) = fields.iter().find(|(name, _)| *name == "raw").unwrap();
        assert_eq!(shown, r#"{"attempt":"0","id":"t1"}"#);
    }
}
