//! Tracing and OpenTelemetry set-up shared by the simplebank binaries, and W3C trace-context
//! propagation across the queue.
//!
//! - [`init`]: installs the global subscriber (logs + OpenTelemetry layer) and returns a
//!   [`Guard`] that flushes and shuts the exporter down on drop. Binaries call it once; libraries
//!   only emit `tracing` spans and events.
//! - [`propagation`]: `traceparent`/`tracestate` in and out of gRPC metadata and task entries.
//! - [`logs`]: log lines (pretty or JSON) that carry `trace_id` and `span_id`.
//!
//! - [`metrics`]: the meter provider (OTLP, periodic), installed as the global one so that
//!   libraries record through the OpenTelemetry API.
//!
//! Export is OTLP over gRPC, or over HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`, or a
//! signal's own `_PROTOCOL`), configured by the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` for one
//! signal; unset = no export, no error, no delay), `OTEL_METRICS_EXPORTER` (`none` turns
//! metrics off), `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` /
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_SCHEDULE_DELAY`,
//! `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_METRIC_EXPORT_INTERVAL`,
//! `OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]TIMEOUT`,
//! `OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]HEADERS` and `_COMPRESSION` (`none`; `gzip` and
//! `zstd` are ignored with a warning: this build sends OTLP uncompressed). Spans go through the
//! crate's own processor, which encodes each into request bytes on the thread that ends it
//! (`span_batch`), and its own exporter (`span_export`). Trace ids exist (and propagate)
//! even without export, so log lines can always be correlated; the global tracer (the
//! queue's spans) then records nothing (`unexported`). Endpoints must be `http://`
//! (no TLS in this build) and are checked at start. Both signals share one resource, whose
//! `service.instance.id` is a UUID made at start unless `OTEL_RESOURCE_ATTRIBUTES` sets one.

#![warn(missing_docs)]

mod endpoint;
mod export;
mod http_export;
pub mod logs;
pub mod metrics;
pub mod propagation;
mod sampler;
mod span_batch;
mod span_encoding;
mod span_events;
mod span_export;
#[cfg(feature = "test-util")]
pub mod testing;
mod unexported;

use std::time::Duration;

use opentelemetry::{Key, KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider, trace::SdkTracerProvider};
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
    #[error("cannot build the OTLP exporter ({variable}): {cause}")]
    Exporter {
        /// The endpoint variable in use.
        variable: &'static str,
        /// The exporter's error, without the endpoint's value.
        cause: String,
    },
    /// An `OTEL_*` variable has a value that cannot be used.
    #[error("invalid {variable}: {message}")]
    Setting {
        /// The variable's name.
        variable: &'static str,
        /// What is wrong with it (never its value).
        message: String,
    },
}

/// The log filter when `RUST_LOG` is unset: INFO, without PostgreSQL's notices (sqlx logs each
/// at INFO, and every migration run says "relation _sqlx_migrations already exists") and
/// without the redis crate's cluster client internals (during an outage they log every
/// reconnect attempt, tens of lines a second per process; the programs log each outage once).
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx::postgres::notice=warn,redis::cluster_handling=off";

/// What [`init`] needs from the program.
#[derive(Debug, Clone)]
pub struct Config {
    /// Used when `OTEL_SERVICE_NAME` is not set.
    pub default_service_name: &'static str,
    /// How log lines are written: pretty for people, JSON for collectors.
    pub log_format: LogFormat,
}

/// How long the last flush may hold up the program's exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// The last span flush's own deadline: inside the exit's wait, with room to say what it could
/// not send before the program ends.
const LAST_SPAN_FLUSH: Duration = Duration::from_millis(1_750);

/// Flushes pending spans and metrics and shuts the exporters down, within two seconds at most:
/// an unreachable collector does not hold up the program's exit. Call [`Guard::shutdown`] at
/// the end of `main`: it waits without blocking the program's runtime. Dropping the guard does
/// the same as a fallback, blocking the thread it runs on meanwhile (the exporters' connections
/// run on a thread of their own, so the last export still goes out).
#[must_use = "spans and metrics are flushed when the guard is shut down or dropped"]
#[derive(Debug)]
pub struct Guard {
    providers: Option<Providers>,
    metrics_interval: Option<Duration>,
}

#[derive(Debug)]
struct Providers {
    traces: SdkTracerProvider,
    metrics: Option<SdkMeterProvider>,
}

impl Providers {
    /// Shuts both down on threads of their own (the SDK's meter shutdown waits up to 5 s
    /// whatever it is told); `done` hears when both have finished.
    fn shut_down_in_background(self, done: std::sync::mpsc::Sender<()>) {
        let Self { traces, metrics } = self;
        let metrics = std::thread::spawn(move || {
            if let Some(metrics) = metrics {
                let _ = metrics.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
            }
        });
        std::thread::spawn(move || {
            let _ = traces.shutdown_with_timeout(LAST_SPAN_FLUSH);
            let _ = metrics.join();
            let _ = done.send(());
        });
    }
}

