//! How a worker consumes the streams, independent of what its handlers do. The programs read
//! these from the environment (see the README's configuration table); an embedding service
//! starts from [`ConsumerSettings::new`] and changes what it needs.

use std::time::Duration;

use crate::{
    consumer::backoff::Backoff,
    keys::{DEFAULT_QUEUES, NameError, QueueName},
};

/// The consumer's settings.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Tasks run at the same time by this process (`WORKER_CONCURRENCY`, default 10).
    pub concurrency: usize,
    /// Queues and their weights (`WORKER_QUEUES`, default `critical:6,default:3,low:1`).
    pub queues: Vec<(QueueName, u32)>,
    /// Always serve the heaviest non-empty queue first (`WORKER_STRICT_PRIORITY`, default false).
    pub strict_priority: bool,
    /// How long an entry may stay pending with its consumer, without a lease renewal, before
    /// another worker takes it over (`WORKER_VISIBILITY_TIMEOUT`, default 60s). Running tasks
    /// renew their lease every third of it, so it bounds how long a crashed worker's tasks
    /// wait, not how long a task may run.
    pub visibility_timeout: Duration,
    /// How long in-flight tasks may take to finish after shutdown begins
    /// (`WORKER_SHUTDOWN_TIMEOUT`, default 10s). Unfinished ones stay pending for another worker.
    pub shutdown_timeout: Duration,
    /// This process in the consumer group (`WORKER_CONSUMER_NAME`); unique per process.
    pub consumer_name: String,
    /// How long one blocking read waits when every queue is empty (500ms, at most
    /// [`MAX_BLOCK`]).
    pub block: Duration,
    /// Retry backoff (`WORKER_RETRY_BASE_DELAY`, `WORKER_RETRY_MAX_DELAY`).
    pub backoff: Backoff,
    /// The most dead letters a queue keeps; the oldest are trimmed first (`DEAD_LETTER_MAX`,
    /// default 10,000).
    pub dead_letter_max: u64,
    /// How long a dead letter is kept (`DEAD_LETTER_RETENTION`, default 90 days).
    pub dead_letter_retention: Duration,
}

/// The longest [`ConsumerSettings::block`]: a paused queue must stop being read within a
/// second, and a blocking read already sent cannot be taken back (its entries are delivered).
/// With the pause state refreshed every 250 ms, the last read of a queue ends at most 750 ms
/// after it was paused.
pub const MAX_BLOCK: Duration = Duration::from_millis(500);

/// Default of [`ConsumerSettings::dead_letter_max`].
pub const DEFAULT_DEAD_LETTER_MAX: u64 = 10_000;

/// The largest [`ConsumerSettings::dead_letter_max`] (Redis takes a signed 64-bit length; a
/// billion letters is already far past what a Redis should hold).
pub const MAX_DEAD_LETTER_MAX: u64 = 1_000_000_000;

/// Default of [`ConsumerSettings::dead_letter_retention`]: 90 days.
pub const DEFAULT_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Default of [`ConsumerSettings::visibility_timeout`].
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);

/// The least [`ConsumerSettings::visibility_timeout`]: leases are renewed every third of it.
pub const MIN_VISIBILITY_TIMEOUT: Duration = Duration::from_millis(300);

/// A setting a worker cannot run with; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// `concurrency` is zero.
    #[error("concurrency must be at least 1")]
    Concurrency,
    /// `queues` is empty, has a zero weight or a queue twice.
    #[error("queues must list each queue once, with a positive weight")]
    Queues,
    /// `visibility_timeout` is below [`MIN_VISIBILITY_TIMEOUT`].
    #[error("visibility_timeout must be at least 300ms (leases are renewed every third of it)")]
    VisibilityTimeout,
    /// `block` is zero (a blocking read would never return) or above [`MAX_BLOCK`].
    #[error(
        "block must be above zero and at most 500ms (a paused queue stops being read within a second)"
    )]
    Block,
    /// `backoff.base` is zero or above `backoff.max`.
    #[error("backoff.max must be at least backoff.base, which must be above zero")]
    Backoff,
    /// `dead_letter_max` is zero or above [`MAX_DEAD_LETTER_MAX`].
    #[error("dead_letter_max (DEAD_LETTER_MAX) must be from 1 to 1000000000")]
    DeadLetterMax,
    /// `dead_letter_retention` is below a second.
    #[error("dead_letter_retention (DEAD_LETTER_RETENTION) must be at least 1s")]
    DeadLetterRetention,
}

