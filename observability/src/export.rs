//! The OTLP exporter, built on a runtime thread of its own, and wrapped so that a collector that
//! is down costs one warning a minute, not one per batch, and never an error for the program.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter},
};

const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct WarnOnFailure<E> {
    inner: E,
    last_warning: Mutex<Option<Instant>>,
}

impl<E> WarnOnFailure<E> {
    pub fn new(inner: E) -> Self {
        Self {
            inner,
            last_warning: Mutex::new(None),
        }
    }
}

impl<E: SpanExporter> SpanExporter for WarnOnFailure<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(err) = &result {
            let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                *last = Some(Instant::now());
                tracing::warn!(
                    target: "simplebank::otlp",
                    spans, error = %err,
                    "cannot export spans to the OTLP collector; dropping them (next warning in a minute at the earliest)"
                );
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Builds the OTLP/gRPC span exporter on a thread of its own (`otlp-export`) running a
/// one-thread Tokio runtime, which then drives the exporter's connection for the life of the
/// process: tonic spawns its channel's tasks (HTTP/2 framing, the socket writes) on the runtime
/// it is built in. Built on the program's runtime, they ran there: in a worker, on its only
/// runtime thread beside the tasks, and every span cost that thread its share of the export
/// (BENCHMARKS.md, scenario 7). The SDK's batch processor encodes on a thread of its own already.
pub fn otlp_on_own_thread() -> Result<opentelemetry_otlp::SpanExporter, crate::InitError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(crate::InitError::ExportThread)?;
    let (built, receive) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            runtime.block_on(async move {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .build();
                // The caller waits for this; if it has gone, so has the exporter's use.
                let _ = built.send(exporter);
                std::future::pending::<()>().await;
            });
        })
        .map_err(crate::InitError::ExportThread)?;
    receive
        .recv()
        .map_err(|_| {
            crate::InitError::ExportThread(std::io::Error::other("the export thread stopped"))
        })?
        .map_err(crate::InitError::Exporter)
}
