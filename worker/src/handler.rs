//! Task handlers and the registry the worker dispatches on.

use std::{collections::HashMap, error::Error, future::Future, pin::Pin, sync::Arc};

use simplebank_core::task::Task;

/// A boxed, sendable future (what a [`Handler`] returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a handler failed. The message goes to the log: keep secrets and personal data out.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HandlerError(Box<dyn Error + Send + Sync>);

impl HandlerError {
    pub fn new(err: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self(err.into())
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
