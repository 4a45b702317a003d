//! Rows of `task_outbox`: tasks committed with their data and not yet published to Redis.
//!
//! A row is published under a lease (`leased_until`), never under a lock: claiming rows is one
//! short statement that commits at once, so no connection or transaction is held while Redis
//! is called. A row whose lease has run out can be claimed again by any server.

use std::time::Duration;

use crate::task::Task;

use super::{Store, StoreError};

impl Store {
    /// Claims up to `limit` outbox rows whose lease has run out, oldest first, leasing them
    /// for `lease`. One statement (its own transaction); `SKIP LOCKED` keeps two servers
    /// claiming at the same moment from waiting on, or claiming, each other's rows.
    #[tracing::instrument(
        name = "UPDATE task_outbox",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn lease_outbox(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<(i64, Task)>, StoreError> {
        let mut rows: Vec<(i64, sqlx::types::Json<Task>)> = sqlx::query_as(
            "UPDATE task_outbox SET leased_until = now() + make_interval(secs => $2) \
             WHERE id IN ( \
               SELECT id FROM task_outbox WHERE leased_until <= now() \
               ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, task",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.sort_unstable_by_key(|(id, _)| *id);
        Ok(rows.into_iter().map(|(id, task)| (id, task.0)).collect())
    }

    /// Deletes published rows.
    #[tracing::instrument(
        name = "DELETE task_outbox",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "DELETE")
    )]
    pub async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM task_outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends the lease of rows that could not be published, so the next relay round takes them.
    #[tracing::instrument(
        name = "UPDATE task_outbox",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn release_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        sqlx::query("UPDATE task_outbox SET leased_until = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How many tasks wait in the outbox.
    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM task_outbox")
            .fetch_one(&self.pool)
            .await?)
    }
}
