//! Sign-in sessions and their refresh tokens.
//!
//! A refresh token is 43 characters of `[A-Za-z0-9]` (over 250 bits from the OS CSPRNG);
//! only its SHA-256 hash is stored (a token is random, not guessable, so a fast hash is
//! enough). Every renewal replaces the session's token and files the old hash in
//! `session_rotated_tokens`: an old token presented again is a replay (the token leaked, or
//! a client kept a copy) and ends the whole session. A session has an absolute end
//! (`expires_at`) that renewals never move.

use sqlx::Connection as _;
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::secret::{Secret, random_code};

use super::{Store, StoreError};

/// Length of a refresh token in characters (43 x 5.95 bits: over 250 bits).
pub const REFRESH_TOKEN_LEN: usize = 43;

/// A new refresh token from the operating system's CSPRNG.
pub fn new_refresh_token() -> Secret<String> {
    random_code(REFRESH_TOKEN_LEN)
}

/// Whether `token` has the shape of a refresh token (anything else is refused unread).
pub fn is_refresh_token(token: &str) -> bool {
    token.len() == REFRESH_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// What the database keeps of a refresh token.
pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Ends the live session whose refresh token hashes to `hash`, with `all` every live session
/// of its user; how many it ended.
async fn end_sessions_of<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    hash: &[u8],
    all: bool,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "WITH this AS ( \
           SELECT id, username FROM sessions \
           WHERE refresh_token_hash = $1 AND revoked_at IS NULL) \
         UPDATE sessions s SET revoked_at = now(), revoked_reason = $3 FROM this \
         WHERE s.revoked_at IS NULL AND (s.id = this.id OR ($2 AND s.username = this.username))",
        hash,
        all,
        RevokeReason::Logout.as_str(),
    )
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// Why a session was ended, as stored in `sessions.revoked_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// The user signed out.
    Logout,
    /// The user's password changed, which ends their other sessions.
    PasswordChanged,
    /// A refresh token that had already been exchanged was presented again.
    TokenReused,
}

impl RevokeReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::PasswordChanged => "password_changed",
            Self::TokenReused => "refresh_token_reused",
        }
    }
}

/// A stored sign-in session (a row of `sessions`), without its refresh token hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session's id, carried by its access tokens.
    pub id: Uuid,
    /// The user signed in.
    pub username: String,
    /// The client's `User-Agent` at sign-in.
    pub user_agent: String,
    /// The client's IP address at sign-in.
    pub client_ip: String,
    /// When the user signed in.
    pub created_at: OffsetDateTime,
    /// When the current refresh token stops working; never later than `expires_at`.
    pub refresh_token_expires_at: OffsetDateTime,
    /// The absolute end of the session: renewals do not move it.
    pub expires_at: OffsetDateTime,
    /// When the session was ended, if it was.
    pub revoked_at: Option<OffsetDateTime>,
    /// Why it was ended: `logout`, `password_changed` or `refresh_token_reused`.
    pub revoked_reason: Option<String>,
}

/// Where and with what a session was started (stored for the user's own review).
#[derive(Debug, Clone)]
pub struct SessionOrigin {
    /// The client's `User-Agent`.
    pub user_agent: String,
    /// The client's IP address.
    pub client_ip: String,
}

/// How long a session's refresh tokens live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Each refresh token's lifetime, from its issue.
    pub refresh_token: Duration,
    /// The session's absolute lifetime, from sign-in; no token outlives it.
    pub session: Duration,
}

/// Why a refresh token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Unknown, expired or ended: one case, so nothing about other sessions can be learnt.
    #[error("invalid refresh token")]
    Invalid,
    /// An already exchanged token came back: its session has now been ended.
    #[error("refresh token reused; session {session_id} ended")]
    Reused {
        /// The session that was ended.
        session_id: Uuid,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for SessionError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(err.into())
    }
}

