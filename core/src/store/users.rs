//! Users. Sign-up writes the user and its `send_verify_email` task in one transaction, so a task
//! exists exactly when its user does.

use sqlx::Connection as _;
use std::time::Duration;

use time::OffsetDateTime;

use uuid::Uuid;

use simplebank_queue::Task;

use crate::{
    domain::{NewUser, UserUpdate},
    secret::Secret,
};

use super::{Store, StoreError, outbox::OutboxLease};

/// A stored user, as the application sees it. The password hash is deliberately not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The primary key.
    pub username: String,
    /// The person's name.
    pub full_name: String,
    /// The current address, verified or not.
    pub email: String,
    /// When the password was last changed (year 1 if it never was).
    pub password_changed_at: OffsetDateTime,
    /// When the user signed up.
    pub created_at: OffsetDateTime,
    /// Whether the current address has been verified.
    pub is_email_verified: bool,
}

/// A user with their password hash, for sign-in only.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The user.
    pub user: User,
    /// The argon2id hash of their password, as a PHC string.
    pub hashed_password: Secret<String>,
}

/// How often addresses may change (each change mails the new address): per user, and per
/// address over all users, within a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmailChangeLimits {
    /// Changes one user may make within the window.
    pub per_user: u32,
    /// Changes concerning one address (any case), to it or away from it, by any users, within
    /// the window.
    pub per_address: u32,
    /// The window.
    pub window: Duration,
}

impl EmailChangeLimits {
    /// The defaults: 3 changes a user, 3 changes concerning an address, a day.
    pub const DEFAULT: Self = Self {
        per_user: 3,
        per_address: 3,
        window: Duration::from_secs(24 * 60 * 60),
    };
}

impl Default for EmailChangeLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Whose limit an address change reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailChangeLimit {
    /// The user's own changes.
    User,
    /// The changes concerning the old or the new address.
    Address,
}

impl std::fmt::Display for EmailChangeLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::User => "by this account",
            Self::Address => "concerning this address",
        })
    }
}

/// What an update did besides changing the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// The user as stored after the update.
    pub user: User,
    /// The outbox row of the new address's verification task, when the address changed.
    pub outbox: Option<OutboxLease>,
    /// Other sessions ended by a password change.
    pub sessions_ended: u64,
}

impl Store {
    /// Inserts `user` and an outbox row holding `task`, in one transaction. Returns the stored
    /// user and the outbox row with its lease, which the caller publishes after commit.
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
    ) -> Result<(User, OutboxLease), StoreError> {
        self.answer(async |conn| {
            let encoded = serde_json::to_value(task).map_err(StoreError::BadTask)?;
            // One statement, so one round trip and one implicit transaction: both rows or neither
            // (a duplicate username or email fails the whole statement).
            // The columns of CTEs are of unknown nullability to sqlx: `!` says what the tables say.
            let created = sqlx::query!(
                "WITH created AS ( \
                   INSERT INTO users (username, hashed_password, full_name, email) \
                   VALUES ($1, $2, $3, $4) \
                   RETURNING username, full_name, email, password_changed_at, created_at, \
                     is_email_verified), \
                 queued AS ( \
                   INSERT INTO task_outbox (task_id, task, leased_until) \
                   VALUES ($5, $6, clock_timestamp() + make_interval(secs => $7)) \
                   RETURNING id, leased_until) \
                 SELECT username AS \"username!\", full_name AS \"full_name!\", \
                   email AS \"email!\", password_changed_at AS \"password_changed_at!\", \
                   created_at AS \"created_at!\", is_email_verified AS \"is_email_verified!\", \
                   queued.id AS \"id!\", queued.leased_until AS \"leased_until!\" \
                 FROM created, queued",
                user.username.as_str(),
                hashed_password.expose(),
                user.full_name.as_str(),
                user.email.as_str(),
                task.id(),
                encoded,
                // Leased to this request's own publish after commit (see `crate::outbox`), from
                // the insert itself: now() is the transaction's start, before any wait on a lock.
                crate::outbox::PUBLISH_GRACE.as_secs_f64(),
            )
            .fetch_one(&mut *conn)
            .await?;
            let user = User {
                username: created.username,
                full_name: created.full_name,
                email: created.email,
                password_changed_at: created.password_changed_at,
                created_at: created.created_at,
                is_email_verified: created.is_email_verified,
            };
            let outbox = OutboxLease {
                id: created.id,
                until: created.leased_until,
            };
            Ok((user, outbox))
        })
        .await
    }

    #[tracing::instrument(
        name = "SELECT users",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT")
    )]
    /// The user `username`; [`StoreError::NotFound`] if there is none.
    pub async fn get_user(&self, username: &str) -> Result<User, StoreError> {
        self.answer(async |conn| {
            let user = sqlx::query_as!(
                User,
                "SELECT username, full_name, email, password_changed_at, created_at, \
                   is_email_verified \
                 FROM users WHERE username = $1",
                username,
            )
            .fetch_one(&mut *conn)
            .await?;
            Ok(user)
        })
        .await
    }
}

