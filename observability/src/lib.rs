//! Tracing and OpenTelemetry set-up shared by the simplebank binaries, and W3C trace-context
//! propagation across the queue.
//!
//! - [`init`]: installs the global subscriber (logs + OpenTelemetry layer) and returns a
//!   [`Guard`] that flushes and shuts the exporter down on drop. Binaries call it once; libraries
//!   only emit `tracing` spans and events.
//! - [`propagation`]: `traceparent`/`tracestate` in and out of gRPC metadata and task entries.
//! - [`logs`]: log lines (pretty or JSON) that carry `trace_id` and `span_id`.
//!
//! Export is OTLP over gRPC, configured by the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; unset = no export, no error, no delay),
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_EXPORTER_OTLP_TIMEOUT`. Trace ids
//! exist (and propagate) even without export, so log lines can always be correlated.

#![warn(missing_docs)]

mod export;
pub mod logs;
pub mod propagation;
#[cfg(feature = "test-util")]
pub mod testing;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, filter::LevelFilter, prelude::*};

pub use logs::LogFormat;

/// Why [`init`] could not install logging and tracing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// `RUST_LOG` is not a valid filter.
    #[error("invalid RUST_LOG: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// [`init`] was called before, or something else installed a global subscriber.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
    /// The OTLP exporter's thread or runtime could not be started.
    #[error("cannot start the OTLP export thread")]
    ExportThread(#[source] std::io::Error),
    /// The OTLP exporter could not be built from the `OTEL_EXPORTER_OTLP_*` settings.
    #[error("cannot build the OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The log filter when `RUST_LOG` is unset: INFO, without PostgreSQL's notices (sqlx logs each
/// at INFO, and every migration run says "relation _sqlx_migrations already exists").
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx::postgres::notice=warn";

/// What [`init`] needs from the program.
#[derive(Debug, Clone)]
pub struct Config {
    /// Used when `OTEL_SERVICE_NAME` is not set.
    pub default_service_name: &'static str,
    /// How log lines are written: pretty for people, JSON for collectors.
    pub log_format: LogFormat,
}

/// Flushes pending spans and shuts the exporter down when dropped, within two seconds at most:
/// an unreachable collector does not hold up the program's exit.
#[must_use = "spans are flushed when the guard drops"]
#[derive(Debug)]
pub struct Guard {
    provider: SdkTracerProvider,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(2));
    }
}

/// Whether an OTLP endpoint is configured.
pub fn export_enabled() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()))
}

/// Installs logging and tracing for the whole process. Call once, inside the Tokio runtime.
pub fn init(config: &Config) -> Result<Guard, InitError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
        resource = resource.with_service_name(config.default_service_name);
    }
    let mut provider = SdkTracerProvider::builder().with_resource(resource.build());
    if export_enabled() {
        let exporter = export::otlp_on_own_thread()?;
        provider = provider.with_batch_exporter(export::WarnOnFailure::new(exporter));
    }
    let provider = provider.build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer("simplebank");
    // RUST_LOG filters the log lines only. Spans reach the OpenTelemetry layer down to INFO
    // whatever the log level (so RUST_LOG=warn does not switch tracing off), or further down
    // when RUST_LOG asks for more; dependencies' DEBUG/TRACE spans stay out of traces.
    let global = std::cmp::max(
        LevelFilter::INFO,
        filter.max_level_hint().unwrap_or(LevelFilter::TRACE),
    );
    // No busy/idle timings (two clock reads per poll of every span: a tenth of the worker's
    // CPU when draining, measured with perf) and no thread attributes: a span's duration and
    // its attributes are what the traces show.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_tracked_inactivity(false)
        .with_threads(false);
    tracing_subscriber::registry()
        .with(global)
        .with(otel)
        .with(logs::layer(config.log_format).with_filter(filter))
        .try_init()?;
    Ok(Guard { provider })
}
