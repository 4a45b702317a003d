//! Verification records. One per `send_verify_email` task, keyed by the task id. Only a
//! SHA-256 hash of the code is stored; the code itself exists in the email alone (the worker
//! derives it from the task id with a keyed MAC). A record notes when its email was sent, so a
//! redelivered task does not send it again.

use sqlx::Connection as _;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::secret::Secret;

use super::{Store, StoreError};

/// A verification record (a row of `verify_emails`), without its code hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyEmail {
    /// The record's id, sent in the link with the code.
    pub id: i64,
    /// The user to verify.
    pub username: String,
    /// The address the code was sent to; verifying applies only while the user still has it.
    pub email: String,
    /// Whether the code has already verified the address.
    pub is_used: bool,
    /// When the record was made.
    pub created_at: OffsetDateTime,
    /// When the code stops working.
    pub expired_at: OffsetDateTime,
    /// The id of the `send_verify_email` task the record belongs to (one record per task).
    pub task_id: String,
    /// When the email was sent, so a redelivered task does not send it again.
    pub email_sent_at: Option<OffsetDateTime>,
}

/// SHA-256 of a code: what the database keeps. Codes carry 190 random bits, so a fast hash is
/// enough (no dictionary to guess from).
pub fn hash_code(code: &str) -> Vec<u8> {
    Sha256::digest(code.as_bytes()).to_vec()
}

/// Why a verification did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Unknown id or wrong code: deliberately one case, so ids cannot be probed.
    #[error("verification not found")]
    NotFound,
    /// The code is right but past its `expired_at`.
    #[error("the code has expired")]
    Expired,
    /// The code has already verified its address.
    #[error("the code was already used")]
    AlreadyUsed,
    /// The user changed their address after the code was sent.
    #[error("the code was sent to an address the user no longer has")]
    AddressChanged,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for VerifyError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(err.into())
    }
}