/// The floor of [`ConsumerSettings::reclaim_interval`].
const MIN_RECLAIM_INTERVAL: Duration = Duration::from_millis(100);

impl ConsumerSettings {
    /// Defaults everywhere, as `consumer_name`.
    pub fn new(consumer_name: impl Into<String>) -> Self {
        Self {
            concurrency: 10,
            queues: default_queues(),
            strict_priority: false,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            shutdown_timeout: Duration::from_secs(10),
            consumer_name: consumer_name.into(),
            block: MAX_BLOCK,
            backoff: Backoff::default(),
            dead_letter_max: DEFAULT_DEAD_LETTER_MAX,
            dead_letter_retention: DEFAULT_DEAD_LETTER_RETENTION,
        }
    }

    /// Checks the settings a worker cannot run with; [`crate::Worker::new`] calls it.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.concurrency == 0 {
            return Err(SettingsError::Concurrency);
        }
        if self.queues.is_empty() || self.queues.iter().any(|(_, weight)| *weight == 0) {
            return Err(SettingsError::Queues);
        }
        for (i, (queue, _)) in self.queues.iter().enumerate() {
            if self.queues[..i].iter().any(|(other, _)| other == queue) {
                return Err(SettingsError::Queues);
            }
        }
        if self.visibility_timeout < MIN_VISIBILITY_TIMEOUT {
            return Err(SettingsError::VisibilityTimeout);
        }
        if self.block.is_zero() || self.block > MAX_BLOCK {
            return Err(SettingsError::Block);
        }
        if self.backoff.base.is_zero() || self.backoff.max < self.backoff.base {
            return Err(SettingsError::Backoff);
        }
        if self.dead_letter_max == 0 || self.dead_letter_max > MAX_DEAD_LETTER_MAX {
            return Err(SettingsError::DeadLetterMax);
        }
        if self.dead_letter_retention < Duration::from_secs(1) {
            return Err(SettingsError::DeadLetterRetention);
        }
        Ok(())
    }

    /// How often pending entries are checked for takeover: a tenth of the visibility timeout,
    /// at least 100 ms (three XAUTOCLAIMs a scan, so a short timeout does not busy Redis).
    /// A dead worker's entries are taken over at most `visibility_timeout + reclaim_interval`
    /// after its last read or renewal (66 s with the default 60 s).
    pub fn reclaim_interval(&self) -> Duration {
        (self.visibility_timeout / 10).max(MIN_RECLAIM_INTERVAL)
    }

    /// The dead-letter bounds, as the scripts take them.
    pub(crate) fn retention(&self) -> crate::scripts::Retention {
        crate::scripts::Retention {
            max_len: self.dead_letter_max,
            max_age: self.dead_letter_retention,
        }
    }

    /// How often a running task renews its lease: a third of the visibility timeout, so two
    /// renewals can fail before another worker may take the task over.
    pub fn renew_interval(&self) -> Duration {
        self.visibility_timeout / 3
    }
}

fn default_queues() -> Vec<(QueueName, u32)> {
    DEFAULT_QUEUES
        .iter()
        .zip([6, 3, 1])
        .filter_map(|(name, weight)| Some((QueueName::parse(name).ok()?, weight)))
        .collect()
}

/// Why a `name:weight,...` list is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueuesError {
    /// An item without `:`.
    #[error("expected name:weight, got {0:?}")]
    Item(String),
    /// A bad queue name.
    #[error("queue {name:?}")]
    Name {
        /// The name as given.
        name: String,
        /// Why it is not one.
        #[source]
        source: NameError,
    },
    /// A weight that is not a positive integer.
    #[error("queue {0}: weight must be a positive integer")]
    Weight(QueueName),
    /// A queue listed twice.
    #[error("queue {0} is listed twice")]
    Duplicate(QueueName),
    /// Nothing listed.
    #[error("no queues given")]
    Empty,
}

