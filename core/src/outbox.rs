//! The transactional outbox: a task is written in the same transaction as its data, then
//! published to Redis and deleted. If publishing fails (Redis down or hung, crash after
//! commit), the row stays and a relay loop publishes it later.
//!
//! No database connection or transaction is ever held while Redis is called: a row is owned
//! through a lease (`task_outbox.leased_until`), not a row lock.
//! - The request path writes its row already leased for [`PUBLISH_GRACE`], publishes it with
//!   no connection held, then deletes it (or ends the lease if Redis failed).
//! - A relay claims rows whose lease ran out in one short statement (leasing them for
//!   [`RELAY_LEASE`]), publishes them with no connection held, then deletes what it published
//!   and ends the lease of the rest.
//!
//! A lease that runs out mid-publish (a publish slower than the lease, a server stopped
//! between XADD and DELETE) lets another server publish the row again: delivery is at least
//! once. Tasks carry their id as a uniqueness lock, so a second publish while the first is
//! still queued or running adds nothing; after it finished, handlers key their effects on the
//! task id.

use std::time::Duration;

use simplebank_queue::{PublishError, Publisher, Task};

use crate::store::{Store, StoreError, outbox::OutboxLease};

/// How long a row written by a request is left to that request's own [`publish_row`] before
/// a relay may take it. Callers bound the whole of `publish_row` by it, so a relay repeats
/// only a publish that was cut off.
pub const PUBLISH_GRACE: Duration = Duration::from_secs(10);

/// How long [`publish_row`] waits on Redis before it gives up and leaves the row to the relay.
/// Half the grace: the other half is for the DELETE (or the release) that follows.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a relay owns the rows it claimed. A batch stops at the first Redis error, and
/// each command times out after a few seconds, so a batch ends well inside it unless Redis is
/// slow on every row.
pub const RELAY_LEASE: Duration = Duration::from_secs(30);

/// Why an outbox row (or a batch of them) was not published; the rows stay for a later round.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading, deleting or releasing outbox rows failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis refused or failed the publish.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Redis did not answer within [`PUBLISH_TIMEOUT`].
    #[error("Redis did not answer within {PUBLISH_TIMEOUT:?}")]
    Timeout,
}

/// Publishes `task`, written by the caller as outbox row `row` (leased for [`PUBLISH_GRACE`]),
/// then deletes the row. If Redis fails or does not answer within [`PUBLISH_TIMEOUT`], the
/// lease ends (if still ours), so the relay takes the row at its next round.
pub async fn publish_row(
    store: &Store,
    publisher: &Publisher,
    row: OutboxLease,
    task: &Task,
) -> Result<(), RelayError> {
    let failure = match tokio::time::timeout(PUBLISH_TIMEOUT, publish(publisher, task)).await {
        Ok(Ok(())) => return Ok(store.delete_outbox(&[row.id]).await?),
        Ok(Err(err)) => RelayError::Publish(err),
        Err(_) => RelayError::Timeout,
    };
    // Best effort: if this fails too, the lease runs out by itself.
    let _ = store.release_outbox(&[row]).await;
    Err(failure)
}

/// Claims up to `limit` of the oldest unleased outbox rows and publishes them; returns how
/// many were published.
pub async fn relay_batch(
    store: &Store,
    publisher: &Publisher,
    limit: i64,
) -> Result<usize, RelayError> {
    let rows = store.lease_outbox(limit, RELAY_LEASE).await?;
    let mut published = Vec::with_capacity(rows.len());
    let mut failure = None;
    for (row, task) in &rows {
        match publish(publisher, task).await {
            Ok(()) => published.push(row.id),
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    if !published.is_empty() {
        store.delete_outbox(&published).await?;
    }
    match failure {
        Some(err) => {
            let rest: Vec<OutboxLease> = rows[published.len()..]
                .iter()
                .map(|(row, _)| *row)
                .collect();
            store.relay_release_outbox(&rest).await?;
            Err(err.into())
        }
        None => Ok(published.len()),
    }
}

async fn publish(publisher: &Publisher, task: &Task) -> Result<(), PublishError> {
    match publisher.publish(task).await {
        Ok(_) => Ok(()),
        // Its uniqueness rule refuses it: that is the producer's intent, not a failure.
        Err(PublishError::Conflict { task_id, what }) => {
            tracing::info!(%task_id, what, "outbox task dropped: a task with the same lock is live");
            Ok(())
        }
        Err(err) => Err(err),
    }
}
