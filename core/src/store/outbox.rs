//! Rows of `task_outbox`: tasks committed with their data and not yet published to Redis.
//!
//! A row is published under a lease (`leased_until`), never under a lock: claiming rows is one
//! short statement that commits at once, so no connection or transaction is held while Redis
//! is called. A row whose lease has run out can be claimed again by any server.

use std::time::Duration;

use simplebank_queue::Task;
use time::OffsetDateTime;

use super::{Store, StoreError};

/// An outbox row held under a lease: its id and the lease's end as written by the holder.
/// The end doubles as the holder's mark: a later claim writes another, so a release can tell
/// whether the row is still its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLease {
    /// The row's id in `task_outbox`.
    pub id: i64,
    /// The end of the lease, exactly as the holder wrote it.
    pub until: OffsetDateTime,
}

impl Store {
    /// Claims up to `limit` outbox rows whose lease has run out, oldest first, leasing them
    /// for `lease`. One statement (its own transaction); `SKIP LOCKED` keeps two servers
    /// claiming at the same moment from waiting on, or claiming, each other's rows.
    ///
    /// Its span is at DEBUG: the relay claims every `OUTBOX_RELAY_INTERVAL` and almost always
    /// finds nothing, and at INFO each claim was a trace of its own, one a second per server
    /// (found by an outside attack). The tasks it relays keep their own traces.
    #[tracing::instrument(
        name = "UPDATE task_outbox",
        level = "debug",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn lease_outbox(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<(OutboxLease, Task)>, StoreError> {
        self.answer(async |conn| {
            let mut rows = sqlx::query!(
                "UPDATE task_outbox SET leased_until = now() + make_interval(secs => $2) \
                 WHERE id IN ( \
                   SELECT id FROM task_outbox WHERE leased_until <= now() \
                   ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, leased_until, task AS \"task: sqlx::types::Json<Task>\"",
                limit,
                lease.as_secs_f64(),
            )
            .fetch_all(&mut *conn)
            .await?;
            rows.sort_unstable_by_key(|row| row.id);
            Ok(rows
                .into_iter()
                .map(|row| {
                    let lease = OutboxLease {
                        id: row.id,
                        until: row.leased_until,
                    };
                    (lease, row.task.0)
                })
                .collect())
        })
        .await
    }

    /// Deletes published rows.
    #[tracing::instrument(
        name = "DELETE task_outbox",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "DELETE")
    )]
    pub async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.answer(async |conn| {
            sqlx::query!("DELETE FROM task_outbox WHERE id = ANY($1)", ids)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Ends the lease of rows that could not be published, so the next relay round takes them.
    /// Only where the lease is still the caller's: a row whose lease ran out and that another
    /// server has claimed since keeps that server's lease. For a call whose own publish failed:
    /// its span is part of the call's trace.
    #[tracing::instrument(
        name = "UPDATE task_outbox",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn release_outbox(&self, leases: &[OutboxLease]) -> Result<(), StoreError> {
        self.answer(async |conn| Self::end_leases(conn, leases).await)
            .await
    }

    /// [`Store::release_outbox`] for the relay, its span at DEBUG as its claim's: while Redis
    /// is down the relay releases what it claimed every round, and each release was a trace of
    /// its own. The task's failed `send` span is in the task's trace.
    #[tracing::instrument(
        name = "UPDATE task_outbox",
        level = "debug",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn relay_release_outbox(&self, leases: &[OutboxLease]) -> Result<(), StoreError> {
        self.answer(async |conn| Self::end_leases(conn, leases).await)
            .await
    }

    async fn end_leases(
        conn: &mut sqlx::PgConnection,
        leases: &[OutboxLease],
    ) -> Result<(), StoreError> {
        let (ids, ends): (Vec<i64>, Vec<OffsetDateTime>) =
            leases.iter().map(|lease| (lease.id, lease.until)).unzip();
        sqlx::query!(
            "UPDATE task_outbox SET leased_until = now() \
             FROM unnest($1::bigint[], $2::timestamptz[]) AS mine(id, until) \
             WHERE task_outbox.id = mine.id AND task_outbox.leased_until = mine.until",
            &ids,
            &ends,
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// How many tasks wait in the outbox.
    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        self.answer(async |conn| {
            Ok(
                sqlx::query_scalar!("SELECT count(*) AS \"count!\" FROM task_outbox")
                    .fetch_one(&mut *conn)
                    .await?,
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, time::Duration};

    use simplebank_queue::Task;

    use crate::{
        store::{Store, outbox::OutboxLease},
        tasks::SendVerifyEmail,
        testing::TestDb,
    };

    const LEASE: Duration = Duration::from_secs(30);

    async fn insert_rows(store: &Store, n: usize) -> BTreeSet<i64> {
        let mut ids = BTreeSet::new();
        for i in 0..n {
            let task = Task::new(&SendVerifyEmail {
                username: format!("user_{i}"),
            })
            .expect("task");
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO task_outbox (task_id, task) VALUES ($1, $2) RETURNING id",
            )
            .bind(task.id())
            .bind(serde_json::to_value(&task).expect("json"))
            .fetch_one(store.pool())
            .await
            .expect("insert");
            ids.insert(id);
        }
        ids
    }

    fn ids(rows: &[(OutboxLease, Task)]) -> BTreeSet<i64> {
        rows.iter().map(|(lease, _)| lease.id).collect()
    }

    /// Two servers (two pools) claiming at the same moment never claim the same row.
    #[tokio::test]
    async fn concurrent_claims_are_disjoint_and_a_lease_keeps_others_off_until_it_ends() {
        let db = TestDb::create().await;
        let other = Store::connect_lazy(&db.url).expect("a second pool");
        let all = insert_rows(&db.store, 50).await;

        let (a, b) = tokio::join!(
            db.store.lease_outbox(30, LEASE),
            other.lease_outbox(30, LEASE)
        );
        let (a_rows, b_rows) = (a.expect("claim a"), b.expect("claim b"));
        let (a, b) = (ids(&a_rows), ids(&b_rows));
        assert!(a.is_disjoint(&b), "{a:?} and {b:?} overlap");
        assert_eq!(a.union(&b).copied().collect::<BTreeSet<_>>(), all);

        // Everything is leased: nothing more to claim.
        assert!(
            db.store
                .lease_outbox(100, LEASE)
                .await
                .expect("claim")
                .is_empty()
        );

        // Released rows and rows whose lease ran out are claimed again; the rest are not.
        let released: Vec<OutboxLease> = a_rows.iter().take(3).map(|(l, _)| *l).collect();
        db.store.release_outbox(&released).await.expect("release");
        let released: Vec<i64> = released.iter().map(|l| l.id).collect();
        let expired = *b.iter().next().expect("a row");
        sqlx::query(
            "UPDATE task_outbox SET leased_until = now() - interval '1 second' WHERE id = $1",
        )
        .bind(expired)
        .execute(db.store.pool())
        .await
        .expect("expire a lease");
        let again = ids(&other.lease_outbox(100, LEASE).await.expect("claim"));
        let mut expected: BTreeSet<i64> = released.into_iter().collect();
        expected.insert(expired);
        assert_eq!(again, expected);

        // Deleted rows are gone for good.
        let done: Vec<i64> = again.into_iter().collect();
        db.store.delete_outbox(&done).await.expect("delete");
        assert_eq!(
            db.store.outbox_len().await.expect("len"),
            i64::try_from(all.len() - done.len()).expect("len")
        );
    }

    /// A server whose lease ran out (a publish slower than its lease) and was claimed by
    /// another server cannot end the other's lease by releasing its own.
    #[tokio::test]
    async fn a_release_ends_only_the_callers_own_lease() {
        let db = TestDb::create().await;
        let other = Store::connect_lazy(&db.url).expect("a second pool");
        let all = insert_rows(&db.store, 3).await;

        // The first server's lease is over at once; the second claims the rows after it.
        let stale = db
            .store
            .lease_outbox(10, Duration::ZERO)
            .await
            .expect("claim");
        assert_eq!(ids(&stale), all);
        let taken = other.lease_outbox(10, LEASE).await.expect("claim again");
        assert_eq!(ids(&taken), all);

        let stale: Vec<OutboxLease> = stale.iter().map(|(l, _)| *l).collect();
        db.store.release_outbox(&stale).await.expect("release");
        assert!(
            db.store
                .lease_outbox(10, LEASE)
                .await
                .expect("claim")
                .is_empty(),
            "the second server's lease still holds"
        );

        // Its own release does end it.
        let taken: Vec<OutboxLease> = taken.iter().map(|(l, _)| *l).collect();
        other.release_outbox(&taken).await.expect("release");
        assert_eq!(
            ids(&db.store.lease_outbox(10, LEASE).await.expect("claim")),
            all
        );
    }
}
