//! Publishing a task: one XADD onto the stream of its queue. No `MAXLEN`: a trim could drop an
//! entry no worker has finished.

use redis::aio::ConnectionManager;

use super::{Keys, Task, fields};

#[derive(Debug, thiserror::Error)]
#[error("could not publish task {task_id} to Redis")]
pub struct PublishError {
    pub task_id: String,
    #[source]
    pub source: redis::RedisError,
}

/// Publishes tasks to the streams of one namespace. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    conn: ConnectionManager,
    keys: Keys,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(conn: ConnectionManager, keys: Keys) -> Self {
        Self { conn, keys }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Succeeds when Redis answers PING.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    /// XADDs `task` onto its queue's stream; returns the entry id.
    pub async fn publish(&self, task: &Task) -> Result<String, PublishError> {
        let stream = self.keys.stream(&task.queue);
        let entry_id: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(fields::encode(task))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|source| PublishError {
                task_id: task.id.clone(),
                source,
            })?;
        tracing::info!(
            task_id = %task.id,
            task_type = %task.kind,
            queue = %task.queue,
            max_retry = task.max_retry,
            entry_id = %entry_id,
            "enqueued task"
        );
        Ok(entry_id)
    }
}
