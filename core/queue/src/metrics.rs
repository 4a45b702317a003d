//! The queue's OpenTelemetry metrics, through the OpenTelemetry API only: the embedding program
//! installs a meter provider (simplebank's binaries do, through `simplebank-observability`)
//! before it builds a [`crate::Worker`] or a [`crate::Publisher`], or passes a `Meter` with
//! `with_meter`; without one every instrument is the API's no-op.
//!
//! Names, units and attributes follow the messaging semantic conventions 1.42.0 (the version of
//! `opentelemetry-semantic-conventions` 0.33, the crate family in use):
//!
//! | metric | instrument, unit | recorded |
//! |---|---|---|
//! | `messaging.process.duration` | histogram, `s` | once per attempt that reached its handler (its `process` span), whatever the end |
//! | `messaging.client.consumed.messages` | counter, `{message}` | once per delivery, when it is settled: the attempts above, plus deliveries dead-lettered before a handler ran (poison, unknown type, crash loop, deadline) |
//! | `messaging.client.sent.messages` | counter, `{message}` | once per task a [`crate::Publisher`] sends, failed sends with `error.type` |
//! | `simplebank.queue.dead.trimmed` | counter, `{message}` | dead letters removed by the retention limits: `messaging.destination.name`, `simplebank.trim.reason` (`max_len`: over `DEAD_LETTER_MAX`; `retention`: older than `DEAD_LETTER_RETENTION`) |
//!
//! Attributes: `messaging.system` = `redis`, `messaging.operation.name` (`process` or `send`),
//! `messaging.consumer.group.name` = [`crate::GROUP`] (consumer side),
//! `messaging.destination.name` = the queue name (`critical`; low cardinality, so the name
//! itself, not the stream key), `simplebank.task.type` (a registered handler's type; any other
//! type is `_OTHER`), `simplebank.task.outcome` (consumer side: `success`, `retry`, `dead`, or
//! `abandoned` when the shutdown timeout cut the attempt off and the entry stays pending), and
//! `error.type` on failures only, one of [`ErrorType`]'s values. Never a task id, payload or
//! error text: the sets are bounded by queues x types x outcomes x error types.
//!
//! Cost: every attribute set is built once and bound once (the spec's bound instruments), so
//! recording an attempt is one cache lookup and two direct updates, no allocation and no
//! hashing of attributes by the SDK: about 60 ns, against about 390 ns with unbound
//! instruments (ARCHITECTURE.md, "Metrics").

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{BoundCounter, BoundHistogram, Counter, Histogram, Meter},
};

use crate::{
    keys::{GROUP, QueueName},
    retention::TrimReason,
};

/// The instrumentation scope of the queue's instruments.
pub const SCOPE: &str = "simplebank-queue";

/// The task type recorded for a type no handler is registered for (its name is whatever an
/// entry says, so it cannot be an attribute).
pub const OTHER_TYPE: &str = "_OTHER";

/// At most this many distinct (queue, type) pairs get attribute sets of their own on the
/// producer side, where types come from the caller; the rest are recorded as `_OTHER`.
const MAX_PRODUCER_PAIRS: usize = 256;

/// The recommended buckets of `messaging.process.duration` (seconds).
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// How a delivery ended (`simplebank.task.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    Success,
    Retry,
    Dead,
    /// The shutdown timeout passed: the entry stays pending for another worker.
    Abandoned,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Retry => "retry",
            Self::Dead => "dead",
            Self::Abandoned => "abandoned",
        }
    }
}

/// Why an attempt or a send failed (`error.type`): a fixed list, never error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// The handler returned [`crate::HandlerError::new`].
    HandlerError,
    /// The handler returned [`crate::HandlerError::skip_retry`].
    SkipRetry,
    /// The handler returned [`crate::HandlerError::not_a_failure`].
    NotAFailure,
    /// The handler panicked.
    Panic,
    /// The attempt ran past its timeout (or the task's deadline).
    Timeout,
    /// The shutdown timeout cut the attempt off.
    ShutdownTimeout,
    /// The payload does not decode as its type.
    PayloadUndecodable,
    /// The stream entry is not a task.
    EntryUndecodable,
    /// No handler is registered for the type.
    UnknownType,
    /// Delivered more often than its retries allow without finishing (a crash loop).
    DeliveredTooOften,
    /// Its deadline had passed before the attempt.
    DeadlineExceeded,
    /// Producer: another live task holds its uniqueness lock.
    Conflict,
    /// Producer: Redis failed or did not answer.
    Redis,
    /// Producer: written, but fewer replicas than asked for acknowledged it in time.
    NotReplicated,
}

