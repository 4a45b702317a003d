//! The dead-letter stream `{ns}:dead`: tasks that used up their retries, were refused by their
//! handler (skip retry), have no handler, could not be decoded, or kept crashing their worker.
//! Each entry keeps the task's fields (trace context included) plus why and when it died.
//! Operators list them, requeue one or all (attempts start again at 1), or delete one.

use std::collections::HashMap;

use redis::{Value, aio::ConnectionManager, streams::StreamRangeReply};

use crate::{
    fields,
    keys::{Keys, QueueName},
    scripts,
    task::{Envelope, Task},
};

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadTask {
    /// The entry id in `{ns}:dead`.
    pub entry_id: String,
    /// The queue the task came from.
    pub queue: Option<QueueName>,
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
    let raw: serde_json::Map<String, serde_json::Value> = raw
        .iter()
        .map(|(name, value)| {
            let text = match value {
                Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                other => format!("{other:?}"),
            };
            (name.clone(), serde_json::Value::String(text))
        })
        .collect();
    vec![
        ("queue", queue.to_string()),
        ("error", reason.to_owned()),
        ("attempts", "0".to_owned()),
        ("raw", serde_json::Value::Object(raw).to_string()),
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

/// Operations on the dead letters of one namespace.
#[derive(Clone)]
pub struct DeadLetters {
    conn: ConnectionManager,
    keys: Keys,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// Dead letters of the namespace of `keys`, on `conn`.
    pub fn new(conn: ConnectionManager, keys: Keys) -> Self {
        Self { conn, keys }
    }

    /// How many dead letters there are.
    pub async fn count(&self) -> Result<usize, DeadError> {
        Ok(redis::cmd("XLEN")
            .arg(self.keys.dead())
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// Up to `count` dead letters, oldest first.
    pub async fn list(&self, count: usize) -> Result<Vec<DeadTask>, DeadError> {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.dead())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| parse(entry.id, &entry.map))
            .collect())
    }

    /// Puts dead letter `entry_id` back on its queue as a fresh task (attempt 1).
    pub async fn requeue(&self, entry_id: &str) -> Result<String, DeadError> {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.dead())
            .arg(entry_id)
            .arg(entry_id)
            .query_async(&mut self.conn.clone())
            .await?;
        let entry = reply
            .ids
            .into_iter()
            .next()
            .ok_or_else(|| DeadError::NotFound(entry_id.to_owned()))?;
        let dead = parse(entry.id, &entry.map);
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

    /// Requeues every decodable dead letter; returns how many. Poison entries and tasks whose
    /// lock is held stay.
    pub async fn requeue_all(&self) -> Result<usize, DeadError> {
        let mut requeued = 0;
        let mut after = "-".to_owned();
        loop {
            let reply: StreamRangeReply = redis::cmd("XRANGE")
                .arg(self.keys.dead())
                .arg(&after)
                .arg("+")
                .arg("COUNT")
                .arg(100)
                .query_async(&mut self.conn.clone())
                .await?;
            let Some(last) = reply.ids.last() else { break };
            after = format!("({}", last.id);
            for entry in &reply.ids {
                match self.requeue(&entry.id).await {
                    Ok(_) => requeued += 1,
                    Err(DeadError::Poison(_) | DeadError::Conflict(_) | DeadError::NotFound(_)) => {
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(requeued)
    }

    /// Deletes dead letter `entry_id`; false if it was not there.
    pub async fn delete(&self, entry_id: &str) -> Result<bool, DeadError> {
        let deleted: usize = redis::cmd("XDEL")
            .arg(self.keys.dead())
            .arg(entry_id)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(deleted == 1)
    }
}

fn text(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    map.get(name)
        .and_then(|v| redis::from_redis_value_ref(v).ok())
}

fn parse(entry_id: String, map: &HashMap<String, Value>) -> DeadTask {
    let queue = text(map, "queue").and_then(|q| QueueName::parse(&q).ok());
    let number = |name| text(map, name).and_then(|v| v.parse().ok());
    let task = match (&queue, map.contains_key("raw")) {
        (Some(queue), false) => fields::decode(queue.clone(), map).ok().map(|e| e.task),
        _ => None,
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
        queue,
        task,
    }
}