impl Store {
    /// Starts a session for `username` holding the hash of `refresh_token`, if the user's
    /// password hash is still `verified_hash` (the one sign-in just checked); `None` if it is
    /// not (the password changed meanwhile).
    ///
    /// The check and the insert are one statement holding a share lock on the user row: a
    /// password change either committed first (no session) or waits for this one and then
    /// ends it with the user's other sessions.
    #[tracing::instrument(
        name = "INSERT sessions",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT")
    )]
    pub async fn create_session(
        &self,
        username: &str,
        verified_hash: &Secret<String>,
        refresh_token: &Secret<String>,
        origin: &SessionOrigin,
        limits: SessionLimits,
    ) -> Result<Option<Session>, StoreError> {
        self.answer(async |conn| {
            // `$6::float8`: the macro lets PostgreSQL infer parameter types, and LEAST of two
            // parameters alone would be text (bound at run time, sqlx named float8 itself).
            let session = sqlx::query_as!(
                Session,
                "WITH still AS ( \
                   SELECT username FROM users WHERE username = $2 AND hashed_password = $8 \
                   FOR SHARE) \
                 INSERT INTO sessions (id, username, refresh_token_hash, user_agent, client_ip, \
                   refresh_token_expires_at, expires_at) \
                 SELECT $1, still.username, $3, $4, $5, \
                   now() + make_interval(secs => LEAST($6::float8, $7)), \
                   now() + make_interval(secs => $7) \
                 FROM still \
                 RETURNING id, username, user_agent, client_ip, created_at, \
                   refresh_token_expires_at, expires_at, revoked_at, revoked_reason",
                Uuid::new_v4(),
                username,
                hash_refresh_token(refresh_token.expose()),
                &origin.user_agent,
                &origin.client_ip,
                limits.refresh_token.as_secs_f64(),
                limits.session.as_secs_f64(),
                verified_hash.expose(),
            )
            .fetch_optional(&mut *conn)
            .await?;
            Ok(session)
        })
        .await
    }

    /// Exchanges `presented` for `next`: the session's token becomes `next`, valid for
    /// `refresh_token` but never past the session's end. A token already exchanged ends its
    /// session ([`SessionError::Reused`]).
    #[tracing::instrument(
        name = "UPDATE sessions",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn rotate_refresh_token(
        &self,
        presented: &str,
        next: &Secret<String>,
        refresh_token: Duration,
    ) -> Result<Session, SessionError> {
        self.answer(async |conn| {
            let presented_hash = hash_refresh_token(presented);
            let mut tx = conn.begin().await.map_err(StoreError::from)?;
            // The row lock serialises renewals of one session: of two concurrent renewals with
            // the same token, the second finds the hash changed and counts as a reuse.
            let current = sqlx::query!(
                "SELECT id, revoked_at IS NULL AND refresh_token_expires_at > now() \
                   AND expires_at > now() AS \"live!\" \
                 FROM sessions WHERE refresh_token_hash = $1 FOR UPDATE",
                &presented_hash,
            )
            .fetch_optional(&mut *tx)
            .await?;
            let session_id = match current.map(|row| (row.id, row.live)) {
                Some((id, true)) => id,
                Some((_, false)) => return Err(SessionError::Invalid),
                None => {
                    let rotated = sqlx::query_scalar!(
                        "SELECT session_id FROM session_rotated_tokens WHERE token_hash = $1",
                        &presented_hash,
                    )
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(session_id) = rotated else {
                        return Err(SessionError::Invalid);
                    };
                    revoke(&mut tx, session_id, RevokeReason::TokenReused).await?;
                    tx.commit().await.map_err(StoreError::from)?;
                    return Err(SessionError::Reused { session_id });
                }
            };
            sqlx::query!(
                "INSERT INTO session_rotated_tokens (token_hash, session_id) VALUES ($1, $2)",
                &presented_hash,
                session_id,
            )
            .execute(&mut *tx)
            .await?;
            let session = sqlx::query_as!(
                Session,
                "UPDATE sessions SET refresh_token_hash = $2, refresh_token_expires_at = \
                   LEAST(now() + make_interval(secs => $3), expires_at) \
                 WHERE id = $1 \
                 RETURNING id, username, user_agent, client_ip, created_at, \
                   refresh_token_expires_at, expires_at, revoked_at, revoked_reason",
                session_id,
                hash_refresh_token(next.expose()),
                refresh_token.as_secs_f64(),
            )
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await.map_err(StoreError::from)?;
            Ok(session)
        })
        .await
    }

    /// Ends the session of `presented` (a current refresh token of a session not ended yet;
    /// expired is fine), or with `all_sessions` every live session of its user. Returns how
    /// many sessions were ended.
    #[tracing::instrument(
        name = "UPDATE sessions",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "UPDATE")
    )]
    pub async fn end_sessions(
        &self,
        presented: &str,
        all_sessions: bool,
    ) -> Result<u64, SessionError> {
        self.answer(async |conn| {
            let hash = hash_refresh_token(presented);
            let ended = if all_sessions {
                // The user's row first, as a password change takes it: a session that the change
                // ends meanwhile is seen ended by the update after the wait, and ends nothing.
                let mut tx = conn.begin().await.map_err(StoreError::from)?;
                sqlx::query!(
                    "SELECT 1 AS \"locked!\" FROM users u JOIN sessions s ON s.username = u.username \
                     WHERE s.refresh_token_hash = $1 FOR NO KEY UPDATE OF u",
                    hash,
                )
                .fetch_optional(&mut *tx)
                .await?;
                let ended = end_sessions_of(&mut *tx, &hash, true).await?;
                tx.commit().await.map_err(StoreError::from)?;
                ended
            } else {
                end_sessions_of(&mut *conn, &hash, false).await?
            };
            if ended == 0 {
                return Err(Self::replayed_at_logout(conn, presented).await?);
            }
            Ok(ended)
        })
        .await
    }

    /// Why `presented` ended no session: an already exchanged token is a replay, as in
    /// [`Self::rotate_refresh_token`], and ends its session; anything else is just invalid.
    async fn replayed_at_logout(
        conn: &mut sqlx::PgConnection,
        presented: &str,
    ) -> Result<SessionError, SessionError> {
        let mut tx = conn.begin().await.map_err(StoreError::from)?;
        let rotated = sqlx::query_scalar!(
            "SELECT session_id FROM session_rotated_tokens WHERE token_hash = $1",
            hash_refresh_token(presented),
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(session_id) = rotated else {
            return Ok(SessionError::Invalid);
        };
        revoke(&mut tx, session_id, RevokeReason::TokenReused).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(SessionError::Reused { session_id })
    }

    /// Whether session `id` belongs to `username` and is live (not ended, not past its end):
    /// an access token is honoured only while its session is.
    #[tracing::instrument(
        name = "SELECT sessions",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT")
    )]
    pub async fn session_is_live(&self, id: Uuid, username: &str) -> Result<bool, StoreError> {
        self.answer(async |conn| {
            let live = sqlx::query_scalar!(
                "SELECT revoked_at IS NULL AND expires_at > now() AS \"live!\" FROM sessions \
                 WHERE id = $1 AND username = $2",
                id,
                username,
            )
            .fetch_optional(&mut *conn)
            .await?;
            Ok(live.unwrap_or(false))
        })
        .await
    }

    /// The session `id`, ended or not; [`StoreError::NotFound`] if there is none.
    pub async fn session(&self, id: Uuid) -> Result<Session, StoreError> {
        self.answer(async |conn| {
            Ok(sqlx::query_as!(
                Session,
                "SELECT id, username, user_agent, client_ip, created_at, \
                   refresh_token_expires_at, expires_at, revoked_at, revoked_reason \
                 FROM sessions WHERE id = $1",
                id,
            )
            .fetch_one(&mut *conn)
            .await?)
        })
        .await
    }

    /// Every session of `username`, ended ones included, oldest first.
    pub async fn sessions_of(&self, username: &str) -> Result<Vec<Session>, StoreError> {
        self.answer(async |conn| {
            Ok(sqlx::query_as!(
                Session,
                "SELECT id, username, user_agent, client_ip, created_at, \
                   refresh_token_expires_at, expires_at, revoked_at, revoked_reason \
                 FROM sessions WHERE username = $1 ORDER BY created_at, id",
                username,
            )
            .fetch_all(&mut *conn)
            .await?)
        })
        .await
    }
}