impl ErrorType {
    /// The `error.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandlerError => "handler_error",
            Self::SkipRetry => "skip_retry",
            Self::NotAFailure => "not_a_failure",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::ShutdownTimeout => "shutdown_timeout",
            Self::PayloadUndecodable => "payload_undecodable",
            Self::EntryUndecodable => "entry_undecodable",
            Self::UnknownType => "unknown_type",
            Self::DeliveredTooOften => "delivered_too_often",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Conflict => "conflict",
            Self::Redis => "redis",
            Self::NotReplicated => "not_replicated",
        }
    }
}

/// One cached attribute set.
type Attributes = Arc<[KeyValue]>;

fn base(operation: &'static str) -> [KeyValue; 2] {
    [
        KeyValue::new("messaging.system", "redis"),
        KeyValue::new("messaging.operation.name", operation),
    ]
}

/// The type as an attribute value: the caller's `&'static str` when the type is known to be
/// bounded, `_OTHER` otherwise.
fn type_value(task_type: Option<&'static str>) -> &'static str {
    task_type.unwrap_or(OTHER_TYPE)
}

/// The attribute sets made so far, with the instruments bound to them, and the last one
/// found. A worker or a publisher records the same set task after task: compared with the
/// last one first, it is not hashed again (SipHash over the queue's and the type's names was
/// some 500 instructions a task, and a publish built its key with a copy of the type;
/// callgrind, BENCHMARKS.md, "Scenarios 9 and 10 with the project's telemetry on").
#[derive(Debug)]
struct Sets<K, V> {
    all: HashMap<K, Arc<V>>,
    last: Option<(K, Arc<V>)>,
}

impl<K, V> Default for Sets<K, V> {
    fn default() -> Self {
        Self {
            all: HashMap::new(),
            last: None,
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash, V> Sets<K, V> {
    /// The last set found, if its key is the one `is_key` accepts.
    fn find(&self, is_key: impl FnOnce(&K) -> bool) -> Option<Arc<V>> {
        let (key, set) = self.last.as_ref()?;
        is_key(key).then(|| Arc::clone(set))
    }

    /// The set of `key`, now the last one found.
    fn get(&mut self, key: &K) -> Option<Arc<V>> {
        let set = Arc::clone(self.all.get(key)?);
        self.last = Some((key.clone(), Arc::clone(&set)));
        Some(set)
    }

    fn len(&self) -> usize {
        self.all.len()
    }

    /// Keeps `set` for `key`, now the last one found.
    fn insert(&mut self, key: K, set: Arc<V>) {
        self.last = Some((key.clone(), Arc::clone(&set)));
        self.all.insert(key, set);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ConsumerKey {
    queue: QueueName,
    task_type: &'static str,
    outcome: Outcome,
    error: Option<ErrorType>,
}

/// One attribute set of the consumer, with the instruments bound to it. The histogram is
/// bound on first use: a bound series is exported even while empty, and deliveries dead on
/// arrival have no duration.
#[derive(Debug)]
struct ConsumerSet {
    attributes: Attributes,
    consumed: BoundCounter<u64>,
    duration: OnceLock<BoundHistogram<f64>>,
}

/// The consumer's instruments, one per worker.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerMetrics {
    duration: Histogram<f64>,
    consumed: Counter<u64>,
    /// Rare (a trim removes many letters at once): recorded unbound.
    trimmed: Counter<u64>,
    sets: Arc<Mutex<Sets<ConsumerKey, ConsumerSet>>>,
}

impl ConsumerMetrics {
    pub fn new(meter: &Meter) -> Self {
        Self {
            duration: meter
                .f64_histogram("messaging.process.duration")
                .with_unit("s")
                .with_description("Duration of processing operation.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            consumed: meter
                .u64_counter("messaging.client.consumed.messages")
                .with_unit("{message}")
                .with_description("Number of messages that were delivered to the application.")
                .build(),
            trimmed: meter
                .u64_counter("simplebank.queue.dead.trimmed")
                .with_unit("{message}")
                .with_description("Dead letters removed by the retention limits.")
                .build(),
            sets: Arc::default(),
        }
    }

    /// `count` dead letters of `queue` trimmed for `reason`.
    pub fn dead_trimmed(&self, queue: &QueueName, reason: TrimReason, count: u64) {
        self.trimmed.add(
            count,
            &[
                KeyValue::new(
                    "messaging.destination.name",
                    opentelemetry::StringValue::from(Arc::<str>::from(queue.as_str())),
                ),
                KeyValue::new("simplebank.trim.reason", reason.label()),
            ],
        );
    }

    fn set(&self, key: ConsumerKey) -> Arc<ConsumerSet> {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = sets.find(|last| *last == key) {
            return set;
        }
        if let Some(set) = sets.get(&key) {
            return set;
        }
        let mut set: Vec<KeyValue> = base("process").into();
        set.extend([
            KeyValue::new("messaging.consumer.group.name", GROUP),
            KeyValue::new(
                "messaging.destination.name",
                opentelemetry::StringValue::from(Arc::<str>::from(key.queue.as_str())),
            ),
            KeyValue::new("simplebank.task.type", key.task_type),
            KeyValue::new("simplebank.task.outcome", key.outcome.as_str()),
        ]);
        if let Some(error) = key.error {
            set.push(KeyValue::new("error.type", error.as_str()));
        }
        let attributes: Attributes = set.into();
        let set = Arc::new(ConsumerSet {
            consumed: self.consumed.bind(&attributes),
            attributes,
            duration: OnceLock::new(),
        });
        sets.insert(key, Arc::clone(&set));
        set
    }

    /// An attempt that reached its handler: one duration sample and one delivery.
    /// `task_type`: the registered handler's type.
    pub fn attempt(
        &self,
        queue: &QueueName,
        task_type: &'static str,
        outcome: Outcome,
        error: Option<ErrorType>,
        duration: Duration,
    ) {
        let set = self.set(ConsumerKey {
            queue: queue.clone(),
            task_type,
            outcome,
            error,
        });
        set.duration
            .get_or_init(|| self.duration.bind(&set.attributes))
            .record(duration.as_secs_f64());
        set.consumed.add(1);
    }

    /// A delivery dead-lettered before any handler ran. `task_type`: the registered handler's
    /// type, `None` when there is none (or the entry is not a task).
    pub fn dead_on_arrival(
        &self,
        queue: &QueueName,
        task_type: Option<&'static str>,
        error: ErrorType,
    ) {
        let set = self.set(ConsumerKey {
            queue: queue.clone(),
            task_type: type_value(task_type),
            outcome: Outcome::Dead,
            error: Some(error),
        });
        set.consumed.add(1);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProducerKey {
    queue: QueueName,
    task_type: Arc<str>,
    error: Option<ErrorType>,
}

/// One attribute set of the producer, with the counter bound to it.
#[derive(Debug)]
struct ProducerSet {
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "what the counter is bound to; tests read it")
    )]
    attributes: Attributes,
    sent: BoundCounter<u64>,
}

/// The producer's instrument, shared by a publisher's clones.
#[derive(Debug, Clone)]
pub(crate) struct ProducerMetrics {
    sent: Counter<u64>,
    sets: Arc<Mutex<Sets<ProducerKey, ProducerSet>>>,
}

impl ProducerMetrics {
    pub fn new(meter: &Meter) -> Self {
        Self {
            sent: meter
                .u64_counter("messaging.client.sent.messages")
                .with_unit("{message}")
                .with_description("Number of messages producer attempted to send to the broker.")
                .build(),
            sets: Arc::default(),
        }
    }

    /// `count` tasks of `task_type` sent to `queue`, failed with `error` if it is set.
    pub fn sent(&self, queue: &QueueName, task_type: &str, error: Option<ErrorType>, count: u64) {
        self.set(queue, task_type, error).sent.add(count);
    }

    fn set(
        &self,
        queue: &QueueName,
        task_type: &str,
        error: Option<ErrorType>,
    ) -> Arc<ProducerSet> {
        {
            let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(set) = sets.find(|last| {
                last.queue == *queue && *last.task_type == *task_type && last.error == error
            }) {
                return set;
            }
            let key = ProducerKey {
                queue: queue.clone(),
                task_type: Arc::from(task_type),
                error,
            };
            match sets.get(&key) {
                Some(set) => set,
                None => {
                    // Types come from the producer's code and are few; a program that makes
                    // them up per task gets `_OTHER` past the bound instead of a series each.
                    let task_type: opentelemetry::StringValue = if sets.len() < MAX_PRODUCER_PAIRS {
                        Arc::clone(&key.task_type).into()
                    } else {
                        OTHER_TYPE.into()
                    };
                    let mut set: Vec<KeyValue> = base("send").into();
                    set.extend([
                        KeyValue::new(
                            "messaging.destination.name",
                            opentelemetry::StringValue::from(Arc::<str>::from(queue.as_str())),
                        ),
                        KeyValue::new("simplebank.task.type", task_type),
                    ]);
                    if let Some(error) = error {
                        set.push(KeyValue::new("error.type", error.as_str()));
                    }
                    let attributes: Attributes = set.into();
                    let set = Arc::new(ProducerSet {
                        sent: self.sent.bind(&attributes),
                        attributes,
                    });
                    if sets.len() < MAX_PRODUCER_PAIRS {
                        sets.insert(key, Arc::clone(&set));
                    }
                    set
                }
            }
        }
    }
}

/// The meter the queue's instruments are created from when none is given: the global
/// provider's, as installed at that moment.
pub(crate) fn global_meter() -> Meter {
    opentelemetry::global::meter(SCOPE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(set: &[KeyValue]) -> Vec<String> {
        set.iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect()
    }

    #[test]
    fn consumer_sets_carry_error_type_only_on_failures() {
        let metrics = ConsumerMetrics::new(&global_meter());
        let queue = QueueName::parse("critical").expect("queue");
        let key = |outcome, error| ConsumerKey {
            queue: queue.clone(),
            task_type: "mail:send",
            outcome,
            error,
        };
        assert_eq!(
            text(&metrics.set(key(Outcome::Success, None)).attributes),
            [
                "messaging.system=redis",
                "messaging.operation.name=process",
                "messaging.consumer.group.name=workers",
                "messaging.destination.name=critical",
                "simplebank.task.type=mail:send",
                "simplebank.task.outcome=success",
            ]
        );
        let dead = metrics.set(key(Outcome::Dead, Some(ErrorType::Panic)));
        assert_eq!(
            text(&dead.attributes).last().map(String::as_str),
            Some("error.type=panic")
        );
        // Built and bound once: the same set comes back.
        let again = metrics.set(key(Outcome::Dead, Some(ErrorType::Panic)));
        assert!(Arc::ptr_eq(&dead, &again));
    }

    /// A producer that makes up a type per task gets `_OTHER` past the bound, not a series
    /// (and a cache entry) each.
    #[test]
    fn producer_types_past_the_bound_are_other() {
        let metrics = ProducerMetrics::new(&global_meter());
        let queue = QueueName::parse("default").expect("queue");
        for n in 0..1000 {
            let set = metrics.set(&queue, &format!("made-up:{n}"), None);
            let expected = if n < MAX_PRODUCER_PAIRS {
                format!("simplebank.task.type=made-up:{n}")
            } else {
                "simplebank.task.type=_OTHER".to_owned()
            };
            assert_eq!(text(&set.attributes).last(), Some(&expected), "{n}");
        }
        assert_eq!(metrics.sets.lock().expect("lock").len(), MAX_PRODUCER_PAIRS);
        let failed = metrics.set(&queue, "made-up:0", Some(ErrorType::Redis));
        assert_eq!(
            text(&failed.attributes).last().map(String::as_str),
            Some("error.type=redis")
        );
    }

    /// The last set found is reused only for its own key: after every key, every other
    /// (keys that differ in one part alone among them) gets its own set.
    #[test]
    fn the_last_set_is_reused_for_its_key_only() {
        let consumer = ConsumerMetrics::new(&global_meter());
        let (a, b) = (
            QueueName::parse("a").expect("queue"),
            QueueName::parse("b").expect("queue"),
        );
        let key = |queue: &QueueName, task_type, outcome, error| ConsumerKey {
            queue: queue.clone(),
            task_type,
            outcome,
            error,
        };
        let keys = [
            key(&a, "t:1", Outcome::Success, None),
            key(&b, "t:1", Outcome::Success, None),
            key(&a, "t:2", Outcome::Success, None),
            key(&a, "t:1", Outcome::Retry, None),
            key(&a, "t:1", Outcome::Retry, Some(ErrorType::Panic)),
        ];
        let made: Vec<_> = keys.iter().map(|k| consumer.set(k.clone())).collect();
        for (n, before) in keys.iter().enumerate() {
            for (m, after) in keys.iter().enumerate() {
                assert!(Arc::ptr_eq(&consumer.set(before.clone()), &made[n]));
                let set = consumer.set(after.clone());
                assert!(Arc::ptr_eq(&set, &made[m]), "{after:?} after {before:?}");
            }
        }
        assert_eq!(consumer.sets.lock().expect("lock").len(), keys.len());

        let producer = ProducerMetrics::new(&global_meter());
        let sent = [
            (&a, "t:1", None),
            (&b, "t:1", None),
            (&a, "t:2", None),
            (&a, "t:1", Some(ErrorType::Redis)),
        ];
        let made: Vec<_> = sent
            .iter()
            .map(|(q, t, e)| producer.set(q, t, *e))
            .collect();
        for (n, (q, t, e)) in sent.iter().enumerate() {
            for (m, (q2, t2, e2)) in sent.iter().enumerate() {
                assert!(Arc::ptr_eq(&producer.set(q, t, *e), &made[n]));
                let set = producer.set(q2, t2, *e2);
                assert!(Arc::ptr_eq(&set, &made[m]), "{q2:?} {t2} {e2:?} after {n}");
            }
        }
        assert_eq!(producer.sets.lock().expect("lock").len(), sent.len());
    }
}
