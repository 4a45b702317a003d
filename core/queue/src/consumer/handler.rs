//! Typed handlers and the registry the engine dispatches on. A handler is registered by its
//! payload type ([`Handlers::on`]); the engine decodes the payload once and passes it with a
//! [`TaskContext`]. Inside, handlers are kept type-erased by the payload's wire name.

use std::{
    collections::HashMap, error::Error, fmt, future::Future, marker::PhantomData, pin::Pin,
    sync::Arc,
};

use tokio_util::sync::CancellationToken;

use crate::{keys::QueueName, task::TaskPayload};

/// A boxed, sendable future.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a handler failed, and what the engine should do about it. Its text, with every cause
/// of the error it wraps, goes to the log, to the task's `last_error` and to the dead letters:
/// keep secrets and personal data out of it (mask them before wrapping the error).
pub struct HandlerError {
    source: Box<dyn Error + Send + Sync>,
    kind: FailureKind,
}

/// What a failure means for the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A failed attempt: retried with backoff until `max_retry` is used up, then dead.
    Retry,
    /// Retrying cannot help (asynq's SkipRetry): straight to the dead letters.
    SkipRetry,
    /// Not the task's fault (asynq's IsFailure = false): retried with backoff without using
    /// up an attempt.
    NotAFailure,
}

impl HandlerError {
    /// A failed attempt, retried with backoff.
    pub fn new(err: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            source: err.into(),
            kind: FailureKind::Retry,
        }
    }

    /// A failure retrying cannot fix: the task goes to the dead letters at once.
    pub fn skip_retry(err: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            source: err.into(),
            kind: FailureKind::SkipRetry,
        }
    }

    /// Not a failure of the task (a dependency is busy, say): retried later, attempt not counted.
    pub fn not_a_failure(err: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            source: err.into(),
            kind: FailureKind::NotAFailure,
        }
    }

    /// What the engine does about it.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }
}

/// Says what the wrapped error says; its causes are the wrapped error's causes, so
/// [`crate::report::chain`] prints each once.
impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("error", &crate::report::chain(self))
            .finish()
    }
}

impl Error for HandlerError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.source()
    }
}

/// What a handler may know about the delivery it is running.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) id: String,
    pub(crate) queue: QueueName,
    pub(crate) attempt: u32,
    pub(crate) max_retry: u32,
    pub(crate) deadline: tokio::time::Instant,
    /// Shared, not cloned: a token's clone takes a lock, an `Arc`'s does not.
    pub(crate) shutdown: Arc<CancellationToken>,
}

impl TaskContext {
    /// The task id. Delivery is at least once: key side effects on it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The queue the task came from.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// This attempt's number: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether a failure now sends the task to the dead letters instead of a retry.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt > self.max_retry
    }

    /// When this attempt is cut off: its timeout, or the task's deadline if sooner.
    pub fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// Whether the worker is shutting down. Running tasks may still finish within the
    /// shutdown timeout; a long handler can stop early at a safe point and return an error
    /// (the task is retried).
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Completes when the worker starts shutting down (see [`TaskContext::is_shutting_down`]).
    pub async fn shutting_down(&self) {
        self.shutdown.cancelled().await;
    }
}

/// Runs tasks whose payload is `P`. Delivery is at least once, so a handler must be
/// idempotent: key side effects on [`TaskContext::id`].
///
/// Any `Fn(P, TaskContext) -> impl Future<Output = Result<(), HandlerError>>` is one; a
/// struct with state can implement it directly.
pub trait Handler<P>: Send + Sync + 'static {
    /// Runs one attempt.
    fn handle(
        &self,
        payload: P,
        context: TaskContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + '_;
}

impl<P, F, Fut> Handler<P> for F
where
    F: Fn(P, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle(
        &self,
        payload: P,
        context: TaskContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + '_ {
        self(payload, context)
    }
}

/// A handler with its payload type erased: decodes the payload, then runs.
pub(crate) trait Erased: Send + Sync {
    fn start<'a>(
        &'a self,
        payload: &str,
        context: TaskContext,
    ) -> Result<BoxFuture<'a, Result<(), HandlerError>>, serde_json::Error>;
}

struct Typed<P, H> {
    handler: H,
    payload: PhantomData<fn() -> P>,
}

impl<P: TaskPayload, H: Handler<P>> Erased for Typed<P, H> {
    fn start<'a>(
        &'a self,
        payload: &str,
        context: TaskContext,
    ) -> Result<BoxFuture<'a, Result<(), HandlerError>>, serde_json::Error> {
        let payload: P = serde_json::from_str(payload)?;
        Ok(Box::pin(self.handler.handle(payload, context)))
    }
}

/// The handlers of one worker, by payload type.
///
/// ```
/// use simplebank_queue::{HandlerError, Handlers, TaskContext, TaskPayload};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Resize { image: String }
/// impl TaskPayload for Resize { const TYPE: &'static str = "images:resize"; }
///
/// let handlers = Handlers::new().on(|job: Resize, cx: TaskContext| async move {
///     if job.image.is_empty() {
///         return Err(HandlerError::skip_retry("no image given"));
///     }
///     println!("resizing {} (task {}, attempt {})", job.image, cx.id(), cx.attempt());
///     Ok(())
/// });
/// assert!(handlers.handles::<Resize>());
/// ```
#[derive(Clone, Default)]
pub struct Handlers {
    by_type: HashMap<&'static str, Arc<dyn Erased>>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_type.keys()).finish()
    }
}

impl Handlers {
    /// No handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs tasks of payload type `P` with `handler` (a later handler for `P` replaces it).
    pub fn on<P: TaskPayload>(mut self, handler: impl Handler<P>) -> Self {
        self.by_type.insert(
            P::TYPE,
            Arc::new(Typed {
                handler,
                payload: PhantomData,
            }),
        );
        self
    }

    /// Whether a handler for `P` is registered.
    pub fn handles<P: TaskPayload>(&self) -> bool {
        self.by_type.contains_key(P::TYPE)
    }

    /// The handler of `task_type`, with the type as registered (a bounded name, for metrics).
    pub(crate) fn get(&self, task_type: &str) -> Option<(&'static str, Arc<dyn Erased>)> {
        self.by_type
            .get_key_value(task_type)
            .map(|(name, handler)| (*name, Arc::clone(handler)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    #[derive(Debug, thiserror::Error)]
    #[error("database unavailable")]
    struct Unavailable(#[source] Refused);

    /// The cause survives the wrapping, once: "database unavailable: connection refused".
    #[test]
    fn keeps_the_cause_chain() {
        let err = HandlerError::new(Unavailable(Refused));
        assert_eq!(
            crate::report::chain(&err),
            "database unavailable: connection refused"
        );
        assert_eq!(err.kind(), FailureKind::Retry);
    }
}
