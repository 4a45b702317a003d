//! `init` in a process of its own (it installs the global subscriber and providers once).

use opentelemetry::trace::{Span as _, Tracer as _};

/// The queue makes its spans with the global tracer. With no traces endpoint they carry ids
/// (for log lines and for the tasks and requests they send) and record nothing; with one,
/// they are the SDK's recorded spans.
#[test]
fn the_global_tracer_records_only_when_spans_are_exported() {
    let _guard = simplebank_observability::init(&simplebank_observability::Config {
        default_service_name: "simplebank-test",
        log_format: simplebank_observability::LogFormat::Json,
    })
    .expect("init");
    let span = opentelemetry::global::tracer("test").start("a span");
    let context = span.span_context();
    assert!(context.is_valid());
    let sampler = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
    if sampler.is_empty() || sampler.contains("always_on") {
        assert!(context.is_sampled(), "sampler {sampler:?}");
    }
    if simplebank_observability::export_enabled() {
        // The SDK's span: recorded when sampled (the environment's samplers never record
        // only).
        assert_eq!(span.is_recording(), context.is_sampled());
    } else {
        assert!(
            !span.is_recording(),
            "no traces endpoint, yet the span records"
        );
    }
}
