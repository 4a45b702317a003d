//! `simplebank.outbox.backlog`: how many tasks wait in the outbox (committed, not yet on a
//! stream), an observable gauge.
//!
//! The count (`SELECT count(*)`, on a table that holds only what is not yet published, so it
//! is small) runs when the metrics are collected, once per export interval, never per request
//! and never when metrics are off (the callback then never runs). The SDK collects on a thread
//! of its own, where the count blocks on the server's runtime for at most [`COUNT_TIMEOUT`]; a
//! database that does not answer in time leaves the gauge out of that export. Every server
//! reports the same table: aggregate across servers with `max`, not `sum`.

use std::{panic::AssertUnwindSafe, time::Duration};

use opentelemetry::metrics::{Meter, ObservableGauge};
use simplebank_core::store::Store;

/// The longest the count may hold up a collection.
pub const COUNT_TIMEOUT: Duration = Duration::from_secs(1);

/// Registers the gauge, counting with `store` on the current runtime. Keep the handle for as
/// long as the server runs.
pub fn register(meter: &Meter, store: Store) -> ObservableGauge<u64> {
    let runtime = tokio::runtime::Handle::current();
    meter
        .u64_observable_gauge("simplebank.outbox.backlog")
        .with_unit("{task}")
        .with_description("Tasks committed to the outbox and not yet published to Redis.")
        .with_callback(move |observer| {
            // Only ever called on the SDK's collecting thread; a runtime thread must not block.
            if tokio::runtime::Handle::try_current().is_ok() {
                return;
            }
            // A panic here would end the SDK's collecting thread, and every metric with it
            // (`block_on` panics on a runtime that has shut down): caught, the gauge is left out.
            let counted = std::panic::catch_unwind(AssertUnwindSafe(|| {
                // The timer is made inside `block_on`, where the runtime's context is entered.
                runtime.block_on(async {
                    tokio::time::timeout(COUNT_TIMEOUT, store.outbox_len()).await
                })
            }));
            if let Ok(Ok(Ok(rows))) = counted {
                observer.observe(u64::try_from(rows).unwrap_or(0), &[]);
            }
        })
        .build()
}
