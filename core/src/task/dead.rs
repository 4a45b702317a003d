//! The dead-letter stream `{ns}:dead`: tasks that used up their retries, were refused by their
//! handler (skip retry), have no handler, could not be decoded, or kept crashing their worker.
//! Each entry keeps the task's fields (trace context included) plus why and when it died.
//! Operators list them, requeue one or all (attempts start again at 1), or delete one.

use std::collections::HashMap;

use redis::{Value, aio::ConnectionManager, streams::StreamRangeReply};

use super::{Keys, QueueName, Task, fields, scripts};

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadTask {
    /// The entry id in `{ns}:dead`.
    pub entry_id: String,
    /// The queue the task came from.
    pub queue: Option<QueueName>,
    /// Why it died: the last error, or the reason it was not run.
    pub error: String,
    /// Attempts made (0 when it was never run).
    pub attempts: u32,
    pub first_failed_at: Option<i64>,
    pub last_failed_at: Option<i64>,
    /// When it died (ms since the epoch, Redis' clock).
    pub dead_at: Option<i64>,
    /// The task, or `None` for a poison entry that could not be decoded.
    pub task: Option<Task>,
    /// A poison entry's original fields, as JSON.
    pub raw: Option<String>,
}

/// The fields of the dead entry of `task`, which failed with `error` at `now_ms`.
pub fn dead_fields(
    task: &Task,
    error: &str,
    attempts: u32,
    now_ms: i64,
) -> Vec<(&'static str, String)> {
    let mut entry = fields::encode(task);
    entry.extend([
        ("queue", task.queue.to_string()),
        ("error", error.to_owned()),
        ("attempts", attempts.to_string()),
        ("last_failed_at", now_ms.to_string()),
    ]);
    entry
}

/// The fields of the dead entry of an undecodable stream entry.
pub fn poison_fields(
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

#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    #[error("dead letter {0} not found")]
    NotFound(String),
    #[error("dead letter {0} cannot be requeued: it is not a decodable task")]
    Poison(String),
    #[error("dead letter {0} cannot be requeued: a live task holds its lock")]
    Conflict(String),
    #[error(transparent)]
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
    pub fn new(conn: ConnectionManager, keys: Keys) -> Self {
        Self { conn, keys }
    }

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
        let mut task = dead
            .task
            .ok_or_else(|| DeadError::Poison(entry_id.to_owned()))?;
        task.attempt = 1;
        task.first_failed_at = None;
        task.last_error = None;
        let outcome: String = scripts::REQUEUE
            .key(self.keys.dead())
            .key(self.keys.stream(&task.queue))
            .key(self.keys.unique(task.unique.as_deref()))
            .arg(entry_id)
            .arg(task.lock_token())
            .arg(if task.unique.is_some() { "1" } else { "0" })
            .arg(fields::encode(&task))
            .invoke_async(&mut self.conn.clone())
            .await?;
        match outcome.as_str() {
            "gone" => Err(DeadError::NotFound(entry_id.to_owned())),
            "conflict" => Err(DeadError::Conflict(entry_id.to_owned())),
            _ => {
                tracing::info!(task_id = %task.id, queue = %task.queue, "requeued dead task");
                Ok(outcome)
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
        (Some(queue), false) => fields::decode(queue.clone(), map).ok(),
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
