//! PostgreSQL access. Queries are checked at compile time (`sqlx::query!` and friends) against
//! the offline data in `.sqlx/` at the workspace root, so building needs no database; after
//! changing a query or a migration, `make sqlx-prepare` refreshes that data.
//!
//! - [`users`]: sign-up (user + outbox row in one transaction) and reads.
//! - [`outbox`]: the rows of `task_outbox`, owned while published through a lease.
//! - [`verify_emails`]: verification records, one per `send_verify_email` task.
//! - [`sessions`]: sign-in sessions and their (hashed, rotated) refresh tokens.

pub mod outbox;
pub mod sessions;
pub mod users;
pub mod verify_emails;

use std::time::Duration;

use sqlx::{
    PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{config::ConfigError, secret::Secret};

pub use sessions::{Session, SessionError, SessionLimits, SessionOrigin};
pub use users::{Credentials, EmailChangeLimit, EmailChangeLimits, Updated, User};
pub use verify_emails::{VerifyEmail, VerifyError};

/// What went wrong talking to PostgreSQL, sorted by what a caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the row; `field` is the request field it concerns.
    #[error("{field} already exists")]
    AlreadyExists {
        /// The request field whose value is taken (`username`, `email`).
        field: &'static str,
    },
    /// No row matched.
    #[error("not found")]
    NotFound,
    /// The password a change was confirmed with is no longer the stored one (changed since,
    /// from the same session or otherwise).
    #[error("the password changed since it was confirmed")]
    PasswordChanged,
    /// A change of address past the [`users::EmailChangeLimits`]: each change mails the new
    /// address, so an account must not be able to mail any address without end.
    #[error("too many address changes {limit}")]
    TooManyEmailChanges {
        /// Whose limit was reached.
        limit: users::EmailChangeLimit,
        /// When one more change will be allowed (enough counted changes left the window).
        retry_after: Duration,
    },
    /// The database could not be reached (connection refused, pool timeout, shutting down).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database did not answer within the store's limit ([`ANSWER_WITHIN`] unless
    /// [`Store::with_answer_within`] set another; hung, or a network that drops packets):
    /// unavailable, as far as the caller can tell.
    #[error("the database did not answer within {0:?}")]
    NoAnswer(Duration),
    /// Any other database error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// A migration failed to apply.
    #[error("migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A task in the outbox could not be encoded or decoded as JSON.
    #[error("stored task could not be decoded")]
    BadTask(#[source] serde_json::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            return Self::Unavailable(err);
        }
        match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                match db.constraint() {
                    Some("users_pkey") => Self::AlreadyExists { field: "username" },
                    // The unique index on lower(email): one account per mailbox, any case.
                    Some("users_email_lower_key") => Self::AlreadyExists { field: "email" },
                    _ => Self::Database(err),
                }
            }
            sqlx::Error::RowNotFound => Self::NotFound,
            _ => Self::Database(err),
        }
    }
}

impl StoreError {
    /// Whether the database could not be reached or did not answer: worth trying again later,
    /// and nothing about the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::NoAnswer(_))
    }
}

fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // sqlx reads the answer to its SSLRequest (sslmode prefer or require) into a zeroed
        // byte and does not check for end of file: a peer that accepts and closes at once (a
        // proxy or load balancer in front of a database that is down) reads as this.
        sqlx::Error::Protocol(message) => {
            message.starts_with("unexpected response from SSLRequest: 0x00")
        }
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08xxx connection exception; 57P01-03 shutdown / cannot connect now; 53300 too many
            // connections; 57014 a statement cancelled (our `statement_timeout`, or an
            // operator's `pg_cancel_backend`).
            code.starts_with("08")
                || ["57P01", "57P02", "57P03", "53300", "57014"].contains(&&*code)
        }),
        _ => false,
    }
}

