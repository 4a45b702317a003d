//! Running one entry: decode it, find its handler, run it with the task's timeout in a task of
//! its own (so a panic is caught as a failure, not a dead worker), then acknowledge and delete
//! the entry if it succeeded.
//!
//! An attempt that did not succeed (error, timeout, panic, undecodable entry, unknown type)
//! leaves the entry pending: after the visibility timeout the reclaim loop of some worker takes
//! it over and runs it again. Nothing is acknowledged that did not finish.

use std::{sync::Arc, time::Instant};

use redis::{aio::ConnectionManager, streams::StreamId};
use simplebank_core::task::{Keys, QueueName, fields};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{ack, handler::Handlers};

/// Runs entries; shared by the fetch loop and the reclaim loop.
#[derive(Debug)]
pub struct Dispatcher {
    pub conn: ConnectionManager,
    pub keys: Keys,
    pub handlers: Handlers,
    /// Every running entry; shutdown waits on it.
    pub tracker: TaskTracker,
    /// Cancelled when the shutdown timeout passes: unfinished handlers are aborted and their
    /// entries stay pending.
    pub abandon: CancellationToken,
}

impl Dispatcher {
    /// Runs `entry` in the background, holding `permit` (a concurrency slot) until done.
    pub fn spawn(
        self: &Arc<Self>,
        queue: QueueName,
        entry: StreamId,
        permit: OwnedSemaphorePermit,
    ) {
        let this = Arc::clone(self);
        self.tracker.spawn(async move {
            this.process(queue, entry).await;
            drop(permit);
        });
    }

    async fn process(&self, queue: QueueName, entry: StreamId) {
        let stream = self.keys.stream(&queue);
        let task = match fields::decode(queue.clone(), &entry.map) {
            Ok(task) => Arc::new(task),
            Err(err) => {
                tracing::error!(
                    queue = %queue, entry_id = %entry.id, reason = %err,
                    "undecodable entry; left pending"
                );
                return;
            }
        };
        let Some(handler) = self.handlers.get(&task.kind) else {
            tracing::error!(
                queue = %queue, entry_id = %entry.id, task_id = %task.id, task_type = %task.kind,
                "no handler for this task type; left pending"
            );
            return;
        };

        let started = Instant::now();
        let running = Arc::clone(&task);
        let mut attempt = tokio::spawn(async move { handler.handle(&running).await });
        let outcome = tokio::select! {
            () = self.abandon.cancelled() => {
                attempt.abort();
                tracing::warn!(
                    task_id = %task.id, task_type = %task.kind,
                    "shutdown timeout passed; task left pending for another worker"
                );
                return;
            }
            outcome = tokio::time::timeout(task.timeout(), &mut attempt) => outcome,
        };
        let failure = match outcome {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(err))) => Some(err.to_string()),
            Ok(Err(join)) if join.is_panic() => Some("handler panicked".to_owned()),
            Ok(Err(join)) => Some(join.to_string()),
            Err(_) => {
                attempt.abort();
                Some(format!("timed out after {} ms", task.timeout_ms))
            }
        };
        let duration_ms = started.elapsed().as_secs_f64() * 1_000.0;
        if let Some(error) = failure {
            tracing::warn!(
                task_id = %task.id, task_type = %task.kind, queue = %queue, attempt = task.attempt,
                duration_ms, error = %error,
                "task failed; it stays pending and runs again after the visibility timeout"
            );
            return;
        }
        match ack::ack_and_delete(&mut self.conn.clone(), &stream, &entry.id).await {
            Ok(()) => tracing::info!(
                task_id = %task.id, task_type = %task.kind, queue = %queue, duration_ms,
                "processed task"
            ),
            Err(err) => tracing::warn!(
                task_id = %task.id, error = %err,
                "task done but not acknowledged; it may run again"
            ),
        }
    }
}
