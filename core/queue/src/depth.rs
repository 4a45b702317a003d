//! The queue gauges, `simplebank.queue.depth` and `simplebank.queue.oldest_age`, read from
//! Redis by ONE worker of a namespace at a time, whatever the number of workers.
//!
//! Leadership is a lock, `{ns}:metrics:leader` ([`Keys::metrics_leader`]): `SET NX PX` with
//! this worker's token, renewed (compare, then `PEXPIRE`) every `tick` = the interval, within
//! 100 ms-5 s,
//! expiring after max(3 ticks, 3 s) if its holder stops renewing it (crashed, hung, cut off
//! from Redis), and deleted (compare, then `DEL`) when its holder shuts down, so another
//! worker takes over within a tick. The others try `SET NX` at every tick and skip the reads.
//!
//! The leader reads every queue of the registry ([`known_queues`]) with [`queue_stats`], one
//! script per queue, once per export interval, and keeps the snapshot; the gauges' callbacks
//! (run by the SDK at collection) only report the snapshot, and report nothing when it is
//! older than two intervals (Redis unreachable) or once the lock may have passed to another
//! worker: after the last successful acquire or renewal plus the lock's lifetime, timed from
//! before the command was sent. So a worker that was paused (SIGSTOP, a frozen VM) past its
//! lock's expiry reports nothing when it wakes, even before its next tick finds the lock gone,
//! and a stale number is never exported as current. An empty queue's oldest age is 0, so an
//! alert on it stays defined.
//!
//! | metric | unit | attributes |
//! |---|---|---|
//! | `simplebank.queue.depth` | `{task}` | `messaging.destination.name` (queue), `simplebank.queue.state`: `pending` (not yet delivered), `active` (delivered, not settled), `scheduled`, `retry`, `dead` |
//! | `simplebank.queue.oldest_age` | `s` | `messaging.destination.name`: age of the oldest pending task |

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use opentelemetry::{
    KeyValue,
    metrics::{Meter, ObservableGauge},
};
use redis::{RedisResult, Script};
use tokio_util::sync::CancellationToken;

use crate::{
    connection::Connection,
    keys::{Keys, QueueName},
    report,
    stats::{QueueStats, known_queues, queue_stats},
};

/// The longest pause between two leadership checks.
const MAX_TICK: Duration = Duration::from_secs(5);
/// The shortest: a tiny export interval must not turn the election into a busy loop.
const MIN_TICK: Duration = Duration::from_millis(100);
/// The shortest lifetime of the lock.
const MIN_LOCK_TTL: Duration = Duration::from_secs(3);

/// KEYS: the lock. ARGV: token, ttl ms. Extends the lock if it is still the caller's.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// KEYS: the lock. ARGV: token. Deletes the lock if it is still the caller's.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// The queue states of `simplebank.queue.depth`, in the order of [`depths`].
const STATES: [&str; 5] = ["pending", "active", "scheduled", "retry", "dead"];

fn depths(stats: &QueueStats) -> [u64; 5] {
    [
        stats.pending,
        stats.active,
        stats.scheduled,
        stats.retry,
        stats.dead,
    ]
}

/// One queue's attribute sets: one per state, and the queue alone.
#[derive(Debug)]
struct QueueSets {
    states: [Vec<KeyValue>; 5],
    queue: Vec<KeyValue>,
}

impl QueueSets {
    fn new(queue: &QueueName) -> Self {
        let name = KeyValue::new("messaging.destination.name", queue.to_string());
        Self {
            states: STATES
                .map(|state| vec![name.clone(), KeyValue::new("simplebank.queue.state", state)]),
            queue: vec![name],
        }
    }
}

/// What the leader read last, and until when it may report it.
#[derive(Debug, Default)]
struct Snapshot {
    taken: Option<Instant>,
    /// When the lock may expire: the send time of the last acquire or renewal that succeeded,
    /// plus the lock's lifetime. `None`: not the leader (or cannot know).
    lock_valid_until: Option<Instant>,
    queues: Vec<(Arc<QueueSets>, QueueStats)>,
}

impl Snapshot {
    /// The entries to report at `now`: all of them if they are younger than `max_age` and the
    /// lock is surely still this worker's, else none.
    fn report_at(&self, now: Instant, max_age: Duration) -> Vec<(Arc<QueueSets>, QueueStats)> {
        let fresh = self
            .taken
            .is_some_and(|taken| now.saturating_duration_since(taken) <= max_age);
        let leader = self.lock_valid_until.is_some_and(|until| now < until);
        if fresh && leader {
            self.queues.clone()
        } else {
            Vec::new()
        }
    }
}

