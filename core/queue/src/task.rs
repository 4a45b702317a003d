//! The task model, split by who sets what:
//! - [`Task`]: what a producer sets (payload, queue, retry budget, timeout, deadline, delay,
//!   uniqueness). Its fields are private: every option goes through a checked `with_*` method.
//! - [`Envelope`]: a task as it travels through the stream, with the delivery state the
//!   engine owns (attempt number, first failure, last error). Crate-private: no caller can set
//!   an attempt.
//! - What a handler receives is its decoded payload and a [`crate::TaskContext`].

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use time::OffsetDateTime;

use crate::{
    keys::{Keys, NameError, QueueName},
    trace::{self, TraceContext},
};

/// A typed task payload: its wire name and the defaults of its options.
///
/// ```
/// use simplebank_queue::TaskPayload;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Resize { image: String }
///
/// impl TaskPayload for Resize {
///     // The name on the wire: stable across Rust renames, so queued tasks survive them.
///     const TYPE: &'static str = "images:resize";
///     const QUEUE: &'static str = "low";
/// }
/// ```
pub trait TaskPayload: Serialize + DeserializeOwned + Send + 'static {
    /// The `type` field the engine dispatches on. Declared once, here; handlers are
    /// registered by payload type ([`crate::Handlers::on`]), never by this string.
    const TYPE: &'static str;
    /// The queue (stream) the task is published to; checked by [`Task::new`].
    const QUEUE: &'static str = "default";
    /// How many times a failed task is retried before it goes to the dead letters.
    const MAX_RETRY: u32 = DEFAULT_MAX_RETRY;
    /// How long one attempt may run before it counts as failed.
    const TIMEOUT: Duration = DEFAULT_TIMEOUT;
    /// Whether the payload holds something no operator may read (a secret, a token): the task
    /// then carries a `sensitive` mark, and the admin service never shows its payload. The
    /// mark travels with the task (stream entry, retries, dead letters), so a reader needs
    /// neither this type nor its crate to honour it.
    const SENSITIVE: bool = false;
}

/// Default `max_retry`: 25, as asynq.
pub const DEFAULT_MAX_RETRY: u32 = 25;
/// Default timeout of one attempt: 30 minutes, as asynq.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a task with an id ([`Task::with_task_id`]) is remembered after it finished or
/// died: a republish of that very task (an outbox row whose publish is retried, for instance
/// while no replica acknowledges it) is then recognised as already enqueued instead of run
/// again. One small key per such task for this long (asynq's `Retention` is the model).
pub const DONE_MARKER_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// When a delayed task becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Schedule {
    /// At this time, in ms since the Unix epoch.
    At(i64),
    /// This many ms after Redis receives the task (Redis' own clock).
    In(u64),
}

/// One unit of background work as a producer builds it: a payload and its enqueue options.
///
/// It serializes (serde) so it can wait in a database outbox before it is published; the
/// JSON keeps the names of the stream fields.
///
/// ```
/// use std::time::Duration;
/// use simplebank_queue::{Task, TaskPayload};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Welcome { user: String }
/// impl TaskPayload for Welcome { const TYPE: &'static str = "welcome"; }
///
/// let task = Task::new(&Welcome { user: "alice".into() })?
///     .with_max_retry(3)
///     .with_task_id("welcome-alice")?
///     .with_process_in(Duration::from_secs(60));
/// assert_eq!(task.id(), "welcome-alice");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id (a UUID unless the producer chose one); handlers key their side effects on it.
    /// Checked when read back too (the outbox stores tasks as JSON), as `with_task_id` checks it.
    #[serde(deserialize_with = "checked_task_id")]
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The payload as JSON text. It may hold personal data: never log it.
    pub(crate) payload: String,
    pub(crate) queue: QueueName,
    pub(crate) max_retry: u32,
    #[serde(deserialize_with = "checked_timeout_ms")]
    pub(crate) timeout_ms: u64,
    /// Attempts starting after this time (ms since the epoch) are not run: the task is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deadline: Option<i64>,
    /// When the task was created, in milliseconds since the Unix epoch.
    pub(crate) enqueued_at: i64,
    /// W3C trace context of the producer, carried across the queue.
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    /// The uniqueness lock this task holds, as the suffix of `{ns:q}:unique:<suffix>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unique: Option<String>,
    /// Run later instead of now. Not carried in the stream entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) schedule: Option<Schedule>,
    /// How long the uniqueness lock lives (ms); `None` with a lock means until the task
    /// finishes or is dead-lettered. Not carried in the stream entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unique_ttl_ms: Option<u64>,
    /// The payload must not be shown ([`TaskPayload::SENSITIVE`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) sensitive: bool,
}

