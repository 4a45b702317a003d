//! Verification records. One per `send_verify_email` task, keyed by the task id: a redelivered
//! task gets the row (and the code) of its first delivery.

use time::OffsetDateTime;

use crate::secret::Secret;

use super::{Store, StoreError};

#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct VerifyEmail {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub secret_code: String,
    pub is_used: bool,
    pub created_at: OffsetDateTime,
    pub expired_at: OffsetDateTime,
    pub task_id: String,
}

impl std::fmt::Debug for VerifyEmail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyEmail")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("is_used", &self.is_used)
            .field("task_id", &self.task_id)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "id, username, email, secret_code, is_used, created_at, expired_at, task_id";

impl Store {
    /// The record of `task_id`, created with `secret_code` if the task has none yet.
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
    ) -> Result<VerifyEmail, StoreError> {
        let inserted: Option<VerifyEmail> = sqlx::query_as(&format!(
            "INSERT INTO verify_emails (username, email, secret_code, task_id) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (task_id) DO NOTHING RETURNING {COLUMNS}"
        ))
        .bind(username)
        .bind(email)
        .bind(secret_code.expose())
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?;
        match inserted {
            Some(row) => Ok(row),
            None => Ok(sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM verify_emails WHERE task_id = $1"
            ))
            .bind(task_id)
            .fetch_one(&self.pool)
            .await?),
        }
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