impl Guard {
    /// The export interval when metrics are exported, `None` when they are off: what a
    /// program's periodic readings for its gauges (the queue depth) should follow.
    pub fn metrics_interval(&self) -> Option<Duration> {
        self.metrics_interval
    }

    /// Flushes and shuts the exporters down, waiting at most two seconds, without blocking
    /// the async runtime (the exporters' connections run on it).
    pub async fn shutdown(mut self) {
        let Some(providers) = self.providers.take() else {
            return;
        };
        let (done, finished) = std::sync::mpsc::channel();
        providers.shut_down_in_background(done);
        let waited = tokio::task::spawn_blocking(move || {
            let _ = finished.recv_timeout(SHUTDOWN_TIMEOUT);
        });
        let _ = waited.await;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(providers) = self.providers.take() {
            let (done, finished) = std::sync::mpsc::channel();
            providers.shut_down_in_background(done);
            let _ = finished.recv_timeout(SHUTDOWN_TIMEOUT);
        }
    }
}

/// Whether any of `vars` is set to something other than blanks.
fn any_set(vars: &[&str]) -> bool {
    vars.iter()
        .any(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()))
}

/// Whether an OTLP endpoint for traces is configured.
pub fn export_enabled() -> bool {
    any_set(&[
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ])
}

/// `service.instance.id`, unless `OTEL_RESOURCE_ATTRIBUTES` sets it.
const SERVICE_INSTANCE_ID: &str = "service.instance.id";

/// The resource of both signals: the SDK's (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
/// `telemetry.sdk.*`), the program's service name when neither sets one, and a `service.instance.id`
/// of its own (a UUID v4 per process start, as the semantic conventions recommend) when none is
/// set: without one, two workers' series are the same series to a backend, which sees one
/// counter jump between their values.
fn resource(default_service_name: &'static str) -> Resource {
    let builder = || {
        let builder = Resource::builder();
        // OTEL_SERVICE_NAME wins (the SDK would let OTEL_RESOURCE_ATTRIBUTES, read last, win);
        // then the last `service.name` pair there (the SDK keeps the last, even a blank one);
        // then the program's.
        let from_attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .ok()
            .and_then(|v| {
                v.split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .rfind(|(key, _)| key.trim() == "service.name")
                    .map(|(_, name)| name.trim().to_owned())
            });
        match std::env::var("OTEL_SERVICE_NAME") {
            Ok(name) if !name.trim().is_empty() => {
                builder.with_service_name(name.trim().to_owned())
            }
            _ => match from_attributes {
                Some(name) if !name.is_empty() => builder.with_service_name(name),
                _ => builder.with_service_name(default_service_name),
            },
        }
    };
    let resource = builder().build();
    let has_instance = resource
        .get(&Key::from_static_str(SERVICE_INSTANCE_ID))
        .is_some_and(|id| !id.as_str().trim().is_empty());
    if has_instance {
        resource
    } else {
        builder()
            .with_attribute(KeyValue::new(
                SERVICE_INSTANCE_ID,
                uuid::Uuid::new_v4().to_string(),
            ))
            .build()
    }
}

/// What reaches the OpenTelemetry layer: spans, and events from WARN up (as span events).
fn traced(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() || *meta.level() <= tracing::Level::WARN
}