/// A task that cannot be built or an option value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The payload does not serialize to JSON.
    #[error("the payload of a {kind} task does not serialize")]
    Payload {
        /// The payload's [`TaskPayload::TYPE`].
        kind: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The payload type declares a queue name that is not one.
    #[error("task type {kind} declares queue {queue:?}")]
    Queue {
        /// The payload's [`TaskPayload::TYPE`].
        kind: &'static str,
        /// The declared [`TaskPayload::QUEUE`].
        queue: &'static str,
        /// Why it is not a queue name.
        #[source]
        source: NameError,
    },
    /// `with_task_id` got an id that is empty, too long, or holds spaces or control characters.
    #[error("task_id must be 1-200 printable characters without spaces")]
    TaskId,
    /// `with_unique` got a zero time-to-live.
    #[error("the unique time-to-live must be at least 1 ms")]
    UniqueTtl,
    /// `with_timeout` got a zero timeout.
    #[error("the timeout must be at least 1 ms")]
    Timeout,
}

impl Task {
    /// A new task for `payload`, with the defaults its type declares.
    pub fn new<P: TaskPayload>(payload: &P) -> Result<Self, TaskError> {
        let queue = QueueName::parse(P::QUEUE).map_err(|source| TaskError::Queue {
            kind: P::TYPE,
            queue: P::QUEUE,
            source,
        })?;
        let payload = serde_json::to_string(payload).map_err(|source| TaskError::Payload {
            kind: P::TYPE,
            source,
        })?;
        Ok(Self {
            id: uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .to_owned(),
            kind: P::TYPE.to_owned(),
            payload,
            queue,
            max_retry: P::MAX_RETRY,
            timeout_ms: timeout_millis(P::TIMEOUT)?,
            deadline: None,
            enqueued_at: now_ms(),
            traceparent: None,
            tracestate: None,
            unique: None,
            schedule: None,
            unique_ttl_ms: None,
            sensitive: P::SENSITIVE,
        })
    }

    /// Whether the payload must never be shown to an operator ([`TaskPayload::SENSITIVE`]).
    pub fn is_sensitive(&self) -> bool {
        self.sensitive
    }

    /// The task id: a UUID, or what [`Task::with_task_id`] set.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The task's type name ([`TaskPayload::TYPE`]).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The queue it is published to.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// Retries allowed after the first attempt.
    pub fn max_retry(&self) -> u32 {
        self.max_retry
    }

    /// How long one attempt may run.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Publishes to `queue` instead of the type's default.
    pub fn with_queue(mut self, queue: QueueName) -> Self {
        self.queue = queue;
        self
    }

    /// Allows `max_retry` retries after the first attempt.
    pub fn with_max_retry(mut self, max_retry: u32) -> Self {
        self.max_retry = max_retry;
        self
    }

    /// How long one attempt may run.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, TaskError> {
        self.timeout_ms = timeout_millis(timeout)?;
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
    /// scheduled, running or retrying. For [`DONE_MARKER_TTL`] after it finished or died,
    /// enqueueing this very task again (same lock token: a republish) adds nothing
    /// ([`crate::Enqueued::AlreadyEnqueued`]); another task with the same id is accepted.
    pub fn with_task_id(mut self, id: impl Into<String>) -> Result<Self, TaskError> {
        let id = id.into();
        if !is_valid_task_id(&id) {
            return Err(TaskError::TaskId);
        }
        self.unique = Some(format!("id:{id}"));
        self.id = id;
        Ok(self)
    }

