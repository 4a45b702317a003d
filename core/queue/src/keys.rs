//! The Redis layout. A queue's keys share one hash tag, `{<ns>:<queue>}`, so they live in one
//! Redis Cluster slot (every script works on one queue's keys) and different queues spread
//! across shards. Keys of the whole namespace keep the tag `{<ns>}`. Names never contain `:`,
//! `{` or `}` ([`Namespace`], [`QueueName`]), so no queue's tag can equal another's or the
//! namespace's.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns:q}:stream` | stream | tasks of queue `q` ready to run, or running (pending with a consumer of [`GROUP`]) |
//! | `{ns:q}:scheduled` | zset | tasks delayed by `process_in`/`process_at`; score = due time (ms, Redis clock); member = `{"queue": <q>, "fields": [name, value, ...]}` |
//! | `{ns:q}:retry` | zset | tasks waiting for their next attempt; score and member as in `scheduled` |
//! | `{ns:q}:dead` | stream | dead letters of `q`: the task's fields plus `queue`, `error`, `attempts`, `first_failed_at`, `last_failed_at`, `dead_at`; a poison entry as `queue`, `error`, `attempts`, `raw`, `dead_at` |
//! | `{ns:q}:unique:<suffix>` | string | uniqueness lock (`id:<task id>` or `content:<type>:<hash>`), value = the holding task's lock token (`Task::lock_token`); released when it finishes or dies, or expires with its TTL |
//! | `{ns:q}:done:<task id>` | string | a task with an id ([`crate::Task::with_task_id`]) that finished or died: its lock token, for [`crate::DONE_MARKER_TTL`] (`PX`), so a republish of that very task is recognised instead of run again |
//! | `{ns:q}:paused` | string | `1` while the queue is paused (persistent) |
//! | `{ns:q}:stats` | hash | `processed` (attempts finished, success or failure), `failed` (failed attempts) |
//! | `{ns}:queues` | hash | the registry: queue -> weight, written by each worker at start |
//! | `{ns}:metrics:leader` | string | the token of the one worker reading the queue gauges; `PX` lock, renewed by its holder (see the `depth` module) |
//!
//! The rule that keeps scripts single-slot: every script's KEYS are keys of ONE queue (one
//! `{ns:q}` tag), and no script builds a key name from ARGV. State shared across queues (the
//! registry, an application's keys under `{ns}:`) is never touched by a script that touches
//! queue keys: it is read or written by plain commands of its own.
//!
//! Consumer group on every task stream: [`GROUP`], created with `XGROUP CREATE ... 0 MKSTREAM`.
//! Task streams are never trimmed (no `MAXLEN`): an entry leaves its stream only when the
//! worker that finished it acknowledges and deletes it.
//!
//! Stream entry fields: see the `fields` module. An application may keep keys of its own under
//! `{ns}:` ([`Keys::namespaced`]; simplebank's sign-in throttle does); the queue never touches
//! keys it does not own. Only this module formats key names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The consumer group all workers of a namespace join.
pub const GROUP: &str = "workers";

/// A stream entry id, `<ms>-<seq>`, comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EntryId(pub u64, pub u64);

impl EntryId {
    /// The largest id: nothing comes after it (and Redis refuses `(<max>` as a range start).
    pub const MAX: Self = Self(u64::MAX, u64::MAX);

    pub(crate) fn parse(raw: &str) -> Option<Self> {
        let (ms, seq) = raw.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

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

    /// `{ns:q}` and then `parts`: a key of queue `q` (built without `format!`: a publish and
    /// every task a worker runs build some).
    fn key(&self, queue: &QueueName, parts: &[&str]) -> String {
        let (ns, queue) = (self.ns.as_str(), queue.as_str());
        let len = ns.len() + queue.len() + 3 + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut key = String::with_capacity(len);
        for part in ["{", ns, ":", queue, "}"]
            .into_iter()
            .chain(parts.iter().copied())
        {
            key.push_str(part);
        }
        key
    }

    /// `{ns:q}:stream`: the tasks of queue `q`, ready to run or running.
    pub fn stream(&self, queue: &QueueName) -> String {
        self.key(queue, &[":stream"])
    }

    /// `{ns:q}:scheduled`: tasks of `q` delayed by `process_in`/`process_at`, by due time.
    pub fn scheduled(&self, queue: &QueueName) -> String {
        self.key(queue, &[":scheduled"])
    }

    /// `{ns:q}:retry`: tasks of `q` waiting for their next attempt, by due time.
    pub fn retry(&self, queue: &QueueName) -> String {
        self.key(queue, &[":retry"])
    }

    /// `{ns:q}:dead`: the dead letters of `q`.
    pub fn dead(&self, queue: &QueueName) -> String {
        self.key(queue, &[":dead"])
    }

    /// `{ns:q}:unique:<suffix>`: a uniqueness lock of a task of `q`. Without one, a
    /// placeholder in the same slot (scripts take a key either way; it is never written).
    pub fn unique(&self, queue: &QueueName, suffix: Option<&str>) -> String {
        match suffix {
            Some(suffix) => self.key(queue, &[":unique:", suffix]),
            None => self.key(queue, &[":unique"]),
        }
    }

    /// `{ns:q}:done:<task id>`: the marker a finished or dead task with an id leaves.
    pub fn done(&self, queue: &QueueName, task_id: &str) -> String {
        self.key(queue, &[":done:", task_id])
    }

    /// `{ns:q}:paused`: present while `q` is paused.
    pub fn paused(&self, queue: &QueueName) -> String {
        self.key(queue, &[":paused"])
    }

    /// `{ns:q}:stats`: the counters of `q` (`processed`, `failed`).
    pub fn stats(&self, queue: &QueueName) -> String {
        self.key(queue, &[":stats"])
    }

    /// `{ns}:queues`: the registry of queues and their weights.
    pub fn queues(&self) -> String {
        self.namespaced("queues")
    }

    /// `{ns}:metrics:leader`: which worker reads the queue gauges for the namespace.
    pub(crate) fn metrics_leader(&self) -> String {
        self.namespaced("metrics:leader")
    }

    /// `{ns}:<name>`: a namespace-wide key, for an application's own keys (and the queue's
    /// registry). Never use it for a key a queue script touches.
    pub fn namespaced(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.ns.as_str())
    }

