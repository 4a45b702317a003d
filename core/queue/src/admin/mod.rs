//! Operating the queues: what an admin service (or a CLI) needs, on top of the layout that only
//! this crate reads. Every operation is bounded in time ([`DEADLINE`]): a Redis that is down or
//! hung is an error ([`AdminError::Unavailable`] / [`AdminError::TimedOut`]), never a wait.
//!
//! - [`Admin::list_queues`]: [`QueueStats`] of every queue (registered, or found by scanning).
//! - [`Admin::list_tasks`]: one page of a queue's tasks in one [`TaskState`], with page tokens
//!   that hold a position (`cursor`), so paging is stable while tasks move.
//! - [`Admin::get_task`], [`Admin::cancel_scheduled`]: by task id (`lookup`; these scan, see
//!   there for the cost).
//! - [`Admin::requeue_dead`], [`Admin::delete_dead`]: on [`DeadLetters`], by task ids or all.
//! - [`Admin::pause`], [`Admin::resume`]: [`crate::pause`].
//! - [`Admin::list_workers`]: the consumers of the group on every registered queue (`workers`).
//!
//! Payloads are shown only for tasks not marked sensitive ([`crate::TaskPayload::SENSITIVE`]);
//! the mark travels with the task, so this needs no knowledge of task types.

mod cursor;
mod lookup;
mod tasks;
mod workers;

use std::{future::Future, time::Duration};

use crate::connection::Connection;

pub use self::{tasks::TaskPage, workers::WorkerInfo};
use crate::{
    dead::{DeadError, DeadLetters},
    keys::{Keys, QueueName},
    stats::{QueueStats, known_queues, queue_stats},
};

/// How long one admin operation may take, all its round trips together.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// On its queue's stream, not yet delivered to a worker.
    Pending,
    /// Delivered to a worker and not yet settled.
    Active,
    /// Delayed by `process_in` / `process_at`.
    Scheduled,
    /// Failed, waiting for its next attempt.
    Retry,
    /// In the dead letters.
    Dead,
}

impl TaskState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Scheduled => "scheduled",
            Self::Retry => "retry",
            Self::Dead => "dead",
        }
    }
}

/// A task as an operator sees it. Holds no secret: `payload` is `None` for a sensitive task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task id (empty for a dead letter that could not be decoded and named none).
    pub id: String,
    /// The task type.
    pub kind: String,
    /// Its queue.
    pub queue: QueueName,
    /// Where it is.
    pub state: TaskState,
    /// The attempt that runs next or now; for a dead letter, the attempts made.
    pub attempt: u32,
    /// Retries allowed after the first attempt.
    pub max_retry: u32,
    /// The error of the last failed attempt (a dead letter: why it died).
    pub last_error: Option<String>,
    /// Scheduled or retry: when it is due (ms since the epoch, Redis' clock).
    pub next_run_at_ms: Option<i64>,
    /// The trace id of the producer's W3C trace context.
    pub trace_id: Option<String>,
    /// The payload (JSON text); `None` when the task is marked sensitive.
    pub payload: Option<String>,
    /// When it was created (ms since the epoch).
    pub enqueued_at_ms: Option<i64>,
    /// Active: the consumer holding it.
    pub worker: Option<String>,
    /// Active: since it was delivered or its lease renewed.
    pub idle: Option<Duration>,
    /// Active: how many times it was delivered.
    pub deliveries: Option<u32>,
    /// Dead: when it died (ms since the epoch).
    pub dead_at_ms: Option<i64>,
}

