//! Enqueueing a task. A plain task is one XADD onto the stream of its queue; a task with a
//! delay or a uniqueness lock goes through the enqueue script, which takes
//! the lock and queues or schedules it in one step. No `MAXLEN`: a trim could drop an entry no
//! worker has finished.

use redis::aio::ConnectionManager;
use tracing::Instrument;

use crate::{
    fields,
    keys::{Keys, QueueName},
    report, scripts,
    task::{Envelope, Task},
    trace::{context_of, record_error, set_parent},
};

/// Where an enqueued task went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Onto its stream, as this entry.
    Queued {
        /// The stream entry id.
        entry_id: String,
    },
    /// Into the scheduled set, due at this time (ms since the epoch, Redis' clock).
    Scheduled {
        /// When it becomes ready.
        due_ms: i64,
    },
    /// This very task (same id, same lock) was enqueued before: nothing was added. A
    /// republished outbox row ends here.
    AlreadyEnqueued,
}

/// Why a task was not enqueued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Another live task holds the lock: the same `task_id`, or the same unique content.
    #[error(
        "task {task_id} not enqueued: a task with the same {what} is already queued, scheduled or running"
    )]
    Conflict {
        /// The refused task.
        task_id: String,
        /// `task_id` or `unique key`.
        what: &'static str,
    },
    /// Redis failed or did not answer.
    #[error("could not publish task {task_id} to Redis")]
    Redis {
        /// The task being published (the first of a batch).
        task_id: String,
        /// Redis' error.
        #[source]
        source: redis::RedisError,
    },
}

