//! The outbox relay: publishes tasks whose publish after commit did not happen (Redis down or
//! hung, crash between commit and XADD). Safe to run in every server: a row is claimed under a
//! lease in one short statement, and published with no database connection held.

use std::time::Duration;

use simplebank_core::{outbox, store::Store};
use simplebank_queue::Publisher;
use tokio_util::sync::CancellationToken;

use crate::status::chain;

/// Rows claimed (and published) per round.
const BATCH: i64 = 100;

/// Relays every `interval` until `stop` is cancelled. A full batch is followed by the next
/// one at once. Failures are logged once when they start and once when they end.
pub async fn run(store: Store, publisher: Publisher, interval: Duration, stop: CancellationToken) {
    let mut failing = false;
    loop {
        let published = tokio::select! {
            () = stop.cancelled() => return,
            result = outbox::relay_batch(&store, &publisher, BATCH) => result,
        };
        match published {
            Ok(count) => {
                if failing {
                    tracing::info!("outbox relay recovered");
                    failing = false;
                }
                if count > 0 {
                    tracing::info!(count, "relayed tasks from the outbox");
                }
                if count == usize::try_from(BATCH).unwrap_or(usize::MAX) {
                    continue;
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %chain(&err), "outbox relay failing; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
