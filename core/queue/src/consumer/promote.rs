//! The promoter: moves due tasks (delayed ones and retries) from each of the worker's queues'
//! `{ns:q}:scheduled` and `{ns:q}:retry` onto `{ns:q}:stream` with the PROMOTE script (one call
//! per queue, on that queue's slot), which reads Redis' clock, so nothing is promoted early
//! and, since a script runs alone, nothing twice, however many workers promote at once.
//!
//! It looks every 20 ms at most (sooner when the next task of any queue is due sooner), so a
//! due task waits about 10 ms on average for promotion; a full batch of any queue is followed
//! by the next round at once.
//!
//! Every [`TRIM_EVERY`] it also trims each queue's dead letters to the retention (see the
//! `retention` module): KILL trims as it adds, this ages letters out of quiet queues.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::{
    connection::Connection,
    keys::{Keys, QueueName},
    metrics::ConsumerMetrics,
    report, retention,
    scripts::{self, Retention},
};

/// The longest wait between two looks at the scheduled sets.
const POLL: Duration = Duration::from_millis(20);
const BATCH: usize = 500;
/// How often the dead letters are trimmed to their retention.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Promotes the due tasks of `queues`, and trims their dead letters to `dead_letters`, until
/// `stop` is cancelled.
pub(crate) async fn run(
    mut conn: Connection,
    keys: Keys,
    queues: Vec<QueueName>,
    dead_letters: Retention,
    metrics: ConsumerMetrics,
    stop: CancellationToken,
) {
    let mut failing = false;
    let mut trimmed_at: Option<Instant> = None;
    loop {
        if trimmed_at.is_none_or(|at| at.elapsed() >= TRIM_EVERY) {
            trim(&mut conn, &keys, &queues, dead_letters, &metrics).await;
            trimmed_at = Some(Instant::now());
        }
        let pause = match round(&mut conn, &keys, &queues).await {
            Ok(Round { full, wait_ms }) => {
                if failing {
                    tracing::info!("promoting scheduled tasks again");
                    failing = false;
                }
                if full {
                    continue;
                }
                match wait_ms {
                    Some(wait) => Duration::from_millis(wait.max(1)).min(POLL),
                    None => POLL,
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %report::chain(&err), "cannot promote scheduled tasks; retrying");
                    failing = true;
                }
                Duration::from_millis(500)
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Trims the dead letters of each of `queues`; a failure is logged (the next round retries).
async fn trim(
    conn: &mut Connection,
    keys: &Keys,
    queues: &[QueueName],
    dead_letters: Retention,
    metrics: &ConsumerMetrics,
) {
    for queue in queues {
        match scripts::trim_dead(conn, keys, queue, dead_letters).await {
            Ok(trimmed) => retention::report(queue, trimmed, metrics),
            Err(err) => tracing::warn!(
                queue = %queue, error = %report::chain(&err),
                "cannot trim the dead letters; will retry"
            ),
        }
    }
}

/// What one round over the queues found.
struct Round {
    /// Some queue had a full batch due: more may be due already.
    full: bool,
    /// How long until the next task of any queue is due.
    wait_ms: Option<u64>,
}

/// One PROMOTE call per queue. A queue whose call fails does not keep the others waiting;
/// the round reports the first error after trying them all.
async fn round(
    conn: &mut Connection,
    keys: &Keys,
    queues: &[QueueName],
) -> redis::RedisResult<Round> {
    let mut found = Round {
        full: false,
        wait_ms: None,
    };
    let mut error = None;
    for queue in queues {
        match scripts::promote(conn, keys, queue, BATCH).await {
            Ok((moved, wait_ms)) => {
                if moved > 0 {
                    tracing::debug!(queue = %queue, moved, "promoted scheduled tasks");
                }
                // Each of the two sets moves at most a batch; a full one may have more due.
                found.full |= moved >= BATCH;
                found.wait_ms = match (found.wait_ms, wait_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            Err(err) => {
                error.get_or_insert(err);
            }
        }
    }
    match error {
        Some(err) => Err(err),
        None => Ok(found),
    }
}
