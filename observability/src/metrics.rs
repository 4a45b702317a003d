//! The OpenTelemetry metrics pipeline: an SDK `MeterProvider` with a periodic OTLP exporter
//! (gRPC or HTTP), installed as the global meter provider, so that libraries (the queue engine)
//! record through the OpenTelemetry API alone.
//!
//! On when `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
//! unless `OTEL_METRICS_EXPORTER=none` (for a collector that takes traces only, such as
//! Jaeger); otherwise no provider is installed, instruments are the API's no-ops, and nothing
//! is an error. `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds, 100 to a day, default 60000) is
//! checked here, whether export is on or not, so a typo stops the program at start naming the
//! variable instead of falling back to the default as the SDK would.

use std::time::Duration;

use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
};

use crate::{InitError, export::WarnOnFailure};

/// The variable holding the export interval, in milliseconds.
pub const EXPORT_INTERVAL_VAR: &str = "OTEL_METRIC_EXPORT_INTERVAL";
/// The OpenTelemetry default export interval.
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest interval accepted: at 1 ms a server spent half a core exporting (and counting
/// its outbox), and `60` meant as seconds is 60 ms.
pub const MIN_EXPORT_INTERVAL: Duration = Duration::from_millis(100);
/// The longest interval accepted (a day): longer is a mistake, not a setting.
const MAX_EXPORT_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The variable choosing the metrics exporter: `otlp` (the default) or `none`.
pub const EXPORTER_VAR: &str = "OTEL_METRICS_EXPORTER";

/// Whether metrics may be exported: `OTEL_METRICS_EXPORTER` is `otlp` (or unset), not `none`;
/// they are when an endpoint is set too (`endpoint::for_signal`, which checks it, and refuses a
/// value that is not UTF-8 where a test for "set" here took it for unset and turned metrics
/// off without a word). Any other exporter name, or one that is not UTF-8, is an error.
pub fn enabled() -> Result<bool, InitError> {
    let exporter = match std::env::var(EXPORTER_VAR) {
        Ok(exporter) => exporter,
        Err(std::env::VarError::NotPresent) => String::new(),
        Err(std::env::VarError::NotUnicode(_)) => String::from("\u{fffd}"),
    };
    // Enumerated values are case-insensitive in the OpenTelemetry configuration spec.
    match exporter.trim().to_ascii_lowercase().as_str() {
        "" | "otlp" => Ok(true),
        "none" => Ok(false),
        _ => Err(InitError::Setting {
            variable: EXPORTER_VAR,
            message: "must be otlp or none (the only exporters built in)".into(),
        }),
    }
}

/// `OTEL_METRIC_EXPORT_INTERVAL`, or the default when it is unset or empty.
pub fn export_interval() -> Result<Duration, InitError> {
    match std::env::var(EXPORT_INTERVAL_VAR) {
        Ok(value) if !value.trim().is_empty() => parse_interval(&value),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(DEFAULT_EXPORT_INTERVAL),
        Err(std::env::VarError::NotUnicode(_)) => Err(invalid("is not valid UTF-8")),
    }
}

fn invalid(message: impl Into<String>) -> InitError {
    InitError::Setting {
        variable: EXPORT_INTERVAL_VAR,
        message: message.into(),
    }
}

fn parse_interval(value: &str) -> Result<Duration, InitError> {
    let value = value.trim();
    let ms: u64 = value.parse().map_err(|_| {
        invalid("must be a whole number of milliseconds (e.g. 60000); the value is not")
    })?;
    let interval = Duration::from_millis(ms);
    if interval < MIN_EXPORT_INTERVAL {
        return Err(invalid(format!(
            "must be at least {} ms (it is in milliseconds: 60000 is a minute)",
            MIN_EXPORT_INTERVAL.as_millis()
        )));
    }
    if interval > MAX_EXPORT_INTERVAL {
        return Err(invalid(format!(
            "must be at most {} ms (a day)",
            MAX_EXPORT_INTERVAL.as_millis()
        )));
    }
    Ok(interval)
}

/// The provider exporting with `exporter` every `interval`, with `resource`; the caller
/// installs it.
pub(crate) fn provider(
    resource: Resource,
    exporter: opentelemetry_otlp::MetricExporter,
    interval: Duration,
) -> SdkMeterProvider {
    let reader = PeriodicReader::builder(WarnOnFailure::new(exporter))
        .with_interval(interval)
        .build();
    SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_whole_milliseconds_from_100_to_a_day() {
        assert_eq!(parse_interval("250").ok(), Some(Duration::from_millis(250)));
        assert_eq!(parse_interval("100").ok(), Some(Duration::from_millis(100)));
        assert_eq!(
            parse_interval(" 60000 ").ok(),
            Some(Duration::from_secs(60))
        );
        for bad in [
            "0",
            "1",
            "60",
            "99",
            "-5",
            "1.5",
            "5s",
            "abc",
            "99999999999999999999999",
            "86400001",
            "1\n0",
            "1\0",
        ] {
            let err = parse_interval(bad).expect_err(bad).to_string();
            assert!(err.contains(EXPORT_INTERVAL_VAR), "{bad:?}: {err}");
        }
    }
}
