//! Users. Sign-up writes the user and its `send_verify_email` task in one transaction, so a task
//! exists exactly when its user does.

use time::OffsetDateTime;

use crate::{domain::NewUser, secret::Secret, task::Task};

use super::{Store, StoreError};

/// A stored user, as the application sees it. The password hash is deliberately not here.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    pub username: String,
    pub full_name: String,
    pub email: String,
    pub password_changed_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub is_email_verified: bool,
}

/// What sign-up's single statement returns.
#[derive(sqlx::FromRow)]
struct Created {
    #[sqlx(flatten)]
    user: User,
    outbox_id: i64,
}

const USER_COLUMNS: &str =
    "username, full_name, email, password_changed_at, created_at, is_email_verified";

impl Store {
    /// Inserts `user` and an outbox row holding `task`, in one transaction. Returns the stored
    /// user and the outbox row id, which the caller publishes after commit.
    #[tracing::instrument(
        name = "INSERT users, task_outbox",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT")
    )]
    pub async fn create_user(
        &self,
        user: &NewUser,
        hashed_password: &Secret<String>,
        task: &Task,
    ) -> Result<(User, i64), StoreError> {
        let encoded = serde_json::to_value(task).map_err(StoreError::BadTask)?;
        // One statement, so one round trip and one implicit transaction: both rows or neither
        // (a duplicate username or email fails the whole statement).
        let created: Created = sqlx::query_as(&format!(
            "WITH created AS ( \
               INSERT INTO users (username, hashed_password, full_name, email) \
               VALUES ($1, $2, $3, $4) RETURNING {USER_COLUMNS}), \
             queued AS ( \
               INSERT INTO task_outbox (task_id, task) VALUES ($5, $6) RETURNING id) \
             SELECT {USER_COLUMNS}, queued.id AS outbox_id FROM created, queued"
        ))
        .bind(user.username.as_str())
        .bind(hashed_password.expose())
        .bind(user.full_name.as_str())
        .bind(user.email.as_str())
        .bind(&task.id)
        .bind(encoded)
        .fetch_one(&self.pool)
        .await?;
        Ok((created.user, created.outbox_id))
    }

    #[tracing::instrument(
        name = "SELECT users",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT")
    )]
    pub async fn get_user(&self, username: &str) -> Result<User, StoreError> {
        let user = sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        ))
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        Ok(user)
    }
}