type Shared = Arc<Mutex<Snapshot>>;

/// The two gauges, reporting `snapshot` while it is younger than `max_age` and the lock is
/// still this worker's.
fn register(
    meter: &Meter,
    snapshot: &Shared,
    max_age: Duration,
) -> (ObservableGauge<u64>, ObservableGauge<f64>) {
    // The snapshot's entries, if reportable; the lock is held only to copy them.
    let fresh = move |snapshot: &Shared| -> Vec<(Arc<QueueSets>, QueueStats)> {
        let snapshot = snapshot.lock().unwrap_or_else(|e| e.into_inner());
        snapshot.report_at(Instant::now(), max_age)
    };
    let depth = {
        let snapshot = Arc::clone(snapshot);
        meter
            .u64_observable_gauge("simplebank.queue.depth")
            .with_unit("{task}")
            .with_description("Tasks in a queue, by state.")
            .with_callback(move |observer| {
                for (sets, stats) in fresh(&snapshot) {
                    for (set, value) in sets.states.iter().zip(depths(&stats)) {
                        observer.observe(value, set);
                    }
                }
            })
            .build()
    };
    let age = {
        let snapshot = Arc::clone(snapshot);
        meter
            .f64_observable_gauge("simplebank.queue.oldest_age")
            .with_unit("s")
            .with_description("Age of the oldest task waiting in a queue (0 when none waits).")
            .with_callback(move |observer| {
                for (sets, stats) in fresh(&snapshot) {
                    let age = stats.oldest_pending_age.unwrap_or_default();
                    observer.observe(age.as_secs_f64(), &sets.queue);
                }
            })
            .build()
    };
    (depth, age)
}

/// The leader election and the reads, for one worker.
pub(crate) struct DepthReporter {
    pub conn: Connection,
    pub keys: Keys,
    /// This worker's consumer name (the lock's value starts with it, for an operator).
    pub consumer: String,
    /// The export interval: how often the leader reads.
    pub every: Duration,
    pub meter: Meter,
}

impl DepthReporter {
    /// Competes for the lock and reads while it holds it, until `stop`; then lets it go.
    pub async fn run(mut self, stop: CancellationToken) {
        let snapshot = Shared::default();
        let tick = self.every.clamp(MIN_TICK, MAX_TICK);
        let _gauges = register(&self.meter, &snapshot, self.every.max(tick) * 2);
        let ttl = (tick * 3).max(MIN_LOCK_TTL);
        let lock = self.keys.metrics_leader();
        let token = format!("{}:{}", self.consumer, uuid::Uuid::new_v4());
        let mut sets: HashMap<QueueName, Arc<QueueSets>> = HashMap::new();
        let mut leader = false;
        let mut last_read: Option<Instant> = None;
        // Whether the last tick met a Redis error: warned about once, until a clean tick.
        let mut failing = false;
        loop {
            // Before the command: the lock's lifetime starts at Redis, later than this.
            let sent = Instant::now();
            let held = if leader {
                renew(&mut self.conn, &lock, &token, ttl).await
            } else {
                acquire(&mut self.conn, &lock, &token, ttl).await
            };
            let mut error = None;
            match held {
                Ok(now_leader) => {
                    if now_leader != leader {
                        tracing::debug!(
                            leader = now_leader,
                            "queue depth metrics: leadership changed"
                        );
                    }
                    leader = now_leader;
                }
                // Unknown: stop reporting; the lock expires on its own if it was ours.
                Err(err) => {
                    error = Some(err);
                    leader = false;
                }
            }
            if !leader {
                *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Snapshot::default();
                last_read = None;
            } else {
                snapshot
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .lock_valid_until = Some(sent + ttl);
            }
            if leader && last_read.is_none_or(|at| at.elapsed() + tick / 2 >= self.every) {
                match self.read(&mut sets).await {
                    Ok(queues) => {
                        last_read = Some(Instant::now());
                        let mut snapshot = snapshot.lock().unwrap_or_else(|e| e.into_inner());
                        snapshot.taken = last_read;
                        snapshot.queues = queues;
                    }
                    Err(err) => error = Some(err),
                }
            }
            match error {
                Some(err) if !failing => {
                    tracing::warn!(error = %report::chain(&err), "queue depth metrics: cannot read Redis; retrying");
                    failing = true;
                }
                None if failing => {
                    tracing::info!("queue depth metrics: reading Redis again");
                    failing = false;
                }
                _ => {}
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(tick) => {}
            }
        }
        if leader {
            let _: RedisResult<i64> = RELEASE
                .key(&lock)
                .arg(&token)
                .invoke_async(&mut self.conn)
                .await;
        }
    }

