//! The task model: what a task is, how it is laid out in Redis, and how it is published.
//!
//! - [`Task`]: the envelope (id, type, JSON payload, queue, retry budget, trace context).
//! - [`fields`]: the envelope as the fields of one Redis Stream entry, and back.
//! - [`keys`]: every Redis key the project uses, documented in one place.
//! - [`publish`]: XADD onto the stream of the task's queue.

pub mod fields;
pub mod keys;
pub mod publish;

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use fields::DecodeError;
pub use keys::{GROUP, Keys, Namespace, QueueName};
pub use publish::{PublishError, Publisher};

/// A typed task payload: its type name, where it goes and how long it may run by default.
pub trait TaskPayload: Serialize + DeserializeOwned {
    /// The `type` field, which the worker dispatches on.
    const TYPE: &'static str;
    /// The queue (stream) the task is published to.
    const QUEUE: &'static str;
    /// How many times a failed task is retried before it is given up.
    const MAX_RETRY: u32;
    /// How long one attempt may run before it counts as failed.
    const TIMEOUT: Duration;
}

/// One unit of background work, as it travels through the outbox and the stream.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id (a UUID unless the producer chose one); handlers key their side effects on it.
    pub id: String,
    /// The task type, e.g. `task:send_verify_email`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload as JSON text. It may hold personal data: never log it.
    pub payload: String,
    pub queue: QueueName,
    pub max_retry: u32,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub timeout_ms: u64,
    /// When the task was created, in milliseconds since the Unix epoch.
    pub enqueued_at: i64,
    /// W3C trace context of the producer, carried across the queue.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Task {
    /// A new task for `payload`, with the defaults its type declares.
    pub fn new<P: TaskPayload>(payload: &P) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: uuid::Uuid::new_v4().to_string(),
            kind: P::TYPE.to_owned(),
            payload: serde_json::to_string(payload)?,
            queue: QueueName::parse(P::QUEUE).expect("task types declare valid queue names"),
            max_retry: P::MAX_RETRY,
            attempt: 1,
            timeout_ms: u64::try_from(P::TIMEOUT.as_millis()).unwrap_or(u64::MAX),
            enqueued_at: now_ms(),
            traceparent: None,
            tracestate: None,
        })
    }

    /// The payload decoded as `P`.
    pub fn payload<P: TaskPayload>(&self) -> Result<P, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The payload may hold personal data, so `Debug` leaves it out.
impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("type", &self.kind)
            .field("queue", &self.queue)
            .field("max_retry", &self.max_retry)
            .field("attempt", &self.attempt)
            .field("timeout_ms", &self.timeout_ms)
            .field("enqueued_at", &self.enqueued_at)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}
