//! Task handlers and the registry the worker dispatches on.

use std::{collections::HashMap, error::Error, future::Future, pin::Pin, sync::Arc};

use simplebank_core::task::Task;

/// A boxed, sendable future (what a [`Handler`] returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a handler failed, and what the worker should do about it. The message goes to the log
/// and the dead letters: keep secrets and personal data out of it.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct HandlerError {
    source: Box<dyn Error + Send + Sync>,
    pub kind: FailureKind,
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
}

/// Runs tasks of one type. Delivery is at least once, so a handler must be idempotent: key
/// side effects on `task.id`.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// Handlers by task type.
#[derive(Clone, Default)]
pub struct Handlers {
    by_type: HashMap<String, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_type.keys()).finish()
    }
}

impl Handlers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for tasks whose `type` is `task_type`.
    pub fn with(mut self, task_type: &str, handler: impl Handler) -> Self {
        self.by_type.insert(task_type.to_owned(), Arc::new(handler));
        self
    }

    pub fn get(&self, task_type: &str) -> Option<Arc<dyn Handler>> {
        self.by_type.get(task_type).cloned()
    }
}
