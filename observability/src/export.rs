//! The OTLP exporter, wrapped so that a collector that is down costs one warning a minute, not
//! one per batch, and never an error for the program.

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
