//! Settling finished tasks in batches (group commit). A task that succeeded hands its entry to
//! the [`Acker`] and waits until the entry is acknowledged (its concurrency slot is already free
//! by then: see `Dispatcher::spawn`). One background loop sends whatever finished while the
//! previous batch was in flight as one FINISH script per queue (XACK and deletion of all the
//! entries, one HINCRBY of the queue's `processed` counter, locks released), so under load a
//! round trip settles tens of tasks, and an idle worker still acks each task at once: nothing
//! waits for a batch to fill.
//!
//! Delivery is unchanged: an entry is acknowledged only after its handler returned, and a
//! crash before the ack leaves it pending, to be taken over (at least once, never lost).

use crate::connection::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::{
    keys::{Keys, QueueName},
    scripts::{self, Finished},
};

/// The most entries settled by one script call (Lua's `unpack` has a limit near 8,000).
const MAX_BATCH: usize = 1000;

/// A finished entry to acknowledge.
#[derive(Debug)]
pub(crate) struct Ack {
    pub queue: QueueName,
    /// The entry, and the uniqueness lock its task holds, released with the ack (a task with
    /// an id leaves its done marker then).
    pub entry: Finished,
}

/// Why an entry was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AckError {
    /// The FINISH call failed: the entry stays pending.
    #[error("the FINISH script failed")]
    Redis(#[source] redis::RedisError),
    /// The loop ended (the worker is stopping).
    #[error("the acknowledging loop has stopped")]
    Stopped,
}

type Request = (Ack, oneshot::Sender<Result<(), AckError>>);

/// The handle tasks use to have their entries acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct Acker {
    requests: mpsc::UnboundedSender<Request>,
}

impl Acker {
    /// Starts the batching loop on `conn`, for the queues of `keys`. It ends when every
    /// handle is dropped.
    pub fn start(conn: Connection, keys: Keys) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, keys, receiver));
        Self { requests }
    }

    /// Acknowledges `ack`, batched with others finishing at the same time. It is handed to
    /// the loop now (dropping the future does not withdraw it); the future only waits for the
    /// outcome, so it holds no copy of `ack`.
    pub fn ack(&self, ack: Ack) -> impl Future<Output = Result<(), AckError>> + use<> {
        let (done, result) = oneshot::channel();
        let sent = self.requests.send((ack, done)).is_ok();
        async move {
            if !sent {
                return Err(AckError::Stopped);
            }
            result.await.unwrap_or(Err(AckError::Stopped))
        }
    }
}

async fn run(mut conn: Connection, keys: Keys, mut receiver: mpsc::UnboundedReceiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // One call per queue: the batch sorted by queue (stably, so each queue's entries keep
        // their order; a batch already in order, as one queue's is, is left so), then taken a
        // run at a time.
        if !batch.is_sorted_by(|a, b| a.0.queue <= b.0.queue) {
            batch.sort_by(|a, b| a.0.queue.cmp(&b.0.queue));
        }
        while let Some((first, _)) = batch.first() {
            let queue = first.queue.clone();
            let run = batch
                .iter()
                .take_while(|(ack, _)| ack.queue == queue)
                .count();
            let result = finish(&mut conn, &keys, &queue, &batch[..run])
                .await
                .map_err(AckError::Redis);
            for (_, done) in batch.drain(..run) {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// One FINISH script call for `requests`, all of entries of `queue`'s stream.
async fn finish(
    conn: &mut Connection,
    keys: &Keys,
    queue: &QueueName,
    requests: &[Request],
) -> redis::RedisResult<()> {
    scripts::finish(
        conn,
        keys,
        queue,
        requests.iter().map(|(ack, _)| &ack.entry),
    )
    .await
}

#[cfg(test)]
#[path = "ack_tests.rs"]
mod tests;
