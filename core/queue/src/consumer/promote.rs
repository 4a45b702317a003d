//! The promoter: moves due tasks (delayed ones and retries) from `{ns}:scheduled` onto their
//! streams with the PROMOTE script, which reads Redis' clock, so nothing is promoted early and,
//! since a script runs alone, nothing twice, however many workers promote at once.
//!
//! It looks every 20 ms at most (sooner when the next task is due sooner), so a due task waits
//! about 10 ms on average for promotion; a full batch is followed by the next at once.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::{keys::Keys, report, scripts};

/// The longest wait between two looks at the scheduled set.
const POLL: Duration = Duration::from_millis(20);
const BATCH: usize = 500;

/// Promotes until `stop` is cancelled.
pub(crate) async fn run(mut conn: ConnectionManager, keys: Keys, stop: CancellationToken) {
    let mut failing = false;
    loop {
        let promoted = scripts::promote(&mut conn, &keys, BATCH).await;
        let pause = match promoted {
            Ok((moved, wait_ms)) => {
                if failing {
                    tracing::info!("promoting scheduled tasks again");
                    failing = false;
                }
                if moved > 0 {
                    tracing::debug!(moved, "promoted scheduled tasks");
                }
                if moved == BATCH {
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
