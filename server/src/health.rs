//! `grpc.health.v1` status, from two checks run every `HEALTH_CHECK_INTERVAL`:
//!
//! - `""` and `simplebank.v1.SimpleBank`: SERVING while PostgreSQL answers. Redis does not count:
//!   sign-ups keep working through the outbox while it is down, so a load balancer must keep
//!   sending them here.
//! - [`REDIS_SERVICE`]: SERVING while Redis answers PING within [`REDIS_PING_TIMEOUT`], on
//!   the shared connection: never the publisher's own with `REDIS_WAIT_REPLICAS`, where a
//!   PING would queue behind a `WAIT` and read as a dead Redis while no replica answers.
//!
//! Each check has a deadline, so a hung dependency (a stopped process, a black-holed network)
//! reads as down instead of stalling the loop. The first state of each, and every change, is
//! logged in one line.

use std::{future::Future, time::Duration};

use simplebank_core::{report::chain, store::Store};
use simplebank_queue::connection::Connection;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{pb::simple_bank_server::SimpleBankServer, service::SimpleBankService};

/// The health service name that reports Redis.
pub const REDIS_SERVICE: &str = "simplebank.v1.SimpleBank.redis";
/// How long Redis has to answer PING before it counts as down.
pub const REDIS_PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long PostgreSQL has to answer; above the pool's acquire timeout (3 s), so a pool that is
/// merely busy for a moment does not take the server out of rotation.
pub const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the dependencies every `interval` and updates `reporter` until `stop` is cancelled.
pub async fn watch(
    reporter: HealthReporter,
    store: Store,
    redis: Connection,
    interval: Duration,
    stop: CancellationToken,
) {
    set_bank(&reporter, ServingStatus::NotServing).await;
    reporter
        .set_service_status(REDIS_SERVICE, ServingStatus::NotServing)
        .await;
    let mut database_up: Option<bool> = None;
    let mut redis_up: Option<bool> = None;
    let mut ticks = tokio::time::interval(interval);
    // After a slow check, wait a full interval rather than firing the missed ticks at once.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let (database, redis) = tokio::join!(
            check(DATABASE_CHECK_TIMEOUT, store.ping()),
            check(REDIS_PING_TIMEOUT, ping(redis.clone())),
        );
        if stop.is_cancelled() {
            break;
        }
        if database_up != Some(database.is_ok()) {
            database_up = Some(database.is_ok());
            match &database {
                Ok(()) => {
                    tracing::info!(
                        "health: PostgreSQL answers, simplebank.v1.SimpleBank is SERVING"
                    );
                    set_bank(&reporter, ServingStatus::Serving).await;
                }
                Err(reason) => {
                    tracing::warn!(
                        reason = %reason,
                        "health: PostgreSQL does not answer, simplebank.v1.SimpleBank is NOT_SERVING"
                    );
                    set_bank(&reporter, ServingStatus::NotServing).await;
                }
            }
        }
        if redis_up != Some(redis.is_ok()) {
            redis_up = Some(redis.is_ok());
            match &redis {
                Ok(()) => {
                    tracing::info!("health: Redis answers PING, {REDIS_SERVICE} is SERVING");
                    reporter
                        .set_service_status(REDIS_SERVICE, ServingStatus::Serving)
                        .await;
                }
                Err(reason) => {
                    tracing::warn!(
                        reason = %reason,
                        "health: Redis does not answer PING, {REDIS_SERVICE} is NOT_SERVING \
                         (sign-ups go on; their tasks wait in the outbox)"
                    );
                    reporter
                        .set_service_status(REDIS_SERVICE, ServingStatus::NotServing)
                        .await;
                }
            }
        }
    }
    // Last word on shutdown, after any change this loop was still writing.
    set_bank(&reporter, ServingStatus::NotServing).await;
}

async fn ping(mut redis: Connection) -> redis::RedisResult<()> {
    redis::cmd("PING").query_async(&mut redis).await
}

/// Runs one check with a deadline; the error says why it failed, for the log.
async fn check<E: std::error::Error + 'static>(
    deadline: Duration,
    ping: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(deadline, ping).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(chain(&err)),
        Err(_) => Err(format!("no answer within {} ms", deadline.as_millis())),
    }
}

/// Marks the server and the SimpleBank service NOT_SERVING (on shutdown).
pub async fn set_not_serving(reporter: &HealthReporter) {
    set_bank(reporter, ServingStatus::NotServing).await;
}

async fn set_bank(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    match status {
        ServingStatus::Serving => {
            reporter
                .set_serving::<SimpleBankServer<SimpleBankService>>()
                .await;
        }
        _ => {
            reporter
                .set_not_serving::<SimpleBankServer<SimpleBankService>>()
                .await;
        }
    }
}
