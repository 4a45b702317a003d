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
//! older than two intervals (leadership lost, Redis unreachable), so a stale number is never
//! exported as current. An empty queue's oldest age is 0, so an alert on it stays defined.
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

/// What the leader read last.
#[derive(Debug, Default)]
struct Snapshot {
    taken: Option<Instant>,
    queues: Vec<(Arc<QueueSets>, QueueStats)>,
}

type Shared = Arc<Mutex<Snapshot>>;

/// The two gauges, reporting `snapshot` while it is younger than `max_age`.
fn register(
    meter: &Meter,
    snapshot: &Shared,
    max_age: Duration,
) -> (ObservableGauge<u64>, ObservableGauge<f64>) {
    // The snapshot's entries, if fresh; the lock is held only to copy them.
    let fresh = move |snapshot: &Shared| -> Vec<(Arc<QueueSets>, QueueStats)> {
        let snapshot = snapshot.lock().unwrap_or_else(|e| e.into_inner());
        match snapshot.taken {
            Some(taken) if taken.elapsed() <= max_age => snapshot.queues.clone(),
            _ => Vec::new(),
        }
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
            } else if last_read.is_none_or(|at| at.elapsed() + tick / 2 >= self.every) {
                match self.read(&mut sets).await {
                    Ok(queues) => {
                        last_read = Some(Instant::now());
                        *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Snapshot {
                            taken: last_read,
                            queues,
                        };
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