/// Installs logging, tracing and (with an endpoint for them) metrics for the whole process.
/// Call once, inside the Tokio runtime, before building anything that records metrics.
pub fn init(config: &Config) -> Result<Guard, InitError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    let resource = resource(config.default_service_name);
    // Checked first, whether metrics are exported or not: a bad value stops the program.
    let interval = metrics::export_interval()?;
    let metrics_on = metrics::enabled()?;
    let batching = span_batch::BatchSettings::from_env()?;
    let sampler = sampler::from_env()?;
    // Each signal exported: its checked endpoint, and its exporter's checked settings.
    let with_settings = |endpoint: endpoint::Endpoint, signal| {
        span_export::Settings::from_env(signal).map(|settings| (endpoint, settings))
    };
    let traces = endpoint::for_signal(endpoint::TRACES)?
        .map(|used| with_settings(used, span_export::Signal::TRACES))
        .transpose()?;
    let metrics = if metrics_on {
        endpoint::for_signal(endpoint::METRICS)?
    } else {
        // Still checked: a bad value stops the program, as the interval's does.
        endpoint::protocol(endpoint::METRICS)?;
        None
    }
    .map(|used| with_settings(used, span_export::Signal::METRICS))
    .transpose()?;
    let ignored_compression = [&traces, &metrics]
        .into_iter()
        .flatten()
        .find_map(|(_, settings)| settings.ignored_compression);
    let (span_exporter, metric_exporter) = if traces.is_some() || metrics.is_some() {
        export::on_own_thread(move || {
            // The exporters get the checked value; their errors name its variable, not it.
            let failed = |err: opentelemetry_otlp::ExporterBuildError,
                          used: &endpoint::Endpoint| {
                InitError::Exporter {
                    variable: used.variable,
                    cause: endpoint::redacted(&err, &used.url),
                }
            };
            let spans = traces
                .map(|(used, settings)| span_export::OtlpSpanExporter::new(&used, settings))
                .transpose()?;
            // Given the checked headers and timeout: left to read the environment itself,
            // the stock exporter skips what it cannot parse.
            let metrics = metrics
                .map(|(used, settings)| match used.protocol {
                    endpoint::Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                        .with_tonic()
                        .with_endpoint(used.url.clone())
                        .with_timeout(settings.timeout)
                        .with_metadata(settings.headers)
                        .build()
                        .map_err(|err| failed(err, &used)),
                    // The stock exporter over the project's HTTP/1.1 transport, which sends
                    // the checked headers (the exporter's own, read from the same variable
                    // by laxer rules, are replaced).
                    endpoint::Protocol::HttpProtobuf => {
                        let transport = http_export::HttpTransport::new(
                            &used,
                            settings.headers.into_headers(),
                            settings.timeout,
                        )?;
                        opentelemetry_otlp::MetricExporter::builder()
                            .with_http()
                            .with_http_client(transport)
                            // The transport retries, within the timeout.
                            .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
                            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                            .with_endpoint(used.url.clone())
                            .with_timeout(settings.timeout)
                            .build()
                            .map_err(|err| failed(err, &used))
                    }
                })
                .transpose()?;
            Ok((spans, metrics))
        })?
    } else {
        (None, None)
    };
    let meters =
        metric_exporter.map(|exporter| metrics::provider(resource.clone(), exporter, interval));
    let exported = span_exporter.is_some();
    let mut provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(sampler.clone());
    if let Some(exporter) = span_exporter {
        provider =
            provider.with_span_processor(span_batch::SpanBatcher::start(exporter, batching)?);
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
    // CPU when draining, measured with perf), no thread or `target` attributes: a span's
    // duration and its attributes are what the traces show. Events become span events from
    // WARN up (failures, retries, dead letters); INFO events are log lines, which carry the
    // trace and span ids: "processed task" repeated the process span's attributes and was
    // half of what each exported span cost to encode (BENCHMARKS.md, scenario 7).
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        // WARN and ERROR events outside `tracing` spans (the queue's spans are made through
        // the OpenTelemetry API) become events of the attached span.
        .and_then(span_events::SpanEvents)
        .with_filter(
            // Asked on every span, not once per callsite: the export threads' are left out.
            tracing_subscriber::filter::dynamic_filter_fn(|meta, _| {
                traced(meta) && !export::on_export_thread()
            })
            .with_callsite_filter(|meta| {
                if traced(meta) {
                    tracing::subscriber::Interest::sometimes()
                } else {
                    tracing::subscriber::Interest::never()
                }
            }),
        );
    tracing_subscriber::registry()
        .with(global)
        .with(otel)
        .with(logs::layer(config.log_format).with_filter(filter))
        .try_init()?;
    if let Some(variable) = ignored_compression {
        tracing::warn!(
            target: "simplebank::otlp",
            variable,
            "OTLP compression is not built in: spans and metrics are sent uncompressed"
        );
    }
    // Installed last, once nothing can fail: libraries create their instruments and tracers
    // from the global providers when they start (a queue `Worker` or `Publisher`).
    if let Some(meters) = &meters {
        opentelemetry::global::set_meter_provider(meters.clone());
    }
    // The queue makes its own spans (`send`, `process`) with the global tracer provider's
    // tracer, outside `tracing` (BENCHMARKS.md, scenario 9). With no traces endpoint they
    // carry their context and record nothing (`unexported`).
    if exported {
        opentelemetry::global::set_tracer_provider(provider.clone());
    } else {
        opentelemetry::global::set_tracer_provider(unexported::Provider::new(sampler));
    }
    Ok(Guard {
        metrics_interval: meters.as_ref().map(|_| interval),
        providers: Some(Providers {
            traces: provider,
            metrics: meters,
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::{EnvFilter, layer::SubscriberExt};

    use super::DEFAULT_LOG_FILTER;

    /// The targets of the events a subscriber with the default filter lets through.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let target = event.metadata().target().to_owned();
            self.0.lock().unwrap().push(target);
        }
    }

    #[test]
    fn the_default_filter_leaves_out_the_cluster_clients_reconnect_noise_only() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new(DEFAULT_LOG_FILTER))
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "redis::cluster_handling::async_connection", "refresh failed");
            tracing::warn!(target: "redis::cluster_handling::async_connection", "failed to connect");
            tracing::info!(target: "sqlx::postgres::notice", "relation already exists");
            tracing::warn!(target: "redis::aio::connection_manager", "kept");
            tracing::warn!(target: "simplebank_queue::consumer", "kept");
            tracing::info!(target: "simplebank_server", "kept");
        });
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "redis::aio::connection_manager",
                "simplebank_queue::consumer",
                "simplebank_server"
            ]
        );
    }
}
