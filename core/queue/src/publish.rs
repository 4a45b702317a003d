//! Enqueueing a task. A plain task is one XADD onto the stream of its queue; a task with a
//! delay or a uniqueness lock goes through the enqueue script, which takes
//! the lock and queues or schedules it in one step. No `MAXLEN`: a trim could drop an entry no
//! worker has finished.
//!
//! With a [`ReplicaWait`], a publish also waits until that many replicas have the task: the
//! write and a `WAIT <replicas> <timeout>` go out as one pipeline on one connection, so the
//! WAIT reaches the node that took the write (on a cluster, the primary of the queue's slot)
//! and counts this very write. Fewer replicas in time is [`PublishError::NotReplicated`]:
//! the task is on the primary, but a failover could still lose it, so a caller that keeps
//! the task (the outbox) keeps it and publishes it again later.

use std::time::Duration;

use opentelemetry::{KeyValue, context::FutureExt as _, trace::SpanKind};

use crate::connection::Connection;

use crate::{
    fields,
    keys::{Keys, QueueName},
    metrics::{self, ErrorType, ProducerMetrics},
    report, scripts,
    task::{Envelope, Task},
    trace::{Remote, TaskSpan, TraceContext, Tracer},
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
    /// The task was written, but fewer replicas than asked acknowledged it within the
    /// timeout ([`ReplicaWait`]). Publishing it again is safe for a task with a lock (it is
    /// recognised); a plain task would be added a second time.
    #[error(
        "task {task_id} written, but only {acknowledged} of {wanted} replicas acknowledged it in time"
    )]
    NotReplicated {
        /// The task (the first of a batch).
        task_id: String,
        /// Replicas that acknowledged the write.
        acknowledged: u32,
        /// Replicas asked for.
        wanted: u32,
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
    conn: Connection,
    keys: Keys,
    wait: Option<ReplicaWait>,
    metrics: ProducerMetrics,
    tracer: Tracer,
}

/// How many replicas must have a task before its publish succeeds, and how long to wait for
/// them (Redis' `WAIT`). Not a guarantee against every loss (Redis replication stays
/// asynchronous), but a primary that fails after the publish succeeded has a replica that
/// holds the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    replicas: u32,
    timeout_ms: u64,
}

impl ReplicaWait {
    /// Wait for `replicas` replicas, at most `timeout` (at least 1 ms: `WAIT` with 0 would
    /// wait forever). `None` for zero replicas: nothing to wait for.
    pub fn new(replicas: u32, timeout: Duration) -> Option<Self> {
        (replicas > 0).then(|| Self {
            replicas,
            timeout_ms: u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        })
    }

