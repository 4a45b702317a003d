//! simplebank-core: everything about a sign-up that is not transport.
//!
//! - [`domain`]: validated input types (`Username`, `Email`, ...); an invalid value cannot exist.
//! - [`store`]: PostgreSQL access with sqlx (users, the task outbox, verification records).
//! - [`task`]: the task envelope, its Redis Streams encoding, the key layout and the publisher.
//! - [`tasks`]: the task types this project defines (`send_verify_email`).
//! - [`outbox`]: publishing committed outbox rows to Redis under a lease (no connection held
//!   across Redis), at least once, safe with many servers.
//! - [`report`]: an error and its causes as one line, for logs.
//! - [`config`]: reading the environment (and `app.env`) with errors naming the variable.
//!
//! The crate is a library for embedding: the server and the worker are thin users of it.

pub mod config;
pub mod domain;
pub mod outbox;
pub mod password;
pub mod redis_client;
pub mod report;
pub mod secret;
pub mod store;
pub mod task;
pub mod tasks;

#[cfg(feature = "test-util")]
pub mod testing;

/// The migrations in `migrations/` at the workspace root, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
