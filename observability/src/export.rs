//! The OTLP exporters (spans and metrics), built on a runtime thread of their own; the metrics
//! exporter wrapped so that a collector that is down costs one warning a minute, not one per
//! export, and never an error for the program (`span_batch` does the same for spans).

use std::{
    cell::Cell,
    sync::Mutex,
    time::{Duration, Instant},
};

use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    metrics::{Temporality, data::ResourceMetrics, exporter::PushMetricExporter},
};

const WARN_EVERY: Duration = Duration::from_secs(60);

/// An exporter's error for a log line, at most 300 characters: h2 quotes a GOAWAY's debug
/// data, text the collector chose, which can run to kilobytes.
pub(crate) fn capped(err: &dyn std::fmt::Display) -> String {
    let mut text = err.to_string();
    if text.len() > 300 {
        let mut end = 300;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// One kind of warning, let through at most once a minute.
#[derive(Debug, Default)]
pub(crate) struct OnceAMinute(Mutex<Option<Instant>>);

impl OnceAMinute {
    /// Whether the warning is due now; if so, the next is a minute away.
    pub fn due(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

/// What a reply the gRPC client panicked on is, as an export's error.
#[derive(Debug, thiserror::Error)]
#[error("the collector's reply could not be read (the gRPC client panicked on it)")]
pub(crate) struct UnreadableReply;

/// Awaits an export's `future`, a panic while it is polled becoming `Err(UnreadableReply)`:
/// tonic panics on a collector's malformed `grpc-status-details-bin`
/// (`Status::from_header_map`), which ended the thread that exports, spans or metrics, for the
/// life of the process. The export fails instead; the panic's message still goes to stderr, by
/// the panic hook.
pub(crate) async fn unwinding<T>(future: impl Future<Output = T>) -> Result<T, UnreadableReply> {
    simplebank_queue::CatchUnwind(std::pin::pin!(future))
        .await
        .map_err(|_panic| UnreadableReply)
}

#[derive(Debug)]
pub struct WarnOnFailure<E> {
    inner: E,
    failure_warned: OnceAMinute,
}

impl<E> WarnOnFailure<E> {
    pub fn new(inner: E) -> Self {
        Self {
            inner,
            failure_warned: OnceAMinute::default(),
        }
    }
}

thread_local! {
    static EXPORTING: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one of the exporters' (`otlp-export`, `otlp-batch`): what runs
/// on it is not traced ([`on_export_thread`]).
pub(crate) fn mark_export_thread() {
    EXPORTING.with(|exporting| exporting.set(true));
}

/// Whether the calling thread is one of the exporters'. Their own spans (tonic's and h2's, at
/// TRACE) are kept out of the traces: exported, each export's spans made the next export, for
/// ever. (OpenTelemetry's suppressed context does not reach them: tracing-opentelemetry starts
/// a span under its `tracing` parent, here h2's connection span, made before.)
pub(crate) fn on_export_thread() -> bool {
    EXPORTING.with(Cell::get)
}

/// Builds the OTLP exporters (`build`) on a thread of their own (`otlp-export`) running
/// a one-thread Tokio runtime, which then drives the exporters' connections for the life of the
/// process: tonic spawns its channel's tasks (HTTP/2 framing, the socket writes) on the runtime
/// it is built in. Built on the program's runtime, they ran there: in a worker, on its only
/// runtime thread beside the tasks, and every span cost that thread its share of the export
/// (BENCHMARKS.md, scenario 7); and a last export at exit waited for a thread busy shutting
/// down. Spans are encoded as they end and sent from the `otlp-batch` thread
/// (`span_batch`); the SDK's periodic reader encodes metrics on a thread of its own.
pub fn on_own_thread<T: Send + 'static>(
    build: impl FnOnce() -> Result<T, crate::InitError> + Send + 'static,
) -> Result<T, crate::InitError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(crate::InitError::ExportThread)?;
    let (built, receive) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            mark_export_thread();
            runtime.block_on(async move {
                // The caller waits for this; if it has gone, so has the exporters' use.
                let _ = built.send(build());
                std::future::pending::<()>().await;
            });
        })
        .map_err(crate::InitError::ExportThread)?;
    receive.recv().map_err(|_| {
        crate::InitError::ExportThread(std::io::Error::other("the export thread stopped"))
    })?
}

impl<E: PushMetricExporter> PushMetricExporter for WarnOnFailure<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = unwinding(self.inner.export(metrics))
            .await
            .unwrap_or_else(|unreadable| {
                Err(OTelSdkError::InternalFailure(unreadable.to_string()))
            });
        if let Err(err) = &result
            && self.failure_warned.due()
        {
            tracing::warn!(
                target: "simplebank::otlp",
                error = %capped(err),
                "cannot export metrics to the OTLP collector; this interval's values are lost, cumulative counts recover at the next export (next warning in a minute at the earliest)"
            );
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A metrics exporter that panics on its first export, as opentelemetry-otlp's did on a
    /// collector's malformed `grpc-status-details-bin` (tonic's panic), then succeeds.
    #[derive(Default)]
    struct PanicsOnce(AtomicUsize);

    impl PushMetricExporter for PanicsOnce {
        async fn export(&self, _metrics: &ResourceMetrics) -> OTelSdkResult {
            tokio::task::yield_now().await;
            assert!(
                self.0.fetch_add(1, Ordering::SeqCst) > 0,
                "Invalid status header, expected base64 encoded value"
            );
            Ok(())
        }

        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }

        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    /// The panic fails that export, and the next goes through: it ended the SDK's periodic
    /// reader thread, and no metric was exported after it.
    #[tokio::test]
    async fn a_panicking_metrics_export_fails_that_export_only() {
        let exporter = WarnOnFailure::new(PanicsOnce::default());
        let metrics = ResourceMetrics::default();
        let err = exporter.export(&metrics).await.unwrap_err();
        assert!(err.to_string().contains("could not be read"), "{err}");
        exporter.export(&metrics).await.unwrap();
        assert_eq!(exporter.inner.0.load(Ordering::SeqCst), 2);
    }
}