    /// Refuses a second task of the same type, queue and payload for `ttl`, or until this one
    /// finishes or is dead-lettered, whichever comes first.
    pub fn with_unique(mut self, ttl: Duration) -> Result<Self, TaskError> {
        if ttl.is_zero() {
            return Err(TaskError::UniqueTtl);
        }
        if self.unique.is_none() {
            // The queue is in the lock's key (`{ns:q}:unique:...`), not in its suffix.
            self.unique = Some(format!(
                "content:{}:{:016x}",
                self.kind,
                fnv1a(self.payload.as_bytes())
            ));
        }
        self.unique_ttl_ms = Some(millis(ttl));
        Ok(self)
    }

    /// Makes the task part of the current span's trace (a `tracing` span's, or inside a
    /// handler its task's `process` span's): the worker's span becomes a child of it, however
    /// late the task is published or run.
    pub fn with_current_trace(mut self) -> Self {
        self.set_trace(trace::current_context());
        self
    }

    /// Makes the task carry `trace` (when it holds a `traceparent`): for a producer that has
    /// the context at hand rather than in the current span.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.set_trace(trace);
        self
    }

    /// The W3C trace context the task carries.
    pub fn trace(&self) -> TraceContext {
        TraceContext {
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
        }
    }

    /// The W3C trace context the task carries, borrowed.
    pub(crate) fn remote_trace(&self) -> trace::Remote<'_> {
        trace::Remote {
            traceparent: self.traceparent.as_deref(),
            tracestate: self.tracestate.as_deref(),
        }
    }

    /// Makes the task carry `trace` (when it holds a context).
    pub(crate) fn set_trace(&mut self, trace: TraceContext) {
        if trace.traceparent.is_some() {
            self.traceparent = trace.traceparent;
            self.tracestate = trace.tracestate;
        }
    }

    /// The key of the done marker this task leaves when it finishes or dies: only a task with
    /// an id ([`Task::with_task_id`]) has one.
    pub(crate) fn done_key(&self, keys: &Keys) -> Option<String> {
        self.unique
            .as_deref()
            .is_some_and(|unique| unique.starts_with("id:"))
            .then(|| keys.done(&self.queue, &self.id))
    }

    /// The value this task writes into its uniqueness lock: its id and a hash of what it was
    /// created with. The same task republished (an outbox retry) has the same token; another
    /// task given the same id has a different one.
    pub(crate) fn lock_token(&self) -> String {
        let identity = format!("{}\0{}\0{}", self.kind, self.payload, self.enqueued_at);
        format!("{}/{:016x}", self.id, fnv1a(identity.as_bytes()))
    }
}

/// A task in the stream: the producer's [`Task`] plus the delivery state only the engine sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub task: Task,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the first failed attempt ended (ms since the epoch), once one has.
    pub first_failed_at: Option<i64>,
    /// The error (with its causes) of the last failed attempt.
    pub last_error: Option<String>,
}

