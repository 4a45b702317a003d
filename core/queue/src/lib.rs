//! simplebank-queue: a Redis Streams task queue to embed in a Rust service.
//!
//! - Producers build a [`Task`] from a payload type ([`TaskPayload`]) and enqueue it with a
//!   [`Publisher`]: at once, later, or at most once per id or content.
//! - A [`Worker`] consumes the queues as one member of a consumer group and runs each task
//!   with the handler registered for its payload type ([`Handlers::on`]): retries with
//!   backoff, dead letters, lease renewal, takeover of a crashed worker's tasks, graceful
//!   shutdown. Delivery is at least once; handlers key their side effects on the task id.
//! - [`DeadLetters`] lists, requeues and deletes what could not be done, queue by queue.
//! - [`queue_stats`] and [`known_queues`] read the state of the queues (for an admin service
//!   and metrics).
//! - [`admin`]: what an operator needs (queues, tasks by state with stable paging, a task by
//!   id, requeue, cancel, pause, workers), for an admin service or a CLI.
//! - [`metrics`]: OpenTelemetry metrics (messaging semantic conventions) through the API, for
//!   whatever meter provider the program installs.
//! - [`trace`]: each publish is a `send` span and each attempt a `process` span (OpenTelemetry
//!   spans through the API, from the global tracer provider unless `with_tracer` gives
//!   another), and each task carries its `send` span's W3C context to the worker. Code in a
//!   handler runs with the `process` span's context attached: `tracing` spans made there are
//!   its children (tracing-opentelemetry), and a task it builds joins the trace with
//!   [`Task::with_current_trace`].
//!
//! The Redis layout (one hash tag per queue) is documented once, on [`Keys`]; [`migrate`]
//! moves a Redis written by the old layout (one hash tag per namespace) into it. The commands
//! the queue runs (for an ACL user) are listed once, in [`acl::COMMANDS`]. Dependencies are
//! Redis (with rustls and ring for `rediss://`), serde, tokio and tracing, plus the
//! OpenTelemetry API for trace context: no SDK, exporter or database.
//!
//! ```no_run
//! use std::time::Duration;
//! use simplebank_queue::{
//!     ConsumerSettings, HandlerError, Handlers, Keys, Namespace, Publisher, Task, TaskContext,
//!     TaskPayload, Worker, connection,
//! };
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Invoice { number: u32 }
//!
//! impl TaskPayload for Invoice {
//!     const TYPE: &'static str = "billing:invoice";
//!     const MAX_RETRY: u32 = 5;
//! }
//!
//! async fn send(invoice: Invoice, cx: TaskContext) -> Result<(), HandlerError> {
//!     println!("invoice {} (task {}, attempt {})", invoice.number, cx.id(), cx.attempt());
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let namespace = Namespace::parse("billing")?;
//! let conn = connection::lazy_manager(
//!     connection::client("127.0.0.1:6379")?,
//!     connection::RESPONSE_TIMEOUT,
//! )?;
//! let publisher = Publisher::new(conn, Keys::new(namespace.clone()));
//! publisher.publish(&Task::new(&Invoice { number: 7 })?).await?;
//!
//! let worker = Worker::new(
//!     "127.0.0.1:6379",
//!     namespace,
//!     ConsumerSettings::new("billing-1"),
//!     Handlers::new().on(send),
//! )?;
//! let shutdown = CancellationToken::new();
//! worker.run(shutdown).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod acl;
pub mod admin;
pub mod connection;
mod consumer;
mod dead;
mod depth;
mod fields;
mod keys;
pub mod metrics;
pub mod migrate;
pub mod pause;
mod publish;
pub mod report;
mod retention;
mod scripts;
pub mod stats;
mod task;
pub mod trace;

#[cfg(feature = "test-util")]
pub mod testing;

pub use consumer::{
    Backoff, CatchUnwind, ConsumerError, ConsumerSettings, DEFAULT_DEAD_LETTER_MAX,
    DEFAULT_DEAD_LETTER_RETENTION, DEFAULT_VISIBILITY_TIMEOUT, FailureKind, Handler, HandlerError,
    Handlers, MAX_BLOCK, MAX_DEAD_LETTER_MAX, MIN_VISIBILITY_TIMEOUT, QueuesError, SettingsError,
    TaskContext, Worker, parse_queues,
};
pub use dead::{DeadError, DeadLetters, DeadTask};
pub use keys::{DEFAULT_NAMESPACE, DEFAULT_QUEUES, GROUP, Keys, NameError, Namespace, QueueName};
pub use pause::{pause, resume};
pub use publish::{Enqueued, PublishError, Publisher, ReplicaWait};
pub use stats::{QueueStats, known_queues, queue_stats};
pub use task::{DEFAULT_MAX_RETRY, DEFAULT_TIMEOUT, DONE_MARKER_TTL, Task, TaskError, TaskPayload};
