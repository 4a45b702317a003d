//! What the worker knows of its queues' pause flags (`{ns:q}:paused`, see the `pause`
//! module): a loop reads them all every [`REFRESH`] (one pipelined EXISTS per queue; on a
//! Redis Cluster, where the flags are in different slots, one EXISTS at a time) and publishes
//! the result; fetch and reclaim look at the last result, an in-memory read, so the
//! drain pays no round trip for it. Until the first refresh succeeds every queue counts as
//! paused: a worker started while a queue is paused never reads it, even once.
//!
//! Bound: a refresh every 250 ms, and blocking reads of at most 500 ms (`MAX_BLOCK`), so the
//! last read of a queue that includes it starts at most 250 ms and ends at most 750 ms after
//! it was paused (plus round trips and scheduling delays).

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    connection::Connection,
    keys::{Keys, QueueName},
    report,
};

/// How often the pause flags are read.
pub(crate) const REFRESH: Duration = Duration::from_millis(250);

/// The pause state of the worker's queues, by index in its queue list; `None` until known.
type State = Option<Arc<[bool]>>;

/// A view of the worker's queues' pause flags.
#[derive(Debug, Clone)]
pub(crate) struct Paused(watch::Receiver<State>);

/// The state at one moment.
#[derive(Debug)]
pub(crate) struct Snapshot(State);

impl Snapshot {
    /// Whether queue `index` may be read: known and not paused.
    pub(crate) fn is_open(&self, index: usize) -> bool {
        self.0
            .as_ref()
            .is_some_and(|paused| !paused.get(index).copied().unwrap_or(true))
    }
}

impl Paused {
    /// The state now.
    pub(crate) fn now(&self) -> Snapshot {
        Snapshot(self.0.borrow().clone())
    }

    /// Waits until the state changes (or forever, once the refresh loop ended).
    pub(crate) async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Starts the refresh loop for `queues` (until `stop`); returns its view.
pub(crate) fn watch(
    conn: Connection,
    keys: Keys,
    queues: Vec<QueueName>,
    stop: CancellationToken,
) -> Paused {
    let (state, view) = watch::channel(None);
    tokio::spawn(refresh(conn, keys, queues, state, stop));
    Paused(view)
}

async fn refresh(
    mut conn: Connection,
    keys: Keys,
    queues: Vec<QueueName>,
    state: watch::Sender<State>,
    stop: CancellationToken,
) {
    let mut pipe = redis::pipe();
    for queue in &queues {
        pipe.cmd("EXISTS").arg(keys.paused(queue));
    }
    let mut failing = false;
    let mut ticks = tokio::time::interval(REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let flags = if conn.is_cluster() {
            read_each(&mut conn, &keys, &queues).await
        } else {
            pipe.query_async::<Vec<bool>>(&mut conn).await
        };
        let flags: Vec<bool> = match flags {
            Ok(flags) => flags,
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %report::chain(&err), "cannot read the pause flags; keeping the last known state");
                    failing = true;
                }
                continue;
            }
        };
        failing = false;
        state.send_if_modified(|known| {
            if known.as_deref() == Some(flags.as_slice()) {
                return false;
            }
            for (i, (queue, paused)) in queues.iter().zip(&flags).enumerate() {
                let was = known.as_ref().and_then(|k| k.get(i).copied());
                match (was, *paused) {
                    (Some(false) | None, true) => {
                        tracing::info!(queue = %queue, "queue is paused: not reading it");
                    }
                    (Some(true), false) => {
                        tracing::info!(queue = %queue, "queue resumed: reading it")
                    }
                    _ => {}
                }
            }
            *known = Some(flags.into());
            true
        });
    }
}

/// The flags one EXISTS at a time: a cluster refuses a pipeline across slots.
async fn read_each(
    conn: &mut Connection,
    keys: &Keys,
    queues: &[QueueName],
) -> redis::RedisResult<Vec<bool>> {
    let mut flags = Vec::with_capacity(queues.len());
    for queue in queues {
        flags.push(
            redis::cmd("EXISTS")
                .arg(keys.paused(queue))
                .query_async(&mut *conn)
                .await?,
        );
    }
    Ok(flags)
}