/// Connects to `db_source` once (5 s at most), as the programs do at start. What waiting cannot
/// fix is an error naming `DB_SOURCE`: a TLS handshake that fails on a certificate (the
/// server's does not verify against `sslrootcert`, or the server refused ours), a login the
/// server refuses (a wrong password or user, no `pg_hba.conf` line for this client, e.g. a
/// server that takes TLS connections only and `sslmode=disable`), a database that does not
/// exist, and an `sslrootcert` file that cannot be read. Anything else passes: a database
/// that is down or hung is waited for.
pub async fn check_access(db_source: &Secret<String>) -> Result<(), ConfigError> {
    use simplebank_queue::connection::{TlsRefusal, certificate_refusal};
    use sqlx::Connection;

    let Ok(options) = db_source.expose().parse::<PgConnectOptions>() else {
        return Ok(());
    };
    // Checked first: a file that cannot be read is a setting, whether PostgreSQL is up or not.
    if let Some((setting, file)) = unreadable_file(&options) {
        return Err(ConfigError::new(
            "DB_SOURCE",
            format!("its {setting} file cannot be read: {file}"),
        ));
    }
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::PgConnection::connect_with(&options),
    )
    .await;
    let err = match connected {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Ok(Err(err)) => err,
        Err(_) => return Ok(()),
    };
    if let sqlx::Error::Database(db) = &err
        && let Some(reason) = db.code().as_deref().and_then(refusal)
    {
        // The code only: the server's message names the user and the client's address.
        let code = db.code().unwrap_or_default();
        return Err(ConfigError::new(
            "DB_SOURCE",
            format!("PostgreSQL refuses this client (SQLSTATE {code}): {reason}"),
        ));
    }
    match certificate_refusal(&err) {
        Some(TlsRefusal::ServerCertificate(reason)) => Err(ConfigError::new(
            "DB_SOURCE",
            format!(
                "the PostgreSQL server's certificate does not verify ({reason}): sslrootcert \
                 must name the CA that signed it (the system's roots when unset), and with \
                 sslmode=verify-full the certificate must name the host of DB_SOURCE"
            ),
        )),
        Some(TlsRefusal::ClientCertificate(reason)) => Err(ConfigError::new(
            "DB_SOURCE",
            format!(
                "the PostgreSQL server refused the TLS client certificate ({reason}): set \
                 sslcert and sslkey to a certificate its CA signed"
            ),
        )),
        None => Ok(()),
    }
}

/// What a refusal at login means, by SQLSTATE, for the codes waiting cannot fix.
fn refusal(code: &str) -> Option<&'static str> {
    match code {
        "28P01" => Some("the user name or password was refused"),
        "28000" => Some(
            "no pg_hba.conf line lets this client in (the user, the database, or sslmode: a \
             server that takes TLS connections only refuses sslmode=disable)",
        ),
        "3D000" => Some("the database does not exist"),
        _ => None,
    }
}

/// The first certificate or key file sqlx would read for `options` that cannot be read, with
/// its setting's name. Taken from the parsed options, so it is what sqlx reads: any of the
/// names it accepts (`sslrootcert`, `ssl-root-cert`, `ssl-ca`, ...), the last one given, the
/// query value decoded as sqlx decodes it, or `PGSSLROOTCERT` / `PGSSLCERT` / `PGSSLKEY`.
/// Names the file: a path is not a secret. PEM given inline is not a file.
fn unreadable_file(options: &PgConnectOptions) -> Option<(&'static str, String)> {
    use sqlx::ConnectOptions;

    let url = options.to_url_lossy();
    url.query_pairs().find_map(|(key, value)| {
        let setting = match &*key {
            "sslrootcert" => "sslrootcert",
            "sslcert" => "sslcert",
            "sslkey" => "sslkey",
            _ => return None,
        };
        // sqlx shows a file as `file: <path>`, and PEM given inline as itself.
        let path = value.strip_prefix("file: ")?;
        std::fs::read(path)
            .is_err()
            .then(|| (setting, path.to_owned()))
    })
}

