//! Verification records. One per `send_verify_email` task, keyed by the task id. Only a
//! SHA-256 hash of the code is stored; the code itself exists in the email alone. A record
//! notes when its email was sent, so a redelivered task does not send it again.

use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::secret::Secret;

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct VerifyEmail {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub is_used: bool,
    pub created_at: OffsetDateTime,
    pub expired_at: OffsetDateTime,
    pub task_id: String,
    pub email_sent_at: Option<OffsetDateTime>,
}

const COLUMNS: &str =
    "id, username, email, is_used, created_at, expired_at, task_id, email_sent_at";

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
    #[error("the code has expired")]
    Expired,
    #[error("the code was already used")]
    AlreadyUsed,
    #[error("the code was sent to an address the user no longer has")]
    AddressChanged,
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
        let inserted: Option<VerifyEmail> = sqlx::query_as(&format!(
            "INSERT INTO verify_emails (username, email, secret_code_hash, task_id, expired_at) \
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) \
             ON CONFLICT (task_id) DO NOTHING RETURNING {COLUMNS}"
        ))
        .bind(username)
        .bind(email)
        .bind(hash_code(secret_code.expose()))
        .bind(task_id)
        .bind(expiry.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        match inserted {
            Some(row) => Ok((row, true)),
            None => Ok((
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM verify_emails WHERE task_id = $1"
                ))
                .bind(task_id)
                .fetch_one(&self.pool)
                .await?,
                false,
            )),
        }
    }

    /// Replaces the code of a record whose email was never sent (its code is unknown: only the
    /// hash was kept), restarting its expiry.
    #[tracing::instrument(
        name = "UPDATE verify_emails",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn replace_verify_code(
        &self,
        id: i64,
        secret_code: &Secret<String>,
        expiry: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE verify_emails SET secret_code_hash = $2, \
             expired_at = now() + make_interval(secs => $3) \
             WHERE id = $1 AND email_sent_at IS NULL",
        )
        .bind(id)
        .bind(hash_code(secret_code.expose()))
        .bind(expiry.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Notes that the record's email went out.
    #[tracing::instrument(
        name = "UPDATE verify_emails",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn mark_verify_email_sent(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE verify_emails SET email_sent_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Checks `secret_code` for record `id` and, if it is good, marks the record used and the
    /// user's address verified, in one transaction. The comparison is constant-time.
    #[tracing::instrument(
        name = "verify email",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn verify_email(&self, id: i64, secret_code: &str) -> Result<(), VerifyError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let row: Option<(Vec<u8>, bool, bool, bool)> = sqlx::query_as(
            "SELECT v.secret_code_hash, v.is_used, v.expired_at < now(), v.email <> u.email \
             FROM verify_emails v JOIN users u ON u.username = v.username \
             WHERE v.id = $1 FOR UPDATE OF v",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((stored, used, expired, address_changed)) = row else {
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
        sqlx::query("UPDATE verify_emails SET is_used = true WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE users SET is_email_verified = true \
             WHERE username = (SELECT username FROM verify_emails WHERE id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    pub async fn verify_emails_of(&self, username: &str) -> Result<Vec<VerifyEmail>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM verify_emails WHERE username = $1 ORDER BY id"
        ))
        .bind(username)
        .fetch_all(&self.pool)
        .await?)
    }
}