impl Store {
    /// The user and password hash of `username`, if there is one.
    #[tracing::instrument(
        name = "SELECT users",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT")
    )]
    pub async fn credentials(&self, username: &str) -> Result<Option<Credentials>, StoreError> {
        self.answer(async |conn| {
            let row = sqlx::query!(
                "SELECT username, full_name, email, password_changed_at, created_at, \
                   is_email_verified, hashed_password \
                 FROM users WHERE username = $1",
                username,
            )
            .fetch_optional(&mut *conn)
            .await?;
            Ok(row.map(|row| Credentials {
                user: User {
                    username: row.username,
                    full_name: row.full_name,
                    email: row.email,
                    password_changed_at: row.password_changed_at,
                    created_at: row.created_at,
                    is_email_verified: row.is_email_verified,
                },
                hashed_password: Secret::new(row.hashed_password),
            }))
        })
        .await
    }

    /// Applies `update` to `username` in one transaction, made from the live session
    /// `session`; `None` if that session has ended (or is not the user's). A new address
    /// (different from the stored one) is stored unverified and `verify_task` goes into the
    /// outbox with it, leased to the caller's publish after commit like sign-up's; a new
    /// password (`hashed_password`) moves `password_changed_at` and ends every session of the
    /// user but `session`.
    ///
    /// A change of address is refused with [`StoreError::TooManyEmailChanges`] past the
    /// store's [`EmailChangeLimits`]; counted under the user's row lock, so concurrent
    /// changes of one user are counted one after the other.
    ///
    /// The session is checked again under the user's row lock, because a password change from
    /// another session may have ended it since the caller's check; its share lock keeps a
    /// sign-out from ending it until the update commits. `confirmed`, the stored hash the
    /// caller checked the user's current password against: the update is made only while it
    /// is still the stored one ([`StoreError::PasswordChanged`] otherwise), so that a
    /// confirmation never outlives the password it confirmed, however that was changed.
    #[tracing::instrument(
        name = "UPDATE users",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn update_user(
        &self,
        username: &str,
        update: &UserUpdate,
        hashed_password: Option<&Secret<String>>,
        confirmed: Option<&Secret<String>>,
        verify_task: &Task,
        session: Uuid,
    ) -> Result<Option<Updated>, StoreError> {
        self.answer(async |conn| {
            let new_email = update.email.as_ref().map(|e| e.as_str());
            let mut tx = conn.begin().await?;
            let stored = sqlx::query!(
                "SELECT email, hashed_password FROM users WHERE username = $1 FOR UPDATE",
                username
            )
            .fetch_one(&mut *tx)
            .await?;
            if confirmed.is_some_and(|hash| *hash.expose() != stored.hashed_password) {
                return Err(StoreError::PasswordChanged);
            }
            let old_email = stored.email;
            let live = sqlx::query_scalar!(
                "SELECT revoked_at IS NULL AND expires_at > now() AS \"live!\" FROM sessions \
                 WHERE id = $1 AND username = $2 FOR SHARE",
                session,
                username,
            )
            .fetch_optional(&mut *tx)
            .await?;
            if live != Some(true) {
                return Ok(None);
            }
            let email_changed = new_email.is_some_and(|new| new != old_email);
            if let (true, Some(new)) = (email_changed, new_email) {
                self.count_email_change(&mut tx, username, &old_email, new)
                    .await?;
            }
            let user = sqlx::query_as!(
                User,
                "UPDATE users SET \
                   full_name = COALESCE($2, full_name), \
                   email = COALESCE($3, email), \
                   is_email_verified = is_email_verified AND NOT $4, \
                   hashed_password = COALESCE($5, hashed_password), \
                   password_changed_at = CASE WHEN $5 IS NULL THEN password_changed_at ELSE now() END \
                 WHERE username = $1 \
                 RETURNING username, full_name, email, password_changed_at, created_at, \
                   is_email_verified",
                username,
                update.full_name.as_ref().map(|n| n.as_str()),
                new_email,
                email_changed,
                hashed_password.map(|h| h.expose().as_str()),
            )
            .fetch_one(&mut *tx)
            .await?;
            // The lease counts from the insert (clock_timestamp), not from the transaction's start
            // (now()), which precedes the wait for the row lock above.
            let outbox = if email_changed {
                let encoded = serde_json::to_value(verify_task).map_err(StoreError::BadTask)?;
                Some(
                    sqlx::query_as!(
                        OutboxLease,
                        "INSERT INTO task_outbox (task_id, task, leased_until) \
                         VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) \
                         RETURNING id, leased_until AS until",
                        verify_task.id(),
                        encoded,
                        crate::outbox::PUBLISH_GRACE.as_secs_f64(),
                    )
                    .fetch_one(&mut *tx)
                    .await?,
                )
            } else {
                None
            };
            let sessions_ended = match hashed_password {
                Some(_) => super::sessions::revoke_others(&mut tx, username, session).await?,
                None => 0,
            };
            tx.commit().await?;
            Ok(Some(Updated {
                user,
                outbox,
                sessions_ended,
            }))
        })
        .await
    }

    /// Counts a change of `username`'s address from `old` to `new` against the limits, or
    /// refuses it: the user's changes, and for each of the two addresses the changes to it and
    /// away from it by anyone (a change away counts too, so that accounts signing up with an
    /// address in turn, each then moving away, are bounded as well).
    async fn count_email_change(
        &self,
        tx: &mut sqlx::PgConnection,
        username: &str,
        old: &str,
        new: &str,
    ) -> Result<(), StoreError> {
        let limits = self.email_changes;
        let window = limits.window.as_secs_f64();
        // Changes of other users that concern the same addresses are counted one after the
        // other (the user's own are, under its row lock): in one order, so no deadlock.
        sqlx::query!(
            "SELECT pg_advisory_xact_lock(k) AS \"locked!\" FROM ( \
               SELECT DISTINCT hashtextextended(lower(a COLLATE \"C\"), 0) AS k \
               FROM unnest(ARRAY[$1::text, $2::text]) AS a ORDER BY k) AS keys",
            old,
            new,
        )
        .fetch_all(&mut *tx)
        .await?;
        // Only changes within the window count: the user's older ones go now.
        sqlx::query!(
            "DELETE FROM email_changes \
             WHERE username = $1 AND changed_at <= now() - make_interval(secs => $2)",
            username,
            window,
        )
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query!(
            "SELECT username = $1 AS \"mine!\", \
               lower(old_email COLLATE \"C\") = lower($2 COLLATE \"C\") \
                 OR lower(new_email COLLATE \"C\") = lower($2 COLLATE \"C\") AS \"old!\", \
               lower(old_email COLLATE \"C\") = lower($3 COLLATE \"C\") \
                 OR lower(new_email COLLATE \"C\") = lower($3 COLLATE \"C\") AS \"new!\", \
               EXTRACT(EPOCH FROM changed_at + make_interval(secs => $4) - now())::float8 \
                 AS \"leaves_in!\" \
             FROM email_changes \
             WHERE changed_at > now() - make_interval(secs => $4) \
               AND (username = $1 \
                 OR lower(old_email COLLATE \"C\") IN (lower($2 COLLATE \"C\"), lower($3 COLLATE \"C\")) \
                 OR lower(new_email COLLATE \"C\") IN (lower($2 COLLATE \"C\"), lower($3 COLLATE \"C\"))) \
             ORDER BY changed_at",
            username,
            old,
            new,
            window,
        )
        .fetch_all(&mut *tx)
        .await?;
        let counted = [
            (
                EmailChangeLimit::User,
                limits.per_user,
                rows.iter()
                    .filter(|r| r.mine)
                    .map(|r| r.leaves_in)
                    .collect::<Vec<_>>(),
            ),
            (
                EmailChangeLimit::Address,
                limits.per_address,
                rows.iter().filter(|r| r.new).map(|r| r.leaves_in).collect(),
            ),
            (
                EmailChangeLimit::Address,
                limits.per_address,
                rows.iter().filter(|r| r.old).map(|r| r.leaves_in).collect(),
            ),
        ];
        for (limit, allowed, leaving) in counted {
            if let Some(wait) = over_limit(&leaving, allowed) {
                return Err(StoreError::TooManyEmailChanges {
                    limit,
                    retry_after: Duration::from_secs_f64(wait.clamp(0.0, window)),
                });
            }
        }
        sqlx::query!(
            "INSERT INTO email_changes (username, old_email, new_email) VALUES ($1, $2, $3)",
            username,
            old,
            new,
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// With the counted changes' times to leave the window, oldest first: `None` while fewer than
/// `allowed`, else the seconds until only `allowed - 1` are left (one more may then be made).
fn over_limit(leaving: &[f64], allowed: u32) -> Option<f64> {
    let allowed = usize::try_from(allowed).unwrap_or(usize::MAX);
    let excess = leaving.len().checked_sub(allowed)?;
    leaving.get(excess).copied()
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use simplebank_queue::Task;

    use crate::{
        domain::{Email, NewUser, UserUpdate},
        outbox::PUBLISH_GRACE,
        secret::Secret,
        store::StoreError,
        tasks::SendVerifyEmail,
        testing::{TestDb, eventually},
    };

    async fn insert(db: &TestDb, username: &str, email: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (username, hashed_password, full_name, email) \
             VALUES ($1, 'x', 'Test User', $2)",
        )
        .bind(username)
        .bind(email)
        .execute(db.store.pool())
        .await?;
        Ok(())
    }

    /// The migration before the one that made addresses unique whatever their case.
    const BEFORE_LOWER_EMAIL: i64 = 20261128000002;

    #[tokio::test]
    async fn an_address_taken_in_another_case_is_already_exists_email() {
        let db = TestDb::create().await;
        insert(&db, "alice", "alice@example.com")
            .await
            .expect("first");
        for email in [
            "alice@example.com",
            "ALICE@example.com",
            "Alice@Example.Com",
        ] {
            let err = insert(&db, "other", email).await.expect_err(email);
            assert!(
                matches!(err, StoreError::AlreadyExists { field: "email" }),
                "{email}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_case_insensitive_index_migrates_down_and_up_again() {
        let db = TestDb::create().await;
        crate::MIGRATOR
            .undo(db.store.pool(), BEFORE_LOWER_EMAIL)
            .await
            .expect("migrate down");
        // Down: the old case-sensitive constraint is back.
        insert(&db, "alice", "alice@example.com")
            .await
            .expect("first");
        insert(&db, "alice2", "ALICE@example.com")
            .await
            .expect("another case was a distinct address before");
        assert!(insert(&db, "alice3", "alice@example.com").await.is_err());

        sqlx::query("DELETE FROM users WHERE username = 'alice2'")
            .execute(db.store.pool())
            .await
            .expect("delete");
        db.store.migrate().await.expect("migrate up again");
        let err = insert(&db, "alice2", "ALICE@example.com")
            .await
            .expect_err("the same mailbox");
        assert!(matches!(err, StoreError::AlreadyExists { field: "email" }));
    }

    #[tokio::test]
    async fn the_migration_puts_plain_old_addresses_in_canonical_form() {
        let db = TestDb::create().await;
        crate::MIGRATOR
            .undo(db.store.pool(), BEFORE_LOWER_EMAIL)
            .await
            .expect("migrate down");
        insert(&db, "bob", "Bob@Example.COM.").await.expect("bob");
        insert(&db, "carol", "Carol <carol@example.com>")
            .await
            .expect("carol");
        sqlx::query(
            "INSERT INTO verify_emails (username, email, secret_code_hash, task_id) \
             VALUES ('bob', 'Bob@Example.COM.', '\\x00', 't1')",
        )
        .execute(db.store.pool())
        .await
        .expect("verification record");

        db.store.migrate().await.expect("migrate up again");
        let emails: Vec<(String, String)> =
            sqlx::query_as("SELECT username, email FROM users ORDER BY username")
                .fetch_all(db.store.pool())
                .await
                .expect("users");
        assert_eq!(
            emails,
            [
                ("bob".to_owned(), "Bob@example.com".to_owned()),
                // Not plain ASCII addr-spec: left for a person to fix.
                ("carol".to_owned(), "Carol <carol@example.com>".to_owned()),
            ]
        );
        let sent_to: String = sqlx::query_scalar("SELECT email FROM verify_emails")
            .fetch_one(db.store.pool())
            .await
            .expect("record");
        assert_eq!(sent_to, "Bob@example.com", "its code keeps verifying");
        let err = insert(&db, "bob2", "bob@example.com")
            .await
            .expect_err("the same mailbox");
        assert!(matches!(err, StoreError::AlreadyExists { field: "email" }));
    }

    /// Waits until one statement of the test's database waits on a lock, then reads the clock
    /// in `holder` and ends it (commit or rollback): returns when the lock was let go.
    async fn release_after_a_wait(
        db: &TestDb,
        mut holder: sqlx::Transaction<'_, sqlx::Postgres>,
        commit: bool,
    ) -> OffsetDateTime {
        eventually(
            "a statement waits on the lock",
            std::time::Duration::from_secs(30),
            || async { db.waiting_on_locks().await.is_ok_and(|n| n == 1) },
        )
        .await;
        let released = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut *holder)
            .await
            .expect("clock");
        if commit {
            holder.commit().await.expect("commit");
        } else {
            holder.rollback().await.expect("rollback");
        }
        released
    }

    fn verify_task(username: &str) -> Task {
        Task::new(&SendVerifyEmail {
            username: username.into(),
        })
        .expect("task")
    }

    /// Each change of address mails the new one (an outside attack sent unlimited emails to
    /// any address through UpdateUser): a user may change it `per_user` times a window, and
    /// any users together may change to one address (any case) `per_address` times. A refused
    /// change changes nothing and queues nothing; a change out of the window counts no more.
    #[tokio::test]
    async fn address_changes_are_limited_per_user_and_per_address() {
        use super::{EmailChangeLimit, EmailChangeLimits};
        let db = TestDb::create().await;
        let window = std::time::Duration::from_secs(3600);
        let store = db
            .store
            .clone()
            .with_email_change_limits(EmailChangeLimits {
                per_user: 2,
                per_address: 2,
                window,
            });
        let change = |username: &'static str, email: &'static str, session| {
            let store = store.clone();
            async move {
                let update = UserUpdate {
                    full_name: None,
                    email: Some(Email::parse(email).expect("email")),
                    password: None,
                };
                store
                    .update_user(
                        username,
                        &update,
                        None,
                        None,
                        &verify_task(username),
                        session,
                    )
                    .await
                    .map(|updated| updated.expect("live session").user.email)
            }
        };
        let queued = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM task_outbox")
                .fetch_one(db.store.pool())
                .await
                .expect("count")
        };
        let mut sessions = std::collections::HashMap::new();
        for user in ["alice", "bob", "carol", "dave"] {
            insert(&db, user, &format!("{user}@example.com"))
                .await
                .expect("user");
            sessions.insert(user, db.live_session(user).await);
        }

        // Per user.
        change("alice", "a1@example.com", sessions["alice"])
            .await
            .expect("first");
        change("alice", "a2@example.com", sessions["alice"])
            .await
            .expect("second");
        let err = change("alice", "a3@example.com", sessions["alice"])
            .await
            .expect_err("a third within the window");
        let StoreError::TooManyEmailChanges { limit, retry_after } = err else {
            panic!("{err:?}");
        };
        assert_eq!(limit, EmailChangeLimit::User);
        assert!(
            retry_after > std::time::Duration::ZERO && retry_after <= window,
            "{retry_after:?}"
        );
        assert_eq!(
            db.store.get_user("alice").await.expect("alice").email,
            "a2@example.com"
        );
        assert_eq!(queued().await, 2, "nothing queued for the refused change");
        // A name change is no address change.
        let rename = UserUpdate::parse(Some("Alice L"), None, None)
            .expect("a field")
            .expect("valid");
        store
            .update_user(
                "alice",
                &rename,
                None,
                None,
                &verify_task("alice"),
                sessions["alice"],
            )
            .await
            .expect("a rename")
            .expect("live session");

        // Per address, changes to it and away from it, over users, in any case.
        let is_address_limit = |err: &StoreError| {
            matches!(
                err,
                StoreError::TooManyEmailChanges {
                    limit: EmailChangeLimit::Address,
                    ..
                }
            )
        };
        change("bob", "victim@example.com", sessions["bob"])
            .await
            .expect("bob");
        change("bob", "bob2@example.com", sessions["bob"])
            .await
            .expect("bob away");
        let err = change("carol", "Victim@example.com", sessions["carol"])
            .await
            .expect_err("a third change concerning the address");
        assert!(is_address_limit(&err), "{err:?}");
        assert_eq!(
            db.store.get_user("carol").await.expect("carol").email,
            "carol@example.com"
        );
        // Accounts signing up with one address in turn, each moving away after its email:
        // the moves away are counted, so the address is held at the limit.
        for (n, user) in ["cycle1", "cycle2", "cycle3"].into_iter().enumerate() {
            insert(&db, user, "cycle@example.com")
                .await
                .expect("signs up with the address");
            let session = db.live_session(user).await;
            let away = change(
                user,
                ["c1@example.com", "c2@example.com", "c3@example.com"][n],
                session,
            )
            .await;
            if n < 2 {
                away.expect("moves away");
            } else {
                let err = away.expect_err("a third move away from the address");
                assert!(is_address_limit(&err), "{err:?}");
            }
        }
        assert!(
            insert(&db, "cycle4", "cycle@example.com").await.is_err(),
            "the address is held: no fourth sign-up with it"
        );

        // Changes older than the window count no more, and the user's are then deleted.
        sqlx::query("UPDATE email_changes SET changed_at = now() - interval '2 hours'")
            .execute(db.store.pool())
            .await
            .expect("age the changes");
        change("alice", "a3@example.com", sessions["alice"])
            .await
            .expect("a new window");
        change("carol", "victim@example.com", sessions["carol"])
            .await
            .expect("a new window");
        let alices: i64 =
            sqlx::query_scalar("SELECT count(*) FROM email_changes WHERE username = 'alice'")
                .fetch_one(db.store.pool())
                .await
                .expect("count");
        assert_eq!(alices, 1, "only the change in the window is kept");
    }

    /// Changes of different users concerning one address are counted one after the other: a
    /// change that counted while another user's changes to and away from the address were
    /// being committed would pass on a stale count.
    #[tokio::test]
    async fn changes_concerning_one_address_are_counted_in_turn() {
        use super::{EmailChangeLimit, EmailChangeLimits};
        let db = TestDb::create().await;
        let store = db
            .store
            .clone()
            .with_email_change_limits(EmailChangeLimits {
                per_user: 10,
                per_address: 2,
                window: std::time::Duration::from_secs(3600),
            });
        for user in ["alice", "mallory"] {
            insert(&db, user, &format!("{user}@example.com"))
                .await
                .expect("user");
        }
        let session = db.live_session("alice").await;
        // Another transaction counting and recording two changes concerning the address.
        let mut holder = db.store.pool().begin().await.expect("begin");
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(lower('victim@example.com' COLLATE \"C\"), 0))")
            .execute(&mut *holder)
            .await
            .expect("the address's lock");
        for _ in 0..2 {
            sqlx::query(
                "INSERT INTO email_changes (username, old_email, new_email) \
                 VALUES ('mallory', 'mallory@example.com', 'victim@example.com')",
            )
            .execute(&mut *holder)
            .await
            .expect("a change");
        }

        let update = tokio::spawn(async move {
            let update = UserUpdate {
                full_name: None,
                email: Some(Email::parse("Victim@example.com").expect("email")),
                password: None,
            };
            store
                .update_user("alice", &update, None, None, &verify_task("alice"), session)
                .await
        });
        release_after_a_wait(&db, holder, true).await;
        let err = update
            .await
            .expect("task")
            .expect_err("counted after the other's changes");
        assert!(
            matches!(
                err,
                StoreError::TooManyEmailChanges {
                    limit: EmailChangeLimit::Address,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// A database whose address changes were recorded before the old address was kept
    /// migrates forward, its rows kept as changes to their address, and back again.
    #[tokio::test]
    async fn address_changes_recorded_without_the_old_address_migrate() {
        const WITHOUT_OLD_EMAIL: i64 = 20261203000000;
        let db = TestDb::create().await;
        insert(&db, "alice", "alice@example.com")
            .await
            .expect("user");
        crate::MIGRATOR
            .undo(db.store.pool(), WITHOUT_OLD_EMAIL)
            .await
            .expect("migrate down");
        sqlx::query(
            "INSERT INTO email_changes (username, email) VALUES ('alice', 'a1@example.com')",
        )
        .execute(db.store.pool())
        .await
        .expect("a change, as recorded then");
        db.store.migrate().await.expect("migrate up again");
        let row: (String, String) =
            sqlx::query_as("SELECT old_email, new_email FROM email_changes")
                .fetch_one(db.store.pool())
                .await
                .expect("the change");
        assert_eq!(row, (String::new(), "a1@example.com".to_owned()));
        crate::MIGRATOR
            .undo(db.store.pool(), WITHOUT_OLD_EMAIL)
            .await
            .expect("migrate down again");
        let email: String = sqlx::query_scalar("SELECT email FROM email_changes")
            .fetch_one(db.store.pool())
            .await
            .expect("the change");
        assert_eq!(email, "a1@example.com");
    }

    #[test]
    fn the_wait_is_until_one_more_change_is_allowed() {
        assert_eq!(super::over_limit(&[], 2), None);
        assert_eq!(super::over_limit(&[10.0], 2), None);
        assert_eq!(super::over_limit(&[10.0, 20.0], 2), Some(10.0));
        // Over the limit (lowered since): until two have left.
        assert_eq!(super::over_limit(&[10.0, 20.0, 30.0], 2), Some(20.0));
    }

    /// The grace of the new address's outbox row counts from the insert, not from the start
    /// of a transaction that waited on the user's row lock first.
    #[tokio::test]
    async fn an_updates_outbox_lease_counts_from_after_its_lock_wait() {
        let db = TestDb::create().await;
        insert(&db, "alice", "alice@example.com")
            .await
            .expect("user");
        let session = db.live_session("alice").await;
        let mut holder = db.store.pool().begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM users WHERE username = 'alice' FOR UPDATE")
            .execute(&mut *holder)
            .await
            .expect("lock the row");

        let store = db.store.clone();
        let update = tokio::spawn(async move {
            let update = UserUpdate {
                full_name: None,
                email: Some(Email::parse("alice@example.org").expect("email")),
                password: None,
            };
            store
                .update_user("alice", &update, None, None, &verify_task("alice"), session)
                .await
        });
        let released = release_after_a_wait(&db, holder, true).await;

        let row = update
            .await
            .expect("task")
            .expect("update")
            .expect("the session is live")
            .outbox;
        let row = row.expect("an outbox row");
        assert!(
            row.until >= released + PUBLISH_GRACE,
            "leased until {} though the lock was let go at {released}",
            row.until
        );
    }

    /// The attack: a stolen session's password change, sent while the owner's own change is
    /// being committed, must not overwrite it. The owner's change holds the user's row and ends
    /// the other sessions; the thief's update, which passed its session check before that
    /// (in the server, before hashing), waits on the row, then finds its session ended.
    #[tokio::test]
    async fn an_update_from_a_session_ended_while_it_waited_changes_nothing() {
        let db = TestDb::create().await;
        insert(&db, "alice", "alice@example.com")
            .await
            .expect("user");
        let (owner, thief) = (
            db.live_session("alice").await,
            db.live_session("alice").await,
        );
        let holder = db.password_change_in_flight("alice", owner).await;

        let store = db.store.clone();
        let update = tokio::spawn(async move {
            let update = UserUpdate::parse(
                None,
                Some("thief@example.org"),
                Some("thief-owns-this-now-1".into()),
            )
            .expect("a field")
            .expect("valid");
            store
                .update_user(
                    "alice",
                    &update,
                    Some(&Secret::new("thiefs".into())),
                    None,
                    &verify_task("alice"),
                    thief,
                )
                .await
        });
        release_after_a_wait(&db, holder, true).await;

        let updated = update.await.expect("task").expect("no database error");
        assert!(updated.is_none(), "an ended session updated the user");
        let (hash, email): (String, String) =
            sqlx::query_as("SELECT hashed_password, email FROM users WHERE username = 'alice'")
                .fetch_one(db.store.pool())
                .await
                .expect("user");
        assert_eq!(
            (hash.as_str(), email.as_str()),
            ("changed", "alice@example.com")
        );
        let owner_live = db
            .store
            .session_is_live(owner, "alice")
            .await
            .expect("read");
        assert!(owner_live, "the owner's session was ended");
        let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM task_outbox")
            .fetch_one(db.store.pool())
            .await
            .expect("outbox");
        assert_eq!(
            queued, 0,
            "a verification was queued for the thief's address"
        );
    }

    /// A change confirmed with the current password is made only while that password is the
    /// stored one: one changed in between without ending the caller's session (as an
    /// operator's reset might) voids the confirmation.
    #[tokio::test]
    async fn an_update_confirmed_against_a_password_since_changed_changes_nothing() {
        let db = TestDb::create().await;
        insert(&db, "alice", "alice@example.com")
            .await
            .expect("user");
        let session = db.live_session("alice").await;
        let update = UserUpdate::parse(None, Some("new@example.org"), None)
            .expect("a field")
            .expect("valid");
        let checked = Secret::new("x".to_owned());
        sqlx::query("UPDATE users SET hashed_password = 'reset' WHERE username = 'alice'")
            .execute(db.store.pool())
            .await
            .expect("reset");
        let update_confirmed_by = |hash: Secret<String>| {
            let (store, update) = (db.store.clone(), update.clone());
            async move {
                store
                    .update_user(
                        "alice",
                        &update,
                        None,
                        Some(&hash),
                        &verify_task("alice"),
                        session,
                    )
                    .await
            }
        };
        let refused = update_confirmed_by(checked).await;
        assert!(
            matches!(refused, Err(StoreError::PasswordChanged)),
            "{refused:?}"
        );
        let email = db.store.get_user("alice").await.expect("user").email;
        assert_eq!(email, "alice@example.com");
        let updated = update_confirmed_by(Secret::new("reset".to_owned()))
            .await
            .expect("no database error")
            .expect("confirmed against the stored hash");
        assert_eq!(updated.user.email, "new@example.org");
    }

    /// Likewise for sign-up waiting on another transaction's insert of the same username.
    #[tokio::test]
    async fn a_sign_ups_outbox_lease_counts_from_after_its_lock_wait() {
        let db = TestDb::create().await;
        let mut holder = db.store.pool().begin().await.expect("begin");
        sqlx::query(
            "INSERT INTO users (username, hashed_password, full_name, email) \
             VALUES ('bob', 'x', 'Bob', 'other@example.com')",
        )
        .execute(&mut *holder)
        .await
        .expect("an uncommitted insert of the name");

        let store = db.store.clone();
        let create = tokio::spawn(async move {
            let user = NewUser::parse("bob", "Bob", "bob@example.com", "plum-tractor-1".into())
                .expect("user");
            let hashed = Secret::new("x".to_owned());
            store.create_user(&user, &hashed, &verify_task("bob")).await
        });
        let released = release_after_a_wait(&db, holder, false).await;

        let (_, row) = create.await.expect("task").expect("sign up");
        assert!(
            row.until >= released + PUBLISH_GRACE,
            "leased until {} though the lock was let go at {released}",
            row.until
        );
    }
}
