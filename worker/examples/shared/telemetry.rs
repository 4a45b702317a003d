//! The example programs' telemetry: the project's logging, tracing and metrics (OTLP export,
//! from `OTEL_*`) when `RUST_LOG` is set; none otherwise, as measured without it.

use simplebank_core::config;

/// Installs the telemetry under `service` if `RUST_LOG` is set; keep the guard until exit.
pub fn from_env(
    service: &'static str,
) -> Result<Option<simplebank_observability::Guard>, Box<dyn std::error::Error>> {
    Ok(match config::var("RUST_LOG")? {
        Some(_) => Some(simplebank_observability::init(
            &simplebank_observability::Config {
                default_service_name: service,
                log_format: simplebank_observability::LogFormat::Pretty,
            },
        )?),
        None => None,
    })
}