/// The database handle: a connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    answer_within: Duration,
    email_changes: users::EmailChangeLimits,
}

/// A pooled connection an operation is using. Dropped before [`InUse::finished`] (the
/// operation cut off at the limit, or its caller gone), the connection is closed instead of
/// returned to the pool, because its state is unknown: sqlx 0.8 returns a connection whose
/// `BEGIN` was sent but not answered with no rollback queued (the transaction is not counted
/// yet), so the next operations on it ran inside that open transaction and a later rollback
/// dropped acknowledged writes (an outside attack: sign-ups answered OK, then gone); and it
/// checks a returned connection with a round trip that has no limit, holding its place in the
/// pool while a black-holed network never answers. Closed, it gives its place in the pool back
/// once its close is sent (sqlx gives that 5 s at most); PostgreSQL rolls back what a closed
/// connection left open.
///
/// A connection whose operation finished goes back to the pool through sqlx's check (one
/// round trip), given `limit`: past it the check is dropped, and the connection with it, its
/// place given back. Unbounded, a network that black-holed the connection just after its
/// operation held its place for ever (an outside attack stranded all ten so, one by one).
struct InUse {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    /// Set when the operation ran to its end: the connection then goes back to the pool.
    finished: bool,
    limit: Duration,
}

impl Drop for InUse {
    fn drop(&mut self) {
        if self.finished {
            let returning = self.conn.return_to_pool();
            tokio::spawn(tokio::time::timeout(self.limit, returning));
        } else {
            self.conn.close_on_drop();
        }
    }
}

/// How long each store operation (acquiring a connection included) may take by default before
/// it ends with [`StoreError::NoAnswer`]. A PostgreSQL that is stopped or hung still accepts
/// TCP connections and never answers on those the pool holds: without a limit every call
/// waited for its caller's own deadline. Below the server's 10 s request limit, so a call
/// ends UNAVAILABLE, not DEADLINE_EXCEEDED; a task retries without using up an attempt.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A pooled connection idle for longer than this is checked (a round trip) before it is handed
/// out; one used more recently is handed out as it is.
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

