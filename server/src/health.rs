//! `grpc.health.v1` status. The server reports SERVING once PostgreSQL answers and Redis has
//! answered at least once since start. After that, Redis going away does not make the server
//! NOT_SERVING: sign-ups keep working through the outbox. PostgreSQL going away does.

use std::time::Duration;

use simplebank_core::{store::Store, task::Publisher};
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{pb::simple_bank_server::SimpleBankServer, service::SimpleBankService};

/// Checks the dependencies every `interval` and updates `reporter` until `stop` is cancelled.
pub async fn watch(
    reporter: HealthReporter,
    store: Store,
    publisher: Publisher,
    interval: Duration,
    stop: CancellationToken,
) {
    set(&reporter, ServingStatus::NotServing).await;
    let mut redis_seen = false;
    let mut serving = false;
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let database = store.ping().await.is_ok();
        if !redis_seen {
            redis_seen = publisher.ping().await.is_ok();
        }
        let now_serving = database && redis_seen;
        if now_serving != serving && !stop.is_cancelled() {
            serving = now_serving;
            tracing::info!(serving, database, redis_seen, "health changed");
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set(&reporter, status).await;
        }
    }
}

/// Marks the server and the SimpleBank service NOT_SERVING (on shutdown).
pub async fn set_not_serving(reporter: &HealthReporter) {
    set(reporter, ServingStatus::NotServing).await;
}

async fn set(reporter: &HealthReporter, status: ServingStatus) {
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
