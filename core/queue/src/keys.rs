//! The Redis layout. Every key starts with the namespace in a hash tag, `{ns}`, so all of them
//! live in one Redis Cluster slot and multi-key scripts and reads work there too.
//!
//! | key                      | type   | holds                                                  |
//! |--------------------------|--------|--------------------------------------------------------|
//! | `{ns}:stream:<queue>`    | stream | tasks ready to run, one stream per queue               |
//! | `{ns}:scheduled`         | zset   | delayed tasks and retries; score = due time (ms, Redis clock); member = `{"queue": <queue>, "fields": [name, value, ...]}` |
//! | `{ns}:dead`              | stream | dead-lettered tasks: the task's fields plus `queue`, `error`, `attempts`, `first_failed_at`, `last_failed_at`; poison entries as `queue`, `error`, `raw` |
//! | `{ns}:unique:<suffix>`   | string | uniqueness lock (`id:<task id>` or `content:<queue>:<type>:<hash>`), value = the holding task's lock token (`Task::lock_token`); released when it finishes or dies |
//!
//! Consumer group on every task stream: [`GROUP`], created with `XGROUP CREATE ... 0 MKSTREAM`.
//! Task streams are never trimmed (no `MAXLEN`): an entry leaves its stream only when the
//! worker that finished it acknowledges and deletes it.
//!
//! Stream entry fields: see the `fields` module. An application may keep keys of its own under
//! `{ns}:` (simplebank's sign-in throttle does); the queue never touches keys it does not own.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The consumer group all workers of a namespace join.
pub const GROUP: &str = "workers";

/// The default namespace, `simplebank`.
pub const DEFAULT_NAMESPACE: &str = "simplebank";

/// The queues of this project, by default weight order.
pub const DEFAULT_QUEUES: [&str; 3] = ["critical", "default", "low"];

/// A namespace or queue name that is not 1-64 of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 1-64 characters of letters, digits, '_', '-' or '.'")]
pub struct NameError;

fn check_name(raw: &str) -> Result<(), NameError> {
    let valid = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid { Ok(()) } else { Err(NameError) }
}

/// The prefix of every key (`REDIS_NAMESPACE`), so tests and tenants never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// `raw`, if it is 1-64 of `[A-Za-z0-9_.-]`.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check_name(raw)?;
        Ok(Self(raw.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self(DEFAULT_NAMESPACE.into())
    }
}

/// The name of a queue (`critical`, `default`, `low`, or one an application adds).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
// Shared text: a queue name is copied for every entry read and every task run.
pub struct QueueName(std::sync::Arc<str>);

impl QueueName {
    /// `raw`, if it is 1-64 of `[A-Za-z0-9_.-]`.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check_name(raw)?;
        Ok(Self(raw.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for QueueName {
    type Error = NameError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<QueueName> for String {
    fn from(value: QueueName) -> Self {
        value.0.to_string()
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds the keys of one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    ns: Namespace,
}

impl Keys {
    /// The keys of namespace `ns`.
    pub fn new(ns: Namespace) -> Self {
        Self { ns }
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// `{ns}:stream:<queue>`: the tasks of one queue, ready to run.
    pub fn stream(&self, queue: &QueueName) -> String {
        format!("{{{}}}:stream:{}", self.ns.as_str(), queue.as_str())
    }

    /// The common prefix of task streams, `{ns}:stream:` (scripts append the queue).
    pub(crate) fn stream_prefix(&self) -> String {
        format!("{{{}}}:stream:", self.ns.as_str())
    }

    /// `{ns}:scheduled`: delayed tasks and retries, by due time.
    pub fn scheduled(&self) -> String {
        format!("{{{}}}:scheduled", self.ns.as_str())
    }

    /// `{ns}:dead`: the dead-letter stream.
    pub fn dead(&self) -> String {
        format!("{{{}}}:dead", self.ns.as_str())
    }

    /// `{ns}:unique:<suffix>`: a uniqueness lock. Without one, a placeholder in the same slot
    /// (scripts take a key either way; the placeholder is never written).
    pub(crate) fn unique(&self, suffix: Option<&str>) -> String {
        match suffix {
            Some(suffix) => format!("{{{}}}:unique:{suffix}", self.ns.as_str()),
            None => format!("{{{}}}:unique", self.ns.as_str()),
        }
    }

    /// The pattern matching every key of the namespace (for clean-up in tests and tools).
    pub fn pattern(&self) -> String {
        format!("{{{}}}:*", self.ns.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let keys = Keys::new(Namespace::default());
        let critical = QueueName::parse("critical").unwrap();
        assert_eq!(keys.stream(&critical), "{simplebank}:stream:critical");
        assert_eq!(keys.scheduled(), "{simplebank}:scheduled");
        assert_eq!(keys.dead(), "{simplebank}:dead");
        assert_eq!(keys.unique(Some("id:x")), "{simplebank}:unique:id:x");
    }

    #[test]
    fn names() {
        assert!(Namespace::parse("tenant-1.a_b").is_ok());
        for bad in ["", "a:b", "{x}", "a b", &"x".repeat(65)] {
            assert!(Namespace::parse(bad).is_err(), "{bad:?}");
            assert!(QueueName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
