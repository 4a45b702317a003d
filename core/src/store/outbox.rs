//! Rows of `task_outbox`: tasks committed with their data and not yet published to Redis.
//! Readers lock the rows they publish (`FOR UPDATE SKIP LOCKED`), so any number of servers can
//! relay the same table without publishing a row twice while both are alive.

use sqlx::{Postgres, Transaction};

use crate::task::Task;

use super::{Store, StoreError};

/// A locked batch of outbox rows. Rows whose ids are passed to [`OutboxBatch::finish`] are
/// deleted on commit; dropping the batch releases the locks and keeps every row.
#[derive(Debug)]
pub struct OutboxBatch {
    tx: Transaction<'static, Postgres>,
    pub rows: Vec<(i64, Task)>,
}

impl OutboxBatch {
    /// Deletes the `published` rows and commits, releasing the rest.
    pub async fn finish(mut self, published: &[i64]) -> Result<(), StoreError> {
        if !published.is_empty() {
            sqlx::query("DELETE FROM task_outbox WHERE id = ANY($1)")
                .bind(published)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Locks up to `limit` unlocked outbox rows, oldest first; `only` restricts it to one row id.
    #[tracing::instrument(
        name = "SELECT task_outbox FOR UPDATE SKIP LOCKED",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT")
    )]
    pub async fn lock_outbox(
        &self,
        only: Option<i64>,
        limit: i64,
    ) -> Result<OutboxBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, sqlx::types::Json<Task>)> = sqlx::query_as(
            "SELECT id, task FROM task_outbox \
             WHERE ($1::bigint IS NULL OR id = $1) \
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(only)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        Ok(OutboxBatch {
            tx,
            rows: rows.into_iter().map(|(id, task)| (id, task.0)).collect(),
        })
    }

    /// How many tasks wait in the outbox.
    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM task_outbox")
            .fetch_one(&self.pool)
            .await?)
    }
}
