//! The task model: what a task is, how it is laid out in Redis, and how it is published.
//!
//! - [`Task`]: the envelope (id, type, JSON payload, queue, retry budget, trace context) and
//!   the options of its enqueue (delay, uniqueness).
//! - [`fields`]: the envelope as the fields of one Redis Stream entry, and back.
//! - [`keys`]: every Redis key the project uses, documented in one place.
//! - [`scripts`]: the Lua scripts that move a task between states atomically.
//! - [`publish`]: enqueueing (XADD, or the scheduled set for delayed tasks).
//! - [`dead`]: the dead-letter stream: list, requeue, delete.

pub mod dead;
pub mod fields;
pub mod keys;
pub mod publish;
pub mod scripts;

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use simplebank_observability::propagation::TraceContext;
use time::OffsetDateTime;

pub use dead::{DeadLetters, DeadTask};
pub use fields::DecodeError;
pub use keys::{GROUP, Keys, Namespace, QueueName};
pub use publish::{Enqueued, PublishError, Publisher};

/// A typed task payload: its type name and the defaults of its options.
pub trait TaskPayload: Serialize + DeserializeOwned {
    /// The `type` field, which the worker dispatches on.
    const TYPE: &'static str;
    /// The queue (stream) the task is published to.
    const QUEUE: &'static str = "default";
    /// How many times a failed task is retried before it goes to the dead letters.
    const MAX_RETRY: u32 = DEFAULT_MAX_RETRY;
    /// How long one attempt may run before it counts as failed.
    const TIMEOUT: Duration = DEFAULT_TIMEOUT;
}

/// Default `max_retry`: 25, as asynq.
pub const DEFAULT_MAX_RETRY: u32 = 25;
/// Default timeout of one attempt: 30 minutes, as asynq.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// When a delayed task becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// At this time, in ms since the Unix epoch.
    At(i64),
    /// This many ms after Redis receives the task (Redis' own clock).
    In(u64),
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
    /// Attempts starting after this time (ms since the epoch) are not run: the task is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    /// When the task was created, in milliseconds since the Unix epoch.
    pub enqueued_at: i64,
    /// W3C trace context of the producer, carried across the queue.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// The uniqueness lock this task holds, as the suffix of `{ns}:unique:<suffix>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<String>,
    /// When the first failed attempt ended (ms since the epoch), once one has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failed_at: Option<i64>,
    /// The error of the last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Enqueue option: run later instead of now. Not carried in the stream entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Enqueue option: how long the uniqueness lock lives (ms); `None` with a lock means until
    /// the task finishes or is dead-lettered. Not carried in the stream entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_ttl_ms: Option<u64>,
}

/// An option value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("task_id must be 1-200 printable characters without spaces")]
    TaskId,
    #[error("the unique time-to-live must be at least 1 ms")]
    UniqueTtl,
    #[error("the timeout must be at least 1 ms")]
    Timeout,
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
            timeout_ms: millis(P::TIMEOUT),
            deadline: None,
            enqueued_at: now_ms(),
            traceparent: None,
            tracestate: None,
            unique: None,
            first_failed_at: None,
            last_error: None,
            schedule: None,
            unique_ttl_ms: None,
        })
    }

    /// The payload decoded as `P`.
    pub fn payload<P: TaskPayload>(&self) -> Result<P, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }

    pub fn with_queue(mut self, queue: QueueName) -> Self {
        self.queue = queue;
        self
    }

    pub fn with_max_retry(mut self, max_retry: u32) -> Self {
        self.max_retry = max_retry;
        self
    }

    /// How long one attempt may run.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, OptionError> {
        if timeout.is_zero() {
            return Err(OptionError::Timeout);
        }
        self.timeout_ms = millis(timeout);
        Ok(self)
    }

    /// No attempt starts after `deadline`, and a running one is cut off at it.
    pub fn with_deadline(mut self, deadline: OffsetDateTime) -> Self {
        self.deadline = Some(epoch_ms(deadline));
        self
    }

    /// Ready at `at` (never before; at once if `at` has passed).
    pub fn with_process_at(mut self, at: OffsetDateTime) -> Self {
        self.schedule = Some(Schedule::At(epoch_ms(at)));
        self
    }

    /// Ready `delay` after Redis receives it.
    pub fn with_process_in(mut self, delay: Duration) -> Self {
        self.schedule = Some(Schedule::In(millis(delay)));
        self
    }

    /// Uses `id` as the task id. Enqueueing is refused while a task with this id is queued,
    /// scheduled, running or retrying.
    pub fn with_task_id(mut self, id: impl Into<String>) -> Result<Self, OptionError> {
        let id = id.into();
        if id.is_empty()
            || id.chars().count() > 200
            || id.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(OptionError::TaskId);
        }
        self.unique = Some(format!("id:{id}"));
        self.id = id;
        Ok(self)
    }

    /// Refuses a second task of the same type, queue and payload for `ttl`, or until this one
    /// finishes or is dead-lettered, whichever comes first.
    pub fn with_unique(mut self, ttl: Duration) -> Result<Self, OptionError> {
        if ttl.is_zero() {
            return Err(OptionError::UniqueTtl);
        }
        if self.unique.is_none() {
            self.unique = Some(format!(
                "content:{}:{}:{:016x}",
                self.queue,
                self.kind,
                fnv1a(self.payload.as_bytes())
            ));
        }
        self.unique_ttl_ms = Some(millis(ttl));
        Ok(self)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The W3C trace context the task carries.
    pub fn trace(&self) -> TraceContext {
        TraceContext {
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
        }
    }

    /// Makes the task carry `trace` (when it holds a context).
    pub fn set_trace(&mut self, trace: TraceContext) {
        if trace.traceparent.is_some() {
            self.traceparent = trace.traceparent;
            self.tracestate = trace.tracestate;
        }
    }

    /// The value this task writes into its uniqueness lock: its id and a hash of what it was
    /// created with. The same task republished (an outbox retry) has the same token; another
    /// task given the same id has a different one.
    pub fn lock_token(&self) -> String {
        let identity = format!("{}\0{}\0{}", self.kind, self.payload, self.enqueued_at);
        format!("{}/{:016x}", self.id, fnv1a(identity.as_bytes()))
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
            .field("schedule", &self.schedule)
            .field("unique", &self.unique)
            .finish_non_exhaustive()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn epoch_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Now, in ms since the Unix epoch (this machine's clock).
pub fn now_ms() -> i64 {
    epoch_ms(OffsetDateTime::now_utc())
}

/// 64-bit FNV-1a: a stable hash (same in every process and Rust version) for uniqueness keys.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::SendVerifyEmail;

    fn task() -> Task {
        Task::new(&SendVerifyEmail {
            username: "alice".into(),
        })
        .unwrap()
    }

    #[test]
    fn options() {
        let t = task().with_task_id("welcome-alice").unwrap();
        assert_eq!(t.id, "welcome-alice");
        assert_eq!(t.unique.as_deref(), Some("id:welcome-alice"));
        assert!(task().with_task_id("has space").is_err());
        assert!(task().with_task_id("").is_err());

        let a = task().with_unique(Duration::from_secs(60)).unwrap();
        let b = task().with_unique(Duration::from_secs(60)).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(
            a.unique, b.unique,
            "same type, queue and payload: same lock"
        );
        assert_eq!(a.unique_ttl_ms, Some(60_000));
        assert!(task().with_unique(Duration::ZERO).is_err());
        assert!(task().with_timeout(Duration::ZERO).is_err());
        assert_eq!(
            task().with_process_in(Duration::from_secs(2)).schedule,
            Some(Schedule::In(2000))
        );
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