/// Ends session `id` (if live) inside `tx`.
async fn revoke(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    reason: RevokeReason,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $2 \
         WHERE id = $1 AND revoked_at IS NULL",
        id,
        reason.as_str(),
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Ends every live session of `username` but `keep`, inside `tx` (a password change).
pub(super) async fn revoke_others(
    tx: &mut sqlx::PgConnection,
    username: &str,
    keep: Uuid,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $3 \
         WHERE username = $1 AND id <> $2 AND revoked_at IS NULL",
        username,
        keep,
        RevokeReason::PasswordChanged.as_str(),
    )
    .execute(tx)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    async fn user(db: &TestDb, username: &str) {
        sqlx::query(
            "INSERT INTO users (username, hashed_password, full_name, email) \
             VALUES ($1, 'x', 'Test User', $1 || '@example.com')",
        )
        .bind(username)
        .execute(db.store.pool())
        .await
        .expect("user");
    }

    /// The password hash `user` stores.
    fn hash() -> Secret<String> {
        Secret::new("x".into())
    }

    fn origin() -> SessionOrigin {
        SessionOrigin {
            user_agent: "test".into(),
            client_ip: "127.0.0.1".into(),
        }
    }

    const LIMITS: SessionLimits = SessionLimits {
        refresh_token: Duration::from_secs(3600),
        session: Duration::from_secs(7200),
    };

    #[test]
    fn tokens_are_long_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_refresh_token(), new_refresh_token());
        assert!(is_refresh_token(a.expose()));
        assert_ne!(a.expose(), b.expose());
        assert_eq!(hash_refresh_token(a.expose()).len(), 32);
        assert!(!is_refresh_token("short"));
        assert!(!is_refresh_token(&format!("{}\n", &a.expose()[1..])));
    }

    #[tokio::test]
    async fn rotation_replaces_the_token_and_a_replayed_one_ends_the_session() {
        let db = TestDb::create().await;
        user(&db, "alice").await;
        let first = new_refresh_token();
        let session = db
            .store
            .create_session("alice", &hash(), &first, &origin(), LIMITS)
            .await
            .unwrap()
            .unwrap();
        let stored: Vec<u8> = sqlx::query_scalar("SELECT refresh_token_hash FROM sessions")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
        assert_ne!(stored, first.expose().as_bytes(), "the hash, not the token");

        let second = new_refresh_token();
        let rotated = db
            .store
            .rotate_refresh_token(first.expose(), &second, LIMITS.refresh_token)
            .await
            .unwrap();
        assert_eq!(rotated.id, session.id);
        assert!(rotated.refresh_token_expires_at <= rotated.expires_at);

        let err = db
            .store
            .rotate_refresh_token(first.expose(), &new_refresh_token(), LIMITS.refresh_token)
            .await
            .unwrap_err();
        assert!(matches!(err, SessionError::Reused { session_id } if session_id == session.id));
        let ended = db.store.session(session.id).await.unwrap();
        assert_eq!(
            ended.revoked_reason.as_deref(),
            Some("refresh_token_reused")
        );
        // The current token died with its session.
        let err = db
            .store
            .rotate_refresh_token(second.expose(), &new_refresh_token(), LIMITS.refresh_token)
            .await
            .unwrap_err();
        assert!(matches!(err, SessionError::Invalid), "{err:?}");
    }

    #[tokio::test]
    async fn renewal_never_passes_the_sessions_absolute_end() {
        let db = TestDb::create().await;
        user(&db, "alice").await;
        let limits = SessionLimits {
            refresh_token: Duration::from_secs(3600),
            session: Duration::from_secs(60),
        };
        let token = new_refresh_token();
        let session = db
            .store
            .create_session("alice", &hash(), &token, &origin(), limits)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(session.refresh_token_expires_at, session.expires_at);
        let rotated = db
            .store
            .rotate_refresh_token(token.expose(), &new_refresh_token(), limits.refresh_token)
            .await
            .unwrap();
        assert_eq!(rotated.expires_at, session.expires_at);
        assert_eq!(rotated.refresh_token_expires_at, session.expires_at);
    }

    #[tokio::test]
    async fn two_renewals_racing_with_one_token_end_the_session() {
        let db = TestDb::create().await;
        user(&db, "alice").await;
        let token = new_refresh_token();
        let session = db
            .store
            .create_session("alice", &hash(), &token, &origin(), LIMITS)
            .await
            .unwrap()
            .unwrap();
        let renew = || {
            let (store, presented) = (db.store.clone(), token.expose().clone());
            tokio::spawn(async move {
                store
                    .rotate_refresh_token(&presented, &new_refresh_token(), LIMITS.refresh_token)
                    .await
            })
        };
        let (a, b) = (renew(), renew());
        let results = [a.await.unwrap(), b.await.unwrap()];
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(SessionError::Reused { .. }))),
            "{results:?}"
        );
        let ended = db.store.session(session.id).await.unwrap();
        assert_eq!(
            ended.revoked_reason.as_deref(),
            Some("refresh_token_reused")
        );
    }

    /// Sign-in checked the old hash; the password changed before the session was written.
    #[tokio::test]
    async fn no_session_is_started_for_a_password_that_changed_after_it_was_checked() {
        let db = TestDb::create().await;
        user(&db, "alice").await;
        let checked = hash();
        sqlx::query("UPDATE users SET hashed_password = 'y' WHERE username = 'alice'")
            .execute(db.store.pool())
            .await
            .unwrap();
        let created = db
            .store
            .create_session("alice", &checked, &new_refresh_token(), &origin(), LIMITS)
            .await
            .unwrap();
        assert_eq!(created, None);
        assert!(db.store.sessions_of("alice").await.unwrap().is_empty());
    }

    /// The interleaving forced: a password change holds the user row (uncommitted) when the
    /// session is written; the session waits, sees the new hash, and is not started.
    #[tokio::test]
    async fn a_session_waits_for_a_password_change_in_flight_and_is_refused() {
        let db = TestDb::create().await;
        user(&db, "alice").await;
        let mut change = db.store.pool().begin().await.unwrap();
        sqlx::query("UPDATE users SET hashed_password = 'y' WHERE username = 'alice'")
            .execute(&mut *change)
            .await
            .unwrap();
        let login = {
            let store = db.store.clone();
            tokio::spawn(async move {
                store
                    .create_session("alice", &hash(), &new_refresh_token(), &origin(), LIMITS)
                    .await
            })
        };
        crate::testing::eventually(
            "the sign-in waits on the user row",
            Duration::from_secs(30),
            || async { db.waiting_on_locks().await.is_ok_and(|n| n == 1) },
        )
        .await;
        change.commit().await.unwrap();
        assert_eq!(login.await.unwrap().unwrap(), None);
        assert!(db.store.sessions_of("alice").await.unwrap().is_empty());
    }

    /// A logout of every session from a session that a password change ends while the logout
    /// waits ends nothing: the owner's session, which the change kept, stays live.
    #[tokio::test]
    async fn a_logout_of_all_from_a_session_ended_while_it_waited_ends_nothing() {
        let db = TestDb::create().await;
        user(&db, "alice").await;
        let (owners, thiefs) = (new_refresh_token(), new_refresh_token());
        let mut sessions = Vec::new();
        for token in [&owners, &thiefs] {
            let session = db
                .store
                .create_session("alice", &hash(), token, &origin(), LIMITS)
                .await
                .unwrap()
                .unwrap();
            sessions.push(session.id);
        }
        let owner = sessions[0];
        let change = db.password_change_in_flight("alice", owner).await;
        let logout = {
            let store = db.store.clone();
            let thiefs = thiefs.expose().clone();
            tokio::spawn(async move { store.end_sessions(&thiefs, true).await })
        };
        crate::testing::eventually(
            "the logout waits on the password change",
            Duration::from_secs(30),
            || async { db.waiting_on_locks().await.is_ok_and(|n| n == 1) },
        )
        .await;
        change.commit().await.unwrap();
        let err = logout.await.unwrap().unwrap_err();
        assert!(matches!(err, SessionError::Invalid), "{err:?}");
        assert!(
            db.store.session_is_live(owner, "alice").await.unwrap(),
            "the ended session's logout ended the owner's"
        );
    }

    /// LogoutUser with a token already exchanged is a replay: the session ends, as at renewal.
    #[tokio::test]
    async fn logout_with_an_exchanged_token_ends_the_session_as_a_replay() {
        let db = TestDb::create().await;
        user(&db, "alice").await;
        let first = new_refresh_token();
        let session = db
            .store
            .create_session("alice", &hash(), &first, &origin(), LIMITS)
            .await
            .unwrap()
            .unwrap();
        let second = new_refresh_token();
        db.store
            .rotate_refresh_token(first.expose(), &second, LIMITS.refresh_token)
            .await
            .unwrap();
        let err = db
            .store
            .end_sessions(first.expose(), false)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SessionError::Reused { session_id } if session_id == session.id),
            "{err:?}"
        );
        let ended = db.store.session(session.id).await.unwrap();
        assert_eq!(
            ended.revoked_reason.as_deref(),
            Some("refresh_token_reused")
        );
        // The thief's copy of the current token died with the session.
        let err = db
            .store
            .rotate_refresh_token(second.expose(), &new_refresh_token(), LIMITS.refresh_token)
            .await
            .unwrap_err();
        assert!(matches!(err, SessionError::Invalid), "{err:?}");
        // An unknown token is still just invalid.
        let err = db
            .store
            .end_sessions(new_refresh_token().expose(), true)
            .await
            .unwrap_err();
        assert!(matches!(err, SessionError::Invalid), "{err:?}");
    }
}