    /// Every registered queue's stats, with its attribute sets.
    async fn read(
        &mut self,
        sets: &mut HashMap<QueueName, Arc<QueueSets>>,
    ) -> RedisResult<Vec<(Arc<QueueSets>, QueueStats)>> {
        let queues = known_queues(&mut self.conn, &self.keys).await?;
        let mut read = Vec::with_capacity(queues.len());
        for (queue, _) in queues {
            let stats = queue_stats(&mut self.conn, &self.keys, &queue).await?;
            let set = sets
                .entry(queue)
                .or_insert_with_key(|queue| Arc::new(QueueSets::new(queue)));
            read.push((Arc::clone(set), stats));
        }
        Ok(read)
    }
}

/// `SET lock token NX PX ttl`: whether this worker now holds the lock.
async fn acquire(
    conn: &mut Connection,
    lock: &str,
    token: &str,
    ttl: Duration,
) -> RedisResult<bool> {
    let set: Option<String> = redis::cmd("SET")
        .arg(lock)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(millis(ttl))
        .query_async(conn)
        .await?;
    Ok(set.is_some())
}

/// Extends the lock if this worker still holds it.
async fn renew(conn: &mut Connection, lock: &str, token: &str, ttl: Duration) -> RedisResult<bool> {
    let renewed: i64 = RENEW
        .key(lock)
        .arg(token)
        .arg(millis(ttl))
        .invoke_async(conn)
        .await?;
    Ok(renewed == 1)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(queue: &QueueName, pending: u64) -> QueueStats {
        QueueStats {
            queue: queue.clone(),
            weight: Some(1),
            paused: false,
            pending,
            active: 0,
            scheduled: 0,
            retry: 0,
            dead: 0,
            oldest_pending_age: None,
            processed: 0,
            failed: 0,
        }
    }

    /// The attacker's case: an export interval of 20 s (snapshots kept for 40 s), a lock of
    /// 15 s (3 ticks of 5 s). A leader that renewed at `t0` and was then frozen for 25 s must
    /// not report its snapshot on waking, though the snapshot is younger than two intervals:
    /// by then the lock may be another worker's, which reports the current numbers.
    #[test]
    fn a_snapshot_is_reported_only_while_the_lock_is_surely_held() {
        let queue = QueueName::parse("default").expect("queue");
        let t0 = Instant::now();
        let ttl = Duration::from_secs(15);
        let max_age = Duration::from_secs(40);
        let snapshot = Snapshot {
            taken: Some(t0),
            lock_valid_until: Some(t0 + ttl),
            queues: vec![(Arc::new(QueueSets::new(&queue)), stats(&queue, 5))],
        };
        let reported = |at: Instant| -> Vec<u64> {
            snapshot
                .report_at(at, max_age)
                .iter()
                .map(|(_, stats)| stats.pending)
                .collect()
        };
        assert_eq!(reported(t0), [5]);
        assert_eq!(reported(t0 + ttl - Duration::from_millis(1)), [5]);
        assert!(reported(t0 + ttl).is_empty(), "the lock may have expired");
        assert!(
            reported(t0 + Duration::from_secs(25)).is_empty(),
            "woken after 25 s"
        );

        // Not the leader (or it could not tell): nothing, however fresh the snapshot.
        let unknown = Snapshot {
            taken: Some(t0),
            lock_valid_until: None,
            queues: snapshot.queues.clone(),
        };
        assert!(unknown.report_at(t0, max_age).is_empty());
        // A snapshot older than `max_age` (reads failing while renewals succeed): nothing.
        let old = Snapshot {
            taken: Some(t0),
            lock_valid_until: Some(t0 + Duration::from_secs(100)),
            queues: snapshot.queues.clone(),
        };
        assert_eq!(old.report_at(t0 + max_age, max_age).len(), 1);
        assert!(
            old.report_at(t0 + max_age + Duration::from_millis(1), max_age)
                .is_empty()
        );
    }
}