/// Which dead letters an operation is on.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    /// Those holding these task ids.
    Ids(&'a [String]),
    /// All of the queue's.
    All,
}

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No worker registered the queue and it holds nothing.
    #[error("queue {0} not found")]
    QueueNotFound(QueueName),
    /// No task has this id (in the queues searched).
    #[error("task not found")]
    TaskNotFound,
    /// The page token is malformed, or was issued for another queue or state.
    #[error("the page token is not one issued for this queue and state")]
    PageToken,
    /// Redis is down or does not answer.
    #[error("Redis is unavailable")]
    Unavailable(#[source] redis::RedisError),
    /// The operation did not finish within its deadline.
    #[error("Redis did not answer within {0:?}")]
    TimedOut(Duration),
    /// Redis answered with an error.
    #[error("Redis refused an admin command")]
    Redis(#[source] redis::RedisError),
}

impl From<redis::RedisError> for AdminError {
    fn from(err: redis::RedisError) -> Self {
        if err.is_io_error()
            || err.is_timeout()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
        {
            Self::Unavailable(err)
        } else {
            Self::Redis(err)
        }
    }
}

impl From<DeadError> for AdminError {
    fn from(err: DeadError) -> Self {
        match err {
            DeadError::Redis(err) => err.into(),
            // Per-letter outcomes are counted, not raised, by the operations used here.
            DeadError::NotFound(_) | DeadError::Poison(_) | DeadError::Conflict(_) => {
                Self::TaskNotFound
            }
        }
    }
}

/// Whether `err` says the stream or its group does not exist (nothing enqueued or joined yet).
fn is_absent(err: &redis::RedisError) -> bool {
    match err.code() {
        Some("NOGROUP") => true,
        Some("ERR") => err
            .detail()
            .is_some_and(|detail| detail.to_ascii_lowercase().contains("no such key")),
        _ => false,
    }
}

/// Whether `id` is a well-formed task id (1-200 characters, no whitespace or control
/// characters), as `Task::with_task_id` requires.
pub fn is_valid_task_id(id: &str) -> bool {
    crate::task::is_valid_task_id(id)
}

/// The admin operations on the queues of one namespace.
#[derive(Clone)]
pub struct Admin {
    conn: Connection,
    keys: Keys,
    dead: DeadLetters,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Runs `operation` within [`DEADLINE`].
async fn bounded<T>(
    operation: impl Future<Output = Result<T, AdminError>>,
) -> Result<T, AdminError> {
    tokio::time::timeout(DEADLINE, operation)
        .await
        .unwrap_or(Err(AdminError::TimedOut(DEADLINE)))
}

impl Admin {
    /// The queues of the namespace of `keys`, on `conn` (a connection manager with a response
    /// timeout, as [`crate::connection::lazy_manager`] makes).
    pub fn new(conn: Connection, keys: Keys) -> Self {
        Self {
            dead: DeadLetters::new(conn.clone(), keys.clone()),
            conn,
            keys,
        }
    }

    fn conn(&self) -> Connection {
        self.conn.clone()
    }

    /// Every queue a worker registered, plus any other queue that has keys (one only
    /// producers have used), with the state of each (see [`QueueStats`]), by name.
    pub async fn list_queues(&self) -> Result<Vec<QueueStats>, AdminError> {
        bounded(async {
            let mut conn = self.conn();
            let mut all = Vec::new();
            for queue in self.all_queues().await? {
                all.push(queue_stats(&mut conn, &self.keys, &queue).await?);
            }
            Ok(all)
        })
        .await
    }

    /// The registered queues and those found by scanning the keyspace for the namespace's
    /// queue keys (`SCAN MATCH {ns:*`, O(keys in Redis)), by name.
    async fn all_queues(&self) -> Result<Vec<QueueName>, AdminError> {
        let mut conn = self.conn();
        let mut queues: std::collections::BTreeSet<QueueName> = known_queues(&mut conn, &self.keys)
            .await?
            .into_iter()
            .map(|(queue, _)| queue)
            .collect();
        let [_, pattern] = self.keys.patterns();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            queues.extend(keys.iter().filter_map(|key| self.keys.queue_of(key)));
            if next == 0 {
                return Ok(queues.into_iter().collect());
            }
            cursor = next;
        }
    }

    /// Every queue ([`Admin::all_queues`]), or `only` (checked to exist).
    async fn queues(&self, only: Option<&QueueName>) -> Result<Vec<QueueName>, AdminError> {
        match only {
            Some(queue) => {
                self.ensure_known(queue).await?;
                Ok(vec![queue.clone()])
            }
            None => self.all_queues().await,
        }
    }

    /// `QueueNotFound` unless a worker registered `queue` or one of its keys exists.
    async fn ensure_known(&self, queue: &QueueName) -> Result<(), AdminError> {
        let mut conn = self.conn();
        let registered: bool = redis::cmd("HEXISTS")
            .arg(self.keys.queues())
            .arg(queue.as_str())
            .query_async(&mut conn)
            .await?;
        if registered {
            return Ok(());
        }
        // One queue's keys share a slot: one EXISTS covers them on a cluster too.
        let present: u32 = redis::cmd("EXISTS")
            .arg(self.keys.stream(queue))
            .arg(self.keys.scheduled(queue))
            .arg(self.keys.retry(queue))
            .arg(self.keys.dead(queue))
            .arg(self.keys.paused(queue))
            .arg(self.keys.stats(queue))
            .query_async(&mut conn)
            .await?;
        if present == 0 {
            return Err(AdminError::QueueNotFound(queue.clone()));
        }
        Ok(())
    }

    /// One page (at most `page_size`) of `queue`'s tasks in `state`, oldest or soonest due
    /// first, from `page_token` (a previous page's `next_page_token`; `None` for the first).
    pub async fn list_tasks(
        &self,
        queue: &QueueName,
        state: TaskState,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<TaskPage, AdminError> {
        let from = page_token
            .map(|token| cursor::Cursor::parse(token, queue, state))
            .transpose()?;
        bounded(async {
            self.ensure_known(queue).await?;
            tasks::list(self, queue, state, page_size.max(1), from).await
        })
        .await
    }

    /// The task with id `id`, in `queue` or in any queue.
    pub async fn get_task(
        &self,
        id: &str,
        queue: Option<&QueueName>,
    ) -> Result<TaskInfo, AdminError> {
        bounded(async {
            for queue in self.queues(queue).await? {
                if let Some(task) = lookup::find(self, &queue, id).await? {
                    return Ok(task);
                }
            }
            Err(AdminError::TaskNotFound)
        })
        .await
    }

    /// Removes the task `id` from the scheduled and retry sets (of `queue`, or of every
    /// queue), releasing its uniqueness lock; returns how many copies it removed
    /// (0 when it was not waiting there: a second call removes nothing).
    pub async fn cancel_scheduled(
        &self,
        id: &str,
        queue: Option<&QueueName>,
    ) -> Result<u64, AdminError> {
        bounded(async {
            let mut cancelled = 0;
            for queue in self.queues(queue).await? {
                cancelled += lookup::cancel(self, &queue, id).await?;
            }
            Ok(cancelled)
        })
        .await
    }

    /// Moves dead letters of `queue` back onto it (attempts start again at 1); returns how
    /// many this call moved. Each letter moves once, however many calls run at the same time.
    pub async fn requeue_dead(
        &self,
        queue: &QueueName,
        selection: Selection<'_>,
    ) -> Result<u64, AdminError> {
        bounded(async {
            self.ensure_known(queue).await?;
            let moved = match selection {
                Selection::All => self.dead.requeue_all(queue).await?,
                Selection::Ids(ids) => {
                    let entries = lookup::dead_entries(self, queue, ids).await?;
                    self.dead.requeue(queue, &entries).await?
                }
            };
            Ok(moved as u64)
        })
        .await
    }

    /// Deletes dead letters of `queue`; returns how many this call deleted.
    pub async fn delete_dead(
        &self,
        queue: &QueueName,
        selection: Selection<'_>,
    ) -> Result<u64, AdminError> {
        bounded(async {
            self.ensure_known(queue).await?;
            let deleted = match selection {
                Selection::All => self.dead.delete_all(queue).await?,
                Selection::Ids(ids) => {
                    let entries = lookup::dead_entries(self, queue, ids).await?;
                    self.dead.delete(queue, &entries).await?
                }
            };
            Ok(deleted as u64)
        })
        .await
    }

    /// Pauses `queue` ([`crate::pause::pause`]); false when it already was.
    pub async fn pause(&self, queue: &QueueName) -> Result<bool, AdminError> {
        bounded(async {
            self.ensure_known(queue).await?;
            Ok(crate::pause::pause(&mut self.conn(), &self.keys, queue).await?)
        })
        .await
    }

    /// Resumes `queue` ([`crate::pause::resume`]); false when it was not paused.
    pub async fn resume(&self, queue: &QueueName) -> Result<bool, AdminError> {
        bounded(async {
            self.ensure_known(queue).await?;
            Ok(crate::pause::resume(&mut self.conn(), &self.keys, queue).await?)
        })
        .await
    }

    /// Every consumer of the group on the registered queues, by name.
    pub async fn list_workers(&self) -> Result<Vec<WorkerInfo>, AdminError> {
        bounded(async {
            let queues: Vec<QueueName> = known_queues(&mut self.conn(), &self.keys)
                .await?
                .into_iter()
                .map(|(queue, _)| queue)
                .collect();
            workers::list(self, &queues).await
        })
        .await
    }
}
