//! The transactional outbox: a task is written in the same transaction as its data, then
//! published to Redis and deleted. If publishing fails (Redis down, crash after commit), the row
//! stays and a relay loop publishes it later.
//!
//! Both paths lock the rows they publish (`FOR UPDATE SKIP LOCKED`): the request path its own
//! row, the relay the oldest rows. A row is therefore published by one of them, and deleted in
//! the same transaction that held its lock. A crash between XADD and commit leaves the row for
//! the relay, which publishes it again: delivery is at least once, and handlers key their
//! effects on the task id.

use crate::{
    store::{Store, StoreError},
    task::{PublishError, Publisher},
};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Publishes the outbox row `id`, unless another relay holds it or it is gone.
/// Returns whether this call published it.
pub async fn publish_row(
    store: &Store,
    publisher: &Publisher,
    id: i64,
) -> Result<bool, RelayError> {
    Ok(relay(store, publisher, Some(id), 1).await? == 1)
}

/// Publishes up to `limit` of the oldest unlocked outbox rows; returns how many.
pub async fn relay_batch(
    store: &Store,
    publisher: &Publisher,
    limit: i64,
) -> Result<usize, RelayError> {
    relay(store, publisher, None, limit).await
}

async fn relay(
    store: &Store,
    publisher: &Publisher,
    only: Option<i64>,
    limit: i64,
) -> Result<usize, RelayError> {
    let batch = store.lock_outbox(only, limit).await?;
    let mut published = Vec::with_capacity(batch.rows.len());
    let mut failure = None;
    for (id, task) in &batch.rows {
        match publisher.publish(task).await {
            Ok(_) => published.push(*id),
            // Its uniqueness rule refuses it: that is the producer's intent, not a failure.
            Err(PublishError::Conflict { task_id, what }) => {
                tracing::info!(%task_id, what, "outbox task dropped: a task with the same lock is live");
                published.push(*id);
            }
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    batch.finish(&published).await?;
    match failure {
        Some(err) => Err(err.into()),
        None => Ok(published.len()),
    }
}