impl Store {
    /// The record of `task_id`, created with the hash of `secret_code` (valid for `expiry`) if
    /// the task has none yet. The flag says whether this call created it.
    ///
    /// While the record's email is unsent, a later call restarts the expiry (a redelivery must
    /// not send a code that is already expired) and stores the hash of its code: the code is
    /// derived from the task, so that is the same hash unless the key was rotated in between,
    /// and then the newest email is the one whose code works.
    #[tracing::instrument(
        name = "INSERT verify_emails",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT")
    )]
    pub async fn create_verify_email(
        &self,
        task_id: &str,
        username: &str,
        email: &str,
        secret_code: &Secret<String>,
        expiry: Duration,
    ) -> Result<(VerifyEmail, bool), StoreError> {
        self.answer(async |conn| {
            // `created`: whether the statement inserted the row (`xmax = 0`) or updated it.
            let row = sqlx::query!(
                "INSERT INTO verify_emails (username, email, secret_code_hash, task_id, expired_at) \
                 VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) \
                 ON CONFLICT (task_id) DO UPDATE SET \
                   secret_code_hash = CASE WHEN verify_emails.email_sent_at IS NULL \
                     THEN EXCLUDED.secret_code_hash ELSE verify_emails.secret_code_hash END, \
                   expired_at = CASE WHEN verify_emails.email_sent_at IS NULL \
                     THEN EXCLUDED.expired_at ELSE verify_emails.expired_at END \
                 RETURNING (xmax = 0) AS \"created!\", id, username, email, is_used, created_at, \
                   expired_at, task_id, email_sent_at",
                username,
                email,
                hash_code(secret_code.expose()),
                task_id,
                expiry.as_secs_f64(),
            )
            .fetch_one(&mut *conn)
            .await?;
            let record = VerifyEmail {
                id: row.id,
                username: row.username,
                email: row.email,
                is_used: row.is_used,
                created_at: row.created_at,
                expired_at: row.expired_at,
                task_id: row.task_id,
                email_sent_at: row.email_sent_at,
            };
            Ok((record, row.created))
        })
        .await
    }

    /// Notes that the record's email went out.
    #[tracing::instrument(
        name = "UPDATE verify_emails",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn mark_verify_email_sent(&self, id: i64) -> Result<(), StoreError> {
        self.answer(async |conn| {
            sqlx::query!(
                "UPDATE verify_emails SET email_sent_at = now() WHERE id = $1",
                id
            )
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
        .await
    }

    /// Checks `secret_code` for record `id` and, if it is good, marks the record used and the
    /// user's address verified, in one transaction. The comparison is constant-time.
    ///
    /// The user row is locked with the record, and the final update names the address the code
    /// was mailed to: an address change committed meanwhile (UpdateUser) is seen, never
    /// overwritten, so a code only ever verifies its own address.
    #[tracing::instrument(
        name = "verify email",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn verify_email(&self, id: i64, secret_code: &str) -> Result<(), VerifyError> {
        self.answer(async |conn| {
            let mut tx = conn.begin().await.map_err(StoreError::from)?;
            let row = sqlx::query!(
                "SELECT v.secret_code_hash, v.is_used, v.expired_at < now() AS \"expired!\", \
                   v.email <> u.email AS \"address_changed!\" \
                 FROM verify_emails v JOIN users u ON u.username = v.username \
                 WHERE v.id = $1 FOR UPDATE OF v, u",
                id,
            )
            .fetch_optional(&mut *tx)
            .await?;
            let Some((stored, used, expired, address_changed)) = row.map(|row| {
                (
                    row.secret_code_hash,
                    row.is_used,
                    row.expired,
                    row.address_changed,
                )
            }) else {
                return Err(VerifyError::NotFound);
            };
            if !bool::from(stored.ct_eq(&hash_code(secret_code))) {
                return Err(VerifyError::NotFound);
            }
            if used {
                return Err(VerifyError::AlreadyUsed);
            }
            if expired {
                return Err(VerifyError::Expired);
            }
            if address_changed {
                return Err(VerifyError::AddressChanged);
            }
            sqlx::query!("UPDATE verify_emails SET is_used = true WHERE id = $1", id)
                .execute(&mut *tx)
                .await?;
            let verified = sqlx::query!(
                "UPDATE users u SET is_email_verified = true FROM verify_emails v \
                 WHERE v.id = $1 AND u.username = v.username AND u.email = v.email",
                id,
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if verified == 0 {
                // (Unreachable while the row lock above holds; kept so no path verifies another
                // address.) The transaction rolls back on drop.
                return Err(VerifyError::AddressChanged);
            }
            tx.commit().await.map_err(StoreError::from)?;
            Ok(())
        })
        .await
    }

    /// Every verification record of `username`, oldest first.
    pub async fn verify_emails_of(&self, username: &str) -> Result<Vec<VerifyEmail>, StoreError> {
        self.answer(async |conn| {
            Ok(sqlx::query_as!(
                VerifyEmail,
                "SELECT id, username, email, is_used, created_at, expired_at, task_id, email_sent_at \
                 FROM verify_emails WHERE username = $1 ORDER BY id",
                username,
            )
            .fetch_all(&mut *conn)
            .await?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::VerifyError;
    use simplebank_queue::Task;

    use crate::{
        domain::UserUpdate,
        secret::Secret,
        tasks::SendVerifyEmail,
        testing::{TestDb, eventually},
    };

    async fn wait_for_lock_waiters(db: &TestDb, n: i64) {
        eventually(
            &format!("{n} backends wait on a lock"),
            Duration::from_secs(30),
            || async move { db.waiting_on_locks().await.is_ok_and(|w| w == n) },
        )
        .await;
    }

    /// The attack: a code for the attacker's own address, used while UpdateUser moves the
    /// account to the victim's address. The interleaving is forced: UpdateUser is held (by a
    /// lock on the outbox) after it changed the address and before it commits, the
    /// verification runs into it, then UpdateUser commits.
    #[tokio::test]
    async fn a_code_never_verifies_an_address_changed_while_it_was_checked() {
        let db = TestDb::create().await;
        sqlx::query(
            "INSERT INTO users (username, hashed_password, full_name, email) \
             VALUES ('mallory', 'x', 'Test User', 'mallory@example.org')",
        )
        .execute(db.store.pool())
        .await
        .expect("user");
        let code = Secret::new("c".repeat(32));
        let (record, _) = db
            .store
            .create_verify_email(
                "t1",
                "mallory",
                "mallory@example.org",
                &code,
                Duration::from_secs(3600),
            )
            .await
            .expect("record");

        let mut blocker = db.store.pool().begin().await.expect("begin");
        sqlx::query("LOCK TABLE task_outbox IN SHARE MODE")
            .execute(&mut *blocker)
            .await
            .expect("lock");
        let session = db.live_session("mallory").await;
        let update = {
            let store = db.store.clone();
            tokio::spawn(async move {
                let update = UserUpdate::parse(None, Some("victim@example.com"), None)
                    .expect("a field")
                    .expect("valid");
                let task = Task::new(&SendVerifyEmail {
                    username: "mallory".into(),
                })
                .expect("task");
                store
                    .update_user("mallory", &update, None, None, &task, session)
                    .await
            })
        };
        wait_for_lock_waiters(&db, 1).await;
        let verify = {
            let store = db.store.clone();
            let code = code.expose().clone();
            tokio::spawn(async move { store.verify_email(record.id, &code).await })
        };
        wait_for_lock_waiters(&db, 2).await;
        blocker.commit().await.expect("release");

        update
            .await
            .expect("joins")
            .expect("address changed")
            .expect("the session is live");
        let verified = verify.await.expect("joins");
        let user = db.store.get_user("mallory").await.expect("user");
        assert_eq!(user.email, "victim@example.com");
        assert!(
            !user.is_email_verified,
            "the victim's address was marked verified: {verified:?}"
        );
        assert!(
            matches!(verified, Err(VerifyError::AddressChanged)),
            "{verified:?}"
        );
        let used: bool = sqlx::query_scalar("SELECT is_used FROM verify_emails WHERE id = $1")
            .bind(record.id)
            .fetch_one(db.store.pool())
            .await
            .expect("record");
        assert!(!used, "a refused code stays unused");
    }
}