impl Envelope {
    /// `task`, about to make its first attempt.
    pub fn first(task: Task) -> Self {
        Self {
            task,
            attempt: 1,
            first_failed_at: None,
            last_error: None,
        }
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
            .field("timeout_ms", &self.timeout_ms)
            .field("enqueued_at", &self.enqueued_at)
            .field("schedule", &self.schedule)
            .field("unique", &self.unique)
            .field("sensitive", &self.sensitive)
            .finish_non_exhaustive()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A timeout in whole milliseconds, a part of one counting as one: a stream entry's
/// `timeout_ms` of 0 does not decode, so 500 µs must not become 0. Zero is refused.
fn timeout_millis(timeout: Duration) -> Result<u64, TaskError> {
    if timeout.is_zero() {
        return Err(TaskError::Timeout);
    }
    Ok(millis(timeout).max(1))
}

fn epoch_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Now, in ms since the Unix epoch (this machine's clock).
pub(crate) fn now_ms() -> i64 {
    ms_since_epoch(SystemTime::now())
}

/// `at` in ms since the Unix epoch, as [`epoch_ms`] gives it (toward zero), without working
/// out a calendar date as `OffsetDateTime` does: a publish reads the clock for every task.
fn ms_since_epoch(at: SystemTime) -> i64 {
    let whole_ms = |since: Duration| i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => whole_ms(since),
        Err(before) => -whole_ms(before.duration()),
    }
}

/// 64-bit FNV-1a: a stable hash (same in every process and Rust version) for uniqueness keys.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What `with_task_id` accepts: 1-200 characters, no whitespace or control characters.
pub(crate) fn is_valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= 200
        && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn checked_task_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let id = String::deserialize(deserializer)?;
    if is_valid_task_id(&id) {
        Ok(id)
    } else {
        Err(serde::de::Error::custom(
            "a task id has 1-200 characters and no whitespace or control characters",
        ))
    }
}

fn checked_timeout_ms<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    match u64::deserialize(deserializer)? {
        0 => Err(serde::de::Error::custom("a task timeout is not zero")),
        ms => Ok(ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_since_the_epoch_are_the_calendar_clocks() {
        let epoch = SystemTime::UNIX_EPOCH;
        for at in [
            epoch,
            epoch + Duration::from_micros(1_500),
            epoch - Duration::from_micros(1_500),
            epoch - Duration::from_micros(999),
            epoch + Duration::from_secs(1_796_000_000) + Duration::from_nanos(999_999_999),
            epoch - Duration::from_secs(86_400 * 365 * 100),
            SystemTime::now(),
        ] {
            assert_eq!(
                ms_since_epoch(at),
                epoch_ms(OffsetDateTime::from(at)),
                "{at:?}"
            );
        }
    }

    #[test]
    fn task_ids_are_lowercase_hyphenated_v4_uuids() {
        let id = Task::new(&Welcome {
            username: "a".into(),
        })
        .unwrap()
        .id;
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(id, parsed.hyphenated().to_string());
        assert_eq!(parsed.get_version_num(), 4);
    }

    #[derive(Serialize, Deserialize)]
    struct Welcome {
        username: String,
    }

    impl TaskPayload for Welcome {
        const TYPE: &'static str = "test:welcome";
    }

    fn task() -> Task {
        Task::new(&Welcome {
            username: "alice".into(),
        })
        .unwrap()
    }

    /// A timeout under a millisecond is one, not 0 (which no entry may carry); 0 is refused.
    #[test]
    fn a_timeout_under_a_millisecond_is_one() {
        let task = task().with_timeout(Duration::from_micros(500)).unwrap();
        assert_eq!(task.timeout_ms, 1);
        let task = task.with_timeout(Duration::from_micros(2_500)).unwrap();
        assert_eq!(task.timeout_ms, 2);
        assert!(matches!(
            task.with_timeout(Duration::ZERO),
            Err(TaskError::Timeout)
        ));
    }

    /// JSON (the outbox's form) cannot carry what the builder refuses.
    #[test]
    fn a_task_read_from_json_is_checked_like_a_built_one() {
        let good = serde_json::to_value(task()).unwrap();
        assert!(serde_json::from_value::<Task>(good.clone()).is_ok());
        for (field, bad) in [
            ("id", serde_json::json!("")),
            ("id", serde_json::json!("a b")),
            ("id", serde_json::json!("a\nb")),
            ("id", serde_json::json!("x".repeat(201))),
            ("timeout_ms", serde_json::json!(0)),
        ] {
            let mut json = good.clone();
            json[field] = bad;
            assert!(
                serde_json::from_value::<Task>(json).is_err(),
                "{field} accepted"
            );
        }
    }

    /// A payload type that declares a bad queue gets a typed error naming it, not a panic.
    #[test]
    fn a_bad_declared_queue_is_an_error() {
        #[derive(Serialize, Deserialize)]
        struct Misplaced;
        impl TaskPayload for Misplaced {
            const TYPE: &'static str = "test:misplaced";
            const QUEUE: &'static str = "no spaces allowed";
        }
        let err = Task::new(&Misplaced).unwrap_err();
        assert!(matches!(
            err,
            TaskError::Queue {
                queue: "no spaces allowed",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "task type test:misplaced declares queue \"no spaces allowed\""
        );
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