    /// The replicas waited for.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// The longest wait.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The `WAIT` command.
    pub(crate) fn cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(self.replicas).arg(self.timeout_ms);
        cmd
    }

    /// `acknowledged` (WAIT's reply) as a result for `task_id`.
    pub(crate) fn check(&self, task_id: &str, acknowledged: u32) -> Result<(), PublishError> {
        if acknowledged >= self.replicas {
            Ok(())
        } else {
            Err(PublishError::NotReplicated {
                task_id: task_id.to_owned(),
                acknowledged,
                wanted: self.replicas,
            })
        }
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("keys", &self.keys)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher on `conn` (see [`crate::connection`]) for the namespace of `keys`. Its
    /// metrics and its `send` spans go to the global meter and tracer providers as installed
    /// now (see [`crate::metrics`] and [`crate::trace`]).
    pub fn new(conn: impl Into<Connection>, keys: Keys) -> Self {
        Self {
            conn: conn.into(),
            keys,
            wait: None,
            metrics: ProducerMetrics::new(&metrics::global_meter()),
            tracer: Tracer::global(),
        }
    }

    /// Makes the publisher's `send` spans with `tracer` instead of the global provider's: for
    /// a program whose tracer provider is not the global one.
    #[must_use]
    pub fn with_tracer(
        mut self,
        tracer: impl opentelemetry::trace::Tracer<Span: Send + Sync + 'static> + Send + Sync + 'static,
    ) -> Self {
        self.tracer = Tracer::of(tracer);
        self
    }

    /// Records the publisher's metrics with `meter` instead of the global provider's.
    #[must_use]
    pub fn with_meter(mut self, meter: &opentelemetry::metrics::Meter) -> Self {
        self.metrics = ProducerMetrics::new(meter);
        self
    }

    /// This publisher, waiting for replicas after each write (`None`: not waiting). Give it a
    /// connection of its own, with a response timeout above the wait's: a `WAIT` holds up
    /// the commands behind it on its connection until the replicas answer.
    pub fn with_replica_wait(mut self, wait: Option<ReplicaWait>) -> Self {
        self.wait = wait;
        self
    }

    /// The keys of its namespace.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Succeeds when Redis answers PING, on the publisher's connection: with a replica wait,
    /// after the `WAIT`s ahead of it (a health check belongs on another connection).
    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    /// How many tasks of `queues` are not settled yet: queued, running, delayed or waiting
    /// for a retry. Zero means nothing more will run there.
    pub async fn backlog(&self, queues: &[QueueName]) -> redis::RedisResult<u64> {
        let mut total = 0;
        // One pipeline per queue: a queue's keys share a slot, different queues may not.
        for queue in queues {
            let counts: (u64, u64, u64) = redis::pipe()
                .cmd("XLEN")
                .arg(self.keys.stream(queue))
                .cmd("ZCARD")
                .arg(self.keys.scheduled(queue))
                .cmd("ZCARD")
                .arg(self.keys.retry(queue))
                .query_async(&mut self.conn.clone())
                .await?;
            total += counts.0 + counts.1 + counts.2;
        }
        Ok(total)
    }

    /// Enqueues `task`: onto its queue's stream, or into its queue's scheduled set if it has a
    /// delay.
    ///
    /// Runs in a producer span (`send <stream>`) that continues the trace the task carries
    /// (the RPC that created it, even when the outbox relay publishes it later); the entry then
    /// carries this span's context, so the worker's span is its child.
    pub async fn publish(&self, task: &Task) -> Result<Enqueued, PublishError> {
        let stream = self.keys.stream(&task.queue);
        let span = TaskSpan::start(
            &self.tracer,
            "publish",
            SpanKind::Producer,
            task.remote_trace(),
            6,
            || {
                let attributes = [
                    KeyValue::new("messaging.system", "redis"),
                    KeyValue::new("messaging.destination.name", stream.clone()),
                    KeyValue::new("messaging.operation.type", "send"),
                    KeyValue::new("simplebank.task.id", task.id.clone()),
                    KeyValue::new("simplebank.task.type", task.kind.clone()),
                ];
                (format!("send {stream}").into(), attributes)
            },
        );
        // The entry carries this span's context; without one (no tracer provider installed)
        // the context the task came with.
        let headers = span.headers();
        let trace = if headers.traceparent.is_some() {
            headers.remote()
        } else {
            task.remote_trace()
        };
        let result = self
            .enqueue(task, trace, &stream)
            .with_context(span.context())
            .await;
        match &result {
            Ok(Enqueued::Queued { entry_id }) => {
                span.set_attribute(|| KeyValue::new("messaging.message.id", entry_id.clone()));
            }
            Ok(_) => {}
            Err(err) => span.record_error(&report::chain(err)),
        }
        span.end();
        let error = result.as_ref().err().map(error_type);
        self.metrics.sent(&task.queue, &task.kind, error, 1);
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
            // One pipeline per queue (a cluster refuses one across slots); the outcomes are
            // put back in the order of the tasks.
            let mut entry_ids: Vec<Option<String>> = vec![None; chunk.len()];
            // On one server, one pipeline for all (one round trip, as before).
            let cluster = self.conn.is_cluster();
            let mut queues: Vec<Option<&QueueName>> = chunk
                .iter()
                .map(|task| cluster.then_some(&task.queue))
                .collect();
            queues.sort();
            queues.dedup();
            for queue in queues {
                let positions: Vec<usize> = (0..chunk.len())
                    .filter(|&i| queue.is_none_or(|q| chunk[i].queue == *q))
                    .collect();
                let mut pipe = redis::pipe();
                for &i in &positions {
                    let (stream, task) = (self.keys.stream(&chunk[i].queue), &chunk[i]);
                    pipe.add_command(fields::xadd(&stream, task, task.remote_trace()));
                }
                if let Some(wait) = &self.wait {
                    pipe.add_command(wait.cmd());
                }
                let first = &chunk[positions[0]].id;
                let sent: Result<(), PublishError> = async {
                    let mut replies: Vec<redis::Value> = pipe
                        .query_async(&mut self.conn.clone())
                        .await
                        .map_err(|source| PublishError::Redis {
                            task_id: first.clone(),
                            source,
                        })?;
                    if let Some(wait) = &self.wait {
                        let acknowledged = replies.pop().map(acknowledged).transpose();
                        let acknowledged = acknowledged.map_err(|source| PublishError::Redis {
                            task_id: first.clone(),
                            source,
                        })?;
                        wait.check(first, acknowledged.unwrap_or(0))?;
                    }
                    for (&i, reply) in positions.iter().zip(replies) {
                        entry_ids[i] = Some(redis::from_redis_value(reply).map_err(|source| {
                            PublishError::Redis {
                                task_id: chunk[i].id.clone(),
                                source: source.into(),
                            }
                        })?);
                    }
                    Ok(())
                }
                .await;
                let error = sent.as_ref().err().map(error_type);
                for &i in &positions {
                    self.metrics.sent(&chunk[i].queue, &chunk[i].kind, error, 1);
                }
                sent?;
            }
            outcomes.extend(entry_ids.into_iter().map(|entry_id| Enqueued::Queued {
                entry_id: entry_id.unwrap_or_default(),
            }));
        }
        tracing::debug!(count = tasks.len(), "enqueued a batch of tasks");
        Ok(outcomes)
    }

    /// Enqueues `task` (its first attempt) onto `stream`, its queue's stream, carrying `trace`
    /// (its `send` span's context) instead of its own.
    async fn enqueue(
        &self,
        task: &Task,
        trace: Remote<'_>,
        stream: &str,
    ) -> Result<Enqueued, PublishError> {
        let enqueued = match (&self.wait, self.conn.writer()) {
            // A plain task on one server over plain TCP: the publishers' pipelined connection.
            (None, Some(writer)) if task.unique.is_none() && task.schedule.is_none() => {
                let reply = (writer.query_packed(fields::xadd_packed(stream, task, trace))).await;
                let entry_id = reply
                    .and_then(|reply| {
                        redis::from_redis_value(reply).map_err(redis::RedisError::from)
                    })
                    .map_err(|source| PublishError::Redis {
                        task_id: task.id.clone(),
                        source,
                    })?;
                Enqueued::Queued { entry_id }
            }
            // The other ways in a future of their own, boxed: each publish moves this one
            // (BENCHMARKS.md, "The publish future kept small").
            _ => Box::pin(self.enqueue_otherwise(task, trace, stream)).await?,
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

    /// [`Publisher::enqueue`] on another connection, with a replica wait, or through the
    /// enqueue script (a delay or a lock).
    async fn enqueue_otherwise(
        &self,
        task: &Task,
        trace: Remote<'_>,
        stream: &str,
    ) -> Result<Enqueued, PublishError> {
        let redis_error = |source| PublishError::Redis {
            task_id: task.id.clone(),
            source,
        };
        let enqueued = if task.unique.is_none() && task.schedule.is_none() {
            // Not the publishers' connection (a cluster, TLS, a Unix socket) or a replica wait.
            let entry_id: String = match &self.wait {
                None => {
                    (fields::xadd(stream, task, trace))
                        .query_async(&mut self.conn.clone())
                        .await
                }
                Some(wait) => {
                    let xadd = fields::xadd(stream, task, trace);
                    let (entry_id, acknowledged): (String, u32) = redis::pipe()
                        .add_command(xadd)
                        .add_command(wait.cmd())
                        .query_async(&mut self.conn.clone())
                        .await
                        .map_err(redis_error)?;
                    wait.check(&task.id, acknowledged)?;
                    Ok(entry_id)
                }
            }
            .map_err(redis_error)?;
            Enqueued::Queued { entry_id }
        } else {
            let mut traced = task.clone();
            traced.set_trace(TraceContext {
                traceparent: trace.traceparent.map(str::to_owned),
                tracestate: trace.tracestate.map(str::to_owned),
            });
            let envelope = Envelope::first(traced);
            let (enqueued, acknowledged) =
                scripts::enqueue(&mut self.conn.clone(), &self.keys, &envelope, self.wait)
                    .await
                    .map_err(redis_error)?;
            if let (Some(wait), Some(acknowledged)) = (&self.wait, acknowledged) {
                wait.check(&task.id, acknowledged)?;
            }
            match enqueued {
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
        Ok(enqueued)
    }
}

/// WAIT's reply: the replicas that acknowledged.
fn acknowledged(reply: redis::Value) -> redis::RedisResult<u32> {
    Ok(redis::from_redis_value(reply)?)
}

/// The metrics' `error.type` of a failed publish.
fn error_type(err: &PublishError) -> ErrorType {
    match err {
        PublishError::Conflict { .. } => ErrorType::Conflict,
        PublishError::NotReplicated { .. } => ErrorType::NotReplicated,
        PublishError::Redis { .. } => ErrorType::Redis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Namespace, TaskPayload, connection};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Nothing;

    impl TaskPayload for Nothing {
        const TYPE: &'static str = "test:nothing";
    }

    /// The future of a publish stays small: each publish creates it and moves it, so the
    /// ways a plain task on the publishers' connection does not take (another connection, a
    /// replica wait, the enqueue script) are boxed (BENCHMARKS.md, "The publish future kept
    /// small"). Inline they made it 1,464 bytes (debug and release builds alike).
    #[tokio::test]
    async fn the_publish_future_stays_small() {
        let client = connection::client("127.0.0.1:1").unwrap();
        let conn = connection::lazy_manager(client, Duration::from_secs(1)).unwrap();
        let publisher = Publisher::new(conn, Keys::new(Namespace::parse("test").unwrap()));
        let task = Task::new(&Nothing).unwrap();
        let size = std::mem::size_of_val(&publisher.publish(&task));
        assert!(size <= 640, "the publish future is {size} bytes");
    }
}