/// Publishes tasks to the streams of one namespace. Cheap to clone.
///
/// ```no_run
/// use simplebank_queue::{Keys, Namespace, Publisher, Task, TaskPayload, connection};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ping;
/// impl TaskPayload for Ping { const TYPE: &'static str = "ping"; }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = connection::client("127.0.0.1:6379")?;
/// let conn = connection::lazy_manager(client, connection::RESPONSE_TIMEOUT)?;
/// let publisher = Publisher::new(conn, Keys::new(Namespace::parse("my-service")?));
/// publisher.publish(&Task::new(&Ping)?).await?;
/// # Ok(()) }
/// ```
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
    /// A publisher on `conn` (see [`crate::connection`]) for the namespace of `keys`.
    pub fn new(conn: ConnectionManager, keys: Keys) -> Self {
        Self { conn, keys }
    }

    /// The keys of its namespace.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Succeeds when Redis answers PING.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    /// How many tasks of `queues` are not settled yet: queued, running, delayed or waiting
    /// for a retry. Zero means nothing more will run there.
    pub async fn backlog(&self, queues: &[QueueName]) -> redis::RedisResult<u64> {
        let mut pipe = redis::pipe();
        for queue in queues {
            pipe.cmd("XLEN").arg(self.keys.stream(queue));
            pipe.cmd("ZCARD").arg(self.keys.scheduled(queue));
            pipe.cmd("ZCARD").arg(self.keys.retry(queue));
        }
        let counts: Vec<u64> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(counts.iter().sum())
    }

    /// Enqueues `task`: onto its queue's stream, or into its queue's scheduled set if it has a
    /// delay.
    ///
    /// Runs in a producer span (`send <stream>`) that continues the trace the task carries
    /// (the RPC that created it, even when the outbox relay publishes it later); the entry then
    /// carries this span's context, so the worker's span is its child.
    pub async fn publish(&self, task: &Task) -> Result<Enqueued, PublishError> {
        let stream = self.keys.stream(&task.queue);
        let span = tracing::info_span!(
            "publish",
            otel.name = format!("send {stream}"),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "redis",
            messaging.destination.name = %stream,
            messaging.operation.type = "send",
            messaging.message.id = tracing::field::Empty,
            simplebank.task.id = %task.id,
            simplebank.task.type = %task.kind,
        );
        set_parent(&span, &task.trace());
        let mut task = task.clone();
        task.set_trace(context_of(&span));
        let result = self
            .enqueue(&Envelope::first(task))
            .instrument(span.clone())
            .await;
        match &result {
            Ok(Enqueued::Queued { entry_id }) => {
                span.record("messaging.message.id", entry_id.as_str());
            }
            Ok(_) => {}
            Err(err) => record_error(&span, &report::chain(err)),
        }
        result
    }

    /// Enqueues many tasks. Plain tasks (no delay, no lock) go out in one pipelined request
    /// per 1,000; tasks with options go one by one through [`Publisher::publish`]. Returns the
    /// outcomes in order; stops at the first Redis error (tasks before it are enqueued).
    pub async fn publish_batch(&self, tasks: &[Task]) -> Result<Vec<Enqueued>, PublishError> {
        let mut outcomes = Vec::with_capacity(tasks.len());
        for chunk in tasks.chunks(1000) {
            if chunk
                .iter()
                .any(|t| t.unique.is_some() || t.schedule.is_some())
            {
                for task in chunk {
                    outcomes.push(self.publish(task).await?);
                }
                continue;
            }
            let mut pipe = redis::pipe();
            for task in chunk {
                pipe.cmd("XADD")
                    .arg(self.keys.stream(&task.queue))
                    .arg("*")
                    .arg(fields::encode_new(task));
            }
            let entry_ids: Vec<String> =
                pipe.query_async(&mut self.conn.clone())
                    .await
                    .map_err(|source| PublishError::Redis {
                        task_id: chunk[0].id.clone(),
                        source,
                    })?;
            outcomes.extend(
                entry_ids
                    .into_iter()
                    .map(|entry_id| Enqueued::Queued { entry_id }),
            );
        }
        tracing::debug!(count = tasks.len(), "enqueued a batch of tasks");
        Ok(outcomes)
    }

    async fn enqueue(&self, envelope: &Envelope) -> Result<Enqueued, PublishError> {
        let task = &envelope.task;
        let redis_error = |source| PublishError::Redis {
            task_id: task.id.clone(),
            source,
        };
        let enqueued = if task.unique.is_none() && task.schedule.is_none() {
            let entry_id: String = redis::cmd("XADD")
                .arg(self.keys.stream(&task.queue))
                .arg("*")
                .arg(fields::encode(envelope))
                .query_async(&mut self.conn.clone())
                .await
                .map_err(redis_error)?;
            Enqueued::Queued { entry_id }
        } else {
            match scripts::enqueue(&mut self.conn.clone(), &self.keys, envelope)
                .await
                .map_err(redis_error)?
            {
                scripts::Enqueue::Queued(entry_id) => Enqueued::Queued { entry_id },
                scripts::Enqueue::Scheduled(due_ms) => Enqueued::Scheduled { due_ms },
                scripts::Enqueue::Exists => Enqueued::AlreadyEnqueued,
                scripts::Enqueue::Conflict => {
                    return Err(PublishError::Conflict {
                        task_id: task.id.clone(),
                        what: match task.unique.as_deref() {
                            Some(unique) if unique.starts_with("id:") => "task_id",
                            _ => "unique key",
                        },
                    });
                }
            }
        };
        // The outcome as plain fields (an entry id or a due time), not a Rust value.
        let (outcome, entry_id, due_ms) = match &enqueued {
            Enqueued::Queued { entry_id } => ("queued", Some(entry_id.as_str()), None),
            Enqueued::Scheduled { due_ms } => ("scheduled", None, Some(*due_ms)),
            Enqueued::AlreadyEnqueued => ("already enqueued", None, None),
        };
        tracing::info!(
            task_id = %task.id,
            task_type = %task.kind,
            queue = %task.queue,
            max_retry = task.max_retry,
            outcome,
            entry_id,
            due_ms,
            "enqueued task"
        );
        Ok(enqueued)
    }
}