    /// The keys of the layout before one hash tag per queue, for the migration only (see the
    /// `migrate` module): `{ns}:stream:<q>`.
    pub(crate) fn old_stream(&self, queue: &QueueName) -> String {
        format!("{{{}}}:stream:{queue}", self.ns.as_str())
    }

    /// The old layout's `{ns}:scheduled` (delayed tasks and retries of every queue).
    pub(crate) fn old_scheduled(&self) -> String {
        self.namespaced("scheduled")
    }

    /// The old layout's `{ns}:dead` (dead letters of every queue).
    pub(crate) fn old_dead(&self) -> String {
        self.namespaced("dead")
    }

    /// The old layout's lock `{ns}:unique:<suffix>`.
    pub(crate) fn old_unique(&self, suffix: &str) -> String {
        self.namespaced(&format!("unique:{suffix}"))
    }

    /// Patterns of the old layout's streams and locks.
    pub(crate) fn old_patterns(&self) -> (String, String) {
        (self.namespaced("stream:*"), self.namespaced("unique:*"))
    }

    /// The queue of an old layout stream key, if it is one.
    pub(crate) fn old_stream_queue(&self, key: &str) -> Option<QueueName> {
        let prefix = self.namespaced("stream:");
        QueueName::parse(key.strip_prefix(&prefix)?).ok()
    }

    /// The patterns (`SCAN MATCH`/`KEYS`) that together match every key of the namespace:
    /// `{ns}:*` (namespace-wide keys) and `{ns:*` (the keys of its queues).
    pub fn patterns(&self) -> [String; 2] {
        [
            format!("{{{}}}:*", self.ns.as_str()),
            format!("{{{}:*", self.ns.as_str()),
        ]
    }

    /// The queue a key of this namespace belongs to (`{ns:q}:...` -> `q`), for tools that
    /// find queues by scanning `patterns()[1]`.
    pub fn queue_of(&self, key: &str) -> Option<QueueName> {
        let rest = key
            .strip_prefix('{')?
            .strip_prefix(self.ns.as_str())?
            .strip_prefix(':')?;
        let (queue, _) = rest.split_once('}')?;
        QueueName::parse(queue).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let keys = Keys::new(Namespace::default());
        let critical = QueueName::parse("critical").unwrap();
        assert_eq!(keys.stream(&critical), "{simplebank:critical}:stream");
        assert_eq!(keys.scheduled(&critical), "{simplebank:critical}:scheduled");
        assert_eq!(keys.retry(&critical), "{simplebank:critical}:retry");
        assert_eq!(keys.dead(&critical), "{simplebank:critical}:dead");
        assert_eq!(
            keys.unique(&critical, Some("id:x")),
            "{simplebank:critical}:unique:id:x"
        );
        assert_eq!(keys.unique(&critical, None), "{simplebank:critical}:unique");
        assert_eq!(keys.done(&critical, "x"), "{simplebank:critical}:done:x");
        assert_eq!(keys.paused(&critical), "{simplebank:critical}:paused");
        assert_eq!(keys.stats(&critical), "{simplebank:critical}:stats");
        assert_eq!(keys.queues(), "{simplebank}:queues");
        assert_eq!(keys.patterns(), ["{simplebank}:*", "{simplebank:*"]);
        assert_eq!(keys.queue_of(&keys.dead(&critical)), Some(critical.clone()));
        for other in [
            "{simplebank}:queues",
            "{simplebankx:q}:stream",
            "{other:q}:stream",
            "{simplebank:a:b}:x",
        ] {
            assert_eq!(keys.queue_of(other), None, "{other}");
        }
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