impl Store {
    /// A pool for `db_source` that connects on first use. Acquiring a connection gives up after
    /// a few seconds, so callers see `Unavailable` instead of hanging when PostgreSQL is down.
    ///
    /// By default sqlx checks every connection with a round trip before handing it out (and
    /// again after it is returned, which cannot be turned off): three round trips per
    /// statement, the first check a sixth of the worker's CPU while sign-ups were saturated. Only connections idle for over [`PING_IDLE_AFTER`] are checked
    /// here, so those a restart of PostgreSQL broke while idle are still replaced unseen; a
    /// connection broken in the second after its last use fails its statement, which reports
    /// `Unavailable` (an RPC error, or a task retried).
    pub fn connect_lazy(db_source: &Secret<String>) -> Result<Self, StoreError> {
        let options: PgConnectOptions = db_source.expose().parse().map_err(StoreError::Database)?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(3))
            .test_before_acquire(false)
            // PostgreSQL ends a statement of ours at the same limit as we give up on it: one
            // cut off while it waits (on a lock, say) would hold its backend until it ends,
            // and the pool opens another meanwhile (an outside attack filled PostgreSQL's
            // connections so, in 40 s, behind one lock held for 75 s). A SET, not the startup
            // `options`, which poolers such as PgBouncer refuse.
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::Executor::execute(
                        &mut *conn,
                        format!("SET statement_timeout = {}", ANSWER_WITHIN.as_millis()).as_str(),
                    )
                    .await?;
                    Ok(())
                })
            })
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        Ok(Self::from_pool(pool))
    }

    /// A store on a pool the caller built (its own options, or one shared with other code).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            answer_within: ANSWER_WITHIN,
            email_changes: users::EmailChangeLimits::DEFAULT,
        }
    }

    /// This store with `limits` on address changes instead of the defaults.
    pub fn with_email_change_limits(mut self, limits: users::EmailChangeLimits) -> Self {
        self.email_changes = limits;
        self
    }

    /// This store with each operation limited to `limit` instead of [`ANSWER_WITHIN`].
    pub fn with_answer_within(mut self, limit: Duration) -> Self {
        self.answer_within = limit;
        self
    }

    /// Runs `operation` on a connection of the pool, within the limit (the wait for the
    /// connection included). Past it the operation is dropped and the call ends with
    /// [`StoreError::NoAnswer`]. The connection goes back to the pool only if the operation
    /// ran to its end; one cut off (by the limit, or by the caller dropping the call: a
    /// client's deadline, a reset) is closed, see [`InUse`].
    async fn answer<T, E: From<StoreError>>(
        &self,
        operation: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T, E> {
        let deadline = tokio::time::Instant::now() + self.answer_within;
        let no_answer = || E::from(StoreError::NoAnswer(self.answer_within));
        let conn = tokio::time::timeout_at(deadline, self.pool.acquire())
            .await
            .map_err(|_| no_answer())?
            .map_err(|err| E::from(StoreError::from(err)))?;
        let mut in_use = InUse {
            conn,
            finished: false,
            limit: self.answer_within,
        };
        let done = tokio::time::timeout_at(deadline, operation(&mut in_use.conn))
            .await
            .map_err(|_| no_answer())?;
        in_use.finished = true;
        done
    }

    /// The underlying pool, for queries this module does not provide (tests, tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.migration_connection().await?;
        crate::MIGRATOR
            .run_direct(&mut *conn)
            .await
            .map_err(|err| match err {
                sqlx::migrate::MigrateError::Execute(inner) if is_unavailable(&inner) => {
                    StoreError::Unavailable(inner)
                }
                other => StoreError::Migrate(other),
            })
    }

    /// Reverts every migration (what `make migratedown` does).
    pub async fn migrate_down(&self) -> Result<(), StoreError> {
        let mut conn = self.migration_connection().await?;
        crate::MIGRATOR
            .undo(&mut *conn, 0)
            .await
            .map_err(StoreError::Migrate)
    }

    /// A connection for the migrations: without the statement limit (a migration may take
    /// long), closed after rather than pooled with the limit lifted.
    async fn migration_connection(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        conn.close_on_drop();
        sqlx::Executor::execute(&mut *conn, "SET statement_timeout = 0").await?;
        Ok(conn)
    }

    /// Succeeds when PostgreSQL answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.answer(async |conn| {
            sqlx::query!("SELECT 1 AS one")
                .fetch_one(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use crate::testing::TestDb;

    use super::PING_IDLE_AFTER;

    #[tokio::test]
    async fn connections_the_database_dropped_while_idle_are_replaced_unseen() {
        let db = TestDb::create().await;
        db.store.ping().await.expect("a pooled connection");

        // What a restart of PostgreSQL does to pooled connections: their backends go away.
        let mut admin = sqlx::PgConnection::connect(db.url.expose())
            .await
            .expect("a connection of the test's own");
        let terminated: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut admin)
        .await
        .expect("terminate the pool's connections");
        assert!(!terminated.is_empty(), "the pool held a connection");

        // Idle for longer than the pool's threshold: checked before use, found dead, replaced.
        tokio::time::sleep(PING_IDLE_AFTER + std::time::Duration::from_millis(200)).await;
        db.store
            .ping()
            .await
            .expect("a dead idle connection is replaced, not handed out");
    }

    /// A PostgreSQL that hangs (SIGSTOP: its port accepts, nothing answers) ends each store
    /// operation at the store's limit with `NoAnswer`, on a connection the pool held and on a
    /// new one alike; once it goes on, the store answers again. Without the limit each call
    /// waited for its caller's deadline (the 30 s guard here).
    #[tokio::test]
    async fn a_hung_database_ends_each_operation_at_the_limit() {
        use crate::testing::{PostgresServer, eventually};
        let postgres = PostgresServer::start("hung-pw");
        let source = super::Secret::new(format!(
            "postgres://postgres:hung-pw@127.0.0.1:{}/postgres?sslmode=disable",
            postgres.port
        ));
        let store = super::Store::connect_lazy(&source)
            .expect("store")
            .with_answer_within(std::time::Duration::from_secs(1));
        store.migrate().await.expect("migrate");
        assert!(matches!(
            store.get_user("nobody").await,
            Err(super::StoreError::NotFound)
        ));

        let paused = postgres.pause();
        // Two at once: one on the connection used just now, one on a new connection.
        let guard = std::time::Duration::from_secs(30);
        let (first, second) = tokio::time::timeout(guard, async {
            tokio::join!(store.get_user("nobody"), store.ping())
        })
        .await
        .expect("ended by the store's limit, not the guard");
        for err in [first.map(|_| ()), second] {
            let err = err.expect_err("no answer");
            assert!(
                matches!(err, super::StoreError::NoAnswer(_)) && err.is_unavailable(),
                "{err:?}"
            );
            assert_eq!(err.to_string(), "the database did not answer within 1s");
        }

        drop(paused);
        eventually(
            "the store answers again",
            std::time::Duration::from_secs(30),
            || {
                let store = store.clone();
                async move {
                    matches!(
                        store.get_user("nobody").await,
                        Err(super::StoreError::NotFound)
                    )
                }
            },
        )
        .await;
    }

    /// A database behind something that accepts connections and closes them at once (a proxy
    /// in front of a database that is down) is unavailable, whatever the `sslmode`: it was a
    /// "database error" with sslmode prefer (sqlx reads the SSLRequest's answer from a closed
    /// connection as a 0 byte), so a task failing on it used up its attempts.
    #[tokio::test]
    async fn a_peer_that_closes_at_once_is_unavailable() {
        use crate::testing::TcpProxy;
        let db = TestDb::create().await;
        let proxy = TcpProxy::start_closed(db.server_address()).await;
        let url = db.url_via(proxy.port);
        for sslmode in ["prefer", "require", "disable"] {
            let source = super::Secret::new(format!(
                "{}{}sslmode={sslmode}",
                url.expose(),
                if url.expose().contains('?') { "&" } else { "?" }
            ));
            let store = super::Store::connect_lazy(&source).expect("store");
            let err = store.ping().await.expect_err("nothing answers");
            assert!(err.is_unavailable(), "sslmode={sslmode}: {err:?}");
        }
        assert!(proxy.refused() >= 3);
    }

    /// Operations on connections that a network black-holes (a failover behind it: the old
    /// connections never answer nor reset, new ones reach the database) end at the limit and
    /// their connections are closed, so the pool makes new ones and the store answers again.
    /// Returned to the pool, each was first checked with a round trip that waited without
    /// limit, holding its place: with every place so held, nothing answered any more.
    #[tokio::test]
    async fn connections_cut_off_at_the_limit_are_closed_not_kept() {
        use crate::testing::{TcpProxy, eventually};
        let db = TestDb::create().await;
        let proxy = TcpProxy::start(db.server_address()).await;
        let options: sqlx::postgres::PgConnectOptions =
            db.url_via(proxy.port).expose().parse().expect("options");
        // A small pool that checks nothing before use: every operation reaches its statement.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .acquire_timeout(std::time::Duration::from_secs(2))
            .test_before_acquire(false)
            .connect_lazy_with(options);
        let store = super::Store::from_pool(pool.clone())
            .with_answer_within(std::time::Duration::from_millis(500));
        let held: Vec<_> = hold_connections(&pool, 3).await;
        drop(held);
        eventually(
            "three idle connections",
            std::time::Duration::from_secs(10),
            || {
                let idle = pool.num_idle();
                async move { idle == 3 }
            },
        )
        .await;

        proxy.freeze();
        for _ in 0..3 {
            let err = store.ping().await.expect_err("a black-holed connection");
            assert!(matches!(err, super::StoreError::NoAnswer(_)), "{err:?}");
        }
        eventually(
            "the store answers on new connections",
            std::time::Duration::from_secs(30),
            || {
                let store = store.clone();
                async move { store.ping().await.is_ok() }
            },
        )
        .await;
    }

    /// `n` connections of `pool` at once.
    async fn hold_connections(
        pool: &sqlx::PgPool,
        n: usize,
    ) -> Vec<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(pool.acquire().await.expect("a connection"));
        }
        held
    }

    /// Operations their callers drop while PostgreSQL hangs (a client's deadline), some with a
    /// `BEGIN` sent and not answered, leave nothing behind: once PostgreSQL goes on, writes
    /// through the store are committed and no connection is idle in a transaction. sqlx
    /// returned such a connection to the pool with its transaction open and no rollback
    /// queued: later writes on it ran inside it and were lost (an outside attack: sign-ups
    /// answered OK, then gone).
    #[tokio::test]
    async fn operations_dropped_by_their_callers_leave_no_transaction_open() {
        use crate::testing::PostgresServer;
        let postgres = PostgresServer::start("dropped-pw");
        let source = super::Secret::new(format!(
            "postgres://postgres:dropped-pw@127.0.0.1:{}/postgres?sslmode=disable",
            postgres.port
        ));
        // No client-side limit of the store's own here: only the callers give up.
        let store = super::Store::connect_lazy(&source)
            .expect("store")
            .with_answer_within(std::time::Duration::from_secs(600));
        store.migrate().await.expect("migrate");
        let verify_all = |n: i64| {
            let mut calls = tokio::task::JoinSet::new();
            for id in 0..n {
                let store = store.clone();
                calls.spawn(async move {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_millis(500),
                        store.verify_email(id, &"a".repeat(32)),
                    )
                    .await;
                });
            }
            calls.join_all()
        };
        // Eight connections used just now (not checked again before use), then hung.
        verify_all(8).await;
        let paused = postgres.pause();
        verify_all(8).await;
        drop(paused);

        for n in 0..6 {
            let user = crate::domain::NewUser::parse(
                &format!("after{n}"),
                "Alice Liddell",
                &format!("after{n}@example.com"),
                "secret-password-1".into(),
            )
            .expect("user");
            let task = simplebank_queue::Task::new(&crate::tasks::SendVerifyEmail {
                username: format!("after{n}"),
            })
            .expect("task");
            store
                .create_user(&user, &super::Secret::new("$argon2id$x".into()), &task)
                .await
                .expect("signed up");
        }
        let mut own = sqlx::PgConnection::connect(source.expose())
            .await
            .expect("a connection of the test's own");
        let (users, open): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM users), \
               (SELECT count(*) FROM pg_stat_activity \
                WHERE datname = current_database() AND state LIKE 'idle in transaction%')",
        )
        .fetch_one(&mut own)
        .await
        .expect("counts");
        assert_eq!(users, 6, "every acknowledged sign-up is committed");
        assert_eq!(open, 0, "no connection idle in a transaction");
    }

    /// A connection whose operation finished goes back to the pool within the limit or not at
    /// all: behind a network that black-holes it right then, sqlx's check before it is pooled
    /// again waited for ever, holding its place.
    #[tokio::test]
    async fn a_finished_operations_connection_is_returned_within_the_limit_or_dropped() {
        use crate::testing::{TcpProxy, eventually};
        let db = TestDb::create().await;
        let proxy = TcpProxy::start(db.server_address()).await;
        let options: sqlx::postgres::PgConnectOptions =
            db.url_via(proxy.port).expose().parse().expect("options");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_lazy_with(options);
        let conn = pool.acquire().await.expect("a connection");
        assert_eq!(pool.size(), 1);
        proxy.freeze();
        drop(super::InUse {
            conn,
            finished: true,
            limit: std::time::Duration::from_millis(500),
        });
        eventually(
            "its place is given back",
            std::time::Duration::from_secs(30),
            || {
                let size = pool.size();
                async move { size == 0 }
            },
        )
        .await;
    }

    /// A statement that waits past the limit (on a lock held elsewhere) is ended by PostgreSQL
    /// too, not only given up on here: its backend would otherwise wait on while the pool
    /// opened others (an outside attack filled PostgreSQL's connections so). The caller gets
    /// `NoAnswer`, and a statement ended by PostgreSQL reads as unavailable.
    #[tokio::test]
    async fn a_statement_given_up_on_ends_in_postgresql_too() {
        let db = TestDb::create().await;
        sqlx::query(
            "INSERT INTO users (username, hashed_password, full_name, email) \
             VALUES ('alice', 'x', 'Alice Liddell', 'alice@example.com')",
        )
        .execute(db.store.pool())
        .await
        .expect("user");
        let session = db.live_session("alice").await;
        let mut holder = db.store.pool().begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM users WHERE username = 'alice' FOR UPDATE")
            .execute(&mut *holder)
            .await
            .expect("lock the row");
        let rename = crate::domain::UserUpdate::parse(Some("Alice L"), None, None)
            .expect("a field")
            .expect("valid");
        let task = simplebank_queue::Task::new(&crate::tasks::SendVerifyEmail {
            username: "alice".into(),
        })
        .expect("task");
        let rename = || {
            db.store
                .update_user("alice", &rename, None, None, &task, session)
        };
        let (a, b, c) = tokio::join!(rename(), rename(), rename());
        for renamed in [a, b, c] {
            let err = renamed.expect_err("the row is locked");
            assert!(err.is_unavailable(), "{err:?}");
        }
        crate::testing::eventually(
            "no statement of the store waits on the lock",
            std::time::Duration::from_secs(30),
            || async { db.waiting_on_locks().await.is_ok_and(|n| n == 0) },
        )
        .await;
        holder.rollback().await.expect("release");
    }

    /// Every CA file sqlx would read is checked: sqlx reads `sslrootcert` as a form-encoded
    /// query value (`+` is a space), also under `ssl-root-cert` and `ssl-ca`, and takes the
    /// last one given. (Found by an outside attack: a check of the first `sslrootcert=` as
    /// written let these through; the server then exited 1 and the worker started silently.)
    /// PostgreSQL is down here (a closed port): an unreadable file is refused even then, and a
    /// readable one passes.
    #[tokio::test]
    async fn every_ca_file_sqlx_would_read_is_checked() {
        let dir = crate::testing::TempDir::new();
        // The file the check reads; sqlx reads "a b.pem", which is not there.
        std::fs::write(dir.0.join("a+b.pem"), "not read by sqlx").expect("a+b.pem");
        let base = dir.0.display().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let source = |query: &str| {
            super::Secret::new(format!(
                "postgres://u:pw@127.0.0.1:{port}/db?sslmode=verify-full&{query}"
            ))
        };
        let missing = format!("{base}/missing.pem");
        let readable = format!("{base}/a+b.pem");
        let mut passed = Vec::new();
        for query in [
            format!("sslrootcert={missing}"),
            format!("sslrootcert={base}/a+b.pem"),
            format!("ssl-ca={missing}"),
            format!("ssl-root-cert={missing}"),
            format!("sslrootcert={readable}&sslrootcert={missing}"),
        ] {
            if super::check_access(&source(&query)).await.is_ok() {
                passed.push(query);
            }
        }
        assert!(passed.is_empty(), "pass the start-up check: {passed:#?}");
        // A file sqlx can read passes (PostgreSQL being down is not a setting).
        for query in [
            format!("sslrootcert={}", readable.replace('+', "%2B")),
            format!("ssl-ca={}", readable.replace('+', "%2B")),
        ] {
            assert!(
                super::check_access(&source(&query)).await.is_ok(),
                "{query} is refused"
            );
        }
    }
}