/// Parses `name:weight,name:weight`; weights are positive integers, names unique.
pub fn parse_queues(raw: &str) -> Result<Vec<(QueueName, u32)>, QueuesError> {
    let mut queues: Vec<(QueueName, u32)> = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, weight) = item
            .split_once(':')
            .ok_or_else(|| QueuesError::Item(item.to_owned()))?;
        let name = QueueName::parse(name.trim()).map_err(|source| QueuesError::Name {
            name: name.to_owned(),
            source,
        })?;
        let weight: u32 = match weight.trim().parse() {
            Ok(weight) if weight > 0 => weight,
            _ => return Err(QueuesError::Weight(name)),
        };
        if queues.iter().any(|(existing, _)| *existing == name) {
            return Err(QueuesError::Duplicate(name));
        }
        queues.push((name, weight));
    }
    if queues.is_empty() {
        return Err(QueuesError::Empty);
    }
    Ok(queues)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ConsumerSettings, QueuesError, parse_queues};

    /// Takeover happens within a tenth of the visibility timeout after it (the README's bound).
    #[test]
    fn reclaim_scans_every_tenth_of_the_visibility_timeout() {
        let mut settings = ConsumerSettings::new("c");
        for (visibility, interval) in [
            (60_000, 6_000),
            (10 * 60_000, 60_000),
            (3_000, 300),
            (1_000, 100),
            (300, 100),
        ] {
            settings.visibility_timeout = Duration::from_millis(visibility);
            assert_eq!(
                settings.reclaim_interval(),
                Duration::from_millis(interval),
                "visibility timeout {visibility} ms"
            );
        }
    }

    /// A worker refuses what would hang or panic it, naming the field.
    #[test]
    fn validate_names_the_bad_setting() {
        use super::SettingsError;
        assert_eq!(ConsumerSettings::new("c").validate(), Ok(()));
        type Change = fn(&mut ConsumerSettings);
        let cases: [(Change, SettingsError); 9] = [
            (|s| s.concurrency = 0, SettingsError::Concurrency),
            (|s| s.queues.clear(), SettingsError::Queues),
            (
                |s| s.visibility_timeout = Duration::ZERO,
                SettingsError::VisibilityTimeout,
            ),
            (|s| s.block = Duration::ZERO, SettingsError::Block),
            (|s| s.backoff.base = Duration::ZERO, SettingsError::Backoff),
            (|s| s.block = Duration::from_secs(1), SettingsError::Block),
            (|s| s.dead_letter_max = 0, SettingsError::DeadLetterMax),
            (
                |s| s.dead_letter_max = u64::MAX,
                SettingsError::DeadLetterMax,
            ),
            (
                |s| s.dead_letter_retention = Duration::from_millis(999),
                SettingsError::DeadLetterRetention,
            ),
        ];
        for (change, expected) in cases {
            let mut settings = ConsumerSettings::new("c");
            change(&mut settings);
            assert_eq!(settings.validate(), Err(expected));
        }
        let mut twice = ConsumerSettings::new("c");
        twice.queues.push(twice.queues[0].clone());
        assert_eq!(twice.validate(), Err(SettingsError::Queues));
    }

    #[test]
    fn queues() {
        let parsed = parse_queues("critical:6, default:3,low:1").unwrap();
        let names: Vec<_> = parsed.iter().map(|(q, w)| (q.as_str(), *w)).collect();
        assert_eq!(names, [("critical", 6), ("default", 3), ("low", 1)]);
        assert_eq!(parse_queues(""), Err(QueuesError::Empty));
        for bad in [
            "",
            "critical",
            "critical:0",
            "critical:x",
            "a:1,a:2",
            "bad name:1",
        ] {
            assert!(parse_queues(bad).is_err(), "{bad:?}");
        }
    }
}
